// app.js — the console's entry module: sign-in, the shell (header, navigation, error banner)
// and the hash router (#/models, #/keys, #/projects, #/usage, #/routing).
//
// Owns: the session (what GET /admin/session said about the credential), which pages a role
// may open, starting and stopping pages (each page's polling stops when it is left), and the
// error banner every page reports to. Pages live in pages/*.js and export
// `mount(ctx, root) → dispose()`.

import { ApiError, forgetCredential, getJson, isAbort, onUnauthorized, rememberCredential, storedCredential } from './api.js';
import { h, replace, field } from './dom.js';
import * as models from './pages/models.js';
import * as keys from './pages/keys.js';
import * as projects from './pages/projects.js';
import * as usage from './pages/usage.js';
import * as routing from './pages/routing.js';

/** Every page: route, navigation label, module, and whether a project (API key) view may open it. */
const PAGES = [
  { route: 'models', label: 'Models', module: models, project: true },
  { route: 'keys', label: 'Keys', module: keys, project: false },
  { route: 'projects', label: 'Projects', module: projects, project: false },
  { route: 'usage', label: 'Usage', module: usage, project: true },
  { route: 'routing', label: 'Routing', module: routing, project: false },
];

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const roleEl = document.getElementById('role');
const errorsEl = document.getElementById('errors');

let session = null; // GET /admin/session's answer while signed in
let current = null; // { route, dispose, controller }
const errors = new Map(); // source → message shown in the banner

// ---- error banner -------------------------------------------------------------------------

/** Shows `error` (an ApiError, Error or string) in the banner under `source` (replacing its last). */
function showError(source, error) {
  if (isAbort(error)) return;
  const message = error instanceof Error ? error.message : String(error);
  errors.set(source, message);
  renderErrors();
}

/** Clears the banner's message from `source`. */
function clearError(source) {
  if (errors.delete(source)) renderErrors();
}

function renderErrors() {
  const items = [];
  for (const [source, message] of errors) {
    const dismiss = h('button', { type: 'button', class: 'link', 'aria-label': 'Dismiss this message', text: 'Dismiss' });
    dismiss.addEventListener('click', () => clearError(source));
    items.push(h('li', { 'data-testid': 'error-message', 'data-source': source }, h('span', { class: 'error-text', text: message }), ' ', dismiss));
  }
  if (items.length) replace(errorsEl, h('ul', {}, items));
  else errorsEl.replaceChildren();
}

// Anything thrown and not caught still reaches the person, instead of a silent blank page.
window.addEventListener('unhandledrejection', (event) => {
  if (isAbort(event.reason)) {
    event.preventDefault();
    return;
  }
  showError('unexpected', event.reason instanceof Error ? event.reason : new Error(String(event.reason)));
});

// ---- session ------------------------------------------------------------------------------

/** The public API base URL; a wildcard listen address (0.0.0.0, [::]) becomes this page's host. */
function apiBase(raw) {
  if (!raw) return `${location.protocol}//${location.hostname}/v1`;
  try {
    const url = new URL(raw);
    if (url.hostname === '0.0.0.0' || url.hostname === '[::]' || url.hostname === '::') url.hostname = location.hostname;
    return url.toString().replace(/\/$/, '');
  } catch {
    return raw;
  }
}

function roleText(s) {
  if (s.role === 'operator') return 'Operator';
  const keyName = s.key && s.key.name ? s.key.name : 'unnamed key';
  return s.project ? `Project: ${s.project.name} · key ${keyName}` : `Key: ${keyName} (no project)`;
}

/** Signs out: forgets the credential, stops the page, shows the sign-in screen with `message`. */
function signOut(message) {
  forgetCredential();
  session = null;
  stopPage();
  errors.clear();
  renderErrors();
  nav.hidden = true;
  who.hidden = true;
  nav.replaceChildren();
  showSignIn(message);
}

onUnauthorized((err) => {
  if (session) signOut(`You were signed out: ${err.message}`);
});

document.getElementById('sign-out').addEventListener('click', () => signOut(''));

// ---- sign-in ------------------------------------------------------------------------------

