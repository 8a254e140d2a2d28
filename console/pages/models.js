// pages/models.js — the model catalog with live price charts, and the data centers.
//
// Owns: #/models. Every model the credential may use, with its category badge, best price and
// route, its deployments (price, energy $/MWh, stale flag, and for the operator breaker health
// and TTFT from /admin/deployments), a price chart per model with hosted deployments (one line
// per data center, plus providers and the best price; 4h / 24h / 7d; stale intervals shaded,
// negative energy prices marked) and the data-center table. Everything is polled every 3 s.

import { getJson } from '../api.js';
import { h, append, replace, keyedTable, section } from '../dom.js';
import { perMtok, perMwh, ms, time, num, DASH } from '../format.js';
import { timeChart, chartsAvailable, PALETTE, BEST_COLOR } from '../chart.js';

const POLL_MS = 3000;
const WINDOWS = ['4h', '24h', '7d'];
const DEFAULT_WINDOW = '4h';
const METRICS = {
  output: { label: 'Output price ($/Mtok)', axis: '$/Mtok out', value: (p) => p.output },
  input: { label: 'Input price ($/Mtok)', axis: '$/Mtok in', value: (p) => p.input },
  energy: { label: 'Energy price ($/MWh)', axis: '$/MWh', value: (p) => (p.usd_per_mwh === undefined ? null : p.usd_per_mwh) },
};

/** The badge text and class of a model's `category` (joule spells it `third-party`). */
export function category(model) {
  const c = String(model.category || '').toLowerCase().replace(/[_\s]/g, '-');
  if (c === 'free') return { text: 'Free', cls: 'badge-free' };
  if (c === 'hosted') return { text: 'Hosted', cls: 'badge-hosted' };
  if (c === 'third-party' || c === 'thirdparty') return { text: 'Third-party', cls: 'badge-third' };
  return { text: c ? c : 'Uncategorised', cls: 'badge-other' };
}

