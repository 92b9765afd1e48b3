//! The Chatify reference server.
//!
//! Accounts, a key directory, a real-time relay with a durable mailbox,
//! ciphertext history, and blobs (encrypted files, stored in parts and
//! read only by the devices their uploader granted), over WebSocket
//! (optionally TLS). It depends on the
//! wire crate only: it cannot decrypt what it relays, and a test checks that
//! no E2EE or AEAD crate is in its dependency closure.
//!
//! ```text
//!  client ──ws/wss──▶ accept ─▶ connection task ──spawn_blocking──▶ Store (SQLite, WAL)
//!                                   ▲   │ Send: commit, then SendOk     │ each commit announced,
//!                      Hub (online) ┘◀──┼───────────────────────────────┘ in commit order
//!                                       └ recipient's task pushes Deliver (several nodes:
//!                                         from the notice, when it has pushed the envelope
//!                                         before; else it reads its mailbox on from its cursor)
//! ```
//!
//! ```no_run
//! use std::sync::Arc;
//! use chatify_server::{Config, Server, store::SqliteStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Arc::new(SqliteStore::in_memory()?);
//! let server = Server::start(Config::default(), store).await?;
//! println!("listening on ws://{}", server.local_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

/// Every heap block of a process that links the server is zeroed when it
/// is freed: decoded `Login` and `Authenticate` frames, WebSocket buffers and
/// Argon2 inputs keep no password or token once dropped (the harness's
/// memory tap checks it, `leak.credentials`).
#[global_allocator]
static ZEROING: zeroizing_alloc::ZeroAlloc<std::alloc::System> =
    zeroizing_alloc::ZeroAlloc(std::alloc::System);

pub mod auth;
pub mod cli;
mod cluster;
mod conn;
mod hub;
pub mod mfa;
mod rate;
pub mod store;

#[doc(hidden)]
/// The wire crate, for [`forward_store!`]'s paths.
pub use chatify_proto as __proto;
pub mod tls;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::auth::{LoginLimiter, PasswordCost, PasswordWork};
use crate::hub::Hub;
use crate::store::Store;
use chatify_proto::frame::Address;

