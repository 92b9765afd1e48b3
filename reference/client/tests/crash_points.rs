//! Crash consistency at every write (in the spirit of ALICE, OSDI 2014).
//!
//! Alice's client runs on a simulated file system that records every
//! mutating operation of her state file and message log (write, append,
//! truncate, fsync, rename, directory fsync, remove). For each operation
//! index the same conversation is run again and Alice crashes at that
//! operation; the disk she restarts from is built three ways: only what was
//! made durable (fsynced data, names made durable by a directory fsync),
//! everything written (as if the system flushed it all), and a torn tail
//! (durable data plus half of the last unsynced append). She restarts from
//! it and the conversation finishes. Checked every time: her state loads; no
//! message key is used twice; every message a sender was told is stored
//! reaches its recipient (shown, or in the message log when the crash came
//! between logging and showing it); no message is shown twice; nothing is
//! rejected.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatify_client::state::StateFile;
use chatify_client::storage::Storage;
use chatify_client::{Client, ClientError, ConnectOptions, Event};
use chatify_proto::Envelope;
use common::{pass, server};

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Debug, Default)]
struct Disk {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    ops: usize,
    crash_at: Option<usize>,
    crashed: bool,
    mutant: Mutant,
}

/// A client that skips a step of its durability protocol, played by a file
/// system that ignores the call: the explorer must catch each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Mutant {
    #[default]
    None,
    /// Never makes a directory's entries durable (no directory fsync).
    NoDirSync,
    /// Never cuts a torn record off the message log.
    NoLogRepair,
}

/// How the disk looks after the crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Only what was made durable.
    Durable,
    /// Everything written.
    Everything,
    /// Durable, plus half of each file's unsynced appended bytes.
    Torn,
}

#[derive(Debug, Clone, Default)]
struct SimFs(Arc<Mutex<Disk>>);

fn crashed() -> std::io::Error {
    std::io::Error::other("simulated crash")
}

impl SimFs {
    fn crashing_at(op: Option<usize>, mutant: Mutant) -> Self {
        let fs = SimFs::default();
        {
            let mut d = fs.0.lock().unwrap();
            d.crash_at = op;
            d.mutant = mutant;
        }
        fs
    }

    /// Counts a mutating operation; fails it (and everything after) at the
    /// crash point.
    fn op(&self) -> Result<std::sync::MutexGuard<'_, Disk>, std::io::Error> {
        let mut d = self.0.lock().unwrap();
        if d.crashed || d.crash_at == Some(d.ops) {
            d.crashed = true;
            return Err(crashed());
        }
        d.ops += 1;
        Ok(d)
    }

    fn ops(&self) -> usize {
        self.0.lock().unwrap().ops
    }

    fn has_crashed(&self) -> bool {
        self.0.lock().unwrap().crashed
    }

    /// The disk a restarted process finds.
    fn after_crash(&self, after: After) -> SimFs {
        let d = self.0.lock().unwrap();
        let names = match after {
            After::Everything => d.names.clone(),
            After::Durable | After::Torn => d.durable_names.clone(),
        };
        let mut disk = Disk {
            mutant: d.mutant,
            ..Disk::default()
        };
        for (name, i) in names {
            let inode = &d.inodes[i];
            let data = match after {
                After::Everything => inode.data.clone(),
                After::Durable => inode.synced.clone(),
                After::Torn if inode.data.starts_with(&inode.synced) => {
                    let extra = (inode.data.len() - inode.synced.len()) / 2;
                    inode.data[..inode.synced.len() + extra].to_vec()
                }
                After::Torn => inode.synced.clone(),
            };
            disk.inodes.push(Inode {
                data: data.clone(),
                synced: data,
            });
            disk.names.insert(name.clone(), disk.inodes.len() - 1);
            disk.durable_names.insert(name, disk.inodes.len() - 1);
        }
        SimFs(Arc::new(Mutex::new(disk)))
    }
}

fn not_found() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::NotFound)
}

