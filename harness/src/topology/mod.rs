//! Where the server runs and what happens to it: in the harness's process
//! or as a child process (`chatify-harness __serve`), started, restarted,
//! stopped with SIGTERM or killed with SIGKILL; and the statistics of a
//! process read from `/proc` (CPU time, peak RSS, open sockets).
//!
//! It owns no workload, no taps' searching and no checks: the runner asks
//! it for a server and its address, and for a process's figures.

pub(crate) mod cut;
pub(crate) mod deployment;
pub(crate) mod logsink;

use anyhow::{Context as _, Result, anyhow};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatify_server::auth::PasswordCost;
use chatify_server::store::SqliteStore;
use chatify_server::store::sqlite::Durability;
use chatify_server::{Config, EnvelopeObserver, Server};
use tokio::io::AsyncBufReadExt;

use crate::scenario::ServerMode;

/// A server the harness started.
pub(crate) enum ServerHandle {
    InProcess(Server),
    Child(tokio::process::Child),
}

/// The server of a run: where it runs, its files and its address.
pub(crate) struct Topology {
    pub(crate) mode: ServerMode,
    /// Server log filter: `trace` when the log tap runs, `warn` otherwise
    /// (verbose logging costs time the measurements should not include).
    pub(crate) log_level: &'static str,
    pub(crate) data_dir: PathBuf,
    pub(crate) db: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) durability: Durability,
    pub(crate) addr: SocketAddr,
    pub(crate) handle: Option<ServerHandle>,
    pub(crate) observer: Option<EnvelopeObserver>,
    /// The child server keeps every password and token (a mutant).
    pub(crate) keep_credentials: bool,
    /// Raises the server's limit of connections per client address (the
    /// harness's clients all come from 127.0.0.1); `None` keeps the default.
    pub(crate) max_connections_per_address: Option<usize>,
    /// More options for a child server (the scenario's `server_args`).
    pub(crate) server_args: Vec<String>,
    /// The server's request rate limits as configured by default (abuse
    /// runs), or off: a load run offers all its traffic from one address,
    /// and what it measures must not be the limit.
    pub(crate) request_limits: bool,
    /// A node of several: its PostgreSQL store and NATS (child servers only).
    pub(crate) link: Option<NodeLink>,
}

/// PostgreSQL connections a node of the harness's keeps at most.
pub(crate) const NODE_PG_POOL: usize = 8;

/// How a node of several reaches what the nodes share. (No `Debug`: the
/// store URL may carry a password.)
#[derive(Clone)]
pub(crate) struct NodeLink {
    /// The PostgreSQL URL (through the node's cut relay).
    pub(crate) store_url: String,
    pub(crate) schema: String,
    /// NATS, when there are several nodes.
    pub(crate) nats: Option<String>,
    pub(crate) prefix: String,
    /// HARNESS-ONLY MUTANT: the node publishes every envelope on NATS.
    pub(crate) publish_mutant: bool,
}

/// HARNESS-ONLY MUTANT hook: logs every envelope the server accepts, verbatim.
pub(crate) fn envelope_logger() -> EnvelopeObserver {
    EnvelopeObserver(Arc::new(|envelope: &[u8]| {
        tracing::info!(target: "chatify_server::mutant", envelope = %String::from_utf8_lossy(envelope), "MUTANT: logging an envelope");
    }))
}

/// HARNESS-ONLY MUTANT hook: keeps a copy of every password and token the
/// server sees, for the life of the process.
pub(crate) fn credential_keeper() -> EnvelopeObserver {
    let kept: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    EnvelopeObserver(Arc::new(move |secret: &[u8]| {
        if let Ok(mut k) = kept.lock() {
            k.push(secret.to_vec());
        }
    }))
}

/// HARNESS-ONLY MUTANT hook: publishes every envelope the server accepts,
/// verbatim, on the NATS server of its `--nats` argument (subject
/// `PREFIX.mutant`). `None` without `--nats`.
pub(crate) fn envelope_publisher(args: &[String]) -> Option<EnvelopeObserver> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let url = value("--nats")?;
    let subject = format!(
        "{}.mutant",
        value("--nats-prefix").unwrap_or_else(|| "chatify".into())
    );
    let client: Arc<tokio::sync::OnceCell<Option<async_nats::Client>>> = Arc::default();
    Some(EnvelopeObserver(Arc::new(move |envelope: &[u8]| {
        let (client, url, subject) = (Arc::clone(&client), url.clone(), subject.clone());
        let envelope = envelope.to_vec();
        tokio::spawn(async move {
            let c = client
                .get_or_init(|| async { async_nats::connect(url).await.ok() })
                .await;
            if let Some(c) = c {
                let _ = c.publish(subject, envelope.into()).await;
            }
        });
    })))
}

