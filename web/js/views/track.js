// The tracking page /t/<token> (no account) and the order detail /orders/<id> (signed in).
import { ApiError, findOrder, get, request } from '../api.js';
import { h } from '../dom.js';
import { t } from '../i18n.js';
import { pushSupported, subscribe } from '../push.js';
import {
  SHOWN_EVENTS, SHOWN_ITEMS, TERMINAL, carryOlder, fetchOlder, olderFor, orderLabel, renderOrder, viewerZone,
} from './order-view.js';

/** How long the status a live update changed stays marked "Updated just now". */
const UPDATED_MS = 60 * 1000;

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

/** A wrong tracking link is no dead end: sign in (or go to all the orders), or have the
 * order's link mailed by its number and the address it was placed with. */
function lostPage(app, accountLink) {
  const alive = app.alive();
  const error = h('p', { class: 'error', role: 'alert', id: 'find-error' });
  const number = h('input', {
    id: 'find-number', name: 'order_number', autocomplete: 'off', spellcheck: 'false', maxlength: '200',
    required: true, 'aria-describedby': 'find-error',
  });
  const email = h('input', {
    id: 'find-email', name: 'email', type: 'email', autocomplete: 'email', maxlength: '320',
    required: true, 'aria-describedby': 'find-error',
  });
  const send = h('button', { type: 'submit', class: 'primary', text: t('find.send') });
  let sending = false; // not `disabled`: that would take the focus off the button
  const form = h('form', { class: 'card find-order', id: 'find-order', novalidate: true, 'aria-labelledby': 'find-h' },
    h('h2', { id: 'find-h', text: t('find.title') }),
    h('p', { id: 'find-intro', text: t('find.intro') }),
    h('div', { class: 'field' }, h('label', { for: 'find-number', text: t('find.number') }), number),
    h('div', { class: 'field' }, h('label', { for: 'find-email', text: t('find.email') }), email),
    error,
    h('div', { class: 'actions' }, send));
  // Signed in: the address is most likely the account's.
  app.signedIn.then((customer) => { if (alive() && customer && !email.value) email.value = customer.email; });

  /** Say what is wrong, mark the field that is (if one is) and put the cursor there. */
  const refuse = (key, input = null) => {
    error.textContent = t(key);
    input?.setAttribute('aria-invalid', 'true');
    input?.focus();
  };

  /** The same words whether or not the order exists: the server does not tell either. */
  const sent = (address) => {
    const note = h('p', { id: 'find-sent', tabindex: '-1', text: t('find.sent', { email: address }) });
    const again = h('button', { type: 'button', text: t('find.another') });
    const done = h('section', { class: 'card find-order', id: 'find-order', 'aria-labelledby': 'find-h' },
      h('h2', { id: 'find-h', text: t('find.sentTitle') }), note, h('div', { class: 'actions' }, again));
    again.addEventListener('click', () => {
      number.value = '';
      done.replaceWith(form);
      number.focus();
    });
    form.replaceWith(done);
    note.focus();
  };

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (sending) return;
    error.textContent = '';
    number.removeAttribute('aria-invalid');
    email.removeAttribute('aria-invalid');
    const orderNumber = number.value.trim();
    const address = email.value.trim();
    if (!orderNumber) return refuse('find.badNumber', number);
    if (!address || !email.checkValidity()) return refuse('find.badEmail', email);
    sending = true;
    send.setAttribute('aria-busy', 'true');
    try {
      await findOrder(address, orderNumber);
      if (alive()) sent(address);
    } catch (err) {
      if (!alive()) return;
      const status = err instanceof ApiError ? err.status : 0;
      if (status === 422) {
        if (err.fields.order_number) refuse('find.badNumber', number);
        else refuse('find.badEmail', email);
      } else refuse(status === 429 ? 'find.tooMany' : 'find.failed');
    } finally {
      sending = false;
      send.removeAttribute('aria-busy');
    }
  });

  document.title = `${t('lost.title')} · Waybill`;
  app.show(
    h('section', { class: 'card', 'aria-labelledby': 'lost-h' },
      h('h1', { id: 'lost-h', text: t('lost.title') }),
      h('p', { text: t('lost.body') }),
      h('p', { class: 'link-row' }, accountLink())),
    form);
}