impl Storage for SimFs {
    fn create_dir(&self, _: &Path) -> std::io::Result<()> {
        if self.has_crashed() {
            return Err(crashed());
        }
        Ok(())
    }

    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let d = self.0.lock().unwrap();
        if d.crashed {
            return Err(crashed());
        }
        let i = *d.names.get(path).ok_or_else(not_found)?;
        Ok(d.inodes[i].data.clone())
    }

    fn write_new(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let mut d = self.op()?;
        d.inodes.push(Inode {
            data: bytes.to_vec(),
            synced: Vec::new(),
        });
        let i = d.inodes.len() - 1;
        d.names.insert(path.to_owned(), i);
        Ok(())
    }

    fn append(&self, path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
        let mut d = self.op()?;
        match d.names.get(path).copied() {
            Some(i) => {
                d.inodes[i].data.extend_from_slice(bytes);
                Ok(false)
            }
            None => {
                d.inodes.push(Inode {
                    data: bytes.to_vec(),
                    synced: Vec::new(),
                });
                let i = d.inodes.len() - 1;
                d.names.insert(path.to_owned(), i);
                Ok(true)
            }
        }
    }

    fn truncate(&self, path: &Path, len: u64) -> std::io::Result<()> {
        let mut d = self.op()?;
        if d.mutant == Mutant::NoLogRepair {
            return Ok(());
        }
        let i = *d.names.get(path).ok_or_else(not_found)?;
        d.inodes[i].data.truncate(len as usize);
        Ok(())
    }

    fn sync(&self, path: &Path) -> std::io::Result<()> {
        let mut d = self.op()?;
        let i = *d.names.get(path).ok_or_else(not_found)?;
        d.inodes[i].synced = d.inodes[i].data.clone();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        let mut d = self.op()?;
        let i = d.names.remove(from).ok_or_else(not_found)?;
        d.names.insert(to.to_owned(), i);
        Ok(())
    }

    fn sync_dir(&self, _: &Path) -> std::io::Result<()> {
        let mut d = self.op()?;
        if d.mutant == Mutant::NoDirSync {
            return Ok(());
        }
        d.durable_names = d.names.clone();
        Ok(())
    }

    fn remove(&self, path: &Path) -> std::io::Result<()> {
        let mut d = self.op()?;
        d.names.remove(path).ok_or_else(not_found)?;
        Ok(())
    }
}

/// What one run saw.
#[derive(Default)]
struct Seen {
    /// Texts Alice was told were stored (SendOk).
    alice_stored: Vec<String>,
    /// Texts Bob was told were stored.
    bob_stored: Vec<String>,
    /// Every message shown, by recipient.
    shown: HashMap<&'static str, Vec<String>>,
    /// Every rejection.
    rejected: Vec<String>,
}

impl Seen {
    fn record(&mut self, who: &'static str, event: Event) {
        match event {
            Event::Message(m) => self
                .shown
                .entry(who)
                .or_default()
                .push(String::from_utf8_lossy(&m.text).into_owned()),
            Event::Rejected { reason, .. } => self.rejected.push(format!("{who}: {reason}")),
            _ => {}
        }
    }
}

/// Waits until `who` has shown `text`. Err when the client failed (the
/// simulated crash).
async fn receive(
    client: &mut Client,
    who: &'static str,
    text: &str,
    seen: &mut Seen,
) -> Result<Result<(), String>, ClientError> {
    loop {
        let shown = seen
            .shown
            .get(who)
            .is_some_and(|s| s.iter().any(|t| t == text));
        // A message the client logged before it crashed is received: it is
        // in the message log, and its redelivery is not shown again.
        let logged = || {
            client
                .messages()
                .is_ok_and(|m| m.iter().any(|m| m.text == text.as_bytes()))
        };
        if shown || logged() {
            return Ok(Ok(()));
        }
        let Ok(event) = tokio::time::timeout(Duration::from_secs(5), client.next_event()).await
        else {
            return Ok(Err(format!(
                "{who} never received {text:?}; shown {:?}, rejected {:?}",
                seen.shown, seen.rejected
            )));
        };
        let event = event?.ok_or(ClientError::Disconnected)?;
        seen.record(who, event);
    }
}

async fn alice_sends(
    alice: &mut Client,
    to: &str,
    text: &str,
    seen: &mut Seen,
) -> Result<(), ClientError> {
    alice.send(to, text.as_bytes()).await?;
    seen.alice_stored.push(text.into());
    Ok(())
}

async fn bob_sends(bob: &mut Client, to: &str, text: &str, seen: &mut Seen) {
    bob.send(to, text.as_bytes()).await.unwrap();
    seen.bob_stored.push(text.into());
}

/// Alice's part of the conversation; stops at her first failure.
async fn script(
    options: &ConnectOptions,
    alice_file: StateFile,
    names: (&str, &str),
    bob: &mut Client,
    seen: &mut Seen,
) -> Result<(), ClientError> {
    let (a, b) = names;
    let alice_file = alice_file.unlock(&pass())?;
    let mut alice = Client::login_with(options, alice_file, a, "alice-password", 1).await?;
    alice_sends(&mut alice, b, "m0", seen).await?;
    receive(bob, "bob", "m0", seen).await.unwrap().unwrap();
    bob_sends(bob, a, "r0", seen).await;
    receive(&mut alice, "alice", "r0", seen).await?.unwrap();
    alice_sends(&mut alice, b, "m1", seen).await?;
    alice_sends(&mut alice, b, "m2", seen).await?;
    bob_sends(bob, a, "r1", seen).await;
    receive(&mut alice, "alice", "r1", seen).await?.unwrap();
    alice_sends(&mut alice, b, "m3", seen).await?;
    Ok(())
}

