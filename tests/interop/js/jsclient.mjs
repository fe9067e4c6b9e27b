// One matrix-js-sdk client (with its Rust crypto, WebAssembly) driven by the
// Python tests over stdin/stdout: a JSON command a line in, a JSON answer a
// line out ({"ok": true, ...} or {"error": "..."}). The SDK's own logging goes
// to stderr. JS_SDK_DIR names the folder whose node_modules holds
// matrix-js-sdk. Every wait is bounded by the timeout_ms its command gives.

import path from "node:path";
import { createInterface } from "node:readline";

for (const level of ["log", "info", "debug", "warn", "trace", "error"]) {
    console[level] = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
}

const sdk = await import(path.join(process.env.JS_SDK_DIR, "node_modules", "matrix-js-sdk", "lib", "index.js"));

let client = null;
const texts = new Map(); // room id -> decrypted message bodies, in the order they were decrypted
const failures = []; // events that failed to decrypt
const httpErrors = []; // every HTTP answer >= 400 the SDK got

async function recordingFetch(input, init) {
    const response = await fetch(input, init);
    if (response.status >= 400) {
        let errcode = null;
        try {
            errcode = (await response.clone().json()).errcode ?? null;
        } catch {
            errcode = "(not JSON)";
        }
        const url = new URL(input instanceof Request ? input.url : String(input));
        httpErrors.push({ method: init?.method ?? "GET", path: url.pathname, status: response.status, errcode });
    }
    return response;
}

function onDecrypted(event, err) {
    if (err || event.isDecryptionFailure()) {
        failures.push({ event_id: event.getId(), error: String(err ?? event.decryptionFailureReason) });
        return;
    }
    if (event.getType() === "m.room.message") {
        const list = texts.get(event.getRoomId()) ?? [];
        list.push(event.getContent().body);
        texts.set(event.getRoomId(), list);
    }
}

async function until(check, timeoutMs, what) {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
        if (await check()) return;
        await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error(`timed out waiting for ${what}`);
}

const commands = {
    async login({ base_url, user, password, device_name }) {
        const anonymous = sdk.createClient({ baseUrl: base_url, fetchFn: recordingFetch });
        const r = await anonymous.loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user },
            password,
            initial_device_display_name: device_name,
        });
        client = sdk.createClient({
            baseUrl: base_url, userId: r.user_id, accessToken: r.access_token, deviceId: r.device_id,
            fetchFn: recordingFetch,
        });
        await client.initRustCrypto({ useIndexedDB: false });
        client.on(sdk.MatrixEventEvent.Decrypted, onDecrypted);
        const ready = new Promise((resolve, reject) => {
            client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
                if (state === "PREPARED" || state === "SYNCING") resolve();
                if (state === "ERROR") reject(new Error(`sync failed: ${data?.error}`));
            });
        });
        await client.startClient({ initialSyncLimit: 20 });
        await ready;
        return { user_id: r.user_id, device_id: r.device_id, access_token: r.access_token };
    },

    async create_room({ invite, name }) {
        const r = await client.createRoom({
            name, invite, preset: "private_chat",
            initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
        });
        return { room_id: r.room_id };
    },

    async wait_invite({ room_id, timeout_ms }) {
        await until(() => client.getRoom(room_id)?.getMyMembership() === "invite", timeout_ms, "the invite");
        return {};
    },

    async join({ room_id }) {
        await client.joinRoom(room_id);
        return {};
    },

    async wait_members({ room_id, user_ids, timeout_ms }) {
        await until(async () => {
            const room = client.getRoom(room_id);
            if (!room || !(await client.getCrypto().isEncryptionEnabledInRoom(room_id))) return false;
            const joined = new Set(room.getJoinedMembers().map((m) => m.userId));
            return user_ids.every((u) => joined.has(u));
        }, timeout_ms, "an encrypted room with every member joined");
        return {};
    },

    async wait_device({ user_id, device_id, timeout_ms }) {
        await until(async () => {
            const devices = await client.getCrypto().getUserDeviceInfo([user_id], true);
            return devices.get(user_id)?.has(device_id) ?? false;
        }, timeout_ms, `device ${device_id} of ${user_id}`);
        return {};
    },

    async bootstrap({ password }) {
        // cross-signing keys (uploaded with the password, as the spec's
        // user-interactive auth asks), the device signed, a new key backup
        const crypto = client.getCrypto();
        await crypto.bootstrapCrossSigning({
            authUploadDeviceSigningKeys: async (makeRequest) => {
                await makeRequest({ type: "m.login.password", identifier: { type: "m.id.user", user: client.getUserId() }, password });
            },
        });
        await crypto.resetKeyBackup();
        const own = await crypto.getDeviceVerificationStatus(client.getUserId(), client.getDeviceId());
        return {
            cross_signing_ready: await crypto.isCrossSigningReady(),
            own_device_cross_signed: own?.crossSigningVerified ?? false,
        };
    },

    async wait_backup({ timeout_ms }) {
        // the SDK checks the new backup on the server, then turns it on
        const crypto = client.getCrypto();
        await until(async () => (await crypto.getActiveSessionBackupVersion()) !== null, timeout_ms, "an active key backup");
        return { version: await crypto.getActiveSessionBackupVersion() };
    },

    async device_status({ user_id, device_id, timeout_ms }) {
        // once the user is tracked (a shared room), the device as the crypto
        // store knows it from keys/query
        const crypto = client.getCrypto();
        let status = null;
        await until(async () => (status = await crypto.getDeviceVerificationStatus(user_id, device_id)) !== null,
            timeout_ms, `device ${device_id} of ${user_id} in the crypto store`);
        return { signed_by_owner: status.signedByOwner };
    },

    async send({ room_id, body }) {
        const r = await client.sendTextMessage(room_id, body);
        return { event_id: r.event_id };
    },

    async wait_text({ room_id, body, timeout_ms }) {
        await until(() => (texts.get(room_id) ?? []).includes(body), timeout_ms, `the message ${JSON.stringify(body)}`);
        return {};
    },

    async state({ room_id }) {
        return { texts: texts.get(room_id) ?? [], failures, http_errors: httpErrors };
    },

    async stop() {
        client?.stopClient();
        return {};
    },
};

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
    const { cmd, ...args } = JSON.parse(line);
    let answer;
    try {
        answer = { ok: true, ...(await commands[cmd](args)) };
    } catch (e) {
        answer = { error: `${cmd}: ${e?.stack ?? e}` };
    }
    process.stdout.write(JSON.stringify(answer) + "\n");
    if (cmd === "stop") break;
}
process.exit(0);
