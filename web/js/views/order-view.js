// The order component shared by the tracking page and the signed-in order detail:
// status header, stepper, estimate, timeline (newest first, viewer's local time), items, carrier.
import { get } from '../api.js';
import { h, icon } from '../dom.js';
import { language, statusLabel, t, timeAgo } from '../i18n.js';

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

export const TERMINAL = new Set(['delivered', 'returned', 'cancelled']);
/** Statuses that wait for the customer to act: collect, rearrange, or look into a problem. */
export const NEEDS_YOU = new Set(['available_for_pickup', 'attempted', 'exception']);
const RECENT_MS = 14 * 24 * 3600 * 1000;

/** The customer's saved time zone if this browser knows it, else the browser's own. */
export function viewerZone(customer) {
  const zone = customer?.timezone;
  if (!zone) return undefined;
  try {
    new Intl.DateTimeFormat('en', { timeZone: zone });
    return zone;
  } catch {
    return undefined;
  }
}

/** The calendar day of `at` in `zone`, as "2026-11-28": days compare as strings. */
export function dayOf(at, zone) {
  return new Intl.DateTimeFormat('en-CA', { timeZone: zone, year: 'numeric', month: '2-digit', day: '2-digit' })
    .format(new Date(at));
}

/** "Nov 25, 2026, 10:30 AM" in the viewer's language and zone. */
export function formatDateTimeIn(at, zone) {
  return new Intl.DateTimeFormat(language(), { timeZone: zone, dateStyle: 'medium', timeStyle: 'short' })
    .format(new Date(at));
}

/** "Saturday, November 28" in the viewer's language and zone. */
export function formatDayIn(at, zone) {
  return new Intl.DateTimeFormat(language(), { timeZone: zone, weekday: 'long', day: 'numeric', month: 'long' })
    .format(new Date(at));
}

/** "Friday, December 12 at 6:00 PM" (German "Freitag, 12. Dezember um 18:00") in the viewer's
 * language and zone: a deadline needs its hour. */
export function formatDeadlineIn(at, zone) {
  // A 24-hour clock pads its hours ("02:00"), a 12-hour one does not ("2:00 AM").
  const twentyFour = new Intl.DateTimeFormat(language(), { hour: 'numeric' }).resolvedOptions().hourCycle !== 'h12';
  return new Intl.DateTimeFormat(language(), {
    timeZone: zone, weekday: 'long', day: 'numeric', month: 'long', hour: twentyFour ? '2-digit' : 'numeric', minute: '2-digit',
  }).format(new Date(at));
}

/** Until when the parcel of `event` (the latest pickup scan) waits to be collected: its
 * shipment's `pickup_until`, else the latest any parcel of the order has; null when none says. */
export function pickupUntil(order, event) {
  const ships = order.shipments || [];
  const own = ships.find((s) => s.id === event?.shipmentId)?.pickup_until;
  const latest = (a, b) => (a === null || Date.parse(b) > Date.parse(a) ? b : a);
  return own || ships.map((s) => s.pickup_until).filter(Boolean).reduce(latest, null);
}

/** A calendar date "2026-12-14" of the server's (a day already in the customer's zone) as a
 * time value that is that day wherever it is formatted with timeZone 'UTC': noon of that day,
 * never midnight UTC, which a zone west of Greenwich would show as the day before. */
function calendarDay(ymd) {
  const [y, m, d] = String(ymd).split('-').map(Number);
  return Date.UTC(y, m - 1, d, 12);
}

const SHORT_DAY = { weekday: 'short', day: 'numeric', month: 'short' };

/** "Monday, December 14" (German "Montag, 14. Dezember") of a calendar date "2026-12-14":
 * formatDayIn for a day that is no instant. */
export function formatCalendarDay(ymd) {
  return new Intl.DateTimeFormat(language(), { timeZone: 'UTC', weekday: 'long', day: 'numeric', month: 'long' })
    .format(calendarDay(ymd));
}

/** "Mon, Dec 14 – Wed, Dec 16" (German "Mo., 14. – Mi., 16. Dez.") of two calendar dates;
 * "Wed, Dec 16" when they are the same day. */
export function formatDays(first, last) {
  const f = new Intl.DateTimeFormat(language(), { ...SHORT_DAY, timeZone: 'UTC' });
  const [a, b] = [first, last].sort();
  return a === b ? f.format(calendarDay(a)) : f.formatRange(calendarDay(a), calendarDay(b));
}

