//! The taps: what the server received (wire), stored (files), logged (log
//! file) and held in memory (`/proc/PID/mem`).

use anyhow::{Context as _, Result};
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::plaintext::{Detector, Hit};
use crate::scenario::Network;

/// Most bytes the wire tap records by default; past it, nothing more is
/// recorded (a tap's result says how many bytes it searched).
const WIRE_KEEP: usize = 64 * 1024 * 1024;

/// What one tap found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct TapResult {
    /// Bytes searched.
    pub(crate) bytes: u64,
    /// Matches in total.
    pub(crate) matches: u64,
    /// The first matches, with locations.
    pub(crate) hits: Vec<Hit>,
}

/// Records every byte that clients send to the server, with WebSocket
/// masking removed: exactly what the server's WebSocket layer reads.
///
/// With several server nodes it is also the deployment's balancer: each
/// connection goes to the node with the fewest open connections through it
/// (the next in turn among equals), or to the next such node when that one
/// refuses (a node that is down), so that clients spread over the nodes and
/// a reconnect lands on another.
#[derive(Clone)]
pub(crate) struct WireTap {
    targets: Arc<Mutex<Vec<SocketAddr>>>,
    /// Open connections through this relay to each target.
    open: Arc<Mutex<Vec<usize>>>,
    recorded: Arc<Mutex<Vec<u8>>>,
    /// Most bytes recorded (0: none).
    keep: usize,
    /// Faults for connections accepted from now on.
    network: Arc<Mutex<Option<Network>>>,
    pub(crate) addr: SocketAddr,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WireTap {
    /// A relay on a loopback port forwarding to `target`; records when `record`.
    pub(crate) async fn start(target: SocketAddr, record: bool) -> std::io::Result<WireTap> {
        Self::keeping(target, if record { WIRE_KEEP } else { 0 }).await
    }

    /// A relay that records at most `keep` bytes.
    pub(crate) async fn keeping(target: SocketAddr, keep: usize) -> std::io::Result<WireTap> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let tap = WireTap {
            targets: Arc::new(Mutex::new(vec![target])),
            open: Arc::new(Mutex::new(vec![0])),
            recorded: Arc::default(),
            keep,
            network: Arc::default(),
            addr: listener.local_addr()?,
        };
        tokio::spawn(tap.clone().serve(listener, None));
        Ok(tap)
    }

    /// Another entry to the same relay whose connections go to node
    /// `node` while it is up (and to the next one up while it is not):
    /// a user pinned to a node.
    pub(crate) async fn entry(&self, node: usize) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(self.clone().serve(listener, Some(node)));
        Ok(addr)
    }

    async fn serve(self, listener: TcpListener, preferred: Option<usize>) {
        let mut n = 0u64;
        while let Ok((client, _)) = listener.accept().await {
            n += 1;
            // This connection's order of nodes: its own node first, or the
            // least loaded (the next in turn among equals).
            let targets = lock(&self.targets).clone();
            let mut order: Vec<usize> = (0..targets.len()).collect();
            if !order.is_empty() {
                let first = preferred.unwrap_or((n as usize - 1) % order.len()) % order.len();
                order.rotate_left(first);
                if preferred.is_none() {
                    let open = lock(&self.open).clone();
                    order.sort_by_key(|&i| open.get(i).copied().unwrap_or(0));
                }
            }
            let open = Arc::clone(&self.open);
            let recorded = (self.keep > 0).then(|| (Arc::clone(&self.recorded), self.keep));
            let shape = lock(&self.network)
                .as_ref()
                .map(|net| Shape::new(net, net.seed.wrapping_mul(1_000_003).wrapping_add(n)));
            tokio::spawn(async move {
                let mut server = None;
                for i in order {
                    let Some(target) = targets.get(i) else {
                        continue;
                    };
                    if let Ok(s) = TcpStream::connect(target).await {
                        server = Some((i, s));
                        break;
                    }
                }
                if let Some((i, server)) = server {
                    if let Some(k) = lock(&open).get_mut(i) {
                        *k += 1;
                    }
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    match shape {
                        None => relay(client, server, recorded).await,
                        Some(shape) => faulty_relay(client, server, recorded, shape).await,
                    }
                    if let Some(k) = lock(&open).get_mut(i) {
                        *k = k.saturating_sub(1);
                    }
                }
            });
        }
    }

    /// Network faults for the connections accepted from now on.
    pub(crate) fn set_network(&self, network: Option<Network>) {
        *lock(&self.network) = network;
    }

    /// Spreads new connections over these nodes.
    pub(crate) fn set_targets(&self, targets: Vec<SocketAddr>) {
        let mut open = lock(&self.open);
        if open.len() != targets.len() {
            *open = vec![0; targets.len()];
        }
        *lock(&self.targets) = targets;
    }

    /// A copy of everything recorded.
    pub(crate) fn recorded(&self) -> Vec<u8> {
        lock(&self.recorded).clone()
    }

    /// Searches everything recorded, and forgets it (runs that move more
    /// than the tap should hold scan as they go).
    pub(crate) fn drain_scan(&self, detector: &Detector) -> TapResult {
        let mut data = lock(&self.recorded);
        let mut r = TapResult {
            bytes: data.len() as u64,
            ..TapResult::default()
        };
        detector.scan("wire", 0, &data, 20, &mut r.hits, &mut r.matches);
        data.clear();
        data.shrink_to_fit();
        r
    }

    /// Searches everything recorded.
    pub(crate) fn scan(&self, detector: &Detector) -> TapResult {
        let data = lock(&self.recorded);
        let mut r = TapResult {
            bytes: data.len() as u64,
            ..TapResult::default()
        };
        detector.scan("wire", 0, &data, 20, &mut r.hits, &mut r.matches);
        r
    }
}

async fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    recorded: Option<(Arc<Mutex<Vec<u8>>>, usize)>,
) {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let up = async {
        let mut unmasker = Unmasker::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = buf.get(..n).unwrap_or_default();
            if let Some((recorded, keep)) = &recorded {
                let mut rec = lock(recorded);
                if rec.len() < *keep {
                    unmasker.feed(chunk, &mut rec);
                }
            }
            if sw.write_all(chunk).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

/// One connection's network faults.
struct Shape {
    delay: Duration,
    jitter: Duration,
    /// Bytes per second (0: unlimited).
    bandwidth: f64,
    /// When the connection is reset, if ever.
    reset_after: Option<Duration>,
    rng: rand::rngs::StdRng,
}

impl Shape {
    fn new(n: &Network, seed: u64) -> Shape {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let reset_after = (n.reset_mean_secs > 0.0).then(|| {
            let u = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            Duration::from_secs_f64(-u.ln() * n.reset_mean_secs)
        });
        Shape {
            delay: Duration::from_secs_f64(n.delay_ms / 1000.0),
            jitter: Duration::from_secs_f64(n.jitter_ms / 1000.0),
            bandwidth: n.bandwidth_kib_s * 1024.0,
            reset_after,
            rng,
        }
    }

    fn jitter(&mut self) -> Duration {
        if self.jitter.is_zero() {
            return Duration::ZERO;
        }
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        self.jitter.mul_f64(u)
    }
}

/// Copies `r` to `w` through a delay line: each chunk leaves at its arrival
/// time plus delay and jitter, no earlier than the previous chunk (bytes
/// stay in order), and no faster than the bandwidth. `tap` sees each chunk
/// as it arrives.
async fn shaped_copy<R, W>(
    mut r: R,
    mut w: W,
    delay: Duration,
    jitters: Vec<Duration>,
    bandwidth: f64,
    mut tap: impl FnMut(&[u8]),
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut last_due = Instant::now();
        let mut jitters = jitters.into_iter().cycle();
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = buf.get(..n).unwrap_or_default().to_vec();
            tap(&chunk);
            let mut due = Instant::now() + delay + jitters.next().unwrap_or_default();
            due = due.max(last_due);
            if bandwidth > 0.0 {
                due += Duration::from_secs_f64(n as f64 / bandwidth);
            }
            last_due = due;
            if tx.send((due, chunk)).is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(read, write);
}

/// The relay with network faults; a reset drops both connections with an
/// RST (linger 0) at the drawn time.
async fn faulty_relay(
    mut client: TcpStream,
    mut server: TcpStream,
    recorded: Option<(Arc<Mutex<Vec<u8>>>, usize)>,
    mut shape: Shape,
) {
    // Precomputed jitter draws (the copy loops are not Send-friendly with a
    // shared rng); each direction cycles through its own.
    let up_jitter: Vec<Duration> = (0..256).map(|_| shape.jitter()).collect();
    let down_jitter: Vec<Duration> = (0..256).map(|_| shape.jitter()).collect();
    let reset_after = shape.reset_after;
    {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let mut unmasker = Unmasker::default();
        let up = shaped_copy(cr, sw, shape.delay, up_jitter, shape.bandwidth, |chunk| {
            if let Some((recorded, keep)) = &recorded {
                let mut rec = lock(recorded);
                if rec.len() < *keep {
                    unmasker.feed(chunk, &mut rec);
                }
            }
        });
        let down = shaped_copy(sr, cw, shape.delay, down_jitter, shape.bandwidth, |_| {});
        let both = async { tokio::join!(up, down) };
        match reset_after {
            Some(after) => {
                tokio::select! {
                    _ = both => return,
                    _ = tokio::time::sleep(after) => {}
                }
            }
            None => {
                both.await;
                return;
            }
        }
    }
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
}

/// Streaming decoder of client-to-server WebSocket traffic: passes the HTTP
/// upgrade request through as is, then emits every frame's unmasked payload.
#[derive(Default)]
pub(crate) struct Unmasker {
    handshake_done: bool,
    pending: Vec<u8>,
    /// Current frame: mask key and payload bytes left.
    frame: Option<([u8; 4], u64, u64)>,
}

impl Unmasker {
    pub(crate) fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(data);
        if !self.handshake_done {
            match self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(end) => {
                    out.extend(self.pending.drain(..end + 4));
                    self.handshake_done = true;
                }
                None => return,
            }
        }
        loop {
            if let Some((mask, done, len)) = self.frame {
                let take = (len - done).min(self.pending.len() as u64) as usize;
                for (i, b) in self.pending.drain(..take).enumerate() {
                    let k = mask.get(((done as usize) + i) % 4).copied().unwrap_or(0);
                    out.push(b ^ k);
                }
                let done = done + take as u64;
                if done == len {
                    self.frame = None;
                } else {
                    self.frame = Some((mask, done, len));
                    return;
                }
            }
            // A frame header: 2 bytes, extended length, 4-byte mask (client frames).
            let Some(&b1) = self.pending.get(1) else {
                return;
            };
            let masked = b1 & 0x80 != 0;
            let (len, ext) = match b1 & 0x7f {
                126 => (None, 2usize),
                127 => (None, 8),
                n => (Some(u64::from(n)), 0),
            };
            let header = 2 + ext + if masked { 4 } else { 0 };
            if self.pending.len() < header {
                return;
            }
            let len = len.unwrap_or_else(|| {
                self.pending
                    .get(2..2 + ext)
                    .unwrap_or_default()
                    .iter()
                    .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
            });
            let mut mask = [0u8; 4];
            if masked {
                mask.copy_from_slice(self.pending.get(2 + ext..header).unwrap_or(&[0; 4]));
            }
            self.pending.drain(..header);
            if len > 0 {
                self.frame = Some((mask, 0, len));
            }
        }
    }
}

