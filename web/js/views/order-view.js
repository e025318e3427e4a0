// The order component shared by the tracking page and the signed-in order detail:
// status header, stepper, estimate, timeline (newest first, viewer's local time), items, carrier.
import { h, icon } from '../dom.js';
import { formatDateTime, formatDay, isToday, statusLabel, t, timeAgo } from '../i18n.js';

const LINE = ['confirmed', 'processing', 'shipped', 'in_transit', 'out_for_delivery', 'delivered'];
const TONE = { delivered: 'ok', attempted: 'warn', available_for_pickup: 'warn', exception: 'warn', returned: 'bad', cancelled: 'bad' };
// A Map, not an object literal: a carrier named "constructor" or "__proto__" finds nothing.
const CARRIERS = new Map([
  ['dhl', 'https://www.dhl.com/global-en/home/tracking.html?tracking-id='],
  ['ups', 'https://www.ups.com/track?tracknum='],
  ['fedex', 'https://www.fedex.com/fedextrack/?trknbr='],
  ['usps', 'https://tools.usps.com/go/TrackConfirmAction?tLabels='],
  ['dpd', 'https://tracking.dpd.de/status/en_US/parcel/'],
  ['gls', 'https://gls-group.com/track/'],
  ['hermes', 'https://www.myhermes.de/empfangen/sendungsverfolgung/sendungsinformation#'],
  ['royal mail', 'https://www.royalmail.com/track-your-item#/tracking-results/'],
  ['deutsche post', 'https://www.deutschepost.de/sendung/simpleQueryResult.html?form.sendungsnummer='],
]);

export function carrierUrl(carrier, number) {
  const base = CARRIERS.get(String(carrier).trim().toLowerCase());
  return base ? base + encodeURIComponent(number) : null;
}

/** The label of each status the answer names, for statusLabel to fall back on. */
function answerLabels(order) {
  const found = new Map([[order.status, order.status_label]]);
  for (const s of order.shipments || []) found.set(s.status, s.status_label);
  for (const e of timeline(order)) found.set(e.status, e.status_label);
  return found;
}

/** What the order's status is called (the server's catalogue, else the answer's own label). */
export const orderLabel = (order) => statusLabel(order.status, order.status_label);

/** Every event of the order and its shipments, newest first. */
export function timeline(order) {
  const events = [...(order.events || [])];
  for (const s of order.shipments || []) events.push(...s.events);
  return events.sort((a, b) => Date.parse(b.occurred_at) - Date.parse(a.occurred_at));
}

function stepper(order) {
  const labels = answerLabels(order);
  const reached = new Set([order.status, ...timeline(order).map((e) => e.status)]);
  let last = -1;
  LINE.forEach((s, i) => { if (reached.has(s)) last = i; });
  const offLine = !LINE.includes(order.status);
  const total = LINE.length;
  const items = LINE.map((s, i) => {
    let state = i <= last ? 'done' : 'todo';
    if (!offLine && i === last) state = 'current';
    if (offLine && i === Math.min(last + 1, total - 1)) state = TONE[order.status] || 'warn';
    return h('li', { 'data-state': state, 'data-step': s, title: statusLabel(s, labels.get(s)) });
  });
  const n = Math.max(1, last + 1);
  return [
    h('ol', { class: 'stepper', 'aria-label': t('order.progress', { n, total }) }, items),
    h('p', { class: 'stepper-labels', 'aria-hidden': 'true' },
      h('span', { text: t('step.confirmed') }), h('span', { text: t('step.delivered') })),
  ];
}

function estimate(order) {
  if (order.status === 'delivered') {
    const when = timeline(order).find((e) => e.status === 'delivered');
    return when ? t('order.deliveredOn', { date: formatDay(when.occurred_at) }) : orderLabel(order);
  }
  if (['cancelled', 'returned'].includes(order.status)) return null;
  const eta = order.estimated_delivery || (order.shipments || []).map((s) => s.estimated_delivery).find(Boolean);
  if (order.status === 'out_for_delivery' || (eta && isToday(eta))) return t('order.expectedToday');
  return eta ? t('order.expected', { date: formatDay(eta) }) : t('order.noEstimate');
}

export function renderOrder(order, { storedAt = null, extra = [] } = {}) {
  const tone = TONE[order.status] || 'info';
  const head = h('section', { class: 'card order-head', 'aria-labelledby': 'order-status' },
    h('p', { class: 'merchant', text: t('order.number', { merchant: order.merchant.name, number: order.external_id }) }),
    h('div', { class: 'status', 'data-tone': tone, 'data-status': order.status },
      icon(order.status),
      h('h1', { id: 'order-status', text: orderLabel(order) })),
    order.packages?.total > 1 && order.packages.summary ? h('p', { class: 'muted', text: order.packages.summary }) : null,
    stepper(order),
    (() => { const e = estimate(order); return e ? h('p', { class: 'estimate', text: e }) : null; })(),
    storedAt ? h('p', { class: 'freshness', text: t('order.updatedAgo', { ago: timeAgo(storedAt) }) }) : null,
    ...extra,
  );

  const events = timeline(order);
  const history = h('section', { class: 'card', 'aria-labelledby': 'timeline-h' },
    h('h2', { id: 'timeline-h', text: t('order.timeline') }),
    events.length
      ? h('ol', { class: 'timeline' }, events.map((e) => h('li', {},
        h('time', { datetime: e.occurred_at, text: formatDateTime(e.occurred_at) }),
        h('span', { class: 'what', text: statusLabel(e.status, e.status_label) }),
        e.location ? h('span', { class: 'muted', text: ` · ${e.location}` }) : null,
        e.description ? h('p', { class: 'small', text: e.description }) : null)))
      : h('p', { class: 'muted', text: t('order.noEvents') }));

  const side = [];
  if (order.shipments?.length) {
    side.push(h('section', { class: 'card', 'aria-labelledby': 'ship-h' },
      h('h2', { id: 'ship-h', text: t('order.shipments') }),
      order.shipments.map((s) => {
        const url = carrierUrl(s.carrier, s.tracking_number);
        return h('p', { class: 'shipment' },
          h('strong', { text: s.carrier }),
          h('span', {}, h('span', { class: 'visually-hidden', text: `${t('order.trackingNumber')}: ` }), s.tracking_number),
          url ? h('a', { href: url, rel: 'noopener noreferrer', target: '_blank', text: t('order.trackAtCarrier', { carrier: s.carrier }) }) : null);
      })));
  }
  if (order.items?.length) {
    side.push(h('section', { class: 'card', 'aria-labelledby': 'items-h' },
      h('h2', { id: 'items-h', text: t('order.items') }),
      h('ul', { class: 'items' }, order.items.map((i) => h('li', { text: t('order.item', { quantity: i.quantity, name: i.name }) })))));
  }
  return h('div', { class: 'order-layout' }, h('div', {}, head, history), h('div', {}, side));
}
