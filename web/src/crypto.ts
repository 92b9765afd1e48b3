// The primitives of PROTOCOL §2 on WebCrypto. Private keys are CryptoKeys;
// the ones a device keeps are made non-extractable, so that page script
// (and anything that reads the stored state) can use them but not read them.
import { type Bytes, bytes, concat, equal, fromHex, own, utf8 } from "./bytes.js";

const subtle = globalThis.crypto.subtle;

/** Where random bytes come from: the platform's CSPRNG, or a test's stream. */
export interface Rng {
  fill(n: number): Promise<Bytes>;
}

export const systemRng: Rng = {
  async fill(n) {
    const out = bytes(n);
    globalThis.crypto.getRandomValues(out);
    return out;
  },
};

export class CryptoError extends Error {}

// ---------------------------------------------------------------- hashes

export async function sha256(...parts: Uint8Array[]): Promise<Bytes> {
  return new Uint8Array(await subtle.digest("SHA-256", concat(...parts)));
}

export async function hmac(key: Uint8Array, data: Uint8Array): Promise<Bytes> {
  const k = await subtle.importKey("raw", own(key), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await subtle.sign("HMAC", k, own(data)));
}

/** HKDF-SHA256, extract then expand; a missing salt is 32 zero bytes. */
export async function hkdf(salt: Uint8Array | null, ikm: Uint8Array, info: Uint8Array, len: number): Promise<Bytes> {
  const k = await subtle.importKey("raw", own(ikm), "HKDF", false, ["deriveBits"]);
  const bits = await subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: salt ? own(salt) : bytes(32), info: own(info) },
    k,
    len * 8,
  );
  return new Uint8Array(bits);
}

// ---------------------------------------------------------------- AES-256-GCM

export async function aeadSeal(key: Uint8Array, nonce: Uint8Array, ad: Uint8Array, pt: Uint8Array): Promise<Bytes> {
  const k = await subtle.importKey("raw", own(key), "AES-GCM", false, ["encrypt"]);
  const ct = await subtle.encrypt({ name: "AES-GCM", iv: own(nonce), additionalData: own(ad), tagLength: 128 }, k, own(pt));
  return new Uint8Array(ct);
}

/** Opens, or throws `CryptoError` (one error for every failure). */
export async function aeadOpen(key: Uint8Array, nonce: Uint8Array, ad: Uint8Array, ct: Uint8Array): Promise<Bytes> {
  try {
    const k = await subtle.importKey("raw", own(key), "AES-GCM", false, ["decrypt"]);
    const pt = await subtle.decrypt({ name: "AES-GCM", iv: own(nonce), additionalData: own(ad), tagLength: 128 }, k, own(ct));
    return new Uint8Array(pt);
  } catch {
    throw new CryptoError("decryption failed");
  }
}

// ---------------------------------------------------------------- X25519

export interface DhPair {
  priv: CryptoKey;
  pub: Bytes;
}

// PKCS#8 wrappers of a raw 32-byte secret (RFC 8410).
const PKCS8_X25519 = fromHex("302e020100300506032b656e04220420");
const PKCS8_ED25519 = fromHex("302e020100300506032b657004220420");

type Curve = { name: "X25519" | "Ed25519"; pkcs8: Bytes; usages: KeyUsage[] };
const X25519: Curve = { name: "X25519", pkcs8: PKCS8_X25519, usages: ["deriveBits"] };
const ED25519: Curve = { name: "Ed25519", pkcs8: PKCS8_ED25519, usages: ["sign"] };

/**
 * A key pair from 32 secret bytes. The private key must be extractable once
 * to learn its public half (WebCrypto derives no public key otherwise), so
 * a pair is made from an extractable import and then re-imported without it.
 */
async function fromSecret(c: Curve, secret: Uint8Array, extractable: boolean): Promise<{ priv: CryptoKey; pub: Bytes }> {
  const pkcs8 = concat(c.pkcs8, secret);
  const open = await subtle.importKey("pkcs8", pkcs8, { name: c.name }, true, c.usages);
  const jwk = await subtle.exportKey("jwk", open);
  const b64 = (jwk.x ?? "").replace(/-/g, "+").replace(/_/g, "/");
  const pub = own(Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0)));
  const priv = extractable ? open : await subtle.importKey("pkcs8", pkcs8, { name: c.name }, false, c.usages);
  pkcs8.fill(0);
  return { priv, pub };
}

