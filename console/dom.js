// dom.js — building the page safely under the console's Content-Security-Policy.
//
// Owns: `h()` (elements from tag, attributes and children, text always as text nodes, never
// parsed as HTML), tables that update in place, the in-page confirmation step, copy-to-clipboard,
// labelled form fields. Nothing here uses innerHTML, inline style attributes or inline event
// handlers: the CSP (style-src 'self', script-src 'self') would refuse them, and values shown in
// the console come from users and upstreams, so they must never be interpreted as markup.

// Set as DOM properties (their live state), not attributes.
const PROPERTIES = new Set(['value', 'checked', 'selected', 'disabled', 'hidden', 'required', 'readOnly', 'multiple', 'for', 'htmlFor']);

/**
 * Creates an element. `attrs`: `class`, `text` (textContent), `on<Event>` functions
 * (addEventListener), the properties in PROPERTIES, and any other attribute as a string
 * (`data-*`, `aria-*`, `type`, `href`…; `true` → present and empty; null/false → absent).
 * Children: nodes, strings (as text), arrays, and null/undefined/false (skipped).
 */

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'style' || key === 'innerHTML' || key === 'outerHTML' || (key.startsWith('on') && typeof value !== 'function')) {
      // Style and event attributes break the CSP, HTML breaks the XSS rule: refuse loudly.
      throw new Error(`h(): "${key}" is not allowed (CSP / XSS rules, see console/README.md)`);
    }
    if (key === 'class') el.className = Array.isArray(value) ? value.filter(Boolean).join(' ') : value;
    else if (key === 'text') el.textContent = String(value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2).toLowerCase(), value);
    else if (PROPERTIES.has(key)) el[key === 'for' ? 'htmlFor' : key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

/** Appends children (nodes, strings, nested arrays; null/false skipped). */
export function append(parent, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/** Removes every child of `el`, then appends `children`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/**
 * A table whose rows are updated in place by key, so polling does not steal focus, reset an
 * open confirmation or flicker. Under 640px wide the stylesheet turns rows into cards, each
 * cell labelled by its column (`data-label`).
 *
 * columns: [{ label, value(row) → string | Node | array, className, fixed, sig(row) }]; a
 * `fixed` column is rendered once when its row appears and left alone after; a column with
 * `sig` is redrawn only when sig(row) changes (buttons and confirmations keep their state).
 * Returns { el, update(rows), rowFor(key) }.
 */
export function keyedTable({ label, columns, key, testid, rowTestid, empty = 'Nothing yet.', rowAttrs }) {
  const tbody = h('tbody');
  const table = h(
    'table',
    { class: 'data', 'data-testid': testid },
    h('caption', { class: 'visually-hidden', text: label }),
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.className, text: c.label })))),
    tbody,
  );
  const emptyRow = h('p', { class: 'empty', text: empty, hidden: true });
  // A focusable scroll region, so keyboard users can scroll a wide table too.
  const el = h('div', { class: 'table-wrap', role: 'region', 'aria-label': label, tabindex: '0' }, table, emptyRow);
  const rows = new Map(); // key → { tr, sigs: [] }

  function fill(td, content) {
    td.replaceChildren();
    append(td, [content]);
  }

  function update(list) {
    const seen = new Set();
    const order = [];
    for (const row of list) {
      const k = String(key(row));
      seen.add(k);
      let entry = rows.get(k);
      if (!entry) {
        const tr = h('tr', { 'data-testid': rowTestid, 'data-key': k });
        const tds = columns.map((c) => h('td', { class: c.className, 'data-label': c.label }));
        append(tr, tds);
        entry = { tr, tds, sigs: new Array(columns.length).fill(undefined) };
        rows.set(k, entry);
        columns.forEach((c, i) => {
          if (c.fixed) fill(tds[i], c.value(row));
        });
      }
      if (rowAttrs) {
        for (const [a, v] of Object.entries(rowAttrs(row))) entry.tr.setAttribute(a, String(v));
      }
      columns.forEach((c, i) => {
        if (c.fixed) return;
        // A column with a signature is redrawn when it changes; text cells when their text
        // changes; other node cells every time.
        if (c.sig) {
          const sig = c.sig(row);
          if (sig === entry.sigs[i]) return;
          entry.sigs[i] = sig;
          fill(entry.tds[i], c.value(row));
          return;
        }
        const content = c.value(row);
        const text = typeof content === 'string' || typeof content === 'number' ? String(content) : undefined;
        if (text !== undefined && text === entry.sigs[i]) return;
        entry.sigs[i] = text;
        fill(entry.tds[i], content);
      });
      order.push(entry.tr);
    }
    for (const [k, entry] of rows) {
      if (!seen.has(k)) {
        entry.tr.remove();
        rows.delete(k);
      }
    }
    // Re-append only when the order changed: moving a row would blur a focused button in it.
    const current = Array.from(tbody.children);
    if (current.length !== order.length || current.some((tr, i) => tr !== order[i])) append(tbody, order);
    emptyRow.hidden = list.length > 0;
    table.hidden = list.length === 0;
  }

  return { el, update, rowFor: (k) => rows.get(String(k))?.tr };
}

