// The page's sections other than the charts: totals, measured/estimated share, budgets,
// idle energy per upstream, the heaviest requests, and one request's or trace's record.

import { FIGURE_NAMES, clear, el, figure, number } from "./format.js";

const BUDGET_UNITS = { energy_j: "J", co2e_g: "g CO2e", water_ml: "mL", tokens: "tokens", requests: "requests" };
const PERIOD_WORDS = { day: "per UTC day", month: "per UTC month", total: "in total" };

export function renderTotals(node, rows) {
  const sums = { energy_j: 0, co2e_g: 0, water_ml: 0, requests: 0, tokens: 0 };
  for (const row of rows) for (const f of Object.keys(sums)) sums[f] += row[f];
  const cards = Object.entries(sums).map(([metric, value]) =>
    el(
      "div",
      { className: "card", dataset: { metric, value: String(value) } },
      el("span", { className: "card-name" }, FIGURE_NAMES[metric]),
      el("span", { className: "card-value" }, figure(metric, value)),
    ),
  );
  clear(node, ...cards);
  return sums;
}

function bar(parts, label) {
  // parts: [[fraction, className, text]]; widths through the CSSOM (CSP allows it).
  const track = el("div", { className: "bar", role: "img", "aria-label": label });
  for (const [fraction, className] of parts) {
    const piece = el("span", { className });
    piece.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
    track.append(piece);
  }
  return track;
}

export function renderMethodShare(node, rows) {
  const by = { measured: { energy_j: 0, requests: 0 }, estimated: { energy_j: 0, requests: 0 } };
  for (const row of rows) {
    const slot = by[row.method] || (by[row.method] = { energy_j: 0, requests: 0 });
    slot.energy_j += row.energy_j;
    slot.requests += row.requests;
  }
  const energy = by.measured.energy_j + by.estimated.energy_j;
  const share = energy > 0 ? by.measured.energy_j / energy : 0;
  const words =
    energy > 0
      ? `${number(share * 100, 3)}% of the energy was measured on the GPUs (${figure("energy_j", by.measured.energy_j)}, ${by.measured.requests} requests); ${number((1 - share) * 100, 3)}% was estimated from tokens and model size (${figure("energy_j", by.estimated.energy_j)}, ${by.estimated.requests} requests).`
      : "No energy recorded in this period.";
  clear(
    node,
    bar(
      [
        [share, "measured"],
        [energy > 0 ? 1 - share : 0, "estimated"],
      ],
      words,
    ),
    el("p", { className: "legend" }, el("span", { className: "swatch measured" }), " measured ", el("span", { className: "swatch estimated" }), " estimated"),
    el("p", { dataset: { measuredShare: String(share) } }, words),
  );
}

export function renderBudgets(node, lines, showTeam) {
  if (lines.length === 0) {
    clear(node, el("p", {}, "No budgets are set for this key's teams."));
    return;
  }
  const head = el(
    "tr",
    {},
    showTeam ? el("th", { scope: "col" }, "team") : null,
    ["budget", "used", "reserved", "remaining", "limit", "use"].map((h) => el("th", { scope: "col" }, h)),
  );
  const rows = lines.map((line) => {
    const unit = BUDGET_UNITS[line.metric] || "";
    const limit = line.limit > 0 ? line.limit : 1;
    const label = `${line.metric} ${PERIOD_WORDS[line.period] || line.period}: used ${number(line.used, 4)}, reserved ${number(line.reserved, 4)}, remaining ${number(line.remaining, 4)} of ${number(line.limit, 4)} ${unit}`;
    return el(
      "tr",
      {},
      showTeam ? el("th", { scope: "row" }, line.team) : null,
      el("td", {}, `${line.metric} ${PERIOD_WORDS[line.period] || line.period}`),
      el("td", { className: "n" }, number(line.used, 4)),
      el("td", { className: "n" }, number(line.reserved, 4)),
      el("td", { className: "n" }, number(line.remaining, 4)),
      el("td", { className: "n" }, `${number(line.limit, 4)} ${unit}`),
      el(
        "td",
        { className: "bar-cell" },
        bar(
          [
            [line.used / limit, "used"],
            [line.reserved / limit, "reserved"],
          ],
          label,
        ),
      ),
    );
  });
  const legend = el(
    "p",
    { className: "legend" },
    el("span", { className: "swatch used" }),
    " used ",
    el("span", { className: "swatch reserved" }),
    " reserved (requests in flight, at their worst case) ",
    el("span", { className: "swatch remaining" }),
    " remaining",
  );
  clear(node, el("div", { className: "scroll", tabIndex: 0 }, el("table", {}, el("thead", {}, head), el("tbody", {}, rows))), legend);
}