/// Searches every file below `dir` (database, WAL, shared memory, anything else).
pub(crate) fn scan_dir(dir: &Path, detector: &Detector) -> TapResult {
    let mut r = TapResult::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(data) = std::fs::read(&path) {
                r.bytes += data.len() as u64;
                let name = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                detector.scan(&name, 0, &data, 20, &mut r.hits, &mut r.matches);
            }
        }
    }
    r
}

/// Searches one file (the server log).
/// Searches named pieces of bytes (a table's cells, a log's new part, what
/// a bus carried), as one tap's result.
pub(crate) fn scan_parts<'a>(
    parts: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    detector: &Detector,
) -> TapResult {
    let mut r = TapResult::default();
    for (place, data) in parts {
        r.bytes += data.len() as u64;
        detector.scan(place, 0, data, 20, &mut r.hits, &mut r.matches);
    }
    r
}

pub(crate) fn scan_file(path: &Path, detector: &Detector) -> TapResult {
    let mut r = TapResult::default();
    if let Ok(data) = std::fs::read(path) {
        r.bytes = data.len() as u64;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        detector.scan(&name, 0, &data, 20, &mut r.hits, &mut r.matches);
    }
    r
}

/// Searches the readable and writable mappings of process `pid` with each
/// detector (one read of the memory); one result per detector.
pub(crate) fn scan_memory(pid: u32, detectors: &[&Detector]) -> Result<Vec<TapResult>> {
    use procfs::process::{MMPermissions, MMapPath};
    let process = crate::topology::process(pid).context("no such process")?;
    let maps = process.maps().context("maps")?;
    let mut mem = process.mem().context("mem")?;
    let mut results = vec![TapResult::default(); detectors.len()];
    for map in maps {
        if !map
            .perms
            .contains(MMPermissions::READ | MMPermissions::WRITE)
        {
            continue;
        }
        let name = match &map.pathname {
            MMapPath::Vvar | MMapPath::Vsyscall => continue,
            MMapPath::Path(p) => p.display().to_string(),
            MMapPath::Heap => "[heap]".into(),
            MMapPath::Stack => "[stack]".into(),
            MMapPath::TStack(tid) => format!("[stack:{tid}]"),
            MMapPath::Vdso => "[vdso]".into(),
            MMapPath::Anonymous => "[anon]".into(),
            MMapPath::Other(other) => other.clone(),
            _ => "[other]".into(),
        };
        let (start, end) = map.address;
        let mut region = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut region).is_err() {
            continue; // unmapped since we read the maps
        }
        for (r, detector) in results.iter_mut().zip(detectors) {
            r.bytes += region.len() as u64;
            detector.scan(
                &format!("memory {name}"),
                start,
                &region,
                20,
                &mut r.hits,
                &mut r.matches,
            );
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked_frame(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0x82];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn unmasks_frames_split_anywhere() {
        let mut stream = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let payloads: Vec<Vec<u8>> =
            vec![b"hello".to_vec(), vec![7u8; 300], vec![9u8; 70_000], vec![]];
        for (i, p) in payloads.iter().enumerate() {
            stream.extend(masked_frame(p, [i as u8 + 1, 0x5a, 0xa5, 0x3c]));
        }
        let expected: Vec<u8> = payloads.concat();
        for chunk in [1usize, 3, 7, 1000, stream.len()] {
            let mut u = Unmasker::default();
            let mut out = Vec::new();
            for c in stream.chunks(chunk) {
                u.feed(c, &mut out);
            }
            let body = out.split_off(out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4);
            assert_eq!(body, expected, "chunk size {chunk}");
        }
    }
}
