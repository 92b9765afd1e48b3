// Keys, bundles, X3DH-style setup and the Double Ratchet (PROTOCOL §3–§8).
import { type Bytes, be32, bytes, concat, equal } from "./bytes.js";
import { type CborMap, type Item, CborError, asArray, asBytes, asMap, asUint, decodeStrict, encode, map } from "./cbor.js";
import {
  type DhPair,
  type Rng,
  type SignPair,
  CryptoError,
  aeadOpen,
  aeadSeal,
  dh,
  hkdf,
  hmac,
  isStrictPoint,
  label,
  sign,
  verify,
  x25519Generate,
} from "./crypto.js";

export const VERSION = 1;
export const MAX_SKIP = 1000;
export const MAX_SKIPPED_TOTAL = 2000;
export const MAX_PLAINTEXT_LEN = 65536;
export const MAX_ENVELOPE_LEN = 131072;

export const LABELS = {
  identityKey: label("chatify/v1/identity-key"),
  signedPrekey: label("chatify/v1/signed-prekey"),
  x3dh: label("chatify/v1/x3dh"),
  root: label("chatify/v1/root"),
  message: label("chatify/v1/message"),
  ad: label("chatify/v1/ad"),
  safetyNumber: label("chatify/v1/safety-number"),
};

export class ProtocolError extends Error {
  constructor(
    readonly kind:
      | "InvalidBundle"
      | "UnknownPrekey"
      | "ReplayedSetup"
      | "Duplicate"
      | "TooFarAhead"
      | "Decrypt"
      | "BadEnvelope"
      | "State",
    message?: string,
  ) {
    super(message ?? kind);
  }
}

// ---------------------------------------------------------------- keys (§3)

/** The public identity `ID = signing_key ‖ identity_key`. */
export interface PublicIdentity {
  signingKey: Bytes;
  identityKey: Bytes;
}

export const idBytes = (id: PublicIdentity): Bytes => concat(id.signingKey, id.identityKey);

export interface DeviceKeys extends PublicIdentity {
  identitySignature: Bytes;
}
export interface SignedPrekey {
  id: number;
  publicKey: Bytes;
  signature: Bytes;
}
export interface OneTimePrekey {
  id: number;
  publicKey: Bytes;
}
export interface Bundle {
  user: string;
  device: number;
  identity: DeviceKeys;
  signedPrekey: SignedPrekey;
  oneTimePrekey?: OneTimePrekey;
}

/** A device's secrets. Private keys are CryptoKeys (non-extractable outside tests). */
export interface Device {
  signing: SignPair;
  identity: DhPair;
  identitySignature: Bytes;
  nextPrekeyId: number;
  /** Oldest first, at most two; each with the base keys it accepted. */
  signedPrekeys: Array<{ id: number; pair: DhPair; signature: Bytes; seen: Bytes[] }>;
  oneTimePrekeys: Array<{ id: number; pair: DhPair }>;
}

export function publicIdentity(d: Device): PublicIdentity {
  return { signingKey: d.signing.pub, identityKey: d.identity.pub };
}

export async function newDevice(signing: SignPair, identity: DhPair, rng: Rng): Promise<Device> {
  const device: Device = {
    signing,
    identity,
    identitySignature: await sign(signing.priv, concat(LABELS.identityKey, identity.pub)),
    nextPrekeyId: 1,
    signedPrekeys: [],
    oneTimePrekeys: [],
  };
  await rotateSignedPrekey(device, rng);
  return device;
}

export async function rotateSignedPrekey(d: Device, rng: Rng): Promise<void> {
  const id = d.nextPrekeyId++;
  const pair = await x25519Generate(rng);
  const signature = await sign(d.signing.priv, concat(LABELS.signedPrekey, be32(id), pair.pub));
  d.signedPrekeys.push({ id, pair, signature, seen: [] });
  if (d.signedPrekeys.length > 2) d.signedPrekeys.shift();
}

export async function addOneTimePrekeys(d: Device, n: number, rng: Rng): Promise<OneTimePrekey[]> {
  const out: OneTimePrekey[] = [];
  for (let i = 0; i < n; i++) {
    const id = d.nextPrekeyId++;
    const pair = await x25519Generate(rng);
    d.oneTimePrekeys.push({ id, pair });
    out.push({ id, publicKey: pair.pub });
  }
  return out;
}

export function deviceKeys(d: Device): DeviceKeys {
  return { signingKey: d.signing.pub, identityKey: d.identity.pub, identitySignature: d.identitySignature };
}

