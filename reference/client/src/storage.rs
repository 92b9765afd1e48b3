//! The file operations the client's state and message log are made of, as a
//! trait, so that a test can put a fault-injecting file system under a real
//! client (`tests/crash_points.rs` crashes it at every one of them).
//!
//! Every write the client makes is one of these calls; durability comes
//! only from [`Storage::sync`] (a file's data) and [`Storage::sync_dir`]
//! (the names in a directory: a created or renamed file).

use std::fmt;
use std::io::Write;
use std::path::Path;

/// The file operations of a client's home directory.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Creates the directory (mode 0700) if it does not exist.
    fn create_dir(&self, dir: &Path) -> std::io::Result<()>;
    /// A whole file (`NotFound` if there is none).
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
    /// Creates or truncates `path` (mode 0600) and writes `bytes`; nothing
    /// is durable until [`Storage::sync`].
    fn write_new(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()>;
    /// Appends to `path`, creating it (mode 0600) if needed; returns
    /// whether it was created (its name is then durable only after
    /// [`Storage::sync_dir`]).
    fn append(&self, path: &Path, bytes: &[u8]) -> std::io::Result<bool>;
    /// Cuts `path` to `len` bytes.
    fn truncate(&self, path: &Path, len: u64) -> std::io::Result<()>;
    /// Makes a file's contents durable (`fsync`).
    fn sync(&self, path: &Path) -> std::io::Result<()>;
    /// Makes a file's data and size durable, not its times (`fdatasync`):
    /// enough after an append.
    fn sync_data(&self, path: &Path) -> std::io::Result<()> {
        self.sync(path)
    }
    /// Renames `from` over `to` (atomic; durable after [`Storage::sync_dir`]).
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()>;
    /// Makes a directory's entries durable (`fsync` of the directory).
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> std::io::Result<()>;
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsStorage;

impl Storage for OsStorage {
    fn create_dir(&self, dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        if dir.is_dir() {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }

    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn write_new(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?
            .write_all(bytes)
    }

    fn append(&self, path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
        use std::os::unix::fs::OpenOptionsExt;
        let created = !path.exists();
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?
            .write_all(bytes)?;
        Ok(created)
    }

    fn truncate(&self, path: &Path, len: u64) -> std::io::Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(len)
    }

    fn sync(&self, path: &Path) -> std::io::Result<()> {
        // fsync applies to the file, whichever descriptor wrote it.
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .sync_all()
    }

    fn sync_data(&self, path: &Path) -> std::io::Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .sync_data()
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn remove(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_file(path)
    }
}
