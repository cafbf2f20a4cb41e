// celld's dashboard. Every string from the server goes into the page as
// text (textContent, attributes), never as markup.
"use strict";

const meta = (n) => document.querySelector(`meta[name="${n}"]`).getAttribute("content");
const TOKEN = meta("dashboard-token");
const ACTIONS = meta("dashboard-actions") === "on";
const SVG = "http://www.w3.org/2000/svg";
const TEN_MINUTES = 10 * 60 * 1000;
const MAX_LOG_LINES = 1000;
let MODE = "local"; // or "cell": a plain cell, no app layer

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function bytes(n) {
  if (!n) return "0";
  const units = ["B", "K", "M", "G", "T"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n < 10 && i > 0 ? 1 : 0)}${units[i]}`;
}

const dash = (v, f) => (v === null || v === undefined ? "—" : f(v));
const when = (ms) => (ms ? new Date(ms).toLocaleString() : "—");

async function getJSON(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `${path}: ${r.status}`);
  return body;
}

function setStatus(text) { document.getElementById("status").textContent = text; }

// A bar of used against total, with its numbers as text.
function bar(label, used, total, fmt) {
  const pct = total > 0 ? Math.min(100, (used / total) * 100) : 0;
  const fill = el("div", { class: "fill" });
  fill.style.width = `${pct.toFixed(1)}%`;
  return el("div", { class: "bar-row" }, el("span", { class: "bar-label" }, label),
    el("div", { class: "bar" }, fill), el("span", { class: "bar-text" }, `${fmt(used)} / ${fmt(total)}`));
}

function cellCard(c) {
  const cap = c.capacity || {}, avail = c.available || {};
  const used = (k) => Math.max(0, (cap[k] || 0) - (avail[k] || 0));
  const mb = (v) => bytes(v * 1024 * 1024);
  const v = c.vitals;
  const vit = (label, value) => el("div", { class: "vital" }, el("span", {}, label), el("b", {}, value));
  return el("div", { class: "card cell", "data-cell": c.cell_id },
    el("h3", {}, c.cell_id, c.evacuating ? " (evacuating)" : ""),
    el("div", { class: "muted" }, `zone ${c.zone || "—"} · ${c.instances} instances · ${c.tasks} tasks · ${(c.stacks || []).join(", ")}`),
    bar("memory", used("memory_mb"), cap.memory_mb || 0, mb),
    bar("disk", used("disk_mb"), cap.disk_mb || 0, mb),
    bar("containers", used("containers"), cap.containers || 0, String),
    el("div", { class: "vitals" },
      vit("load", dash(v, (x) => x.load.map((l) => l.toFixed(2)).join(" "))),
      vit("cpu", dash(v, (x) => `${x.cpu_user_percent.toFixed(1)}us ${x.cpu_sys_percent.toFixed(1)}sy ${x.cpu_wait_percent.toFixed(1)}wa`)),
      vit("memory", dash(v, (x) => `${bytes(x.memory_used_bytes)} / ${bytes(x.memory_total_bytes)}`)),
      vit("swap", dash(v, (x) => `${bytes(x.swap_used_bytes)} / ${bytes(x.swap_total_bytes)}`)),
      vit("system disk", dash(v, (x) => `${x.system_disk_percent.toFixed(0)}%`)),
      vit("depot disk", dash(v, (x) => `${x.depot_disk_percent.toFixed(0)}%`)),
      vit("uptime", dash(v, (x) => `${Math.floor(x.uptime_seconds / 3600)}h${Math.floor((x.uptime_seconds % 3600) / 60)}m`))));
}

// A line chart of the last ten minutes of one series.
function chart(title, history, pick, fmt, max) {
  const W = 320, H = 90, now = Date.now();
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
  const label = svg("text", { x: 4, y: 12, class: "chart-title" });
  const last = history.length ? pick(history[history.length - 1]) : null;
  label.textContent = `${title} ${last === null ? "—" : fmt(last)}`;
  const top = Math.max(max || 0, ...history.map(pick), 1e-9);
  const scale = svg("text", { x: W - 4, y: 12, class: "chart-scale", "text-anchor": "end" });
  scale.textContent = `max ${fmt(top)}`;
  const from = svg("text", { x: 4, y: H - 4, class: "chart-scale" });
  from.textContent = "−10 min";
  const to = svg("text", { x: W - 4, y: H - 4, class: "chart-scale", "text-anchor": "end" });
  to.textContent = "now";
  s.append(svg("rect", { x: 0, y: 0, width: W, height: H, class: "chart-bg" }), label, scale, from, to);
  const pts = history.map((p) => {
    const x = W - ((now - p.t) / TEN_MINUTES) * W;
    const y = H - 4 - (pick(p) / top) * (H - 20);
    return `${Math.max(0, x).toFixed(1)},${y.toFixed(1)}`;
  });
  if (pts.length) s.append(svg("polyline", { points: pts.join(" "), class: "chart-line" }));
  return s;
}

function instanceRow(i) {
  const h = i.history || [];
  return el("div", { class: "instance", "data-state": i.state, "data-index": i.index },
    el("div", { class: "instance-head" },
      el("b", {}, `#${i.index}`), " ", el("span", { class: `state ${i.state}` }, i.state),
      el("span", { class: "muted" }, ` ${i.process_type || ""} since ${when(i.since)} · cpu ${(i.cpu || 0).toFixed(1)}% · memory ${bytes(i.memory)} of ${bytes(i.memory_quota)} · disk ${bytes(i.disk)} of ${bytes(i.disk_quota)}${i.cell_id ? ` · ${i.cell_id}` : ""}`),
      i.crash_count ? el("span", { class: "crash" }, ` crashes ${i.crash_count}`) : "",
      i.details ? el("div", { class: "details" }, i.details) : ""),
    el("div", { class: "charts" },
      chart("cpu", h, (p) => p.cpu, (v) => `${v.toFixed(1)}%`, 1),
      chart("memory", h, (p) => p.memory, bytes, i.memory_quota ? 0 : 1)));
}

