// Settings: notification preferences (the contract's whole-object PUT), push devices, sign out.
import { ApiError, get, request } from '../api.js';
import { h } from '../dom.js';
import { LANGUAGES, followCustomer, formatClock, language, saveLanguage, stageList, t } from '../i18n.js';
import { mountSettings } from '../passkeys.js';
import { currentSubscription, pushSupported, subscribe, unsubscribe } from '../push.js';

const browserZone = () => Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
// What to say on the next drawing of this screen (a language change draws it anew).
let notice = '';

/** A quiet-hours time: every quarter hour (and the saved time, if it is none of them), each
 * written as the chosen language writes times, not as the browser's locale would. */
function clockSelect(id, value) {
  const times = [];
  for (let minutes = 0; minutes < 24 * 60; minutes += 15) {
    times.push(`${String(Math.floor(minutes / 60)).padStart(2, '0')}:${String(minutes % 60).padStart(2, '0')}`);
  }
  if (!times.includes(value)) times.push(value);
  times.sort();
  return h('select', { id, class: 'clock' },
    times.map((time) => h('option', { value: time, selected: time === value, text: formatClock(time) })));
}

const REGIONS = ['Africa', 'America', 'Antarctica', 'Arctic', 'Asia', 'Atlantic', 'Australia', 'Europe', 'Indian', 'Pacific'];
const regionOf = (zone) => (REGIONS.includes(zone.split('/')[0]) ? zone.split('/')[0] : 'Other');
/** "Argentina / Buenos Aires" under the region's heading; the whole id where there is none. */
const placeOf = (zone) => (regionOf(zone) === 'Other' ? zone : zone.split('/').slice(1).join(' / ')).replace(/_/g, ' ');
const searchable = (text) => text.toLowerCase().replace(/[_/]+/g, ' ');

/** The time-zone list, `chosen` first with the browser's zone as suggestions, then every zone
 * under its region; a `query` keeps the zones whose name or region holds each of its words
 * (`chosen` always stays, so that searching never changes the choice). `matched` counts the
 * zones the query found. */
function zoneOptions(zones, chosen, query) {
  const words = searchable(query).split(' ').filter(Boolean);
  const matches = (zone) => words.every((w) => searchable(`${zone} ${t(`zone.${regionOf(zone)}`)}`).includes(w));
  const suggested = [...new Set([chosen, browserZone()])].filter((z) => z === chosen || matches(z));
  const groups = new Map([...REGIONS, 'Other'].map((r) => [r, []]));
  for (const zone of zones) if (!suggested.includes(zone) && matches(zone)) groups.get(regionOf(zone)).push(zone);
  const option = (zone, text) => h('option', { value: zone, selected: zone === chosen, text });
  const shown = [...groups].filter(([, list]) => list.length);
  return {
    matched: shown.reduce((n, [, list]) => n + list.length, 0) + suggested.filter(matches).length,
    nodes: [
      h('optgroup', { label: t('settings.zoneSuggested') },
        suggested.map((z) => option(z, regionOf(z) === 'Other' ? z : `${t(`zone.${regionOf(z)}`)} / ${placeOf(z)}`))),
      ...shown.map(([r, list]) => h('optgroup', { label: t(`zone.${r}`) }, list.map((z) => option(z, placeOf(z))))),
    ],
  };
}

/** The time-zone field: a search box that narrows the grouped list below it. */
function zoneField(chosen) {
  const zones = Intl.supportedValuesOf ? Intl.supportedValuesOf('timeZone') : [];
  for (const zone of [chosen, browserZone(), 'UTC']) if (!zones.includes(zone)) zones.push(zone);
  const select = h('select', { id: 'timezone' });
  const search = h('input', {
    type: 'search', id: 'timezone-search', autocomplete: 'off', 'aria-controls': 'timezone',
  });
  const none = h('p', { class: 'small', role: 'status' });
  const draw = () => {
    const current = select.value || chosen;
    let list = zoneOptions(zones, current, search.value);
    none.textContent = list.matched ? '' : t('settings.zoneNone');
    if (!list.matched) list = zoneOptions(zones, current, '');
    select.replaceChildren(...list.nodes);
  };
  search.addEventListener('input', draw);
  draw();
  return h('div', { class: 'field zone' },
    h('label', { for: 'timezone-search', text: t('settings.zoneSearch') }), search, none,
    h('label', { for: 'timezone', text: t('settings.timezone') }), select);
}

