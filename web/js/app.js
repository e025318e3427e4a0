// The one controller: picks the view for the URL, owns the live connection, the service worker,
// the install button and the "Reload to update" offer.
import { me } from './api.js';
import { h } from './dom.js';
import { followCustomer, loadStatuses, preferredLanguage, setLanguage, t } from './i18n.js';
import { Live } from './live.js';
import { match } from './routes.js';

// Set while this browser is signed in: whether a tracking page should ask who is looking.
const SIGNED_IN = 'waybill.signedIn';

export class App {
  constructor(doc) {
    this.doc = doc;
    this.main = doc.getElementById('main');
    this.liveBadge = doc.getElementById('live');
    this.announcer = h('p', { class: 'visually-hidden', role: 'status', 'aria-live': 'polite', id: 'announce' });
    doc.body.append(this.announcer);
    this.live = null;
    this.customer = null;
    this.signedIn = Promise.resolve(null); // the customer, once known, on every screen
    this.cleanups = [];
    this.generation = 0;
    // Answers fetched before a worker controlled the page are not kept for offline use. A page
    // whose own load bypassed the worker (workerStart 0) had its preloads bypass it too, even
    // if the worker claimed the page before this line ran.
    const nav = performance.getEntriesByType?.('navigation')[0];
    this.controlledAtStart = Boolean(navigator.serviceWorker?.controller) && (!nav || nav.workerStart > 0);
  }

  /** A check a view keeps: false once the customer has moved to another screen. */
  alive() {
    const generation = this.generation;
    return () => generation === this.generation;
  }

  async start() {
    await setLanguage(preferredLanguage());
    this.translateShell();
    // The badge follows the connection on every screen, with or without a live socket.
    addEventListener('online', () => this.showLiveState());
    addEventListener('offline', () => this.showLiveState());
    this.showLiveState();
    this.followLinks();
    this.offerInstall();
    await this.route();
    // After the first screen is up, so the worker's precaching does not compete with it.
    if (document.readyState === 'complete') this.registerWorker();
    else addEventListener('load', () => this.registerWorker(), { once: true });
  }

  translateShell() {
    const d = this.doc;
    d.querySelector('.skip').textContent = t('app.skip');
    d.getElementById('install').textContent = t('app.install');
    d.getElementById('install-text').textContent = t('app.installWhy');
    d.getElementById('install-later').textContent = t('app.later');
    d.getElementById('nav-settings').textContent = t('app.settings');
  }

  async route() {
    const { view: name, params } = match(location.pathname) || { view: 'home', params: {} };
    const settingsLink = this.doc.getElementById('nav-settings');
    if (name !== 'track' || params.orderId) {
      this.customer = await this.whoIsSignedIn();
      // The language saved on any device (or the one the orders came with) wins over this
      // browser's, whichever way the customer signed in.
      if (this.customer && (await followCustomer(this.customer))) this.translateShell();
      this.signedIn = Promise.resolve(this.customer);
      if (!this.customer && name !== 'sign-in') return this.go('/sign-in', { replace: true });
      if (this.customer && name === 'sign-in') return this.go('/', { replace: true });
    } else if (localStorage.getItem(SIGNED_IN)) {
      // A tracking link opens without an account: asked beside the order, not before it, and
      // only in a browser that was signed in (a 401 is an error in the console).
      const alive = this.alive();
      this.signedIn = this.whoIsSignedIn().then((customer) => {
        if (alive()) { this.customer = customer; settingsLink.hidden = !customer; }
        return customer;
      });
    } else {
      this.customer = null;
      this.signedIn = Promise.resolve(null);
    }
    settingsLink.hidden = !this.customer || name === 'settings';
    const view = await import(`./views/${name}.js`);
    this.main.dataset.view = name;
    await view.render(this, params);
  }

  /** The signed-in customer, else null; remembers which it was when the server said so (not
   * when the question could not be asked, offline). */
  async whoIsSignedIn() {
    try {
      const customer = await me();
      if (customer) localStorage.setItem(SIGNED_IN, '1');
      else localStorage.removeItem(SIGNED_IN);
      return customer;
    } catch {
      return null;
    }
  }

  /** Move to another screen: a full load where the session changed, else in place. */
  go(path, { replace = false, reload = false } = {}) {
    if (reload) { location.assign(path); return; }
    history[replace ? 'replaceState' : 'pushState']({}, '', path);
    this.teardown();
    return this.route();
  }

  teardown() {
    this.generation += 1;
    this.live?.stop();
    this.live = null;
    this.showLiveState();
    this.refresh = null;
    this.retryDelay = 0;
    for (const undo of this.cleanups.splice(0)) undo();
  }

  /** Call `retry` once the connection is back; online already (the server did not answer, or
   * the network is not quite back), after a pause that grows to half a minute. */
  retryLater(retry) {
    if (!navigator.onLine) {
      this.listen(window, 'online', retry, { once: true });
      return;
    }
    const alive = this.alive();
    this.retryDelay = Math.min(30000, (this.retryDelay || 1000) * 2);
    setTimeout(() => { if (alive()) retry(); }, this.retryDelay);
  }