async function refreshOverview() {
  const [cells, apps] = await Promise.all([getJSON("/api/cells"), getJSON("/api/apps")]);
  document.getElementById("cells").replaceChildren(...cells.cells.map(cellCard));
  const rows = apps.apps.map((a) => el("tr", { class: "app-row", "data-name": a.name },
    el("td", {}, el("a", { href: `#/apps/${encodeURIComponent(a.guid)}`, class: "app-link" }, a.name)),
    el("td", {}, a.space),
    el("td", {}, el("span", { class: `state ${a.state.toLowerCase()}` }, a.state)),
    el("td", {}, `${a.running}/${a.instances}`),
    el("td", {}, `${bytes(a.memory)} of ${bytes(a.memory_mb * 1024 * 1024 * a.instances)}`),
    el("td", {}, `${bytes(a.disk)} of ${bytes(a.disk_mb * 1024 * 1024 * a.instances)}`),
    el("td", {}, ...a.routes.map((r) => el("div", {}, r)))));
  document.querySelector("#apps tbody").replaceChildren(...rows);
  if (MODE === "cell") {
    const inst = await getJSON("/api/instances");
    document.getElementById("cell-instances").replaceChildren(el("h2", {}, "Instances"),
      ...inst.instances.map((i) => instanceRow({ ...i, state: i.state.toLowerCase(), process_type: i.process_guid, since: 0 })));
  }
}

let current = null; // the app shown: { guid, source }

function showLogLine(l) {
  const box = document.getElementById("logs");
  const stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  box.append(el("div", { class: `line ${l.stream === "ERR" ? "err" : ""}` },
    el("span", { class: "ts" }, new Date(l.t).toISOString().slice(11, 23)), " ",
    el("span", { class: "src" }, `[${l.source}]`), ` ${l.stream} `, el("span", { class: "msg" }, l.message)));
  while (box.childElementCount > MAX_LOG_LINES) box.firstElementChild.remove();
  if (stick) box.scrollTop = box.scrollHeight;
}

