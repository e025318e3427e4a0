// Sign in: email → "check your mail" → the 6-digit code (works inside an installed iOS app,
// which does not share Safari's cookies) or the emailed link.
import { ApiError, me, request } from '../api.js';
import { h } from '../dom.js';
import { followCustomer, t } from '../i18n.js';
import { mountSignIn } from '../passkeys.js';

export async function render(app) {
  document.title = `${t('signin.title')} · Waybill`;
  const error = h('p', { class: 'error', role: 'alert', id: 'sign-in-error' });

  const codeStep = (email) => {
    const code = h('input', {
      id: 'code', name: 'code', inputmode: 'numeric', autocomplete: 'one-time-code', pattern: '[0-9]{6}',
      maxlength: '6', required: true, 'aria-describedby': 'check-body sign-in-error',
    });
    const sent = h('p', { class: 'small', role: 'status', id: 'code-sent' });
    const resend = h('button', { type: 'button', id: 'resend', text: t('signin.resend') });
    resend.addEventListener('click', async () => {
      resend.disabled = true;
      error.textContent = '';
      sent.textContent = '';
      try {
        await request('POST', '/auth/email', { email });
        sent.textContent = t('signin.resent', { email });
      } catch {
        error.textContent = t('signin.failed');
      }
      resend.disabled = false;
      code.focus();
    });
    const form = h('form', { class: 'card', novalidate: true },
      h('h1', { id: 'check-h', text: t('signin.checkTitle') }),
      h('p', { id: 'check-body', text: t('signin.checkBody', { email }) }),
      h('div', { class: 'field' }, h('label', { for: 'code', text: t('signin.code') }), code),
      error,
      sent,
      h('div', { class: 'actions' },
        h('button', { type: 'submit', class: 'primary', text: t('signin.verify') }),
        resend,
        h('button', { type: 'button', onclick: () => emailStep(email), text: t('signin.other') })));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      error.textContent = '';
      const value = code.value.replace(/\s/g, '');
      if (!/^\d{6}$/.test(value)) { error.textContent = t('signin.badCode'); code.focus(); return; }
      try {
        await request('POST', '/auth/code', { email, code: value });
        // A new device speaks the customer's saved language from its first screen on.
        await followCustomer(await me().catch(() => null));
        app.go('/', { reload: true });
      } catch (err) {
        error.textContent = err instanceof ApiError && err.status < 500 ? t('signin.badCode') : t('signin.failed');
        code.focus();
      }
    });
    app.show(form);
    code.focus(); // what comes next is typing the code; the text before it describes the field
  };

  const emailStep = (previous = '') => {
    const email = h('input', {
      id: 'email', name: 'email', type: 'email', autocomplete: 'email', required: true,
      value: previous || null, 'aria-describedby': 'sign-in-error',
    });
    const form = h('form', { class: 'card', novalidate: true },
      h('h1', { text: t('signin.title') }),
      h('p', { text: t('signin.intro') }),
      h('div', { class: 'field' }, h('label', { for: 'email', text: t('signin.email') }), email),
      error,
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', text: t('signin.send') })),
      // The passkey and OpenID Connect buttons (passkeys.js).
      h('div', { id: 'sign-in-more' }));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      error.textContent = '';
      const value = email.value.trim();
      if (!email.checkValidity() || !value) { error.textContent = t('signin.badEmail'); email.focus(); return; }
      try {
        await request('POST', '/auth/email', { email: value });
        codeStep(value);
      } catch (err) {
        error.textContent = err instanceof ApiError && err.status === 422 ? t('signin.badEmail') : t('signin.failed');
        email.focus();
      }
    });
    app.show(form);
    mountSignIn(app, form.querySelector('#sign-in-more'));
  };

  emailStep();
}
