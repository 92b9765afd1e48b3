//! Serving the browser client's files (`--web DIR`) on the WebSocket port.
//!
//! ```text
//!  GET /app.js ──▶ head read (≤ 8 KiB) ──▶ not an upgrade ──▶ 200 + file, close
//!  GET / Upgrade: websocket ──▶ head replayed ──▶ WebSocket handshake ──▶ protocol
//! ```
//!
//! The files are read once at start, so what is served cannot change while
//! the server runs, and only a `GET` or `HEAD` of a listed file succeeds.
//! Every answer carries a strict Content-Security-Policy: scripts and styles
//! only from this origin (and the page names them with Subresource
//! Integrity digests), connections only back to this origin, no frames,
//! no plugins, no inline code. docs/THREAT_MODEL.md says what this does and
//! does not protect against: a server that serves the code can serve other
//! code.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The Content-Security-Policy of every answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'";

/// The longest request head read before it is refused.
const MAX_HEAD: usize = 8 * 1024;
/// Files and bytes a web root may hold.
const MAX_FILES: usize = 256;
const MAX_BYTES: usize = 32 * 1024 * 1024;

/// The files of a web root, read at start.
pub struct WebRoot {
    files: HashMap<String, (Vec<u8>, &'static str)>,
}

impl std::fmt::Debug for WebRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebRoot({} files)", self.files.len())
    }
}

impl WebRoot {
    /// Reads every file under `dir` (it must hold an `index.html`).
    pub fn load(dir: &Path) -> io::Result<WebRoot> {
        let mut files = HashMap::new();
        let mut total = 0usize;
        let mut stack = vec![(dir.to_path_buf(), String::new())];
        while let Some((path, prefix)) = stack.pop() {
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                let name = entry
                    .file_name()
                    .into_string()
                    .map_err(|_| invalid("a file name is not UTF-8"))?;
                if name.starts_with('.') {
                    continue;
                }
                let kind = entry.file_type()?;
                let url = format!("{prefix}/{name}");
                if kind.is_dir() {
                    stack.push((entry.path(), url));
                } else if kind.is_file() {
                    let data = std::fs::read(entry.path())?;
                    total += data.len();
                    files.insert(url, (data, content_type(&name)));
                }
                if files.len() > MAX_FILES || total > MAX_BYTES {
                    return Err(invalid(
                        "the web directory holds more than 256 files or 32 MiB",
                    ));
                }
            }
        }
        if !files.contains_key("/index.html") {
            return Err(invalid("the web directory has no index.html"));
        }
        Ok(WebRoot { files })
    }

    fn get(&self, path: &str) -> Option<&(Vec<u8>, &'static str)> {
        let path = path.split(['?', '#']).next().unwrap_or("/");
        self.files
            .get(if path == "/" { "/index.html" } else { path })
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" | "webmanifest" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// What the request head asked for.
pub enum Routed<S> {
    /// A WebSocket upgrade: the stream, with the head it read put back.
    Upgrade(Replay<S>),
    /// A file was served (or the request refused); the connection is done.
    Served,
}

/// Reads the request head; serves a file, or hands an upgrade on.
pub async fn route<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    root: &WebRoot,
) -> io::Result<Routed<S>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let end = loop {
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > MAX_HEAD {
            respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain; charset=utf-8",
                b"request head too large\n",
                true,
            )
            .await?;
            return Ok(Routed::Served);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(Routed::Served);
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    };
    let text = String::from_utf8_lossy(head.get(..end).unwrap_or_default());
    let mut lines = text.split("\r\n");
    let request = lines.next().unwrap_or("");
    let upgrade = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("upgrade") && v.trim().eq_ignore_ascii_case("websocket")
        })
    });
    if upgrade {
        return Ok(Routed::Upgrade(Replay {
            head,
            at: 0,
            inner: stream,
        }));
    }
    let mut parts = request.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (method, root.get(path)) {
        ("GET" | "HEAD", Some((body, kind))) => {
            respond(&mut stream, "200 OK", kind, body, method == "GET").await?
        }
        ("GET" | "HEAD", None) => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain; charset=utf-8",
                b"not found\n",
                method == "GET",
            )
            .await?
        }
        _ => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain; charset=utf-8",
                b"method not allowed\n",
                true,
            )
            .await?
        }
    }
    Ok(Routed::Served)
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    kind: &str,
    body: &[u8],
    with_body: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nContent-Security-Policy: {CSP}\r\n\
         X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nCross-Origin-Opener-Policy: same-origin\r\n\
         Cross-Origin-Resource-Policy: same-origin\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if with_body {
        stream.write_all(body).await?;
    }
    stream.flush().await?;
    stream.shutdown().await
}

/// A stream that first yields the bytes already read from it.
pub struct Replay<S> {
    head: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> std::fmt::Debug for Replay<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Replay({} bytes to replay)", self.head.len() - self.at)
    }
}

impl<S> std::fmt::Debug for Routed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Routed::Upgrade(r) => write!(f, "Upgrade({r:?})"),
            Routed::Served => f.write_str("Served"),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.head.len() {
            let n = buf.remaining().min(self.head.len() - self.at);
            let at = self.at;
            buf.put_slice(self.head.get(at..at + n).unwrap_or_default());
            self.at += n;
            if self.at == self.head.len() {
                self.head = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
