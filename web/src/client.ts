// The browser client: one device of one account, its sessions, its
// messages, and the connection to the server (PROTOCOL §5–§13).
import { type Bytes, concat, equal, fromUtf8, hex, utf8 } from "./bytes.js";
import { asArray, asBytes, asText, asUint, asU64 } from "./cbor.js";
import { type Content, MAX_RETRY_IDS, conversationId, covers, decodeContent, encodeContent, isControl, safetyNumber } from "./content.js";
import { systemRng, ed25519Generate, x25519Generate } from "./crypto.js";
import { type Address, type Frame, FrameType, decodeAddress, decodeFrame, encodeAddress, encodeFrame, errorOf } from "./frames.js";
import {
  type Device,
  type PublicIdentity,
  type Session,
  ProtocolError,
  accept,
  addOneTimePrekeys,
  currentSignedPrekey,
  decodeBundle,
  decodeEnvelope,
  decrypt,
  deviceKeys,
  encodeDeviceKeys,
  encodeOneTimePrekey,
  encodeSignedPrekey,
  encrypt,
  initiate,
  newDevice,
  publicIdentity,
  verifyBundle,
} from "./session.js";
import { type MessageRecord, Store } from "./store.js";

const rng = systemRng;
const SESSIONS_PER_PEER = 4;
const PREKEYS_PER_PUBLISH = 50;
const RECEIPT_DELAY_MS = 200;
const REQUEST_TIMEOUT_MS = 15000;

export interface Account {
  user: string;
  device: number;
}

/** What this client pinned for a peer (§12). */
export interface Pin {
  identity: PublicIdentity;
  verified: boolean;
  /** A different identity seen since, awaiting the user's confirmation: sending is blocked. */
  changed?: PublicIdentity;
}

interface RecvState {
  next: bigint;
  /** What has not arrived: listed in receipts (§7.2). */
  gaps: Array<[bigint, bigint]>;
  /** Gaps to tell the user of once the grace period has passed (§7.1): from, to, noticed at (ms). */
  report?: Array<[bigint, bigint, number]>;
}

/** How long a gap may stay open before the user is told (§7.1). */
const GAP_GRACE_MS = 30000;

export class ServerError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message || code);
  }
}

export type Status = "connecting" | "online" | "offline" | "displaced" | "signed-out";

export interface Events {
  status(s: Status, detail: string): void;
  changed(peer: string | null): void;
}

const addrKey = (a: Address): string => `${a.user}:${a.device}`;
const random16 = (): Bytes => globalThis.crypto.getRandomValues(new Uint8Array(16));
const sameId = (a: PublicIdentity, b: PublicIdentity): boolean =>
  equal(a.signingKey, b.signingKey) && equal(a.identityKey, b.identityKey);

/** The WebSocket of one connection, with request/reply matching. */
class Connection {
  private nextId = 1n;
  private waiting = new Map<bigint, { resolve(f: Frame): void; reject(e: Error): void }>();
  constructor(
    private readonly ws: WebSocket,
    private readonly push: (f: Frame) => void,
    onClose: (code: number, reason: string) => void,
  ) {
    ws.binaryType = "arraybuffer";
    ws.onmessage = (ev) => {
      if (!(ev.data instanceof ArrayBuffer)) return;
      let f: Frame;
      try {
        f = decodeFrame(new Uint8Array(ev.data));
      } catch {
        return; // A frame in another spelling is not read.
      }
      const w = this.waiting.get(f.id);
      if (f.id !== 0n && w) {
        this.waiting.delete(f.id);
        if (f.type === FrameType.Error) {
          const e = errorOf(f);
          w.reject(new ServerError(e.code, e.message));
        } else w.resolve(f);
      } else this.push(f);
    };
    ws.onclose = (ev) => {
      for (const w of this.waiting.values()) w.reject(new ServerError("Closed", "the connection closed"));
      this.waiting.clear();
      onClose(ev.code, ev.reason);
    };
  }

