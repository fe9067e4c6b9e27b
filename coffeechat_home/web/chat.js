// The coffeechat web chat page: rooms, a live timeline through the
// long-poll /sync, sending, edits and replies, typing, read receipts,
// members and back-pagination. Public client-server API only.

import { Client, MatrixError, clearSession, loadSession } from "./matrix.js";

const $ = (id) => document.getElementById(id);
const ROOM_KEY = "coffeechat.room";

let client = null;
let since = null;
let syncAbort = null;
const rooms = new Map();
let currentRoomId = null;
let composeMode = null; // {kind: "reply"|"edit", eventId}
let typingSentAt = 0;
let loadingOlder = false;

function newRoom(id) {
  return {
    id, membership: "join", state: new Map(), timeline: [], ids: new Set(), prevBatch: null, atStart: false,
    unread: 0, typing: [], receipts: new Map(), edits: new Map(), sentReceipt: null,
  };
}

function room(id) {
  if (!rooms.has(id)) rooms.set(id, newRoom(id));
  return rooms.get(id);
}

function stateContent(r, type, key = "") {
  const ev = r.state.get(type + "\u0000" + key);
  return ev ? ev.content || {} : null;
}

function displayName(r, userId) {
  const m = r ? stateContent(r, "m.room.member", userId) : null;
  return (m && m.displayname) || userId;
}

function roomName(r) {
  const name = stateContent(r, "m.room.name");
  if (name && name.name) return name.name;
  const alias = stateContent(r, "m.room.canonical_alias");
  if (alias && alias.alias) return alias.alias;
  const others = members(r).filter((m) => m.userId !== client.userId).map((m) => m.name);
  if (others.length) return others.slice(0, 3).join(", ");
  return r.id;
}

function members(r) {
  const out = [];
  for (const ev of r.state.values()) {
    if (ev.type !== "m.room.member") continue;
    const ms = (ev.content || {}).membership;
    if (ms === "join" || ms === "invite") out.push({ userId: ev.state_key, name: (ev.content || {}).displayname || ev.state_key, membership: ms });
  }
  out.sort((a, b) => a.name.localeCompare(b.name));
  return out;
}

function isEncrypted(r) {
  return stateContent(r, "m.room.encryption") !== null;
}

// -- sync ------------------------------------------------------------------

function applyState(r, events) {
  for (const ev of events || []) {
    if (ev.state_key !== undefined) r.state.set(ev.type + "\u0000" + ev.state_key, ev);
  }
}

function relation(ev) {
  return (ev.content && ev.content["m.relates_to"]) || {};
}

function noteEdit(r, ev) {
  const rel = relation(ev);
  if (rel.rel_type !== "m.replace" || !rel.event_id) return false;
  const prev = r.edits.get(rel.event_id);
  if (!prev || (prev.origin_server_ts || 0) <= (ev.origin_server_ts || 0)) r.edits.set(rel.event_id, ev);
  return true;
}

function addEvents(r, events, { prepend = false } = {}) {
  const fresh = [];
  for (const ev of events) {
    if (!ev.event_id || r.ids.has(ev.event_id)) continue;
    r.ids.add(ev.event_id);
    noteEdit(r, ev);
    fresh.push(ev);
  }
  r.timeline = prepend ? fresh.concat(r.timeline) : r.timeline.concat(fresh);
  return fresh;
}

function handleSync(data, initial) {
  const sections = data.rooms || {};
  for (const [id, j] of Object.entries(sections.join || {})) {
    const r = room(id);
    r.membership = "join";
    applyState(r, j.state && j.state.events);
    const tl = j.timeline || {};
    if (tl.limited && !initial) {
      r.timeline = []; r.ids = new Set(); r.atStart = false;
    }
    if (r.timeline.length === 0) r.prevBatch = tl.prev_batch || null;
    const fresh = addEvents(r, tl.events || []);
    applyState(r, tl.events);
    if (!initial && id === currentRoomId) announce(r, fresh);
    for (const ev of (j.ephemeral && j.ephemeral.events) || []) {
      if (ev.type === "m.typing") r.typing = ev.content.user_ids || [];
      if (ev.type === "m.receipt") {
        for (const [eventId, byType] of Object.entries(ev.content || {})) {
          for (const userId of Object.keys(byType["m.read"] || {})) r.receipts.set(userId, eventId);
        }
      }
    }
    if (j.unread_notifications) r.unread = j.unread_notifications.notification_count || 0;
  }
  for (const [id, inv] of Object.entries(sections.invite || {})) {
    const r = room(id);
    r.membership = "invite";
    applyState(r, inv.invite_state && inv.invite_state.events);
  }
  for (const id of Object.keys(sections.leave || {})) {
    rooms.delete(id);
    if (currentRoomId === id) selectRoom(null);
  }
}

