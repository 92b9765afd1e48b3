// CBOR with one spelling (PROTOCOL §8, §9.1): definite lengths, shortest
// heads, no duplicate keys, no tags, at most 16 levels. Encoding is cborg's
// deterministic encoder; a decoded item is accepted only if it re-encodes to
// the same bytes, which rules out every other spelling at once.
import { decode, encode as cborgEncode } from "cborg";
import { type Bytes, equal, own } from "./bytes.js";

export type Item = number | bigint | string | Bytes | null | boolean | Item[] | CborMap;
export type CborMap = Map<number, Item>;

export class CborError extends Error {}

export function encode(item: Item): Bytes {
  return own(cborgEncode(item));
}

const MAX_DEPTH = 16;

function depth(item: unknown, level: number): void {
  if (level > MAX_DEPTH) throw new CborError("nested deeper than 16 levels");
  if (Array.isArray(item)) for (const x of item) depth(x, level + 1);
  else if (item instanceof Map) for (const v of item.values()) depth(v, level + 1);
}

/** Decodes one item in its one spelling, or throws `CborError`. */
export function decodeStrict(data: Uint8Array): Item {
  let item: unknown;
  try {
    item = decode(data, {
      strict: true,
      useMaps: true,
      rejectDuplicateMapKeys: true,
      allowIndefinite: false,
      allowUndefined: false,
      allowInfinity: false,
      allowNaN: false,
      allowBigInt: true,
      tags: [],
    });
  } catch (e) {
    throw new CborError(`not CBOR: ${(e as Error).message}`);
  }
  depth(item, 1);
  if (!equal(encode(item as Item), data)) throw new CborError("not in its one spelling");
  return item as Item;
}

// Typed field access: every reader throws CborError on a wrong type.

export function asMap(item: Item | undefined, what: string): CborMap {
  if (!(item instanceof Map)) throw new CborError(`${what}: not a map`);
  for (const k of item.keys()) if (typeof k !== "number") throw new CborError(`${what}: key not an integer`);
  return item;
}

export function asArray(item: Item | undefined, what: string): Item[] {
  if (!Array.isArray(item)) throw new CborError(`${what}: not an array`);
  return item;
}

export function asUint(item: Item | undefined, what: string, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof item === "bigint") throw new CborError(`${what}: too large`);
  if (typeof item !== "number" || !Number.isInteger(item) || item < 0 || item > max) {
    throw new CborError(`${what}: not an unsigned integer in range`);
  }
  return item;
}

export function asU64(item: Item | undefined, what: string): bigint {
  if (typeof item === "number" && Number.isInteger(item) && item >= 0) return BigInt(item);
  if (typeof item === "bigint" && item >= 0n && item < 1n << 64n) return item;
  throw new CborError(`${what}: not an unsigned integer`);
}

export function asBytes(item: Item | undefined, what: string, len?: number): Bytes {
  if (!(item instanceof Uint8Array)) throw new CborError(`${what}: not a byte string`);
  if (len !== undefined && item.length !== len) throw new CborError(`${what}: not ${len} bytes`);
  return own(item);
}

export function asText(item: Item | undefined, what: string, maxBytes = 1024): string {
  if (typeof item !== "string") throw new CborError(`${what}: not a text string`);
  if (new TextEncoder().encode(item).length > maxBytes) throw new CborError(`${what}: too long`);
  return item;
}

export function map(entries: Array<[number, Item | undefined]>): CborMap {
  const m: CborMap = new Map();
  for (const [k, v] of entries) if (v !== undefined) m.set(k, v);
  return m;
}
