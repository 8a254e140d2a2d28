// pages/routing.js — deployments' live routing state and the strategy plugins (operator only).
//
// Owns: #/routing. Every deployment with its breaker state, TTFT, latency, token rate,
// in-flight and error counts (polled every 3 s); the loaded strategy plugins with version,
// calls and faults, the files joule refused and why; uploading a component (the file's bytes
// as the body of POST /admin/plugins) and rolling a plugin back.

import { getJson, send } from '../api.js';
import { h, append, replace, keyedTable, field, statusLine, section } from '../dom.js';
import { ms, num, pct, time, DASH } from '../format.js';

const POLL_MS = 3000;

export function mount(ctx, root) {
  const status = statusLine('plugins-status');

  const deployments = keyedTable({
    label: 'Deployments',
    testid: 'routing-deployments',
    rowTestid: 'routing-deployment-row',
    key: (d) => d.id,
    empty: 'No deployments.',
    rowAttrs: (d) => ({ 'data-deployment': d.id, 'data-breaker': d.breaker }),
    columns: [
      { label: 'Deployment', value: (d) => h('strong', { text: d.id }), sig: (d) => d.id },
      { label: 'Model', value: (d) => d.model || DASH },
      { label: 'Where', value: (d) => d.data_center || (d.provider ? `${d.provider} (provider)` : DASH) },
      { label: 'Breaker', value: (d) => breaker(d), sig: (d) => `${d.breaker}|${d.open_for_ms}` },
      { label: 'TTFT', value: (d) => ms(d.ttft_ms), className: 'num' },
      { label: 'Latency', value: (d) => ms(d.latency_ms), className: 'num' },
      { label: 'Tokens/s', value: (d) => num(d.tokens_per_s, 1), className: 'num' },
      { label: 'In flight', value: (d) => num(d.in_flight), className: 'num' },
      { label: 'Requests', value: (d) => num(d.requests), className: 'num' },
      { label: 'Failures', value: (d) => num(d.failures), className: 'num' },
      { label: 'Error rate', value: (d) => pct(d.error_rate), className: 'num' },
      { label: 'Samples', value: (d) => samples(d) },
    ],
  });

  const plugins = keyedTable({
    label: 'Strategy plugins',
    testid: 'plugins-table',
    rowTestid: 'plugin-row',
    key: (p) => p.tag,
    empty: 'No strategy plugins are loaded: the built-in strategies rank natively. Start joule with a plugins directory to load components.',
    rowAttrs: (p) => ({ 'data-tag': p.tag }),
    columns: [
      { label: 'Tag', value: (p) => h('code', { text: p.tag }), sig: (p) => p.tag },
      { label: 'Name', value: (p) => p.name || DASH },
      { label: 'Version', value: (p) => p.version || DASH },
      { label: 'SHA-256', value: (p) => (p.sha256 ? h('code', { title: p.sha256, text: `${p.sha256.slice(0, 12)}…` }) : DASH), sig: (p) => p.sha256 || '' },
      { label: 'Loaded', value: (p) => time(p.loaded_at) },
      { label: 'Calls', value: (p) => num(p.calls), className: 'num' },
      { label: 'Faults', value: (p) => faults(p.faults), className: 'num' },
      { label: 'State', value: (p) => (p.disabled ? h('span', { class: 'badge badge-bad', text: 'disabled' }) : h('span', { class: 'badge badge-ok', text: 'active' })), sig: (p) => String(p.disabled) },
      { label: 'Actions', value: (p) => rollbackButton(p), fixed: true },
    ],
  });

  const rejected = h('div', { 'data-testid': 'plugins-rejected' });
  const available = h('p', { class: 'muted', 'data-testid': 'plugins-available' });

  const file = h('input', { type: 'file', id: 'plugin-file', accept: '.wasm,application/wasm', 'data-testid': 'plugin-file' });
  const upload = h('button', { type: 'submit', 'data-testid': 'upload-plugin', text: 'Upload component' });
  const uploadForm = h(
    'form',
    { class: 'form-grid', 'aria-label': 'Upload a strategy component', novalidate: true },
    field('Component (.wasm)', file, 'Validated, stored in the plugins directory and swapped in; the previous version stays for rollback.'),
    h('div', { class: 'actions' }, upload),
  );

  append(root, [
    h('div', { class: 'page-head' }, h('h1', { text: 'Routing' }), h('p', { class: 'muted', text: 'Live telemetry, refreshed every 3 seconds.' })),
    section('Deployments', deployments.el),
    section('Strategy plugins', status.el, plugins.el, available, rejected),
    section('Upload a component', uploadForm),
  ]);

  async function refresh() {
    const [deps, plug] = await Promise.all([
      getJson('/admin/deployments', undefined, { signal: ctx.signal }),
      getJson('/admin/plugins', undefined, { signal: ctx.signal }),
    ]);
    deployments.update((deps && deps.data) || []);
    showPlugins(plug);
  }

  function showPlugins(plug) {
    plugins.update((plug && plug.plugins) || []);
    const tags = (plug && plug.available) || [];
    available.textContent = tags.length ? `Strategies available to requests: ${tags.join(', ')}.` : '';
    const refused = plug && plug.rejected ? Object.entries(plug.rejected) : [];
    if (refused.length) {
      replace(
        rejected,
        h('h3', { text: 'Refused files' }),
        h(
          'ul',
          { class: 'refused' },
          refused.map(([name, why]) => h('li', {}, h('code', { text: name }), ': ', h('span', { class: 'pre', text: typeof why === 'string' ? why : JSON.stringify(why) }))),
        ),
      );
    } else rejected.replaceChildren();
  }

  function rollbackButton(p) {
    const b = h('button', { type: 'button', class: 'secondary', 'data-testid': 'rollback-plugin', text: 'Roll back' });
    b.addEventListener('click', async () => {
      b.disabled = true;
      try {
        const res = await send(`/admin/plugins/${encodeURIComponent(p.tag)}/rollback`, { method: 'POST', signal: ctx.signal });
        const s = await res.json();
        status.say(`Rolled back ${s.tag} to version ${s.version} (${(s.sha256 || '').slice(0, 12)}…).`);
        ctx.clearError('plugins');
        await refresh();
      } catch (e) {
        ctx.showError('plugins', e);
      } finally {
        b.disabled = false;
      }
    });
    return b;
  }

  uploadForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const chosen = file.files && file.files[0];
    if (!chosen) {
      ctx.showError('plugins', 'Choose a .wasm component file first.');
      file.focus();
      return;
    }
    upload.disabled = true;
    try {
      const bytes = await chosen.arrayBuffer();
      const res = await send('/admin/plugins', { method: 'POST', body: bytes, contentType: 'application/wasm', signal: ctx.signal });
      const s = await res.json();
      status.say(`Loaded ${s.tag} “${s.name}” version ${s.version} from ${chosen.name}.`);
      ctx.clearError('plugins');
      uploadForm.reset();
      await refresh();
    } catch (e) {
      ctx.showError('plugins', e);
    } finally {
      upload.disabled = false;
    }
  });

  ctx.poll('routing', POLL_MS, refresh);
  return () => {};
}