export function renderIdle(node, idleRows, usageRows) {
  const attributed = new Map(usageRows.map((r) => [r.upstream, r.energy_j]));
  const names = [...new Set([...attributed.keys(), ...idleRows.map((r) => r.upstream)])].sort();
  if (names.length === 0) {
    clear(node, el("p", {}, "No upstream recorded energy in this period."));
    return;
  }
  const idle = new Map(idleRows.map((r) => [r.upstream, r]));
  const withOther = idleRows.some((r) => r.other_energy_j !== undefined);
  const head = el(
    "tr",
    {},
    ["upstream", "requests' energy", "idle energy", withOther ? "other traffic's energy" : null, "idle CO2e", "idle water"]
      .filter(Boolean)
      .map((h) => el("th", { scope: "col" }, h)),
  );
  const rows = names.map((name) => {
    const row = idle.get(name) || { energy_j: 0, co2e_g: 0, water_ml: 0 };
    return el(
      "tr",
      {},
      el("th", { scope: "row" }, name),
      el("td", { className: "n" }, figure("energy_j", attributed.get(name) || 0)),
      el("td", { className: "n" }, figure("energy_j", row.energy_j)),
      withOther ? el("td", { className: "n" }, figure("energy_j", row.other_energy_j || 0)) : null,
      el("td", { className: "n" }, figure("co2e_g", row.co2e_g)),
      el("td", { className: "n" }, figure("water_ml", row.water_ml)),
    );
  });
  clear(node, el("div", { className: "scroll", tabIndex: 0 }, el("table", {}, el("thead", {}, head), el("tbody", {}, rows))));
}

export function requestPath(id) {
  return `/v1/footprint/requests/${encodeURIComponent(id)}`;
}

export function tracePath(id) {
  return `/v1/footprint/traces/${encodeURIComponent(id)}`;
}

export function renderTop(node, rows, showTeam, open) {
  if (rows.length === 0) {
    clear(node, el("p", {}, "No requests in this period."));
    return;
  }
  const head = el(
    "tr",
    {},
    ["record", "when (UTC)", showTeam ? "team" : null, "model", "upstream", "method", "tokens in → out", "energy", "CO2e", "water"]
      .filter(Boolean)
      .map((h) => el("th", { scope: "col" }, h)),
  );
  const link = (path, text, what) => {
    const a = el("a", { href: path, className: "api-link", title: `show ${what}` }, text);
    a.addEventListener("click", (event) => {
      event.preventDefault();
      open(path, what);
    });
    return a;
  };
  const body = rows.map((r) =>
    el(
      "tr",
      {},
      el(
        "td",
        {},
        link(requestPath(r.request_id), "request", `request ${r.request_id}`),
        r.trace_id ? " · " : null,
        r.trace_id ? link(tracePath(r.trace_id), "trace", `trace ${r.trace_id}`) : null,
      ),
      el("td", {}, r.created_at.replace("T", " ").slice(0, 19)),
      showTeam ? el("td", {}, r.team) : null,
      el("td", {}, r.model),
      el("td", {}, r.upstream),
      el("td", {}, r.method),
      el("td", { className: "n" }, `${r.prompt_tokens} → ${r.completion_tokens}`),
      el("td", { className: "n", dataset: { value: String(r.energy_j) } }, figure("energy_j", r.energy_j)),
      el("td", { className: "n" }, figure("co2e_g", r.co2e_g)),
      el("td", { className: "n" }, figure("water_ml", r.water_ml)),
    ),
  );
  clear(node, el("div", { className: "scroll", tabIndex: 0 }, el("table", {}, el("thead", {}, head), el("tbody", {}, body))));
}

export function renderRecord(node, path, what, record) {
  clear(
    node,
    el("h3", {}, what),
    el("p", {}, "GET ", el("code", {}, path)),
    el("pre", { tabIndex: 0 }, JSON.stringify(record, null, 2)),
  );
}