export function mount(ctx, root) {
  const cardsEl = h('div', { class: 'cards', 'data-testid': 'model-cards' }, h('p', { class: 'loading', text: 'Loading models…' }));
  const dcTable = keyedTable({
    label: 'Data centers',
    testid: 'data-centers',
    rowTestid: 'data-center-row',
    key: (dc) => dc.id,
    empty: 'No data centers are configured.',
    columns: [
      { label: 'Data center', value: (dc) => h('span', {}, h('strong', { text: dc.name || dc.id }), dc.name ? h('span', { class: 'muted', text: ` ${dc.id}` }) : null), sig: (dc) => `${dc.name}|${dc.id}` },
      { label: 'Price node', value: (dc) => dc.price_node || DASH },
      { label: 'PUE', value: (dc) => (dc.pue === null || dc.pue === undefined ? DASH : num(dc.pue, 2)), className: 'num' },
      { label: 'Energy now', value: (dc) => energyCell(dc.usd_per_mwh), sig: (dc) => String(dc.usd_per_mwh), className: 'num' },
      { label: 'Status', value: (dc) => staleCell(dc.usd_per_mwh === null || dc.usd_per_mwh === undefined ? null : dc.stale), sig: (dc) => `${dc.stale}|${dc.usd_per_mwh === null}` },
      { label: 'Interval', value: (dc) => (dc.interval_start ? `${time(dc.interval_start)} (${dc.interval_minutes} min)` : DASH) },
      { label: 'Models', value: (dc) => (dc.models && dc.models.length ? dc.models.join(', ') : DASH) },
    ],
  });

  const asOf = h('p', { class: 'muted', 'data-testid': 'prices-as-of' });
  append(root, [
    h('div', { class: 'page-head' }, h('h1', { text: 'Models' }), asOf),
    h('p', { class: 'hint', text: ctx.operator ? 'Every model in the catalog, its deployments and live prices. Prices are US dollars per million tokens.' : 'The models your key may use, with live prices. Prices are US dollars per million tokens.' }),
    cardsEl,
    section('Data centers', h('p', { class: 'hint', text: 'The current energy price of each data center drives its hosted token prices.' }), dcTable.el),
  ]);

  const cards = new Map(); // model id → card state
  let lastKeys = '';
  const prices = new Map(); // window → /admin/prices document
  let state = { models: [], deployments: new Map(), dcs: new Map() };

  /** Which windows the charts show now (only those are fetched). */
  const windowsInUse = () => {
    const set = new Set([...cards.values()].filter((c) => c.chart).map((c) => c.window));
    return set.size ? [...set] : [DEFAULT_WINDOW];
  };

  async function fetchPrices(windows) {
    const docs = await Promise.all(windows.map((w) => getJson('/admin/prices', { window: w }, { signal: ctx.signal })));
    windows.forEach((w, i) => prices.set(w, docs[i]));
  }

  async function refresh() {
    const [modelsDoc, deployments, dcs] = await Promise.all([
      getJson('/admin/models', undefined, { signal: ctx.signal }),
      ctx.operator ? getJson('/admin/deployments', undefined, { signal: ctx.signal }) : Promise.resolve(null),
      getJson('/admin/data-centers', undefined, { signal: ctx.signal }),
      fetchPrices(windowsInUse()),
    ]);
    state = {
      models: (modelsDoc && modelsDoc.data) || [],
      deployments: new Map(((deployments && deployments.data) || []).map((d) => [d.id, d])),
      dcs: new Map(((dcs && dcs.data) || []).map((dc) => [dc.id, dc])),
    };
    render();
    dcTable.update([...state.dcs.values()]);
  }

  function render() {
    const keys = state.models.map((m) => m.id).join('\n');
    if (keys !== lastKeys) {
      // The set of models changed (first load, reload of the config): rebuild the cards.
      for (const c of cards.values()) c.chart && c.chart.destroy();
      cards.clear();
      const list = state.models.map((m) => {
        const card = buildCard(m);
        cards.set(m.id, card);
        return card.el;
      });
      replace(cardsEl, list.length ? list : h('p', { class: 'empty', text: ctx.operator ? 'The catalog has no models.' : 'This key may not use any model.' }));
      lastKeys = keys;
    }
    for (const m of state.models) updateCard(cards.get(m.id), m);
    const doc = prices.get(windowsInUse()[0]);
    // `now` is the energy feed's clock: in the demo, the replayed trace's time.
    asOf.textContent = doc && doc.now ? `Energy prices as of ${time(doc.now)} (energy feed time)` : '';
  }

  function buildCard(model) {
    const cat = category(model);
    const hosted = (model.deployments || []).some((d) => d.kind === 'hosted');
    const summary = h('dl', { class: 'summary' });
    const depTable = keyedTable({
      label: `Deployments of ${model.id}`,
      testid: 'deployments',
      rowTestid: 'deployment-row',
      key: (d) => d.id,
      empty: 'No deployments.',
      columns: deploymentColumns(),
    });
    // A free model's token prices are $0: its chart shows what moves, the energy price.
    const metric = cat.text === 'Free' ? 'energy' : 'output';
    const card = { el: null, summary, depTable, chart: null, window: DEFAULT_WINDOW, metric, note: null, buttons: [] };
    let chartSection = null;
    if (hosted) {
      const container = h('div', { 'data-testid': 'price-chart', 'data-model': model.id });
      card.note = h('p', { class: 'chart-note', 'data-testid': 'chart-note' });
      const group = h('div', { class: 'toggle', role: 'group', 'aria-label': `Chart window for ${model.id}` });
      for (const w of WINDOWS) {
        const b = h('button', { type: 'button', class: 'secondary', 'aria-pressed': String(w === card.window), 'data-testid': `window-${w}`, 'data-window': w, text: w });
        b.addEventListener('click', () => setWindow(card, model.id, w));
        group.appendChild(b);
        card.buttons.push(b);
      }
      const select = h(
        'select',
        { id: `metric-${cssId(model.id)}`, 'data-testid': 'chart-metric' },
        Object.entries(METRICS).map(([k, m]) => h('option', { value: k, text: m.label, selected: k === card.metric })),
      );
      select.addEventListener('change', () => {
        card.metric = select.value;
        drawChart(card, model.id);
      });
      chartSection = h(
        'div',
        { class: 'chart-block' },
        h('div', { class: 'chart-tools' }, group, h('label', { class: 'inline', for: select.id }, 'Show ', select)),
        container,
        card.note,
      );
      if (chartsAvailable()) {
        card.chart = timeChart(container, {
          height: 240,
          ariaLabel: `Price history of ${model.id} per data center`,
          axes: { y: { format: (v) => formatAxis(v, card.metric) } },
        });
      } else {
        container.appendChild(h('p', { class: 'notice', text: 'The chart library (vendor/uplot) did not load: charts are unavailable.' }));
      }
    }
    card.el = h(
      'article',
      { class: 'card model-card', 'data-testid': 'model-card', 'data-model': model.id, 'data-category': cat.text },
      h(
        'header',
        { class: 'card-head' },
        h('h2', { text: model.id }),
        h('span', { class: ['badge', cat.cls], 'data-testid': 'category-badge', text: cat.text }),
        model.owned_by ? h('span', { class: 'muted', text: `by ${model.owned_by}` }) : null,
      ),
      summary,
      h('details', { class: 'deployments', open: true }, h('summary', { text: `Deployments (${(model.deployments || []).length})` }), depTable.el),
      chartSection,
    );
    return card;
  }

  function setWindow(card, modelId, w) {
    card.window = w;
    for (const b of card.buttons) b.setAttribute('aria-pressed', String(b.dataset.window === w));
    if (prices.has(w)) drawChart(card, modelId);
    // Fetch it now rather than at the next poll.
    fetchPrices([w])
      .then(() => {
        drawChart(card, modelId);
        ctx.clearError('prices');
      })
      .catch((e) => ctx.showError('prices', e));
  }

  function deploymentColumns() {
    const cols = [
      { label: 'Deployment', value: (d) => d.id },
      { label: 'Where', value: (d) => where(d) },
      { label: 'Input $/Mtok', value: (d) => perMtok(d.price && d.price.input), className: 'num' },
      { label: 'Output $/Mtok', value: (d) => perMtok(d.price && d.price.output), className: 'num' },
      { label: 'Energy', value: (d) => (d.energy ? energyCell(d.energy.usd_per_mwh) : DASH), sig: (d) => String(d.energy && d.energy.usd_per_mwh), className: 'num' },
      { label: 'Energy status', value: (d) => staleCell(d.energy ? d.energy.stale : null), sig: (d) => String(d.energy && d.energy.stale) },
    ];
    if (ctx.operator) cols.push({ label: 'Health', value: (d) => breakerCell(state.deployments.get(d.id)), sig: (d) => breakerSig(state.deployments.get(d.id)) });
    if (ctx.operator) cols.push({ label: 'TTFT', value: (d) => ttft(d), className: 'num' });
    return cols;
  }

  function ttft(d) {
    if (d.ttft_ms !== undefined) return ms(d.ttft_ms);
    const live = state.deployments.get(d.id);
    return live ? ms(live.ttft_ms) : DASH;
  }

  function where(d) {
    if (d.data_center) {
      const dc = state.dcs.get(d.data_center);
      return dc && dc.name ? `${dc.name}` : d.data_center;
    }
    return d.provider ? `${d.provider} (provider)` : DASH;
  }

  function updateCard(card, model) {
    if (!card) return;
    const deps = model.deployments || [];
    const best = deps.find((d) => d.id === model.best_deployment);
    const price = model.price || (best && best.price);
    replace(
      card.summary,
      summaryItem('Best input', price ? `${perMtok(price.input)} /Mtok` : DASH, 'best-input'),
      summaryItem('Best output', price ? `${perMtok(price.output)} /Mtok` : DASH, 'best-output'),
      summaryItem('Best route', best ? `${best.id} · ${where(best)}` : model.best_deployment || DASH, 'best-route'),
    );
    card.depTable.update(deps);
    if (card.chart) drawChart(card, model.id);
  }

  function drawChart(card, modelId) {
    const doc = prices.get(card.window);
    if (!card.chart || !doc) return;
    const entry = (doc.data || []).find((d) => d.model === modelId);
    const data = chartData(entry, card.metric);
    card.chart.update(data);
    card.note.textContent = data.note;
  }

  ctx.poll('models', POLL_MS, refresh);

  return () => {
    for (const c of cards.values()) c.chart && c.chart.destroy();
  };
}

