// The browser client's protocol code against every vector of PROTOCOL.md
// §14 that covers §2–§13, run in Node's test runner on Node's WebCrypto.
import assert from "node:assert/strict";
import { test } from "node:test";
import { type Bytes, equal, fromHex, hex, utf8 } from "../src/bytes.js";
import { decodeStrict, encode } from "../src/cbor.js";
import { decodeContent, encodeContent, formatSafetyNumber, safetyNumber } from "../src/content.js";
import { dh, ed25519FromSecret, isStrictPoint, sha256, sign, verify, x25519FromSecret } from "../src/crypto.js";
import { openFile, sealFile } from "../src/files.js";
import { distribution, openGroup, sealGroup, signChange, verifyChange } from "../src/groups.js";
import { decodeFrame, encodeFrame } from "../src/frames.js";
import {
  type Device,
  type Session,
  ProtocolError,
  accept,
  addOneTimePrekeys,
  currentSignedPrekey,
  decodeBundle,
  decodeEnvelope,
  decrypt,
  deviceKeys,
  encodeBundle,
  encrypt,
  initiate,
  newDevice,
  publicIdentity,
  verifyBundle,
} from "../src/session.js";
import { VectorRng, block, inline, line, section } from "./vectors.js";

const CONV = utf8("vector-conv-0001");

/** V1's devices, drawn from the vector RNG as `Device::generate` draws them. */
async function devices(): Promise<{ alice: Device; bob: Device; rng: VectorRng }> {
  const rng = new VectorRng();
  const make = async () => newDevice(await ed25519FromSecret(await rng.fill(32)), await x25519FromSecret(await rng.fill(32)), rng);
  const alice = await make();
  const bob = await make();
  await addOneTimePrekeys(bob, 1, rng);
  return { alice, bob, rng };
}

function bundleOf(bob: Device) {
  return {
    user: "bob",
    device: 1,
    identity: deviceKeys(bob),
    signedPrekey: currentSignedPrekey(bob),
    oneTimePrekey: { id: bob.oneTimePrekeys[0].id, publicKey: bob.oneTimePrekeys[0].pair.pub },
  };
}

test("V1: device keys from their secrets", async () => {
  const { alice, bob } = await devices();
  for (const [name, d] of [["Alice", alice], ["Bob", bob]] as const) {
    const v = section("V1").split(`${name}:`)[1];
    assert.equal(hex(d.signing.pub), v.match(/signing_key\s+([0-9a-f]{64})/)![1], `${name} signing key`);
    assert.equal(hex(d.identity.pub), v.match(/identity_key\s+([0-9a-f]{64})/)![1], `${name} identity key`);
  }
  assert.ok(line("V1", "Ed25519 secret").length === 32);
});

test("V2: Bob's bundle encodes, decodes and verifies", async () => {
  const { bob } = await devices();
  const expected = block("V2", 0);
  assert.equal(hex(encode(encodeBundle(bundleOf(bob)))), hex(expected));
  const decoded = decodeBundle(decodeStrict(expected));
  await verifyBundle(decoded);
  // A flipped bit anywhere in a signature fails verification.
  const bad = { ...decoded, signedPrekey: { ...decoded.signedPrekey, signature: decoded.signedPrekey.signature.slice() } };
  bad.signedPrekey.signature[5] ^= 1;
  await assert.rejects(verifyBundle(bad), /signed prekey signature/);
});

async function conversation(): Promise<{ a: Session; b: Session; bob: Device; env: Bytes[]; rng: VectorRng }> {
  const { alice, bob, rng } = await devices();
  const a0 = await initiate(alice, bundleOf(bob), rng);
  const first = await encrypt(a0, CONV, utf8("Hello, Bob!"), rng);
  const opened = await accept(bob, decodeEnvelope(first.envelope));
  assert.equal(new TextDecoder().decode(opened.plaintext), "Hello, Bob!");
  const reply = await encrypt(opened.session, CONV, utf8("Hi Alice."), rng);
  const a1 = await decrypt(first.session, decodeEnvelope(reply.envelope));
  assert.equal(new TextDecoder().decode(a1.plaintext), "Hi Alice.");
  const second = await encrypt(a1.session, CONV, new Uint8Array(0), rng);
  return { a: second.session, b: reply.session, bob: opened.device, env: [first.envelope, reply.envelope, second.envelope], rng };
}

