// What `npm run bench` times, in Chromium and in Node: the same operations
// as `cargo bench -p chatify-benches --bench sessions` times for the Rust
// core (docs/BENCHMARKS.md), on this client's WebCrypto code.
import { utf8 } from "../src/bytes.js";
import { ed25519Generate, systemRng, x25519Generate } from "../src/crypto.js";
import {
  type Session,
  accept,
  addOneTimePrekeys,
  currentSignedPrekey,
  decodeEnvelope,
  decrypt,
  deviceKeys,
  encrypt,
  initiate,
  newDevice,
  verifyBundle,
} from "../src/session.js";

const rng = systemRng;
const CONV = utf8("bench-conv-00001");

async function pair(): Promise<{ a: Session; b: Session; setupMs: number }> {
  const alice = await newDevice(await ed25519Generate(rng), await x25519Generate(rng), rng);
  const bob = await newDevice(await ed25519Generate(rng), await x25519Generate(rng), rng);
  await addOneTimePrekeys(bob, 1, rng);
  const t = performance.now();
  const bundle = {
    user: "bob",
    device: 1,
    identity: deviceKeys(bob),
    signedPrekey: currentSignedPrekey(bob),
    oneTimePrekey: { id: bob.oneTimePrekeys[0].id, publicKey: bob.oneTimePrekeys[0].pair.pub },
  };
  await verifyBundle(bundle);
  const s = await initiate(alice, bundle, rng);
  const first = await encrypt(s, CONV, utf8("hello"), rng);
  const r = await accept(bob, decodeEnvelope(first.envelope));
  return { a: first.session, b: r.session, setupMs: performance.now() - t };
}

/** Mean time of one encrypt + decrypt (ms) over `n` messages of `size` bytes. */
async function traffic(n: number, size: number, alternating: boolean): Promise<number> {
  let { a, b } = await pair();
  const msg = new Uint8Array(size).fill(0x61);
  const t = performance.now();
  for (let i = 0; i < n; i++) {
    const fromA = !alternating || i % 2 === 0;
    const out = await encrypt(fromA ? a : b, CONV, msg, rng);
    const back = await decrypt(fromA ? b : a, decodeEnvelope(out.envelope));
    if (fromA) [a, b] = [out.session, back.session];
    else [b, a] = [out.session, back.session];
  }
  return (performance.now() - t) / n;
}

export interface BenchResult {
  [name: string]: number[];
}

/** Each measure `rounds` times (ms per operation). */
export async function runBench(rounds: number): Promise<BenchResult> {
  const out: BenchResult = {
    "session setup: verify bundle, create, first message, accept (and decrypt)": [],
    "encrypt + decrypt, same direction, 64 B": [],
    "same direction, 1 KiB": [],
    "encrypt + decrypt, alternating (a DH step per message), 64 B": [],
  };
  const keys = Object.keys(out);
  for (let r = 0; r < rounds; r++) {
    let setup = 0;
    for (let i = 0; i < 20; i++) setup += (await pair()).setupMs;
    out[keys[0]].push(setup / 20);
    out[keys[1]].push(await traffic(500, 64, false));
    out[keys[2]].push(await traffic(500, 1024, false));
    out[keys[3]].push(await traffic(200, 64, true));
  }
  return out;
}

(globalThis as { chatifyBench?: typeof runBench }).chatifyBench = runBench;
