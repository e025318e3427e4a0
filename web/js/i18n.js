// One catalogue per language; dates, times and "5 min ago" through Intl in the viewer's zone.
import en from './i18n/en.js';

export const LANGUAGES = { en: 'English', de: 'Deutsch' };
let lang = 'en';
let strings = en;

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
  strings = lang === 'en' ? en : (await import(`./i18n/${lang}.js`)).default;
  document.documentElement.lang = lang;
}

export function saveLanguage(code) {
  localStorage.setItem('waybill.lang', code);
  return setLanguage(code);
}

export const language = () => lang;

export function t(key, vars = {}) {
  const text = strings[key] ?? en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ''));
}

export function statusLabel(status) {
  return t(`status.${status}`);
}

export function formatDateTime(iso) {
  return new Intl.DateTimeFormat(lang, { dateStyle: 'medium', timeStyle: 'short' }).format(new Date(iso));
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
