//! Helpers shared by the client's integration tests: a real server on
//! loopback, registered and logged-in users, and waiting for messages.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chatify_client::{Client, ConnectOptions, Event, Incoming, KdfCost, Passphrase};
use chatify_proto::frame::Address;
use chatify_server::auth::PasswordCost;
use chatify_server::store::{SqliteStore, Store};
use chatify_server::{Config, Server};

/// The default configuration with a cheap password hash.
pub fn config() -> Config {
    Config {
        password_cost: PasswordCost {
            memory_kib: 64,
            iterations: 1,
        },
        ..Config::default()
    }
}

pub async fn server_with(store: Arc<dyn Store>, config: Config) -> (Server, ConnectOptions) {
    let server = Server::start(config, store).await.unwrap();
    let options = ConnectOptions::new(format!("ws://{}", server.local_addr()));
    (server, options)
}

/// A server over an in-memory store.
pub async fn server() -> (Server, ConnectOptions) {
    server_with(Arc::new(SqliteStore::in_memory().unwrap()), config()).await
}

/// The passphrase of every test home (at the cheapest derivation cost).
pub fn pass() -> Passphrase {
    Passphrase::with_cost("test passphrase", KdfCost::MINIMUM).unwrap()
}

/// Registers `name` (password `NAME-password`) and logs in device 1.
pub async fn user(options: &ConnectOptions, home: &Path, name: &str) -> Client {
    let password = format!("{name}-password");
    Client::register(options, name, &password).await.unwrap();
    Client::login(options, home, &pass(), name, &password, 1)
        .await
        .unwrap()
}

/// The next message event, skipping bookkeeping events.
pub async fn next_message(client: &mut Client) -> Incoming {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), client.next_event())
            .await
            .expect("no event within 10 s")
            .unwrap()
            .expect("connection ended");
        match event {
            Event::Message(m) => return m,
            Event::KeysReplenished(_)
            | Event::Delivered { .. }
            | Event::RetryRequested { .. }
            | Event::Resent { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

pub fn addr(user: &str, device: u32) -> Address {
    Address {
        user: user.into(),
        device,
    }
}

/// Two server nodes over one PostgreSQL store (a schema of its own) and
/// NATS, from `CHATIFY_PG_URL` and `CHATIFY_NATS_URL`; `None` (the test
/// says so and passes) without them, except under CI, where they are
/// required.
pub struct Nodes {
    pub servers: Vec<Server>,
    pub options: Vec<ConnectOptions>,
    pub store: Arc<chatify_server::store::PgStore>,
}

pub async fn two_nodes(what: &str) -> Option<Nodes> {
    use chatify_server::store::{PgOptions, PgStore};
    let (Ok(pg), Ok(nats)) = (
        std::env::var("CHATIFY_PG_URL"),
        std::env::var("CHATIFY_NATS_URL"),
    ) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CHATIFY_PG_URL and CHATIFY_NATS_URL are needed"
        );
        eprintln!("skipped: set CHATIFY_PG_URL and CHATIFY_NATS_URL");
        return None;
    };
    let tag = format!("{:016x}", rand::random::<u64>());
    let schema = format!("chatify_{what}_{tag}");
    let store = tokio::task::spawn_blocking(move || {
        Arc::new(
            PgStore::connect(
                &pg,
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
    .unwrap();
    let mut nodes = Nodes {
        servers: Vec::new(),
        options: Vec::new(),
        store,
    };
    for _ in 0..2 {
        let config = Config {
            nats: Some(nats.clone()),
            nats_prefix: format!("chatify.test.{tag}"),
            ..config()
        };
        let (server, options) = server_with(nodes.store.clone(), config).await;
        nodes.servers.push(server);
        nodes.options.push(options);
    }
    Some(nodes)
}

impl Nodes {
    /// Stops both nodes and drops the schema.
    pub async fn finish(self) {
        for server in self.servers {
            server.shutdown().await;
        }
        let store = self.store;
        tokio::task::spawn_blocking(move || store.drop_schema().unwrap())
            .await
            .unwrap();
    }
}
