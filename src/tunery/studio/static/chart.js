/* A small SVG line chart: several series over steps, with axes, ticks and a legend. No library. */
"use strict";
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const SVGNS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs, text) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceTicks(lo, hi, count) {
  if (lo === hi) { lo -= 1; hi += 1; }
  const raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

/* series: [{label, points: [[x, y], ...]}]; returns an <svg> with one <path> per series
   (data-series = its label, data-n = its number of points). */
function lineChart(title, series, opts) {
  const w = (opts && opts.width) || 540, h = (opts && opts.height) || 280;
  const m = {l: 56, r: 14, t: 26, b: 44};
  const svg = svgEl("svg", {width: w, height: h, class: "chart", "data-title": title, viewBox: `0 0 ${w} ${h}`});
  svg.appendChild(svgEl("text", {x: m.l, y: 16, class: "title"}, title));
  const pts = series.flatMap(s => s.points).filter(p => p[1] !== null && isFinite(p[1]));
  if (!pts.length) {
    svg.appendChild(svgEl("text", {x: w / 2, y: h / 2, "text-anchor": "middle"}, "no points yet"));
    return svg;
  }
  const xs = pts.map(p => p[0]), ys = pts.map(p => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) x1 = x0 + 1;
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const sx = x => m.l + (x - x0) / (x1 - x0) * (w - m.l - m.r);
  const sy = y => h - m.b - (y - y0) / (y1 - y0) * (h - m.t - m.b);
  svg.appendChild(svgEl("line", {x1: m.l, y1: h - m.b, x2: w - m.r, y2: h - m.b, stroke: "#999"}));
  svg.appendChild(svgEl("line", {x1: m.l, y1: m.t, x2: m.l, y2: h - m.b, stroke: "#999"}));
  const yTicks = niceTicks(y0, y1, 5);
  const decimals = Math.max(0, -Math.floor(Math.log10((yTicks[1] - yTicks[0]) || 1)));  // labels as fine as the step
  for (const t of yTicks) {
    if (t < y0 || t > y1) continue;
    svg.appendChild(svgEl("line", {x1: m.l, y1: sy(t), x2: w - m.r, y2: sy(t), stroke: "#eee"}));
    svg.appendChild(svgEl("text", {x: m.l - 6, y: sy(t) + 4, "text-anchor": "end"}, t.toFixed(Math.min(decimals, 8))));
  }
  for (const t of niceTicks(x0, x1, 6)) {
    if (t < x0 || t > x1 || (x1 - x0 > 5 && t % 1)) continue;
    svg.appendChild(svgEl("text", {x: sx(t), y: h - m.b + 16, "text-anchor": "middle"}, String(t)));
  }
  svg.appendChild(svgEl("text", {x: (w + m.l) / 2, y: h - 8, "text-anchor": "middle"}, "step"));
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    const good = s.points.filter(p => p[1] !== null && isFinite(p[1]));
    const d = good.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    svg.appendChild(svgEl("path", {d, fill: "none", stroke: color, "stroke-width": 2,
                                   "data-series": s.label, "data-n": good.length}));
    if (good.length === 1) svg.appendChild(svgEl("circle", {cx: sx(good[0][0]), cy: sy(good[0][1]), r: 3, fill: color}));
    svg.appendChild(svgEl("rect", {x: w - m.r - 150, y: m.t + 4 + i * 15, width: 10, height: 10, fill: color}));
    svg.appendChild(svgEl("text", {x: w - m.r - 136, y: m.t + 13 + i * 15}, s.label));
  });
  return svg;
}

/* Curves of one run's metrics.jsonl records: {loss: [...], validation: [...], grader: {name: [...]}} */
function curvesOf(records) {
  const out = {loss: [], validation: [], grader: {}};
  for (const r of records) {
    if (r.kind === "train" && r.loss !== undefined) out.loss.push([r.step, r.loss]);
    if (r.kind === "eval" && r.val_loss !== undefined) out.validation.push([r.step, r.val_loss]);
    if (r.kind === "grader") {
      for (const [k, v] of Object.entries(r)) {
        if (["kind", "step", "best"].includes(k) || typeof v !== "number") continue;
        (out.grader[k] = out.grader[k] || []).push([r.step, v]);
      }
    }
  }
  return out;
}
