// format.js — how numbers, prices, money and times read in the console.
//
// Owns: every number-to-text conversion, so a price reads the same on every page. Prices are
// US dollars per million tokens ($/Mtok); energy prices $/MWh; costs of single requests are
// tiny (millionths of a dollar) and keep their significant digits instead of rounding to $0.00.

const DASH = '—';

/** Dollars with enough decimals to show three significant digits of small amounts. */
export function usd(value) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return DASH;
  const v = Number(value);
  if (v === 0) return '$0';
  const abs = Math.abs(v);
  // Two decimals for cents and above; below, as many as three significant digits need (max 10).
  const decimals = abs >= 1 ? 2 : Math.min(10, Math.max(2, Math.ceil(-Math.log10(abs)) + 2));
  const text = abs.toFixed(decimals);
  return `${v < 0 ? '−' : ''}$${abs >= 1000 ? Number(text).toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 }) : text}`;
}

/** A token price, $/Mtok, to four significant digits. */
export function perMtok(value) {
  if (value === null || value === undefined) return DASH;
  return `${usd(round(value, 4))}`;
}

/** An energy price, $/MWh (negative prices happen: shown with a minus). */
export function perMwh(value) {
  if (value === null || value === undefined) return DASH;
  const v = Number(value);
  return `${v < 0 ? '−' : ''}$${Math.abs(v).toFixed(2)}/MWh`;
}

/** A plain number with at most `digits` decimals; thousands separated. */
export function num(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return DASH;
  return Number(value).toLocaleString('en-US', { maximumFractionDigits: digits });
}

/** Milliseconds, e.g. "120 ms" or "1.2 s". */
export function ms(value) {
  if (value === null || value === undefined) return DASH;
  const v = Number(value);
  return v >= 10000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ms`;
}

/** A ratio 0..1 as a percentage. */
export function pct(value) {
  if (value === null || value === undefined) return DASH;
  return `${(Number(value) * 100).toFixed(1)}%`;
}

/**
 * A timestamp — unix milliseconds, unix seconds (values below 1e12) or an RFC 3339 string —
 * as local "YYYY-MM-DD HH:MM:SS".
 */
export function time(value) {
  if (value === null || value === undefined || value === '') return DASH;
  const d = toDate(value);
  if (!d) return String(value);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** A Date from unix ms / unix s / RFC 3339, or null. */
export function toDate(value) {
  let d;
  if (typeof value === 'number') d = new Date(value < 1e12 ? value * 1000 : value);
  else d = new Date(value);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** Unix ms of a `datetime-local` value (local time), or null when empty/invalid. */
export function fromLocalInput(text) {
  if (!text) return null;
  const t = new Date(text).getTime();
  return Number.isNaN(t) ? null : t;
}

/** `value` rounded to `sig` significant digits. */
export function round(value, sig) {
  const v = Number(value);
  if (v === 0 || !Number.isFinite(v)) return v;
  return Number(v.toPrecision(sig));
}

export { DASH };