/// One run: Alice crashes at operation `crash_at` (never when `None`) and
/// restarts from the disk `after` leaves. Returns the operations counted,
/// or the first property broken.
async fn run(
    options: &ConnectOptions,
    k: usize,
    crash_at: Option<usize>,
    after: After,
    mutant: Mutant,
) -> Result<usize, String> {
    let at = format!("crash at operation {crash_at:?} ({after:?})");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (format!("alice{k}"), format!("bob{k}"));
    Client::register(options, &a, "alice-password")
        .await
        .unwrap();
    Client::register(options, &b, "bob-password").await.unwrap();
    let mut bob = Client::login(options, dir.path(), &pass(), &b, "bob-password", 1)
        .await
        .unwrap();
    let home = PathBuf::from("/alice");
    let fs = SimFs::crashing_at(crash_at, mutant);
    let mut seen = Seen::default();
    let file = StateFile::with_storage(&home, Arc::new(fs.clone()));
    let outcome = script(options, file, (&a, &b), &mut bob, &mut seen).await;
    let ops = fs.ops();
    if outcome.is_err() != fs.has_crashed() {
        return Err(format!("{at}: only the crash may fail Alice: {outcome:?}"));
    }

    // Alice restarts from the disk the crash left, and the conversation
    // ends: everything sent to her arrives, and she writes once more.
    let disk = fs.after_crash(after);
    let unlocked = || {
        StateFile::with_storage(&home, Arc::new(disk.clone()))
            .unlock(&pass())
            .map_err(|e| format!("{at}: the home does not unlock: {e}"))
    };
    let mut alice = match Client::resume_with(unlocked()?, Some(options)).await {
        Ok(c) => c,
        Err(ClientError::NotLoggedIn) => {
            let file = unlocked()?;
            Client::login_with(options, file, &a, "alice-password", 1)
                .await
                .map_err(|e| format!("{at}: login again: {e}"))?
        }
        Err(e) => return Err(format!("{at}: state does not load: {e}")),
    };
    for text in seen.bob_stored.clone() {
        receive(&mut alice, "alice", &text, &mut seen)
            .await
            .map_err(|e| format!("{at}: {e}"))?
            .map_err(|e| format!("{at}: {e}"))?;
    }
    alice_sends(&mut alice, &b, "after the crash", &mut seen)
        .await
        .map_err(|e| format!("{at}: {e}"))?;
    for text in seen.alice_stored.clone() {
        receive(&mut bob, "bob", &text, &mut seen)
            .await
            .unwrap()
            .map_err(|e| format!("{at}: {e}"))?;
    }
    // Anything still on its way (a redelivery) must not be shown again.
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_millis(100), alice.next_event())
            .await
            .map(Result::transpose)
    {
        seen.record("alice", event);
    }

    if !seen.rejected.is_empty() {
        return Err(format!("{at}: rejected {:?}", seen.rejected));
    }
    for who in ["alice", "bob"] {
        let shown = seen.shown.get(who).cloned().unwrap_or_default();
        let unique: HashSet<&String> = shown.iter().collect();
        if unique.len() != shown.len() {
            return Err(format!("{at}: {who} was shown {shown:?}"));
        }
    }
    // Everything Alice received is in her log, readable.
    let log = alice.messages().map_err(|e| format!("{at}: log: {e}"))?;
    for text in &seen.bob_stored {
        if !log.iter().any(|m| m.text == text.as_bytes()) {
            return Err(format!("{at}: {text:?} is not in Alice's message log"));
        }
    }
    // No message key twice among Alice's envelopes, as the server kept them.
    let history = bob.history(&a, 1000).await.unwrap();
    let mut keys = HashSet::new();
    for d in history.iter().filter(|d| d.from.user == a) {
        let env = Envelope::decode(&d.envelope).unwrap();
        if !keys.insert((env.header.ratchet_key, env.header.counter)) {
            return Err(format!(
                "{at}: message key reused (counter {})",
                env.header.counter
            ));
        }
    }
    Ok(ops)
}

/// Every crash point of the conversation, each restarted from the three
/// disks; the first property broken, or how many were explored.
async fn explore(
    options: &ConnectOptions,
    first_k: usize,
    mutant: Mutant,
) -> Result<usize, String> {
    let total = run(options, first_k, None, After::Durable, mutant).await?;
    let mut explored = 0;
    let mut k = first_k + 1;
    for op in 0..total {
        for after in [After::Durable, After::Everything, After::Torn] {
            run(options, k, Some(op), after, mutant).await?;
            k += 1;
            explored += 1;
        }
    }
    Ok(explored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_write_loses_nothing_and_reuses_no_key() {
    let (server, options) = server().await;
    let explored = explore(&options, 0, Mutant::None).await.unwrap();
    assert!(explored >= 60, "{explored} crash points");
    println!("crash points explored: {explored} (every operation x 3 disks after the crash)");
    server.shutdown().await;
}

/// The explorer is not vacuous: a client that never flushes its directory,
/// and one that appends after a torn record, are each caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_catches_a_skipped_directory_fsync_and_an_unrepaired_log() {
    let (server, options) = server().await;
    let err = explore(&options, 1000, Mutant::NoDirSync)
        .await
        .unwrap_err();
    println!("no directory fsync: {err}");
    let err = explore(&options, 2000, Mutant::NoLogRepair)
        .await
        .unwrap_err();
    assert!(err.contains("message log"), "{err}");
    println!("no log repair: {err}");
    server.shutdown().await;
}