/** A sentence about `n` things: the key's `.one` form for one, the key itself for more. */
const counted = (key, n, vars = {}) => t(n === 1 ? `${key}.one` : key, { ...vars, n });

export async function render(app, { token, orderId }) {
  const path = token ? `/api/track/${encodeURIComponent(token)}` : `/api/me/orders/${orderId}`;
  let current = null;
  let lost = false; // a wrong tracking link, its page shown
  const alive = app.alive();
  const mute = orderId ? muteSwitch(orderId) : null;

  const eventsPath = `${path}/events`;
  // What the customer opened on this screen: it stays open across live updates.
  // older: null while the timeline is collapsed, else its left-out events by timeline.
  const opened = { older: null, items: false, storedAt: null, fetching: null, changedAt: 0 };
  // The tracking link does not need an account; whether this browser has one shows once known.
  let customer = app.customer;
  if (token) {
    app.signedIn.then((found) => {
      if (!alive() || !found) return;
      customer = found;
      app.main.querySelector('.link-row')?.replaceChildren(accountLink());
    });
  }

  /** To all the customer's orders when signed in, else to signing in. */
  const accountLink = () => (customer
    ? h('a', { href: '/', text: t(token ? 'order.allYours' : 'order.back') })
    : h('a', { href: '/sign-in', text: t('order.signIn') }));

  /** Every older event of `order`, those already at hand reused; null if it could not load. */
  const loadOlder = (order) => {
    opened.fetching ||= fetchOlder(order, eventsPath, opened.older || new Map())
      .finally(() => { opened.fetching = null; });
    return opened.fetching.catch(() => null);
  };

  const showAllEvents = async (button) => {
    button.disabled = true;
    button.setAttribute('aria-busy', 'true');
    const older = await loadOlder(current);
    if (!alive()) return;
    if (!older) {
      button.disabled = false;
      button.removeAttribute('aria-busy');
      app.announce(t('order.moreFailed'));
      return;
    }
    // Drawn from the order as it is now: a live update may have come in meanwhile.
    opened.older = older;
    draw(current, opened.storedAt);
    const total = app.main.querySelectorAll('#timeline-list > li').length;
    focusAdded('#timeline-list', SHOWN_EVENTS);
    app.announce(counted('order.eventsAdded', total - SHOWN_EVENTS, { total }));
  };

  const showAllItems = () => {
    opened.items = true;
    draw(current, opened.storedAt);
    const total = current.items.length;
    focusAdded('#item-list', SHOWN_ITEMS);
    app.announce(counted('order.itemsAdded', total - SHOWN_ITEMS, { total }));
  };

  /** Focus the first entry the list gained (the button that had focus is gone). */
  const focusAdded = (list, index) => {
    const first = app.main.querySelector(`${list} > li:nth-child(${index + 1})`);
    if (!first) return;
    first.tabIndex = -1;
    first.focus();
  };

  /**
   * A redraw (a live update, the service worker's answer) keeps the keyboard where it was: on
   * the event or item it had reached, or on the same button or link, not dropped to the page.
   * Gives what puts the focus back once the screen is drawn again, or null.
   */
  const focusPlace = () => {
    const had = document.activeElement;
    if (!had || had === document.body || !app.main.contains(had)) return null;
    const reached = had.closest('#timeline-list > li, #item-list > li');
    if (reached) {
      const index = [...reached.parentElement.children].indexOf(reached);
      const list = `#${reached.parentElement.id}`;
      return () => focusAdded(list, index);
    }
    // The same control: the one with the same id, or opening the same list ("Show all 201
    // events" is the button that said 200 a moment ago), or with the same words.
    const controls = had.getAttribute('aria-controls');
    const same = (el) => {
      if (had.id) return el.id === had.id;
      if (controls) return el.getAttribute('aria-controls') === controls;
      return el.textContent === had.textContent;
    };
    return () => {
      const again = [...app.main.querySelectorAll(had.tagName)].find(same);
      if (again && document.activeElement !== again) again.focus();
    };
  };

  /** The order as it is now; the older events already shown stay shown. */
  const follow = (order) => {
    if (opened.older && current) opened.older = carryOlder(current, order, opened.older);
    current = order;
  };

  const draw = (order, storedAt) => {
    opened.storedAt = storedAt;
    // A delivered or cancelled order has nothing left to notify about.
    const notify = token && !TERMINAL.has(order.status) ? notifyButton(token) : null;
    const extra = [token ? notify : mute, h('p', { class: 'link-row' }, accountLink())];
    let older = null;
    if (opened.older) {
      const held = olderFor(order, opened.older);
      older = held.events;
      // A change moved a timeline on past what was fetched: fetch the gap, then show it.
      if (!held.complete) {
        loadOlder(order).then((found) => {
          if (!found || !alive() || order !== current) return;
          opened.older = found;
          draw(order, opened.storedAt);
        });
      }
    }
    const place = focusPlace();
    app.show(renderOrder(order, {
      storedAt, extra, older, onShowAllEvents: showAllEvents, itemsOpen: opened.items, onShowAllItems: showAllItems,
      zone: viewerZone(customer), updated: Date.now() - opened.changedAt < UPDATED_MS,
    }));
    place?.();
    document.title = `${orderLabel(order)} · ${order.merchant.name} · Waybill`;
  };

  /** The status just changed: marked "just now", and the mark goes once that is no longer true. */
  const markChanged = (order) => {
    opened.changedAt = Date.now();
    setTimeout(() => { if (alive() && current === order) draw(order, opened.storedAt); }, UPDATED_MS + 100);
  };

  const load = async () => {
    try {
      const { data, storedAt } = await get(path);
      if (!alive()) return;
      // A live update newer than this answer wins: answers can arrive late.
      if (current && (current.cursor || 0) > (data.cursor || 0)) return;
      // A change may come by this answer first (the service worker's, a retry), not by the
      // socket: it is told all the same, once.
      const changed = Boolean(current) && current.status !== data.status;
      follow(data);
      if (changed) markChanged(data);
      draw(data, storedAt);
      if (changed) app.announce(t('order.changed', { status: orderLabel(data) }));
      if (app.live) app.live.seen(data.cursor);
      else startLive();
    } catch (err) {
      if (!alive()) return;
      if (err instanceof ApiError && err.status === 401 && !token) return app.go('/sign-in');
      const missing = err instanceof ApiError && err.status === 404;
      if (missing && token) {
        // Drawn once: a refresh (the service worker taking over) keeps what is typed there.
        if (!lost) lostPage(app, accountLink);
        lost = true;
        return;
      }
      app.show(h('section', { class: 'card' },
        h('h1', { text: missing ? t('order.notFound') : t('order.loadFailed') }),
        missing ? null : h('button', { type: 'button', onclick: load, text: t('order.retry') })));
      // Offline now: try again by itself once the connection is back.
      if (!missing) app.retryLater(load);
    }
  };

  // Started after the first answer that arrives, so it resumes from that answer's cursor.
  const startLive = () => app.startLive(token ? `?track=${encodeURIComponent(token)}` : '', current.cursor, (order) => {
    if (order.id !== current.id) return;
    const changed = order.status !== current.status;
    follow(order);
    if (changed) markChanged(order);
    draw(order, null);
    if (changed) app.announce(t('order.changed', { status: orderLabel(order) }));
  });

  app.refresh = load;
  await load();
}