/** The day a merchant or carrier gave, in the viewer's zone: `day` ("2026-12-16", to compare),
 * `short` ("Wed, Dec 16") and `long` ("Wednesday, December 16"). A date given without a time
 * (the carriers' "2026-12-16") reaches us as midnight UTC: that one is the date itself, in
 * every zone, not the evening before in the Americas. */
function givenDay(given, zone) {
  const at = given.at ? new Date(given.at) : null;
  const dateOnly = !at || (at.getUTCHours() === 0 && at.getUTCMinutes() === 0 && at.getUTCSeconds() === 0
    && at.getUTCMilliseconds() === 0);
  if (dateOnly && given.latest) {
    return { day: given.latest, short: formatDays(given.latest, given.latest), long: formatCalendarDay(given.latest) };
  }
  return {
    day: dayOf(at, zone),
    short: new Intl.DateTimeFormat(language(), { ...SHORT_DAY, timeZone: zone }).format(at),
    long: formatDayIn(at, zone),
  };
}

const GIVEN_BY = { carrier: 'order.givenCarrier', merchant: 'order.givenShop' };

/**
 * What is estimated of an order still on its way (both null once it is delivered, returned or
 * cancelled): `ours`, Waybill's window ({ earliest, latest: the "arrives by", most_likely },
 * calendar dates in the customer's zone), and `given`, the latest date a merchant or carrier
 * gave ({ source, at, ... }).
 */
export function estimateOf(order) {
  if (TERMINAL.has(order.status)) return { ours: null, given: null };
  const own = order.estimated_delivery;
  let ours = own && typeof own === 'object' && own.latest && (own.source ?? 'waybill') === 'waybill' ? own : null;
  let given = order.estimated_delivery_given ?? null;
  if (given === null && own && typeof own === 'object' && own.source && own.source !== 'waybill') given = own;
  // An answer kept offline from before windows: its estimate was the shop's bare instant.
  if (typeof own === 'string') { ours = null; given = { at: own, source: null }; }
  if (given && !given.at && !given.latest) given = null;
  return { ours, given };
}

/**
 * What is known about when the order arrives, worded from the facts (status, the time of the
 * latest scan of that status, Waybill's window and the date a merchant or carrier gave, and
 * whether they have passed) in the viewer's zone: `group` (home's heading), `lines` (what to
 * say, first the main one) and `late`.
 */
export function outlook(order, zone, now = Date.now()) {
  const status = order.status;
  const events = timeline(order);
  const latest = events.find((e) => e.status === status);
  const today = dayOf(now, zone);
  const note = latest?.description || null;
  if (status === 'delivered') {
    const at = latest?.occurred_at || events[0]?.occurred_at || order.updated_at;
    return {
      group: now - Date.parse(at) < RECENT_MS ? 'delivered' : 'older',
      lines: [latest ? t('order.deliveredOn', { date: formatDayIn(latest.occurred_at, zone) }) : orderLabel(order)],
      late: false,
    };
  }
  if (TERMINAL.has(status)) return { group: 'older', lines: note ? [note] : [], late: false };
  if (status === 'available_for_pickup') {
    // Where is the carrier's scan's location; until when, its shipment's pickup_until.
    const where = latest?.location ? t('order.pickupAt', { place: latest.location }) : t('order.pickupReady');
    const until = pickupUntil(order, latest);
    const ended = Boolean(until && Date.parse(until) <= now);
    const by = until ? t(ended ? 'order.pickupEnded' : 'order.pickupBy', { date: formatDeadlineIn(until, zone) }) : null;
    return { group: 'action', lines: [by, where, note].filter(Boolean), late: ended };
  }
  const { ours, given } = estimateOf(order);
  const theirs = given ? givenDay(given, zone) : null;
  // Theirs beside ours, saying whose it is (a date of unknown origin: "Expected …").
  const theirLine = theirs ? t(GIVEN_BY[given.source] || 'order.expected', { date: theirs.short }) : null;
  // Late once the "arrives by" has passed: our window's last day, else the date they gave.
  const late = ours ? ours.latest < today : Boolean(theirs && theirs.day < today);
  const lateLine = late ? t('order.expectedLate', { date: ours ? formatCalendarDay(ours.latest) : theirs.long }) : null;
  const outToday = status === 'out_for_delivery' && latest && dayOf(latest.occurred_at, zone) === today;
  const arrivesToday = Boolean(outToday || ours?.latest === today || theirs?.day === today);
  let main;
  if (status === 'attempted') {
    main = latest ? t('order.attemptedOn', { date: formatDayIn(latest.occurred_at, zone) }) : null;
  } else if (outToday) {
    main = t('order.expectedToday');
  } else if (status === 'out_for_delivery' && latest) {
    // On the van since another day: say since when (and, below, that it is late).
    main = t('order.outSince', { date: formatDayIn(latest.occurred_at, zone) });
  } else if (arrivesToday) {
    main = t('order.expectedToday');
  } else if (late) {
    main = lateLine;
  } else if (ours) {
    // A day of the window already gone is no day it can still come on.
    const first = ours.earliest && ours.earliest > today ? ours.earliest : today;
    main = t('order.arriving', { dates: formatDays(first, ours.latest) });
  } else if (theirs) {
    main = theirLine;
  } else {
    main = t('order.noEstimate');
  }
  const lines = [main];
  // An attempt or a delay with the carrier's word on what happens next.
  if (NEEDS_YOU.has(status) && note) lines.push(note);
  if ((status === 'attempted' || (status === 'out_for_delivery' && !outToday)) && late) lines.push(lateLine);
  if (theirLine && main !== theirLine) lines.push(theirLine);
  const stale = status === 'out_for_delivery' && latest && !outToday;
  let group = arrivesToday && !stale ? 'today' : 'onTheWay';
  if (NEEDS_YOU.has(status)) group = 'action';
  // "Arriving today" (a scan or a date of today) is not marked late beside its own words.
  return { group, lines: lines.filter(Boolean), late: late && (status === 'attempted' || !arrivesToday) };
}