test("V3–V5: the setup message, the reply and the second message are byte for byte the reference's", async () => {
  const { env } = await conversation();
  assert.equal(hex(env[0]), hex(block("V3", 1)), "V3 envelope");
  assert.equal(hex(env[1]), hex(block("V4", 0)), "V4 envelope");
  assert.equal(hex(env[2]), hex(block("V5", 0)), "V5 envelope");
  assert.equal(hex(inline("V3", "base key secret")).length, 64);
});

test("V3: the reference's envelopes open here, and a tampered one does not", async () => {
  const { bob } = await devices();
  const v3 = decodeEnvelope(block("V3", 1));
  const { session, plaintext } = await accept(bob, v3);
  assert.equal(new TextDecoder().decode(plaintext), "Hello, Bob!");
  // Replaying the setup to the device that accepted it is refused.
  const after = (await accept(bob, v3)).device;
  await assert.rejects(accept(after, v3), /ReplayedSetup|UnknownPrekey/);
  // Every byte of the ciphertext, the header and the prekey header is authenticated.
  const raw = block("V3", 1);
  for (const at of [raw.length - 1, raw.length - 20, 30, 60]) {
    const bad = raw.slice();
    bad[at] ^= 0x01;
    let env;
    try {
      env = decodeEnvelope(bad);
    } catch {
      continue;
    }
    await assert.rejects(accept(bob, env), `flip at ${at} must fail`);
  }
  // The setup again, on the session it made, is a duplicate; V5 (sent
  // after a reply this session never made) does not open on it.
  await assert.rejects(decrypt(session, v3), (e: unknown) => e instanceof ProtocolError && e.kind === "Duplicate");
  await assert.rejects(decrypt(session, decodeEnvelope(block("V5", 0))), (e: unknown) => e instanceof ProtocolError && e.kind === "Decrypt");
});

test("V6: safety number", async () => {
  const { alice, bob } = await devices();
  const n = await safetyNumber(publicIdentity(alice), publicIdentity(bob));
  const expected = section("V6").match(/```text\n([\s\S]*?)```/)![1].trim();
  assert.equal(formatSafetyNumber(n), expected);
  assert.equal(await safetyNumber(publicIdentity(bob), publicIdentity(alice)), n, "both sides see one number");
});

test("V7: every frame this client sends encodes as the reference's; every frame it reads decodes", async () => {
  const { bob } = await devices();
  const rows = new Map(
    [...section("V7").matchAll(/^\s*(\d+) (\w+)\s+([0-9a-f]+)$/gm)].map((m) => [m[2], fromHex(m[3])]),
  );
  const addr = new Map<number, string | number>([[0, "bob"], [1, 1]]);
  const ours: Array<[string, Bytes]> = [
    ["Register", encodeFrame(1, 7, [[0, "alice"], [1, "correct horse"]])],
    ["Login", encodeFrame(2, 7, [[0, "alice"], [1, "correct horse"], [2, 1], [3, "123456"]])],
    ["Authenticate", encodeFrame(3, 7, [[0, new Uint8Array(32).fill(0xab)]])],
    ["Logout", encodeFrame(4, 7, [])],
    [
      "PublishKeys",
      encodeFrame(5, 7, [
        [0, encodeBundle(bundleOf(bob)).get(2)],
        [1, encodeBundle({ ...bundleOf(bob), signedPrekey: currentSignedPrekey(bob) }).get(3)],
        [2, [encodeBundle(bundleOf(bob)).get(4)!]],
      ]),
    ],
    ["FetchBundle", encodeFrame(6, 7, [[0, addr]])],
    ["Send", encodeFrame(7, 7, [[0, addr], [1, CONV], [2, new Uint8Array(16).fill(0x11)], [3, new Uint8Array(4).fill(0xee)]])],
    ["Ack", encodeFrame(8, 7, [[0, [41, 42]]])],
    ["Ping", encodeFrame(10, 7, [])],
    ["FetchDevices", encodeFrame(11, 7, [[0, "bob"]])],
  ];
  for (const [name, bytes] of ours) assert.equal(hex(bytes), hex(rows.get(name)!), name);
  for (const [name, bytes] of rows) {
    const f = decodeFrame(bytes);
    assert.equal(hex(encodeFrame(f.type, f.id, [...f.body.entries()])), hex(bytes), `${name} decodes to what it encodes`);
  }
  // One spelling: a longer head for the same number is refused.
  const ping = rows.get("Ping")!;
  assert.throws(() => decodeFrame(Uint8Array.of(0x84, 0x01, 0x18, 0x0a, 0x07, 0xa0)));
  assert.throws(() => decodeFrame(Uint8Array.of(...ping, 0x00)), "trailing bytes");
  assert.throws(() => decodeFrame(Uint8Array.of(0x9f, 0x01, 0x0a, 0x07, 0xa0, 0xff)), "indefinite length");
});