  static open(url: string, push: (f: Frame) => void, onClose: (code: number, reason: string) => void): Promise<Connection> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      let settled = false;
      ws.onopen = () => {
        settled = true;
        resolve(new Connection(ws, push, onClose));
      };
      ws.onclose = () => {
        if (!settled) reject(new ServerError("Unreachable", "the server cannot be reached"));
      };
    });
  }

  request(type: number, fields: Parameters<typeof encodeFrame>[2]): Promise<Frame> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new ServerError("Timeout", "the server did not answer"));
      }, REQUEST_TIMEOUT_MS);
      this.waiting.set(id, {
        resolve: (f) => (clearTimeout(timer), resolve(f)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      this.ws.send(encodeFrame(type, id, fields));
    });
  }

  close(): void {
    this.ws.close(1000);
  }
}

export function storeName(): string {
  return `chatify:${location.host}`;
}

export class Client {
  private conn: Connection | null = null;
  private stopped = false;
  private backoff = 1000;
  private queue: Promise<unknown> = Promise.resolve();
  private receiptsDue = new Map<string, { from: Address; conv: Bytes; timer: ReturnType<typeof setTimeout> }>();
  /** The sequence number below which this page's lifetime sends (§7.1's floor). */
  private floors = new Map<string, bigint>();
  status: Status = "connecting";

  private constructor(
    readonly store: Store,
    readonly account: Account,
    private device: Device,
    private token: Bytes,
    private readonly url: string,
    private readonly events: Events,
  ) {}

  // ------------------------------------------------------------ sign-up and sign-in

  /** Opens the client this browser holds for the server, if any. */
  static async resume(url: string, events: Events): Promise<Client | null> {
    const store = await Store.open(storeName());
    const account = await store.get<Account>("account");
    const device = await store.get<Device>("device");
    const token = await store.get<Bytes>("token");
    if (!account || !device || !token) {
      store.close();
      return null;
    }
    await Client.interrupted(store);
    const c = new Client(store, account, device, token, url, events);
    c.start();
    return c;
  }

  /**
   * Sends the page closed in the middle of: some devices may have it (the
   * server may have stored it), and no receipt is awaited for it, so the
   * user is told its fate is unknown rather than shown "sending" forever.
   */
  private static async interrupted(store: Store): Promise<void> {
    for (const k of await store.keys("sending:")) {
      const m = await store.message(k.slice("sending:".length));
      const fixed = m ? [{ ...m, state: "interrupted" as const }] : [];
      await store.commit([], fixed, [k]);
    }
  }

  /**
   * Registers (when `register`) or logs in, then makes this browser the
   * account's device `device` with a new identity when it holds none.
   */
  static async signIn(url: string, user: string, password: string, device: number, register: boolean, events: Events): Promise<Client> {
    const conn = await Connection.open(url, () => {}, () => {});
    try {
      if (register) await conn.request(FrameType.Register, [[0, user], [1, password]]);
      const ok = await conn.request(FrameType.Login, [[0, user], [1, password], [2, device]]);
      const token = asBytes(ok.body.get(0), "token");
      let store = await Store.open(storeName());
      const held = await store.get<Account>("account");
      let keys = await store.get<Device>("device");
      if (!keys || !held || held.user !== user || held.device !== device) {
        // Another account's (or another device's) keys and messages are not kept beside this one's.
        store.close();
        await Store.wipe(storeName());
        store = await Store.open(storeName());
        keys = await newDevice(await ed25519Generate(rng), await x25519Generate(rng), rng);
        await addOneTimePrekeys(keys, PREKEYS_PER_PUBLISH, rng);
      }
      const account = { user: asText(ok.body.get(2), "user", 64), device: asUint(ok.body.get(3), "device") };
      await store.commit([
        ["account", account],
        ["device", keys],
        ["token", token],
        ["published", false],
      ]);
      const c = new Client(store, account, keys, token, url, events);
      c.start();
      return c;
    } finally {
      conn.close();
    }
  }

  /** Signs this device out on the server and forgets its token (keys and messages stay). */
  async logout(): Promise<void> {
    this.stopped = true;
    try {
      await this.conn?.request(FrameType.Logout, []);
    } catch {
      // Offline: the token is forgotten here all the same.
    }
    await this.store.commit([], [], ["token"]);
    this.conn?.close();
    this.store.close();
  }

  // ------------------------------------------------------------ the connection

  private start(): void {
    void this.connect();
    const timer = setInterval(() => {
      if (this.stopped) clearInterval(timer);
      else void this.serial(async () => (await this.reportGaps(), await this.askAgain())).catch(() => {});
    }, 5000);
  }

