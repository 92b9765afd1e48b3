//! A TCP relay that can cut its link: between a server node and PostgreSQL,
//! so that one node loses its database for a while, as a partition or a
//! failed link would make it.
//!
//! ```text
//!  node ──▶ relay (127.0.0.1:port) ──▶ PostgreSQL
//!             cut(d): every open connection reset (RST both ways),
//!                     new ones reset on arrival, for d
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct CutRelay {
    pub(crate) addr: SocketAddr,
    cut_until: Arc<Mutex<Option<Instant>>>,
    /// Bumped by each cut: open connections end when it changes.
    epoch: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CutRelay {
    /// A relay on a loopback port to `target`.
    pub(crate) async fn start(target: SocketAddr) -> std::io::Result<CutRelay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let (epoch, _) = watch::channel(0u64);
        let relay = CutRelay {
            addr: listener.local_addr()?,
            cut_until: Arc::default(),
            epoch,
        };
        let r = relay.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if r.is_cut() {
                    let _ = client.set_zero_linger();
                    drop(client);
                    continue;
                }
                let mut changed = r.epoch.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = changed.changed() => {
                            let _ = client.set_zero_linger();
                            let _ = server.set_zero_linger();
                        }
                    }
                });
            }
        });
        Ok(relay)
    }

    fn is_cut(&self) -> bool {
        lock(&self.cut_until).is_some_and(|until| Instant::now() < until)
    }

    /// Cuts the link for `duration`: resets every open connection, and
    /// every new one until then.
    pub(crate) fn cut(&self, duration: Duration) {
        *lock(&self.cut_until) = Some(Instant::now() + duration);
        self.epoch.send_modify(|e| *e += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes pass; a cut resets the open connection and refuses new ones
    /// until it ends; then connections pass again.
    #[tokio::test]
    async fn a_cut_resets_and_refuses_until_it_ends() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let relay = CutRelay::start(target).await.unwrap();
        let round_trip = |addr| async move {
            let mut c = TcpStream::connect(addr).await.ok()?;
            c.write_all(b"ping").await.ok()?;
            let mut buf = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut buf))
                .await
                .ok()?
                .ok()?;
            Some((c, buf))
        };
        let (mut open, buf) = round_trip(relay.addr).await.unwrap();
        assert_eq!(&buf, b"ping");
        relay.cut(Duration::from_millis(300));
        let mut buf = [0u8; 4];
        let after_cut = tokio::time::timeout(Duration::from_secs(2), open.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(after_cut, Ok(0) | Err(_)), "{after_cut:?}");
        assert!(round_trip(relay.addr).await.is_none(), "refused while cut");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(round_trip(relay.addr).await.is_some(), "passes again");
    }
}
