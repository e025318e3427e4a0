// Waybill's service worker. The server stamps VERSION, ASSETS (every versioned file) and
// APP_PAGES (the paths of js/routes.js, as patterns) in.
const VERSION = '__VERSION__';
const ASSETS = "__ASSETS__";
const APP_PAGES = "__APP_PAGES__".map((source) => new RegExp(source));
const SHELL = `waybill-shell-${VERSION}`;
const API = 'waybill-api'; // last answers, kept across versions; cleared when the session changes
const META = 'waybill-meta'; // where this browser's push subscription is registered
const EXPECTED = [SHELL, API, META];
// The customer's own answers (/api/me…) are shown offline for at most 7 days after they were
// fetched (their X-Waybill-Stored-At): enough for a trip without signal, and a device that was
// signed out remotely while offline stops showing that customer's orders a week later at the
// latest. Back online, the first 401 from any /api/me… request forgets them at once.
const PERSONAL_MAX_AGE_MS = 7 * 24 * 3600 * 1000;
const isPersonal = (url) => new URL(url).pathname.startsWith('/api/me');
// Older events ("Show all" pages: …/events?before=) are read once and never kept, and at most
// this many last answers are (the oldest go first): what is kept offline does not grow with
// the orders' histories nor with every tracking link ever opened.
const isEventPage = (url) => /\/events$/.test(new URL(url).pathname);
const API_MAX_ENTRIES = 60;

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(SHELL);
    await cache.addAll(['/', ...ASSETS, '/manifest.json', '/icons/logo.svg', '/icons/icon-192.png']);
    // The first version takes over at once; later ones wait for "Reload to update".
    if (!self.registration.active) await self.skipWaiting();
  })());
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (!EXPECTED.includes(name)) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

self.addEventListener('message', (event) => {
  const msg = event.data || {};
  if (msg.type === 'skip-waiting') self.skipWaiting();
  // A page that opened while this worker was still installing missed its claim: take it now.
  if (msg.type === 'claim') event.waitUntil(self.clients.claim());
  if (msg.type === 'push-target') event.waitUntil(rememberTarget(msg.target));
  // The app opened (or is turning push on): a VAPID key rotated since this browser subscribed
  // means subscribing again. The page may wait for the answer on a port of its own.
  if (msg.type === 'check-push-key') {
    event.waitUntil(renewIfRotated().catch(() => {}).finally(() => event.ports[0]?.postMessage('done')));
  }
});

self.addEventListener('fetch', (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (request.method !== 'GET') {
    // Signing in or out changes whose answers may be shown offline: forget them first.
    if (url.pathname.startsWith('/auth/')) event.respondWith(forgetCustomer().then(() => fetch(request)));
    // A write refused with 401: this browser is signed out (perhaps from another device).
    else if (isPersonal(request.url)) event.respondWith(forgetOn401(fetch(request)));
    return;
  }
  if (isEventPage(request.url)) return; // the network's, as any request the worker leaves alone
  if (url.pathname.startsWith('/api/track/') || url.pathname.startsWith('/api/me') || url.pathname === '/api/statuses') {
    event.respondWith(networkFirst(request));
  } else if (request.mode === 'navigate' && APP_PAGES.some((page) => page.test(url.pathname))) {
    event.respondWith(fetch(request).catch(async () => (await caches.match('/', { cacheName: SHELL })) || Response.error()));
  } else if (url.pathname.startsWith('/assets/') || url.pathname.startsWith('/icons/') || url.pathname === '/manifest.json') {
    event.respondWith(caches.match(request, { cacheName: SHELL }).then((hit) => hit || fetch(request)));
  }
});

/** Order status must be fresh: the network first, the last answer when offline. */
async function networkFirst(request) {
  const cache = await caches.open(API);
  try {
    const response = await fetch(request);
    if (response.ok) {
      const headers = new Headers(response.headers);
      headers.set('X-Waybill-Stored-At', String(Date.now()));
      const body = await response.clone().arrayBuffer();
      await cache.put(request, new Response(body, { status: response.status, headers }));
      await trim(cache);
    } else if (response.status === 401) {
      await forgetCustomer();
    }
    return response;
  } catch (err) {
    const hit = await cache.match(request);
    if (hit && isPersonal(request.url) && tooOld(hit)) {
      await cache.delete(request);
      throw err;
    }
    if (hit) return hit;
    throw err;
  }
}

/** Keep the API_MAX_ENTRIES most recently stored answers, and event pages an older version
 * of this worker kept, never. */
async function trim(cache) {
  const kept = [];
  for (const request of await cache.keys()) {
    if (isEventPage(request.url)) { await cache.delete(request); continue; }
    const hit = await cache.match(request);
    kept.push([Number(hit?.headers.get('X-Waybill-Stored-At')) || 0, request]);
  }
  kept.sort((a, b) => b[0] - a[0]);
  for (const [, request] of kept.slice(API_MAX_ENTRIES)) await cache.delete(request);
}

/** A kept personal answer past PERSONAL_MAX_AGE_MS (or stamped in the future: the clock was
 * set back) is not shown. */
function tooOld(response) {
  const stored = Number(response.headers.get('X-Waybill-Stored-At'));
  return !Number.isFinite(stored) || Math.abs(Date.now() - stored) > PERSONAL_MAX_AGE_MS;
}

async function forgetOn401(pending) {
  const response = await pending;
  if (response.status === 401) await forgetCustomer();
  return response;
}

