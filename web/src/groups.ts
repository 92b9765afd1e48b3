// Group messages under sender keys (§16) and signed membership changes
// (§16.1): the encodings and the checks, verified against vectors V11 and
// V12. This client does not yet join groups (it ignores group controls);
// these are the pieces it will need, checked now against the reference.
import { type Bytes, be32, concat, equal, utf8 } from "./bytes.js";
import { type CborMap, type Item, decodeStrict, encode, map } from "./cbor.js";
import { type SignPair, aeadOpen, aeadSeal, sign, verify } from "./crypto.js";
import { kdfCk, messageKeys, pad, unpad } from "./session.js";

const GROUP_AD = utf8("chatify/v1/group-ad");
const GROUP_SIG = utf8("chatify/v1/group-message");
const CHANGE_SIG = utf8("chatify/v1/group-change");

export class GroupError extends Error {}

export interface SenderKey {
  group: Bytes;
  keyId: number;
  n: number;
  ck: Bytes;
  signing: SignPair;
}

/** The 89-byte distribution that gives a member the chain from its current iteration. */
export function distribution(k: SenderKey): Bytes {
  return concat(Uint8Array.of(1), k.group, be32(k.keyId), be32(k.n), k.ck, k.signing.pub);
}

/** The chain step and message key of §6 and §7, as pairwise messages take them (§16). */
async function messageKey(ck: Uint8Array): Promise<{ key: Bytes; nonce: Bytes; next: Bytes }> {
  const [mk, next] = await kdfCk(ck);
  const [key, nonce] = await messageKeys(mk);
  return { key, nonce, next };
}

/** Encrypts and signs one group message; returns it and the key one step on. */
export async function sealGroup(k: SenderKey, plaintext: Uint8Array): Promise<{ message: Bytes; key: SenderKey }> {
  const head = concat(Uint8Array.of(1), k.group, be32(k.keyId), be32(k.n));
  const { key, nonce, next } = await messageKey(k.ck);
  const body = concat(head, await aeadSeal(key, nonce, concat(GROUP_AD, head), pad(plaintext)));
  const signature = await sign(k.signing.priv, concat(GROUP_SIG, body));
  return { message: concat(body, signature), key: { ...k, n: k.n + 1, ck: next } };
}

/**
 * Opens a group message at the chain of a distribution `d` (89 bytes),
 * without skipped-key bookkeeping: the signature first, then the key of
 * iteration n, derived forward from the distribution's.
 */
export async function openGroup(d: Uint8Array, message: Uint8Array): Promise<Bytes> {
  if (d.length !== 89 || d[0] !== 1 || message.length < 25 + 16 + 64 || message[0] !== 1) throw new GroupError("malformed");
  const signingKey = d.subarray(57, 89);
  const body = message.subarray(0, message.length - 64);
  if (!(await verify(signingKey, concat(GROUP_SIG, body), message.subarray(message.length - 64)))) {
    throw new GroupError("signature does not verify");
  }
  if (!equal(message.subarray(1, 21), d.subarray(1, 21))) throw new GroupError("another group or key");
  const view = new DataView(message.buffer, message.byteOffset);
  const n = view.getUint32(21);
  const from = new DataView(d.buffer, d.byteOffset).getUint32(21);
  if (n < from || n - from > 2000) throw new GroupError("iteration out of reach");
  let ck: Bytes = d.slice(25, 57);
  for (let i = from; i < n; i++) ck = (await kdfCk(ck))[1];
  const { key, nonce } = await messageKey(ck);
  try {
    return unpad(await aeadOpen(key, nonce, concat(GROUP_AD, message.subarray(0, 25)), body.subarray(25)));
  } catch {
    throw new GroupError("does not open");
  }
}

// ---------------------------------------------------------------- membership (§16.1)

export interface Member {
  user: string;
  identity: Bytes;
  admin: boolean;
}

export type Change =
  | { kind: "create"; members: Member[] }
  | { kind: "add"; member: Member }
  | { kind: "remove"; user: string }
  | { kind: "promote"; user: string };

export interface ChangeBody {
  group: Bytes;
  epoch: number;
  prev: Bytes;
  by: string;
  change: Change;
}

const encodeMember = (m: Member): CborMap =>
  map([
    [0, m.user],
    [1, m.identity],
    [2, m.admin],
  ]);

function encodeChange(c: Change): Item {
  switch (c.kind) {
    // The kind, then an array of the change's fields (§16.1).
    case "create":
      return [0, [c.members.map(encodeMember)]];
    case "add":
      return [1, [encodeMember(c.member)]];
    case "remove":
      return [2, [c.user]];
    case "promote":
      return [3, [c.user]];
  }
}

function encodeBody(b: ChangeBody): CborMap {
  return map([
    [0, b.group],
    [1, b.epoch],
    [2, b.prev],
    [3, b.by],
    [4, encodeChange(b.change)],
  ]);
}

/** The signed change `{0 body, 1 signature}` in its one spelling. */
export async function signChange(b: ChangeBody, signer: SignPair): Promise<Bytes> {
  const body = encodeBody(b);
  const signature = await sign(signer.priv, concat(CHANGE_SIG, encode(body)));
  return encode(map([[0, body], [1, signature]]));
}

/** Checks a signed change's spelling and its signature by `identity`; returns its body's encoding. */
export async function verifyChange(signed: Uint8Array, identity: Uint8Array): Promise<Bytes> {
  const m = decodeStrict(signed);
  if (!(m instanceof Map) || m.size !== 2) throw new GroupError("malformed change");
  const body = encode(m.get(0) as Item);
  const sig = m.get(1);
  if (!(sig instanceof Uint8Array) || !(await verify(identity, concat(CHANGE_SIG, body), sig))) {
    throw new GroupError("change signature does not verify");
  }
  return body;
}
