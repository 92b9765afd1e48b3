//! The `chatify` binary, driven as a person would drive it in two terminals
//! (the same commands as the README).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use chatify_server::auth::PasswordCost;
use chatify_server::store::SqliteStore;
use chatify_server::{Config, Server};

fn chatify(server: &str, home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chatify"));
    c.env_remove("CHATIFY_HOME")
        .env_remove("CHATIFY_CA_CERT")
        .env_remove("CHATIFY_PASSPHRASE_FILE")
        .env_remove("CHATIFY_NEW_PASSPHRASE")
        .env("CHATIFY_PASSPHRASE", "a passphrase for the test");
    c.arg("--server").arg(server).arg("--home").arg(home);
    c
}

/// A server over an in-memory store with `config` at the cheapest
/// password cost, and its URL.
async fn start(config: Config) -> (Server, String) {
    let config = Config {
        password_cost: PasswordCost {
            memory_kib: 64,
            iterations: 1,
        },
        ..config
    };
    let server = Server::start(config, Arc::new(SqliteStore::in_memory().unwrap()))
        .await
        .unwrap();
    let url = format!("ws://{}", server.local_addr());
    (server, url)
}

fn run(mut cmd: Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Lines a child prints, read on a thread so the test can time out.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(rx: &mpsc::Receiver<String>, wanted: &str) {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("never saw {wanted:?}"));
        if line == wanted {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_in_two_terminals() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url) = start(Config::default()).await;
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));

    let url2 = url.clone();
    let (a, b) = (alice.clone(), bob.clone());
    tokio::task::spawn_blocking(move || {
        let url = url2;
        for (home, name) in [(&a, "alice"), (&b, "bob")] {
            let mut c = chatify(&url, home);
            c.args(["register", name, "--password-stdin"]);
            run(c, &format!("{name}-secret-pw\n"));
            let mut c = chatify(&url, home);
            c.args(["login", name, "--password-stdin"]);
            let out = run(c, &format!("{name}-secret-pw\n"));
            assert!(String::from_utf8_lossy(&out.stdout).contains("keys published"));
        }

        // Terminal 1: Alice chats with Bob. Terminal 2: Bob chats with Alice.
        let mut t1 = chatify(&url, &a)
            .args(["chat", "bob"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut t2 = chatify(&url, &b)
            .args(["chat", "alice"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (out1, out2) = (lines(&mut t1), lines(&mut t2));
        let (mut in1, mut in2) = (t1.stdin.take().unwrap(), t2.stdin.take().unwrap());
        writeln!(in1, "hello Bob, it is Alice").unwrap();
        wait_for(&out2, "alice: hello Bob, it is Alice");
        writeln!(in2, "hi Alice!").unwrap();
        wait_for(&out1, "bob: hi Alice!");

        // A second process on Alice's home while her chat runs: refused,
        // naming the running one (two owners of one state reused message
        // keys and overwrote each other's saves).
        let out = chatify(&url, &a)
            .args(["send", "bob", "from a second terminal"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "in use by another chatify process (pid {})",
                t1.id()
            )),
            "{err}"
        );
        drop(in1);
        drop(in2);
        assert!(t1.wait().unwrap().success());
        assert!(t2.wait().unwrap().success());

        // One-shot send and inbox: the send says the server stored it,
        // and, waiting, that Bob's device received it (his encrypted
        // receipt); and the safety numbers match.
        let mut c = chatify(&url, &a);
        c.args(["send", "bob", "one more thing"]);
        let out = String::from_utf8(run(c, "").stdout).unwrap();
        assert!(out.contains("stored by the server"), "{out}");
        assert!(out.contains("not yet delivered to bob"), "{out}");
        let waiting = chatify(&url, &a)
            .args(["send", "--wait", "20", "bob", "and another"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut c = chatify(&url, &b);
        c.args(["inbox", "--wait", "5"]);
        let out = run(c, "");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "alice: one more thing\nalice: and another"
        );
        let out = waiting.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("delivered to bob"), "{said}");
        let number = |home: &Path, peer: &str| {
            let mut c = chatify(&url, home);
            c.args(["verify", peer]);
            let out = String::from_utf8(run(c, "").stdout).unwrap();
            out.lines().skip(1).take(3).collect::<Vec<_>>().join("\n")
        };
        let (n1, n2) = (number(&a, "bob"), number(&b, "alice"));
        assert_eq!(n1, n2);
        assert_eq!(n1.split_whitespace().count(), 12, "{n1}");

        // Alice links a second device: it is Alice to Bob (same safety
        // number), and what Bob sends Alice reaches both.
        let mut c = chatify(&url, &a);
        c.arg("link");
        let out = String::from_utf8(run(c, "").stdout).unwrap();
        let code = out
            .split_whitespace()
            .find(|w| w.len() == 39 && w.matches('-').count() == 7)
            .unwrap_or_else(|| panic!("no link code in {out}"))
            .to_owned();
        let a2 = a.with_file_name("alice-laptop");
        let mut c = chatify(&url, &a2);
        c.args([
            "login",
            "alice",
            "--device",
            "2",
            "--password-stdin",
            "--link",
            &code,
        ]);
        let out = String::from_utf8(run(c, "alice-secret-pw\n").stdout).unwrap();
        assert!(out.contains("linked"), "{out}");
        let mut c = chatify(&url, &b);
        c.args(["devices", "alice"]);
        let out = String::from_utf8(run(c, "").stdout).unwrap();
        assert_eq!(out.trim(), "alice: device(s) 1, 2");
        let mut c = chatify(&url, &b);
        c.args(["send", "alice", "to every device"]);
        run(c, "");
        for home in [&a, &a2] {
            let mut c = chatify(&url, home);
            c.args(["inbox", "--wait", "1"]);
            let out = String::from_utf8(run(c, "").stdout).unwrap();
            assert!(out.contains("bob: to every device"), "{out}");
            assert!(!out.contains("NOT VERIFIED"), "{out}");
        }
        assert_eq!(number(&a2, "bob"), n1);

        // The home is encrypted: what Alice received is not in her files,
        // a wrong passphrase is refused clearly, and the passphrase changes.
        for file in ["messages.cbor", "state.cbor"] {
            let bytes = std::fs::read(a.join(file)).unwrap();
            assert!(!bytes.windows(9).any(|w| w == b"hi Alice!"), "{file}");
        }
        let out = chatify(&url, &a)
            .env("CHATIFY_PASSPHRASE", "not the passphrase")
            .args(["inbox", "--wait", "0"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
        let mut c = chatify(&url, &a);
        c.env("CHATIFY_NEW_PASSPHRASE", "another passphrase")
            .arg("passphrase");
        run(c, "");
        let mut c = chatify(&url, &a);
        c.env("CHATIFY_PASSPHRASE", "another passphrase")
            .args(["inbox", "--all", "--wait", "0"]);
        let out = String::from_utf8(run(c, "").stdout).unwrap();
        assert!(out.contains("bob: hi Alice!"), "{out}");
    })
    .await
    .unwrap();
    server.shutdown().await;
}

/// `chatify send-file` in one terminal; `chatify inbox` in the other
/// saves it under its name in --downloads, byte for byte, and a second
/// copy under a new name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sent_from_one_terminal_is_saved_by_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url) = start(Config::default()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let (alice, bob) = (d.join("alice"), d.join("bob"));
        for (home, name) in [(&alice, "alice"), (&bob, "bob")] {
            let mut c = chatify(&url, home);
            c.args(["register", name, "--password-stdin"]);
            run(c, &format!("{name}-secret-pw\n"));
            let mut c = chatify(&url, home);
            c.args(["login", name, "--password-stdin"]);
            run(c, &format!("{name}-secret-pw\n"));
        }
        let photo = d.join("holiday photo.jpg");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&photo, &bytes).unwrap();
        for _ in 0..2 {
            let mut c = chatify(&url, &alice);
            c.args(["send-file", "bob"])
                .arg(&photo)
                .args(["--caption", "the beach"]);
            let out = run(c, "");
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                said.contains("sent") && said.contains("holiday photo.jpg"),
                "{said}"
            );
            assert!(String::from_utf8_lossy(&out.stderr).contains("100%"));
        }
        let downloads = d.join("saved");
        let mut c = chatify(&url, &bob);
        c.arg("--downloads")
            .arg(&downloads)
            .args(["inbox", "--wait", "2"]);
        let out = run(c, "");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains(r#"alice: [file "holiday photo.jpg", 300000 bytes] the beach"#),
            "{said}"
        );
        assert_eq!(
            said.matches("saved \"holiday photo.jpg\" from alice")
                .count(),
            2,
            "{said}"
        );
        assert_eq!(
            std::fs::read(downloads.join("holiday photo.jpg")).unwrap(),
            bytes
        );
        assert_eq!(
            std::fs::read(downloads.join("holiday photo (2).jpg")).unwrap(),
            bytes
        );
        assert_eq!(
            std::fs::read_dir(&downloads).unwrap().count(),
            2,
            "nothing else left"
        );
        // A missing file is a clear error, and nothing is sent.
        let out = chatify(&url, &alice)
            .args(["send-file", "bob"])
            .arg(d.join("nope.jpg"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("nope.jpg"));
    })
    .await
    .unwrap();
    server.shutdown().await;
}