/** How many of a long timeline, and of a long item list, show before "Show all". */
export const SHOWN_EVENTS = 10;
export const SHOWN_ITEMS = 5;

/** The order's timelines (its own events, then each shipment's): the events the answer carries
 * (the latest of each, oldest first), how many there are in all, and the cursor to the older
 * ones, null when none are left out. */
export function timelines(order) {
  const one = (shipmentId, events = [], total, before) => ({
    shipmentId, events, total: total ?? events.length, before: before ?? null,
  });
  return [
    one(null, order.events, order.events_total, order.events_before),
    ...(order.shipments || []).map((s) => one(s.id, s.events, s.events_total, s.events_before)),
  ];
}

/** How many events the order has in all, the ones the answer leaves out included. */
export const eventCount = (order) => timelines(order).reduce((n, tl) => n + tl.total, 0);

/** Every older event the answer leaves out, fetched page by page through `path` (the order's
 * …/events): a Map from each timeline's place (`olderKey`) to its events, oldest first.
 * Timelines already in `known` (the same cursor and count) are not fetched again. */
export async function fetchOlder(order, path, known = new Map()) {
  const found = new Map();
  await Promise.all(timelines(order).filter((tl) => tl.before).map(async (tl) => {
    const key = olderKey(tl);
    if (known.has(key)) { found.set(key, known.get(key)); return; }
    const events = [];
    let before = tl.before;
    while (before) {
      const query = new URLSearchParams({ before, limit: '100' });
      if (tl.shipmentId != null) query.set('shipment_id', String(tl.shipmentId));
      const { data } = await get(`${path}?${query}`);
      events.unshift(...data.events);
      before = data.next_before;
    }
    found.set(key, events);
  }));
  return found;
}

/** Which older events a timeline leaves out: the same cursor and count, the same events. */
export const olderKey = (tl) => `${tl.shipmentId ?? 'order'} ${tl.before} ${tl.total}`;

/** `older` (from fetchOlder for `previous`) carried over to `order`, a later state of the same
 * order, without asking the server: a timeline whose window moved on by newer events gains the
 * events that left its window. A timeline that changed otherwise (a late event inside it) is
 * left out, for fetchOlder to fetch again. */
export function carryOlder(previous, order, older) {
  const carried = new Map();
  const was = new Map(timelines(previous).map((tl) => [tl.shipmentId, tl]));
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  for (const tl of timelines(order)) {
    if (!tl.before) continue;
    const key = olderKey(tl);
    if (older.has(key)) { carried.set(key, older.get(key)); continue; }
    const prev = was.get(tl.shipmentId);
    const kept = prev && (prev.before ? older.get(olderKey(prev)) : []);
    if (!kept) continue;
    // The window now holds the last (length - added) events it held, then the added ones.
    const added = tl.total - prev.total;
    const stays = tl.events.length - added;
    const left = prev.events.length - stays;
    if (added <= 0 || stays < 0 || left < 0) continue;
    if (!same(prev.events.slice(left), tl.events.slice(0, stays))) continue;
    if (kept.length + left + tl.events.length !== tl.total) continue;
    carried.set(key, [...kept, ...prev.events.slice(0, left)]);
  }
  return carried;
}