/** What the server applies before a customer saves; the statuses' defaults are the server's. */
export function defaults() {
  return {
    channels: { push: true, email: true },
    statuses: Object.fromEntries(stageList().map((s) => [s.status, s.default_on])),
    quiet_hours: null,
    timezone: browserZone(),
    language: language(),
  };
}

function toggle(id, text, checked) {
  return h('label', { class: 'switch', for: id }, h('span', { text }),
    h('input', { type: 'checkbox', role: 'switch', id, checked }));
}

async function devices() {
  const state = h('span', { class: 'muted' });
  const button = h('button', { type: 'button', id: 'push-device' });
  const list = h('ul', { class: 'devices', id: 'devices' });
  const note = h('p', { class: 'small', role: 'status' });
  const target = '/api/me/push-subscriptions';

  const drawList = async () => {
    let subs = [];
    try {
      subs = (await get(target)).data.subscriptions || [];
    } catch {
      subs = [];
    }
    list.replaceChildren(...(subs.length ? subs.map((sub) => {
      const remove = h('button', { type: 'button', class: 'ghost', text: t('settings.remove'),
        'aria-label': t('settings.removeDevice', { device: sub.label || t('settings.device') }) });
      remove.addEventListener('click', async () => {
        await request('DELETE', `${target}/${sub.id}`).catch(() => {});
        await drawList();
      });
      return h('li', { class: 'device' }, h('span', { text: sub.label || t('settings.device') }), remove);
    }) : [h('li', { class: 'muted', text: t('settings.noDevices') })]));
  };
  const update = async () => {
    const sub = await currentSubscription().catch(() => null);
    state.textContent = sub ? t('settings.pushOn') : t('settings.pushOff');
    button.textContent = sub ? t('settings.disablePush') : t('settings.enablePush');
    button.dataset.on = sub ? '1' : '';
  };
  button.addEventListener('click', async () => {
    button.disabled = true;
    note.textContent = '';
    try {
      if (button.dataset.on) await unsubscribe(target); else await subscribe(target);
    } catch (err) {
      note.textContent = err.message === 'denied' ? t('notify.denied') : t('notify.failed');
    }
    button.disabled = false;
    await Promise.all([update(), drawList()]);
  });
  if (!pushSupported()) {
    button.hidden = true;
    state.textContent = t('notify.unsupported');
  } else {
    update();
  }
  await drawList();
  return h('fieldset', {}, h('legend', { text: t('settings.devices') }),
    list,
    h('p', {}, h('strong', { text: `${t('settings.thisDevice')}: ` }), state),
    button, note);
}

