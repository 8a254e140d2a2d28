// chart.js — the only module that talks to uPlot (vendor/uplot/, loaded by index.html as the
// global `uPlot`).
//
// Owns: creating a time-series chart in a container, resizing it with its container, updating
// its data in place (so a live chart keeps its hover state), and the marks drawn on the
// canvas: shaded bands (stale energy prices), point markers (negative energy prices) and a zero
// line. The container carries `data-points` (how many x values are plotted), `data-last` (the
// newest sample), `data-bands` and `data-markers` (how many shaded ranges and point markers)
// so tests and people can see the chart's data change.

const Uplot = window.uPlot;

/** Line colours, in order (colour-blind-friendly Okabe–Ito palette), then `best` in black. */
export const PALETTE = ['#0072b2', '#d55e00', '#009e73', '#cc79a7', '#e69f00', '#56b4e9', '#7f7f7f'];
export const BEST_COLOR = '#111827';
const NEGATIVE_COLOR = '#6d28d9';
/** Tick steps for counts: whole numbers only. */
const INTEGER_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 1e6, 1e7];

/** "12:05" or "07-11 12:05" for the hover legend (times are local). */
function legendTime(seconds) {
  if (seconds === null || seconds === undefined) return '--';
  const d = new Date(seconds * 1000);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

/**
 * Creates a chart in `container` (an element the caller placed in the page).
 *
 * options: height, ariaLabel, axes: { y: { label, format(v), integer }, y2?: { ..., size } }
 * (`integer`: whole-number ticks, for counts; `size`: the axis' width in px).
 * Returns { update(data), destroy() } where data is
 *   { xs: [unix seconds], series: [{ label, values, color, dash, width, scale: 'y'|'y2', bars, format }],
 *     bands: [{ from, to, color, label }]   // shaded x ranges behind the lines, optionally named
 *     markers: [{ series: i, index: j }]   // a purple triangle on series i at point j
 *     zeroLine: bool }                      // a line at y = 0 when the y scale crosses it
 */
export function timeChart(container, { height = 260, ariaLabel = 'chart', axes = {} } = {}) {
  let plot = null;
  let shapeKey = '';
  let marks = { bands: [], markers: [], zeroLine: false };
  let pendingResize = 0;

  container.classList.add('chart');
  container.setAttribute('role', 'figure');
  container.setAttribute('aria-label', ariaLabel);

  const width = () => Math.max(240, Math.floor(container.clientWidth || 600));

  // Bands are drawn after the canvas is cleared and before the series, so lines stay on top.
  function drawBands(u) {
    const { ctx } = u;
    const { top, height: hgt } = u.bbox;
    ctx.save();
    for (const b of marks.bands) {
      const x0 = u.valToPos(b.from, 'x', true);
      const x1 = u.valToPos(b.to, 'x', true);
      const left = Math.max(u.bbox.left, Math.min(x0, x1));
      const right = Math.min(u.bbox.left + u.bbox.width, Math.max(x0, x1));
      if (right <= left) continue;
      ctx.fillStyle = b.color;
      ctx.fillRect(left, top, right - left, hgt);
      // Name the band when it is wide enough to hold the word.
      const label = b.label || '';
      ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
      if (label && ctx.measureText(label).width + 6 * devicePixelRatio < right - left) {
        ctx.fillStyle = '#374151';
        ctx.textBaseline = 'top';
        ctx.fillText(label, left + 3 * devicePixelRatio, top + 3 * devicePixelRatio);
      }
    }
    ctx.restore();
  }

  function drawMarks(u) {
    const { ctx } = u;
    ctx.save();
    if (marks.zeroLine && u.scales.y && u.scales.y.min < 0 && u.scales.y.max > 0) {
      const y = Math.round(u.valToPos(0, 'y', true)) + 0.5;
      ctx.strokeStyle = NEGATIVE_COLOR;
      ctx.lineWidth = 1.5 * devicePixelRatio;
      ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
      ctx.beginPath();
      ctx.moveTo(u.bbox.left, y);
      ctx.lineTo(u.bbox.left + u.bbox.width, y);
      ctx.stroke();
      ctx.setLineDash([]);
    }
    const r = 5 * devicePixelRatio;
    ctx.fillStyle = NEGATIVE_COLOR;
    for (const m of marks.markers) {
      const s = u.series[m.series + 1];
      const v = u.data[m.series + 1] && u.data[m.series + 1][m.index];
      if (!s || !s.show || v === null || v === undefined) continue;
      const x = u.valToPos(u.data[0][m.index], 'x', true);
      const y = u.valToPos(v, s.scale, true);
      // A downward triangle: "the energy price was below zero here".
      ctx.beginPath();
      ctx.moveTo(x - r, y - r);
      ctx.lineTo(x + r, y - r);
      ctx.lineTo(x, y + r * 0.6);
      ctx.closePath();
      ctx.fill();
    }
    ctx.restore();
  }

  function build(data) {
    const yAxis = axes.y || {};
    const y2Axis = axes.y2;
    const uSeries = [{ label: 'Time', value: (u, v) => legendTime(v) }];
    for (const s of data.series) {
      const fmt = s.format || yAxis.format || ((v) => String(v));
      uSeries.push({
        label: s.label,
        scale: s.scale || 'y',
        stroke: s.color,
        width: s.width || 1.5,
        dash: s.dash,
        fill: s.bars ? `${s.color}55` : undefined,
        paths: s.bars && Uplot.paths && Uplot.paths.bars ? Uplot.paths.bars({ size: [0.8, 40] }) : undefined,
        points: { show: s.bars ? false : undefined, size: 4 },
        spanGaps: false,
        value: (u, v) => (v === null || v === undefined ? '--' : fmt(v)),
      });
    }
    const uAxes = [
      // space: at least 90 px between time ticks, so labels like "10:30pm" never touch.
      { stroke: '#4b5563', grid: { stroke: '#e5e7eb' }, ticks: { stroke: '#d1d5db' }, space: 90 },
      {
        scale: 'y',
        label: yAxis.label,
        stroke: '#4b5563',
        grid: { stroke: '#e5e7eb' },
        ticks: { stroke: '#d1d5db' },
        size: 64,
        incrs: yAxis.integer ? INTEGER_INCRS : undefined,
        values: yAxis.format ? (u, vals) => vals.map((v) => yAxis.format(v)) : undefined,
      },
    ];
    const scales = { x: { time: true } };
    if (y2Axis) {
      uAxes.push({
        scale: 'y2',
        side: 1,
        label: y2Axis.label,
        stroke: '#4b5563',
        grid: { show: false },
        size: y2Axis.size || 72,
        incrs: y2Axis.integer ? INTEGER_INCRS : undefined,
        values: y2Axis.format ? (u, vals) => vals.map((v) => y2Axis.format(v)) : undefined,
      });
      scales.y2 = { auto: true };
    }
    const opts = {
      width: width(),
      height,
      series: uSeries,
      axes: uAxes,
      scales,
      cursor: { points: { size: 7 }, drag: { x: false, y: false } },
      legend: { live: true },
      hooks: { drawClear: [drawBands], draw: [drawMarks] },
    };
    return new Uplot(opts, toColumns(data), container);
  }

  function toColumns(data) {
    return [data.xs, ...data.series.map((s) => s.values)];
  }

  // Resize with the container; deferred to the next frame so that the observer never sees a
  // size change it caused within the same frame (the "ResizeObserver loop" error).
  const observer = new ResizeObserver(() => {
    cancelAnimationFrame(pendingResize);
    pendingResize = requestAnimationFrame(() => {
      if (plot && container.isConnected) {
        const w = width();
        if (w !== plot.width) plot.setSize({ width: w, height });
      }
    });
  });
  observer.observe(container);

  function update(data) {
    marks = { bands: data.bands || [], markers: data.markers || [], zeroLine: Boolean(data.zeroLine) };
    const key = data.series.map((s) => `${s.label}|${s.scale || 'y'}|${s.bars ? 1 : 0}`).join(';');
    if (!plot || key !== shapeKey) {
      if (plot) plot.destroy();
      plot = build(data);
      shapeKey = key;
    } else {
      plot.setData(toColumns(data));
    }
    // Unless the pointer is on the chart, the legend shows the newest sample (instead of "--").
    if (plot.cursor.idx === null || plot.cursor.idx === undefined || plot.cursor.left < 0) {
      if (data.xs.length) plot.setLegend({ idx: data.xs.length - 1 });
    }
    container.setAttribute('data-points', String(data.xs.length));
    container.setAttribute('data-bands', String(marks.bands.length));
    container.setAttribute('data-markers', String(marks.markers.length));
    const last = data.xs.length - 1;
    container.setAttribute(
      'data-last',
      last < 0 ? '' : [data.xs[last], ...data.series.map((s) => s.values[last])].join(' '),
    );
  }

  function destroy() {
    observer.disconnect();
    cancelAnimationFrame(pendingResize);
    if (plot) plot.destroy();
    plot = null;
  }

  return { update, destroy };
}

/** True when uPlot loaded (index.html's vendored script); pages say so instead of failing. */
export function chartsAvailable() {
  return typeof Uplot === 'function';
}
