//! The `chatify-server` binary as a process: an acknowledged send survives
//! `kill -9`, SIGTERM shuts down gracefully, and `--help` explains itself.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use chatify_proto::frame;
use chatify_proto::{Body, Frame};
use common::{Got, Raw, account, addr};

fn spawn(db: &Path) -> (Child, String) {
    spawn_with(db, "info", Stdio::null())
}

/// Starts the binary on a free port; returns it and its `ws://` URL.
fn spawn_with(db: &Path, log: &str, stderr: Stdio) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatify-server"))
        .args(["--listen", "127.0.0.1:0", "--argon2-memory-kib", "64"])
        .args(["--argon2-iterations", "1", "--log", log])
        .arg("--db")
        .arg(db)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect(&line)
        .to_owned();
    (child, url)
}

#[tokio::test]
async fn an_acknowledged_send_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chatify.db");
    let (mut child, url) = spawn(&db);
    let (mut alice, _) = account(&url, "alice").await;
    let (bob, bob_token) = account(&url, "bob").await;
    drop(bob);
    let mut seqs = Vec::new();
    for i in 0..20u8 {
        match alice
            .request(frame::Send {
                to: addr("bob"),
                conversation: [1; 16],
                message_id: [i; 16],
                envelope: vec![i; 64],
            })
            .await
        {
            Body::SendOk(ok) => seqs.push(ok.seq),
            other => panic!("{other:?}"),
        }
    }
    child.kill().unwrap(); // SIGKILL: no shutdown code runs
    child.wait().unwrap();

    let (mut child, url) = spawn(&db);
    let mut bob = Raw::connect(&url).await;
    assert!(matches!(
        bob.request(frame::Authenticate { token: bob_token }).await,
        Body::AuthOk(_)
    ));
    let mut got = Vec::new();
    while got.len() < seqs.len() {
        match bob.recv().await {
            Got::Frame(Frame {
                body: Body::Deliver(d),
                ..
            }) => got.push((d.seq, d.envelope)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        seqs,
        "all, in order"
    );
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, (_, e))| *e == vec![i as u8; 64])
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Sends SIGTERM to the child, as a service manager stops it.
fn sigterm(child: &std::process::Child) {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}

#[tokio::test]
async fn sigterm_closes_connections_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn(&dir.path().join("chatify.db"));
    let mut raw = Raw::connect(&url).await;
    raw.ping().await;
    sigterm(&child);
    assert!(matches!(raw.recv().await, Got::Closed(Some(1001))));
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// A SIGTERM the moment the server says it listens (as a service manager
/// stopping a server it just started) still shuts it down gracefully: the
/// handlers are installed before it accepts anything.
#[test]
fn a_sigterm_right_after_start_exits_cleanly() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, _url) = spawn(&dir.path().join("chatify.db"));
        sigterm(&child);
        let exit = child.wait().unwrap();
        assert!(exit.success(), "{exit:?}");
    }
}