  /**
   * Tells the user, once, of messages still missing a grace period after
   * their gap opened (§7.1): what a later message showed was sent and never
   * came. A gap remembered past the 256 kept is reported at once.
   */
  private async reportGaps(): Promise<void> {
    const now = Date.now();
    if (!this.gapKeys) {
      // Once a page's life: afterwards a gap's key is added as it opens.
      this.gapKeys = new Set();
      for (const rk of await this.store.keys("recv:")) if ((await this.store.get<RecvState>(rk))?.report?.length) this.gapKeys.add(rk);
    }
    for (const rk of [...this.gapKeys]) {
      const st = await this.store.get<RecvState>(rk);
      if (!st?.report?.length) {
        this.gapKeys.delete(rk);
        continue;
      }
      const due = st.report.filter(([, , at], i) => now - at >= GAP_GRACE_MS || st.report!.length - i > 256);
      if (due.length === 0) continue;
      let missing = 0n;
      for (const [a, b] of due) {
        for (const [x, y] of st.gaps) {
          const lo = a > x ? a : x;
          const hi = b < y ? b : y;
          if (hi > lo) missing += hi - lo;
        }
      }
      st.report = st.report.filter((r) => !due.includes(r));
      const [, , user, device] = rk.split(":");
      const records: MessageRecord[] = [];
      const kv: Array<[string, unknown]> = [[rk, st]];
      if (missing > 0n) {
        const n = Number(missing);
        records.push({
          key: `missing:${rk}:${now}`,
          peer: user,
          dir: "in",
          text: "",
          at: now,
          warning: `${n} message${n === 1 ? "" : "s"} from ${user} (device ${device}) ${n === 1 ? "is" : "are"} missing: sent, and not delivered to this browser.`,
        });
        const conv0 = await this.store.get<{ unread: number }>(`conv:${user}`);
        kv.push([`conv:${user}`, { peer: user, unread: (conv0?.unread ?? 0) + 1, last: now }]);
      }
      await this.store.commit(kv, records);
      if (missing > 0n) this.events.changed(user);
    }
  }

  private setStatus(s: Status, detail: string): void {
    this.status = s;
    this.events.status(s, detail);
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    this.setStatus("connecting", "Connecting…");
    try {
      this.conn = await Connection.open(this.url, (f) => this.onPush(f), (code, reason) => this.onClose(code, reason));
      await this.conn.request(FrameType.Authenticate, [[0, this.token]]);
      this.backoff = 1000;
      this.setStatus("online", "Connected");
      if (!(await this.store.get<boolean>("published"))) await this.publish(true);
    } catch (e) {
      if (e instanceof ServerError && e.code === "InvalidToken") {
        this.stopped = true;
        await this.store.commit([], [], ["token"]);
        this.setStatus("signed-out", "Your session on the server has ended. Log in again.");
        this.conn?.close();
        return;
      }
      this.conn?.close();
      this.conn = null;
      const refused = e instanceof ServerError && !["Closed", "Timeout", "Unreachable", "Offline"].includes(e.code);
      this.retryLater(refused ? `The server refused this device (${(e as ServerError).code}: ${e.message}).` : undefined);
    }
  }

  private retryLater(why = "The server cannot be reached."): void {
    if (this.stopped) return;
    const wait = this.backoff;
    this.backoff = Math.min(this.backoff * 2, 10000);
    this.setStatus("offline", `${why} Retrying in ${Math.round(wait / 1000)} s…`);
    setTimeout(() => void this.connect(), wait);
  }

  private onClose(code: number, reason: string): void {
    this.conn = null;
    if (this.stopped) return;
    if (code === 4000) {
      this.stopped = true;
      this.setStatus("displaced", "This account's device connected elsewhere (another tab or window). Reload to take it back.");
      return;
    }
    void reason;
    this.retryLater();
  }

  private request(type: number, fields: Parameters<typeof encodeFrame>[2]): Promise<Frame> {
    if (!this.conn) return Promise.reject(new ServerError("Offline", "not connected to the server"));
    return this.conn.request(type, fields);
  }

  /** Runs `f` after every earlier state change (one writer at a time). */
  private serial<T>(f: () => Promise<T>): Promise<T> {
    const run = this.queue.then(f, f);
    this.queue = run.catch(() => {});
    return run;
  }