/** The older events of `order` that `older` (from fetchOlder) holds, and whether it holds them
 * for every timeline (a live update may have moved a timeline's cursor on since). */
export function olderFor(order, older) {
  const events = [];
  let complete = true;
  for (const tl of timelines(order)) {
    if (!tl.before) continue;
    const found = older.get(olderKey(tl));
    if (found) events.push(...found.map((e) => ({ ...e, shipmentId: tl.shipmentId }))); else complete = false;
  }
  return { events, complete };
}

/** Every event of the order and its shipments that the answer carries (and `older` ones),
 * newest first; a shipment's events carry its `shipmentId`. */
export function timeline(order, older = []) {
  const events = [...older, ...(order.events || [])];
  for (const s of order.shipments || []) events.push(...s.events.map((e) => ({ ...e, shipmentId: s.id })));
  return events.sort((a, b) => Date.parse(b.occurred_at) - Date.parse(a.occurred_at));
}

/** How far one parcel (or an order without parcels) has come along LINE: the index of the last
 * step reached, and whether its status is off the line (attempted, delayed, ...). */
function progress(status, events) {
  const offLine = !LINE.includes(status);
  let last = offLine ? -1 : LINE.indexOf(status);
  if (offLine) for (const e of events) last = Math.max(last, LINE.indexOf(e.status));
  return { status, last, offLine };
}

/** The progress the bar shows: of a split order, the least advanced parcel still on its way
 * (a full bar would say "delivered" while a parcel is not). */
function orderProgress(order) {
  const ships = order.shipments || [];
  if (ships.length < 2 || ['cancelled', 'returned'].includes(order.status)) {
    return progress(order.status, [...(order.events || []), ...ships.flatMap((s) => s.events)]);
  }
  const parcels = ships.map((s) => progress(s.status, [...(order.events || []), ...s.events]));
  const open = parcels.filter((p) => !TERMINAL.has(p.status));
  return (open.length ? open : parcels).reduce((a, b) => (b.last < a.last ? b : a));
}

/** "Package 2 of 3 · DHL 00340434…": which parcel of a split order something belongs to. */
export function parcelName(order, shipmentId) {
  const ships = order.shipments || [];
  const i = ships.findIndex((s) => s.id === shipmentId);
  if (ships.length < 2 || i < 0) return null;
  return t('order.parcel', { n: i + 1, total: ships.length, carrier: ships[i].carrier, number: ships[i].tracking_number });
}

function stepper(order) {
  const labels = answerLabels(order);
  const { status, last, offLine } = orderProgress(order);
  const total = LINE.length;
  const items = LINE.map((s, i) => {
    let state = i <= last ? 'done' : 'todo';
    if (!offLine && i === last) state = 'current';
    if (offLine && i === Math.min(last + 1, total - 1)) state = TONE[status] || 'warn';
    return h('li', { 'data-state': state, 'data-step': s, title: statusLabel(s, labels.get(s)) });
  });
  const n = Math.max(1, last + 1);
  const parcels = order.shipments?.length || 0;
  const label = parcels > 1 && !['cancelled', 'returned'].includes(order.status)
    ? t('order.progressParcels', { n, total, parcels })
    : t('order.progress', { n, total });
  return [
    h('ol', { class: 'stepper', 'aria-label': label }, items),
    h('p', { class: 'stepper-labels', 'aria-hidden': 'true' },
      h('span', { text: t('step.confirmed') }), h('span', { text: t('step.delivered') })),
  ];
}

/** A "Show all" button under a collapsed list: a real button, saying which list it opens. */
function showAll(text, controls, onclick) {
  return h('button', { type: 'button', class: 'more', 'aria-controls': controls, 'aria-expanded': 'false', text, onclick });
}

/**
 * The order screen. `older` holds the events the answer leaves out, once fetched (null: the
 * timeline is collapsed to its latest SHOWN_EVENTS); `onShowAllEvents(button)` fetches them.
 * `itemsOpen` shows every item, else the first SHOWN_ITEMS and `onShowAllItems(button)`.
 * Days and times are the viewer's in `zone`; `updated` marks the status a live update just changed.
 */