#[test]
fn help_explains_every_option() {
    let out = Command::new(env!("CARGO_BIN_EXE_chatify-server"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for option in [
        "--listen",
        "--db",
        "--durability",
        "--tls-cert",
        "--tls-key",
        "--history-retention-days",
        "--token-ttl-days",
        "--argon2-memory-kib",
        "--argon2-iterations",
        "--log",
        "--config",
        "--store",
        "--pg-schema",
        "--pg-pool",
        "--nats",
        "--nats-prefix",
        "--mail-poll-ms",
        "migrate",
    ] {
        assert!(help.contains(option), "{option} missing from --help");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_chatify-server"))
        .arg("--tls-cert=x.pem")
        .output()
        .unwrap();
    assert!(
        !bad.status.success(),
        "--tls-cert without --tls-key must be refused"
    );
}

/// Forms in which a secret could appear in a log line.
fn leaks(log: &str, secret: &[u8]) -> bool {
    let hex = chatify_proto::hex::lower(secret);
    let text = String::from_utf8_lossy(secret);
    let debug_bytes = format!("{:?}", &secret[..8])
        .trim_end_matches(']')
        .to_owned();
    log.contains(text.as_ref())
        || log.to_lowercase().contains(&hex)
        || log
            .replace(char::is_whitespace, "")
            .contains(&debug_bytes.replace(' ', ""))
}

#[tokio::test]
async fn the_most_verbose_log_holds_no_password_token_or_body() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (mut child, url) = spawn_with(&dir.path().join("chatify.db"), "trace", Stdio::from(log));

    let password = b"PASSWORD-CANARY-7f3a9c".to_vec();
    let body = b"BODY-CANARY-e41d0b77aa".to_vec();
    let mut raw = Raw::connect(&url).await;
    raw.request(frame::Register {
        username: "alice".into(),
        password: String::from_utf8(password.clone()).unwrap(),
    })
    .await;
    let token = match raw
        .request(frame::Login {
            username: "alice".into(),
            password: String::from_utf8(password.clone()).unwrap(),
            device: 1,
            second_factor: None,
        })
        .await
    {
        Body::LoginOk(ok) => ok.token,
        other => panic!("{other:?}"),
    };
    drop(raw);
    let (mut alice, _) = account(&url, "carol").await;
    let (_bob, _) = account(&url, "bob").await;
    alice
        .request(frame::Send {
            to: addr("bob"),
            conversation: [1; 16],
            message_id: [2; 16],
            envelope: body.clone(),
        })
        .await;
    let mut bad = Raw::connect(&url).await;
    bad.send_bytes(body.clone()).await; // undecodable: logged as an error, without its bytes
    bad.recv().await;
    sigterm(&child);
    child.wait().unwrap();

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the log was not verbose:\n{log}"
    );
    assert!(
        log.contains("frame=\"Send\""),
        "requests are logged by type"
    );
    for secret in [&password, &body, &token] {
        assert!(!leaks(&log, secret), "a secret reached the log:\n{log}");
    }
    // The check itself finds each secret when it is there.
    for secret in [&password, &body, &token] {
        let hex: String = secret.iter().map(|b| format!("{b:02X}")).collect();
        assert!(leaks(&format!("{log}\n{hex}"), secret));
        assert!(leaks(&format!("{log}\n{secret:#?}"), secret));
    }
    assert!(leaks(&format!("{log} PASSWORD-CANARY-7f3a9c"), &password));
}

fn server(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chatify-server"))
        .args(args)
        .env_remove("CHATIFY_STORE")
        .output()
        .unwrap()
}

/// `migrate` creates or upgrades the schema and exits, on SQLite and (with
/// `CHATIFY_PG_URL`) on PostgreSQL; a second run finds nothing to do.
#[test]
fn migrate_brings_the_schema_up_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sub").join("chatify.db");
    for _ in 0..2 {
        let out = server(&["migrate", "--db", db.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("schema at version "));
    }
    assert!(db.exists());
    let Ok(url) = std::env::var("CHATIFY_PG_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CHATIFY_PG_URL is not set"
        );
        return;
    };
    let schema = format!("chatify_migrate_{}", std::process::id());
    for _ in 0..2 {
        let out = server(&["migrate", "--store", &url, "--pg-schema", &schema]);
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("schema at version "));
    }
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let tables: i64 = c
        .query_one(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = $1",
            &[&schema],
        )
        .unwrap()
        .get(0);
    c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
    assert!(tables >= 6, "{tables} tables");
}

/// A `--config` file sets options by their long names; the command line
/// overrides it; a bad file or a store URL of the wrong kind is a clear
/// error, not a start.
#[test]
fn a_config_file_sets_options_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.toml");
    let from_file = dir.path().join("from-file.db");
    let from_cli = dir.path().join("from-cli.db");
    std::fs::write(
        &file,
        format!(
            "db = {:?}\ndurability = \"normal\"\npg-pool = 4\n",
            from_file.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = server(&["migrate", "--config", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(from_file.exists());
    let out = server(&[
        "migrate",
        "--config",
        file.to_str().unwrap(),
        "--db",
        from_cli.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(from_cli.exists());

    std::fs::write(&file, "listen = [1, 2]\n").unwrap();
    let out = server(&["migrate", "--config", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be a string or a number"));
    let out = server(&["migrate", "--config", "/nonexistent/server.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    let out = server(&["migrate", "--store", "sqlite://x.db"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--store takes a postgres:// URL"));
    let out = server(&["--nats", "nats://127.0.0.1:4222"]);
    assert!(!out.status.success(), "--nats without a shared store");
}
