// The room DAG viewer for server admins: a window of a room's events
// (never the whole DAG) drawn as a graph, oldest at the top; prev_events as
// edges; forward extremities, merges and flags marked; the state at a
// selected event and, at a merge, the state keys the branches disagreed on.

import { Client, MatrixError, loadSession } from "./matrix.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const LIMIT = 200;
const MAX_NODES = 3000;
const ROW = 50;
const COL = 170;

const roomId = decodeURIComponent(location.pathname.split("/rooms/")[1].replace(/\/dag\/?$/, ""));
let client = null;
let nodes = new Map(); // event_id -> node json
let info = null; // last window's room-level fields
let selected = null;
let conflictIds = new Set();
const view = { x: 40, y: 40, k: 1 };
const positions = new Map();

function api(path, query) {
  return client.request("GET", `/_coffeechat/admin/v1/rooms/${encodeURIComponent(roomId)}${path}`, { query });
}

function showError(e) {
  $("dag-error").textContent = e instanceof MatrixError ? `${e.errcode}: ${e.message}` : String(e.message || e);
}

async function load(query, { replace = false } = {}) {
  $("dag-error").textContent = "";
  let data;
  try {
    data = await api("/dag", { limit: LIMIT, ...query });
  } catch (e) {
    showError(e);
    if (e instanceof MatrixError && (e.status === 401)) showLogin();
    return 0;
  }
  info = data;
  if (replace) nodes = new Map();
  let added = 0;
  for (const n of data.nodes) {
    if (!nodes.has(n.event_id)) added++;
    nodes.set(n.event_id, n);
  }
  // keep the graph bounded: drop the nodes farthest from this window
  if (nodes.size > MAX_NODES) {
    const mid = (data.window.from_depth + data.window.to_depth) / 2;
    const keep = [...nodes.values()].sort((a, b) => Math.abs(a.depth - mid) - Math.abs(b.depth - mid)).slice(0, MAX_NODES);
    nodes = new Map(keep.map((n) => [n.event_id, n]));
  }
  for (const n of nodes.values()) n.forward_extremity = data.forward_extremities.includes(n.event_id);
  layout();
  draw();
  summarize();
  return added;
}

function depthBounds() {
  let lo = Infinity, hi = -Infinity;
  for (const n of nodes.values()) { lo = Math.min(lo, n.depth); hi = Math.max(hi, n.depth); }
  return [lo, hi];
}

function summarize() {
  const [lo, hi] = depthBounds();
  const merges = [...nodes.values()].filter((n) => n.prev_events.length > 1).length;
  const forks = [...levels().values()].filter((l) => l.length > 1).length;
  $("dag-summary").textContent = nodes.size
    ? `${nodes.size} of ${info.total_events} events shown (depth ${lo}–${hi} of ${info.depth_range.min}–${info.depth_range.max}); `
      + `${info.forward_extremities.length} forward extremit${info.forward_extremities.length === 1 ? "y" : "ies"}, `
      + `${merges} merge${merges === 1 ? "" : "s"}, ${forks} depth${forks === 1 ? "" : "s"} with parallel events. `
      + `Flags this server records: ${info.flags.join(", ")}.`
    : "No events.";
  $("dag-older").disabled = !(lo > info.depth_range.min);
  $("dag-newer").disabled = !(hi < info.depth_range.max);
}

function levels() {
  const byDepth = new Map();
  for (const n of nodes.values()) {
    if (!byDepth.has(n.depth)) byDepth.set(n.depth, []);
    byDepth.get(n.depth).push(n);
  }
  return byDepth;
}

