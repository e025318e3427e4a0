// Talking to the server: JSON in and out, the CSRF token for writes, and whether an answer
// came from the service worker's offline copy (it then carries X-Waybill-Stored-At).
let csrfToken = null;

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
    this.fields = body?.error?.fields || {}; // which values a 422 refused
  }
}

export async function request(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  const response = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, data);
  const stored = response.headers.get('X-Waybill-Stored-At');
  return { data, storedAt: stored ? Number(stored) : null };
}

export const get = (path) => request('GET', path);

/** The signed-in customer, or null; remembers the CSRF token for later writes. */
export async function me() {
  try {
    const { data } = await get('/api/me');
    csrfToken = data.csrf_token;
    return data;
  } catch (err) {
    if (err.status === 401) return null;
    throw err;
  }
}

/** "Find my order": the server mails the order's tracking link to `email` if the order is
 * theirs, and answers the same (202) either way. */
export const findOrder = (email, orderNumber) => request('POST', '/api/track/find', { email, order_number: orderNumber });
