// The dashboard: sign in with a key, pick a period, and read every figure from the JSON API.
// The view (period, bucket, stacking) lives in the URL's fragment; the key never does.

import { ApiError, apiJson, apiText, forgetKey, saveKey, savedKey } from "./api.js";
import { StackedChart, pivot } from "./charts.js";
import { clear, el } from "./format.js";
import { renderBudgets, renderIdle, renderMethodShare, renderRecord, renderTop, renderTotals } from "./views.js";

// Every 5 s; on a ledger so big that one refresh takes over 1 s, every five times as long as
// the last refresh took, so an open tab never keeps the database busy over a fifth of the time.
const REFRESH_MS = 5000;
const PRESETS = {
  "24h": { hours: 24, bucket: "hour" },
  "7d": { hours: 24 * 7, bucket: "day" },
  "30d": { hours: 24 * 30, bucket: "day" },
  "365d": { hours: 24 * 365, bucket: "month" },
};
const $ = (id) => document.getElementById(id);

const session = { key: null, me: null, busy: false, again: false, timer: null, charts: null, lastMs: 0 };

function view() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const range = hash.get("range") || (hash.get("from") ? "custom" : "30d");
  const preset = PRESETS[range];
  let start;
  let end;
  if (preset) {
    end = new Date(Math.ceil(Date.now() / 3600e3) * 3600e3);
    start = new Date(end.getTime() - preset.hours * 3600e3);
  } else {
    start = new Date(hash.get("from") || Date.now() - 30 * 86400e3);
    end = hash.get("to") ? new Date(hash.get("to")) : new Date();
    if (Number.isNaN(start.getTime())) start = new Date(Date.now() - 30 * 86400e3);
    if (Number.isNaN(end.getTime()) || end <= start) end = new Date(start.getTime() + 86400e3);
  }
  const bucket = ["hour", "day", "month"].includes(hash.get("bucket")) ? hash.get("bucket") : preset?.bucket || "day";
  const group = ["team", "model", "upstream", "method", ""].includes(hash.get("group") ?? "team") ? (hash.get("group") ?? "team") : "team";
  return { range, start, end, bucket, group, from: start.toISOString(), to: end.toISOString() };
}

function setView(changes) {
  const hash = new URLSearchParams(location.hash.slice(1));
  for (const [k, v] of Object.entries(changes)) {
    if (v === null) hash.delete(k);
    else hash.set(k, v);
  }
  location.hash = hash.toString();
}

function showControls(v) {
  $("range").value = PRESETS[v.range] ? v.range : "custom";
  $("bucket").value = v.bucket;
  $("group").value = v.group;
  $("from").value = v.start.toISOString().slice(0, 10);
  $("to").value = v.end.toISOString().slice(0, 10);
  const custom = !PRESETS[v.range];
  $("from").disabled = !custom;
  $("to").disabled = !custom;
  $("period-words").textContent = `${v.from.replace("T", " ").slice(0, 16)} to ${v.to.replace("T", " ").slice(0, 16)} UTC (end excluded)`;
}

function say(text, kind) {
  const node = $("status");
  node.textContent = text;
  node.className = kind || "";
}

async function refresh() {
  if (session.key === null) return;
  if (session.busy) {
    session.again = true; // the view changed mid-refresh: read it again right after
    return;
  }
  session.busy = true;
  const began = performance.now();
  const v = view();
  showControls(v);
  const admin = session.me.admin;
  const span = { from: v.from, to: v.to };
  try {
    const [series, methods, budgets, top, usage] = await Promise.all([
      apiJson(session.key, "/v1/footprint/usage/series", { ...span, bucket: v.bucket, group_by: v.group }),
      apiJson(session.key, "/v1/footprint/usage/series", { ...span, bucket: "month", group_by: "method" }),
      apiJson(session.key, "/v1/footprint/budgets"),
      apiJson(session.key, "/v1/footprint/requests", { ...span, order_by: "energy_j", limit: 10 }),
      admin ? apiJson(session.key, "/v1/footprint/usage", { ...span, group_by: "upstream", idle: "report" }) : null,
    ]);
    const groupName = $("group").selectedOptions[0]?.textContent || "";
    const pivoted = pivot(series.data, v.group, v.bucket, v.start, v.end);
    for (const chart of session.charts) chart.render(pivoted, v.bucket, v.group ? groupName : "");
    renderTotals($("totals"), series.data);
    renderMethodShare($("method-share"), methods.data);
    renderBudgets($("budget-list"), budgets.data, admin);
    renderTop($("top-list"), top.data, admin, openRecord);
    if (usage) renderIdle($("idle-list"), usage.idle, usage.data);
    const more = series.has_more ? " Only the first 50,000 buckets are shown: choose a coarser bucket." : "";
    say(`Updated ${new Date().toLocaleTimeString()}.${more}`, series.has_more ? "warn" : "");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      signOut(`The key stopped working (${error.message}). Sign in again.`);
    } else {
      say(`Could not refresh: ${error.message}`, "error");
    }
  } finally {
    session.busy = false;
    session.lastMs = performance.now() - began;
  }
  if (session.again) {
    session.again = false;
    await refresh();
  }
}