  private async publish(all: boolean, fresh: Array<{ id: number; pair: { pub: Bytes } }> = []): Promise<void> {
    const otks = (all ? this.device.oneTimePrekeys : fresh).map((o) => encodeOneTimePrekey({ id: o.id, publicKey: o.pair.pub }));
    await this.request(FrameType.PublishKeys, [
      [0, encodeDeviceKeys(deviceKeys(this.device))],
      [1, encodeSignedPrekey(currentSignedPrekey(this.device))],
      [2, otks],
    ]);
    if (all) await this.store.commit([["published", true]]);
  }

  private onPush(f: Frame): void {
    if (f.type === FrameType.Deliver) void this.serial(() => this.onDeliver(f)).catch(() => {});
    else if (f.type === FrameType.PrekeysLow) void this.serial(() => this.replenish()).catch(() => {});
  }

  private async replenish(): Promise<void> {
    const before = this.device.oneTimePrekeys.length;
    const next = { ...this.device, oneTimePrekeys: this.device.oneTimePrekeys.slice() };
    await addOneTimePrekeys(next, PREKEYS_PER_PUBLISH, rng);
    await this.store.commit([["device", next]]);
    this.device = next;
    await this.publish(false, next.oneTimePrekeys.slice(before));
  }

  // ------------------------------------------------------------ identities

  me(): PublicIdentity {
    return publicIdentity(this.device);
  }

  async pin(user: string): Promise<Pin | undefined> {
    return this.store.get<Pin>(`pin:${user}`);
  }

  /** The safety number with a peer's pinned identity, or with the changed one awaiting confirmation. */
  async safetyNumber(user: string): Promise<string | null> {
    const p = await this.pin(user);
    if (!p) return null;
    return safetyNumber(this.me(), p.changed ?? p.identity);
  }

  /** The user compared the number: the shown identity becomes the pinned, verified one. */
  async confirmIdentity(user: string): Promise<void> {
    await this.serial(async () => {
      const p = await this.pin(user);
      if (!p) return;
      await this.store.commit([[`pin:${user}`, { identity: p.changed ?? p.identity, verified: true }]]);
    });
    this.events.changed(user);
  }

  /** Pins on first use; a different identity is recorded as a change. Returns whether it is the pinned one. */
  private async judge(user: string, id: PublicIdentity, kv: Array<[string, unknown]>): Promise<boolean> {
    const p = await this.pin(user);
    if (!p) {
      kv.push([`pin:${user}`, { identity: id, verified: false }]);
      return true;
    }
    if (sameId(p.identity, id)) return true;
    if (!p.changed || !sameId(p.changed, id)) kv.push([`pin:${user}`, { ...p, changed: id }]);
    return false;
  }

  // ------------------------------------------------------------ conversations

  async conversations(): Promise<Array<{ peer: string; unread: number; last: number }>> {
    const keys = await this.store.keys("conv:");
    const out = [];
    for (const k of keys) out.push((await this.store.get<{ peer: string; unread: number; last: number }>(k))!);
    return out.sort((a, b) => b.last - a.last);
  }

  async openConversation(peer: string): Promise<void> {
    const c = await this.store.get<{ peer: string; unread: number; last: number }>(`conv:${peer}`);
    await this.store.commit([[`conv:${peer}`, { peer, unread: 0, last: c?.last ?? Date.now() }]]);
    this.events.changed(null);
  }

  /** Marks a conversation the user is looking at as read, without an event. */
  async markRead(peer: string): Promise<void> {
    const c = await this.store.get<{ peer: string; unread: number; last: number }>(`conv:${peer}`);
    if (c && c.unread > 0) await this.store.commit([[`conv:${peer}`, { ...c, unread: 0 }]]);
  }

  messages(peer: string): Promise<MessageRecord[]> {
    return this.store.messages(peer);
  }

  // ------------------------------------------------------------ sending (§7.1, §12)