export function currentSignedPrekey(d: Device): SignedPrekey {
  const s = d.signedPrekeys[d.signedPrekeys.length - 1];
  return { id: s.id, publicKey: s.pair.pub, signature: s.signature };
}

// ---------------------------------------------------------------- CBOR of keys (§9.3)

export const encodeDeviceKeys = (k: DeviceKeys): CborMap =>
  map([
    [0, k.signingKey],
    [1, k.identityKey],
    [2, k.identitySignature],
  ]);
export const encodeSignedPrekey = (s: SignedPrekey): CborMap =>
  map([
    [0, s.id],
    [1, s.publicKey],
    [2, s.signature],
  ]);
export const encodeOneTimePrekey = (o: OneTimePrekey): CborMap =>
  map([
    [0, o.id],
    [1, o.publicKey],
  ]);
export const encodeBundle = (b: Bundle): CborMap =>
  map([
    [0, b.user],
    [1, b.device],
    [2, encodeDeviceKeys(b.identity)],
    [3, encodeSignedPrekey(b.signedPrekey)],
    [4, b.oneTimePrekey ? encodeOneTimePrekey(b.oneTimePrekey) : undefined],
  ]);

const U32 = 0xffffffff;

export function decodeBundle(item: Item | undefined): Bundle {
  const m = asMap(item, "bundle");
  const ik = asMap(m.get(2), "identity");
  const spk = asMap(m.get(3), "signed prekey");
  const b: Bundle = {
    user: asText(m.get(0)),
    device: asUint(m.get(1), "device", U32),
    identity: {
      signingKey: asBytes(ik.get(0), "signing key", 32),
      identityKey: asBytes(ik.get(1), "identity key", 32),
      identitySignature: asBytes(ik.get(2), "identity signature", 64),
    },
    signedPrekey: {
      id: asUint(spk.get(0), "prekey id", U32),
      publicKey: asBytes(spk.get(1), "prekey", 32),
      signature: asBytes(spk.get(2), "prekey signature", 64),
    },
  };
  if (m.has(4)) {
    const o = asMap(m.get(4), "one-time prekey");
    b.oneTimePrekey = { id: asUint(o.get(0), "one-time prekey id", U32), publicKey: asBytes(o.get(1), "one-time prekey", 32) };
  }
  return b;
}

function asText(item: Item | undefined): string {
  if (typeof item !== "string") throw new CborError("not a text string");
  return item;
}

/** §4 steps 1–2; the pin check (step 3) is the client's. */
export async function verifyBundle(b: Bundle): Promise<void> {
  const id = b.identity;
  if (!(await verify(id.signingKey, concat(LABELS.identityKey, id.identityKey), id.identitySignature))) {
    throw new ProtocolError("InvalidBundle", "identity signature does not verify");
  }
  const spk = b.signedPrekey;
  if (!(await verify(id.signingKey, concat(LABELS.signedPrekey, be32(spk.id), spk.publicKey), spk.signature))) {
    throw new ProtocolError("InvalidBundle", "signed prekey signature does not verify");
  }
}

// ---------------------------------------------------------------- envelope (§8)

export interface PrekeyHeader {
  signingKey: Bytes;
  identityKey: Bytes;
  baseKey: Bytes;
  signedPrekeyId: number;
  oneTimePrekeyId?: number;
}
export interface Header {
  ratchetKey: Bytes;
  pn: number;
  n: number;
}
export interface Envelope {
  conversation: Bytes;
  prekey: PrekeyHeader | null;
  header: Header;
  ciphertext: Bytes;
}

const encodePrekey = (p: PrekeyHeader): CborMap =>
  map([
    [0, p.signingKey],
    [1, p.identityKey],
    [2, p.baseKey],
    [3, p.signedPrekeyId],
    [4, p.oneTimePrekeyId],
  ]);
const encodeHeader = (h: Header): CborMap =>
  map([
    [0, h.ratchetKey],
    [1, h.pn],
    [2, h.n],
  ]);

function envelopeAd(e: Omit<Envelope, "ciphertext">): Bytes {
  return encode([VERSION, e.conversation, e.prekey ? encodePrekey(e.prekey) : null, encodeHeader(e.header)]);
}

export function encodeEnvelope(e: Envelope): Bytes {
  return encode([VERSION, e.conversation, e.prekey ? encodePrekey(e.prekey) : null, encodeHeader(e.header), e.ciphertext]);
}

