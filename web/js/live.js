// The live connection: one WebSocket per page, resumed from the last cursor after any drop.
const MAX_DELAY = 30000;
const FINAL = new Set([1008, 4401, 4403, 4404]);

export class Live extends EventTarget {
  /** @param {string} query '' for all of the customer's orders, or '?track=<token>' */
  constructor(query = '') {
    super();
    this.query = query;
    this.cursor = 0;
    this.attempt = 0;
    this.stopped = false;
    this.state = 'connecting';
    this.onOnline = () => this.reconnectNow();
    this.onOffline = () => this.setState('offline');
    addEventListener('online', this.onOnline);
    addEventListener('offline', this.onOffline);
  }

  /** Never go back: cursors only grow. */
  seen(cursor) {
    if (typeof cursor === 'number' && cursor > this.cursor) this.cursor = cursor;
  }

  start() {
    this.stopped = false;
    this.connect();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    removeEventListener('online', this.onOnline);
    removeEventListener('offline', this.onOffline);
    if (this.ws) this.ws.close(1000);
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: state }));
  }

  connect() {
    clearTimeout(this.timer);
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws;
    try {
      ws = new WebSocket(`${scheme}//${location.host}/ws${this.query}`);
    } catch {
      this.retry();
      return;
    }
    this.ws = ws;
    ws.addEventListener('message', (event) => this.receive(event.data));
    ws.addEventListener('close', (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      // Closed by us (the customer left the screen): nothing to report.
      if (this.stopped) return;
      // Not signed in, no such order, or refused by policy: retrying would not change that,
      // and the browser is not offline for it ('closed').
      // Everything else (1001 going away, 1013 fell behind, a dropped network) reconnects
      // and resumes from the last cursor.
      if (FINAL.has(event.code)) {
        this.setState('closed');
        return;
      }
      this.retry();
    });
  }

  receive(raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      return;
    }
    if (msg.type === 'hello') {
      this.attempt = 0;
      this.setState('live');
      if (this.cursor) this.ws.send(JSON.stringify({ type: 'resume', cursor: this.cursor }));
      else this.seen(msg.cursor);
    } else if (msg.type === 'order.updated' && msg.order) {
      if (typeof msg.cursor === 'number' && msg.cursor <= this.cursor) return;
      this.seen(msg.cursor);
      this.dispatchEvent(new CustomEvent('order', { detail: msg.order }));
    }
  }

  retry() {
    this.setState(navigator.onLine ? 'connecting' : 'offline');
    const delay = Math.min(MAX_DELAY, 1000 * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt += 1;
    this.timer = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.stopped || (this.ws && this.ws.readyState <= 1)) return;
    this.attempt = 0;
    this.connect();
  }
}