  /** Sends `text` to every device of `peer`. Throws when the peer's identity changed and is not confirmed. */
  async send(peer: string, text: string): Promise<void> {
    const body = utf8(text);
    if (body.length > 65536 - 64 - 64) throw new Error("The message is too long.");
    if (!/^[a-z0-9][a-z0-9._-]{0,63}$/.test(peer)) throw new Error("That is not a user name.");
    if (peer === this.account.user) throw new Error("This client does not send to your own account's devices.");
    const pin = await this.pin(peer);
    if (pin?.changed) throw new Error(`${peer}'s safety number changed: compare it and confirm before sending.`);
    const devices = asArray((await this.request(FrameType.FetchDevices, [[0, peer]])).body.get(1), "devices").map((d) => asUint(d, "device"));
    if (devices.length === 0) throw new Error(`${peer} has no device to send to.`);
    await this.serial(() => this.sendTo(peer, devices, body));
  }

  private async sendTo(peer: string, devices: number[], body: Bytes): Promise<void> {
    const conv = await conversationId(this.account.user, peer);
    const convHex = hex(conv);
    const seqRec = (await this.store.get<bigint>(`seq:${convHex}`)) ?? 0n;
    if (!this.floors.has(convHex)) this.floors.set(convHex, seqRec);
    const messageId = random16();
    const record: MessageRecord = {
      key: `out:${hex(messageId)}`,
      peer,
      dir: "out",
      text: fromUtf8(body),
      at: Date.now(),
      state: "sending",
      awaiting: [],
      seq: seqRec.toString(),
      floor: this.floors.get(convHex)!.toString(),
      sentAt: Date.now().toString(),
    };
    const content = encodeContent({
      messageId,
      seq: seqRec,
      floor: this.floors.get(convHex)!,
      sentAtMs: BigInt(record.sentAt!),
      body,
    });
    const conv0 = await this.store.get<{ unread: number }>(`conv:${peer}`);
    await this.store.commit(
      [
        [`seq:${convHex}`, seqRec + 1n],
        [`conv:${peer}`, { peer, unread: conv0?.unread ?? 0, last: record.at }],
        // Removed with the send's last write: found at the next start, it
        // says the page closed in between.
        [`sending:${record.key}`, true],
      ],
      [record],
    );
    this.events.changed(peer);
    let sent = 0;
    // What the sends leave to remember, written once with the record.
    const ends: MessageRecord[] = [];
    const endsKv: Array<[string, unknown]> = [];
    for (const device of devices) {
      const to = { user: peer, device };
      try {
        const envelope = await this.seal(to, conv, content);
        await this.request(FrameType.Send, [[0, encodeAddress(to)], [1, conv], [2, messageId], [3, envelope]]);
        record.awaiting!.push(addrKey(to));
        const pending = (await this.store.get<Array<[string, string]>>(`pending:${addrKey(to)}`)) ?? [];
        pending.push([record.key, seqRec.toString()]);
        // At most 1 024 awaited per device (§7.2): the oldest past it are
        // told as not tracked, not dropped in silence.
        for (const [key] of pending.splice(0, Math.max(0, pending.length - 1024))) {
          const old = await this.store.message(key);
          if (old && old.state === "sent") ends.push({ ...old, warning: "no receipt is awaited any more (over 1 024 awaited): its delivery is unknown" });
        }
        endsKv.push([`pending:${addrKey(to)}`, pending]);
        sent++;
      } catch (e) {
        record.warning = `not sent to ${addrKey(to)}: ${(e as Error).message}`;
        if (e instanceof IdentityChanged) break;
      }
    }
    record.state = sent > 0 ? "sent" : "failed";
    await this.store.commit(endsKv, [record, ...ends], [`sending:${record.key}`]);
    this.events.changed(peer);
  }

  /** Encrypts `content` for one device, starting a session from its bundle if none; saves before returning. */
  private async seal(to: Address, conv: Bytes, content: Bytes, fresh = false): Promise<Bytes> {
    const kv: Array<[string, unknown]> = [];
    let sessions = (await this.store.get<Session[]>(`session:${addrKey(to)}`)) ?? [];
    if (sessions.length === 0 || fresh) {
      const f = await this.request(FrameType.FetchBundle, [[0, encodeAddress(to)]]);
      const bundle = decodeBundle(f.body.get(0));
      if (bundle.user !== to.user || bundle.device !== to.device) throw new Error("the server answered for another device");
      await verifyBundle(bundle);
      const pinned = await this.judge(to.user, bundle.identity, kv);
      if (!pinned) {
        await this.store.commit(kv);
        this.events.changed(to.user);
        throw new IdentityChanged(`${to.user}'s safety number changed: compare it and confirm before sending.`);
      }
      sessions = [await initiate(this.device, bundle, rng), ...sessions].slice(0, SESSIONS_PER_PEER);
    }
    const { session, envelope } = await encrypt(sessions[0], conv, content, rng);
    kv.push([`session:${addrKey(to)}`, [session, ...sessions.slice(1)]]);
    await this.store.commit(kv);
    return envelope;
  }

