//! Encrypted files (docs/PROTOCOL.md §15): a file sealed in fixed-size
//! chunks under a fresh key, as an opaque blob the server stores; the key,
//! the size and the blob's digest travel inside an E2EE message.
//!
//! ```text
//!  file key (32 random bytes) ─HKDF-SHA256("chatify file v1")─▶ AES-256-GCM key
//!  plaintext │ 65 536 │ 65 536 │ … │ < 65 536 (possibly 0) │
//!  nonce     │ 0³ ‖ counter (u64 BE) ‖ last (0 or 1)        │
//!  blob      │ chunk₀ ‖ tag │ chunk₁ ‖ tag │ … │ last ‖ tag  │  SHA-256(blob) = digest
//! ```
//!
//! Each chunk's nonce carries its position and whether it is the last
//! (the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár), so
//! a chunk moved, dropped, repeated or taken from another file fails to
//! open, and a blob cut at a chunk boundary ends without its last chunk.
//! The last chunk is the first shorter than a whole one (an empty one for a
//! file whose size is a multiple of the chunk size). The digest over the
//! whole blob and the plaintext size, carried in the E2EE message, name
//! exactly one blob: a swapped one is refused before anything is shown.
//! Memory is one chunk either way, whatever the file's size.
//!
//! ```
//! use chatify_core::file::{FileKey, open_file, seal_file};
//! use rand_chacha::ChaCha20Rng;
//! use rand_chacha::rand_core::SeedableRng;
//!
//! let key = FileKey::generate(&mut ChaCha20Rng::from_seed([7; 32]));
//! let photo = vec![7u8; 200_000];
//! let mut blob = Vec::new();
//! let sealed = seal_file(&key, &photo[..], &mut blob).unwrap();
//! let mut out = Vec::new();
//! open_file(&key, &sealed, &blob[..], &mut out).unwrap();
//! assert_eq!(out, photo);
//! ```

use std::io::{Read, Write};

use aes_gcm::aead::{AeadInOut, KeyInit, Nonce};
use aes_gcm::{Aes256Gcm, Key};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::aead::TAG_LEN;

/// Plaintext bytes of every chunk but the last.
pub const FILE_CHUNK_LEN: usize = 64 * 1024;
/// Bytes of a whole sealed chunk in the blob.
pub const SEALED_CHUNK_LEN: usize = FILE_CHUNK_LEN + TAG_LEN;
/// The most chunks a file may have (a counter beyond it is refused): 2⁴⁰
/// bytes of plaintext.
pub const MAX_FILE_CHUNKS: u64 = 1 << 24;

const INFO: &[u8] = b"chatify file v1";
const AD: &[u8] = b"chatify file chunk v1";

/// A file's key: 32 random bytes, fresh for every file. Wiped when dropped;
/// `Debug` does not show it.
#[derive(Clone)]
pub struct FileKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(..)")
    }
}

impl FileKey {
    /// A fresh key.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> FileKey {
        let mut k = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(k.as_mut());
        FileKey(k)
    }

    /// The key from its bytes (as the E2EE message carried them).
    pub fn from_bytes(bytes: [u8; 32]) -> FileKey {
        FileKey(Zeroizing::new(bytes))
    }

    /// The key's bytes, to put into the E2EE message.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> Aes256Gcm {
        let mut okm = Zeroizing::new([0u8; 32]);
        // 32 bytes are far below HKDF-SHA256's output limit.
        let _ = Hkdf::<Sha256>::new(None, self.0.as_ref()).expand(INFO, okm.as_mut());
        Aes256Gcm::new(&Key::<Aes256Gcm>::from(*okm))
    }
}

/// What names a sealed file: the plaintext's size and SHA-256 of the whole
/// blob (both sent inside the E2EE message, with the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedFile {
    /// Plaintext bytes.
    pub size: u64,
    /// SHA-256 of the blob (every sealed chunk, in order).
    pub digest: [u8; 32],
}

/// Why a blob does not open as the file the message named.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// A chunk did not authenticate: altered, moved, dropped, repeated, from
    /// another file, or a last chunk where it is not the last.
    #[error("chunk {0} of the file did not authenticate")]
    Chunk(u64),
    /// The blob ended before its last chunk (cut at a chunk boundary).
    #[error("the file is truncated: it ends before its last chunk")]
    Truncated,
    /// Bytes follow the last chunk.
    #[error("bytes follow the file's last chunk")]
    Trailing,
    /// The blob is not the one the message named (its digest or size
    /// differs).
    #[error("the blob is not the file the message named (digest or size differs)")]
    Mismatch,
    /// More chunks than [`MAX_FILE_CHUNKS`].
    #[error("the file is too large")]
    TooLarge,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn nonce(counter: u64, last: bool) -> Nonce<Aes256Gcm> {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::<Aes256Gcm>::from(n)
}

