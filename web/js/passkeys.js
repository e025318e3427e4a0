// Sign-in beyond email: passkeys (WebAuthn) and an OpenID provider's button on the sign-in
// screen; passkeys and signed-in browsers in settings. Built from nodes (dom.js h): names from
// the server stay text.
import { ApiError, get, request } from './api.js';
import { h } from './dom.js';
import { formatDateTime, t } from './i18n.js';

// --- WebAuthn JSON <-> the ArrayBuffers the browser API wants --------------------------------

const toBytes = (b64url) => {
  const b64 = b64url.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (b64url.length % 4)) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)).buffer;
};

const toB64url = (buffer) => {
  let s = '';
  for (const byte of new Uint8Array(buffer)) s += String.fromCharCode(byte);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
};

const descriptors = (list) => (list || []).map((d) => ({ ...d, id: toBytes(d.id) }));

function creationOptions(json) {
  return { ...json, challenge: toBytes(json.challenge), user: { ...json.user, id: toBytes(json.user.id) },
    excludeCredentials: descriptors(json.excludeCredentials) };
}

function requestOptions(json) {
  return { ...json, challenge: toBytes(json.challenge), allowCredentials: descriptors(json.allowCredentials) };
}

function credentialJSON(credential) {
  const r = credential.response;
  const response = { clientDataJSON: toB64url(r.clientDataJSON) };
  if (r.attestationObject) {
    response.attestationObject = toB64url(r.attestationObject);
    response.transports = r.getTransports ? r.getTransports() : [];
  } else {
    response.authenticatorData = toB64url(r.authenticatorData);
    response.signature = toB64url(r.signature);
    if (r.userHandle) response.userHandle = toB64url(r.userHandle);
  }
  return {
    id: credential.id, rawId: toB64url(credential.rawId), type: credential.type, response,
    clientExtensionResults: credential.getClientExtensionResults(),
    authenticatorAttachment: credential.authenticatorAttachment ?? undefined,
  };
}

export const passkeysSupported = () => typeof window.PublicKeyCredential === 'function';

/** Sign in with a discoverable passkey: no address asked, the authenticator picks the account. */
export async function signInWithPasskey() {
  const { data: options } = await request('POST', '/auth/passkey/options', {});
  const credential = await navigator.credentials.get({ publicKey: requestOptions(options) });
  await request('POST', '/auth/passkey', { credential: credentialJSON(credential) });
}

/** Create a passkey for the signed-in account and register it. */
export async function addPasskey() {
  const { data: options } = await request('POST', '/api/me/passkeys/options', {});
  const credential = await navigator.credentials.create({ publicKey: creationOptions(options) });
  const { data } = await request('POST', '/api/me/passkeys', { credential: credentialJSON(credential) });
  return data;
}

// --- the sign-in screen ---------------------------------------------------------------------

export async function mountSignIn(app, container) {
  if (!container) return;
  const error = h('p', { class: 'error', role: 'alert', id: 'passkey-error' });
  const buttons = h('div', { class: 'actions' });
  if (passkeysSupported()) {
    buttons.append(h('button', {
      type: 'button', id: 'passkey-sign-in', text: t('passkeys.signIn'),
      onclick: async () => {
        error.textContent = '';
        try {
          await signInWithPasskey();
          app.go('/', { reload: true });
        } catch {
          error.textContent = t('passkeys.failed');
        }
      },
    }));
  }
  const methods = await get('/api/auth/methods').then((r) => r.data).catch(() => null);
  if (methods?.oidc && methods.oidc_login_url) {
    buttons.append(h('a', { class: 'button', id: 'oidc-sign-in', href: methods.oidc_login_url, text: t('passkeys.oidcSignIn') }));
  }
  container.replaceChildren(buttons, error);
}

// --- settings: passkeys and signed-in devices ------------------------------------------------

async function passkeySection(app) {
  const status = h('p', { role: 'status', id: 'passkey-status' });
  const list = h('ul', { class: 'passkeys', id: 'passkey-list' });
  const section = h('section', { 'aria-labelledby': 'passkeys-h' },
    h('h2', { id: 'passkeys-h', text: t('passkeys.title') }),
    h('p', { text: t('passkeys.intro') }), list);

  const refresh = async () => {
    const { data } = await get('/api/me/passkeys');
    list.replaceChildren(...(data.passkeys.length ? data.passkeys.map((p) => h('li', { 'data-passkey-id': String(p.id) },
      h('span', { text: p.name }), ' ',
      h('button', {
        type: 'button', class: 'ghost', text: t('passkeys.remove'), 'aria-label': t('passkeys.removeNamed', { name: p.name }),
        onclick: async () => { await request('DELETE', `/api/me/passkeys/${p.id}`); await refresh(); },
      }))) : [h('li', { text: t('passkeys.none') })]));
  };
  if (passkeysSupported()) {
    section.append(h('button', {
      type: 'button', id: 'add-passkey', text: t('passkeys.add'),
      onclick: async () => {
        status.textContent = '';
        try {
          await addPasskey();
          await refresh();
          status.textContent = t('passkeys.added');
        } catch (err) {
          status.textContent = err instanceof ApiError ? `${t('passkeys.addFailed')} ${err.message}` : t('passkeys.addFailed');
        }
      },
    }));
  }
  section.append(status);
  await refresh();
  return section;
}

async function sessionSection(app) {
  const list = h('ul', { class: 'sessions', id: 'session-list' });
  const refresh = async () => {
    const { data } = await get('/api/me/sessions');
    list.replaceChildren(...data.sessions.map((s) => h('li', {},
      h('span', { text: s.current ? `${s.device} (${t('sessions.thisDevice')})` : s.device }), ' ',
      h('span', { class: 'sub', text: t('sessions.lastSeen', { when: formatDateTime(s.last_seen_at) }) }), ' ',
      s.current ? null : h('button', {
        type: 'button', class: 'ghost', text: t('sessions.signOut'), 'aria-label': t('sessions.signOutNamed', { name: s.device }),
        onclick: async () => { await request('DELETE', `/api/me/sessions/${s.id}`); await refresh(); },
      }))));
  };
  await refresh();
  return h('section', { 'aria-labelledby': 'sessions-h' },
    h('h2', { id: 'sessions-h', text: t('sessions.title') }), list,
    h('button', {
      type: 'button', id: 'sign-out-everywhere', text: t('sessions.signOutEverywhere'),
      onclick: async () => {
        await request('DELETE', '/api/me/sessions').catch(() => {});
        app.go('/sign-in', { reload: true });
      },
    }));
}

export async function mountSettings(app, container) {
  if (!container) return;
  try {
    container.replaceChildren(await passkeySection(app), await sessionSection(app));
  } catch {
    container.replaceChildren();
  }
}