function summaryItem(label, value, testid) {
  return h('div', {}, h('dt', { text: label }), h('dd', { 'data-testid': testid, text: value }));
}

function cssId(text) {
  return String(text).replace(/[^A-Za-z0-9_-]/g, '_');
}

function energyCell(value) {
  if (value === null || value === undefined) return h('span', { class: 'muted', text: 'unpriced' });
  return h('span', { class: value < 0 ? 'negative' : '', text: perMwh(value) });
}

function staleCell(stale) {
  if (stale === null || stale === undefined) return DASH;
  return stale
    ? h('span', { class: 'badge badge-warn', 'data-testid': 'stale', title: 'No fresh price: the last known or the fallback price is used', text: 'stale' })
    : h('span', { class: 'badge badge-ok', text: 'fresh' });
}

function breakerSig(d) {
  return d ? `${d.breaker}|${d.open_for_ms}` : '';
}

function breakerCell(d) {
  if (!d) return DASH;
  const cls = d.breaker === 'closed' ? 'badge-ok' : d.breaker === 'open' ? 'badge-bad' : 'badge-warn';
  const text = d.breaker === 'closed' ? 'healthy' : d.breaker === 'open' ? `open${d.open_for_ms ? ` ${Math.ceil(d.open_for_ms / 1000)} s` : ''}` : d.breaker.replace('_', '-');
  return h('span', { class: ['badge', cls], 'data-testid': 'breaker', 'data-breaker': d.breaker, text });
}

