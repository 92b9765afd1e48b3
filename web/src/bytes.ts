// Byte-string helpers shared by the codec and the protocol.

export type Bytes = Uint8Array<ArrayBuffer>;

export function bytes(n: number): Bytes {
  return new Uint8Array(new ArrayBuffer(n));
}

/** A copy that owns a plain ArrayBuffer (what WebCrypto takes). */
export function own(b: Uint8Array): Bytes {
  const out = bytes(b.length);
  out.set(b);
  return out;
}

export function concat(...parts: Uint8Array[]): Bytes {
  const out = bytes(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

export function compare(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

export function be32(n: number): Bytes {
  const out = bytes(4);
  new DataView(out.buffer).setUint32(0, n);
  return out;
}

export function be64(n: number | bigint): Bytes {
  const out = bytes(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(n));
  return out;
}

export function utf8(s: string): Bytes {
  return own(new TextEncoder().encode(s));
}

export function fromUtf8(b: Uint8Array): string {
  return new TextDecoder("utf-8", { fatal: true }).decode(b);
}

export function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

export function fromHex(s: string): Bytes {
  const clean = s.replace(/\s+/g, "");
  if (clean.length % 2 !== 0 || /[^0-9a-fA-F]/.test(clean)) throw new Error("not hexadecimal");
  const out = bytes(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}
