// What the tests share: PROTOCOL.md's vectors, read from the document
// itself, and §14's deterministic RNG.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { type Bytes, be64, concat, fromHex, utf8 } from "../src/bytes.js";
import { type Rng, hmac } from "../src/crypto.js";

const here = fileURLToPath(new URL(".", import.meta.url));
export const ROOT = here.replace(/\/web\/(build\/)?test\/?$/, "");
export const PROTOCOL = readFileSync(`${ROOT}/docs/PROTOCOL.md`, "utf8");

/** The text of vector `name` (e.g. "V3"): its section up to the next. */
export function section(name: string): string {
  const start = PROTOCOL.indexOf(`### ${name}.`);
  if (start < 0) throw new Error(`no vector ${name} in PROTOCOL.md`);
  const end = PROTOCOL.indexOf("\n### ", start + 4);
  return PROTOCOL.slice(start, end < 0 ? undefined : end);
}

/** The `n`th fenced block of a vector's section, as one hex string. */
export function block(name: string, n: number): Bytes {
  const blocks = [...section(name).matchAll(/```text\n([\s\S]*?)```/g)].map((m) => m[1]);
  if (!blocks[n]) throw new Error(`vector ${name} has no block ${n}`);
  return fromHex(blocks[n]);
}

/** A `label  hex` line of a vector's block. */
export function line(name: string, key: string): Bytes {
  const m = section(name).match(new RegExp(`${key}\\s+([0-9a-f]{64})`));
  if (!m) throw new Error(`vector ${name} has no ${key}`);
  return fromHex(m[1]);
}

/** A hex value written inline in backquotes after `after`. */
export function inline(name: string, after: string): Bytes {
  const s = section(name);
  const at = s.indexOf(after);
  const m = s.slice(at).match(/`([0-9a-f]{16,})`/);
  if (at < 0 || !m) throw new Error(`vector ${name} has no value after ${after}`);
  return fromHex(m[1]);
}

/** §14: block i is HMAC-SHA256(seed, "chatify/v1/vector-rng" ‖ BE64(i)). */
export class VectorRng implements Rng {
  private buf: Bytes = new Uint8Array(0);
  private block = 0;
  constructor(private readonly seed: Bytes = new Uint8Array(32).fill(0x42)) {}
  async fill(n: number): Promise<Bytes> {
    while (this.buf.length < n) {
      const b = await hmac(this.seed, concat(utf8("chatify/v1/vector-rng"), be64(this.block++)));
      this.buf = concat(this.buf, b);
    }
    const out = this.buf.slice(0, n);
    this.buf = this.buf.slice(n);
    return out;
  }
}
