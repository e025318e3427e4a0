// Home: every order of the signed-in customer, grouped by what matters today.
import { ApiError, get } from '../api.js';
import { h, icon } from '../dom.js';
import { formatDay, isToday, t, timeAgo } from '../i18n.js';
import { orderLabel, timeline } from './order-view.js';

const DONE = new Set(['delivered', 'returned', 'cancelled']);
const RECENT_MS = 14 * 24 * 3600 * 1000;

function eta(order) {
  return order.estimated_delivery || (order.shipments || []).map((s) => s.estimated_delivery).find(Boolean);
}

export function group(order) {
  if (!DONE.has(order.status)) {
    const e = eta(order);
    return order.status === 'out_for_delivery' || (e && isToday(e)) ? 'today' : 'onTheWay';
  }
  const last = timeline(order)[0]?.occurred_at || order.updated_at;
  return order.status === 'delivered' && Date.now() - Date.parse(last) < RECENT_MS ? 'delivered' : 'older';
}

function card(order) {
  const e = eta(order);
  let sub = order.packages?.total > 1 ? order.packages.summary : '';
  if (group(order) === 'today') sub = t('order.expectedToday');
  else if (!DONE.has(order.status) && e) sub = t('order.expected', { date: formatDay(e) });
  return h('li', {}, h('a', { class: 'order-card', href: `/orders/${order.id}`, 'data-order': order.id },
    icon(order.status),
    h('span', {},
      h('strong', { text: orderLabel(order) }),
      h('span', { class: 'sub', text: `${order.merchant.name} · ${order.external_id}` }),
      sub ? h('span', { class: 'sub', text: sub }) : null)));
}

export async function render(app) {
  let orders = [];
  const pull = h('p', { class: 'pull', 'aria-hidden': 'true', text: t('home.pull') });
  const list = h('div', { id: 'orders' });
  const refreshButton = h('button', { type: 'button', class: 'ghost', text: t('home.refresh') });
  const stamp = h('p', { class: 'freshness' });

  const draw = () => {
    if (!orders.length) {
      list.replaceChildren(h('div', { class: 'card empty' }, icon('box'),
        h('h2', { text: t('home.empty') }), h('p', { class: 'muted', text: t('home.emptyHint') })));
      return;
    }
    const groups = { today: [], onTheWay: [], delivered: [], older: [] };
    for (const o of orders) groups[group(o)].push(o);
    list.replaceChildren(...Object.entries(groups).filter(([, os]) => os.length).map(([key, os]) =>
      h('section', { class: 'group', 'aria-labelledby': `g-${key}` },
        h('h2', { id: `g-${key}`, text: t(`home.${key}`) }),
        h('ul', { class: 'orders' }, os.map(card)))));
  };

  const alive = app.alive();
  const load = async (announce = false) => {
    try {
      const res = await get('/api/me/orders');
      if (!alive()) return false;
      // A live update newer than this answer wins: answers can arrive late.
      const known = new Map(orders.map((o) => [o.id, o]));
      orders = res.data.orders.map((o) => {
        const k = known.get(o.id);
        return k && (k.cursor || 0) > (o.cursor || 0) ? k : o;
      });
      stamp.textContent = res.storedAt ? t('order.updatedAgo', { ago: timeAgo(res.storedAt) }) : '';
      for (const o of orders) app.live?.seen(o.cursor);
      draw();
      if (announce) app.announce(t('home.refreshed'));
      return true;
    } catch (err) {
      if (!alive()) return false;
      if (err instanceof ApiError && err.status === 401) { app.go('/sign-in'); return false; }
      list.replaceChildren(h('p', { class: 'error', text: t('order.loadFailed') }));
      return true;
    }
  };
  refreshButton.addEventListener('click', () => load(true));

  app.show(h('div', {}, pull,
    h('div', { class: 'page-head' }, h('h1', { text: t('home.title') }), refreshButton),
    stamp, list));
  document.title = `${t('home.title')} · Waybill`;
  if (!(await load())) return;

  // Pull to refresh: a downward drag from the very top of the page.
  let startY = null;
  app.listen(window, 'touchstart', (e) => { startY = scrollY === 0 ? e.touches[0].clientY : null; }, { passive: true });
  app.listen(window, 'touchmove', (e) => {
    if (startY !== null && e.touches[0].clientY - startY > 70) pull.dataset.active = '';
  }, { passive: true });
  app.listen(window, 'touchend', () => {
    if ('active' in pull.dataset) { delete pull.dataset.active; load(true); }
    startY = null;
  });

  const max = Math.max(0, ...orders.map((o) => o.cursor || 0));
  app.startLive('', max, (order) => {
    const i = orders.findIndex((o) => o.id === order.id);
    if (i >= 0) orders[i] = order; else orders.unshift(order);
    draw();
  });
  app.refresh = () => load();
}
