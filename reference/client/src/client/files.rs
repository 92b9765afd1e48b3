//! Encrypted files (PROTOCOL §15): a file is sealed chunk by chunk under a
//! fresh key, uploaded as an opaque blob in parts, and named inside an
//! E2EE message (key, size, digest, name); the recipient fetches the parts,
//! opens them, and keeps the file only if all of it opens as named.
//!
//! ```text
//!  send_file: BlobCreate ─▶ seal 64 KiB chunks ─▶ BlobPut 128 KiB parts
//!             ─▶ BlobGrant(peer's devices) ─▶ message { file } ─▶ BlobRelease
//!  save_file: BlobGet parts ─▶ DIR/.ID.chatify-part (ciphertext)
//!             ─▶ open ─▶ DIR/.ID.chatify-open ─▶ DIR/NAME ─▶ BlobRelease
//! ```
//!
//! Both directions hold one chunk and one part in memory, whatever the
//! file's size. Both resume: an upload under way is recorded (sealed) in
//! the home before its first part leaves, with its key, and continues from
//! what the server holds; a download continues from the ciphertext already
//! on disk. A file that does not open as its message named (a part altered,
//! dropped, reordered, cut or swapped by the server) is never written under
//! its name.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use chatify_core::file::{
    FILE_CHUNK_LEN, FileError, FileKey, FileSealer, SealedFile, open_file, read_full, sealed_len,
};
use chatify_proto::content::FileRef;
use chatify_proto::frame::{self, BlobId};
use chatify_proto::limits::BLOB_PART_LEN;
use chatify_proto::{Body, ErrorCode, MessageId};
use minicbor::bytes::ByteArray;
use minicbor::{Decode, Encode};
use rand::Rng;
use zeroize::Zeroizing;

use super::{Client, SendReceipt, parse_target};
use crate::ClientError;
use crate::connection::{expect, is_code};
use crate::state::StoredMessage;

/// How far a transfer is, in bytes of the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileProgress {
    /// Bytes uploaded or downloaded (including those a resumed transfer
    /// had already moved).
    pub done: u64,
    /// The blob's size.
    pub total: u64,
}

/// A file [`Client::save_file`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedFile {
    /// Where: the directory given, under the file's name (with ` (2)`,
    /// ` (3)`… before the extension if the name was taken).
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// `transfers.cbor`'s plaintext: uploads under way, and the message ids of
/// files already saved (or given up on), so that a restart resumes the
/// others.
#[derive(Default, Encode, Decode)]
struct Book {
    #[n(0)]
    uploads: Vec<Upload>,
    #[n(1)]
    saved: Vec<ByteArray<16>>,
}

#[derive(Clone, Encode, Decode)]
struct Upload {
    #[n(0)]
    peer: String,
    #[n(1)]
    path: String,
    #[n(2)]
    size: u64,
    #[n(3)]
    modified_ms: u64,
    #[n(4)]
    blob: ByteArray<16>,
    #[n(5)]
    key: ByteArray<32>,
}

impl Upload {
    fn same_file(&self, peer: &str, path: &str, size: u64, modified_ms: u64) -> bool {
        self.peer == peer
            && self.path == path
            && self.size == size
            && self.modified_ms == modified_ms
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ClientError + '_ {
    move |e| ClientError::io(path, e)
}

/// The blob's state as the server answered it.
fn blob_state(reply: Body) -> Result<frame::BlobState, ClientError> {
    expect(reply, |b| match b {
        Body::BlobState(s) => Some(s),
        _ => None,
    })
}

impl Client {
    fn book(&self) -> Result<Book, ClientError> {
        let bytes = self.file.transfers()?;
        if bytes.is_empty() {
            return Ok(Book::default());
        }
        minicbor::decode(&bytes)
            .map_err(|_| ClientError::State("the file transfers' record is damaged".into()))
    }

    fn save_book(&self, book: &Book) -> Result<(), ClientError> {
        let mut bytes = Zeroizing::new(Vec::new());
        minicbor::encode(book, &mut *bytes)
            .map_err(|_| ClientError::State("cannot encode the file transfers' record".into()))?;
        self.file.save_transfers(&bytes)
    }