/// Seals a file chunk by chunk, in order.
pub struct FileSealer {
    cipher: Aes256Gcm,
    next: u64,
    size: u64,
    hash: Sha256,
    done: bool,
}

impl std::fmt::Debug for FileSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSealer")
            .field("next", &self.next)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl FileSealer {
    /// A sealer for the file of `key`.
    pub fn new(key: &FileKey) -> FileSealer {
        FileSealer {
            cipher: key.cipher(),
            next: 0,
            size: 0,
            hash: Sha256::new(),
            done: false,
        }
    }

    /// Seals the next chunk: [`FILE_CHUNK_LEN`] bytes, or fewer for the
    /// last (which ends the file). Returns the sealed chunk.
    pub fn seal_chunk(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, FileError> {
        if self.done || plaintext.len() > FILE_CHUNK_LEN {
            return Err(FileError::Trailing);
        }
        if self.next >= MAX_FILE_CHUNKS {
            return Err(FileError::TooLarge);
        }
        let last = plaintext.len() < FILE_CHUNK_LEN;
        let mut buf = plaintext.to_vec();
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce(self.next, last), AD, buf.as_mut_slice().into())
            .map_err(|_| FileError::TooLarge)?;
        buf.extend_from_slice(tag.as_slice());
        self.hash.update(&buf);
        self.next += 1;
        self.size += plaintext.len() as u64;
        self.done = last;
        Ok(buf)
    }

    /// The file's name once its last chunk is sealed.
    pub fn finish(self) -> Result<SealedFile, FileError> {
        if !self.done {
            return Err(FileError::Truncated);
        }
        Ok(SealedFile {
            size: self.size,
            digest: self.hash.finalize().into(),
        })
    }
}

/// Opens a blob chunk by chunk, in order, checking it against the file the
/// message named.
pub struct FileOpener {
    cipher: Aes256Gcm,
    expected: SealedFile,
    next: u64,
    size: u64,
    hash: Sha256,
    done: bool,
}

impl std::fmt::Debug for FileOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileOpener")
            .field("next", &self.next)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl FileOpener {
    /// An opener for the file `expected` names, under `key`.
    pub fn new(key: &FileKey, expected: SealedFile) -> FileOpener {
        FileOpener {
            cipher: key.cipher(),
            expected,
            next: 0,
            size: 0,
            hash: Sha256::new(),
            done: false,
        }
    }

    /// Opens the next sealed chunk: [`SEALED_CHUNK_LEN`] bytes, or fewer
    /// for the last. Returns its plaintext.
    pub fn open_chunk(&mut self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, FileError> {
        if self.done || sealed.len() > SEALED_CHUNK_LEN {
            return Err(FileError::Trailing);
        }
        if self.next >= MAX_FILE_CHUNKS {
            return Err(FileError::TooLarge);
        }
        let last = sealed.len() < SEALED_CHUNK_LEN;
        let split = sealed
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(FileError::Chunk(self.next))?;
        let (ct, tag) = sealed.split_at(split);
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| FileError::Chunk(self.next))?;
        let size = self.size + ct.len() as u64;
        if size > self.expected.size {
            return Err(FileError::Mismatch);
        }
        let mut buf = Zeroizing::new(ct.to_vec());
        self.cipher
            .decrypt_inout_detached(
                &nonce(self.next, last),
                AD,
                buf.as_mut_slice().into(),
                &tag.into(),
            )
            .map_err(|_| FileError::Chunk(self.next))?;
        self.hash.update(sealed);
        self.next += 1;
        self.size = size;
        self.done = last;
        Ok(buf)
    }

    /// Checks that the blob ended with its last chunk and is the one named.
    pub fn finish(self) -> Result<(), FileError> {
        if !self.done {
            return Err(FileError::Truncated);
        }
        let digest: [u8; 32] = self.hash.finalize().into();
        if digest != self.expected.digest || self.size != self.expected.size {
            return Err(FileError::Mismatch);
        }
        Ok(())
    }
}

