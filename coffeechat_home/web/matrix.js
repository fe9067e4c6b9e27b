// A small Matrix client-server API client: only public endpoints, so the
// page works against any homeserver URL. The session (homeserver, access
// token, user and device) is kept in localStorage so a reload keeps it.

const SESSION_KEY = "coffeechat.session";

export class MatrixError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.errcode = (body && body.errcode) || "M_UNKNOWN";
    this.body = body || {};
  }
}

export function loadSession() {
  try {
    const raw = localStorage.getItem(SESSION_KEY);
    const s = raw ? JSON.parse(raw) : null;
    return s && s.baseUrl && s.accessToken && s.userId ? s : null;
  } catch {
    return null;
  }
}

export function saveSession(session) {
  localStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

export function clearSession() {
  localStorage.removeItem(SESSION_KEY);
}

const enc = encodeURIComponent;
let txnCounter = 0;

export class Client {
  constructor(baseUrl, session = null) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.session = session;
  }

  get userId() {
    return this.session ? this.session.userId : null;
  }

  async request(method, path, { body, query, signal, auth = true } = {}) {
    let url = this.baseUrl + (path.startsWith("/") ? path : "/_matrix/client/v3/" + path);
    if (query) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null) q.set(k, String(v));
      url += "?" + q.toString();
    }
    const headers = {};
    if (auth && this.session) headers["Authorization"] = "Bearer " + this.session.accessToken;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(url, {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    const text = await resp.text();
    if (text) {
      try { data = JSON.parse(text); } catch { data = { error: text.slice(0, 200) }; }
    }
    if (!resp.ok) throw new MatrixError(resp.status, data);
    return data;
  }

  _adopt(r) {
    this.session = {
      baseUrl: this.baseUrl, accessToken: r.access_token, userId: r.user_id, deviceId: r.device_id,
    };
    saveSession(this.session);
    return this.session;
  }

  async login(user, password) {
    const r = await this.request("POST", "login", {
      auth: false,
      body: { type: "m.login.password", identifier: { type: "m.id.user", user }, password,
              initial_device_display_name: "coffeechat web" },
    });
    return this._adopt(r);
  }

  // Registration with user-interactive auth: the dummy stage (open
  // registration) or a registration token when the server asks for one.
  async register(username, password, token = "") {
    const body = { username, password, initial_device_display_name: "coffeechat web" };
    let flows;
    try {
      return this._adopt(await this.request("POST", "register", { auth: false, body }));
    } catch (e) {
      if (!(e instanceof MatrixError) || e.status !== 401 || !e.body.flows) throw e;
      flows = e.body;
    }
    const stages = flows.flows.map((f) => f.stages);
    const session = flows.session;
    if (stages.some((s) => s.length === 1 && s[0] === "m.login.dummy")) {
      body.auth = { type: "m.login.dummy", session };
    } else if (stages.some((s) => s.length === 1 && s[0] === "m.login.registration_token") && token) {
      body.auth = { type: "m.login.registration_token", token, session };
    } else {
      throw new MatrixError(403, { errcode: "M_FORBIDDEN", error: "This server needs a registration token (or registration is closed)" });
    }
    return this._adopt(await this.request("POST", "register", { auth: false, body }));
  }

  async logout() {
    try { await this.request("POST", "logout", { body: {} }); } finally { clearSession(); this.session = null; }
  }

  sync(since, timeout, signal) {
    const filter = JSON.stringify({ room: { timeline: { limit: 30 } } });
    return this.request("GET", "sync", { query: { since, timeout, filter }, signal });
  }

  createRoom(body) { return this.request("POST", "createRoom", { body }); }
  join(roomIdOrAlias) { return this.request("POST", "join/" + enc(roomIdOrAlias), { body: {} }); }
  leave(roomId) { return this.request("POST", `rooms/${enc(roomId)}/leave`, { body: {} }); }
  invite(roomId, userId) { return this.request("POST", `rooms/${enc(roomId)}/invite`, { body: { user_id: userId } }); }
  members(roomId) { return this.request("GET", `rooms/${enc(roomId)}/joined_members`); }

  send(roomId, type, content) {
    const txn = `web${Date.now()}.${txnCounter++}`;
    return this.request("PUT", `rooms/${enc(roomId)}/send/${enc(type)}/${enc(txn)}`, { body: content });
  }

  typing(roomId, typing) {
    return this.request("PUT", `rooms/${enc(roomId)}/typing/${enc(this.userId)}`, {
      body: typing ? { typing: true, timeout: 30000 } : { typing: false },
    });
  }

  receipt(roomId, eventId) {
    return this.request("POST", `rooms/${enc(roomId)}/receipt/m.read/${enc(eventId)}`, { body: {} });
  }

  messages(roomId, from, limit = 30) {
    return this.request("GET", `rooms/${enc(roomId)}/messages`, { query: { from, dir: "b", limit } });
  }
}