  // ------------------------------------------------------------ receiving (§5, §6.3, §7.1–§7.2)

  private async onDeliver(f: Frame): Promise<void> {
    const seq = asU64(f.body.get(0), "seq");
    const from = decodeAddress(f.body.get(1));
    const conv = asBytes(f.body.get(2), "conversation", 16);
    const messageId = asBytes(f.body.get(3), "message id", 16);
    const kv: Array<[string, unknown]> = [];
    const records: MessageRecord[] = [];
    let retry: Bytes[] | undefined;
    const raw = asBytes(f.body.get(5), "envelope");
    try {
      retry = await this.open(from, conv, messageId, raw, kv, records);
    } catch (e) {
      if (!(e instanceof ProtocolError && e.kind === "Duplicate")) {
        const ask = e instanceof ProtocolError && (await this.mayAskAgain(from, raw, e));
        if (ask) this.queueAsk(from, conv, messageId);
        records.push({
          key: `bad:${hex(messageId)}:${addrKey(from)}`,
          peer: from.user,
          dir: "in",
          text: "",
          at: Date.now(),
          warning: `A message from ${addrKey(from)} could not be opened (${e instanceof ProtocolError ? e.kind : "malformed"}); ${
            ask ? "it was asked for again." : "it was rejected."
          }`,
        });
      }
    }
    await this.store.commit(kv, records);
    const n = seq <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(seq) : seq;
    await this.request(FrameType.Ack, [[0, [n]]]).catch(() => {});
    if (retry) await this.sendAgain(from, conv, retry);
    await this.askAgain();
    this.events.changed(from.user);
  }

  /**
   * §7.3: a setup message that does not open (its one-time prekey is gone),
   * or any message from a device this one holds no session with (a restored
   * state), is asked for again; a failure on a session that exists is only
   * rejected (that is tampering, not loss).
   */
  private async mayAskAgain(from: Address, raw: Bytes, e: ProtocolError): Promise<boolean> {
    if (e.kind !== "Decrypt" && e.kind !== "UnknownPrekey") return false;
    if (from.user === this.account.user) return false;
    let setup = false;
    try {
      setup = decodeEnvelope(raw).prekey !== null;
    } catch {
      return false;
    }
    const sessions = (await this.store.get<Session[]>(`session:${addrKey(from)}`)) ?? [];
    return setup || sessions.length === 0;
  }

  /** The receive states with gaps still to report; null until first read. */
  private gapKeys: Set<string> | null = null;

  private asks = new Map<string, { from: Address; conv: Bytes; ids: Bytes[]; last: number }>();

  private queueAsk(from: Address, conv: Bytes, id: Bytes): void {
    const k = addrKey(from);
    const a = this.asks.get(k) ?? { from, conv, ids: [], last: 0 };
    if (!a.ids.some((x) => equal(x, id))) a.ids.push(id);
    this.asks.set(k, a);
  }

  /**
   * Sends the retry requests that are due, each on a new session from the
   * sender's current bundle (the one it used is the one that failed), at
   * most one per sender device every 10 s and 64 ids at a time; nothing to
   * an identity that is not the one pinned for the user.
   */
  private async askAgain(): Promise<void> {
    const now = Date.now();
    for (const a of this.asks.values()) {
      if (a.ids.length === 0 || now - a.last < 10000) continue;
      const ids = a.ids.splice(0, MAX_RETRY_IDS);
      a.last = now;
      const messageId = random16();
      const content = encodeContent({ messageId, seq: 0n, floor: 0n, sentAtMs: BigInt(now), body: new Uint8Array(0), retry: ids });
      try {
        const envelope = await this.seal(a.from, a.conv, content, true);
        await this.request(FrameType.Send, [[0, encodeAddress(a.from)], [1, a.conv], [2, messageId], [3, envelope]]);
      } catch {
        // Not trusted, no keys, or offline: those messages stay rejected.
      }
    }
  }

