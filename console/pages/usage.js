// pages/usage.js — usage records, totals, spend chart and CSV export.
//
// Owns: #/usage. Filters (project, key — operator only —, model, status, time range), the
// records table with cursor paging and a cost breakdown per row, totals from
// /admin/usage/summary, a chart of requests and spend over time (summary with `step`), and the
// CSV download (fetched with the bearer header into a Blob: a plain link could not carry the
// credential). With an API key the server scopes everything to its project (or the key).
// The first page refreshes every 3 s so new requests appear on their own.

import { getJson, send, withQuery } from '../api.js';
import { h, append, replace, keyedTable, field, statusLine, section } from '../dom.js';
import { usd, num, ms, time, perMtok, fromLocalInput, DASH } from '../format.js';
import { timeChart, chartsAvailable } from '../chart.js';

const POLL_MS = 3000;
const DAY_MS = 24 * 3600 * 1000;
/** Chart bucket sizes to choose from (seconds), smallest first. */
const STEPS = [60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400];
const MAX_BUCKETS = 240;

export function mount(ctx, root) {
  const operator = ctx.operator;
  const status = statusLine('usage-status');

  // ---- filters ----
  const project = h('select', { id: 'f-project', 'data-testid': 'filter-project' }, h('option', { value: '', text: 'All projects' }));
  const key = h('select', { id: 'f-key', 'data-testid': 'filter-key' }, h('option', { value: '', text: 'All keys' }));
  const model = h('select', { id: 'f-model', 'data-testid': 'filter-model' }, h('option', { value: '', text: 'All models' }));
  const statusInput = h('input', { type: 'number', id: 'f-status', min: '100', max: '599', step: '1', inputmode: 'numeric', placeholder: 'any', 'data-testid': 'filter-status' });
  const since = h('input', { type: 'datetime-local', id: 'f-since', 'data-testid': 'filter-since' });
  const until = h('input', { type: 'datetime-local', id: 'f-until', 'data-testid': 'filter-until' });
  const limit = h('select', { id: 'f-limit', 'data-testid': 'filter-limit' }, [10, 25, 50, 100, 500].map((n) => h('option', { value: String(n), text: `${n} per page`, selected: n === 50 })));
  const apply = h('button', { type: 'submit', 'data-testid': 'apply-filters', text: 'Apply filters' });
  const reset = h('button', { type: 'button', class: 'secondary', 'data-testid': 'reset-filters', text: 'Reset' });
  const filtersForm = h(
    'form',
    { class: 'form-grid filters', 'aria-label': 'Usage filters', novalidate: true },
    operator ? field('Project', project) : null,
    operator ? field('Key', key) : null,
    field('Model', model),
    field('Status', statusInput, 'HTTP status, e.g. 200 or 429'),
    field('Since', since),
    field('Until', until),
    field('Page size', limit),
    h('div', { class: 'actions' }, apply, ' ', reset),
  );

  // ---- totals, chart, table, paging ----
  const totals = h('dl', { class: 'summary totals', 'data-testid': 'usage-totals' });
  const chartBox = h('div', { 'data-testid': 'usage-chart' });
  const chartNote = h('p', { class: 'chart-note', 'data-testid': 'usage-chart-note' });
  const chart = chartsAvailable()
    ? timeChart(chartBox, {
        height: 220,
        ariaLabel: 'Requests and spend over time',
        axes: { y: { label: 'requests', format: (v) => num(v), integer: true }, y2: { label: 'spend', format: (v) => usd(v), size: 100 } },
      })
    : null;
  if (!chart) chartBox.appendChild(h('p', { class: 'notice', text: 'The chart library (vendor/uplot) did not load.' }));

  const projectNames = new Map(); // project id → name
  const table = keyedTable({
    label: 'Usage records',
    testid: 'usage-table',
    rowTestid: 'usage-row',
    key: (r) => r.id,
    empty: 'No requests match these filters.',
    rowAttrs: (r) => ({ 'data-request-id': r.id, 'data-model': r.model || '', 'data-key-name': r.key_name || '' }),
    columns: [
      { label: 'Time', value: (r) => time(r.ts_ms) },
      { label: 'Model', value: (r) => r.model || DASH },
      { label: 'Key', value: (r) => r.key_name || r.key_id || DASH },
      ...(operator ? [{ label: 'Project', value: (r) => (r.project_id ? projectNames.get(r.project_id) || r.project_id : DASH) }] : []),
      { label: 'Route', value: (r) => [r.deployment, r.data_center].filter(Boolean).join(' @ ') || DASH },
      { label: 'Status', value: (r) => statusCell(r), sig: (r) => `${r.status}|${r.outcome}` },
      { label: 'Tokens in / out', value: (r) => `${num(r.tokens_in)} / ${num(r.tokens_out)}`, className: 'num' },
      { label: 'TTFT / latency', value: (r) => `${ms(r.ttft_ms)} / ${ms(r.latency_ms)}`, className: 'num' },
      { label: 'Cost', value: (r) => costCell(r), sig: (r) => costSig(r), className: 'num' },
    ],
  });

  const prev = h('button', { type: 'button', class: 'secondary', 'data-testid': 'prev-page', text: 'Previous page' });
  const first = h('button', { type: 'button', class: 'secondary', 'data-testid': 'first-page', text: 'First page' });
  const next = h('button', { type: 'button', class: 'secondary', 'data-testid': 'next-page', text: 'Next page' });
  const pageInfo = h('span', { class: 'muted', 'data-testid': 'page-info' });
  const csv = h('button', { type: 'button', class: 'secondary', 'data-testid': 'download-csv', text: 'Download CSV' });
  const csvSlot = h('span', { class: 'csv-slot' });

  const scope = operator
    ? 'All requests through this gateway.'
    : ctx.session.project
      ? `Requests of project ${ctx.session.project.name}.`
      : `Requests made with key ${ctx.session.key ? ctx.session.key.name : ''}.`;
  append(root, [
    h('div', { class: 'page-head' }, h('h1', { text: 'Usage' }), h('p', { class: 'muted', text: scope })),
    section('Filters', filtersForm),
    section('Totals', totals, chartBox, chartNote),
    section('Requests', h('div', { class: 'pager' }, first, prev, next, pageInfo, h('span', { class: 'spacer' }), csv, csvSlot), status.el, table.el),
  ]);

  // ---- state ----
  let filters = {};
  let cursors = []; // cursors of the pages before the current one; [] = first page
  let cursor = null; // the current page's cursor (null: first page)
  let nextCursor = null;
  let csvUrl = null;

  function readFilters() {
    const f = {
      model: model.value,
      status: statusInput.value,
      since: fromLocalInput(since.value),
      until: fromLocalInput(until.value),
    };
    if (operator) {
      f.project = project.value;
      f.key = key.value;
    }
    if (f.status && !/^[1-5]\d\d$/.test(f.status)) throw new Error('Status must be an HTTP status code between 100 and 599.');
    if (f.since && f.until && f.since > f.until) throw new Error('“Since” is after “Until”.');
    return f;
  }

  async function loadOptions() {
    const [modelsDoc, projectsDoc, keysDoc] = await Promise.all([
      getJson('/admin/models', undefined, { signal: ctx.signal }),
      operator ? getJson('/admin/projects', undefined, { signal: ctx.signal }) : Promise.resolve(null),
      operator ? getJson('/admin/keys', undefined, { signal: ctx.signal }) : Promise.resolve(null),
    ]);
    fillSelect(model, 'All models', ((modelsDoc && modelsDoc.data) || []).map((m) => [m.id, m.id]));
    if (operator) {
      const ps = (projectsDoc && projectsDoc.projects) || [];
      projectNames.clear();
      for (const p of ps) projectNames.set(p.id, p.name);
      fillSelect(project, 'All projects', ps.map((p) => [p.name, p.name]));
      const ks = ((keysDoc && keysDoc.keys) || []).filter((k) => k.source !== 'config' || k.id);
      fillSelect(key, 'All keys', ks.map((k) => [k.id, `${k.name}${k.project ? ` (${k.project})` : ''}${k.revoked_at ? ' — revoked' : ''}`]));
    }
  }

  async function loadRecords() {
    const page = await getJson('/admin/usage', { ...filters, limit: limit.value, cursor }, { signal: ctx.signal });
    nextCursor = page.next_cursor || null;
    table.update(page.records || []);
    next.disabled = !nextCursor;
    prev.disabled = cursors.length === 0 && !cursor;
    first.disabled = !cursor;
    const n = (page.records || []).length;
    pageInfo.textContent = `Page ${cursors.length + (cursor ? 2 : 1)} · ${n} record${n === 1 ? '' : 's'}`;
  }

  async function loadSummary() {
    const now = Date.now();
    const from = filters.since || now - DAY_MS;
    const to = filters.until || now;
    const step = STEPS.find((s) => (to - from) / 1000 / s <= MAX_BUCKETS) || STEPS[STEPS.length - 1];
    const [sum, series] = await Promise.all([
      getJson('/admin/usage/summary', filters, { signal: ctx.signal }),
      chart ? getJson('/admin/usage/summary', { ...filters, since: from, until: filters.until, step }, { signal: ctx.signal }) : Promise.resolve(null),
    ]);
    replace(
      totals,
      item('Requests', num(sum.requests), 'total-requests'),
      item('Tokens in', num(sum.tokens_in), 'total-tokens-in'),
      item('Tokens out', num(sum.tokens_out), 'total-tokens-out'),
      item('Spend', usd(sum.cost_usd), 'total-cost'),
    );
    if (chart && series) {
      const buckets = new Map((series.series || []).map((b) => [Math.floor(b.t / 1000 / step) * step, b]));
      // Every bucket of the range, zero where the summary has none (it lists only busy ones).
      const xs = [];
      for (let t = Math.floor(from / 1000 / step) * step; t <= to / 1000; t += step) xs.push(t);
      chart.update({
        xs,
        series: [
          { label: 'requests', values: xs.map((t) => (buckets.get(t) ? buckets.get(t).requests : 0)), color: '#0072b2', bars: true, scale: 'y', format: (v) => num(v) },
          { label: 'spend', values: xs.map((t) => (buckets.get(t) ? buckets.get(t).cost_usd : 0)), color: '#d55e00', width: 2, scale: 'y2', format: (v) => usd(v) },
        ],
      });
      chartNote.textContent = `${filters.since ? '' : 'Last 24 hours (set “Since” for another range); '}one bar per ${step >= 3600 ? `${step / 3600} h` : `${step / 60} min`}.`;
    }
  }

  async function refresh({ records = true } = {}) {
    await Promise.all([records ? loadRecords() : null, loadSummary()]);
  }

  function run(task, source = 'usage') {
    return task()
      .then(() => ctx.clearError(source))
      .catch((e) => ctx.showError(source, e));
  }

  filtersForm.addEventListener('submit', (event) => {
    event.preventDefault();
    try {
      filters = readFilters();
      ctx.clearError('usage-filters');
    } catch (e) {
      // Its own source: the 3-second refresh clears 'usage' messages when it succeeds.
      ctx.showError('usage-filters', e);
      return;
    }
    cursors = [];
    cursor = null;
    run(() => refresh());
  });
  reset.addEventListener('click', () => {
    filtersForm.reset();
    filters = {};
    cursors = [];
    cursor = null;
    run(() => refresh());
  });
  next.addEventListener('click', () => {
    if (!nextCursor) return;
    if (cursor) cursors.push(cursor);
    cursor = nextCursor;
    run(loadRecords);
  });
  prev.addEventListener('click', () => {
    cursor = cursors.pop() || null;
    run(loadRecords);
  });
  first.addEventListener('click', () => {
    cursors = [];
    cursor = null;
    run(loadRecords);
  });

  csv.addEventListener('click', async () => {
    csv.disabled = true;
    try {
      const response = await send(withQuery('/admin/usage', { ...filters, limit: limit.value, cursor, format: 'csv' }), { signal: ctx.signal, accept: 'text/csv' });
      const blob = await response.blob();
      if (csvUrl) URL.revokeObjectURL(csvUrl);
      csvUrl = URL.createObjectURL(blob);
      const name = `joule-usage-${new Date().toISOString().replace(/[:.]/g, '-')}.csv`;
      const link = h('a', { href: csvUrl, download: name, 'data-testid': 'csv-link', text: `Save ${name} again` });
      replace(csvSlot, link);
      link.click();
      status.say(`CSV of this page downloaded (${blob.size} bytes)${response.headers.get('x-next-cursor') ? '; more pages follow' : ''}.`);
      ctx.clearError('csv');
    } catch (e) {
      ctx.showError('csv', e);
    } finally {
      csv.disabled = false;
    }
  });

  run(loadOptions, 'usage-options');
  // The first page follows new requests; a later page stays as it is while being read.
  ctx.poll('usage', POLL_MS, () => refresh({ records: cursor === null }));

  return () => {
    if (csvUrl) URL.revokeObjectURL(csvUrl);
  };
}

