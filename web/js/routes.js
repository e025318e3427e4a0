// The app's screens, listed once. The server reads this list (pages.py: it serves the shell at
// these paths and tells the service worker which ones to answer offline), so ROUTES stays plain
// JSON. Paths are Flask's: <name> is one segment, <int:name> digits.
export const ROUTES = [
  { "path": "/", "view": "home" },
  { "path": "/t/<token>", "view": "track" },
  { "path": "/orders/<int:orderId>", "view": "track" },
  { "path": "/settings", "view": "settings" },
  { "path": "/sign-in", "view": "sign-in" }
];

const PARAM = /<(?:(int):)?(\w+)>/g;
const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

const compiled = ROUTES.map(({ path, view }) => {
  const names = [];
  let source = '';
  let last = 0;
  for (const m of path.matchAll(PARAM)) {
    source += escape(path.slice(last, m.index)) + (m[1] ? '(\\d+)' : '([^/]+)');
    names.push([m[2], m[1]]);
    last = m.index + m[0].length;
  }
  source += escape(path.slice(last));
  return { view, names, re: new RegExp(`^${source}${path === '/' ? '' : '/?'}$`) };
});

/** The screen a path shows, with its parameters, or null when the path is not the app's. */
export function match(pathname) {
  for (const { view, names, re } of compiled) {
    const m = re.exec(pathname);
    if (!m) continue;
    const params = {};
    names.forEach(([name, type], i) => { params[name] = type ? Number(m[i + 1]) : decodeURIComponent(m[i + 1]); });
    return { view, params };
  }
  return null;
}