  /**
   * §7.3: the recipient device could not open these messages (it lost the
   * session, or the one-time prekey) and asks for them on a new session.
   * Those still awaiting its receipt go again, unchanged, on the session
   * the request came on (now the active one); ids naming nothing awaited
   * are ignored, so a replayed request repeats nothing.
   */
  private async sendAgain(from: Address, conv: Bytes, ids: Bytes[]): Promise<void> {
    const pending = (await this.store.get<Array<[string, string]>>(`pending:${addrKey(from)}`)) ?? [];
    for (const id of ids) {
      const key = `out:${hex(id)}`;
      if (!pending.some(([k]) => k === key)) continue;
      const m = await this.store.message(key);
      if (!m || m.seq === undefined || m.floor === undefined || m.sentAt === undefined) continue;
      const content = encodeContent({
        messageId: id,
        seq: BigInt(m.seq),
        floor: BigInt(m.floor),
        sentAtMs: BigInt(m.sentAt),
        body: utf8(m.text),
      });
      try {
        const envelope = await this.seal(from, conv, content);
        await this.request(FrameType.Send, [[0, encodeAddress(from)], [1, conv], [2, id], [3, envelope]]);
        m.warning = `sent again to ${addrKey(from)}, which could not open it`;
      } catch (e) {
        m.warning = `${addrKey(from)} asked for it again and it could not be sent: ${(e as Error).message}`;
      }
      await this.store.commit([], [m]);
    }
  }

  /** Opens one delivery into `kv` and `records`; returns the ids a retry request asks for. */
  private async open(
    from: Address,
    conv: Bytes,
    messageId: Bytes,
    raw: Bytes,
    kv: Array<[string, unknown]>,
    records: MessageRecord[],
  ): Promise<Bytes[] | undefined> {
    if (raw[0] === 0x01) throw new ProtocolError("State", "a group message (this client is in no group)");
    const env = decodeEnvelope(raw);
    if (!equal(env.conversation, conv)) throw new ProtocolError("BadEnvelope", "conversation differs from the frame's");
    const sessions = (await this.store.get<Session[]>(`session:${addrKey(from)}`)) ?? [];
    let session: Session | null = null;
    let plaintext: Bytes | null = null;
    let rest = sessions;
    const existing = env.prekey ? sessions.find((s) => equal(s.baseKey, env.prekey!.baseKey)) : undefined;
    if (env.prekey && !existing) {
      const r = await accept(this.device, env);
      this.device = r.device;
      kv.push(["device", r.device]);
      session = r.session;
      plaintext = r.plaintext;
    } else {
      let last: unknown = new ProtocolError("Decrypt", "no session with this device");
      for (const s of existing ? [existing] : sessions) {
        try {
          ({ session, plaintext } = await decrypt(s, env));
          rest = sessions.filter((x) => x !== s);
          break;
        } catch (e) {
          last = e;
        }
      }
      if (!session || !plaintext) throw last;
    }
    kv.push([`session:${addrKey(from)}`, [session, ...rest].slice(0, SESSIONS_PER_PEER)]);
    const content = decodeContent(plaintext);
    if (!equal(content.messageId, messageId)) throw new ProtocolError("BadEnvelope", "message id differs from the one delivered");
    const genuine = await this.judge(from.user, session.remote, kv);
    if (isControl(content)) {
      // A receipt or a retry request counts only from the identity pinned for the user (§7.3).
      if (content.receipt && genuine) await this.onReceipt(from, content, kv, records);
      return content.retry && genuine ? content.retry : undefined;
    }
    await this.onMessage(from, conv, content, session.remote, genuine, kv, records);
    return undefined;
  }

