//! A deployment: one server node, or several sharing PostgreSQL and NATS.
//!
//! ```text
//!  clients ─▶ relay (wire tap; spreads connections over the nodes that are up)
//!               ├─▶ node 0 ─┐                      ┌─▶ PostgreSQL (CHATIFY_PG_URL,
//!               ├─▶ node 1 ─┼─ cut relay per node ─┘    a schema per run)
//!               └─▶ node 2 ─┘
//!                    └──────── NATS (a nats-server the harness starts, so that it can
//!                              restart it) ◀── bus tap (subscribed to every subject)
//! ```
//!
//! PostgreSQL is the operator's: the harness reads its address from
//! `CHATIFY_PG_URL`, makes a schema for the run and drops it afterwards.
//! NATS is started here from the `nats-server` binary (`CHATIFY_NATS_SERVER`,
//! else `nats-server` on the PATH or `/usr/sbin/nats-server`, Debian's
//! package), because a fault restarts it.

use anyhow::{Context as _, Result, anyhow, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatify_server::store::{PgOptions, PgStore};
use futures_util::StreamExt;

use super::Topology;
use super::cut::CutRelay;

/// Most bytes the bus tap keeps.
const BUS_KEEP: usize = 64 * 1024 * 1024;

/// The nodes, and what they share.
pub(crate) struct Deployment {
    pub(crate) nodes: Vec<Topology>,
    pub(crate) postgres: Option<Postgres>,
    pub(crate) nats: Option<Nats>,
}

/// The run's PostgreSQL schema, and a cut relay per node.
pub(crate) struct Postgres {
    url: String,
    pub(crate) schema: String,
    pub(crate) relays: Vec<CutRelay>,
    /// PostgreSQL's server log, and its length when the run began.
    log: Option<(PathBuf, u64)>,
    /// A line the run had PostgreSQL log at its start: the tap finds it,
    /// or the file it read is not the server's log.
    marker: String,
}

/// The harness's NATS server and the tap on it.
pub(crate) struct Nats {
    binary: PathBuf,
    pub(crate) port: u16,
    child: Option<tokio::process::Child>,
    bus: Arc<Mutex<Vec<u8>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A free loopback port (bound, then released).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The PostgreSQL URL the harness's tests and runs use.
pub(crate) fn pg_url() -> Result<String> {
    std::env::var("CHATIFY_PG_URL").map_err(|_| {
        anyhow!(
            "CHATIFY_PG_URL is not set: a scenario on PostgreSQL needs a database \
             (e.g. postgres://postgres@127.0.0.1:5432/test)"
        )
    })
}

/// Vacuums the database at `CHATIFY_PG_URL` before a measurement: test
/// runs create and drop many schemas, and a bloated catalog slowed every
/// statement (p50 3.5 ms against 1.4 ms at 1 000 msg/s on one node).
pub(crate) async fn vacuum() -> Result<()> {
    let url = pg_url()?;
    tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
        c.batch_execute("VACUUM ANALYZE")
    })
    .await?
    .context("VACUUM ANALYZE on CHATIFY_PG_URL")
}

/// Where PostgreSQL listens, from its URL (TCP only: the cut relay sits there).
fn pg_target(url: &str) -> Result<(SocketAddr, postgres::Config)> {
    let config: postgres::Config = url.parse().context("CHATIFY_PG_URL")?;
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => bail!("CHATIFY_PG_URL must name a TCP host (the harness relays it)"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .context("CHATIFY_PG_URL's host")?
        .next()
        .context("CHATIFY_PG_URL's host has no address")?;
    Ok((addr, config))
}

/// Percent-encodes a URL component.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The URL of the database at `relay` with `config`'s user, password and
/// database; `options`: startup options (a mutant's `-c log_statement=all`).
fn url_through(relay: SocketAddr, config: &postgres::Config, options: Option<&str>) -> String {
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| format!(":{}", encode(&String::from_utf8_lossy(p))))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or(user);
    let mut url = format!(
        "postgres://{}{password}@{relay}/{}",
        encode(user),
        encode(db)
    );
    if let Some(o) = options {
        url.push_str(&format!("?options={}", encode(o)));
    }
    url
}

/// Where PostgreSQL writes its log: `CHATIFY_PG_LOG`, the collector's
/// current file, or Debian's `/var/log/postgresql/postgresql-VERSION-main.log`.
fn pg_log_path(url: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHATIFY_PG_LOG") {
        return Some(p.into());
    }
    let mut c = postgres::Client::connect(url, postgres::NoTls).ok()?;
    let current: Option<String> = c.query_one("SELECT pg_current_logfile()", &[]).ok()?.get(0);
    if let Some(f) = current {
        let data: String = c.query_one("SHOW data_directory", &[]).ok()?.get(0);
        let p = Path::new(&data).join(f);
        return p.exists().then_some(p);
    }
    let version: String = c.query_one("SHOW server_version", &[]).ok()?.get(0);
    let major = version.split('.').next()?;
    let p = PathBuf::from(format!("/var/log/postgresql/postgresql-{major}-main.log"));
    p.exists().then_some(p)
}

