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
    online: HashMap<Address, (Ticket, mpsc::UnboundedSender<Push>)>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection for `device`, displacing an older one.
    pub(crate) fn register(&self, device: Address, tx: mpsc::UnboundedSender<Push>) -> Ticket {
        let mut inner = self.lock();
        inner.next += 1;
        let ticket = Ticket(inner.next);
        if let Some((_, old)) = inner.online.insert(device, (ticket, tx)) {
            let _ = old.send(Push::Replaced);
        }
        ticket
    }

    /// Unregisters, if `ticket` is still the device's registration.
    pub(crate) fn unregister(&self, device: &Address, ticket: Ticket) {
        let mut inner = self.lock();
        if inner.online.get(device).is_some_and(|(t, _)| *t == ticket) {
            inner.online.remove(device);
        }
    }

    /// Tells the device's connection, if any.
    pub(crate) fn notify(&self, device: &Address, push: Push) {
        if let Some((_, tx)) = self.lock().online.get(device) {
            let _ = tx.send(push);
        }
    }
}
