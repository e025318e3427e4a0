// Web Push from the page: ask permission after a tap, subscribe with the server's VAPID key,
// and tell the server (for one order, or for the signed-in customer's account).
import { get, request } from './api.js';

export function pushSupported() {
  return 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;
}

function keyBytes(base64url) {
  const padded = base64url.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (base64url.length % 4)) % 4);
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

/** The VAPID public key a subscription was made with, base64url, or null. */
function keyOf(sub) {
  const key = sub?.options?.applicationServerKey;
  if (!key) return null;
  return btoa(String.fromCharCode(...new Uint8Array(key))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** The current subscription of this browser, or null. */
export async function currentSubscription() {
  if (!pushSupported()) return null;
  const reg = await navigator.serviceWorker.ready;
  return reg.pushManager.getSubscription();
}

/**
 * Subscribe and register at `target` ('/api/track/<token>/push-subscriptions' or
 * '/api/me/push-subscriptions'); the service worker remembers the target to renew it.
 */
export async function subscribe(target) {
  if (!pushSupported()) throw new Error('unsupported');
  const permission = await Notification.requestPermission();
  if (permission !== 'granted') throw new Error('denied');
  const reg = await navigator.serviceWorker.ready;
  const { data } = await get('/api/push/public-key');
  let sub = await reg.pushManager.getSubscription();
  if (sub && keyOf(sub) && keyOf(sub) !== data.public_key) {
    // Made with a key the server has replaced: the worker moves it, at every place it was
    // registered, before this one is added.
    await askWorker(reg, { type: 'check-push-key' });
    sub = await reg.pushManager.getSubscription();
  }
  if (!sub) {
    sub = await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: keyBytes(data.public_key) });
  }
  await request('POST', target, { ...sub.toJSON(), vapid_key: keyOf(sub) || data.public_key });
  reg.active?.postMessage({ type: 'push-target', target });
  return sub;
}

/** Send the active worker a message and wait (5 s at most) for its answer. */
function askWorker(reg, message) {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    const timer = setTimeout(resolve, 5000);
    channel.port1.onmessage = () => { clearTimeout(timer); resolve(); };
    if (reg.active) reg.active.postMessage(message, [channel.port2]);
    else resolve();
  });
}

export async function unsubscribe(target) {
  const sub = await currentSubscription();
  if (!sub) return;
  await request('DELETE', target, sub.toJSON()).catch(() => {});
  await sub.unsubscribe();
}
