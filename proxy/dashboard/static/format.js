// Units, time buckets, and the one way the page builds DOM: names are always text nodes.

// Each figure's base unit (as the API gives it) and the larger units it is shown in.
export const UNITS = {
  energy_j: [[1e-3, "mJ"], [1, "J"], [1e3, "kJ"], [1e6, "MJ"], [1e9, "GJ"]],
  co2e_g: [[1e-3, "mg"], [1, "g"], [1e3, "kg"], [1e6, "t"]],
  water_ml: [[1e-3, "µL"], [1, "mL"], [1e3, "L"], [1e6, "m³"]],
  tokens: [[1, ""], [1e3, "k"], [1e6, "M"], [1e9, "G"]],
  requests: [[1, ""], [1e3, "k"], [1e6, "M"]],
};

export const FIGURE_NAMES = {
  energy_j: "energy",
  co2e_g: "CO2e",
  water_ml: "water",
  tokens: "tokens",
  requests: "requests",
};

// The largest unit in which `value` is at least 1 (the smallest for 0).
export function unitFor(metric, value) {
  const steps = UNITS[metric];
  let chosen = steps[1] || steps[0];
  if (metric === "tokens" || metric === "requests") chosen = steps[0];
  for (const step of steps) {
    if (Math.abs(value) >= step[0]) chosen = step;
  }
  return { factor: chosen[0], unit: chosen[1] };
}

export function number(value, digits = 3) {
  if (!Number.isFinite(value)) return "–";
  if (value === 0) return "0";
  return Number(value.toPrecision(digits)).toLocaleString("en-US", { maximumFractionDigits: 6 });
}

export function figure(metric, value) {
  if (metric === "requests") return Math.round(value).toLocaleString("en-US");
  const { factor, unit } = unitFor(metric, value);
  const text = number(value / factor);
  return unit ? `${text} ${unit}` : text;
}

// el("td", {className: "n"}, "text", child) — strings become text nodes, never HTML.
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node && name !== "role" && !name.startsWith("aria")) node[name] = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node, ...children) {
  node.replaceChildren(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// UTC bucket labels as the API writes them, from `start` up to (not including) `end`.
const MAX_BUCKETS = 2000;

export function bucketLabels(bucket, start, end) {
  const labels = [];
  const cursor = new Date(start.getTime());
  if (bucket === "hour") cursor.setUTCMinutes(0, 0, 0);
  else cursor.setUTCHours(0, 0, 0, 0);
  if (bucket === "month") cursor.setUTCDate(1);
  while (cursor < end && labels.length < MAX_BUCKETS) {
    const iso = cursor.toISOString();
    if (bucket === "hour") labels.push(`${iso.slice(0, 13)}:00Z`);
    else if (bucket === "day") labels.push(iso.slice(0, 10));
    else labels.push(iso.slice(0, 7));
    if (bucket === "hour") cursor.setUTCHours(cursor.getUTCHours() + 1);
    else if (bucket === "day") cursor.setUTCDate(cursor.getUTCDate() + 1);
    else cursor.setUTCMonth(cursor.getUTCMonth() + 1);
  }
  return labels;
}

export function shortLabel(bucket, label) {
  if (bucket === "hour") return `${label.slice(5, 10)} ${label.slice(11, 16)}`;
  if (bucket === "day") return label.slice(5);
  return label;
}
