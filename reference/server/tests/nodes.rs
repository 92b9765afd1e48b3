//! Several nodes sharing a PostgreSQL store and NATS: an envelope sent on
//! one node reaches its recipient on another, a lost notice is caught up by
//! the mailbox timer, a killed node loses no acknowledged envelope, and a
//! device that authenticates on a second node is signed out of the first.
//!
//! PostgreSQL and NATS come from `CHATIFY_PG_URL` and `CHATIFY_NATS_URL`;
//! without them these tests say so and pass, except under CI (`CI` set).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatify_proto::frame;
use chatify_proto::{Body, Frame};
use chatify_server::store::{NewEnvelope, PgOptions, PgStore, Store, StoreError, Stored};
use chatify_server::{Config, Server};
use common::{
    Got, Raw, account, addr, numbered_streams_complete, receive_acking, send_numbered, test_config,
};

fn env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) => Some(v),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{name} is not set: the several-node tests cannot run"
            );
            eprintln!("skipped: set {name} to run the several-node tests");
            None
        }
    }
}

/// A deployment: one schema of the test database, one NATS subject prefix.
struct Deployment {
    pg_url: String,
    schema: String,
    nats: String,
    prefix: String,
}

impl Deployment {
    fn new() -> Option<Deployment> {
        let pg_url = env("CHATIFY_PG_URL")?;
        let nats = env("CHATIFY_NATS_URL")?;
        let tag = rand_tag();
        Some(Deployment {
            pg_url,
            schema: format!("chatify_nodes_{tag}"),
            nats,
            prefix: format!("chatify.test.{tag}"),
        })
    }

    async fn store(&self) -> Arc<PgStore> {
        let (url, schema) = (self.pg_url.clone(), self.schema.clone());
        tokio::task::spawn_blocking(move || {
            Arc::new(
                PgStore::connect(
                    &url,
                    PgOptions {
                        pool_size: 4,
                        schema: Some(schema),
                        ..PgOptions::default()
                    },
                )
                .unwrap(),
            )
        })
        .await
        .unwrap()
    }

    /// A node; `poll`: how often its connections read their mailbox
    /// without a notice; `nats`: its NATS URL (this deployment's by default).
    async fn node(&self, poll: Duration, nats: Option<&str>) -> (Server, String) {
        self.node_with(poll, nats, |_| {}).await
    }

    /// A node as [`Deployment::node`], its configuration adjusted by `tweak`.
    async fn node_with(
        &self,
        poll: Duration,
        nats: Option<&str>,
        tweak: impl FnOnce(&mut Config),
    ) -> (Server, String) {
        let mut config = Config {
            nats: Some(nats.unwrap_or(&self.nats).to_owned()),
            nats_prefix: self.prefix.clone(),
            mail_poll: Some(poll),
            ..test_config()
        };
        tweak(&mut config);
        let server = Server::start(config, self.store().await).await.unwrap();
        let url = format!("ws://{}", server.local_addr());
        (server, url)
    }

    /// A node whose mailbox timer is a minute, on this deployment's store
    /// as `wrap` makes it.
    async fn node_wrapped(
        &self,
        wrap: impl FnOnce(Arc<PgStore>) -> Arc<dyn Store>,
    ) -> (Server, String) {
        let mut config = Config {
            nats: Some(self.nats.clone()),
            nats_prefix: self.prefix.clone(),
            mail_poll: Some(Duration::from_secs(60)),
            ..test_config()
        };
        config.requests_per_second = 0;
        config.requests_per_second_per_address = 0;
        config.max_connections_per_address = 64;
        let server = Server::start(config, wrap(self.store().await))
            .await
            .unwrap();
        let url = format!("ws://{}", server.local_addr());
        (server, url)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let (url, schema) = (self.pg_url.clone(), self.schema.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = postgres::Client::connect(&url, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
            }
        })
        .join();
    }
}

fn rand_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
}

async fn send(from: &mut Raw, to: &str, i: u8) -> u64 {
    match from
        .request(frame::Send {
            to: addr(to),
            conversation: [1; 16],
            message_id: [i; 16],
            envelope: vec![i; 64],
        })
        .await
    {
        Body::SendOk(ok) => ok.seq,
        other => panic!("{other:?}"),
    }
}

async fn next_delivery(raw: &mut Raw) -> frame::Deliver {
    loop {
        match raw.recv().await {
            Got::Frame(Frame {
                body: Body::Deliver(d),
                ..
            }) => return d,
            Got::Frame(_) => continue,
            Got::Closed(c) => panic!("closed ({c:?}) while waiting for a delivery"),
        }
    }
}