test("V8, V9: message content, receipt and retry request", async () => {
  const v8 = block("V8", 0);
  const c = decodeContent(v8);
  assert.equal(new TextDecoder().decode(c.body), "Hello, Bob!");
  assert.equal(c.seq, 3n);
  assert.equal(c.floor, 2n);
  assert.equal(hex(encodeContent(c)), hex(v8));
  const receipt = decodeContent(block("V9", 0));
  assert.deepEqual(receipt.receipt, { receivedBelow: 9n, missing: [[4n, 6n]], knownFrom: 0n });
  assert.equal(hex(encodeContent(receipt)), hex(block("V9", 0)));
  const retry = decodeContent(block("V9", 1));
  assert.ok(retry.retry && equal(retry.retry[0], new Uint8Array(16).fill(0x11)));
  // A non-shortest integer, or a control with a body, is refused.
  const long = Uint8Array.from([...v8.subarray(0, 19), 0x18, 0x03, ...v8.subarray(20)]);
  assert.throws(() => decodeContent(long));
  assert.throws(() => decodeContent(encodeContent({ ...receipt, body: utf8("x") })));
});

test("V10, V13: file and group contents decode (this client shows files as unsupported and ignores groups)", async () => {
  const file = decodeContent(block("V10", 2));
  assert.ok(file.file);
  assert.equal(hex(encodeContent(file)), hex(block("V10", 2)));
  const group = decodeContent(block("V13", 0));
  assert.ok(group.group);
  assert.equal(hex(encodeContent(group)), hex(block("V13", 0)));
});