  private async onMessage(
    from: Address,
    conv: Bytes,
    c: Content,
    id: PublicIdentity,
    genuine: boolean,
    kv: Array<[string, unknown]>,
    records: MessageRecord[],
  ): Promise<void> {
    const key = `in:${from.user}:${hex(c.messageId)}`;
    if (await this.store.message(key)) return; // A copy already read (another device of the sender's, or a redelivery).
    const rk = `recv:${hex(conv)}:${addrKey(from)}:${hex(concat(id.signingKey, id.identityKey))}`;
    const st = (await this.store.get<RecvState>(rk)) ?? { next: 0n, gaps: [] };
    let late = false;
    if (c.seq >= st.next) {
      const start = st.next > c.floor ? st.next : c.floor;
      if (c.floor > st.next) st.gaps.push([st.next, c.floor]);
      if (c.seq > start) {
        st.gaps.push([start, c.seq]);
        (st.report ??= []).push([start, c.seq, Date.now()]);
        this.gapKeys?.add(rk);
      }
      st.next = c.seq + 1n;
      st.gaps = st.gaps.slice(-256);
    } else {
      const g = st.gaps.findIndex(([a, b]) => a <= c.seq && c.seq < b);
      if (g < 0) return; // A duplicate by its sequence number.
      const [a, b] = st.gaps[g];
      st.gaps.splice(g, 1, ...([[a, c.seq], [c.seq + 1n, b]] as Array<[bigint, bigint]>).filter(([x, y]) => x < y));
      late = true;
    }
    kv.push([rk, st]);
    const text = c.file !== undefined ? `[a file was sent: this client does not receive files] ${fromUtf8(c.body)}` : fromUtf8(c.body);
    records.push({
      key,
      peer: from.user,
      dir: "in",
      text,
      at: Date.now(),
      late,
      warning: genuine ? undefined : `Sent from an identity that is not ${from.user}'s pinned one: compare safety numbers.`,
    });
    const conv0 = await this.store.get<{ unread: number }>(`conv:${from.user}`);
    kv.push([`conv:${from.user}`, { peer: from.user, unread: (conv0?.unread ?? 0) + 1, last: Date.now() }]);
    this.receiptLater(from, conv);
  }

  /** Marks what a receipt covers; written in the delivery's own transaction. */
  private async onReceipt(from: Address, c: Content, kv: Array<[string, unknown]>, records: MessageRecord[]): Promise<void> {
    const pk = `pending:${addrKey(from)}`;
    const pending = (await this.store.get<Array<[string, string]>>(pk)) ?? [];
    const left: Array<[string, string]> = [];
    for (const [key, seq] of pending) {
      if (!covers(c.receipt!, BigInt(seq))) {
        left.push([key, seq]);
        continue;
      }
      const m = records.find((r) => r.key === key) ?? (await this.store.message(key));
      if (!m) continue;
      m.awaiting = (m.awaiting ?? []).filter((d) => d !== addrKey(from));
      if (m.awaiting.length === 0 && m.state === "sent") m.state = "delivered";
      if (!records.includes(m)) records.push(m);
    }
    kv.push([pk, left]);
  }

  /** §7.2: one receipt covers what arrives within 200 ms. */
  private receiptLater(from: Address, conv: Bytes): void {
    const k = addrKey(from);
    if (this.receiptsDue.has(k)) return;
    const timer = setTimeout(() => {
      this.receiptsDue.delete(k);
      void this.serial(() => this.sendReceipt(from, conv)).catch(() => {});
    }, RECEIPT_DELAY_MS);
    this.receiptsDue.set(k, { from, conv, timer });
  }

  private async sendReceipt(from: Address, conv: Bytes): Promise<void> {
    const sessions = (await this.store.get<Session[]>(`session:${addrKey(from)}`)) ?? [];
    if (sessions.length === 0) return;
    const id = sessions[0].remote;
    const st = await this.store.get<RecvState>(`recv:${hex(conv)}:${addrKey(from)}:${hex(concat(id.signingKey, id.identityKey))}`);
    if (!st) return;
    const messageId = random16();
    const content = encodeContent({
      messageId,
      seq: 0n,
      floor: 0n,
      sentAtMs: BigInt(Date.now()),
      body: new Uint8Array(0),
      receipt: { receivedBelow: st.next, missing: st.gaps, knownFrom: st.gaps.length === 256 ? st.gaps[0][0] : 0n },
    });
    const envelope = await this.seal(from, conv, content);
    await this.request(FrameType.Send, [[0, encodeAddress(from)], [1, conv], [2, messageId], [3, envelope]]);
  }
}

export class IdentityChanged extends Error {}