#[test]
fn help_explains_every_command_and_option() {
    let out = Command::new(env!("CARGO_BIN_EXE_chatify"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for word in [
        "register",
        "login",
        "send",
        "chat",
        "inbox",
        "verify",
        "logout",
        "passphrase",
        "mfa",
        "--passphrase-file",
        "--server",
        "--home",
        "--ca-cert",
        "send-file",
        "--downloads",
        "group",
    ] {
        assert!(help.contains(word), "{word} missing from --help");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_chatify"))
        .args(["verify", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("--confirm"));
}

/// RFC 4648 base32 (no padding) back to bytes.
fn unbase32(text: &str) -> Vec<u8> {
    let (mut out, mut buffer, mut bits) = (Vec::new(), 0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32: {text}"),
        };
        buffer = (buffer << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_factor_authentication_from_the_command_line() {
    use chatify_server::mfa;
    let dir = tempfile::tempdir().unwrap();
    let (server, url) = start(Config {
        login_failures_per_account: 100,
        ..Config::default()
    })
    .await;
    let home = dir.path().join("alice");
    tokio::task::spawn_blocking(move || {
        let cmd = |args: &[&str]| {
            let mut c = chatify(&url, &home);
            c.args(args);
            c
        };
        let text = |out: &Output| String::from_utf8_lossy(&out.stdout).into_owned();
        run(
            cmd(&["register", "alice", "--password-stdin"]),
            "alice-pw-123\n",
        );
        run(
            cmd(&["login", "alice", "--password-stdin"]),
            "alice-pw-123\n",
        );

        let out = text(&run(cmd(&["mfa", "setup"]), ""));
        assert!(
            out.contains("otpauth://totp/Chatify:alice?secret="),
            "{out}"
        );
        let key = out
            .lines()
            .skip_while(|l| !l.contains("authenticator app"))
            .nth(1)
            .unwrap()
            .trim()
            .to_owned();
        let secret = unbase32(&key);
        assert_eq!(secret.len(), mfa::SECRET_LEN, "{out}");
        let step = mfa::current_step();
        let code = |step: i64| format!("{:06}", mfa::totp(&secret, step));

        let out = text(&run(cmd(&["mfa", "confirm", &code(step)]), ""));
        assert!(out.contains("two-factor authentication is on"), "{out}");
        let recovery: Vec<String> = out
            .lines()
            .filter(|l| l.starts_with("  ") && l.matches('-').count() == 3)
            .map(|l| l.trim().to_owned())
            .collect();
        assert_eq!(recovery.len(), mfa::RECOVERY_CODES, "{out}");

        // No code, no terminal to ask in: a clear error.
        let out = cmd(&["login", "alice", "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(b"alice-pw-123\n")?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--code"), "{err}");

        let next = code(step + 1);
        run(
            cmd(&["login", "alice", "--password-stdin", "--code", &next]),
            "alice-pw-123\n",
        );
        run(
            cmd(&["login", "alice", "--password-stdin", "--code", &recovery[0]]),
            "alice-pw-123\n",
        );
        let out = text(&run(cmd(&["mfa", "disable", &recovery[1]]), ""));
        assert!(out.contains("off"), "{out}");
        run(
            cmd(&["login", "alice", "--password-stdin"]),
            "alice-pw-123\n",
        );
    })
    .await
    .unwrap();
    server.shutdown().await;
}

#[test]
fn commands_without_login_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = chatify("ws://127.0.0.1:9", dir.path())
        .args(["send", "bob", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chatify login"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three people in three terminals: Alice makes a group, everyone reads
/// her message, Bob answers, and when Alice removes Carol every terminal
/// says who did what; Carol can no longer send.
#[tokio::test(flavor = "multi_thread")]
async fn a_group_chat_across_three_terminals() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = start(Config::default()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let homes: Vec<(std::path::PathBuf, &str)> = ["alice", "bob", "carol"]
            .iter()
            .map(|n| (d.join(n), *n))
            .collect();
        for (home, name) in &homes {
            let mut c = chatify(&url, home);
            c.args(["register", name, "--password-stdin"]);
            run(c, &format!("{name}-secret-pw\n"));
            let mut c = chatify(&url, home);
            c.args(["login", name, "--password-stdin"]);
            run(c, &format!("{name}-secret-pw\n"));
        }
        let said = |home: &Path, args: &[&str]| {
            let mut c = chatify(&url, home);
            c.args(args);
            String::from_utf8_lossy(&run(c, "").stdout).into_owned()
        };
        let (alice, bob, carol) = (&homes[0].0, &homes[1].0, &homes[2].0);
        let created = said(alice, &["group", "create", "bob", "carol"]);
        assert!(created.starts_with("created group "), "{created}");
        let id = created["created group ".len()..][..8].to_owned();
        let sent = said(alice, &["group", "send", &id, "hello, group"]);
        assert!(sent.contains("stored for 2 device(s)"), "{sent}");
        for home in [bob, carol] {
            let inbox = said(home, &["inbox", "--wait", "1"]);
            assert!(
                inbox.contains(&format!(
                    "[group {id}] alice created the group with alice, bob, carol"
                )),
                "{inbox}"
            );
            assert!(
                inbox.contains(&format!("[group {id}] alice: hello, group")),
                "{inbox}"
            );
        }
        said(bob, &["group", "send", &id, "hi all"]);
        let listed = said(bob, &["group", "list"]);
        assert!(
            listed.contains(&format!("{id}  alice*, bob, carol")),
            "{listed}"
        );
        let removed = said(alice, &["group", "remove", &id, "carol"]);
        assert!(removed.contains("removed carol"), "{removed}");
        let inbox = said(carol, &["inbox", "--wait", "1"]);
        assert!(
            inbox.contains(&format!("[group {id}] bob: hi all")),
            "{inbox}"
        );
        assert!(
            inbox.contains(&format!("[group {id}] alice removed carol")),
            "{inbox}"
        );
        let mut c = chatify(&url, carol);
        c.args(["group", "send", &id, "am I still here?"]);
        let out = c.output().unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no longer in the group"));
        let inbox = said(bob, &["inbox", "--wait", "1"]);
        assert!(
            inbox.contains(&format!("[group {id}] alice removed carol")),
            "{inbox}"
        );
    })
    .await
    .unwrap();
}