async function forgetCustomer() {
  const cache = await caches.open(API);
  for (const request of await cache.keys()) {
    if (new URL(request.url).pathname.startsWith('/api/me')) await cache.delete(request);
  }
}

async function rememberTarget(target) {
  const cache = await caches.open(META);
  const targets = new Set(await readTargets());
  targets.add(target);
  await cache.put('/__push-targets', new Response(JSON.stringify([...targets])));
}

async function readTargets() {
  return (await readMeta('/__push-targets')) || [];
}

async function readMeta(path) {
  const hit = await caches.match(path, { cacheName: META }); // never makes the cache
  return hit ? hit.json() : null;
}

async function writeMeta(path, value) {
  const cache = await caches.open(META);
  if (value === null) await cache.delete(path);
  else await cache.put(path, new Response(JSON.stringify(value)));
}

self.addEventListener('push', (event) => {
  let data;
  try {
    data = event.data ? event.data.json() : {};
  } catch {
    data = { title: 'Waybill', body: event.data.text() };
  }
  event.waitUntil(self.registration.showNotification(data.title || 'Waybill', {
    body: data.body || '',
    tag: data.tag,
    renotify: Boolean(data.tag),
    icon: '/icons/icon-192.png',
    badge: '/icons/icon-192.png',
    lang: data.lang,
    data: { url: data.url || '/', orderId: data.order_id },
  }));
  // Sent with the key this browser subscribed with, which the server has replaced: move over.
  if (data.vapid_key) event.waitUntil(renewIfRotated(data.vapid_key).catch(() => {}));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const target = new URL(event.notification.data?.url || '/', self.location.origin);
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    const same = windows.find((w) => new URL(w.url).pathname === target.pathname);
    if (same) return same.focus();
    // Reuse an open app window (the installed app has one) before opening another.
    const open = windows.find((w) => 'navigate' in w && w.url.startsWith(self.location.origin));
    if (open) {
      const moved = await open.navigate(target.href).catch(() => null);
      if (moved) return moved.focus();
    }
    return self.clients.openWindow(target.href);
  })());
});

self.addEventListener('pushsubscriptionchange', (event) => {
  event.waitUntil((async () => {
    let sub = event.newSubscription;
    if (!sub) {
      const key = await serverKey().catch(() => event.oldSubscription?.options?.applicationServerKey);
      sub = await self.registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
    }
    await register(event.oldSubscription?.toJSON(), sub);
  })());
});

const base64url = (buffer) => btoa(String.fromCharCode(...new Uint8Array(buffer)))
  .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');

/** The VAPID public key a subscription was made with, base64url (as the server writes it). */
function keyOf(sub) {
  const key = sub?.options?.applicationServerKey;
  return key ? base64url(key) : null;
}

async function serverKey() {
  const answer = await fetch('/api/push/public-key', { cache: 'no-store' });
  return (await answer.json()).public_key;
}

/**
 * The server signs with another VAPID key than this browser subscribed with (it was rotated):
 * subscribe again with the current key and tell every place this browser was registered.
 * A push service takes only messages signed with the subscription's own key, so once the
 * server drops the old key, a browser that did not move would hear nothing more.
 *
 * The old subscription must go before the new one can be made, so the move is written down
 * first ('/__push-moving', with the old subscription): until every place has the new one, the
 * next check (the app opening, the next push) finishes it.
 */
async function renewIfRotated(current) {
  const sub = await self.registration.pushManager.getSubscription();
  const moving = await readMeta('/__push-moving'); // a move an earlier check did not finish
  if (!sub && !moving) return;
  const have = keyOf(sub);
  if (sub && !have) return; // a browser that does not say its key: nothing to compare
  const key = current || await serverKey();
  if (!key || (have === key && !moving)) return;
  if (!(await readTargets()).length) return; // registered nowhere: nothing to move
  let fresh = sub;
  let old = moving?.old;
  if (!sub || have !== key) {
    if (sub) {
      old = sub.toJSON();
      await writeMeta('/__push-moving', { old });
      await sub.unsubscribe(); // one subscription per worker: the old one goes first
    }
    fresh = await self.registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
  }
  await register(old, fresh); // throws when a place did not take it: tried again next time
  await writeMeta('/__push-moving', null);
}

/**
 * Replace the subscription `old` (its JSON) by `sub` at every target this browser's
 * subscription was registered at; throws when one of them did not take the new one.
 */
async function register(old, sub) {
  const body = { ...sub.toJSON(), vapid_key: keyOf(sub) || undefined };
  let refused = 0;
  for (const target of await readTargets()) {
    const headers = { 'Content-Type': 'application/json' };
    if (target.startsWith('/api/me/')) {
      const me = await fetch('/api/me', { credentials: 'same-origin' });
      if (!me.ok) continue; // signed out: that account's push went with the sign-out
      headers['X-CSRF-Token'] = (await me.json()).csrf_token;
    }
    if (old) {
      await fetch(target, { method: 'DELETE', headers, credentials: 'same-origin', body: JSON.stringify(old) }).catch(() => {});
    }
    const answer = await fetch(target, { method: 'POST', headers, credentials: 'same-origin', body: JSON.stringify(body) })
      .catch(() => null);
    if (!answer?.ok) refused += 1;
  }
  if (refused) throw new Error(`${refused} place(s) did not take the new push subscription`);
}