// New messages from others in the open room, read out by screen readers
// (the timeline itself is redrawn, so it is not a live region).
function announce(r, events) {
  const said = events.filter((ev) => ev.type === "m.room.message" && ev.sender !== client.userId
    && relation(ev).rel_type !== "m.replace");
  if (said.length) $("announce").textContent = said.map((ev) => `${displayName(r, ev.sender)}: ${bodyOf(ev)}`).join(". ");
}

async function syncLoop() {
  let backoff = 1000;
  const abort = new AbortController();
  syncAbort = abort;
  while (!abort.signal.aborted) {
    try {
      const data = await client.sync(since, since ? 30000 : 0, abort.signal);
      handleSync(data, since === null);
      since = data.next_batch;
      backoff = 1000;
      setStatus("");
      render();
    } catch (e) {
      if (abort.signal.aborted) return;
      if (e instanceof MatrixError && e.errcode === "M_UNKNOWN_TOKEN") {
        clearSession();
        showLogin("Your session has ended; log in again.");
        return;
      }
      setStatus(`Connection problem (${e.message}); retrying…`);
      await new Promise((res) => setTimeout(res, backoff));
      backoff = Math.min(backoff * 2, 30000);
    }
  }
}

// -- rendering --------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function setStatus(text) {
  $("status").textContent = text;
}

function render() {
  renderRoomList();
  renderRoom();
}

function renderRoomList() {
  const list = $("room-list");
  const sorted = [...rooms.values()].sort((a, b) => {
    if (a.membership !== b.membership) return a.membership === "invite" ? -1 : 1;
    const ta = a.timeline.length ? a.timeline[a.timeline.length - 1].origin_server_ts : 0;
    const tb = b.timeline.length ? b.timeline[b.timeline.length - 1].origin_server_ts : 0;
    return tb - ta;
  });
  list.replaceChildren(...sorted.map((r) => {
    const label = roomName(r);
    const badge = r.membership === "invite" ? el("span", { class: "badge invite", text: "invited" })
      : r.unread > 0 && r.id !== currentRoomId ? el("span", { class: "badge", text: String(r.unread), "aria-label": `${r.unread} unread` }) : null;
    const btn = el("button", { type: "button", class: "room-button", "data-room-id": r.id, onclick: () => selectRoom(r.id) },
      el("span", { class: "room-label", text: label }), badge);
    if (r.id === currentRoomId) btn.setAttribute("aria-current", "true");
    return el("li", {}, btn);
  }));
  if (!sorted.length) list.replaceChildren(el("li", { class: "notice", text: "No rooms yet: create or join one." }));
}

function bodyOf(ev) {
  const c = ev.content || {};
  let text = typeof c.body === "string" ? c.body : "";
  if (relation(ev)["m.in_reply_to"]) {
    // strip a reply fallback ("> <@user> quoted" lines and a blank line)
    const lines = text.split("\n");
    let i = 0;
    while (i < lines.length && lines[i].startsWith(">")) i++;
    if (i > 0 && i < lines.length && lines[i] === "") text = lines.slice(i + 1).join("\n");
  }
  return text;
}

function shownContent(r, ev) {
  const edit = r.edits.get(ev.event_id);
  if (edit && edit.sender === ev.sender) {
    const nc = edit.content["m.new_content"] || {};
    return { ...ev, content: { ...nc, "m.relates_to": (ev.content || {})["m.relates_to"] }, edited: true };
  }
  return ev;
}

function memberChange(r, ev) {
  const who = (ev.content && ev.content.displayname) || ev.state_key;
  const by = displayName(r, ev.sender);
  const prev = (ev.unsigned && ev.unsigned.prev_content) || {};
  switch ((ev.content || {}).membership) {
    case "join": return prev.membership === "join" ? `${who} changed their profile` : `${who} joined`;
    case "invite": return `${by} invited ${who}`;
    case "leave": return ev.sender === ev.state_key ? `${who} left` : `${by} removed ${who}`;
    case "ban": return `${by} banned ${who}`;
    default: return `${who}: membership ${(ev.content || {}).membership}`;
  }
}