    /// Encrypts the file at `path`, uploads it, and sends it to `peer`
    /// (`user` or `user:device`) with `caption`; returns once the message
    /// is stored for every device. An interrupted send resumes where the
    /// server's copy ends when called again with the same peer and
    /// unchanged file. `progress` is told after each part.
    pub async fn send_file(
        &mut self,
        peer: &str,
        path: &Path,
        caption: &str,
        progress: &mut (dyn FnMut(FileProgress) + Send),
    ) -> Result<SendReceipt, ClientError> {
        let (user, device) = parse_target(peer)?;
        if self.blocked(&user) {
            return Err(ClientError::IdentityChanged { peer: user });
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| FileRef::name_is_valid(n))
            .ok_or_else(|| {
                ClientError::Usage(format!(
                    "{}: the file's name must be 1 to 255 bytes of UTF-8 without control characters",
                    path.display()
                ))
            })?
            .to_owned();
        let meta = std::fs::metadata(path).map_err(io(path))?;
        if !meta.is_file() {
            return Err(ClientError::Usage(format!(
                "{} is not a file",
                path.display()
            )));
        }
        let size = meta.len();
        let modified_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        let shown = path.display().to_string();
        let (blob, key, held) = self.start_upload(peer, &shown, size, modified_ms).await?;
        let total = sealed_len(size);
        let sealed = self.upload(blob, &key, path, held, total, progress).await?;
        if sealed.size != size {
            return Err(ClientError::State(format!(
                "{} changed while it was sent; send it again",
                path.display()
            )));
        }
        let to = self.targets(&user, device).await?;
        let reply = self.conn.request(frame::BlobGrant { blob, to }).await?;
        expect(reply, |b| matches!(b, Body::Ok(_)).then_some(()))?;
        let file = FileRef {
            blob,
            key: *key.as_bytes(),
            size,
            digest: sealed.digest,
            name,
        };
        let mut message_id = [0u8; 16];
        rand::rng().fill_bytes(&mut message_id);
        let receipt = self
            .send_content(peer, caption.as_bytes(), Some(&file), message_id)
            .await?;
        // The recipients hold the blob now; this device's hold goes.
        match self.conn.request(frame::BlobRelease { blob }).await {
            Ok(_) => {}
            Err(e) if is_code(&e, ErrorCode::NotFound) => {}
            Err(e) => return Err(e),
        }
        let mut book = self.book()?;
        book.uploads.retain(|u| u.blob.as_ref() != &blob);
        self.save_book(&book)?;
        Ok(receipt)
    }

    /// The blob, key and bytes held on the server of this file's upload:
    /// the recorded one if it is still on the server, or a new one
    /// (recorded before anything is uploaded).
    async fn start_upload(
        &mut self,
        peer: &str,
        path: &str,
        size: u64,
        modified_ms: u64,
    ) -> Result<(BlobId, FileKey, u64), ClientError> {
        let mut book = self.book()?;
        if let Some(u) = book
            .uploads
            .iter()
            .find(|u| u.same_file(peer, path, size, modified_ms))
            .cloned()
        {
            let blob = *u.blob;
            match self.conn.request(frame::BlobStatus { blob }).await {
                Ok(reply) => {
                    let state = blob_state(reply)?;
                    return Ok((blob, FileKey::from_bytes(*u.key), state.received));
                }
                Err(e) if is_code(&e, ErrorCode::NotFound) => {
                    book.uploads.retain(|x| x.blob.as_ref() != &blob);
                }
                Err(e) => return Err(e),
            }
        }
        let key = FileKey::generate(&mut rand::rng());
        let reply = self
            .conn
            .request(frame::BlobCreate {
                size: sealed_len(size),
            })
            .await?;
        let blob = blob_state(reply)?.blob;
        book.uploads.push(Upload {
            peer: peer.to_owned(),
            path: path.to_owned(),
            size,
            modified_ms,
            blob: blob.into(),
            key: (*key.as_bytes()).into(),
        });
        self.save_book(&book)?;
        Ok((blob, key, 0))
    }

