//! File-transfer runs (scenarios with a `[files]` table): the real
//! `chatify send-file` and `chatify inbox` processes move files of each
//! size through a child server, while the harness times them, samples the
//! peak resident memory of the sending, receiving and serving processes,
//! checks every saved file byte for byte, and runs the leak taps over what
//! the server read, stored, logged and held (docs/PROTOCOL.md §15).
//!
//! ```text
//!  file (canary every 64 KiB) ─▶ chatify send-file ─▶ wire tap ─▶ chatify-server ─▶ SQLite
//!                                  peak RSS sampled     scanned     peak RSS, log,   scanned
//!                                                                   memory scanned   after upload
//!  chatify inbox --downloads ◀── parts ◀──┘   saved file == sent file (SHA-256)
//! ```
//!
//! The mutant (`leaky = true`) uploads each file's plaintext as its blob,
//! speaking the blob frames itself on the sender's connection: the wire and
//! store taps must find it.

use anyhow::{Context as _, Result, anyhow, bail};
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chatify_client::Client;
use chatify_proto::frame;
use chatify_proto::limits::BLOB_PART_LEN;
use chatify_server::store::sqlite::Durability;
use sha2::{Digest, Sha256};

use crate::metrics::Check;
use crate::plaintext::{self, Detector, Plaintext};
use crate::report::files::{ChatLatency, FilesOutcome, Peaks, Transfer};
use crate::scenario::{Files, Scenario, Verdict};
use crate::taps::{self, TapResult, WireTap};
use crate::topology::{Topology, proc_peak_rss_kib};

const PASSPHRASE: &str = "harness home";
const BLOCK: usize = 64 * 1024;

/// Writes a file of `size` bytes: blocks of 64 KiB, each opening with its
/// own canary. Returns the blocks' canaries (with each block's first KiB)
/// and the file's SHA-256.
fn write_file(path: &Path, file: usize, size: u64) -> Result<(Vec<Plaintext>, [u8; 32])> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hash = Sha256::new();
    let mut blocks = Vec::new();
    let mut rng = rand::rng();
    let mut left = size;
    let mut n = 0u64;
    while left > 0 {
        let len = left.min(BLOCK as u64) as usize;
        let mut p = plaintext::make(file, n, len, &mut rng);
        p.bytes.truncate(len);
        out.write_all(&p.bytes)?;
        hash.update(&p.bytes);
        p.bytes.truncate(1024);
        blocks.push(p);
        left -= len as u64;
        n += 1;
    }
    out.flush()?;
    Ok((blocks, hash.finalize().into()))
}

fn sha256_of(path: &Path) -> Result<[u8; 32]> {
    let mut f = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hash.finalize().into())
}

/// A `chatify` process on `home`: how long until it exited (or printed a
/// line containing `until`, then it is stopped), its peak resident memory
/// sampled every 5 ms, and whether it succeeded.
async fn chatify(
    url: &str,
    home: &Path,
    args: &[&std::ffi::OsStr],
    until: Option<&str>,
) -> Result<(Duration, Peaks, String)> {
    let bin = crate::load::lifetimes::chatify_binary()?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .env_remove("CHATIFY_PASSPHRASE_FILE")
        .env("CHATIFY_PASSPHRASE", PASSPHRASE)
        .arg("--server")
        .arg(url)
        .arg("--home")
        .arg(home)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("no pid")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    // Progress ("…: 42% of N bytes") goes to standard error once the home
    // is unlocked and the first part has moved.
    let moving = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&moving);
    let errors = tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let got = buf.get(..n).unwrap_or_default();
            if got.contains(&b'%') {
                seen.store(true, Ordering::Relaxed);
            }
            all.extend_from_slice(got);
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt as _;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send((line, Instant::now()));
        }
    });
    let mut peak = Peaks::default();
    let mut said = String::new();
    let mut done_at = None;
    let status = loop {
        peak.whole = peak.whole.max(proc_peak_rss_kib(pid).unwrap_or(0));
        if moving.load(Ordering::Relaxed) {
            let now = crate::topology::process(pid)
                .and_then(|p| p.status().ok())
                .and_then(|st| st.vmrss)
                .unwrap_or(0);
            peak.moving = peak.moving.max(now);
        }
        while let Ok((line, at)) = rx.try_recv() {
            if until.is_some_and(|u| line.contains(u)) && done_at.is_none() {
                done_at = Some(at);
            }
            said.push_str(&line);
            said.push('\n');
        }
        if done_at.is_some() {
            let _ = child.start_kill();
        }
        match tokio::time::timeout(Duration::from_millis(5), child.wait()).await {
            Ok(status) => break status?,
            Err(_) => continue,
        }
    };
    let err = errors.await.unwrap_or_default();
    let took = done_at.map_or_else(|| started.elapsed(), |at| at - started);
    if !status.success() && done_at.is_none() {
        bail!("chatify {:?} failed: {}", args, err.trim());
    }
    Ok((took, peak, said))
}