// Depth gives the row; within a row, events sit in the order of their
// parents' mean column (a barycentre pass), so branches stay in lanes.
function layout() {
  positions.clear();
  const byDepth = levels();
  const depths = [...byDepth.keys()].sort((a, b) => a - b);
  const [lo] = depthBounds();
  for (const d of depths) {
    const row = byDepth.get(d);
    const key = (n) => {
      const xs = n.prev_events.filter((p) => positions.has(p)).map((p) => positions.get(p).x);
      return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0;
    };
    row.sort((a, b) => key(a) - key(b) || (a.stream_pos ?? 0) - (b.stream_pos ?? 0) || a.event_id.localeCompare(b.event_id));
    row.forEach((n, i) => positions.set(n.event_id, { x: (i - (row.length - 1) / 2) * COL, y: (d - lo) * ROW }));
  }
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function shortType(t) {
  return t.replace(/^m\.room\./, "");
}

function draw() {
  const edges = [];
  for (const n of nodes.values()) {
    const to = positions.get(n.event_id);
    for (const p of n.prev_events) {
      const from = positions.get(p);
      if (from) {
        edges.push(svg("line", { class: "edge", x1: from.x, y1: from.y + 14, x2: to.x, y2: to.y - 14, "data-from": n.event_id, "data-to": p }));
      } else {
        edges.push(svg("line", { class: "edge outside", x1: to.x, y1: to.y - 14, x2: to.x, y2: to.y - ROW / 2, "data-from": n.event_id, "data-to": p }));
      }
    }
  }
  $("dag-edges").replaceChildren(...edges);
  const drawn = [];
  for (const n of nodes.values()) {
    const pos = positions.get(n.event_id);
    const cls = ["node"];
    if (n.state_key !== undefined) cls.push("state");
    if (n.forward_extremity) cls.push("extremity");
    if (n.prev_events.length > 1) cls.push("merge");
    for (const f of ["rejected", "soft_failed", "outlier"]) if (n[f]) cls.push(f);
    if (n.event_id === selected) cls.push("selected");
    if (conflictIds.has(n.event_id)) cls.push("conflict");
    const label = `${n.type}${n.state_key !== undefined ? ` (${n.state_key || "empty key"})` : ""} by ${n.sender}, depth ${n.depth}`
      + `${n.stream_pos !== null ? `, stream ${n.stream_pos}` : ""}${n.forward_extremity ? ", forward extremity" : ""}`
      + `${n.prev_events.length > 1 ? ", merge" : ""}${n.rejected ? ", rejected" : ""}${n.soft_failed ? ", soft-failed" : ""}${n.outlier ? ", outlier" : ""}`;
    const g = svg("g", {
      class: cls.join(" "), transform: `translate(${pos.x},${pos.y})`, tabindex: "0", role: "button",
      "aria-label": label, "data-event-id": n.event_id,
    });
    const title = svg("title");
    title.textContent = `${label}\n${n.event_id}`;
    g.append(title, svg("circle", { r: 14 }));
    const text = svg("text", { x: 18, y: 4 });
    text.textContent = `${shortType(n.type)} · ${n.sender.split(":")[0]}`;
    g.append(text);
    g.addEventListener("click", () => select(n.event_id));
    g.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(n.event_id); }
    });
    drawn.push(g);
  }
  $("dag-nodes").replaceChildren(...drawn);
  applyView();
}

function applyView() {
  $("dag-viewport").setAttribute("transform", `translate(${view.x},${view.y}) scale(${view.k})`);
}

function fit() {
  if (!positions.size) return;
  const box = $("dag-svg").getBoundingClientRect();
  const xs = [...positions.values()].map((p) => p.x), ys = [...positions.values()].map((p) => p.y);
  const pad = 40;
  const w = Math.max(...xs) - Math.min(...xs) + 250, h = Math.max(...ys) - Math.min(...ys) + 30;
  view.k = Math.max(0.05, Math.min(2, (box.width - 2 * pad) / w, (box.height - 2 * pad) / h));
  view.x = box.width / 2 - ((Math.max(...xs) + Math.min(...xs)) / 2 + 100) * view.k;
  view.y = pad + 15 * view.k - Math.min(...ys) * view.k;
  applyView();
}

function focusOn(eventId) {
  const pos = positions.get(eventId);
  if (!pos) return;
  const box = $("dag-svg").getBoundingClientRect();
  view.x = box.width / 2 - pos.x * view.k;
  view.y = box.height / 2 - pos.y * view.k;
  applyView();
}

