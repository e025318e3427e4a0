// The tracking page /t/<token> (no account) and the order detail /orders/<id> (signed in).
import { ApiError, get, request } from '../api.js';
import { h } from '../dom.js';
import { t } from '../i18n.js';
import { pushSupported, subscribe } from '../push.js';
import { orderLabel, renderOrder } from './order-view.js';

function notifyButton(token) {
  const note = h('p', { class: 'small muted', role: 'status' });
  const button = h('button', { type: 'button', class: 'primary', id: 'notify-me', text: t('notify.button') });
  button.addEventListener('click', async () => {
    if (!pushSupported()) { note.textContent = t('notify.unsupported'); return; }
    button.disabled = true;
    try {
      await subscribe(`/api/track/${encodeURIComponent(token)}/push-subscriptions`);
      localStorage.setItem(`waybill.notify.${token}`, '1');
      button.hidden = true;
      note.textContent = t('notify.on');
    } catch (err) {
      note.textContent = err.message === 'denied' ? t('notify.denied') : t('notify.failed');
      button.disabled = false;
    }
  });
  if (localStorage.getItem(`waybill.notify.${token}`)) {
    button.hidden = true;
    note.textContent = t('notify.on');
  }
  return h('div', { class: 'actions', id: 'notify' }, button, note);
}

/** Signed-in customers may silence one order on every channel. */
function muteSwitch(orderId) {
  const path = `/api/me/orders/${orderId}/preferences`;
  const input = h('input', { type: 'checkbox', role: 'switch', id: 'mute-order', disabled: true });
  get(path).then(({ data }) => { input.checked = Boolean(data.muted); input.disabled = false; }).catch(() => {});
  input.addEventListener('change', async () => {
    input.disabled = true;
    try {
      await request('PUT', path, { muted: input.checked });
    } catch {
      input.checked = !input.checked;
    }
    input.disabled = false;
  });
  return h('label', { class: 'switch', for: 'mute-order' }, h('span', { text: t('order.mute') }), input);
}

export async function render(app, { token, orderId }) {
  const path = token ? `/api/track/${encodeURIComponent(token)}` : `/api/me/orders/${orderId}`;
  let current = null;
  const alive = app.alive();
  const mute = orderId ? muteSwitch(orderId) : null;

  const draw = (order, storedAt) => {
    const extra = token
      ? [notifyButton(token), h('p', { class: 'link-row' }, h('a', { href: '/sign-in', text: t('order.signIn') }))]
      : [mute, h('p', { class: 'link-row' }, h('a', { href: '/', text: t('order.back') }))];
    app.show(renderOrder(order, { storedAt, extra }));
    document.title = `${orderLabel(order)} · ${order.merchant.name} · Waybill`;
  };

  const load = async () => {
    try {
      const { data, storedAt } = await get(path);
      if (!alive()) return;
      // A live update newer than this answer wins: answers can arrive late.
      if (current && (current.cursor || 0) > (data.cursor || 0)) return;
      current = data;
      draw(data, storedAt);
      if (app.live) app.live.seen(data.cursor);
      else startLive();
    } catch (err) {
      if (!alive()) return;
      if (err instanceof ApiError && err.status === 401 && !token) return app.go('/sign-in');
      const missing = err instanceof ApiError && err.status === 404;
      app.show(h('section', { class: 'card' },
        h('h1', { text: missing ? t('order.notFound') : t('order.loadFailed') }),
        missing ? null : h('button', { type: 'button', onclick: load, text: t('order.retry') })));
    }
  };

  // Started after the first answer that arrives, so it resumes from that answer's cursor.
  const startLive = () => app.startLive(token ? `?track=${encodeURIComponent(token)}` : '', current.cursor, (order) => {
    if (order.id !== current.id) return;
    const changed = order.status !== current.status;
    current = order;
    draw(order, null);
    if (changed) app.announce(t('order.changed', { status: orderLabel(order) }));
  });

  app.refresh = load;
  await load();
}
