//! Envelopes a single node commits are pushed to their recipients'
//! connections as the store announces them, without reading them back
//! (`Store::announce_commits`). The property: under many concurrent
//! senders, an online recipient gets every envelope exactly once and each
//! sender's in order, on SQLite with and without group commit and on
//! PostgreSQL; and a node whose announcements arrive out of commit order
//! (the mutant) is caught losing envelopes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use chatify_proto::frame::Deliver;
use chatify_server::Server;
use chatify_server::store::sqlite::Durability;
use chatify_server::store::{Announce, PgOptions, PgStore, SqliteStore, Store};
use common::{Raw, account, numbered_streams_complete, receive_acking, send_numbered, test_config};

const SENDERS: usize = 12;
const PER_SENDER: usize = 60;

/// Starts a node on `store`; `SENDERS` senders each send `PER_SENDER`
/// envelopes to one recipient at once, while the recipient acknowledges
/// what it is pushed (or, `late`, reads nothing until every send is
/// stored: far more than the hub queues for one connection then wait).
/// Returns what went wrong, if anything.
async fn fan_in(store: Arc<dyn Store>, late: bool) -> Result<(), String> {
    let mut config = test_config();
    config.requests_per_second = 0;
    config.requests_per_second_per_address = 0;
    config.max_connections_per_address = 64;
    let server = Server::start(config, store).await.unwrap();
    let url = format!("ws://{}", server.local_addr());
    let (mut recipient, _) = account(&url, "recipient").await;
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(account(&url, &format!("sender{i}")).await.0);
    }
    let sending = senders.into_iter().enumerate().map(|(i, mut raw)| {
        tokio::spawn(async move {
            for n in 0..PER_SENDER as u64 {
                // Late, large enough to fill the socket's buffers, so that
                // the node's connection stalls on its writes.
                let len = if late { 32 * 1024 } else { 64 };
                send_numbered(&mut raw, "recipient", i as u8, n, len).await;
            }
            raw
        })
    });
    let sending: Vec<_> = sending.collect();
    if late {
        for s in sending {
            s.await.unwrap();
        }
        return check(&receive(&mut recipient, SENDERS * PER_SENDER).await).map(|()| drop(server));
    }
    let got = receive(&mut recipient, SENDERS * PER_SENDER).await;
    for s in sending {
        s.await.unwrap();
    }
    server.shutdown().await;
    check(&got)
}

/// The recipient's pushes until `want` arrived or none came for 3 s,
/// each acknowledged as it comes.
async fn receive(raw: &mut Raw, want: usize) -> Vec<Deliver> {
    receive_acking(raw, want, Duration::from_secs(3)).await
}

/// Every sender's envelopes once each, in its order.
fn check(got: &[Deliver]) -> Result<(), String> {
    numbered_streams_complete(got, SENDERS, PER_SENDER as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_envelope_once_and_in_order_on_sqlite() {
    fan_in(Arc::new(SqliteStore::in_memory().unwrap()), false)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_envelope_once_and_in_order_with_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db"), Durability::Full).unwrap();
    fan_in(Arc::new(store), false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_envelope_once_and_in_order_on_postgres() {
    let Ok(url) = std::env::var("CHATIFY_PG_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CHATIFY_PG_URL is not set: the PostgreSQL case cannot run"
        );
        eprintln!("skipped: set CHATIFY_PG_URL to run the PostgreSQL case");
        return;
    };
    let schema = format!("chatify_announce_{:08x}", rand::random::<u32>());
    let store = tokio::task::spawn_blocking(move || {
        let options = PgOptions {
            pool_size: 8,
            schema: Some(schema),
            ..PgOptions::default()
        };
        Arc::new(PgStore::connect(&url, options).unwrap())
    })
    .await
    .unwrap();
    let result = fan_in(Arc::clone(&store) as Arc<dyn Store>, false).await;
    tokio::task::spawn_blocking(move || store.drop_schema().unwrap())
        .await
        .unwrap();
    result.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recipient_that_reads_late_gets_everything_once() {
    fan_in(Arc::new(SqliteStore::in_memory().unwrap()), true)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn announcements_out_of_commit_order_are_caught() {
    let store = Scrambled {
        inner: Some(SqliteStore::in_memory().unwrap()),
    };
    let Err(lost) = fan_in(Arc::new(store), false).await else {
        panic!("the mutant went unnoticed");
    };
    eprintln!("the mutant: {lost}");
}

/// A delay from 0 to 2 ms, from the sequence number.
fn rand_micros(seq: u64) -> u64 {
    seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 53
}

/// The real store, its announcements scrambled.
struct Scrambled {
    inner: Option<SqliteStore>,
}

impl Scrambled {
    fn inner(&self) -> &SqliteStore {
        self.inner.as_ref().unwrap()
    }
}

impl Store for Scrambled {
    chatify_server::forward_store!(self => self.inner();
        create_user, password_hash, create_token, token, revoke_tokens, prune_tokens,
        publish_keys, take_bundle, one_time_prekey_count, fast_commits, enqueue, pending, ack,
        history, prune_history, devices, remove_device, put_link, take_link, mfa, mfa_begin,
        mfa_enable, mfa_use_step, mfa_use_recovery, mfa_disable, blobs);

    fn announce_commits(&self, announce: Announce) -> bool {
        // The mutant: each announcement reaches the server's listener
        // after a random delay on a thread of its own, as it would if a
        // send pushed its envelope once `enqueue` returned (after the next
        // commit may have been announced).
        self.inner().announce_commits(Arc::new(move |seq, e| {
            let announce = Arc::clone(&announce);
            let e = e.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros(rand_micros(seq)));
                announce(seq, &e);
            });
            true
        }))
    }
}
