//! The `chatify-server` binary as a process: an acknowledged send survives
//! `kill -9`, SIGTERM shuts down gracefully, and `--help` explains itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use chatify_proto::frame;
use chatify_proto::{Body, Frame};
use common::{Got, Raw, account, addr};

fn spawn(db: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatify-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--argon2-memory-kib",
            "64",
            "--argon2-iterations",
            "1",
        ])
        .arg("--db")
        .arg(db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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

#[tokio::test]
async fn sigterm_closes_connections_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn(&dir.path().join("chatify.db"));
    let mut raw = Raw::connect(&url).await;
    raw.ping().await;
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(matches!(raw.recv().await, Got::Closed(Some(1001))));
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
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