function noticeText(r, ev) {
  const by = displayName(r, ev.sender);
  const c = ev.content || {};
  switch (ev.type) {
    case "m.room.member": return memberChange(r, ev);
    case "m.room.create": return `${by} created the room`;
    case "m.room.name": return `${by} named the room “${c.name || ""}”`;
    case "m.room.topic": return `${by} set the topic: ${c.topic || ""}`;
    case "m.room.encryption": return `${by} turned on end-to-end encryption`;
    case "m.room.encrypted": return "🔒 An encrypted message (this page cannot decrypt it)";
    default: return ev.state_key !== undefined ? `${by} changed ${ev.type}` : `${by} sent ${ev.type}`;
  }
}

function renderEvent(r, ev) {
  if (ev.type === "m.room.message" && relation(ev).rel_type === "m.replace") return null;
  if (ev.type === "m.reaction" || ev.type === "m.room.redaction") return null;
  const li = el("li", { class: "event", "data-event-id": ev.event_id, tabindex: "-1" });
  if (ev.type !== "m.room.message") {
    li.classList.add("notice");
    li.textContent = noticeText(r, ev);
    return li;
  }
  const shown = shownContent(r, ev);
  const mine = ev.sender === client.userId;
  if (mine) li.classList.add("mine");
  li.append(el("div", { class: "meta" },
    el("span", { class: "sender", text: displayName(r, ev.sender) }),
    el("time", { datetime: new Date(ev.origin_server_ts).toISOString(), text: new Date(ev.origin_server_ts).toLocaleTimeString() })));
  const replyTo = relation(ev)["m.in_reply_to"];
  if (replyTo && replyTo.event_id) {
    const orig = r.timeline.find((e) => e.event_id === replyTo.event_id);
    const quote = orig ? `${displayName(r, orig.sender)}: ${bodyOf(shownContent(r, orig))}` : "a message not loaded here";
    li.append(el("blockquote", { class: "reply-quote", text: `In reply to ${quote}` }));
  }
  const redacted = !shown.content || Object.keys(shown.content).length === 0;
  li.append(el("p", { class: "body", text: redacted ? "(message deleted)" : bodyOf(shown) }));
  if (shown.edited) li.append(el("span", { class: "edited", text: "(edited)" }));
  if (!redacted) {
    const actions = el("div", { class: "actions" },
      el("button", { type: "button", onclick: () => startCompose("reply", ev), text: "Reply" }));
    if (mine) actions.append(el("button", { type: "button", onclick: () => startCompose("edit", ev), text: "Edit" }));
    li.append(actions);
  }
  return li;
}

function readersOf(r, ev) {
  const readers = [];
  for (const [userId, eventId] of r.receipts) {
    if (eventId === ev.event_id && userId !== client.userId && userId !== ev.sender) readers.push(displayName(r, userId));
  }
  return readers;
}

function renderRoom() {
  const r = currentRoomId ? rooms.get(currentRoomId) : null;
  document.body.classList.toggle("show-room", !!r);
  const inRoom = !!r && r.membership === "join";
  for (const id of ["members-button", "leave-button"]) $(id).hidden = !r;
  $("invite-form").hidden = !inRoom;
  $("invite-banner").hidden = !r || r.membership !== "invite";
  $("e2e-note").hidden = !r || !isEncrypted(r);
  const dag = $("dag-link");
  dag.hidden = !r || client.baseUrl !== location.origin;
  if (r) dag.href = `/_coffeechat/admin/rooms/${encodeURIComponent(r.id)}/dag`;
  const composerOff = !inRoom || isEncrypted(r);
  $("composer-input").disabled = composerOff;
  $("send-button").disabled = composerOff;
  if (!r) {
    $("room-name").textContent = "No room selected";
    $("timeline").replaceChildren();
    $("member-list").replaceChildren();
    $("typing").textContent = "";
    $("older-button").hidden = true;
    $("room-start").hidden = true;
    return;
  }
  $("room-name").textContent = roomName(r);
  if (r.membership === "invite") {
    const me = stateContent(r, "m.room.member", client.userId);
    const inviter = r.state.get("m.room.member\u0000" + client.userId);
    $("invite-text").textContent = `${inviter ? displayName(r, inviter.sender) : "Someone"} invited you${me && me.reason ? ` (${me.reason})` : ""}.`;
  }
  const scroller = $("timeline-scroll");
  const fromBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
  // a receipt on an event not drawn (an edit, a reaction) shows on the
  // nearest drawn event before it
  const items = [];
  let readers = [];
  const flush = () => {
    const last = items[items.length - 1];
    if (last && readers.length) last.append(el("p", { class: "receipts", text: `Seen by ${readers.join(", ")}` }));
    readers = [];
  };
  for (const ev of r.timeline) {
    const li = renderEvent(r, ev);
    if (li) { flush(); items.push(li); }
    readers = readers.concat(readersOf(r, ev));
  }
  flush();
  $("timeline").replaceChildren(...items);
  scroller.scrollTop = fromBottom < 80 ? scroller.scrollHeight : scroller.scrollHeight - scroller.clientHeight - fromBottom;
  $("older-button").hidden = !inRoom || r.atStart || !r.prevBatch;
  $("room-start").hidden = !r.atStart;
  const typers = r.typing.filter((u) => u !== client.userId).map((u) => displayName(r, u));
  $("typing").textContent = typers.length ? `${typers.join(", ")} ${typers.length > 1 ? "are" : "is"} typing…` : "";
  $("member-list").replaceChildren(...members(r).map((m) =>
    el("li", {}, el("span", { text: m.name }), m.name !== m.userId ? el("span", { class: "muted", text: ` ${m.userId}` }) : null,
      m.membership === "invite" ? el("span", { class: "muted", text: " (invited)" }) : null)));
  sendReceipt(r);
}

