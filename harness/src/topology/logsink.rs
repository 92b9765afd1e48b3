//! Capture of an in-process server's logs: a process-wide tracing subscriber
//! at the most verbose level for the server's crate, writing to whichever
//! file the current run names.

use anyhow::{Context as _, Result, bail};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

static SINK: Mutex<Option<File>> = Mutex::new(None);
static INSTALLED: OnceLock<bool> = OnceLock::new();

struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match SINK.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(f) => f.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match SINK.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

/// Starts writing server logs (trace level) to `path`, or stops with `None`.
pub(crate) fn capture(path: Option<&Path>) -> Result<()> {
    let installed = *INSTALLED.get_or_init(|| {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("chatify_server=trace"))
            .with_writer(|| Sink)
            .with_ansi(false)
            .try_init()
            .is_ok()
    });
    if !installed {
        bail!("another log subscriber is installed; cannot capture server logs");
    }
    let file = match path {
        Some(p) => Some(File::create(p).with_context(|| p.display().to_string())?),
        None => None,
    };
    *SINK.lock().unwrap_or_else(|p| p.into_inner()) = file;
    Ok(())
}