export function renderOrder(order, {
  storedAt = null, extra = [], older = null, onShowAllEvents = null, itemsOpen = false, onShowAllItems = null,
  zone = undefined, updated = false,
} = {}) {
  const known = outlook(order, zone);
  const tone = TONE[order.status] || 'info';
  const head = h('section', { class: updated ? 'card order-head updated' : 'card order-head', 'aria-labelledby': 'order-status' },
    h('p', { class: 'merchant', text: t('order.number', { merchant: order.merchant.name, number: order.external_id }) }),
    h('div', { class: 'status', 'data-tone': tone, 'data-status': order.status },
      icon(order.status),
      h('h1', { id: 'order-status', text: orderLabel(order) })),
    order.packages?.total > 1 && order.packages.summary ? h('p', { class: 'muted', text: order.packages.summary }) : null,
    updated ? h('p', { class: 'updated-note', text: t('order.updatedNow') }) : null,
    stepper(order),
    known.lines.length ? h('p', { class: 'estimate', 'data-late': known.late || null, text: known.lines[0] }) : null,
    known.lines.slice(1).map((line) => h('p', { class: 'note', text: line })),
    storedAt ? h('p', { class: 'freshness', text: t('order.updatedAgo', { ago: timeAgo(storedAt) }) }) : null,
    ...extra,
  );

  const events = timeline(order, older || []);
  const total = eventCount(order);
  const collapsed = older === null && total > SHOWN_EVENTS;
  const shown = collapsed ? events.slice(0, SHOWN_EVENTS) : events;
  const history = h('section', { class: 'card', 'aria-labelledby': 'timeline-h' },
    h('h2', { id: 'timeline-h', text: t('order.timeline') }),
    shown.length
      ? h('ol', { class: 'timeline', id: 'timeline-list' }, shown.map((e) => h('li', {},
        h('time', { datetime: e.occurred_at, text: formatDateTimeIn(e.occurred_at, zone) }),
        parcelName(order, e.shipmentId) ? h('span', { class: 'parcel', text: parcelName(order, e.shipmentId) }) : null,
        h('span', { class: 'what', text: statusLabel(e.status, e.status_label) }),
        e.location ? h('span', { class: 'muted', text: ` · ${e.location}` }) : null,
        e.description ? h('p', { class: 'small', text: e.description }) : null)))
      : h('p', { class: 'muted', text: t('order.noEvents') }),
    collapsed && onShowAllEvents
      ? showAll(t('order.showAllEvents', { n: total }), 'timeline-list', (ev) => onShowAllEvents(ev.currentTarget))
      : null);

  const side = [];
  if (order.shipments?.length) {
    side.push(h('section', { class: 'card', 'aria-labelledby': 'ship-h' },
      h('h2', { id: 'ship-h', text: t('order.shipments') }),
      order.shipments.map((s, i, all) => {
        const url = carrierUrl(s.carrier, s.tracking_number);
        return h('p', { class: 'shipment' },
          all.length > 1 ? h('span', { class: 'parcel', text: t('order.parcelOnly', { n: i + 1, total: all.length }) }) : null,
          h('strong', { text: s.carrier }),
          h('span', {}, h('span', { class: 'visually-hidden', text: `${t('order.trackingNumber')}: ` }), s.tracking_number),
          url ? h('a', { href: url, rel: 'noopener noreferrer', target: '_blank', text: t('order.trackAtCarrier', { carrier: s.carrier }) }) : null);
      })));
  }
  if (order.items?.length) {
    const fold = !itemsOpen && order.items.length > SHOWN_ITEMS;
    const items = fold ? order.items.slice(0, SHOWN_ITEMS) : order.items;
    side.push(h('section', { class: 'card', 'aria-labelledby': 'items-h' },
      h('h2', { id: 'items-h', text: t('order.items') }),
      h('ul', { class: 'items', id: 'item-list' }, items.map((i) => h('li', { text: t('order.item', { quantity: i.quantity, name: i.name }) }))),
      fold && onShowAllItems
        ? showAll(t('order.showAllItems', { n: order.items.length }), 'item-list', (ev) => onShowAllItems(ev.currentTarget))
        : null));
  }
  return h('div', { class: 'order-layout' }, h('div', {}, head, history), h('div', {}, side));
}