/// Two in-process users, carol and dave, chatting beside the transfers:
/// carol sends a message every 50 ms and dave's client receives it; the
/// latency of each (send to decrypted) is kept, with whether a file was
/// moving at the time.
struct Chatter {
    stop: Arc<AtomicBool>,
    moving: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(Vec<u64>, Vec<u64>)>>,
}

impl Chatter {
    async fn start(url: &str, dir: &Path) -> Result<Chatter> {
        let options = chatify_client::ConnectOptions::new(url);
        let pass = crate::load::home_passphrase();
        let mut users = Vec::new();
        for name in ["carol", "dave"] {
            let password = format!("{name}-files-password");
            Client::register(&options, name, &password).await?;
            users.push(Client::login(&options, &dir.join(name), &pass, name, &password, 1).await?);
        }
        let (mut dave, mut carol) = (users.pop().context("dave")?, users.pop().context("carol")?);
        carol.set_send_reservation(chatify_core::MAX_RESERVED_SENDS);
        let stop = Arc::new(AtomicBool::new(false));
        let moving = Arc::new(AtomicBool::new(false));
        let (s, m) = (Arc::clone(&stop), Arc::clone(&moving));
        let task = tokio::spawn(async move {
            let (mut quiet, mut busy) = (Vec::new(), Vec::new());
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                let during = m.load(Ordering::Relaxed);
                let sent = Instant::now();
                carol.send("dave", b"while files move").await?;
                loop {
                    match tokio::time::timeout(Duration::from_secs(10), dave.next_event()).await {
                        Ok(Ok(Some(chatify_client::Event::Message(_)))) => break,
                        Ok(Ok(Some(_))) => {}
                        other => bail!("dave received nothing: {other:?}"),
                    }
                }
                let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                if during && m.load(Ordering::Relaxed) {
                    busy.push(us);
                } else if !during {
                    quiet.push(us);
                }
            }
            carol.close().await;
            dave.close().await;
            Ok((quiet, busy))
        });
        Ok(Chatter { stop, moving, task })
    }

    async fn finish(self) -> Result<(Vec<u64>, Vec<u64>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?
    }
}

/// The `q` quantile of `v` (µs) in ms.
fn quantile_ms(v: &[u64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).map_or(f64::NAN, |&us| us as f64 / 1000.0)
}