  listen(target, type, fn, options) {
    target.addEventListener(type, fn, options);
    this.cleanups.push(() => target.removeEventListener(type, fn, options));
  }

  show(...nodes) {
    this.main.replaceChildren(...nodes);
    this.main.setAttribute('aria-busy', 'false');
  }

  announce(text) {
    this.announcer.textContent = text;
  }

  startLive(query, cursor, onOrder) {
    this.live?.stop();
    const live = new Live(query);
    live.seen(cursor);
    live.addEventListener('order', (e) => onOrder(e.detail));
    live.addEventListener('state', () => this.showLiveState());
    this.live = live.start();
    this.showLiveState();
  }

  /** "Offline" whenever the browser is, on any screen; else the live socket's state where the
   * screen has one (live, connecting), and nothing where it has none or was refused one. */
  showLiveState() {
    let state = navigator.onLine ? this.live?.state : 'offline';
    // Back online, the socket that dropped is on its way back.
    if (navigator.onLine && state === 'offline') state = 'connecting';
    const shown = ['live', 'connecting', 'offline'].includes(state);
    this.liveBadge.hidden = !shown;
    if (!shown) return;
    this.liveBadge.dataset.state = state;
    this.liveBadge.textContent = t(`live.${state}`);
  }

  registerWorker() {
    if (!('serviceWorker' in navigator)) return;
    let hadController = Boolean(navigator.serviceWorker.controller);
    navigator.serviceWorker.register('/sw.js', { scope: '/' }).then((reg) => {
      if (reg.waiting && navigator.serviceWorker.controller) this.offerUpdate(reg.waiting);
      reg.addEventListener('updatefound', () => {
        const next = reg.installing;
        next?.addEventListener('statechange', () => {
          if (next.state === 'installed' && navigator.serviceWorker.controller) this.offerUpdate(next);
        });
      });
    }).catch(() => {});
    // The first worker took over after this page fetched its data and labels: fetch them again
    // through the worker, once, so that an offline visit has these answers.
    const keepForOffline = () => {
      if (this.controlledAtStart || !navigator.serviceWorker.controller) return;
      this.controlledAtStart = true;
      this.refresh?.();
      loadStatuses();
    };
    keepForOffline();
    // clients.claim() takes only the pages already running when the first worker activates:
    // one whose load began during the install stays uncontrolled, and would keep nothing for
    // offline use. Such a page asks the active worker to claim it.
    navigator.serviceWorker.ready.then((reg) => {
      if (!navigator.serviceWorker.controller) reg.active?.postMessage({ type: 'claim' });
      // Subscribed to push with a VAPID key the server has since rotated: subscribe again.
      if (navigator.onLine) reg.active?.postMessage({ type: 'check-push-key' });
    }).catch(() => {});
    let reloading = false;
    navigator.serviceWorker.addEventListener('controllerchange', () => {
      if (!hadController) { hadController = true; keepForOffline(); return; }
      if (!reloading) { reloading = true; location.reload(); }
    });
  }

  followLinks() {
    // Links inside the app change screens in place; the worker keeps working offline.
    this.doc.addEventListener('click', (event) => {
      const a = event.target.closest?.('a[href^="/"]');
      if (!a || a.target || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
      const url = new URL(a.href);
      if (!match(url.pathname)) return;
      event.preventDefault();
      this.go(url.pathname + url.search);
    });
    addEventListener('popstate', () => { this.teardown(); this.route(); });
  }

  offerUpdate(worker) {
    const bar = this.doc.getElementById('update');
    const button = h('button', { type: 'button', text: t('app.reload') });
    button.addEventListener('click', () => worker.postMessage({ type: 'skip-waiting' }));
    bar.replaceChildren(h('span', { text: t('app.update') }), button);
    bar.hidden = false;
  }

  offerInstall() {
    // A fixed bar at the bottom: appearing late, it moves nothing on the page.
    const offer = this.doc.getElementById('install-offer');
    const later = this.doc.getElementById('install-later');
    addEventListener('beforeinstallprompt', (event) => {
      event.preventDefault();
      this.installPrompt = event;
      if (!sessionStorage.getItem('waybill.installLater')) offer.hidden = false;
    });
    this.doc.getElementById('install').addEventListener('click', async () => {
      const prompt = this.installPrompt;
      this.installPrompt = null;
      offer.hidden = true;
      if (prompt) await prompt.prompt();
    });
    later.addEventListener('click', () => { offer.hidden = true; sessionStorage.setItem('waybill.installLater', '1'); });
    addEventListener('appinstalled', () => { offer.hidden = true; });
    // iOS Safari has no install prompt; push there needs the Home Screen app.
    const ios = /iphone|ipad|ipod/i.test(navigator.userAgent) && !navigator.standalone;
    if (ios && !localStorage.getItem('waybill.iosHint')) {
      const hint = this.doc.getElementById('ios-hint');
      const close = h('button', { type: 'button', class: 'ghost', text: t('app.dismiss') });
      close.addEventListener('click', () => { hint.hidden = true; localStorage.setItem('waybill.iosHint', '1'); });
      hint.replaceChildren(h('span', { text: t('app.iosHint') }), close);
      hint.hidden = false;
    }
  }
}
