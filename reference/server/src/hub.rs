//! Who is online: one push channel per connected device.

use std::collections::HashMap;
use std::sync::Mutex;

use chatify_proto::frame::Address;
use tokio::sync::mpsc;

/// What the hub tells a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Push {
    /// New envelopes are waiting in the device's mailbox.
    Mail,
    /// The device's one-time prekey pool is low.
    PrekeysLow(u32),
    /// Another connection authenticated as this device: close.
    Replaced,
}

/// A registration, so that a connection can unregister only itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

#[derive(Debug, Default)]
pub(crate) struct Hub {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// Each device's connection: its ticket, when it registered (ms since
    /// the Unix epoch) and its channel.
    online: HashMap<Address, (Ticket, u64, mpsc::UnboundedSender<Push>)>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection for `device`, displacing an older one.
    pub(crate) fn register(
        &self,
        device: Address,
        at_ms: u64,
        tx: mpsc::UnboundedSender<Push>,
    ) -> Ticket {
        let mut inner = self.lock();
        inner.next += 1;
        let ticket = Ticket(inner.next);
        if let Some((_, _, old)) = inner.online.insert(device, (ticket, at_ms, tx)) {
            let _ = old.send(Push::Replaced);
        }
        ticket
    }

    /// Unregisters, if `ticket` is still the device's registration.
    pub(crate) fn unregister(&self, device: &Address, ticket: Ticket) {
        let mut inner = self.lock();
        if inner
            .online
            .get(device)
            .is_some_and(|(t, _, _)| *t == ticket)
        {
            inner.online.remove(device);
        }
    }

    /// Tells the device's connection, if it has one here; returns whether
    /// it had.
    pub(crate) fn notify(&self, device: &Address, push: Push) -> bool {
        match self.lock().online.get(device) {
            Some((_, _, tx)) => {
                let _ = tx.send(push);
                true
            }
            None => false,
        }
    }

    /// Tells every connection here.
    pub(crate) fn notify_all(&self, push: &Push) {
        for (_, _, tx) in self.lock().online.values() {
            let _ = tx.send(push.clone());
        }
    }

    /// Closes the device's connection here if it registered before `at_ms`
    /// (the device authenticated again on another node since).
    pub(crate) fn replace_older(&self, device: &Address, at_ms: u64) {
        if let Some((_, since, tx)) = self.lock().online.get(device)
            && *since < at_ms
        {
            let _ = tx.send(Push::Replaced);
        }
    }
}