/**
 * A button that asks for confirmation in the page (not window.confirm): the first click shows
 * `question` with a Confirm and a Cancel button; Confirm runs `action` (async), its error is
 * handed to `onError`.
 */
export function confirmButton({ label, question, confirmLabel, action, onError, testid }) {
  const wrap = h('span', { class: 'confirm' });
  const start = h('button', { type: 'button', class: 'secondary danger-text', 'data-testid': testid, text: label });
  const ask = () => {
    const yes = h('button', { type: 'button', class: 'danger', 'data-testid': 'confirm', text: confirmLabel || label });
    const no = h('button', { type: 'button', class: 'secondary', 'data-testid': 'cancel-confirm', text: 'Cancel' });
    const prompt = h('span', { class: 'confirm-prompt', role: 'group', 'aria-label': question }, h('span', { text: question }), ' ', yes, ' ', no);
    no.addEventListener('click', () => {
      replace(wrap, start);
      start.focus();
    });
    yes.addEventListener('click', async () => {
      yes.disabled = true;
      no.disabled = true;
      try {
        await action();
      } catch (e) {
        onError(e);
        if (wrap.isConnected) {
          replace(wrap, start);
          start.focus();
        }
      }
    });
    replace(wrap, prompt);
    yes.focus();
  };
  start.addEventListener('click', ask);
  return append(wrap, [start]);
}

/**
 * Copies `text` to the clipboard; falls back to selecting `field` (an input or textarea
 * holding the text) with execCommand, which also works outside secure contexts. Returns a
 * sentence saying what happened.
 */
export async function copyText(text, field) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return 'Copied to the clipboard.';
    }
  } catch {
    // Permission refused (e.g. a headless browser): fall back to the selection.
  }
  if (field) {
    field.focus();
    field.select();
    try {
      if (document.execCommand('copy')) return 'Copied to the clipboard.';
    } catch {
      // execCommand unsupported
    }
    return 'Selected: press Ctrl+C (⌘C) to copy.';
  }
  return 'Copy it by hand: the clipboard is not available here.';
}

/** A labelled form field: `<label>` text above the control (ids tie them together). */
export function field(labelText, control, hint) {
  if (!control.id) control.id = `f-${Math.random().toString(36).slice(2, 9)}`;
  const hintEl = hint ? h('span', { class: 'hint', id: `${control.id}-hint`, text: hint }) : null;
  if (hintEl) control.setAttribute('aria-describedby', hintEl.id);
  return h('div', { class: 'field' }, h('label', { for: control.id, text: labelText }), control, hintEl);
}

/** A small status line (role=status) for successes; `say(text)` sets it. */
export function statusLine(testid) {
  const el = h('p', { class: 'status', role: 'status', 'aria-live': 'polite', 'data-testid': testid });
  return { el, say: (text) => (el.textContent = text || '') };
}

/** A section with a heading. */
export function section(title, ...children) {
  return h('section', { class: 'panel' }, h('h2', { text: title }), children);
}
