// Frames (§9): `[version, type, id, body]`, one per binary WebSocket message.
import type { Bytes } from "./bytes.js";
import { type CborMap, type Item, CborError, asArray, asMap, asText, asUint, asU64, decodeStrict, encode, map } from "./cbor.js";
import { VERSION } from "./session.js";

export const FrameType = {
  Register: 1,
  Login: 2,
  Authenticate: 3,
  Logout: 4,
  PublishKeys: 5,
  FetchBundle: 6,
  Send: 7,
  Ack: 8,
  FetchHistory: 9,
  Ping: 10,
  FetchDevices: 11,
  Ok: 64,
  Error: 65,
  LoginOk: 66,
  AuthOk: 67,
  Bundle: 68,
  SendOk: 69,
  Deliver: 70,
  History: 71,
  PrekeysLow: 72,
  Pong: 73,
  Devices: 74,
} as const;

export const ErrorCode: Record<number, string> = {
  1: "BadFrame",
  2: "FrameTooLarge",
  3: "UnsupportedVersion",
  4: "UnknownFrameType",
  10: "Unauthenticated",
  11: "InvalidToken",
  12: "BadCredentials",
  13: "RateLimited",
  14: "UserExists",
  15: "SecondFactorRequired",
  20: "NoSuchUser",
  21: "Forbidden",
  22: "InvalidRequest",
  23: "TooLarge",
  24: "QuotaExceeded",
  25: "NotFound",
  50: "Internal",
};

export const MAX_FRAME_LEN = 262144;

export interface Frame {
  type: number;
  id: bigint;
  body: CborMap;
}

export function encodeFrame(type: number, id: bigint | number, fields: Array<[number, Item | undefined]>): Bytes {
  return encode([VERSION, type, typeof id === "bigint" && id <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(id) : id, map(fields)]);
}

export function decodeFrame(data: Uint8Array): Frame {
  if (data.length > MAX_FRAME_LEN) throw new CborError("frame too large");
  const a = asArray(decodeStrict(data), "frame");
  if (a.length !== 4) throw new CborError("frame: not 4 items");
  if (asUint(a[0], "version") !== VERSION) throw new CborError("frame: unknown version");
  return { type: asUint(a[1], "type"), id: asU64(a[2], "id"), body: asMap(a[3], "body") };
}

export interface Address {
  user: string;
  device: number;
}

export const encodeAddress = (a: Address): CborMap =>
  map([
    [0, a.user],
    [1, a.device],
  ]);

export function decodeAddress(item: Item | undefined): Address {
  const m = asMap(item, "address");
  return { user: asText(m.get(0), "user", 64), device: asUint(m.get(1), "device", 0xffffffff) };
}

/** The `Error` frame's code name and message. */
export function errorOf(f: Frame): { code: string; message: string } {
  const code = ErrorCode[asUint(f.body.get(0), "code")] ?? "Internal";
  const message = f.body.has(1) ? asText(f.body.get(1), "message") : "";
  return { code, message };
}