/// WebSocket close code sent on graceful shutdown (RFC 6455 "going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a peer that keeps sending invalid frames ("policy violation").
pub const CLOSE_POLICY: u16 = 1008;
/// Close code for a message over the size limit ("message too big").
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code when a newer connection authenticated as the same device.
pub const CLOSE_REPLACED: u16 = 4000;

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// TLS settings; `None` serves plain `ws://`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The browser client's files, served on the same port to requests
    /// that are not WebSocket upgrades (see the `web` module); `None`
    /// answers only upgrades.
    pub web: Option<Arc<web::WebRoot>>,
    /// Argon2id cost for new password hashes.
    pub password_cost: PasswordCost,
    /// Password hashes (registration, login) computed at once; each takes
    /// the hash's memory cost, so this bounds their memory.
    pub password_workers: usize,
    /// Password hashes that may wait for a worker; a request beyond them is
    /// refused at once with `RateLimited` ("server busy").
    pub password_queue: usize,
    /// Lifetime of session tokens.
    pub token_ttl: Duration,
    /// How long acknowledged envelopes stay in the history.
    pub history_retention: Duration,
    /// Tell a device to publish more one-time prekeys below this many.
    pub prekey_low_threshold: u32,
    /// Failed logins allowed per account within `login_window`.
    pub login_failures_per_account: usize,
    /// Failed logins allowed per client address within `login_window`.
    pub login_failures_per_address: usize,
    /// The window of the failed-login limits.
    pub login_window: Duration,
    /// Invalid frames tolerated on one connection before it is closed.
    pub max_strikes: u32,
    /// Open connections allowed from one client IP address; more are
    /// closed with [`CLOSE_POLICY`] right after the WebSocket handshake.
    pub max_connections_per_address: usize,
    /// Requests per second one connection may make (bursts of twice that);
    /// beyond it a request is answered `RateLimited` and the connection is
    /// read no further until a token is due. 0: no limit.
    pub requests_per_second: u32,
    /// Requests per second all connections from one client address may make
    /// together (bursts of twice that), on every node of a shared store
    /// together. 0: no limit.
    pub requests_per_second_per_address: u32,
    /// Bundles of one device that one account may fetch at once; after
    /// that, one per `bundle_fetch_interval`. Bounds how fast an account can
    /// use up another device's one-time prekeys. 0: no limit.
    pub bundle_fetch_burst: u32,
    /// See `bundle_fetch_burst`.
    pub bundle_fetch_interval: Duration,
    /// A connection that has not authenticated this long after it opened
    /// (or after it logged out) is closed with [`CLOSE_POLICY`].
    pub auth_timeout: Duration,
    /// A connection the server has heard nothing from (no frame, no pong)
    /// this long is sent a WebSocket ping.
    pub ping_interval: Duration,
    /// A connection the server has heard nothing from this long is closed
    /// with [`CLOSE_POLICY`]: a peer that is gone, or one that never reads.
    pub idle_timeout: Duration,
    /// NATS server to exchange notices with the other nodes through (see
    /// the `cluster` module); `None`: a single node. Several nodes share a
    /// PostgreSQL store.
    pub nats: Option<String>,
    /// The subject prefix of this deployment's notices (nodes that share
    /// it are one deployment).
    pub nats_prefix: String,
    /// How often every authenticated connection reads its mailbox even
    /// without a notice (the bound on how late a lost notice makes a
    /// delivery); `None`: every two seconds with `nats`, never without.
    pub mail_poll: Option<Duration>,
    /// The key that seals TOTP secrets in the store ([`mfa`]); nodes that
    /// share a store share it. `None`: second factors cannot be set up, and
    /// an account that has one cannot log in here. The default is a random
    /// key of this process's only: a server whose store outlives the
    /// process sets a key it keeps ([`mfa::MfaKey::read_or_create`], as
    /// `chatify-server` does with `mfa.key` beside its database).
    pub mfa_key: Option<Arc<mfa::MfaKey>>,
    /// The largest blob (encrypted file) the server accepts, in bytes;
    /// larger ones are refused `TooLarge` before any byte is uploaded.
    pub max_blob_size: u64,
    /// Bytes of blobs an account's devices may have created and not yet
    /// seen deleted; past it a new blob is refused `QuotaExceeded`.
    pub blob_quota: u64,
    /// An upload with no part for this long is deleted (a complete blob is
    /// kept for `history_retention` after its last part, unless every
    /// device holding it releases it first).
    pub blob_idle_timeout: Duration,
    /// **Test hook, never set in production** (the CLI cannot set it): called
    /// with every envelope the server accepts. The scenario harness uses it
    /// to make a deliberately leaky server and prove that its log tap
    /// catches the leak.
    pub envelope_observer: Option<EnvelopeObserver>,
    /// **Test hook, never set in production** (the CLI cannot set it): called
    /// with every password a login presents and every token the server
    /// issues. The scenario harness uses it to make a mutant that keeps
    /// them, and prove that its credential tap finds them in memory.
    pub credential_observer: Option<EnvelopeObserver>,
    /// **Test mode, never set in production** (the CLI cannot set it): every
    /// connection echoes text and binary messages instead of speaking the
    /// protocol. The accept path, size limits, ping/pong and close handling
    /// stay the server's own, which is what the Autobahn|Testsuite fuzzing
    /// client (it expects an echo endpoint) checks.
    pub conformance_echo: bool,
}

/// The function type of an [`EnvelopeObserver`].
pub type ObserveFn = dyn Fn(&[u8]) + Send + Sync;

/// See [`Config::envelope_observer`].
#[derive(Clone)]
pub struct EnvelopeObserver(pub Arc<ObserveFn>);

impl std::fmt::Debug for EnvelopeObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnvelopeObserver(..)")
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            web: None,
            password_cost: PasswordCost::default(),
            password_workers: std::thread::available_parallelism().map_or(2, usize::from),
            password_queue: 32,
            token_ttl: Duration::from_secs(30 * 24 * 3600),
            history_retention: Duration::from_secs(30 * 24 * 3600),
            prekey_low_threshold: 10,
            login_failures_per_account: 5,
            login_failures_per_address: 20,
            login_window: Duration::from_secs(60),
            max_strikes: 16,
            max_connections_per_address: 100,
            requests_per_second: 1000,
            requests_per_second_per_address: 10_000,
            bundle_fetch_burst: 10,
            bundle_fetch_interval: Duration::from_secs(60),
            auth_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            nats: None,
            nats_prefix: "chatify".into(),
            mail_poll: None,
            max_blob_size: 256 * 1024 * 1024,
            blob_quota: 1024 * 1024 * 1024,
            blob_idle_timeout: Duration::from_secs(24 * 3600),
            mfa_key: Some(Arc::new(mfa::MfaKey::random())),
            envelope_observer: None,
            credential_observer: None,
            conformance_echo: false,
        }
    }
}

pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    /// Whether the store tells this node's hub of each envelope it commits
    /// (then a send pushes nothing itself). Only ever with no other node:
    /// a node with a cluster has a mailbox timer and never asks.
    pub(crate) announced: bool,
    pub(crate) hub: Arc<Hub>,
    /// The link to the other nodes, if any.
    pub(crate) cluster: Option<cluster::Cluster>,
    pub(crate) limiter: LoginLimiter,
    pub(crate) password_work: PasswordWork,
    /// Open connections per client address.
    pub(crate) per_address: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// With a shared store: the other nodes' open connections per client
    /// address, as last exchanged ([`exchange_connections`]).
    pub(crate) others_per_address:
        std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// This node's name in the shared store's connection counts.
    pub(crate) node_name: String,
    /// Request buckets per client address (this node's own, when the store
    /// is not shared).
    pub(crate) address_requests: rate::Buckets<std::net::IpAddr>,
    /// Per-address request tokens leased from the shared store's buckets
    /// (several nodes: the per-address rate holds for the deployment).
    pub(crate) address_leases: rate::Leases<std::net::IpAddr>,
    /// Bundle fetches per (requesting account, fetched device).
    pub(crate) bundle_fetches: rate::Buckets<(String, chatify_proto::frame::Address)>,
    pub(crate) config: Config,
}

impl Shared {
    /// Tells a device's connection, here or (through NATS) on another node.
    pub(crate) fn route(&self, device: &Address, push: hub::Push) {
        if self.hub.notify(device, push.clone()) {
            return;
        }
        if let Some(cluster) = &self.cluster {
            let notice = match push {
                hub::Push::Mail | hub::Push::Deliver(..) => cluster::Notice::Mail(device.clone()),
                hub::Push::PrekeysLow(n) => cluster::Notice::PrekeysLow(device.clone(), n),
                hub::Push::Replaced => cluster::Notice::Removed(device.clone()),
            };
            cluster.publish(notice);
        }
    }
}

impl Shared {
    /// Tells an envelope's recipient of it, here or on another node, once
    /// it is stored: with the envelope itself when the store linked it to
    /// the one before ([`store::Stored::prev`]) and it is small enough for
    /// a notice, else by telling the connection to read its mailbox.
    pub(crate) fn route_envelope(&self, stored: store::Stored, e: store::NewEnvelope) {
        let Some(prev) = stored.prev else {
            return self.route(&e.to, hub::Push::Mail);
        };
        let to = e.to;
        let d = Arc::new(chatify_proto::frame::Deliver {
            seq: stored.seq,
            from: e.from,
            conversation: e.conversation,
            message_id: e.message_id,
            sent_at_ms: e.sent_at_ms,
            envelope: e.envelope,
        });
        if self.hub.deliver_after(&to, Arc::clone(&d), prev) {
            return;
        }
        if let Some(cluster) = &self.cluster {
            cluster.publish(if d.envelope.len() <= cluster::NOTICE_ENVELOPE_MAX {
                cluster::Notice::Deliver {
                    to,
                    prev,
                    deliver: d,
                }
            } else {
                cluster::Notice::Mail(to)
            });
        }
    }
}

/// Most keys a shared rate limit remembers (a bucket is some 100 bytes).
const RATE_KEYS: usize = 100_000;