fn nats_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CHATIFY_NATS_SERVER") {
        return Ok(p.into());
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("nats-server"))
        .chain([PathBuf::from("/usr/sbin/nats-server")])
        .find(|p| p.is_file());
    on_path.ok_or_else(|| {
        anyhow!("no nats-server: install Debian's nats-server package, or set CHATIFY_NATS_SERVER")
    })
}

impl Nats {
    async fn start(&mut self) -> Result<()> {
        let child = tokio::process::Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("nats-server did not listen on port {}", self.port)
    }

    /// Stops the NATS server at once (SIGKILL).
    pub(crate) async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Subscribes to every subject and keeps what it hears, subject and
    /// payload (reconnecting after a restart, as the nodes do).
    async fn tap(&self) -> Result<()> {
        let client = async_nats::ConnectOptions::new()
            .name("chatify-harness bus tap")
            .retry_on_initial_connect()
            .connect(self.url())
            .await
            .context("the bus tap's NATS connection")?;
        let mut all = client
            .subscribe(">")
            .await
            .map_err(|e| anyhow!("subscribing the bus tap: {e}"))?;
        client
            .flush()
            .await
            .map_err(|e| anyhow!("the bus tap: {e}"))?;
        let bus = Arc::clone(&self.bus);
        tokio::spawn(async move {
            let _keep = client;
            while let Some(msg) = all.next().await {
                let mut b = lock(&bus);
                if b.len() < BUS_KEEP {
                    b.extend_from_slice(msg.subject.as_bytes());
                    b.push(b'\n');
                    b.extend_from_slice(&msg.payload);
                    b.push(b'\n');
                }
            }
        });
        Ok(())
    }

    /// Everything the tap heard: each message's subject and payload.
    pub(crate) fn heard(&self) -> Vec<u8> {
        lock(&self.bus).clone()
    }
}

impl Deployment {
    /// One node, as every scenario before several nodes had.
    pub(crate) fn single(node: Topology) -> Deployment {
        Deployment {
            nodes: vec![node],
            postgres: None,
            nats: None,
        }
    }

    /// `count` nodes shaped like `node` on PostgreSQL (a schema of the
    /// run's own), with NATS when more than one. `pg_log_mutant`: every
    /// node's database sessions log their statements and parameters
    /// (HARNESS-ONLY MUTANT, for the PostgreSQL log tap).
    pub(crate) async fn on_postgres(
        node: Topology,
        count: usize,
        out: &Path,
        publish_mutant: bool,
        pg_log_mutant: bool,
    ) -> Result<Deployment> {
        let url = pg_url()?;
        let (target, config) = pg_target(&url)?;
        let tag = format!(
            "{:x}{:04x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
            std::process::id() & 0xffff
        );
        let schema = format!("chatify_run_{tag}");
        let mut relays = Vec::with_capacity(count);
        for _ in 0..count {
            relays.push(CutRelay::start(target).await?);
        }
        let marker = format!("chatify-harness run {schema} begins");
        let log = {
            let (url, marker) = (url.clone(), marker.clone());
            tokio::task::spawn_blocking(move || {
                let path = pg_log_path(&url)?;
                let len = std::fs::metadata(&path).map_or(0, |m| m.len());
                // LOG is written whatever log_min_messages (above WARNING).
                let mut c = postgres::Client::connect(&url, postgres::NoTls).ok()?;
                c.batch_execute(&format!("DO $$ BEGIN RAISE LOG '{marker}'; END $$"))
                    .ok()?;
                Some((path, len))
            })
            .await?
        };
        let nats = if count > 1 {
            let mut nats = Nats {
                binary: nats_binary()?,
                port: free_port()?,
                child: None,
                bus: Arc::default(),
            };
            nats.start().await?;
            nats.tap().await?;
            Some(nats)
        } else {
            None
        };
        let prefix = format!("chatify.run.{tag}");
        let options = pg_log_mutant.then_some("-c log_statement=all");
        let nodes = relays
            .iter()
            .enumerate()
            .map(|(i, relay)| {
                let mut t = node.clone_config();
                if i > 0 {
                    t.log = out.join(format!("server-{i}.log"));
                    t.data_dir = out.join("data").join(format!("node-{i}"));
                }
                t.link = Some(super::NodeLink {
                    store_url: url_through(relay.addr, &config, options),
                    schema: schema.clone(),
                    nats: nats.as_ref().map(Nats::url),
                    prefix: prefix.clone(),
                    publish_mutant,
                });
                t
            })
            .collect();
        Ok(Deployment {
            nodes,
            postgres: Some(Postgres {
                url,
                schema,
                relays,
                log,
                marker,
            }),
            nats,
        })
    }