function zoom(factor, cx, cy) {
  const box = $("dag-svg").getBoundingClientRect();
  const px = cx ?? box.width / 2, py = cy ?? box.height / 2;
  const k = Math.max(0.05, Math.min(4, view.k * factor));
  view.x = px - ((px - view.x) * k) / view.k;
  view.y = py - ((py - view.y) * k) / view.k;
  view.k = k;
  applyView();
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function table(headers, rows, cls = "") {
  const t = document.createElement("table");
  if (cls) t.className = cls;
  const head = document.createElement("tr");
  for (const h of headers) { const th = document.createElement("th"); th.textContent = h; head.append(th); }
  t.append(head);
  for (const r of rows) { const tr = document.createElement("tr"); tr.append(...r.map((c) => cell(c))); t.append(tr); }
  return t;
}

function heading(text) {
  const h = document.createElement("h3");
  h.textContent = text;
  return h;
}

function brief(content) {
  const s = JSON.stringify(content);
  return s && s.length > 120 ? s.slice(0, 117) + "…" : s || "";
}

async function select(eventId) {
  selected = eventId;
  const n = nodes.get(eventId);
  const details = $("dag-details");
  let state;
  try {
    state = await api(`/dag/state/${encodeURIComponent(eventId)}`);
  } catch (e) {
    showError(e);
    return;
  }
  conflictIds = new Set();
  for (const c of state.conflicts) {
    for (const v of Object.values(c.branches)) if (v) conflictIds.add(v);
  }
  const facts = [
    ["event id", eventId], ["type", n.type], ["state key", n.state_key ?? "(not state)"], ["sender", n.sender],
    ["origin", n.origin], ["depth", String(n.depth)], ["stream position", n.stream_pos === null ? "none (outlier)" : String(n.stream_pos)],
    ["sent", new Date(n.origin_server_ts).toISOString()], ["prev events", n.prev_events.join(", ") || "none"],
    ["forward extremity", n.forward_extremity ? "yes" : "no"],
  ];
  for (const f of info.flags) facts.push([f.replace("_", "-"), n[f] ? `yes${f === "rejected" && n.rejected_reason ? ` (${n.rejected_reason})` : ""}` : "no"]);
  const parts = [table(["", ""], facts)];
  if (n.prev_events.length > 1) {
    parts.push(heading(`Merge: ${state.conflicts.length} state key${state.conflicts.length === 1 ? "" : "s"} in conflict`));
    if (state.conflicts.length) {
      parts.push(table(["state key", ...n.prev_events.map((p, i) => `branch ${i + 1} (${p.slice(0, 10)}…)`), "after merge"],
        state.conflicts.map((c) => [`${c.type} ${JSON.stringify(c.state_key)}`, ...n.prev_events.map((p) => c.branches[p] || "—"), c.resolved || "—"]),
        "conflict-table"));
    } else {
      parts.push(Object.assign(document.createElement("p"), { textContent: "The branches agreed on every state key." }));
    }
  }
  parts.push(heading(`State after this event (${state.state ? state.state.length : 0} entries)`));
  if (state.state) {
    parts.push(table(["type", "state key", "sender", "content", "event"],
      state.state.map((s) => [s.type, s.state_key, s.sender, brief(s.content), s.event_id]), "state-table"));
  } else {
    parts.push(Object.assign(document.createElement("p"), { textContent: "An outlier: no state is stored for it." }));
  }
  details.replaceChildren(...parts);
  draw();
  const g = document.querySelector(`.node[data-event-id="${CSS.escape(eventId)}"]`);
  if (g) g.focus();
}

function wirePanZoom() {
  const s = $("dag-svg");
  let drag = null;
  s.addEventListener("pointerdown", (e) => {
    if (e.target.closest(".node")) return;
    drag = { x: e.clientX, y: e.clientY, vx: view.x, vy: view.y };
    s.setPointerCapture(e.pointerId);
  });
  s.addEventListener("pointermove", (e) => {
    if (!drag) return;
    view.x = drag.vx + e.clientX - drag.x;
    view.y = drag.vy + e.clientY - drag.y;
    applyView();
  });
  s.addEventListener("pointerup", () => { drag = null; });
  s.addEventListener("wheel", (e) => {
    e.preventDefault();
    const box = s.getBoundingClientRect();
    zoom(e.deltaY < 0 ? 1.15 : 1 / 1.15, e.clientX - box.left, e.clientY - box.top);
  }, { passive: false });
  s.addEventListener("keydown", (e) => {
    const step = 60;
    const moves = { ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
    if (moves[e.key] && e.target === s) {
      view.x += moves[e.key][0]; view.y += moves[e.key][1]; applyView(); e.preventDefault();
    } else if (e.key === "+" || e.key === "=") { zoom(1.2); e.preventDefault(); }
    else if (e.key === "-") { zoom(1 / 1.2); e.preventDefault(); }
    else if (e.key === "0") { fit(); e.preventDefault(); }
  });
  $("dag-zoom-in").addEventListener("click", () => zoom(1.2));
  $("dag-zoom-out").addEventListener("click", () => zoom(1 / 1.2));
  $("dag-fit").addEventListener("click", fit);
}

function wireNavigation() {
  $("dag-older").addEventListener("click", async () => {
    const [lo] = depthBounds();
    if ((await load({ to_depth: lo })) === 0) await load({ to_depth: lo - 1 });
  });
  $("dag-newer").addEventListener("click", async () => {
    const [, hi] = depthBounds();
    if ((await load({ from_depth: hi })) === 0) await load({ from_depth: hi + 1 });
  });
  $("dag-latest").addEventListener("click", async () => { await load({}, { replace: true }); fit(); });
  $("dag-jump").addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = $("dag-jump-id").value.trim();
    if ((await load({ around: id }, { replace: true })) > 0) { focusOn(id); select(id); }
  });
}

function showLogin() {
  $("dag-view").hidden = true;
  $("dag-login").hidden = false;
}

async function start(c) {
  client = c;
  $("dag-login").hidden = true;
  $("dag-view").hidden = false;
  $("dag-room").textContent = roomId;
  const params = new URLSearchParams(location.search);
  const around = params.get("event");
  await load(around ? { around } : {}, { replace: true });
  fit();
  if (around && nodes.has(around)) select(around);
}

$("dag-login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const c = new Client(location.origin);
  try {
    await c.login($("dag-user").value.trim(), $("dag-password").value);
  } catch (err) {
    $("dag-login-error").textContent = err.message;
    return;
  }
  start(c);
});
wirePanZoom();
wireNavigation();
const saved = loadSession();
if (saved && saved.baseUrl.replace(/\/+$/, "") === location.origin) start(new Client(location.origin, saved));
else showLogin();