function sendReceipt(r) {
  if (document.visibilityState === "hidden" || r.membership !== "join") return;
  const last = [...r.timeline].reverse().find((e) => e.sender !== client.userId);
  if (!last || r.sentReceipt === last.event_id || r.receipts.get(client.userId) === last.event_id) return;
  r.sentReceipt = last.event_id;
  r.unread = 0;
  client.receipt(r.id, last.event_id).catch(() => { r.sentReceipt = null; });
}

function selectRoom(id) {
  currentRoomId = id;
  if (id) localStorage.setItem(ROOM_KEY, id); else localStorage.removeItem(ROOM_KEY);
  cancelCompose();
  $("room-error").textContent = "";
  render();
  const scroller = $("timeline-scroll");
  scroller.scrollTop = scroller.scrollHeight;
}

// -- actions -----------------------------------------------------------------

function showError(where, e) {
  $(where).textContent = e instanceof MatrixError ? `${e.errcode}: ${e.message}` : String(e.message || e);
}

function startCompose(kind, ev) {
  composeMode = { kind, eventId: ev.event_id };
  const r = rooms.get(currentRoomId);
  const shown = shownContent(r, ev);
  $("compose-context").hidden = false;
  $("compose-context-text").textContent = kind === "reply"
    ? `Replying to ${displayName(r, ev.sender)}: ${bodyOf(shown).slice(0, 80)}`
    : "Editing your message";
  const input = $("composer-input");
  if (kind === "edit") input.value = bodyOf(shown);
  input.focus();
}

function cancelCompose() {
  composeMode = null;
  $("compose-context").hidden = true;
}

async function sendMessage() {
  const input = $("composer-input");
  const text = input.value.trim();
  const r = rooms.get(currentRoomId);
  if (!text || !r) return;
  let content = { msgtype: "m.text", body: text };
  if (composeMode && composeMode.kind === "reply") {
    content["m.relates_to"] = { "m.in_reply_to": { event_id: composeMode.eventId } };
  } else if (composeMode && composeMode.kind === "edit") {
    content = {
      msgtype: "m.text", body: `* ${text}`, "m.new_content": { msgtype: "m.text", body: text },
      "m.relates_to": { rel_type: "m.replace", event_id: composeMode.eventId },
    };
  }
  input.value = "";
  cancelCompose();
  $("room-error").textContent = "";
  try {
    await client.send(r.id, "m.room.message", content);
    typingSentAt = 0;
    client.typing(r.id, false).catch(() => {});
  } catch (e) {
    input.value = text;
    showError("room-error", e);
  }
}

async function loadOlder() {
  const r = rooms.get(currentRoomId);
  if (!r || loadingOlder || r.atStart || !r.prevBatch) return;
  loadingOlder = true;
  try {
    const page = await client.messages(r.id, r.prevBatch);
    const chunk = (page.chunk || []).slice().reverse();
    addEvents(r, chunk, { prepend: true });
    r.prevBatch = page.end || null;
    if (!page.end || !(page.chunk || []).length) r.atStart = true;
    renderRoom();
  } catch (e) {
    showError("room-error", e);
  } finally {
    loadingOlder = false;
  }
}