    /// Starts every node (the first one creates the schema).
    pub(crate) async fn start(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            node.start().await?;
        }
        Ok(())
    }

    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// The node processes' ids (those running).
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(Topology::pid).collect()
    }

    pub(crate) async fn stop(&mut self, kill: bool) {
        for node in &mut self.nodes {
            node.stop(kill).await;
        }
    }

    /// Restarts the NATS server after `down` (SIGKILL, then a new process
    /// on the same port).
    pub(crate) async fn nats_down(&mut self) {
        if let Some(n) = &mut self.nats {
            n.kill().await;
        }
    }

    pub(crate) async fn nats_up(&mut self) -> Result<()> {
        match &mut self.nats {
            Some(n) => n.start().await,
            None => Ok(()),
        }
    }

    /// Cuts node `node`'s link to PostgreSQL for `down`.
    pub(crate) fn cut_store(&self, node: usize, down: Duration) {
        if let Some(r) = self.postgres.as_ref().and_then(|p| p.relays.get(node)) {
            r.cut(down);
        }
    }

    /// Every cell of every table of the run's schema, with its table's name
    /// (`None` without PostgreSQL).
    pub(crate) async fn tables(&self) -> Option<Result<Vec<(String, Vec<u8>)>>> {
        let pg = self.postgres.as_ref()?;
        let (url, schema) = (pg.url.clone(), pg.schema.clone());
        let dump = tokio::task::spawn_blocking(move || {
            let store = PgStore::connect(
                &url,
                PgOptions {
                    pool_size: 1,
                    schema: Some(schema),
                    ..PgOptions::default()
                },
            )?;
            store.dump_tables()
        })
        .await;
        Some(match dump {
            Ok(Ok(cells)) => Ok(cells
                .into_iter()
                .map(|(table, cell)| (format!("postgres:{table}"), cell))
                .collect()),
            Ok(Err(e)) => Err(anyhow!("reading the PostgreSQL tables: {e}")),
            Err(e) => Err(anyhow!("reading the PostgreSQL tables: {e}")),
        })
    }

    /// What PostgreSQL logged during the run (`None` without PostgreSQL).
    pub(crate) fn pg_log(&self) -> Option<Result<Vec<u8>>> {
        let pg = self.postgres.as_ref()?;
        Some(match &pg.log {
            None => Err(anyhow!(
                "PostgreSQL's log was not found (set CHATIFY_PG_LOG to its file)"
            )),
            Some((path, from)) => read_from(path, *from).and_then(|data| {
                if !data
                    .windows(pg.marker.len())
                    .any(|w| w == pg.marker.as_bytes())
                {
                    bail!(
                        "{} does not hold the line the run had PostgreSQL log: not its log \
                         (set CHATIFY_PG_LOG to the server's log file)",
                        path.display()
                    );
                }
                Ok(data)
            }),
        })
    }

    /// Drops the run's schema (after the taps read it).
    pub(crate) async fn drop_schema(&self) {
        let Some(pg) = &self.postgres else { return };
        let (url, schema) = (pg.url.clone(), pg.schema.clone());
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(mut c) = postgres::Client::connect(&url, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
            }
        })
        .await;
    }
}

/// The bytes of `path` from offset `from` on (a log rotated meanwhile is
/// read from its start).
fn read_from(path: &Path, from: u64) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(if len >= from { from } else { 0 }))?;
    let mut data = Vec::new();
    f.read_to_end(&mut data)?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_through_the_relay_keep_user_password_and_database() {
        let config: postgres::Config = "postgres://us%20er:p%40ss@db.example:6543/my-db"
            .parse()
            .unwrap();
        let relay: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let url = url_through(relay, &config, None);
        assert_eq!(url, "postgres://us%20er:p%40ss@127.0.0.1:40000/my-db");
        let back: postgres::Config = url.parse().unwrap();
        assert_eq!(back.get_user(), Some("us er"));
        assert_eq!(back.get_password(), Some(&b"p@ss"[..]));
        let with = url_through(relay, &config, Some("-c log_statement=all"));
        let back: postgres::Config = with.parse().unwrap();
        assert_eq!(back.get_options(), Some("-c log_statement=all"));
    }
}