/// With the mailbox timer at a minute, only a notice through NATS can
/// bring Alice's envelope (sent on node A) to Bob on node B in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_crosses_nodes_by_notice() {
    let Some(d) = Deployment::new() else { return };
    let (_a, url_a) = d.node(Duration::from_secs(60), None).await;
    let (_b, url_b) = d.node(Duration::from_secs(60), None).await;
    let (mut alice, _) = account(&url_a, "alice").await;
    let (mut bob, _) = account(&url_b, "bob").await;
    for i in 0..5 {
        let started = Instant::now();
        let seq = send(&mut alice, "bob", i).await;
        let got = next_delivery(&mut bob).await;
        assert_eq!((got.seq, got.envelope), (seq, vec![i; 64]));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }
}

/// With no NATS to carry notices (its address refuses connections), the
/// mailbox timer still brings every envelope, in order, within its period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_notices_the_mailbox_timer_delivers() {
    let Some(d) = Deployment::new() else { return };
    let nowhere = Some("nats://127.0.0.1:1");
    let (_a, url_a) = d.node(Duration::from_millis(300), nowhere).await;
    let (_b, url_b) = d.node(Duration::from_millis(300), nowhere).await;
    let (mut alice, _) = account(&url_a, "alice").await;
    let (mut bob, _) = account(&url_b, "bob").await;
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(send(&mut alice, "bob", i).await);
    }
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < sent.len() {
        got.push(next_delivery(&mut bob).await.seq);
    }
    assert_eq!(got, sent);
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A node stopped as a crash would stop it loses nothing it acknowledged:
/// the recipient drains its mailbox through another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_acknowledged_envelope() {
    let Some(d) = Deployment::new() else { return };
    let (a, url_a) = d.node(Duration::from_secs(2), None).await;
    let (_b, url_b) = d.node(Duration::from_secs(2), None).await;
    let (mut alice, _) = account(&url_a, "alice").await;
    let (bob, bob_token) = account(&url_a, "bob").await;
    drop(bob);
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(send(&mut alice, "bob", i).await);
    }
    a.abort();
    let mut bob = Raw::connect(&url_b).await;
    assert!(matches!(
        bob.request(frame::Authenticate { token: bob_token }).await,
        Body::AuthOk(_)
    ));
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let d = next_delivery(&mut bob).await;
        assert_eq!(d.envelope, vec![got.len() as u8; 64]);
        got.push(d.seq);
    }
    assert_eq!(got, sent, "all, in order");
}

/// A device that authenticates on node B while connected to node A is
/// signed out of A (code 4000), as on one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_on_a_second_node_replaces_its_first_connection() {
    let Some(d) = Deployment::new() else { return };
    let (_a, url_a) = d.node(Duration::from_secs(60), None).await;
    let (_b, url_b) = d.node(Duration::from_secs(60), None).await;
    let (mut first, token) = account(&url_a, "bob").await;
    first.ping().await;
    let mut second = Raw::connect(&url_b).await;
    assert!(matches!(
        second.request(frame::Authenticate { token }).await,
        Body::AuthOk(_)
    ));
    assert!(matches!(first.recv().await, Got::Closed(Some(4000))));
    second.ping().await;
}

/// Failed logins on one node count on the others: the account's limit is
/// one for the deployment, not one per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_count_across_nodes() {
    let Some(d) = Deployment::new() else { return };
    let (_a, url_a) = d.node(Duration::from_secs(60), None).await;
    let (_b, url_b) = d.node(Duration::from_secs(60), None).await;
    drop(account(&url_a, "bob").await);
    let login = || frame::Login {
        username: "bob".into(),
        password: "not-bobs-password".into(),
        device: 1,
        second_factor: None,
    };
    let limit = test_config().login_failures_per_account;
    for i in 0..limit {
        let url = if i % 2 == 0 { &url_a } else { &url_b };
        Raw::connect(url)
            .await
            .expect_error(login(), chatify_proto::ErrorCode::BadCredentials)
            .await;
    }
    for url in [&url_a, &url_b] {
        Raw::connect(url)
            .await
            .expect_error(login(), chatify_proto::ErrorCode::RateLimited)
            .await;
    }
}

