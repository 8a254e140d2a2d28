// pages/keys.js — API keys (operator only).
//
// Owns: #/keys. The key list (name, prefix, project, created, last used, status), the create
// form (name, optional project and rpm/tpm limits), the panel that shows a new key this one
// time with a Copy button, the API base URL and ready-to-paste curl and Python snippets, and
// revoking with an in-page confirmation.

import { getJson, sendJson, send } from '../api.js';
import { h, append, replace, keyedTable, confirmButton, copyText, field, statusLine, section } from '../dom.js';
import { time, DASH } from '../format.js';

export function mount(ctx, root) {
  const panelSlot = h('div');
  const status = statusLine('keys-status');

  // ---- create form ----
  const name = h('input', { type: 'text', id: 'key-name', name: 'name', required: true, maxlength: '64', autocomplete: 'off', 'data-testid': 'key-name', placeholder: 'dev-key' });
  const project = h('select', { id: 'key-project', name: 'project', 'data-testid': 'key-project' }, h('option', { value: '', text: '— no project —' }));
  const rpm = h('input', { type: 'number', id: 'key-rpm', name: 'rpm', min: '1', step: '1', inputmode: 'numeric', 'data-testid': 'key-rpm' });
  const tpm = h('input', { type: 'number', id: 'key-tpm', name: 'tpm', min: '1', step: '1', inputmode: 'numeric', 'data-testid': 'key-tpm' });
  const submit = h('button', { type: 'submit', 'data-testid': 'create-key', text: 'Create key' });
  const form = h(
    'form',
    { class: 'form-grid', 'aria-label': 'Create a key', novalidate: true },
    field('Name', name, 'Letters, digits, . _ - (e.g. dev-key, n8n-workflow)'),
    field('Project', project, 'Optional: the key then uses the project’s models, limits and budget'),
    field('Requests per minute', rpm, 'Optional limit'),
    field('Tokens per minute', tpm, 'Optional limit'),
    h('div', { class: 'actions' }, submit),
  );

  const table = keyedTable({
    label: 'API keys',
    testid: 'keys-table',
    rowTestid: 'key-row',
    key: (k) => k.id,
    empty: 'No keys yet. Create one above.',
    rowAttrs: (k) => ({ 'data-name': k.name, 'data-status': statusOf(k) }),
    columns: [
      { label: 'Name', value: (k) => h('strong', { text: k.name }), sig: (k) => k.name },
      { label: 'Prefix', value: (k) => (k.prefix ? h('code', { text: `${k.prefix}…` }) : DASH), sig: (k) => k.prefix || '' },
      { label: 'Project', value: (k) => k.project || DASH },
      { label: 'Created', value: (k) => time(k.created_at) },
      { label: 'Last used', value: (k) => (k.last_used_at ? time(k.last_used_at) : 'never') },
      { label: 'Status', value: (k) => statusBadge(k), sig: (k) => `${statusOf(k)}|${k.revoked_at}` },
      { label: 'Actions', value: (k) => actions(k), sig: (k) => statusOf(k) },
    ],
  });

  append(root, [
    h('div', { class: 'page-head' }, h('h1', { text: 'API keys' })),
    panelSlot,
    section('Create a key', form, status.el),
    section('Keys', table.el),
  ]);

  let models = [];
  let projects = [];

  async function load() {
    const [keysDoc, projectsDoc, modelsDoc] = await Promise.all([
      getJson('/admin/keys', undefined, { signal: ctx.signal }),
      getJson('/admin/projects', undefined, { signal: ctx.signal }).catch(() => ({ projects: [] })),
      getJson('/admin/models', undefined, { signal: ctx.signal }).catch(() => ({ data: [] })),
    ]);
    projects = projectsDoc.projects || [];
    models = (modelsDoc.data || []).map((m) => m.id);
    const chosen = project.value;
    replace(project, h('option', { value: '', text: '— no project —' }), projects.map((p) => h('option', { value: p.name, text: p.name, selected: p.name === chosen })));
    table.update(keysDoc.keys || []);
  }

  function reload() {
    load()
      .then(() => ctx.clearError('keys'))
      .catch((e) => ctx.showError('keys', e));
  }

  function actions(k) {
    if (k.source === 'config') return h('span', { class: 'muted', text: 'config file (read-only)' });
    if (k.revoked_at) return h('span', { class: 'muted', text: 'revoked' });
    return confirmButton({
      label: 'Revoke',
      testid: 'revoke-key',
      question: `Revoke ${k.name}? Requests with it fail at once.`,
      confirmLabel: 'Revoke key',
      action: async () => {
        await send(`/admin/keys/${encodeURIComponent(k.id)}`, { method: 'DELETE', signal: ctx.signal });
        status.say(`Key ${k.name} revoked.`);
        ctx.clearError('keys');
        await load();
      },
      onError: (e) => ctx.showError('keys', e),
    });
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = { name: name.value.trim() };
    if (!body.name) {
      ctx.showError('keys', 'A key needs a name.');
      name.focus();
      return;
    }
    if (project.value) body.project = project.value;
    for (const [input, key] of [
      [rpm, 'rpm'],
      [tpm, 'tpm'],
    ]) {
      if (input.value === '') continue;
      const n = Number(input.value);
      if (!Number.isInteger(n) || n < 1) {
        ctx.showError('keys', `${key} must be a whole number of at least 1 (or empty for no limit).`);
        input.focus();
        return;
      }
      body[key] = n;
    }
    submit.disabled = true;
    try {
      const created = await sendJson('POST', '/admin/keys', body, { signal: ctx.signal });
      ctx.clearError('keys');
      status.say(`Key ${created.name} created.`);
      form.reset();
      showNewKey(created);
      await load();
    } catch (e) {
      ctx.showError('keys', e);
    } finally {
      submit.disabled = false;
    }
  });

  /** The one-time panel with the secret, the base URL and snippets. */
  function showNewKey(created) {
    const base = ctx.session.apiBase;
    const proj = projects.find((p) => p.name === created.project);
    const model = (proj && proj.allowed_models && proj.allowed_models[0]) || models[0] || 'MODEL';
    const secret = created.key;
    const keyInput = h('input', { type: 'text', readOnly: true, value: secret, id: 'new-key-value', 'data-testid': 'new-key-value', class: 'mono', spellcheck: 'false', autocomplete: 'off' });
    const copyStatus = statusLine('copy-status');
    const copyButton = (text, target, testid, what) => {
      const b = h('button', { type: 'button', class: 'secondary', 'data-testid': testid, text: `Copy ${what}` });
      b.addEventListener('click', async () => copyStatus.say(`${what}: ${await copyText(text(), target)}`));
      return b;
    };
    const curl = curlSnippet(base, secret, model);
    const python = pythonSnippet(base, secret, model);
    const baseInput = h('input', { type: 'text', readOnly: true, value: base, id: 'new-key-base', 'data-testid': 'api-base', class: 'mono' });
    const curlBox = h('textarea', { readOnly: true, rows: '5', class: 'mono snippet', id: 'snippet-curl', 'data-testid': 'snippet-curl', spellcheck: 'false' });
    curlBox.value = curl;
    const pyBox = h('textarea', { readOnly: true, rows: '8', class: 'mono snippet', id: 'snippet-python', 'data-testid': 'snippet-python', spellcheck: 'false' });
    pyBox.value = python;
    const done = h('button', { type: 'button', 'data-testid': 'new-key-done', text: 'Done — I have saved the key' });
    const panel = h(
      'section',
      { class: 'panel new-key', 'data-testid': 'new-key-panel', 'aria-labelledby': 'new-key-title', tabindex: '-1' },
      h('h2', { id: 'new-key-title', text: `Key “${created.name}” created` }),
      h('p', { class: 'warning', text: 'Copy the key now: joule keeps only its hash and will not show it again.' }),
      h('div', { class: 'copy-row' }, field('API key', keyInput), copyButton(() => secret, keyInput, 'copy-key', 'key')),
      h('div', { class: 'copy-row' }, field('API base URL', baseInput), copyButton(() => base, baseInput, 'copy-base', 'base URL')),
      created.project ? h('p', { class: 'hint', text: `Project ${created.project}: requests use its models, limits and budget.` }) : null,
      h('div', { class: 'copy-row' }, field('curl', curlBox), copyButton(() => curl, curlBox, 'copy-curl', 'curl')),
      h('div', { class: 'copy-row' }, field('Python (openai SDK)', pyBox), copyButton(() => python, pyBox, 'copy-python', 'Python')),
      copyStatus.el,
      h('div', { class: 'actions' }, done),
    );
    done.addEventListener('click', () => {
      panelSlot.replaceChildren(); // the secret leaves the page
      name.focus();
    });
    replace(panelSlot, panel);
    panel.focus();
    panel.scrollIntoView({ block: 'start' });
  }

  reload();
  return () => panelSlot.replaceChildren();
}

