// Home: every order of the signed-in customer, grouped by what matters today.
import { ApiError, get } from '../api.js';
import { h, icon } from '../dom.js';
import { t, timeAgo } from '../i18n.js';
import { orderLabel, outlook, viewerZone } from './order-view.js';

// Orders that wait for the customer first, then what arrives today.
const GROUPS = ['action', 'today', 'onTheWay', 'delivered', 'older'];
/** How long a card a live update changed stays marked. */
export const UPDATED_MS = 60 * 1000;

export const group = (order, zone) => outlook(order, zone).group;

function card(order, zone, updated) {
  const known = outlook(order, zone);
  const packages = order.packages?.total > 1 ? order.packages.summary : null;
  return h('li', {}, h('a', { class: updated ? 'order-card updated' : 'order-card', href: `/orders/${order.id}`, 'data-order': order.id },
    icon(order.status),
    h('span', { class: 'card-text' },
      h('strong', { text: orderLabel(order) }),
      h('span', { class: 'sub', text: `${order.merchant.name} · ${order.external_id}` }),
      packages ? h('span', { class: 'sub', text: packages }) : null,
      known.lines.map((line, i) => h('span', { class: 'sub', 'data-late': (i === 0 && known.late) || null, text: line })),
      updated ? h('span', { class: 'updated-note', text: t('order.updatedNow') }) : null)));
}

export async function render(app) {
  let orders = [];
  const pull = h('p', { class: 'pull', 'aria-hidden': 'true', text: t('home.pull') });
  const list = h('div', { id: 'orders' });
  const refreshButton = h('button', { type: 'button', class: 'ghost', text: t('home.refresh') });
  const stamp = h('p', { class: 'freshness' });
  const zone = viewerZone(app.customer);
  const updatedAt = new Map(); // order id → when a live update changed it

  const draw = () => {
    if (!orders.length) {
      list.replaceChildren(h('div', { class: 'card empty' }, icon('box'),
        h('h2', { text: t('home.empty') }), h('p', { class: 'muted', text: t('home.emptyHint') })));
      return;
    }
    const groups = new Map(GROUPS.map((key) => [key, []]));
    for (const o of orders) groups.get(group(o, zone)).push(o);
    const fresh = (o) => Date.now() - (updatedAt.get(o.id) || 0) < UPDATED_MS;
    // A redraw keeps the keyboard on the order it had reached, wherever that order moved to.
    const reached = list.contains(document.activeElement) ? document.activeElement.dataset.order : null;
    list.replaceChildren(...[...groups].filter(([, os]) => os.length).map(([key, os]) =>
      h('section', { class: 'group', 'aria-labelledby': `g-${key}` },
        h('h2', { id: `g-${key}`, text: t(`home.${key}`) }),
        h('ul', { class: 'orders' }, os.map((o) => card(o, zone, fresh(o)))))));
    if (reached) list.querySelector(`a[data-order="${CSS.escape(reached)}"]`)?.focus();
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
      // Offline now: try again by itself once the connection is back.
      app.retryLater(() => load());
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
    const changed = i < 0 || orders[i].status !== order.status;
    if (i >= 0) orders[i] = order; else orders.unshift(order);
    updatedAt.set(order.id, Date.now());
    if (changed) app.announce(t('home.changed', { number: order.external_id, status: orderLabel(order) }));
    draw();
    // The mark says "just now": it goes once that is no longer true.
    setTimeout(() => { if (alive()) draw(); }, UPDATED_MS + 100);
  });
  app.refresh = () => load();
}