/// A running server.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `config.listen` and starts accepting connections.
    pub async fn start(config: Config, store: Arc<dyn Store>) -> std::io::Result<Server> {
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let (shutdown, rx) = watch::channel(false);
        let hub = Arc::new(Hub::default());
        let cluster = match &config.nats {
            Some(url) => Some(
                cluster::Cluster::start(url, &config.nats_prefix, Arc::clone(&hub))
                    .await
                    .map_err(|e| {
                        let url = cluster::without_credentials(url);
                        std::io::Error::other(format!("NATS at {url}: {e}"))
                    })?,
            ),
            None => None,
        };
        let mut config = config;
        if config.mail_poll.is_none() && cluster.is_some() {
            config.mail_poll = Some(Duration::from_secs(2));
        }
        // Envelopes this node commits go straight to their recipients'
        // connections here, in commit order (see `Store::announce_commits`),
        // when this node is the only one storing: a connection pushes an
        // announced envelope only if it is past its cursor, and another
        // node's envelope for the same device, committed just before and
        // not yet read, would be passed over. With other nodes (which the
        // mailbox timer says), each send tells its recipient's connection
        // to read its mailbox on from the cursor instead.
        let announced = config.mail_poll.is_none() && {
            let hub = Arc::downgrade(&hub);
            // Once this node is gone, its listener asks to be forgotten.
            store.announce_commits(Arc::new(move |seq, e| {
                hub.upgrade().map(|hub| hub.deliver(seq, e)).is_some()
            }))
        };
        let shared = Arc::new(Shared {
            store,
            announced,
            hub,
            cluster,
            limiter: LoginLimiter::new(
                config.login_window,
                config.login_failures_per_account,
                config.login_failures_per_address,
            ),
            password_work: PasswordWork::new(config.password_workers, config.password_queue),
            per_address: Default::default(),
            others_per_address: Default::default(),
            node_name: format!("{:016x}", rand::random::<u64>()),
            address_requests: rate::Buckets::new(
                f64::from(config.requests_per_second_per_address),
                2.0 * f64::from(config.requests_per_second_per_address),
                RATE_KEYS,
            ),
            address_leases: rate::Leases::new(RATE_KEYS),
            bundle_fetches: rate::Buckets::new(
                if config.bundle_fetch_burst == 0 {
                    0.0
                } else {
                    1.0 / config.bundle_fetch_interval.as_secs_f64().max(1e-3)
                },
                f64::from(config.bundle_fetch_burst),
                RATE_KEYS,
            ),
            config,
        });
        let task = tokio::spawn(accept_loop(listener, shared, rx));
        tracing::info!(%local_addr, "listening");
        Ok(Server {
            local_addr,
            shutdown,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops at once, as a crash would: no close frames, no flushing; what
    /// was committed stays committed.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Stops accepting, closes every connection with
    /// [`CLOSE_GOING_AWAY`], and waits for connection tasks to finish (at
    /// most five seconds).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let mut next_id = 0u64;
    // Stopped with this loop, also when the loop is aborted (a crash).
    let exchange = shared.store.shared_limits().is_some().then(|| {
        AbortOnDrop(Some(tokio::spawn(exchange_connections(
            Arc::clone(&shared),
            shutdown.clone(),
        ))))
    });
    let retention = Arc::clone(&shared);
    let mut prune = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    next_id += 1;
                    let _ = stream.set_nodelay(true);
                    conns.spawn(conn::run(stream, peer, next_id, Arc::clone(&shared), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = prune.tick() => prune_once(&retention).await,
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    tracing::info!(connections = conns.len(), "shutting down");
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        conns.abort_all();
    }
    // The connection counts withdrawn from the shared store.
    if let Some(handle) = exchange.and_then(|mut e| e.0.take()) {
        let _ = tokio::time::timeout(Duration::from_secs(2), handle).await;
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// How often a node of a shared store publishes its connection counts and
/// reads the others'; a node not heard from for three intervals counts
/// for nothing.
const CONNECTION_EXCHANGE: Duration = Duration::from_secs(1);

/// Keeps this node's connection counts in the shared store and the other
/// nodes' in memory, so that the connections-per-address limit holds
/// across nodes (within one exchange's staleness); withdraws them at
/// shutdown.
async fn exchange_connections(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    // At a random phase: nodes started together would otherwise all
    // exchange at the same instant, every second, and their transactions
    // would meet there (the tail of every store made in that instant).
    let phase = CONNECTION_EXCHANGE.mul_f64(rand::random::<f64>());
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + phase, CONNECTION_EXCHANGE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        let open: Vec<(String, u32)> = if stopping {
            Vec::new()
        } else {
            let map = shared.per_address.lock().unwrap_or_else(|p| p.into_inner());
            map.iter()
                .map(|(ip, n)| (ip.to_string(), u32::try_from(*n).unwrap_or(u32::MAX)))
                .collect()
        };
        let s = Arc::clone(&shared);
        let others = tokio::task::spawn_blocking(move || match s.store.shared_limits() {
            Some(l) => l.exchange_connections(&s.node_name, &open, 3 * CONNECTION_EXCHANGE),
            None => Ok(Vec::new()),
        })
        .await;
        match others {
            Ok(Ok(rows)) => {
                let map = rows
                    .into_iter()
                    .filter_map(|(a, n)| Some((a.parse().ok()?, n as usize)))
                    .collect();
                *shared
                    .others_per_address
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = map;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "connection counts not exchanged"),
            Err(_) => tracing::warn!("connection count exchange failed"),
        }
        if stopping {
            return;
        }
    }
}

async fn prune_once(shared: &Arc<Shared>) {
    let now = conn::now_ms();
    let cutoff = now.saturating_sub(
        u64::try_from(shared.config.history_retention.as_millis()).unwrap_or(u64::MAX),
    );
    let store = Arc::clone(&shared.store);
    let c = &shared.config;
    // Shared limit state older than every window that reads it.
    let limit_age = [
        Duration::from_secs(3600),
        c.login_window,
        c.bundle_fetch_interval * c.bundle_fetch_burst,
    ]
    .into_iter()
    .max()
    .unwrap_or_default();
    let result = tokio::task::spawn_blocking(move || {
        let tokens = store.prune_tokens(now / 1000)?;
        let envelopes = store.prune_history(cutoff)?;
        let blobs = store.blobs().prune_blobs(now)?;
        if let Some(limits) = store.shared_limits() {
            limits.prune_limits(limit_age)?;
        }
        Ok::<_, store::StoreError>((tokens, envelopes, blobs))
    })
    .await;
    match result {
        Ok(Ok((tokens, envelopes, blobs))) => tracing::debug!(tokens, envelopes, blobs, "pruned"),
        Ok(Err(e)) => tracing::warn!(error = %e, "pruning failed"),
        Err(e) => tracing::warn!(error = %e, "pruning task failed"),
    }
}