export function decodeEnvelope(data: Uint8Array): Envelope {
  if (data.length > MAX_ENVELOPE_LEN) throw new ProtocolError("BadEnvelope", "envelope too large");
  try {
    const a = asArray(decodeStrict(data), "envelope");
    if (a.length !== 5) throw new CborError("envelope: not 5 items");
    if (asUint(a[0], "version") !== VERSION) throw new CborError("envelope: unknown version");
    let prekey: PrekeyHeader | null = null;
    if (a[2] !== null) {
      const p = asMap(a[2], "prekey header");
      prekey = {
        signingKey: asBytes(p.get(0), "signing key", 32),
        identityKey: asBytes(p.get(1), "identity key", 32),
        baseKey: asBytes(p.get(2), "base key", 32),
        signedPrekeyId: asUint(p.get(3), "signed prekey id", U32),
      };
      if (p.has(4)) prekey.oneTimePrekeyId = asUint(p.get(4), "one-time prekey id", U32);
      if ([...p.keys()].some((k) => k > 4)) throw new CborError("prekey header: unknown key");
    }
    const h = asMap(a[3], "header");
    if (h.size !== 3) throw new CborError("header: not 3 fields");
    return {
      conversation: asBytes(a[1], "conversation", 16),
      prekey,
      header: { ratchetKey: asBytes(h.get(0), "ratchet key", 32), pn: asUint(h.get(1), "pn", U32), n: asUint(h.get(2), "n", U32) },
      ciphertext: asBytes(a[4], "ciphertext"),
    };
  } catch (e) {
    if (e instanceof CborError) throw new ProtocolError("BadEnvelope", e.message);
    throw e;
  }
}

// ---------------------------------------------------------------- padding (§7)

export function paddedLen(len: number): number {
  const x = Math.max(len + 1, 32);
  const e = 31 - Math.clz32(x);
  const s = 31 - Math.clz32(e) + 1;
  const z = e - s;
  const mask = 2 ** z - 1;
  return (x + mask) & ~mask;
}

export function pad(pt: Uint8Array): Bytes {
  const out = bytes(paddedLen(pt.length));
  out.set(pt);
  out[pt.length] = 0x80;
  return out;
}

export function unpad(p: Uint8Array): Bytes {
  let i = p.length - 1;
  while (i >= 0 && p[i] === 0) i--;
  if (i < 0 || p[i] !== 0x80 || paddedLen(i) !== p.length) throw new ProtocolError("Decrypt");
  return p.slice(0, i);
}

// ---------------------------------------------------------------- ratchet (§6)

export interface Chain {
  ck: Bytes;
  n: number;
}
export interface SkippedKey {
  dh: Bytes;
  n: number;
  mk: Bytes;
}

/** One session's state. Everything in it is replaced, never mutated in place. */
export interface Session {
  local: PublicIdentity;
  remote: PublicIdentity;
  baseKey: Bytes;
  /** The prekey header the initiator repeats until it hears from the peer. */
  pendingPrekey: PrekeyHeader | null;
  rk: Bytes;
  dhs: DhPair;
  dhr: Bytes | null;
  send: Chain | null;
  recv: Chain | null;
  pn: number;
  skipped: SkippedKey[];
}

async function kdfRk(rk: Uint8Array, dhOut: Uint8Array): Promise<[Bytes, Bytes]> {
  const okm = await hkdf(rk, dhOut, LABELS.root, 64);
  return [okm.slice(0, 32), okm.slice(32, 64)];
}

/** §6: KDF_CK, (message key, next chain key). */
export async function kdfCk(ck: Uint8Array): Promise<[Bytes, Bytes]> {
  return [await hmac(ck, Uint8Array.of(1)), await hmac(ck, Uint8Array.of(2))];
}

async function x3dhSecret(dhs: Bytes[], initiator: PublicIdentity, responder: PublicIdentity): Promise<Bytes> {
  const ikm = concat(new Uint8Array(32).fill(0xff), ...dhs);
  return hkdf(null, ikm, concat(LABELS.x3dh, idBytes(initiator), idBytes(responder)), 32);
}