async function refreshApp() {
  if (!current) return;
  const a = await getJSON(`/api/apps/${encodeURIComponent(current.guid)}`);
  document.getElementById("app-name").textContent = a.name;
  const running = a.instances.filter((i) => i.state === "running").length;
  document.getElementById("app-facts").replaceChildren(
    el("div", {}, `space ${a.space} · ${a.state} · ${running}/${a.instances.length} running · package ${a.package_state}`),
    ...a.routes.map((r) => el("div", { class: "muted" }, r)),
    a.staging_failed_reason ? el("div", { class: "details" }, a.staging_failed_reason) : "");
  document.getElementById("instances").replaceChildren(...a.instances.map(instanceRow));
  const ev = await getJSON(`/api/apps/${encodeURIComponent(current.guid)}/events`);
  document.querySelector("#events tbody").replaceChildren(...ev.events.slice(0, 50).map((e) =>
    el("tr", {}, el("td", {}, when(e.timestamp)), el("td", {}, e.type),
      el("td", { class: "muted" }, Object.entries(e.metadata).map(([k, v]) => `${k}=${v}`).join(" ")))));
}

async function openApp(guid) {
  if (current && current.guid === guid) return;
  closeApp();
  current = { guid, source: null };
  document.getElementById("overview").hidden = true;
  document.getElementById("app").hidden = false;
  document.getElementById("logs").replaceChildren();
  document.getElementById("actions").hidden = !ACTIONS;
  const src = new EventSource(`/api/apps/${encodeURIComponent(guid)}/logs`);
  src.onmessage = (m) => showLogLine(JSON.parse(m.data));
  src.addEventListener("dropped", (m) => showLogLine({ t: Date.now(), source: "dashboard", stream: "ERR", message: `${m.data} lines dropped: the page fell behind` }));
  current.source = src;
  getJSON(`/api/apps/${encodeURIComponent(guid)}/env`)
    .then((env) => { document.getElementById("env").textContent = JSON.stringify(env, null, 2); })
    .catch((e) => { document.getElementById("env").textContent = e.message; });
  await refreshApp();
}

function closeApp() {
  if (current && current.source) current.source.close();
  current = null;
  document.getElementById("overview").hidden = false;
  document.getElementById("app").hidden = true;
}

async function act(action) {
  const out = document.getElementById("action-result");
  const body = action === "scale" ? JSON.stringify({ instances: Number(document.getElementById("scale-n").value) }) : "";
  const r = await fetch(`/api/apps/${encodeURIComponent(current.guid)}/${action}`, {
    method: "POST", headers: { "X-Dashboard-Token": TOKEN, "Content-Type": "application/json" }, body });
  const res = await r.json().catch(() => ({}));
  out.textContent = r.ok ? `${action}: ${res.state}, ${res.instances} instance(s)` : res.error || `${action} failed (${r.status})`;
  refreshApp().catch(() => {});
}

async function route() {
  const m = location.hash.match(/^#\/apps\/([^/]+)$/);
  if (m) await openApp(decodeURIComponent(m[1])); else { closeApp(); await refreshOverview(); }
}

async function tick() {
  try {
    if (current) await refreshApp(); else await refreshOverview();
    setStatus(`updated ${new Date().toLocaleTimeString()}`);
  } catch (e) { setStatus(e.message); }
}

document.querySelectorAll("#actions button").forEach((b) => b.addEventListener("click", () => act(b.dataset.action)));
window.addEventListener("hashchange", () => route().catch((e) => setStatus(e.message)));
getJSON("/api/info").then((info) => {
  MODE = info.mode;
  document.getElementById("mode").textContent = info.mode === "local" ? "celld --local" : "cell";
  document.getElementById("apps-title").hidden = MODE === "cell";
  document.getElementById("apps").hidden = MODE === "cell";
  return route();
}).catch((e) => setStatus(e.message));
setInterval(tick, 5000);