function formatAxis(v, metric) {
  if (metric === 'energy') return `$${v.toFixed(0)}`;
  return `$${Number(v.toPrecision(3))}`;
}

/**
 * The chart data of one model's price document: a line per data center and provider, the best
 * price (not for energy), shaded stale runs, markers on negative energy prices.
 */
export function chartData(entry, metricName) {
  const metric = METRICS[metricName] || METRICS.output;
  if (!entry) return { xs: [], series: [], note: 'No price history for this model yet.' };
  const lines = [
    ...(entry.data_centers || []).map((dc) => ({ label: dc.data_center, points: dc.points || [], dc: true })),
    ...(metricName === 'energy' ? [] : (entry.providers || []).map((p) => ({ label: `${p.provider} (provider)`, points: p.points || [], dc: false }))),
  ];
  const best = metricName === 'energy' ? [] : entry.best || [];
  const seconds = (t) => Math.round(Date.parse(t) / 1000);
  const times = new Set();
  for (const l of lines) for (const p of l.points) times.add(seconds(p.t));
  for (const p of best) times.add(seconds(p.t));
  const xs = [...times].filter(Number.isFinite).sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const step = Number(entry.step_seconds) || (xs.length > 1 ? xs[1] - xs[0] : 300);

  const series = [];
  const bands = [];
  const markers = [];
  const staleBy = [];
  const negativeBy = [];
  lines.forEach((l, i) => {
    const color = PALETTE[i % PALETTE.length];
    const values = new Array(xs.length).fill(null);
    let staleRuns = 0;
    let negatives = 0;
    let runStart = null;
    let prev = null;
    for (const p of l.points) {
      const x = seconds(p.t);
      const j = index.get(x);
      if (j === undefined) continue;
      const v = metric.value(p);
      values[j] = v === undefined ? null : v;
      if (l.dc && p.usd_per_mwh !== null && p.usd_per_mwh !== undefined && p.usd_per_mwh < 0) {
        markers.push({ series: series.length, index: j });
        negatives += 1;
      }
      // Consecutive stale points form one shaded band, to the end of the last stale interval.
      if (l.dc && p.stale) {
        if (runStart === null) runStart = x;
        prev = x;
      } else if (runStart !== null) {
        bands.push({ from: runStart, to: prev + step, color: `${color}40`, label: 'stale' });
        staleRuns += 1;
        runStart = null;
      }
    }
    if (runStart !== null) {
      bands.push({ from: runStart, to: prev + step, color: `${color}40`, label: 'stale' });
      staleRuns += 1;
    }
    if (staleRuns) staleBy.push(`${l.label} (${staleRuns})`);
    if (negatives) negativeBy.push(`${l.label} (${negatives} points)`);
    series.push({ label: l.label, values, color, width: 1.5, dash: l.dc ? undefined : [4, 4], format: (v) => fmtValue(v, metricName) });
  });
  if (best.length) {
    const values = new Array(xs.length).fill(null);
    for (const p of best) {
      const j = index.get(seconds(p.t));
      if (j !== undefined) values[j] = metric.value(p) ?? null;
    }
    series.push({ label: 'best', values, color: BEST_COLOR, width: 2.5, dash: [8, 4], format: (v) => fmtValue(v, metricName) });
  }
  const notes = [];
  notes.push(`${xs.length} points, one every ${stepText(step)}.`);
  notes.push(staleBy.length ? `Shaded: stale energy price — ${staleBy.join(', ')}.` : 'No stale energy prices in this window.');
  notes.push(negativeBy.length ? `▼ negative energy price — ${negativeBy.join(', ')}.` : 'No negative energy prices in this window.');
  return { xs, series, bands, markers, zeroLine: metricName === 'energy', note: notes.join(' ') };
}

function fmtValue(v, metricName) {
  return metricName === 'energy' ? perMwh(v) : `${perMtok(v)}/Mtok`;
}

function stepText(s) {
  if (s % 3600 === 0) return `${s / 3600} h`;
  if (s % 60 === 0) return `${s / 60} min`;
  return `${s} s`;
}