/** §5, initiator: a session from a verified bundle. Draws the base key, then the first ratchet key. */
export async function initiate(d: Device, b: Bundle, rng: Rng): Promise<Session> {
  const base = await x25519Generate(rng);
  const spk = b.signedPrekey.publicKey;
  const parts = [await dh(d.identity.priv, spk), await dh(base.priv, b.identity.identityKey), await dh(base.priv, spk)];
  if (b.oneTimePrekey) parts.push(await dh(base.priv, b.oneTimePrekey.publicKey));
  const local = publicIdentity(d);
  const remote = { signingKey: b.identity.signingKey, identityKey: b.identity.identityKey };
  const sk = await x3dhSecret(parts, local, remote);
  const dhs = await x25519Generate(rng);
  const [rk, ck] = await kdfRk(sk, await dh(dhs.priv, spk));
  return {
    local,
    remote,
    baseKey: base.pub,
    pendingPrekey: {
      signingKey: local.signingKey,
      identityKey: local.identityKey,
      baseKey: base.pub,
      signedPrekeyId: b.signedPrekey.id,
      oneTimePrekeyId: b.oneTimePrekey?.id,
    },
    rk,
    dhs,
    dhr: spk,
    send: { ck, n: 0 },
    recv: null,
    pn: 0,
  skipped: [],
  };
}

function msgAd(sender: PublicIdentity, recipient: PublicIdentity, e: Omit<Envelope, "ciphertext">): Bytes {
  return concat(LABELS.ad, idBytes(sender), idBytes(recipient), envelopeAd(e));
}

/** §7: the AES-256-GCM key and nonce of a message key. */
export async function messageKeys(mk: Uint8Array): Promise<[Bytes, Bytes]> {
  const okm = await hkdf(null, mk, LABELS.message, 44);
  return [okm.slice(0, 32), okm.slice(32, 44)];
}

/** §6.2 and §7: returns the new state and the envelope. The caller saves the state before the envelope leaves (§13.1). */
export async function encrypt(
  s: Session,
  conversation: Uint8Array,
  plaintext: Uint8Array,
  rng: Rng,
): Promise<{ session: Session; envelope: Bytes }> {
  if (plaintext.length > MAX_PLAINTEXT_LEN) throw new ProtocolError("State", "message too long");
  let { rk, dhs, send, pn } = s;
  if (!send) {
    if (!s.dhr) throw new ProtocolError("State", "no peer ratchet key yet");
    dhs = await x25519Generate(rng);
    const [nrk, ck] = await kdfRk(rk, await dh(dhs.priv, s.dhr));
    rk = nrk;
    send = { ck, n: 0 };
  }
  const [mk, next] = await kdfCk(send.ck);
  const head = { conversation: bytes(16), prekey: s.pendingPrekey, header: { ratchetKey: dhs.pub, pn, n: send.n } };
  head.conversation.set(conversation);
  const [key, nonce] = await messageKeys(mk);
  const ciphertext = await aeadSeal(key, nonce, msgAd(s.local, s.remote, head), pad(plaintext));
  return {
    session: { ...s, rk, dhs, send: { ck: next, n: send.n + 1 } },
    envelope: encodeEnvelope({ ...head, ciphertext }),
  };
}

async function openWith(s: Session, mk: Uint8Array, e: Envelope): Promise<Bytes> {
  const [key, nonce] = await messageKeys(mk);
  try {
    return unpad(await aeadOpen(key, nonce, msgAd(s.remote, s.local, e), e.ciphertext));
  } catch (err) {
    if (err instanceof CryptoError || err instanceof ProtocolError) throw new ProtocolError("Decrypt");
    throw err;
  }
}

/** Keys of `ck` from its counter `from` up to `to` (exclusive), and the chain after `to`'s key. */
async function advance(ck: Bytes, from: number, to: number): Promise<{ keys: Array<[number, Bytes]>; mk: Bytes; ck: Bytes }> {
  const keys: Array<[number, Bytes]> = [];
  let chain = ck;
  for (let n = from; n < to; n++) {
    const [mk, next] = await kdfCk(chain);
    keys.push([n, mk]);
    chain = next;
  }
  const [mk, next] = await kdfCk(chain);
  return { keys, mk, ck: next };
}

function withSkipped(list: SkippedKey[], dhKey: Bytes, keys: Array<[number, Bytes]>): SkippedKey[] {
  const out = list.concat(keys.map(([n, mk]) => ({ dh: dhKey, n, mk })));
  return out.length > MAX_SKIPPED_TOTAL ? out.slice(out.length - MAX_SKIPPED_TOTAL) : out;
}

function checkSkip(from: number, to: number): void {
  if (to - from > MAX_SKIP) throw new ProtocolError("TooFarAhead");
}

