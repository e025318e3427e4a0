// The app's words: its own strings (one file per language), the status labels from the server's
// catalogue (GET /api/statuses), and dates, times and "5 min ago" through Intl in the viewer's zone.
import { get } from './api.js';
import en from './i18n/en.js';

export const LANGUAGES = { en: 'English', de: 'Deutsch' };
let lang = 'en';
let strings = en;
let statuses = new Map(); // status → { status, label, notifiable, default_on }
let stages = []; // what one can choose to hear about: [{ status: stage, label, default_on }]
let statusesLang = null;

/** The saved choice, else the browser's first language we speak. */
export function preferredLanguage() {
  const saved = localStorage.getItem('waybill.lang');
  if (saved && saved in LANGUAGES) return saved;
  for (const l of navigator.languages || [navigator.language || 'en']) {
    const code = String(l).slice(0, 2).toLowerCase();
    if (code in LANGUAGES) return code;
  }
  return 'en';
}

export async function setLanguage(code) {
  lang = code in LANGUAGES ? code : 'en';
  const [table] = await Promise.all([
    lang === 'en' ? en : import(`./i18n/${lang}.js`).then((m) => m.default),
    loadStatuses(),
  ]);
  strings = table;
  document.documentElement.lang = lang;
}

/** Fetch the server's labels for the language in use. Offline with no kept copy, the labels
 * the answers carry stand in (statusLabel's fallback), never another language's. */
export async function loadStatuses() {
  const wanted = lang;
  let found = null;
  let moments = [];
  try {
    const { data } = await get(`/api/statuses?lang=${wanted}`);
    found = new Map(data.statuses.map((s) => [s.status, s]));
    moments = (data.stages || []).map((s) => ({ ...s, status: s.stage }));
  } catch {
    if (statusesLang === wanted) return;
  }
  if (wanted !== lang) return; // the language changed meanwhile
  statuses = found || new Map();
  stages = moments;
  statusesLang = found ? wanted : null;
}

export function saveLanguage(code) {
  localStorage.setItem('waybill.lang', code);
  return setLanguage(code);
}

/** The signed-in customer's own language (`locale` of /api/me: saved in settings on any
 * device, else the one their orders came with) wins over this browser's: remembered here and
 * put in use. True when the app now speaks another language (the caller redraws). */
export async function followCustomer(customer) {
  const code = String(customer?.locale || '').slice(0, 2).toLowerCase();
  if (!(code in LANGUAGES)) return false;
  localStorage.setItem('waybill.lang', code);
  if (code === lang) return false;
  await setLanguage(code);
  return true;
}

export const language = () => lang;

export function t(key, vars = {}) {
  const text = strings[key] ?? en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ''));
}

/** What `status` is called, from the server's catalogue; `fallback` (an answer's status_label)
 * when that is not at hand. */
export function statusLabel(status, fallback) {
  return statuses.get(status)?.label ?? fallback;
}

/** Every status, in the catalogue's order: { status, label, notifiable, default_on }. */
export const statusList = () => [...statuses.values()];

/** The stages a customer can choose to hear about, in the catalogue's order: every status
 * that notifies, and moments such as a partial delivery ({ status: stage, label, default_on }). */
export const stageList = () => (stages.length ? stages : statusList().filter((s) => s.notifiable));

export function formatDateTime(iso) {
  return new Intl.DateTimeFormat(lang, { dateStyle: 'medium', timeStyle: 'short' }).format(new Date(iso));
}

/** "22:00" (German) or "10:00 PM" (English): a wall-clock time "HH:MM" as the language in use
 * writes it, whatever the browser's own locale would. */
export function formatClock(hhmm) {
  const [hours, minutes] = hhmm.split(':').map(Number);
  const twentyFour = new Intl.DateTimeFormat(lang, { hour: 'numeric' }).resolvedOptions().hourCycle !== 'h12';
  // A 24-hour clock pads its hours ("07:45"), a 12-hour one does not ("7:45 AM").
  return new Intl.DateTimeFormat(lang, { hour: twentyFour ? '2-digit' : 'numeric', minute: '2-digit', timeZone: 'UTC' })
    .format(Date.UTC(2000, 0, 1, hours, minutes));
}

export function formatDay(iso) {
  return new Intl.DateTimeFormat(lang, { weekday: 'long', day: 'numeric', month: 'long' }).format(new Date(iso));
}

export function timeAgo(ms) {
  const rtf = new Intl.RelativeTimeFormat(lang, { numeric: 'auto', style: 'long' });
  const minutes = Math.round((ms - Date.now()) / 60000);
  if (Math.abs(minutes) < 60) return rtf.format(minutes, 'minute');
  const hours = Math.round(minutes / 60);
  if (Math.abs(hours) < 48) return rtf.format(hours, 'hour');
  return rtf.format(Math.round(hours / 24), 'day');
}

export function isToday(iso) {
  const d = new Date(iso);
  const now = new Date();
  return d.getFullYear() === now.getFullYear() && d.getMonth() === now.getMonth() && d.getDate() === now.getDate();
}