/// The per-address request rate holds for the deployment: requests from
/// one address alternating between two nodes run out of tokens after one
/// burst (plus what refills meanwhile and the nodes' unspent leases), not
/// after a burst at each node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_request_rate_holds_across_nodes() {
    let Some(d) = Deployment::new() else { return };
    const RATE: u32 = 20;
    let node = || {
        d.node_with(Duration::from_secs(60), None, |c| {
            c.requests_per_second_per_address = RATE;
        })
    };
    let (_a, url_a) = node().await;
    let (_b, url_b) = node().await;
    let mut conns = [Raw::connect(&url_a).await, Raw::connect(&url_b).await];
    let started = Instant::now();
    let mut admitted = 0u32;
    for i in 0.. {
        match conns[i % 2].request(frame::Ping {}).await {
            Body::Pong(_) => admitted += 1,
            Body::Error(e) if e.code == chatify_proto::ErrorCode::RateLimited => break,
            other => panic!("{other:?}"),
        }
        assert!(
            admitted <= 4 * RATE,
            "never limited: {admitted} pings admitted"
        );
    }
    let refilled = (started.elapsed().as_secs_f64() * f64::from(RATE)).ceil() as u32;
    let burst = 2 * RATE;
    let leases = 2 * 2;
    assert!(
        admitted <= burst + refilled + leases,
        "{admitted} admitted from one address across two nodes; one burst is {burst}, \
         {refilled} refilled meanwhile, {leases} in the nodes' leases"
    );
}

/// The connections-per-address limit holds across nodes once the nodes
/// have exchanged their counts (every second): three connections on one
/// node leave room for one on the other, of a limit of four; a closed
/// connection gives its room back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_count_across_nodes() {
    let Some(d) = Deployment::new() else { return };
    let node = || {
        d.node_with(Duration::from_secs(60), None, |c| {
            c.max_connections_per_address = 4;
        })
    };
    let (_a, url_a) = node().await;
    let (_b, url_b) = node().await;
    let mut on_a = Vec::new();
    for _ in 0..3 {
        let mut c = Raw::connect(&url_a).await;
        c.ping().await;
        on_a.push(c);
    }
    // Two exchanges: A's count published, then read by B.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut first = Raw::connect(&url_b).await;
    first.ping().await;
    let mut refused = Raw::connect(&url_b).await;
    match refused.recv().await {
        Got::Closed(Some(1008)) => {}
        other => panic!("a fifth connection from one address was let in: {other:?}"),
    }
    drop(on_a.pop());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut again = Raw::connect(&url_b).await;
    again.ping().await;
}

const SENDERS: usize = 9;
const PER_SENDER: usize = 40;

/// Three nodes, their mailbox timers at a minute: senders on every node
/// (the recipient's included) send at once to one recipient on node C,
/// which acknowledges what it is pushed. Each envelope must arrive once,
/// each sender's in order, carried by its notice or read from the mailbox
/// when notices crossed; none may wait for the timer. Returns what went
/// wrong, if anything.
async fn cross_fan_in(
    d: &Deployment,
    wrap: fn(Arc<PgStore>) -> Arc<dyn Store>,
) -> Result<(), String> {
    let mut urls = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let (server, url) = d.node_wrapped(wrap).await;
        nodes.push(server);
        urls.push(url);
    }
    let (mut recipient, _) = account(&urls[2], "recipient").await;
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(account(&urls[i % 3], &format!("sender{i}")).await.0);
    }
    let sending: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut raw)| {
            tokio::spawn(async move {
                for n in 0..PER_SENDER as u64 {
                    send_numbered(&mut raw, "recipient", i as u8, n, 64).await;
                }
            })
        })
        .collect();
    let got = receive_acking(&mut recipient, SENDERS * PER_SENDER, Duration::from_secs(5)).await;
    for s in sending {
        s.await.unwrap();
    }
    numbered_streams_complete(&got, SENDERS, PER_SENDER as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envelopes_from_every_node_arrive_once_and_in_order() {
    let Some(d) = Deployment::new() else { return };
    cross_fan_in(&d, |s| s).await.unwrap();
}

/// The mutant: a store that says each envelope has none before it (as one
/// would that read the device's newest envelope without holding its row's
/// lock). Connections then push envelopes past ones they have not pushed
/// yet, and those are never pushed: the test must see them missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_misnames_the_envelope_before_is_caught() {
    let Some(d) = Deployment::new() else { return };
    let Err(lost) = cross_fan_in(&d, |s| Arc::new(Unlinked(s))).await else {
        panic!("the mutant went unnoticed");
    };
    eprintln!("the mutant: {lost}");
}

struct Unlinked(Arc<PgStore>);

impl Store for Unlinked {
    chatify_server::forward_store!(self => self.0;
        create_user, password_hash, create_token, token, revoke_tokens, prune_tokens,
        publish_keys, take_bundle, one_time_prekey_count, fast_commits, fast_reads, enqueue,
        pending, ack, history, prune_history, devices, remove_device, put_link, take_link, mfa,
        mfa_begin, mfa_enable, mfa_use_step, mfa_use_recovery, mfa_disable, blobs);

    fn enqueue_linked(&self, e: &NewEnvelope) -> Result<Option<Stored>, StoreError> {
        Ok(self
            .0
            .enqueue_linked(e)?
            .map(|s| Stored { prev: Some(0), ..s }))
    }
}