/** §6.3: transactional. The input state is never changed; a failure throws. */
export async function decrypt(s: Session, e: Envelope): Promise<{ session: Session; plaintext: Bytes }> {
  const h = e.header;
  const at = s.skipped.findIndex((k) => k.n === h.n && equal(k.dh, h.ratchetKey));
  if (at >= 0) {
    const plaintext = await openWith(s, s.skipped[at].mk, e);
    return { session: { ...s, skipped: s.skipped.filter((_, i) => i !== at), pendingPrekey: null }, plaintext };
  }
  if (s.dhr && equal(s.dhr, h.ratchetKey)) {
    if (!s.recv) throw new ProtocolError("Decrypt");
    if (h.n < s.recv.n) throw new ProtocolError("Duplicate");
    checkSkip(s.recv.n, h.n);
    const step = await advance(s.recv.ck, s.recv.n, h.n);
    const plaintext = await openWith(s, step.mk, e);
    return {
      session: { ...s, recv: { ck: step.ck, n: h.n + 1 }, skipped: withSkipped(s.skipped, h.ratchetKey, step.keys), pendingPrekey: null },
      plaintext,
    };
  }
  let skipped = s.skipped;
  if (s.recv && s.dhr && h.pn > s.recv.n) {
    checkSkip(s.recv.n, h.pn);
    const rest = await advance(s.recv.ck, s.recv.n, h.pn - 1);
    skipped = withSkipped(skipped, s.dhr, [...rest.keys, [h.pn - 1, rest.mk]]);
  }
  checkSkip(0, h.n);
  let out: Bytes;
  try {
    out = await dh(s.dhs.priv, h.ratchetKey);
  } catch {
    throw new ProtocolError("Decrypt");
  }
  const [rk, ck] = await kdfRk(s.rk, out);
  const step = await advance(ck, 0, h.n);
  const plaintext = await openWith(s, step.mk, e);
  return {
    session: {
      ...s,
      rk,
      dhr: h.ratchetKey,
      recv: { ck: step.ck, n: h.n + 1 },
      send: null,
      pn: s.send ? s.send.n : s.pn,
      skipped: withSkipped(skipped, h.ratchetKey, step.keys),
      pendingPrekey: null,
    },
    plaintext,
  };
}

/**
 * §5, responder: completes the setup from a first message and decrypts it.
 * The device is changed (one-time prekey consumed, base key recorded) only
 * on success; the caller saves it with the session.
 */
export async function accept(d: Device, e: Envelope): Promise<{ session: Session; plaintext: Bytes; device: Device }> {
  const p = e.prekey;
  if (!p) throw new ProtocolError("State", "not a setup message");
  const spk = d.signedPrekeys.find((s) => s.id === p.signedPrekeyId);
  if (!spk) throw new ProtocolError("UnknownPrekey");
  if (spk.seen.some((b) => equal(b, p.baseKey))) throw new ProtocolError("ReplayedSetup");
  const otk = p.oneTimePrekeyId === undefined ? undefined : d.oneTimePrekeys.find((o) => o.id === p.oneTimePrekeyId);
  if (p.oneTimePrekeyId !== undefined && !otk) throw new ProtocolError("UnknownPrekey");
  if (!isStrictPoint(p.signingKey)) throw new ProtocolError("InvalidBundle", "signing key is not a valid Ed25519 point");
  const remote = { signingKey: p.signingKey, identityKey: p.identityKey };
  const local = publicIdentity(d);
  let parts: Bytes[];
  try {
    parts = [await dh(spk.pair.priv, p.identityKey), await dh(d.identity.priv, p.baseKey), await dh(spk.pair.priv, p.baseKey)];
    if (otk) parts.push(await dh(otk.pair.priv, p.baseKey));
  } catch {
    throw new ProtocolError("Decrypt");
  }
  const sk = await x3dhSecret(parts, remote, local);
  const fresh: Session = {
    local,
    remote,
    baseKey: p.baseKey,
    pendingPrekey: null,
    rk: sk,
    dhs: spk.pair,
    dhr: null,
    send: null,
    recv: null,
    pn: 0,
    skipped: [],
  };
  const { session, plaintext } = await decrypt(fresh, e);
  const seen = spk.seen.concat([p.baseKey]).slice(-100000);
  const device: Device = {
    ...d,
    signedPrekeys: d.signedPrekeys.map((s) => (s === spk ? { ...s, seen } : s)),
    oneTimePrekeys: d.oneTimePrekeys.filter((o) => o !== otk),
  };
  return { session, plaintext, device };
}

export { decodeStrict, encode };