function breaker(d) {
  const cls = d.breaker === 'closed' ? 'badge-ok' : d.breaker === 'open' ? 'badge-bad' : 'badge-warn';
  const label = { closed: 'closed (healthy)', open: 'open', half_open: 'half-open (probing)' }[d.breaker] || String(d.breaker);
  const extra = d.breaker === 'open' && d.open_for_ms ? ` · ${Math.ceil(d.open_for_ms / 1000)} s left` : '';
  return h('span', { class: ['badge', cls], 'data-testid': 'breaker', 'data-breaker': d.breaker, text: label + extra });
}

function samples(d) {
  const s = d.samples;
  if (!s) return DASH;
  const parts = Object.entries(s).map(([k, v]) => `${v} ${k === 'tokens_per_s' ? 'tokens/s' : k.replace(/_/g, ' ')}`);
  return parts.join(' · ') + (d.prior && Object.values(s).every((v) => !v) ? ' (priors)' : '');
}

function faults(f) {
  if (!f) return '0';
  if (typeof f === 'number') return num(f);
  const entries = Object.entries(f);
  const total = entries.reduce((a, [, v]) => a + Number(v || 0), 0);
  return entries.length ? `${num(total)} (${entries.map(([k, v]) => `${k} ${v}`).join(', ')})` : '0';
}