/// Password hashing is not what the harness measures: cheap parameters keep
/// setup short (the server's defaults are OWASP's).
pub(crate) const CHEAP_ARGON2: PasswordCost = PasswordCost {
    memory_kib: 64,
    iterations: 1,
};

impl Topology {
    /// A child server in `dir` for a load generator that holds `connections`
    /// from one address: logs at `warn`, request rate limits off.
    pub(crate) fn for_load(
        dir: &std::path::Path,
        durability: Durability,
        connections: usize,
    ) -> Topology {
        Topology {
            mode: ServerMode::Child,
            log_level: "warn",
            data_dir: dir.to_path_buf(),
            db: dir.join("chatify.db"),
            log: dir.join("server.log"),
            durability,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            handle: None,
            observer: None,
            keep_credentials: false,
            max_connections_per_address: Some(connections + 16),
            server_args: Vec::new(),
            request_limits: false,
            link: None,
        }
    }

    /// The same server settings, not started.
    pub(crate) fn clone_config(&self) -> Topology {
        Topology {
            mode: self.mode,
            log_level: self.log_level,
            data_dir: self.data_dir.clone(),
            db: self.db.clone(),
            log: self.log.clone(),
            durability: self.durability,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            handle: None,
            observer: self.observer.clone(),
            keep_credentials: self.keep_credentials,
            max_connections_per_address: self.max_connections_per_address,
            server_args: self.server_args.clone(),
            request_limits: self.request_limits,
            link: self.link.clone(),
        }
    }

    pub(crate) async fn start(&mut self) -> Result<()> {
        match self.mode {
            ServerMode::InProcess => self.start_in_process().await,
            ServerMode::Child => self.start_child().await,
        }
    }

