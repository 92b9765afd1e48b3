//! One message through the real server on loopback: send (encrypt, durable
//! client state, relay, durable server commit) to decrypted at the recipient.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;

use chatify_client::{Client, ConnectOptions, Event};
use chatify_server::auth::PasswordCost;
use chatify_server::store::SqliteStore;
use chatify_server::store::sqlite::Durability;
use chatify_server::{Config, Server};
use criterion::{Criterion, criterion_group, criterion_main};

fn end_to_end(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (server, mut alice, mut bob) = rt.block_on(async {
        let store =
            Arc::new(SqliteStore::open(&dir.path().join("db"), Durability::Normal).unwrap());
        let config = Config {
            password_cost: PasswordCost {
                memory_kib: 64,
                iterations: 1,
            },
            ..Config::default()
        };
        let server = Server::start(config, store).await.unwrap();
        let options = ConnectOptions::new(format!("ws://{}", server.local_addr()));
        let mut clients = Vec::new();
        for name in ["alice", "bob"] {
            Client::register(&options, name, "bench-password")
                .await
                .unwrap();
            clients.push(
                Client::login(
                    &options,
                    &dir.path().join(name),
                    &chatify_client::Passphrase::with_cost(
                        "bench",
                        chatify_client::KdfCost::MINIMUM,
                    )
                    .unwrap(),
                    name,
                    "bench-password",
                    1,
                )
                .await
                .unwrap(),
            );
        }
        let bob = clients.pop().unwrap();
        let alice = clients.pop().unwrap();
        (server, alice, bob)
    });
    let text = vec![b'm'; 256];
    c.bench_function(
        "end to end: send 256 B, decrypted at the recipient (loopback)",
        |b| {
            b.iter(|| {
                rt.block_on(async {
                    alice.send("bob", &text).await.unwrap();
                    loop {
                        if let Some(Event::Message(m)) = bob.next_event().await.unwrap() {
                            break m;
                        }
                    }
                })
            })
        },
    );
    rt.block_on(server.shutdown());
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = end_to_end
}
criterion_main!(benches);