async function openRecord(path, what) {
  const node = $("record");
  node.hidden = false;
  try {
    renderRecord(node, path, what, await apiJson(session.key, path));
  } catch (error) {
    clear(node, el("p", { className: "error" }, `Could not read ${what}: ${error.message}`));
  }
  node.focus();
}

async function downloadCsv() {
  const v = view();
  try {
    const csv = await apiText(session.key, "/v1/footprint/usage/series", {
      from: v.from,
      to: v.to,
      bucket: v.bucket,
      group_by: v.group,
      format: "csv",
    });
    const url = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
    const a = el("a", { href: url, download: `footprint-${v.bucket}-${v.group || "total"}-${v.from.slice(0, 10)}-${v.to.slice(0, 10)}.csv` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) {
    say(`Could not download the CSV: ${error.message}`, "error");
  }
}

function schedule() {
  clearTimeout(session.timer);
  session.timer = setTimeout(tick, Math.max(REFRESH_MS, 5 * session.lastMs));
}

async function tick() {
  if (session.key === null) return;
  if (!document.hidden && $("auto").checked) await refresh();
  schedule();
}

async function signIn(key, quiet) {
  const message = $("sign-in-error");
  message.textContent = "";
  let me;
  try {
    me = await apiJson(key, "/v1/footprint/me");
  } catch (error) {
    if (quiet) return;
    forgetKey();
    message.textContent =
      error instanceof ApiError && error.status === 401
        ? `That key was refused: ${error.message}. Paste the whole admin key or a team key (it starts with fp-).`
        : `Could not sign in: ${error.message}`;
    $("key").focus();
    return;
  }
  session.key = key;
  session.me = me;
  if (key) saveKey(key);
  $("key").value = "";
  $("sign-in").hidden = true;
  $("board").hidden = false;
  $("sign-out").hidden = !key;
  $("who").textContent = me.admin
    ? "Signed in with the admin key: every team"
    : key
      ? `Signed in as team ${me.team}`
      : `No key needed (auth = "none"): team ${me.team}`;
  $("idle").hidden = !me.admin;
  const teamOption = $("group").querySelector('option[value="team"]');
  teamOption.textContent = me.admin ? "team" : "team (yours only)";
  await refresh();
  schedule();
}

function signOut(why) {
  forgetKey();
  clearTimeout(session.timer);
  session.key = null;
  session.me = null;
  $("board").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("who").textContent = "";
  $("sign-in-error").textContent = why || "";
  for (const chart of session.charts) chart.chart?.destroy();
  session.charts = makeCharts();
  for (const id of ["totals", "method-share", "budget-list", "top-list", "idle-list", "record"]) clear($(id));
  $("key").focus();
}

function makeCharts() {
  return ["energy_j", "co2e_g", "water_ml"].map((m) => new StackedChart($(`chart-${m}`), m));
}

function start() {
  session.charts = makeCharts();
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (key) signIn(key);
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("controls").addEventListener("submit", (event) => event.preventDefault());
  $("range").addEventListener("change", () => {
    const range = $("range").value;
    if (range === "custom") setView({ range: null, from: $("from").value, to: $("to").value });
    else setView({ range, from: null, to: null, bucket: PRESETS[range].bucket });
  });
  for (const id of ["from", "to"]) {
    $(id).addEventListener("change", () => setView({ range: null, from: $("from").value, to: $("to").value }));
  }
  $("bucket").addEventListener("change", () => setView({ bucket: $("bucket").value }));
  $("group").addEventListener("change", () => setView({ group: $("group").value }));
  $("csv").addEventListener("click", downloadCsv);
  window.addEventListener("hashchange", () => refresh());
  document.addEventListener("visibilitychange", tick);
  const key = savedKey();
  if (key) signIn(key);
  else {
    $("key").focus();
    signIn("", true); // a proxy with auth = "none" lets the page in without a key
  }
}

start();
