// The cross-implementation transcripts of `reference/core/tests/web_transcripts.rs`:
// conversations the Rust core played with the vector RNG, replayed here with
// the same draws. Every envelope this client makes must equal the core's byte
// for byte, and every delivery (out of order, repeated, tampered) must end
// as it did there: opened with the same plaintext, a duplicate, or rejected.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { type Bytes, equal, fromHex, hex } from "../src/bytes.js";
import { ed25519FromSecret, x25519FromSecret } from "../src/crypto.js";
import {
  type Device,
  type Session,
  ProtocolError,
  accept,
  addOneTimePrekeys,
  currentSignedPrekey,
  decodeEnvelope,
  decrypt,
  deviceKeys,
  encrypt,
  initiate,
  newDevice,
} from "../src/session.js";
import { ROOT, VectorRng } from "./vectors.js";

interface Event {
  op: "send" | "deliver";
  from?: string;
  to?: string;
  sent?: number;
  tampered?: string;
  plaintext?: string;
  envelope: string;
  result?: "opened" | "duplicate" | "rejected";
}
interface Transcript {
  name: string;
  seed: string;
  initiator: "alice" | "bob";
  one_time_prekeys: number;
  events: Event[];
}

const file = JSON.parse(readFileSync(`${ROOT}/web/test/transcripts.json`, "utf8")) as { conversation: string; transcripts: Transcript[] };
const CONV = fromHex(file.conversation);

interface Side {
  device: Device;
  sessions: Session[];
}

async function open(side: Side, raw: Bytes): Promise<Bytes> {
  const e = decodeEnvelope(raw);
  if (e.prekey && !side.sessions.some((s) => equal(s.baseKey, e.prekey!.baseKey))) {
    const r = await accept(side.device, e);
    side.device = r.device;
    side.sessions.unshift(r.session);
    return r.plaintext;
  }
  let last: unknown = new ProtocolError("Decrypt");
  for (let i = 0; i < side.sessions.length; i++) {
    try {
      const r = await decrypt(side.sessions[i], e);
      side.sessions[i] = r.session;
      return r.plaintext;
    } catch (err) {
      last = err;
    }
  }
  throw last;
}

async function replay(t: Transcript): Promise<void> {
    const rng = new VectorRng(fromHex(t.seed));
    const make = async (): Promise<Side> => ({
      device: await newDevice(await ed25519FromSecret(await rng.fill(32)), await x25519FromSecret(await rng.fill(32)), rng),
      sessions: [],
    });
    const sides: Record<string, Side> = { alice: await make(), bob: await make() };
    const responder = t.initiator === "alice" ? "bob" : "alice";
    const r = sides[responder].device;
    await addOneTimePrekeys(r, t.one_time_prekeys, rng);
    const otk = r.oneTimePrekeys[0];
    sides[t.initiator].sessions.push(
      await initiate(
        sides[t.initiator].device,
        {
          user: responder,
          device: 1,
          identity: deviceKeys(r),
          signedPrekey: currentSignedPrekey(r),
          oneTimePrekey: otk ? { id: otk.id, publicKey: otk.pair.pub } : undefined,
        },
        rng,
      ),
    );
    const sent: string[] = [];
    const verdicts = { opened: 0, duplicate: 0, rejected: 0 };
    for (const [i, ev] of t.events.entries()) {
      const where = `${t.name} event ${i}`;
      if (ev.op === "send") {
        const side = sides[ev.from!];
        const out = await encrypt(side.sessions[0], CONV, fromHex(ev.plaintext!), rng);
        side.sessions[0] = out.session;
        assert.equal(hex(out.envelope), ev.envelope, `${where}: the envelope differs from the core's`);
        sent.push(ev.envelope);
        continue;
      }
      if (!ev.tampered) assert.equal(ev.envelope, sent[ev.sent!], `${where}: delivers what was sent`);
      let got: "opened" | "duplicate" | "rejected";
      let plaintext: Bytes | null = null;
      try {
        plaintext = await open(sides[ev.to!], fromHex(ev.envelope));
        got = "opened";
      } catch (e) {
        got = e instanceof ProtocolError && e.kind === "Duplicate" ? "duplicate" : "rejected";
      }
      assert.equal(got, ev.result, `${where} (${ev.tampered ?? "as sent"})`);
      if (plaintext) assert.equal(hex(plaintext), ev.plaintext, `${where}: plaintext`);
      verdicts[got] += 1;
    }
    assert.ok(verdicts.opened > 0, "something opened");
}

for (const t of file.transcripts) {
  test(`transcript ${t.name}: every envelope byte for byte, every verdict the same`, () => replay(t));
}

test("the replay fails on a transcript that differs (mutants)", async () => {
  const t = file.transcripts[0];
  // A tampered envelope said to open: a client that accepted it would pass.
  const lenient = structuredClone(t);
  const at = lenient.events.findIndex((e) => e.tampered);
  lenient.events[at] = { ...lenient.events[at], result: "opened", plaintext: "" };
  await assert.rejects(replay(lenient), /tampered|bit flipped|removed|changed/);
  // One byte of one envelope the core made.
  const other = structuredClone(t);
  const e = other.events[0];
  e.envelope = e.envelope.slice(0, -2) + (e.envelope.endsWith("00") ? "01" : "00");
  await assert.rejects(replay(other), /differs from the core's/);
});