    /// Seals the file and uploads the parts the server does not hold yet
    /// (all of it is sealed: the digest covers the whole blob).
    async fn upload(
        &self,
        blob: BlobId,
        key: &FileKey,
        path: &Path,
        held: u64,
        total: u64,
        progress: &mut (dyn FnMut(FileProgress) + Send),
    ) -> Result<SealedFile, ClientError> {
        let mut input =
            BufReader::with_capacity(FILE_CHUNK_LEN, File::open(path).map_err(io(path))?);
        let mut sealer = FileSealer::new(key);
        let mut chunk = Zeroizing::new(vec![0u8; FILE_CHUNK_LEN]);
        let mut part = Vec::with_capacity(BLOB_PART_LEN);
        let mut index = 0u32;
        let mut sent = 0u64;
        loop {
            let n = read_full(&mut input, &mut chunk).map_err(io(path))?;
            let sealed = sealer.seal_chunk(chunk.get(..n).unwrap_or_default())?;
            let mut rest = sealed.as_slice();
            while !rest.is_empty() {
                let (now, later) = rest.split_at((BLOB_PART_LEN - part.len()).min(rest.len()));
                part.extend_from_slice(now);
                rest = later;
                if part.len() == BLOB_PART_LEN {
                    sent = self
                        .put_part(blob, index, &mut part, sent, held, total)
                        .await?;
                    progress(FileProgress { done: sent, total });
                    index += 1;
                }
            }
            if n < FILE_CHUNK_LEN {
                break;
            }
        }
        if !part.is_empty() {
            sent = self
                .put_part(blob, index, &mut part, sent, held, total)
                .await?;
            progress(FileProgress { done: sent, total });
        }
        Ok(sealer.finish()?)
    }

    /// Uploads `part` unless the server holds it; returns the blob bytes
    /// sent so far.
    async fn put_part(
        &self,
        blob: BlobId,
        index: u32,
        part: &mut Vec<u8>,
        sent: u64,
        held: u64,
        total: u64,
    ) -> Result<u64, ClientError> {
        let end = sent + part.len() as u64;
        if end > total {
            return Err(ClientError::State(
                "the file grew while it was sent; send it again".into(),
            ));
        }
        if end > held {
            let data = std::mem::replace(part, Vec::with_capacity(BLOB_PART_LEN));
            let reply = self
                .conn
                .request(frame::BlobPut {
                    blob,
                    part: index,
                    data,
                })
                .await?;
            blob_state(reply)?;
        }
        part.clear();
        Ok(end)
    }

    /// Messages in the log whose file was not saved yet (a download
    /// interrupted, or not started), oldest first.
    pub fn unsaved_files(&self) -> Result<Vec<StoredMessage>, ClientError> {
        let book = self.book()?;
        Ok(self
            .messages()?
            .into_iter()
            .filter(|m| m.file.is_some() && !book.saved.iter().any(|s| **s == m.message_id))
            .collect())
    }

    /// Downloads and opens the file message `message_id` carries into
    /// `dir`, resuming a download this device began. The file appears
    /// under its name only once all of it opened as the message named it;
    /// a file that does not (the server altered, cut, reordered or swapped
    /// its blob) fails with [`ClientError::File`] and is not tried again.
    pub async fn save_file(
        &mut self,
        message_id: &MessageId,
        file: &FileRef,
        dir: &Path,
        progress: &mut (dyn FnMut(FileProgress) + Send),
    ) -> Result<SavedFile, ClientError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let tag = chatify_proto::hex::lower(message_id);
        let part_path = dir.join(format!(".{tag}.chatify-part"));
        let result = match self.download(file, &part_path, progress).await {
            Ok(()) => open_into(file, &part_path, dir, &tag),
            Err(e) => Err(e),
        };
        match &result {
            // Gone from the server, or not the file named: nothing to resume.
            Err(ClientError::File(_)) => {}
            Err(e) if is_code(e, ErrorCode::NotFound) => {}
            Err(_) => return result, // resumed on the next call
            Ok(_) => {}
        }
        // Recorded as done first: a crash after this point leaves at most a
        // partial file and a hold that the server's retention ends; a crash
        // before it resumes the download (the file, if named, is named again
        // under a new name only if the blob is still there).
        let mut book = self.book()?;
        book.saved.push((*message_id).into());
        self.save_book(&book)?;
        let _ = std::fs::remove_file(&part_path);
        // Releasing is a courtesy to the server's disk: a hold not released
        // (the connection gone) ends with the server's retention.
        let _ = self
            .conn
            .request(frame::BlobRelease { blob: file.blob })
            .await;
        result
    }