/// The blob's size for a file of `size` bytes: every chunk gains a tag,
/// and a file always ends with a chunk shorter than a whole one (empty if
/// `size` is a multiple of [`FILE_CHUNK_LEN`]).
pub const fn sealed_len(size: u64) -> u64 {
    let chunks = size / FILE_CHUNK_LEN as u64 + 1;
    size.saturating_add(chunks * TAG_LEN as u64)
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(buf.get_mut(n..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Seals what `plaintext` yields into `blob`, one chunk in memory at a time.
pub fn seal_file(
    key: &FileKey,
    mut plaintext: impl Read,
    mut blob: impl Write,
) -> Result<SealedFile, FileError> {
    let mut sealer = FileSealer::new(key);
    let mut buf = Zeroizing::new(vec![0u8; FILE_CHUNK_LEN]);
    loop {
        let n = read_full(&mut plaintext, &mut buf)?;
        let sealed = sealer.seal_chunk(buf.get(..n).unwrap_or_default())?;
        blob.write_all(&sealed)?;
        if n < FILE_CHUNK_LEN {
            break;
        }
    }
    blob.flush()?;
    sealer.finish()
}

/// Opens `blob` as the file `expected` names into `plaintext`, one chunk in
/// memory at a time. On an error, what was written is not the file: a
/// caller writes to a temporary file and keeps it only on success.
pub fn open_file(
    key: &FileKey,
    expected: &SealedFile,
    mut blob: impl Read,
    mut plaintext: impl Write,
) -> Result<(), FileError> {
    let mut opener = FileOpener::new(key, *expected);
    let mut buf = vec![0u8; SEALED_CHUNK_LEN];
    loop {
        let n = read_full(&mut blob, &mut buf)?;
        if n == 0 && opener.next > 0 {
            return Err(FileError::Truncated);
        }
        let chunk = opener.open_chunk(buf.get(..n).unwrap_or_default())?;
        plaintext.write_all(&chunk)?;
        if n < SEALED_CHUNK_LEN {
            break;
        }
    }
    let mut probe = [0u8; 1];
    if read_full(&mut blob, &mut probe)? > 0 {
        return Err(FileError::Trailing);
    }
    plaintext.flush()?;
    opener.finish()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    fn key(tag: u8) -> FileKey {
        FileKey::from_bytes([tag; 32])
    }

    fn sealed(key: &FileKey, data: &[u8]) -> (Vec<u8>, SealedFile) {
        let mut blob = Vec::new();
        let f = seal_file(key, data, &mut blob).unwrap();
        (blob, f)
    }

    fn open(key: &FileKey, f: &SealedFile, blob: &[u8]) -> Result<Vec<u8>, FileError> {
        let mut out = Vec::new();
        open_file(key, f, blob, &mut out).map(|()| out)
    }

    fn chunks(blob: &[u8]) -> Vec<Vec<u8>> {
        blob.chunks(SEALED_CHUNK_LEN).map(<[u8]>::to_vec).collect()
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn sizes_at_the_chunk_edges_round_trip() {
        for n in [
            0,
            1,
            FILE_CHUNK_LEN - 1,
            FILE_CHUNK_LEN,
            FILE_CHUNK_LEN + 1,
            3 * FILE_CHUNK_LEN,
        ] {
            let (blob, f) = sealed(&key(1), &data(n));
            assert_eq!(f.size, n as u64);
            // Whole chunks, then a shorter last one (empty after whole ones).
            assert_eq!(
                blob.len(),
                n / FILE_CHUNK_LEN * SEALED_CHUNK_LEN + n % FILE_CHUNK_LEN + TAG_LEN
            );
            assert_eq!(open(&key(1), &f, &blob).unwrap(), data(n), "{n} bytes");
        }
    }

    /// Every way to rearrange a blob of whole chunks is refused: a chunk
    /// dropped (at the end: a cut at a boundary), two swapped, one
    /// repeated, one from another file under another key, one from another
    /// file under the same key, a bit flipped anywhere, bytes appended; and
    /// a validly sealed other blob in its place.
    #[test]
    fn rearranged_blobs_are_refused() {
        let n = 3 * FILE_CHUNK_LEN + 100;
        let (blob, f) = sealed(&key(1), &data(n));
        let parts = chunks(&blob);
        assert_eq!(parts.len(), 4);
        let join = |p: &[Vec<u8>]| p.concat();
        let refused = |b: &[u8]| open(&key(1), &f, b).is_err();
        // Refused at the chunk itself, before anything after it is written
        // (not only by the digest at the end).
        let at_chunk = |b: &[u8]| matches!(open(&key(1), &f, b), Err(FileError::Chunk(_)));

        for i in 0..parts.len() {
            let mut p = parts.clone();
            p.remove(i);
            assert!(refused(&join(&p)), "chunk {i} dropped");
            let mut p = parts.clone();
            p.insert(i, parts[i].clone());
            assert!(refused(&join(&p)), "chunk {i} repeated");
        }
        assert!(matches!(
            open(&key(1), &f, &join(&parts[..3])),
            Err(FileError::Truncated)
        ));
        for (i, j) in [(0, 1), (1, 2), (0, 2)] {
            let mut p = parts.clone();
            p.swap(i, j);
            assert!(at_chunk(&join(&p)), "chunks {i} and {j} swapped");
        }
        let (other, _) = sealed(&key(2), &data(n));
        let (same_key, _) = sealed(&key(1), &data(n).iter().map(|b| b ^ 1).collect::<Vec<_>>());
        // Under another key a spliced chunk fails where it is; under the
        // same key (never done: a key is fresh per file) a chunk of another
        // file at the same position opens, and only the digest refuses it.
        for i in 0..parts.len() {
            let mut p = parts.clone();
            p[i] = chunks(&other)[i].clone();
            assert!(at_chunk(&join(&p)), "chunk {i} spliced from another file");
            let mut p = parts.clone();
            p[i] = chunks(&same_key)[i].clone();
            assert!(
                refused(&join(&p)),
                "chunk {i} spliced from a file under the same key"
            );
        }
        // The same key's other file is a valid blob, but not the one named.
        assert!(matches!(
            open(&key(1), &f, &same_key),
            Err(FileError::Mismatch)
        ));
        for at in [
            0,
            SEALED_CHUNK_LEN - 1,
            SEALED_CHUNK_LEN + 5,
            blob.len() - 1,
        ] {
            let mut b = blob.clone();
            b[at] ^= 0x10;
            assert!(at_chunk(&b), "bit flipped at {at}");
        }
        let mut b = blob.clone();
        b.push(0);
        assert!(refused(&b), "a byte appended");
        assert!(refused(&[]), "nothing");
        assert!(open(&key(2), &f, &blob).is_err(), "another key");
    }

    /// A file whose size is a multiple of the chunk size ends with an empty
    /// last chunk; without it the blob is a truncated one.
    #[test]
    fn a_whole_number_of_chunks_still_needs_its_last() {
        let (blob, f) = sealed(&key(1), &data(2 * FILE_CHUNK_LEN));
        assert_eq!(blob.len(), 2 * SEALED_CHUNK_LEN + TAG_LEN);
        let cut = &blob[..2 * SEALED_CHUNK_LEN];
        assert!(matches!(open(&key(1), &f, cut), Err(FileError::Truncated)));
    }

    #[test]
    fn the_sealer_refuses_misuse() {
        let mut s = FileSealer::new(&key(1));
        assert!(s.seal_chunk(&vec![0; FILE_CHUNK_LEN + 1]).is_err());
        s.seal_chunk(&[1, 2, 3]).unwrap();
        assert!(s.seal_chunk(&[4]).is_err(), "nothing after the last chunk");
        let unfinished = FileSealer::new(&key(1));
        assert!(matches!(unfinished.finish(), Err(FileError::Truncated)));
        assert_eq!(format!("{:?}", key(9)), "FileKey(..)");
    }

    /// Memory stays one chunk: a reader and a writer that count, over a
    /// file of 4 MiB, never see more than one chunk asked for at once.
    #[test]
    fn memory_is_one_chunk_either_way() {
        struct Counting<R>(R, usize);
        impl<R: Read> Read for Counting<R> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.1 = self.1.max(buf.len());
                self.0.read(buf)
            }
        }
        let n = 4 << 20;
        let mut src = Counting(std::io::repeat(5).take(n as u64), 0);
        let mut blob = Vec::new();
        let f = seal_file(&key(3), &mut src, &mut blob).unwrap();
        assert!(src.1 <= FILE_CHUNK_LEN);
        let mut b = Counting(&blob[..], 0);
        let mut out = Vec::new();
        open_file(&key(3), &f, &mut b, &mut out).unwrap();
        assert!(b.1 <= SEALED_CHUNK_LEN);
        assert_eq!(out.len(), n);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn any_file_round_trips_and_any_cut_is_refused(
            n in 0usize..(3 * FILE_CHUNK_LEN + 10),
            cut_frac in 0.0f64..1.0,
        ) {
            let (blob, f) = sealed(&key(4), &data(n));
            prop_assert_eq!(open(&key(4), &f, &blob).unwrap(), data(n));
            let cut = ((blob.len() as f64) * cut_frac) as usize;
            prop_assert!(open(&key(4), &f, &blob[..cut.min(blob.len() - 1)]).is_err());
        }
    }
}