function statusOf(k) {
  return k.revoked_at ? 'revoked' : 'active';
}

function statusBadge(k) {
  if (k.revoked_at) return h('span', { class: 'badge badge-bad', 'data-testid': 'key-status', title: `revoked ${time(k.revoked_at)}`, text: 'revoked' });
  return h('span', { class: 'badge badge-ok', 'data-testid': 'key-status', text: k.source === 'config' ? 'active (config)' : 'active' });
}

/** A shell single-quoted string. */
function shellQuote(s) {
  return `'${String(s).replace(/'/g, `'\\''`)}'`;
}

export function curlSnippet(base, key, model) {
  const body = JSON.stringify({ model, messages: [{ role: 'user', content: 'Hello' }] });
  return [
    `curl ${shellQuote(`${base}/chat/completions`)} \\`,
    `  -H ${shellQuote(`Authorization: Bearer ${key}`)} \\`,
    `  -H 'Content-Type: application/json' \\`,
    `  -d ${shellQuote(body)}`,
  ].join('\n');
}

export function pythonSnippet(base, key, model) {
  // JSON string literals are valid Python string literals.
  return [
    'from openai import OpenAI',
    '',
    `client = OpenAI(base_url=${JSON.stringify(base)}, api_key=${JSON.stringify(key)})`,
    'reply = client.chat.completions.create(',
    `    model=${JSON.stringify(model)},`,
    '    messages=[{"role": "user", "content": "Hello"}],',
    ')',
    'print(reply.choices[0].message.content)',
  ].join('\n');
}