/** A fresh pair: from the platform's generator (non-extractable), or drawn from a test RNG. */
async function generate(c: Curve, rng: Rng): Promise<{ priv: CryptoKey; pub: Bytes }> {
  if (rng !== systemRng) return fromSecret(c, await rng.fill(32), false);
  const usages: KeyUsage[] = c.name === "Ed25519" ? ["sign", "verify"] : c.usages;
  const pair = (await subtle.generateKey({ name: c.name }, false, usages)) as CryptoKeyPair;
  return { priv: pair.privateKey, pub: new Uint8Array(await subtle.exportKey("raw", pair.publicKey)) };
}

export const x25519FromSecret = (secret: Uint8Array, extractable = false): Promise<DhPair> => fromSecret(X25519, secret, extractable);
export const x25519Generate = (rng: Rng): Promise<DhPair> => generate(X25519, rng);

/** DH(sk, pk); an all-zero result (a low-order peer key) is refused. */
export async function dh(priv: CryptoKey, pub: Uint8Array): Promise<Bytes> {
  if (pub.length !== 32) throw new CryptoError("X25519 key is not 32 bytes");
  let out: Bytes;
  try {
    const pk = await subtle.importKey("raw", own(pub), { name: "X25519" }, true, []);
    out = new Uint8Array(await subtle.deriveBits({ name: "X25519", public: pk }, priv, 256));
  } catch {
    throw new CryptoError("X25519 refused the peer key");
  }
  if (equal(out, bytes(32))) throw new CryptoError("X25519 output is zero (low-order key)");
  return out;
}

// ---------------------------------------------------------------- Ed25519

export interface SignPair {
  priv: CryptoKey;
  pub: Bytes;
}

export const ed25519FromSecret = (secret: Uint8Array, extractable = false): Promise<SignPair> => fromSecret(ED25519, secret, extractable);
export const ed25519Generate = (rng: Rng): Promise<SignPair> => generate(ED25519, rng);

export async function sign(priv: CryptoKey, msg: Uint8Array): Promise<Bytes> {
  return new Uint8Array(await subtle.sign("Ed25519", priv, own(msg)));
}

// Strict verification (§2): WebCrypto checks the equation and S < L; the
// encodings of the key and of R are checked here as ed25519-dalek's
// verify_strict does: a canonical encoding of a point on the curve that is
// not of small order.
const P = (1n << 255n) - 19n;
const D = (-121665n * inv(121666n)) % P;
const L = (1n << 252n) + 27742317777372353535851937790883648493n;
const SMALL_ORDER = [
  "0100000000000000000000000000000000000000000000000000000000000000",
  "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "0000000000000000000000000000000000000000000000000000000000000000",
  "0000000000000000000000000000000000000000000000000000000000000080",
  "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
  "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
  "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
  "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
].map(fromHex);

function modpow(b: bigint, e: bigint, m: bigint): bigint {
  let r = 1n;
  b %= m;
  while (e > 0n) {
    if (e & 1n) r = (r * b) % m;
    b = (b * b) % m;
    e >>= 1n;
  }
  return r;
}

function inv(x: bigint): bigint {
  return modpow(((x % P) + P) % P, P - 2n, P);
}

function leInt(b: Uint8Array): bigint {
  let n = 0n;
  for (let i = b.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(b[i]);
  return n;
}

/** A canonical encoding of a point on the curve that is not of small order. */
export function isStrictPoint(enc: Uint8Array): boolean {
  if (enc.length !== 32) return false;
  if (SMALL_ORDER.some((s) => equal(s, enc))) return false;
  const sign = enc[31] >> 7;
  const y = leInt(enc) & ((1n << 255n) - 1n);
  if (y >= P) return false;
  const y2 = (y * y) % P;
  const x2 = (((y2 - 1n + P) % P) * inv((((D + P) % P) * y2 + 1n) % P)) % P;
  if (x2 === 0n) return sign === 0;
  return modpow(x2, (P - 1n) / 2n, P) === 1n;
}

export async function verify(pub: Uint8Array, msg: Uint8Array, sig: Uint8Array): Promise<boolean> {
  if (sig.length !== 64 || !isStrictPoint(pub) || !isStrictPoint(sig.subarray(0, 32))) return false;
  if (leInt(sig.subarray(32)) >= L) return false;
  try {
    const k = await subtle.importKey("raw", own(pub), { name: "Ed25519" }, false, ["verify"]);
    return await subtle.verify("Ed25519", k, own(sig), own(msg));
  } catch {
    return false;
  }
}

export const label = (s: string): Bytes => utf8(s);