function showSignIn(message) {
  stopPage();
  const input = h('input', {
    type: 'password',
    id: 'credential',
    name: 'credential',
    autocomplete: 'off',
    spellcheck: 'false',
    required: true,
    'data-testid': 'credential',
  });
  const error = h('p', { class: 'form-error', role: 'alert', 'data-testid': 'sign-in-error', hidden: !message, text: message || '' });
  const button = h('button', { type: 'submit', 'data-testid': 'sign-in', text: 'Sign in' });
  const form = h(
    'form',
    { class: 'sign-in panel', 'aria-labelledby': 'sign-in-title', novalidate: true },
    h('h1', { id: 'sign-in-title', text: 'Sign in to joule' }),
    h('p', { class: 'hint', text: 'The admin token opens the operator view. A joule API key (sk-joule-…) opens its project: the models it may use and its usage.' }),
    field('Admin token or API key', input),
    error,
    h('div', { class: 'actions' }, button),
    h('p', { class: 'hint', text: 'Kept in this tab only (sessionStorage) and sent as a bearer header; signing out forgets it.' }),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) {
      error.textContent = 'Enter the admin token or an API key.';
      error.hidden = false;
      input.focus();
      return;
    }
    button.disabled = true;
    error.hidden = true;
    try {
      const s = await getJson('/admin/session', undefined, { credential: value });
      rememberCredential(value);
      start(s);
    } catch (e) {
      error.textContent = e instanceof ApiError && (e.status === 401 || e.status === 403) ? `That token or key was not accepted: ${e.message}` : `Sign-in failed: ${e.message}`;
      error.hidden = false;
      button.disabled = false;
      input.select();
      input.focus();
    }
  });
  replace(main, form);
  input.focus();
}

// ---- shell and router ---------------------------------------------------------------------

function allowed(page) {
  return session && (session.role === 'operator' || page.project);
}

function start(s) {
  session = s;
  session.apiBase = apiBase(s.api_base);
  roleEl.textContent = roleText(s);
  who.hidden = false;
  const links = PAGES.filter(allowed).map((p) => h('a', { href: `#/${p.route}`, 'data-testid': `nav-${p.route}`, text: p.label }));
  replace(nav, links);
  nav.hidden = false;
  if (!location.hash || !location.hash.startsWith('#/')) location.replace('#/models');
  route();
}

function stopPage() {
  if (!current) return;
  current.controller.abort();
  try {
    current.dispose && current.dispose();
  } catch (e) {
    showError('page', e);
  }
  current = null;
}

function route() {
  if (!session) return;
  const name = (location.hash.replace(/^#\/?/, '').split(/[/?]/)[0] || 'models').toLowerCase();
  let page = PAGES.find((p) => p.route === name && allowed(p));
  if (!page) {
    // Unknown route, or an operator page in the project view: the models page instead.
    page = PAGES[0];
    if (name !== page.route) {
      location.replace(`#/${page.route}`);
      return; // the hashchange event routes again
    }
  }
  stopPage();
  for (const key of [...errors.keys()]) if (key !== 'unexpected') errors.delete(key);
  renderErrors();
  for (const a of nav.querySelectorAll('a')) {
    if (a.getAttribute('href') === `#/${page.route}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${page.label} · joule console`;
  const controller = new AbortController();
  const root = h('div', { class: 'page', 'data-testid': `page-${page.route}` });
  replace(main, root);
  const ctx = {
    session,
    operator: session.role === 'operator',
    signal: controller.signal,
    showError,
    clearError,
    /** Runs `task` now and then every `ms` after each run ends, until the page is left. */
    poll(source, ms, task) {
      let timer = 0;
      const run = async () => {
        if (controller.signal.aborted) return;
        try {
          await task();
          clearError(source);
        } catch (e) {
          if (!controller.signal.aborted) showError(source, e);
        }
        if (!controller.signal.aborted) timer = setTimeout(run, ms);
      };
      controller.signal.addEventListener('abort', () => clearTimeout(timer));
      run();
    },
  };
  let dispose = null;
  try {
    dispose = page.module.mount(ctx, root);
  } catch (e) {
    showError('page', e);
    replace(root, h('p', { class: 'notice', text: `This page could not be shown: ${e.message}` }));
  }
  current = { route: page.route, dispose, controller };
  main.focus({ preventScroll: true });
}

window.addEventListener('hashchange', () => {
  // Only "#/page" hashes are routes; others (an in-page anchor) leave the page as it is.
  if (location.hash.startsWith('#/')) route();
});

// The skip link moves focus to the content without touching the hash (the router's).
document.querySelector('.skip-link').addEventListener('click', (event) => {
  event.preventDefault();
  main.focus();
});

// ---- boot ---------------------------------------------------------------------------------

async function boot() {
  const saved = storedCredential();
  if (!saved) {
    showSignIn('');
    return;
  }
  try {
    const s = await getJson('/admin/session', undefined, { credential: saved });
    start(s);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      forgetCredential();
      showSignIn(`Your saved credential was not accepted: ${e.message}`);
    } else {
      // joule unreachable: keep the credential, say why, offer to try again.
      const again = h('button', { type: 'button', text: 'Try again' });
      again.addEventListener('click', boot);
      replace(main, h('div', { class: 'panel' }, h('p', { class: 'form-error', role: 'alert', text: `Cannot load the console session: ${e.message}` }), again));
    }
  }
}

boot();