test("§2: strict Ed25519 (canonical S, no small-order or off-curve key or R) and X25519's zero check", async () => {
  const { alice } = await devices();
  const msg = utf8("chatify/v1/identity-key");
  const sig = await sign(alice.signing.priv, msg);
  assert.equal(await verify(alice.signing.pub, msg, sig), true);
  // S + L: the same equation holds, the encoding is not canonical.
  const L = (1n << 252n) + 27742317777372353535851937790883648493n;
  let s = 0n;
  for (let i = 63; i >= 32; i--) s = (s << 8n) | BigInt(sig[i]);
  const big = sig.slice();
  let t = s + L;
  for (let i = 32; i < 64; i++, t >>= 8n) big[i] = Number(t & 0xffn);
  assert.equal(await verify(alice.signing.pub, msg, big), false, "S ≥ L");
  for (const small of ["0100000000000000000000000000000000000000000000000000000000000000", "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"]) {
    assert.equal(isStrictPoint(fromHex(small)), false, small);
    assert.equal(await verify(fromHex(small), msg, sig), false, "small-order key");
    assert.equal(await verify(alice.signing.pub, msg, Uint8Array.from([...fromHex(small), ...sig.subarray(32)])), false, "small-order R");
  }
  // y = p (non-canonical encoding of y = 0), and a y off the curve.
  assert.equal(isStrictPoint(fromHex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")), false);
  assert.equal(isStrictPoint(fromHex("0200000000000000000000000000000000000000000000000000000000000000")), false);
  assert.equal(isStrictPoint(alice.signing.pub), true);
  // An X25519 peer key of low order gives zero, which is refused.
  await assert.rejects(dh(alice.identity.priv, new Uint8Array(32)), /low-order|refused/);
  await assert.rejects(dh(alice.identity.priv, fromHex("0100000000000000000000000000000000000000000000000000000000000000")), /low-order|refused/);
});

test("V10: a file's chunks, the blob's digest, and the reader's refusals", async () => {
  const key = new Uint8Array(32).fill(0x55);
  const small = await sealFile(key, utf8("a small photo"));
  const v = block("V10", 0);
  assert.equal(hex(small.blob), hex(v.subarray(0, 29)), "the sealed last chunk");
  assert.equal(hex(small.digest), hex(v.subarray(29)), "the blob's SHA-256");
  const zeros = new Uint8Array(65536);
  const big = await sealFile(key, zeros);
  const w = block("V10", 1);
  assert.equal(big.blob.length, 65552 + 16, "a whole chunk and an empty last one");
  assert.equal(hex(big.blob.subarray(65552)), hex(w.subarray(0, 16)), "the empty last chunk");
  assert.equal(hex(big.digest), hex(w.subarray(16)));
  assert.equal(hex(await openFile(key, big.blob, 65536, big.digest)), hex(zeros));
  // Cut at the chunk boundary, a flipped bit, a wrong size, another file's digest.
  await assert.rejects(openFile(key, big.blob.subarray(0, 65552), 65536, big.digest), /before its last chunk/);
  const flipped = big.blob.slice();
  flipped[100] ^= 1;
  await assert.rejects(openFile(key, flipped, 65536, big.digest), /chunk 0/);
  await assert.rejects(openFile(key, small.blob, 12, small.digest), /more bytes/);
  await assert.rejects(openFile(key, small.blob, 13, big.digest), /not the blob/);
});

test("V11: a sender key's distribution and group messages, signed and sealed", async () => {
  const k = {
    group: new Uint8Array(16).fill(0x61),
    keyId: 1,
    n: 0,
    ck: new Uint8Array(32).fill(0x66),
    signing: await ed25519FromSecret(new Uint8Array(32).fill(0x77)),
  };
  const d = distribution(k);
  assert.equal(hex(d), hex(block("V11", 0)));
  const first = await sealGroup(k, utf8("hello, group"));
  assert.equal(hex(first.message), hex(block("V11", 1)));
  const second = await sealGroup(first.key, new Uint8Array(0));
  assert.equal(hex(second.message), hex(block("V11", 2)));
  assert.equal(new TextDecoder().decode(await openGroup(d, block("V11", 1))), "hello, group");
  assert.equal((await openGroup(d, block("V11", 2))).length, 0);
  // A member that holds the chain cannot write as the sender: the signature is checked first.
  const forged = block("V11", 1).slice();
  forged[30] ^= 1;
  await assert.rejects(openGroup(d, forged), /signature/);
});

test("V12: signed membership changes (create, then remove) in their one spelling", async () => {
  const alice = await ed25519FromSecret(new Uint8Array(32).fill(0x88));
  const bob = await ed25519FromSecret(new Uint8Array(32).fill(0xaa));
  const group = new Uint8Array(16).fill(0x61);
  const create = await signChange(
    {
      group,
      epoch: 0,
      prev: new Uint8Array(32),
      by: "alice",
      change: {
        kind: "create",
        members: [
          { user: "alice", identity: alice.pub, admin: true },
          { user: "bob", identity: bob.pub, admin: false },
        ],
      },
    },
    alice,
  );
  assert.equal(hex(create), hex(block("V12", 0)));
  const remove = await signChange({ group, epoch: 1, prev: await sha256(create), by: "alice", change: { kind: "remove", user: "bob" } }, alice);
  assert.equal(hex(remove), hex(block("V12", 1)));
  await verifyChange(block("V12", 1), alice.pub);
  await assert.rejects(verifyChange(block("V12", 1), bob.pub), /does not verify/);
});
