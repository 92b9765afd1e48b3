//! `--web DIR`: the browser client's files are served on the WebSocket port
//! with a strict Content-Security-Policy, only the files listed at start,
//! and a WebSocket upgrade on the same port still reaches the protocol.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use chatify_server::Config;
use chatify_server::web::{CSP, WebRoot};
use common::{Raw, account, start, test_config};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

fn web_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("index.html"),
        "<!doctype html><title>t</title>",
    )
    .unwrap();
    std::fs::write(dir.path().join("app.js"), "console.log(1)").unwrap();
    std::fs::create_dir(dir.path().join("img")).unwrap();
    std::fs::write(dir.path().join("img/a.png"), [0x89, b'P', b'N', b'G']).unwrap();
    std::fs::write(dir.path().join(".hidden"), "secret").unwrap();
    dir
}

async fn web_server() -> (chatify_server::Server, String, tempfile::TempDir) {
    let dir = web_dir();
    let root = WebRoot::load(dir.path()).unwrap();
    let (server, url) = start(Config {
        web: Some(Arc::new(root)),
        ..test_config()
    })
    .await;
    (server, url, dir)
}

/// Sends `request` as is and reads the whole answer (the server closes).
async fn http(url: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(url.trim_start_matches("ws://"))
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the server closes after answering")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn files_are_served_with_a_strict_policy_and_nothing_else_is() {
    let (_server, url, _dir) = web_server().await;
    let index = http(&url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(index.starts_with("HTTP/1.1 200 OK\r\n"), "{index}");
    assert!(index.ends_with("<!doctype html><title>t</title>"));
    assert_eq!(header(&index, "content-security-policy"), Some(CSP));
    assert!(
        CSP.contains("default-src 'none'")
            && CSP.contains("script-src 'self'")
            && !CSP.contains("unsafe")
    );
    assert_eq!(header(&index, "x-content-type-options"), Some("nosniff"));
    assert_eq!(
        header(&index, "content-type"),
        Some("text/html; charset=utf-8")
    );

    let js = http(&url, b"GET /app.js?v=1 HTTP/1.1\r\n\r\n").await;
    assert_eq!(
        header(&js, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(js.ends_with("console.log(1)"));
    let png = http(&url, b"GET /img/a.png HTTP/1.1\r\n\r\n").await;
    assert_eq!(header(&png, "content-type"), Some("image/png"));
    let head = http(&url, b"HEAD /app.js HTTP/1.1\r\n\r\n").await;
    assert!(
        head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
        "HEAD has no body"
    );

    // Only what was listed at start: no traversal, no hidden files, no
    // files added later, no other methods, no endless heads.
    for path in [
        "/../../etc/passwd",
        "/.hidden",
        "/img/../app.js",
        "/img",
        "/%2e%2e/x",
        "/later.js",
    ] {
        std::fs::write(_dir.path().join("later.js"), "added after start").unwrap();
        let a = http(&url, format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes()).await;
        assert!(a.starts_with("HTTP/1.1 404"), "{path}: {a}");
        assert_eq!(
            header(&a, "content-security-policy"),
            Some(CSP),
            "errors carry the policy too"
        );
    }
    let post = http(&url, b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    let mut long = b"GET / HTTP/1.1\r\n".to_vec();
    long.extend(std::iter::repeat_n(b'a', 9000));
    let big = http(&url, &long).await;
    assert!(big.starts_with("HTTP/1.1 431"), "{big}");
}

#[tokio::test]
async fn the_protocol_still_runs_on_the_same_port() {
    let (_server, url, _dir) = web_server().await;
    let mut raw = Raw::connect(&url).await;
    raw.ping().await;
    // A whole account's setup, over the upgraded connection.
    let (_alice, token) = account(&url, "alice").await;
    assert!(!token.is_empty());
}

#[tokio::test]
async fn without_web_a_plain_request_gets_no_file() {
    let (_server, url) = start(test_config()).await;
    let answer = http(&url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_directory_without_an_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.js"), "x").unwrap();
    let e = WebRoot::load(dir.path()).unwrap_err();
    assert!(e.to_string().contains("index.html"), "{e}");
    assert!(WebRoot::load(&dir.path().join("missing")).is_err());
}
