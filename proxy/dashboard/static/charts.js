// Stacked bar charts over time (Chart.js, drawn on a canvas), each with a table of the same
// numbers for screen readers and for copying.

import { FIGURE_NAMES, bucketLabels, clear, el, figure, number, shortLabel, unitFor } from "./format.js";

// Okabe & Ito's palette: told apart with every common kind of colour blindness.
export const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442"];
export const OTHERS_COLOUR = "#7a7a7a";
export const OTHERS = "(all others)";
const MAX_SERIES = PALETTE.length;

// rows: the series API's data; key: the group_by name (or "" for one total series).
// Returns {labels, keys, values: Map(key -> Map(label -> row sums))}.
export function pivot(rows, key, bucket, start, end) {
  const labels = bucketLabels(bucket, start, end);
  const seen = new Set(labels);
  for (const row of rows) {
    if (!seen.has(row.bucket)) {
      seen.add(row.bucket);
      labels.push(row.bucket);
    }
  }
  labels.sort();
  const totals = new Map();
  for (const row of rows) {
    const name = key ? String(row[key]) : "all";
    totals.set(name, (totals.get(name) || 0) + row.energy_j);
  }
  const ranked = [...totals.keys()].sort((a, b) => totals.get(b) - totals.get(a) || (a < b ? -1 : 1));
  const kept = ranked.length > MAX_SERIES ? ranked.slice(0, MAX_SERIES - 1) : ranked;
  const keys = ranked.length > kept.length ? [...kept, OTHERS] : kept;
  const keptSet = new Set(kept);
  const values = new Map(keys.map((k) => [k, new Map()]));
  for (const row of rows) {
    const raw = key ? String(row[key]) : "all";
    const name = keptSet.has(raw) ? raw : OTHERS;
    const cell = values.get(name);
    const sums = cell.get(row.bucket) || { energy_j: 0, co2e_g: 0, water_ml: 0, requests: 0, tokens: 0 };
    for (const f of Object.keys(sums)) sums[f] += row[f];
    cell.set(row.bucket, sums);
  }
  return { labels, keys, values };
}

export class StackedChart {
  constructor(section, metric) {
    this.metric = metric;
    this.canvas = section.querySelector("canvas");
    this.title = section.querySelector("h3");
    this.table = section.querySelector("table");
    this.totalNode = section.querySelector(".chart-total");
    this.chart = null;
  }

  render(pivoted, bucket, groupName) {
    const { labels, keys, values } = pivoted;
    let peak = 0;
    let total = 0;
    for (const label of labels) {
      let stacked = 0;
      for (const k of keys) stacked += values.get(k).get(label)?.[this.metric] || 0;
      peak = Math.max(peak, stacked);
      total += stacked;
    }
    const { factor, unit } = unitFor(this.metric, peak);
    const name = FIGURE_NAMES[this.metric];
    const datasets = keys.map((k, i) => ({
      label: k,
      data: labels.map((l) => (values.get(k).get(l)?.[this.metric] || 0) / factor),
      backgroundColor: k === OTHERS ? OTHERS_COLOUR : PALETTE[i % PALETTE.length],
      borderWidth: 0,
    }));
    this.canvas.dataset.factor = String(factor);
    this.canvas.dataset.total = String(total);
    this.canvas.setAttribute(
      "aria-label",
      `${name} per ${bucket}${groupName ? `, stacked by ${groupName}` : ""}, in ${unit}; the table below lists the same figures`,
    );
    this.totalNode.dataset.value = String(total);
    this.totalNode.textContent = `total ${figure(this.metric, total)}`;
    const shown = labels.map((l) => shortLabel(bucket, l));
    if (this.chart === null) {
      this.chart = new window.Chart(this.canvas, {
        type: "bar",
        data: { labels: shown, datasets },
        options: {
          animation: false,
          responsive: true,
          maintainAspectRatio: false,
          interaction: { mode: "index", intersect: false },
          scales: {
            x: { stacked: true, ticks: { maxRotation: 0, autoSkipPadding: 12 } },
            y: { stacked: true, beginAtZero: true, title: { display: true, text: `${name} (${unit})` } },
          },
          plugins: { legend: { position: "bottom" } },
        },
      });
    } else {
      this.chart.data.labels = shown;
      this.chart.data.datasets = datasets;
      this.chart.options.scales.y.title.text = `${name} (${unit})`;
      this.chart.update("none");
    }
    this.renderTable(labels, keys, values, bucket, groupName, unit, factor);
  }

  renderTable(labels, keys, values, bucket, groupName, unit, factor) {
    const head = el("tr", {}, el("th", { scope: "col" }, bucket), keys.map((k) => el("th", { scope: "col" }, k)));
    const body = labels
      .filter((l) => keys.some((k) => values.get(k).has(l)))
      .map((l) =>
        el(
          "tr",
          {},
          el("th", { scope: "row" }, l),
          keys.map((k) => el("td", { className: "n" }, number((values.get(k).get(l)?.[this.metric] || 0) / factor, 4))),
        ),
      );
    const caption = el(
      "caption",
      {},
      `${FIGURE_NAMES[this.metric]} in ${unit} per ${bucket}${groupName ? ` and ${groupName}` : ""}`,
    );
    clear(this.table, caption, el("thead", {}, head), el("tbody", {}, body));
  }
}