/// Registers and logs in `name` on `home` through the CLI.
async fn account(url: &str, home: &Path, name: &str) -> Result<()> {
    for args in [["register", name], ["login", name]] {
        let bin = crate::load::lifetimes::chatify_binary()?;
        let mut child = tokio::process::Command::new(bin)
            .env("CHATIFY_PASSPHRASE", PASSPHRASE)
            .arg("--server")
            .arg(url)
            .arg("--home")
            .arg(home)
            .args(args)
            .arg("--password-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt as _;
            stdin
                .write_all(format!("{name}-files-password\n").as_bytes())
                .await?;
        }
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            bail!(
                "{name}: {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

/// The mutant: uploads the file's plaintext as a blob on the sender's own
/// connection (what a client that forgot to encrypt would store).
async fn leak(url: &str, home: &Path, path: &Path) -> Result<()> {
    let options = chatify_client::ConnectOptions::new(url);
    let passphrase = chatify_client::Passphrase::new(PASSPHRASE);
    let client = Client::resume(home, &passphrase, Some(&options)).await?;
    let bytes = std::fs::read(path)?;
    let reply = client
        .connection()
        .request(frame::BlobCreate {
            size: bytes.len() as u64,
        })
        .await?;
    let chatify_proto::Body::BlobState(state) = reply else {
        bail!("BlobCreate answered {}", reply.name());
    };
    for (i, part) in bytes.chunks(BLOB_PART_LEN).enumerate() {
        client
            .connection()
            .request(frame::BlobPut {
                blob: state.blob,
                part: i as u32,
                data: part.to_vec(),
            })
            .await?;
    }
    client.close().await;
    Ok(())
}

/// Runs the scenario's transfers.
pub(crate) async fn run(s: &Scenario) -> Result<FilesOutcome> {
    let f = s
        .files
        .as_ref()
        .ok_or_else(|| anyhow!("not a file scenario"))?;
    let dir = tempfile::tempdir()?;
    let mut node = Topology::for_load(&dir.path().join("server"), Durability::Full, 8);
    node.log_level = "debug";
    std::fs::create_dir_all(&node.data_dir)?;
    node.start().await?;
    let pid = node.pid().context("the server runs as a child")?;
    // Every byte the clients send is searched: the tap holds a whole
    // upload (scanned and dropped after each transfer).
    let largest = f.sizes_kib.iter().max().copied().unwrap_or(0) as usize * 1024;
    let tap = WireTap::keeping(node.addr, 2 * largest + (64 << 20)).await?;
    let url = format!("ws://{}", tap.addr);
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    account(&url, &alice, "alice").await?;
    account(&url, &bob, "bob").await?;
    let chatter = Chatter::start(&url, dir.path()).await?;
    // A quiet second of chat first, for the latency without files.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle, idle_peak, _) = chatify(
        &url,
        &bob,
        &["inbox".as_ref(), "--wait".as_ref(), "0".as_ref()],
        None,
    )
    .await?;
    let mut transfers = Vec::new();
    let mut blocks = Vec::new();
    let mut store = TapResult::default();
    let mut wire = TapResult::default();
    for (i, &kib) in f.sizes_kib.iter().enumerate() {
        let repeats = if kib <= f.repeat_below_kib {
            f.repeats
        } else {
            1
        };
        for r in 0..repeats {
            let size = kib * 1024;
            eprintln!("  {size} bytes ({}/{repeats})", r + 1);
            let path = dir.path().join(format!("file-{i}-{r}.bin"));
            let (file_blocks, digest) = write_file(&path, i * 100 + r, size)?;
            let detector = Detector::new(file_blocks.iter());
            chatter.moving.store(true, Ordering::Relaxed);
            let t = transfer(&url, &alice, &bob, &path, digest, f.leaky, dir.path()).await;
            chatter.moving.store(false, Ordering::Relaxed);
            let t = t?;
            add(&mut store, taps::scan_dir(&node.data_dir, &detector));
            add(&mut wire, tap.drain_scan(&detector));
            blocks.extend(file_blocks);
            if let Some(t) = t {
                transfers.push(t);
            }
            std::fs::remove_file(&path)?;
        }
    }
    let (quiet, busy) = chatter.finish().await?;
    let detector = Detector::new(blocks.iter());
    let memory = taps::scan_memory(pid, &[&detector])?
        .pop()
        .unwrap_or_default();
    let server_peak_kib = proc_peak_rss_kib(pid).unwrap_or(0);
    node.stop(false).await;
    let logs = taps::scan_file(&node.log, &detector);
    let taps = vec![
        ("wire".to_owned(), wire),
        ("store".to_owned(), store),
        ("logs".to_owned(), logs),
        ("memory".to_owned(), memory),
    ];
    let mut outcome = FilesOutcome {
        transfers,
        idle_ms: idle.as_secs_f64() * 1000.0,
        idle_peak_kib: idle_peak.whole,
        server_peak_kib,
        chat: ChatLatency {
            quiet: quiet.len(),
            quiet_p50_ms: quantile_ms(&quiet, 0.5),
            quiet_p99_ms: quantile_ms(&quiet, 0.99),
            moving: busy.len(),
            moving_p50_ms: quantile_ms(&busy, 0.5),
            moving_p99_ms: quantile_ms(&busy, 0.99),
        },
        taps,
        checks: Vec::new(),
    };
    outcome.checks = checks(s, f, &outcome);
    Ok(outcome)
}

fn add(total: &mut TapResult, r: TapResult) {
    total.bytes += r.bytes;
    total.matches += r.matches;
    total.hits.extend(
        r.hits
            .into_iter()
            .take(20usize.saturating_sub(total.hits.len())),
    );
}

/// Sends one file from alice to bob and saves it (`None` for the mutant,
/// which only uploads the plaintext).
async fn transfer(
    url: &str,
    alice: &Path,
    bob: &Path,
    path: &Path,
    digest: [u8; 32],
    leaky: bool,
    dir: &Path,
) -> Result<Option<Transfer>> {
    if leaky {
        leak(url, alice, path).await?;
        return Ok(None);
    }
    let (send, sender, _) = chatify(
        url,
        alice,
        &["send-file".as_ref(), "bob".as_ref(), path.as_os_str()],
        None,
    )
    .await?;
    let downloads = dir.join("downloads");
    let (receive, receiver, said) = chatify(
        url,
        bob,
        &[
            "--downloads".as_ref(),
            downloads.as_os_str(),
            "inbox".as_ref(),
            "--wait".as_ref(),
            "5".as_ref(),
        ],
        Some("saved "),
    )
    .await?;
    let name = path.file_name().context("a file name")?;
    let saved = downloads.join(name);
    let intact = saved.is_file() && sha256_of(&saved)? == digest;
    if !intact {
        eprintln!("  not saved intact; the receiver said:\n{said}");
    }
    let _ = std::fs::remove_dir_all(&downloads);
    Ok(Some(Transfer {
        size: std::fs::metadata(path)?.len(),
        send_ms: send.as_secs_f64() * 1000.0,
        receive_ms: receive.as_secs_f64() * 1000.0,
        sender,
        receiver,
        intact,
    }))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The run's checks.
pub(crate) fn checks(s: &Scenario, f: &Files, o: &FilesOutcome) -> Vec<Check> {
    let check = |name: &'static str, verdict: Verdict, evidence: String| Check {
        name,
        verdict,
        expected: s.expected(name),
        evidence,
    };
    let pass = |ok: bool| if ok { Verdict::Pass } else { Verdict::Fail };
    let mut out = Vec::new();
    if f.leaky {
        out.push(check(
            "files.intact",
            Verdict::Skipped,
            "the mutant only uploads".into(),
        ));
    } else {
        let broken = o.transfers.iter().filter(|t| !t.intact).count();
        out.push(check(
            "files.intact",
            pass(!o.transfers.is_empty() && broken == 0),
            format!(
                "{} of {} files saved byte for byte (SHA-256)",
                o.transfers.len() - broken,
                o.transfers.len()
            ),
        ));
        let most = |f: fn(&Transfer) -> u64| o.transfers.iter().map(f).max().unwrap_or(0);
        let whole = most(|t| t.sender.whole.max(t.receiver.whole));
        let moving = most(|t| t.sender.moving.max(t.receiver.moving));
        let largest = o.transfers.iter().map(|t| t.size).max().unwrap_or(0);
        out.push(check(
            "files.client-memory",
            pass(moving > 0 && whole <= o.idle_peak_kib + f.max_client_extra_mib as u64 * 1024 && mib(moving) <= f.max_client_moving_mib),
            format!(
                "largest file {:.0} MiB; a sending or receiving chatify's resident memory while the file moved: at most {:.1} MiB (bound {} MiB); its peak over its life: {:.1} MiB, {:.1} MiB above an idle one's {:.1} MiB, which unlocking the home takes (bound: {} MiB above)",
                mib(largest / 1024),
                mib(moving),
                f.max_client_moving_mib,
                mib(whole),
                mib(whole) - mib(o.idle_peak_kib),
                mib(o.idle_peak_kib),
                f.max_client_extra_mib
            ),
        ));
    }
    if let Some(max) = f.max_chat_p99_ms {
        let c = &o.chat;
        out.push(check(
            "files.chat-latency",
            pass(c.moving > 0 && c.moving_p99_ms <= max),
            format!(
                "a chat on the same server, a message every 50 ms: p50 {:.1} ms, p99 {:.1} ms over {} messages while files moved (bound {max} ms); p50 {:.1} ms, p99 {:.1} ms over {} without",
                c.moving_p50_ms, c.moving_p99_ms, c.moving, c.quiet_p50_ms, c.quiet_p99_ms, c.quiet
            ),
        ));
    }
    out.push(check(
        "files.server-memory",
        pass(o.server_peak_kib > 0 && mib(o.server_peak_kib) <= f.max_server_rss_mib),
        format!(
            "peak resident memory of the server: {:.1} MiB (bound {} MiB)",
            mib(o.server_peak_kib),
            f.max_server_rss_mib
        ),
    ));
    for (tap, name) in [
        ("wire", "leak.wire"),
        ("store", "leak.store"),
        ("logs", "leak.logs"),
        ("memory", "leak.memory"),
    ] {
        let Some((_, r)) = o.taps.iter().find(|(t, _)| t == tap) else {
            continue;
        };
        let evidence = match r.hits.first() {
            None => format!("{} bytes searched: no canary or plaintext window", r.bytes),
            Some(h) => format!(
                "{} bytes searched: {} matches, first {} at {} offset {}",
                r.bytes, r.matches, h.form, h.place, h.offset
            ),
        };
        // The mutant's claim is what reaches the wire and the store; what
        // a server that never decodes the parts keeps elsewhere is not.
        let verdict = if f.leaky && matches!(tap, "logs" | "memory") {
            Verdict::Skipped
        } else {
            pass(r.bytes > 0 && r.matches == 0)
        };
        out.push(check(name, verdict, evidence));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(leaky: bool) -> (Scenario, Files) {
        let text = format!(
            "name = \"t\"\ndescription = \"t\"\n[users]\ncount = 2\n[workload]\nmessages = 1\nrate = 1.0\n\
             [files]\nsizes_kib = [1]\nmax_client_extra_mib = 16\nmax_client_moving_mib = 32\nmax_server_rss_mib = 96\nmax_chat_p99_ms = 250.0\nleaky = {leaky}\n"
        );
        let s: Scenario = toml::from_str(&text).expect("a scenario");
        let f = s.files.clone().expect("files");
        (s, f)
    }

    fn honest() -> FilesOutcome {
        let peaks = Peaks {
            whole: 70_000,
            moving: 6_000,
        };
        let transfer = Transfer {
            size: 200 << 20,
            send_ms: 2000.0,
            receive_ms: 1200.0,
            sender: peaks,
            receiver: peaks,
            intact: true,
        };
        let clean = TapResult {
            bytes: 1000,
            ..TapResult::default()
        };
        FilesOutcome {
            transfers: vec![transfer],
            idle_ms: 100.0,
            idle_peak_kib: 69_000,
            server_peak_kib: 18_000,
            chat: ChatLatency {
                quiet: 20,
                quiet_p50_ms: 2.0,
                quiet_p99_ms: 4.0,
                moving: 40,
                moving_p50_ms: 3.0,
                moving_p99_ms: 20.0,
            },
            taps: ["wire", "store", "logs", "memory"]
                .into_iter()
                .map(|t| (t.to_owned(), clean.clone()))
                .collect(),
            checks: Vec::new(),
        }
    }

    fn failed(o: &FilesOutcome, leaky: bool) -> Vec<&'static str> {
        let (s, f) = scenario(leaky);
        checks(&s, &f, o)
            .into_iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .map(|c| c.name)
            .collect()
    }

    fn leak(o: &mut FilesOutcome, tap: &str) {
        if let Some((_, r)) = o.taps.iter_mut().find(|(t, _)| t == tap) {
            r.matches = 3;
        }
    }

    /// Each check fails on the run it is there to catch, and only then.
    #[test]
    fn each_check_catches_its_mutant() {
        assert_eq!(failed(&honest(), false), Vec::<&str>::new());
        type Mutant = (&'static str, fn(&mut FilesOutcome));

        let mutants: [Mutant; 10] = [
            ("files.chat-latency", |o| o.chat.moving_p99_ms = 900.0),
            ("files.chat-latency", |o| o.chat.moving = 0),
            ("files.intact", |o| o.transfers[0].intact = false),
            ("files.intact", |o| o.transfers.clear()),
            // A client that holds the whole file while it moves.
            ("files.client-memory", |o| {
                o.transfers[0].receiver.moving = 200 << 10
            }),
            ("files.client-memory", |o| {
                o.transfers[0].sender.whole = 300 << 10
            }),
            ("files.server-memory", |o| o.server_peak_kib = 250 << 10),
            ("leak.wire", |o| leak(o, "wire")),
            ("leak.store", |o| leak(o, "store")),
            ("leak.memory", |o| leak(o, "memory")),
        ];
        for (name, mutate) in mutants {
            let mut o = honest();
            mutate(&mut o);
            let mut want = vec![name];
            if name == "files.intact" && o.transfers.is_empty() {
                want.push("files.client-memory");
            }
            assert_eq!(failed(&o, false), want, "{name}");
        }
        // The mutant's run: the logs and memory taps are not claimed.
        let mut o = honest();
        leak(&mut o, "logs");
        assert_eq!(failed(&o, true), Vec::<&str>::new());
        leak(&mut o, "store");
        assert_eq!(failed(&o, true), vec!["leak.store"]);
    }
}