    async fn start_in_process(&mut self) -> Result<()> {
        let store = Arc::new(SqliteStore::open(&self.db, self.durability).context("database")?);
        let config = Config {
            listen: self.addr,
            password_cost: CHEAP_ARGON2,
            envelope_observer: self.observer.clone(),
            max_connections_per_address: self
                .max_connections_per_address
                .unwrap_or(Config::default().max_connections_per_address),
            ..Config::default()
        };
        let config = if self.request_limits {
            config
        } else {
            Config {
                requests_per_second: 0,
                requests_per_second_per_address: 0,
                ..config
            }
        };
        // The port of a stopped server is rebound at once (SO_REUSEADDR);
        // retry briefly in case the old listener is still closing.
        let mut last = String::new();
        for _ in 0..50 {
            match Server::start(config.clone(), store.clone()).await {
                Ok(server) => {
                    self.addr = server.local_addr();
                    self.handle = Some(ServerHandle::InProcess(server));
                    return Ok(());
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(anyhow!("cannot start the server: {last}"))
    }

    async fn start_child(&mut self) -> Result<()> {
        let exe = std::env::current_exe()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| self.log.display().to_string())?;
        let durability = match self.durability {
            Durability::Full => "full",
            Durability::Normal => "normal",
        };
        let mut command = tokio::process::Command::new(exe);
        command.arg("__serve");
        if self.observer.is_some() {
            command.arg("--log-envelopes-mutant");
        }
        if self.keep_credentials {
            command.arg("--keep-credentials-mutant");
        }
        if self.link.as_ref().is_some_and(|l| l.publish_mutant) {
            command.arg("--publish-envelopes-mutant");
        }
        if let Some(n) = self.max_connections_per_address {
            command.args(["--max-connections-per-address", &n.to_string()]);
        }
        if !self.request_limits {
            command.args([
                "--requests-per-second",
                "0",
                "--requests-per-second-per-address",
                "0",
            ]);
        }
        command
            .args([
                "--listen",
                &self.addr.to_string(),
                "--durability",
                durability,
                "--log",
                self.log_level,
            ])
            .args(
                if self.server_args.iter().any(|a| a.starts_with("--argon2")) {
                    &[][..]
                } else {
                    &["--argon2-memory-kib", "64", "--argon2-iterations", "1"][..]
                },
            )
            .args(&self.server_args);
        match &self.link {
            Some(link) => {
                command
                    // The URL through the environment: a password in it
                    // stays out of the process list.
                    .env("CHATIFY_STORE", &link.store_url)
                    .args(["--pg-schema", &link.schema])
                    .args(["--pg-pool", &NODE_PG_POOL.to_string()]);
                if let Some(nats) = &link.nats {
                    command.args(["--nats", nats, "--nats-prefix", &link.prefix]);
                }
            }
            None => {
                command
                    .env_remove("CHATIFY_STORE")
                    .arg("--db")
                    .arg(&self.db);
            }
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the server process")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await?;
        let url = line
            .trim()
            .strip_prefix("listening on ws://")
            .with_context(|| format!("the server process said {line:?}"))?;
        self.addr = url.parse().with_context(|| url.to_string())?;
        self.handle = Some(ServerHandle::Child(child));
        Ok(())
    }

    pub(crate) async fn stop(&mut self, kill: bool) {
        match self.handle.take() {
            Some(ServerHandle::InProcess(s)) if kill => s.abort(),
            Some(ServerHandle::InProcess(s)) => s.shutdown().await,
            Some(ServerHandle::Child(mut c)) => {
                if kill {
                    let _ = c.kill().await;
                } else {
                    let pid = c.id().and_then(|p| i32::try_from(p).ok());
                    if let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                    }
                    if tokio::time::timeout(Duration::from_secs(10), c.wait())
                        .await
                        .is_err()
                    {
                        let _ = c.kill().await;
                    }
                }
            }
            None => {}
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        match &self.handle {
            Some(ServerHandle::Child(c)) => c.id(),
            _ => None,
        }
    }
}

/// Sockets process `pid` has open (`None` when it cannot be read).
pub(crate) fn open_sockets(pid: u32) -> Option<usize> {
    let fds = process(pid)?.fd().ok()?;
    Some(
        fds.filter_map(Result::ok)
            .filter(|f| matches!(f.target, procfs::process::FDTarget::Socket(_)))
            .count(),
    )
}

/// A process's `/proc` entry.
pub(crate) fn process(pid: u32) -> Option<procfs::process::Process> {
    procfs::process::Process::new(i32::try_from(pid).ok()?).ok()
}

/// Waits until process `pid` has at most `max` sockets open (as many as
/// when it was idle), or `timeout` passes.
pub(crate) async fn wait_for_sockets(pid: u32, max: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if open_sockets(pid).is_none_or(|n| n <= max) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// User and system CPU time of process `pid`, in seconds.
pub(crate) fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let stat = process(pid)?.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// Peak resident set size of process `pid` (`VmHWM`), in KiB.
pub(crate) fn proc_peak_rss_kib(pid: u32) -> Option<u64> {
    process(pid)?.status().ok()?.vmhwm
}

/// Counts the system calls of process `pid` (every thread) while `work`
/// runs, with `strace -c -f` attached (it slows the process: measure
/// throughput elsewhere). `None` when strace cannot be started or attach.
pub(crate) async fn count_syscalls<T>(pid: u32, work: impl Future<Output = T>) -> (T, Option<u64>) {
    let Ok(out) = tempfile::NamedTempFile::new() else {
        return (work.await, None);
    };
    let child = tokio::process::Command::new("strace")
        .args(["-f", "-c", "-q", "-o"])
        .arg(out.path())
        .args(["-p", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else {
        return (work.await, None);
    };
    // Attaching to every thread takes a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let value = work.await;
    if let Some(id) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
    {
        let _ = rustix::process::kill_process(id, rustix::process::Signal::INT);
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let summary = std::fs::read_to_string(out.path()).unwrap_or_default();
    (value, strace_total(&summary))
}

/// The total of calls in an `strace -c` summary: its last line reads
/// `100.00 SECONDS USECS/CALL CALLS [ERRORS] total`.
pub(crate) fn strace_total(summary: &str) -> Option<u64> {
    let line = summary
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with("total"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Pins every thread of process `pid` to CPU `cpu` (threads it starts later
/// inherit it). Returns whether it could: a machine with one CPU, or a CPU
/// outside this process's set, leaves the process unpinned.
pub(crate) fn pin(pid: u32, cpu: usize) -> bool {
    let Some(tasks) = process(pid).and_then(|p| p.tasks().ok()) else {
        return false;
    };
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let mut all = true;
    for task in tasks.flatten() {
        let pinned = rustix::process::Pid::from_raw(task.tid)
            .is_some_and(|tid| rustix::thread::sched_setaffinity(Some(tid), &set).is_ok());
        all &= pinned;
    }
    all
}

/// CPUs this process may run on.
pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Raises this process's open-file limit to its hard limit (a run holding
/// ten thousand connections needs that many descriptors on each side; a
/// child inherits the raised limit). Returns the limit now in force
/// (`None`: unlimited).
pub(crate) fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current
}

#[cfg(test)]
mod syscall_tests {
    #[test]
    fn the_total_of_an_strace_summary_is_read() {
        let summary = "% time     seconds  usecs/call     calls    errors syscall\n\
------ ----------- ----------- --------- --------- ----------------\n\
 60.00    0.000600           3       200           sendto\n\
 40.00    0.000400           2       150        12 recvfrom\n\
------ ----------- ----------- --------- --------- ----------------\n\
100.00    0.001000           2       350        12 total\n";
        assert_eq!(super::strace_total(summary), Some(350));
        assert_eq!(super::strace_total(""), None);
    }
}
