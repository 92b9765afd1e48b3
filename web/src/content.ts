// Message content (§7.1), receipts (§7.2), retry requests (§7.3), safety
// numbers (§12) and conversation ids (§8).
import { type Bytes, be32, concat, utf8 } from "./bytes.js";
import { type CborMap, type Item, CborError, asArray, asBytes, asMap, decodeStrict, encode, map } from "./cbor.js";
import { sha256 } from "./crypto.js";
import { LABELS, MAX_PLAINTEXT_LEN, type PublicIdentity } from "./session.js";

export const MAX_BODY_LEN = MAX_PLAINTEXT_LEN - 64;
export const MAX_RECEIPT_GAPS = 256;
export const MAX_RETRY_IDS = 64;

export interface Receipt {
  receivedBelow: bigint;
  missing: Array<[bigint, bigint]>;
  knownFrom: bigint;
}

export interface Content {
  messageId: Bytes;
  seq: bigint;
  floor: bigint;
  sentAtMs: bigint;
  body: Bytes;
  receipt?: Receipt;
  retry?: Bytes[];
  /** A file reference (§15.1), kept as it came: this client shows that a file was sent. */
  file?: Item;
  /** A group control (§16.2): this client is not in groups and ignores it. */
  group?: Item;
}

const u = (n: bigint): number | bigint => (n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n);

export function encodeContent(c: Content): Bytes {
  const receipt = c.receipt
    ? map([
        [0, u(c.receipt.receivedBelow)],
        [1, c.receipt.missing.map(([f, t]) => [u(f), u(t)])],
        [2, u(c.receipt.knownFrom)],
      ])
    : undefined;
  const retry = c.retry ? map([[0, c.retry]]) : undefined;
  return encode(
    map([
      [0, c.messageId],
      [1, u(c.seq)],
      [2, u(c.floor)],
      [3, u(c.sentAtMs)],
      [4, c.body],
      [5, receipt],
      [6, retry],
      [7, c.file],
      [8, c.group],
    ]),
  );
}

function uint(item: Item | undefined, what: string): bigint {
  if (typeof item === "number" && Number.isInteger(item) && item >= 0) return BigInt(item);
  if (typeof item === "bigint" && item >= 0n && item < 1n << 64n) return item;
  throw new CborError(`${what}: not an unsigned integer`);
}

function decodeReceipt(m: CborMap): Receipt {
  if ([...m.keys()].some((k) => k > 2)) throw new CborError("receipt: unknown key");
  const r: Receipt = {
    receivedBelow: uint(m.get(0), "received_below"),
    missing: asArray(m.get(1), "missing").map((x) => {
      const pair = asArray(x, "range");
      if (pair.length !== 2) throw new CborError("range: not two numbers");
      return [uint(pair[0], "from"), uint(pair[1], "to")] as [bigint, bigint];
    }),
    knownFrom: uint(m.get(2), "known_from"),
  };
  let floor = r.knownFrom;
  const ok =
    r.knownFrom <= r.receivedBelow &&
    r.missing.length <= MAX_RECEIPT_GAPS &&
    r.missing.every(([f, t]) => {
      const fine = f >= floor && f < t && t <= r.receivedBelow;
      floor = t;
      return fine;
    });
  if (!ok) throw new CborError("malformed receipt");
  return r;
}

/** Decodes content in its one spelling and checks §7.1's rules, or throws. */
export function decodeContent(data: Uint8Array): Content {
  if (data.length > MAX_PLAINTEXT_LEN) throw new CborError("content too large");
  const m = asMap(decodeStrict(data), "content");
  if ([...m.keys()].some((k) => k > 8)) throw new CborError("content: unknown key");
  const c: Content = {
    messageId: asBytes(m.get(0), "message id", 16),
    seq: uint(m.get(1), "seq"),
    floor: uint(m.get(2), "floor"),
    sentAtMs: uint(m.get(3), "sent_at_ms"),
    body: asBytes(m.get(4), "body"),
  };
  if (m.has(5)) c.receipt = decodeReceipt(asMap(m.get(5), "receipt"));
  if (m.has(6)) {
    const r = asMap(m.get(6), "retry");
    c.retry = asArray(r.get(0), "message ids").map((x) => asBytes(x, "message id", 16));
    if (c.retry.length === 0 || c.retry.length > MAX_RETRY_IDS || r.size !== 1) throw new CborError("malformed retry request");
  }
  if (m.has(7)) c.file = asMap(m.get(7), "file");
  if (m.has(8)) c.group = asMap(m.get(8), "group");
  const controls = [c.receipt, c.retry, c.group].filter((x) => x !== undefined).length;
  if (controls > 1) throw new CborError("more than one control");
  if (controls === 1 && (c.body.length > 0 || c.seq !== 0n || c.floor !== 0n || c.file !== undefined)) {
    throw new CborError("malformed control content");
  }
  if (c.body.length > MAX_BODY_LEN) throw new CborError("body too long");
  return c;
}

export const isControl = (c: Content): boolean => c.receipt !== undefined || c.retry !== undefined || c.group !== undefined;

/** Whether a receipt covers `seq`: received, or skipped by the receiver. */
export function covers(r: Receipt, seq: bigint): boolean {
  return r.knownFrom <= seq && seq < r.receivedBelow && !r.missing.some(([f, t]) => f <= seq && seq < t);
}

// ---------------------------------------------------------------- safety numbers (§12)

async function half(id: PublicIdentity): Promise<string> {
  const h = await sha256(LABELS.safetyNumber, id.signingKey, id.identityKey);
  let out = "";
  for (let i = 0; i < 6; i++) {
    let n = 0n;
    for (const b of h.subarray(5 * i, 5 * i + 5)) n = (n << 8n) | BigInt(b);
    out += (n % 100000n).toString().padStart(5, "0");
  }
  return out;
}

/** The 60 digits of two identities' safety number. */
export async function safetyNumber(a: PublicIdentity, b: PublicIdentity): Promise<string> {
  const [x, y] = [await half(a), await half(b)];
  return x <= y ? x + y : y + x;
}

/** 12 groups of 5 digits, four to a line. */
export function formatSafetyNumber(digits: string): string {
  const groups = digits.match(/.{5}/g) ?? [];
  const lines: string[] = [];
  for (let i = 0; i < groups.length; i += 4) lines.push(groups.slice(i, i + 4).join(" "));
  return lines.join("\n");
}

// ---------------------------------------------------------------- conversation ids (§8)

export async function conversationId(a: string, b: string): Promise<Bytes> {
  const [x, y] = [utf8(a), utf8(b)];
  const [first, second] = compareBytes(x, y) <= 0 ? [x, y] : [y, x];
  const h = await sha256(utf8("chatify/v1/conversation"), concat(be32(first.length), first, be32(second.length), second));
  return h.slice(0, 16);
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}