    /// Fetches the blob's parts after those already in `part_path`.
    async fn download(
        &self,
        file: &FileRef,
        part_path: &Path,
        progress: &mut (dyn FnMut(FileProgress) + Send),
    ) -> Result<(), ClientError> {
        let total = sealed_len(file.size);
        let part_len = BLOB_PART_LEN as u64;
        let mut out = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(part_path)
            .map_err(io(part_path))?;
        let on_disk = out.metadata().map_err(io(part_path))?.len();
        // Whole parts only (a crash can leave half of one).
        let mut have = (on_disk / part_len * part_len).min(total);
        out.set_len(have).map_err(io(part_path))?;
        out.seek(SeekFrom::End(0)).map_err(io(part_path))?;
        let parts = total.div_ceil(part_len);
        for index in have / part_len..parts {
            let part = u32::try_from(index).map_err(|_| FileError::TooLarge)?;
            let reply = self
                .conn
                .request(frame::BlobGet {
                    blob: file.blob,
                    part,
                })
                .await?;
            let data = expect(reply, |b| match b {
                Body::BlobPart(p) if p.part == part => Some(p.data),
                _ => None,
            })?;
            if data.len() as u64 != part_len.min(total - have) {
                // Not the blob the message named: its parts do not add up.
                return Err(FileError::Mismatch.into());
            }
            out.write_all(&data).map_err(io(part_path))?;
            have += data.len() as u64;
            progress(FileProgress { done: have, total });
        }
        out.sync_data().map_err(io(part_path))
    }
}

/// Opens the downloaded blob into a hidden file, then gives it the file's
/// name (one not taken) in `dir`.
fn open_into(file: &FileRef, blob: &Path, dir: &Path, tag: &str) -> Result<SavedFile, ClientError> {
    let opening = dir.join(format!(".{tag}.chatify-open"));
    let result = (|| {
        let input = BufReader::new(File::open(blob).map_err(io(blob))?);
        let mut output = BufWriter::new(File::create(&opening).map_err(io(&opening))?);
        let expected = SealedFile {
            size: file.size,
            digest: file.digest,
        };
        open_file(
            &FileKey::from_bytes(file.key),
            &expected,
            input,
            &mut output,
        )?;
        let output = output
            .into_inner()
            .map_err(|e| ClientError::io(&opening, e.into_error()))?;
        output.sync_all().map_err(io(&opening))?;
        name_it(&opening, dir, &file.name)
    })();
    let _ = std::fs::remove_file(&opening);
    result.map(|path| SavedFile {
        path,
        size: file.size,
    })
}

/// Links `from` into `dir` as `name`, or `stem (n).ext` if taken; never
/// replaces a file.
fn name_it(from: &Path, dir: &Path, name: &str) -> Result<PathBuf, ClientError> {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    };
    for n in 1..10_000u32 {
        let candidate = if n == 1 {
            dir.join(name)
        } else {
            dir.join(format!("{stem} ({n}){ext}"))
        };
        match std::fs::hard_link(from, &candidate) {
            Ok(()) => {
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
                return Ok(candidate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ClientError::io(&candidate, e)),
        }
    }
    Err(ClientError::State(format!(
        "{}: too many files named {name}",
        dir.display()
    )))
}