function onTyping() {
  const r = rooms.get(currentRoomId);
  if (!r || r.membership !== "join") return;
  const now = Date.now();
  if ($("composer-input").value && now - typingSentAt > 20000) {
    typingSentAt = now;
    client.typing(r.id, true).catch(() => {});
  } else if (!$("composer-input").value && typingSentAt) {
    typingSentAt = 0;
    client.typing(r.id, false).catch(() => {});
  }
}

async function guarded(where, fn) {
  $(where).textContent = "";
  try { await fn(); } catch (e) { showError(where, e); }
}

function wire() {
  $("login-form").addEventListener("submit", (e) => { e.preventDefault(); doLogin(false); });
  $("register-button").addEventListener("click", () => doLogin(true));
  $("logout-button").addEventListener("click", async () => {
    if (syncAbort) syncAbort.abort();
    try { await client.logout(); } catch { clearSession(); }
    showLogin("");
  });
  $("create-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded("sidebar-error", async () => {
      const body = { name: $("create-name").value.trim(), preset: $("create-public").checked ? "public_chat" : "private_chat" };
      const alias = $("create-alias").value.trim().replace(/^#/, "");
      if (alias) body.room_alias_name = alias;
      const r = await client.createRoom(body);
      $("create-form").reset();
      $("create-form").closest("details").open = false;
      room(r.room_id);
      selectRoom(r.room_id);
    });
  });
  $("join-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded("sidebar-error", async () => {
      const r = await client.join($("join-target").value.trim());
      $("join-form").reset();
      $("join-form").closest("details").open = false;
      room(r.room_id).membership = "join";
      selectRoom(r.room_id);
    });
  });
  $("leave-button").addEventListener("click", () => guarded("room-error", async () => {
    const id = currentRoomId;
    await client.leave(id);
    rooms.delete(id);
    selectRoom(null);
  }));
  $("accept-button").addEventListener("click", () => guarded("room-error", async () => {
    await client.join(currentRoomId);
    room(currentRoomId).membership = "join";
    render();
  }));
  $("decline-button").addEventListener("click", () => $("leave-button").click());
  $("invite-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded("room-error", async () => {
      await client.invite(currentRoomId, $("invite-user").value.trim());
      $("invite-form").reset();
    });
  });
  $("members-button").addEventListener("click", () => {
    const panel = $("members");
    panel.hidden = !panel.hidden;
    $("members-button").setAttribute("aria-expanded", String(!panel.hidden));
  });
  $("back-button").addEventListener("click", () => selectRoom(null));
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); sendMessage(); });
  $("composer-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); sendMessage(); }
    if (e.key === "Escape") cancelCompose();
  });
  $("composer-input").addEventListener("input", onTyping);
  $("compose-cancel").addEventListener("click", cancelCompose);
  $("older-button").addEventListener("click", loadOlder);
  $("timeline-scroll").addEventListener("scroll", () => {
    if ($("timeline-scroll").scrollTop < 40) loadOlder();
  });
  document.addEventListener("visibilitychange", () => { if (currentRoomId) renderRoom(); });
}

async function doLogin(register) {
  const server = $("login-server").value.trim() || location.origin;
  const user = $("login-user").value.trim();
  const password = $("login-password").value;
  $("login-error").textContent = "";
  if (!user || !password) { $("login-error").textContent = "Enter a user name and a password."; return; }
  const c = new Client(server);
  try {
    if (register) await c.register(user, password, $("login-token").value.trim());
    else await c.login(user, password);
  } catch (e) {
    showError("login-error", e);
    return;
  }
  startChat(c);
}

function showLogin(message) {
  client = null;
  rooms.clear();
  since = null;
  currentRoomId = null;
  $("chat-view").hidden = true;
  $("login-view").hidden = false;
  $("login-server").value = $("login-server").value || location.origin;
  $("login-error").textContent = message;
  $("login-user").focus();
}

function startChat(c) {
  client = c;
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  $("login-password").value = "";
  $("me").textContent = c.userId;
  currentRoomId = localStorage.getItem(ROOM_KEY);
  setStatus("Loading…");
  render();
  syncLoop();
}

wire();
const saved = loadSession();
if (saved) startChat(new Client(saved.baseUrl, saved));
else showLogin("");