function fillSelect(select, allText, pairs) {
  const chosen = select.value;
  replace(select, h('option', { value: '', text: allText }), pairs.map(([value, text]) => h('option', { value, text, selected: value === chosen })));
}

function item(label, value, testid) {
  return h('div', {}, h('dt', { text: label }), h('dd', { 'data-testid': testid, text: value }));
}

function statusCell(r) {
  const ok = r.status >= 200 && r.status < 300;
  return h('span', { class: ['badge', ok ? 'badge-ok' : r.status >= 500 || r.status === 499 ? 'badge-bad' : 'badge-warn'], title: r.outcome, text: ok ? String(r.status) : `${r.status} ${r.outcome || ''}`.trim() });
}

const KNOWN_COSTS = new Set(['cost_input', 'cost_output', 'cost_fee', 'cost_total']);

function costSig(r) {
  return Object.keys(r)
    .filter((k) => k.startsWith('cost_') || k.startsWith('energy') || k.startsWith('price_'))
    .map((k) => `${k}=${JSON.stringify(r[k])}`)
    .join('&');
}

/** Total cost, then each part: input and output (tokens × price), fee, and any other cost field. */
function costCell(r) {
  const parts = [];
  const line = (label, value, detail) => parts.push(h('li', {}, h('span', { text: `${label} ` }), h('span', { class: 'num', text: usd(value) }), detail ? h('span', { class: 'muted', text: ` ${detail}` }) : null));
  line('input', r.cost_input, r.tokens_in !== null && r.tokens_in !== undefined && r.price_input !== null && r.price_input !== undefined ? `(${num(r.tokens_in)} × ${perMtok(r.price_input)}/Mtok)` : '');
  line('output', r.cost_output, r.tokens_out !== null && r.tokens_out !== undefined && r.price_output !== null && r.price_output !== undefined ? `(${num(r.tokens_out)} × ${perMtok(r.price_output)}/Mtok)` : '');
  if (r.cost_fee) line('routing fee', r.cost_fee);
  // Fields the server may add later (energy part, …) are shown rather than dropped.
  for (const [k, v] of Object.entries(r)) {
    if (typeof v !== 'number') continue;
    if ((k.startsWith('cost_') && !KNOWN_COSTS.has(k)) || k.startsWith('energy')) line(k.replace(/^cost_/, '').replace(/_/g, ' '), v);
  }
  return h('div', { class: 'cost' }, h('strong', { 'data-testid': 'usage-cost', text: usd(r.cost_total) }), h('ul', { class: 'breakdown', 'data-testid': 'cost-breakdown' }, parts));
}