export async function render(app) {
  document.title = `${t('settings.title')} · Waybill`;
  const who = app.customer;
  if (!who) return app.go('/sign-in');
  const alive = app.alive();
  // The customer's own language, saved on whichever device, wins over this browser's.
  if (await followCustomer(who)) app.translateShell();
  let prefs = defaults();
  const status = h('p', { role: 'status', class: 'small', id: 'settings-status', text: notice });
  notice = '';
  try {
    const { data } = await get('/api/me/preferences');
    prefs = { ...prefs, ...data };
    // The server keeps UTC until the app sends the browser's zone.
    if (!prefs.timezone || prefs.timezone === 'UTC') prefs.timezone = browserZone();
    // Nor has it a language before one is saved (or a shop said one): the app's stands.
    if (!who.locale) prefs.language = language();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return app.go('/sign-in');
    status.textContent = t('settings.loadFailed');
  }

  const quiet = prefs.quiet_hours;
  // The stages one can hear about, and their names, as the server's catalogue lists them.
  const stages = stageList();
  const form = h('form', { id: 'preferences', novalidate: true },
    h('fieldset', {}, h('legend', { text: t('settings.channels') }),
      toggle('ch-push', t('settings.push'), prefs.channels.push),
      toggle('ch-email', t('settings.email'), prefs.channels.email)),
    h('fieldset', {}, h('legend', { text: t('settings.statuses') }),
      stages.map((s) => toggle(`st-${s.status}`, s.label, Boolean(prefs.statuses[s.status])))),
    h('fieldset', {}, h('legend', { text: t('settings.quiet') }),
      toggle('quiet-on', t('settings.quietOn'), Boolean(quiet)),
      h('div', { class: 'row' },
        h('div', { class: 'field' }, h('label', { for: 'quiet-start', text: t('settings.quietStart') }),
          clockSelect('quiet-start', quiet?.start || '22:00')),
        h('div', { class: 'field' }, h('label', { for: 'quiet-end', text: t('settings.quietEnd') }),
          clockSelect('quiet-end', quiet?.end || '07:00')))),
    zoneField(prefs.timezone),
    h('div', { class: 'field' }, h('label', { for: 'language', text: t('settings.language') }),
      h('select', { id: 'language' }, Object.entries(LANGUAGES).map(([code, name]) =>
        h('option', { value: code, selected: code === prefs.language, lang: code, text: name })))),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', text: t('settings.save') })),
    status);

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const value = (id) => form.querySelector(`#${id}`);
    const body = {
      channels: { push: value('ch-push').checked, email: value('ch-email').checked },
      // A stage not listed (the catalogue could not be fetched) keeps what was saved.
      statuses: { ...prefs.statuses, ...Object.fromEntries(stages.map((s) => [s.status, value(`st-${s.status}`).checked])) },
      quiet_hours: value('quiet-on').checked ? { start: value('quiet-start').value, end: value('quiet-end').value } : null,
      timezone: value('timezone').value,
      language: value('language').value,
    };
    try {
      await request('PUT', '/api/me/preferences', body);
      if (body.language !== language()) {
        // Draw the whole app again in the language just chosen, saying that it was saved.
        await saveLanguage(body.language);
        app.translateShell();
        notice = t('settings.saved');
        await app.go('/settings', { replace: true });
        app.announce(t('settings.saved'));
        return;
      }
      status.textContent = t('settings.saved');
    } catch {
      status.textContent = t('settings.saveFailed');
    }
  });

  /** `promise`, or null once `ms` have passed without it settling. */
  const within = (promise, ms) => Promise.race([promise, new Promise((done) => setTimeout(() => done(null), ms))]);
  const signOut = h('button', { type: 'button', id: 'sign-out', text: t('settings.signOut') });
  signOut.addEventListener('click', async () => {
    // This device stops hearing about this customer's orders: the next person to use it
    // must not get them. The browser subscription itself stays for any "Notify me" links.
    // Bounded: a service worker still starting (a slow phone) must not hold the sign-out.
    const sub = await within(currentSubscription(), 3000).catch(() => null);
    if (sub) await within(request('DELETE', '/api/me/push-subscriptions', sub.toJSON()), 5000).catch(() => {});
    await request('POST', '/auth/logout').catch(() => {});
    app.go('/sign-in', { reload: true });
  });

  const deviceList = await devices();
  if (!alive()) return;
  app.show(h('div', {},
    h('h1', { text: t('settings.title') }),
    form,
    deviceList,
    h('fieldset', {}, h('legend', { text: t('settings.account') }),
      h('p', { text: t('settings.signedInAs', { email: who.email }) }),
      h('div', { id: 'settings-security' }),
      signOut)));
  await mountSettings(app, document.getElementById('settings-security'));
}
