// Encrypted files (PROTOCOL §15): chunks sealed under a per-file key, and
// the checks a reader makes before keeping anything. This client does not
// yet download files (the page says a file was sent); the construction is
// here, checked against vector V10, for the client's next step.
import { type Bytes, be64, bytes, concat, equal, utf8 } from "./bytes.js";
import { aeadOpen, aeadSeal, hkdf, sha256 } from "./crypto.js";

export const CHUNK_LEN = 65536;
export const SEALED_CHUNK_LEN = CHUNK_LEN + 16;
const MAX_CHUNKS = 2 ** 24;
const CHUNK_AD = utf8("chatify file chunk v1");

export class FileError extends Error {}

async function chunkKey(fileKey: Uint8Array): Promise<Bytes> {
  return hkdf(null, fileKey, utf8("chatify file v1"), 32);
}

function nonce(i: number, last: boolean): Bytes {
  return concat(bytes(3), be64(i), Uint8Array.of(last ? 1 : 0));
}

/** Seals a whole file: the blob and its SHA-256. */
export async function sealFile(fileKey: Uint8Array, data: Uint8Array): Promise<{ blob: Bytes; digest: Bytes }> {
  const key = await chunkKey(fileKey);
  const sealed: Bytes[] = [];
  const whole = Math.floor(data.length / CHUNK_LEN);
  if (whole + 1 > MAX_CHUNKS) throw new FileError("file too large");
  for (let i = 0; i <= whole; i++) {
    const last = i === whole;
    sealed.push(await aeadSeal(key, nonce(i, last), CHUNK_AD, data.subarray(i * CHUNK_LEN, last ? data.length : (i + 1) * CHUNK_LEN)));
  }
  const blob = concat(...sealed);
  return { blob, digest: await sha256(blob) };
}

/** Opens a blob as §15 says, or throws: every chunk, the end, the size and the digest. */
export async function openFile(fileKey: Uint8Array, blob: Uint8Array, size: number, digest: Uint8Array): Promise<Bytes> {
  const key = await chunkKey(fileKey);
  const parts: Bytes[] = [];
  let total = 0;
  for (let i = 0, at = 0; ; i++) {
    if (at >= blob.length) throw new FileError("the blob ends before its last chunk");
    const piece = blob.subarray(at, at + SEALED_CHUNK_LEN);
    const last = piece.length < SEALED_CHUNK_LEN;
    let pt: Bytes;
    try {
      pt = await aeadOpen(key, nonce(i, last), CHUNK_AD, piece);
    } catch {
      throw new FileError(`chunk ${i} does not open`);
    }
    total += pt.length;
    if (total > size) throw new FileError("more bytes than the message named");
    parts.push(pt);
    at += piece.length;
    if (last) {
      if (at !== blob.length) throw new FileError("bytes follow the last chunk");
      break;
    }
  }
  if (total !== size || !equal(await sha256(blob), digest)) throw new FileError("not the blob the message named");
  return concat(...parts);
}
