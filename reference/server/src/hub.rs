//! Who is online: one push channel per connected device.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chatify_proto::frame::{Address, Deliver};
use tokio::sync::mpsc;

use crate::store::NewEnvelope;

/// Most envelopes that wait in one connection's channel: past them (a
/// recipient slower than its senders), the hub says [`Push::Mail`] instead
/// and the connection reads the rest from the store, so a slow reader
/// holds no more than this many envelopes in the node's memory.
pub(crate) const MAX_QUEUED_DELIVERIES: usize = 64;

/// What the hub tells a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Push {
    /// New envelopes are waiting in the device's mailbox.
    Mail,
    /// An envelope to push without reading it back. The second field says
    /// where it goes in the mailbox when it did not come in commit order
    /// (several nodes store): the envelope of the device's stored before it
    /// ([`crate::store::Stored::prev`]). The connection pushes it only if it
    /// has pushed that one, and otherwise reads its mailbox on from its
    /// cursor. `None`: announced by the store in commit order (see
    /// [`Hub::deliver`]).
    Deliver(Arc<Deliver>, Option<u64>),
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
    online: HashMap<Address, (Ticket, u64, Channel)>,
}

/// A connection's push channel and how many envelopes wait in it.
#[derive(Debug, Clone)]
pub(crate) struct Channel {
    pub(crate) tx: mpsc::UnboundedSender<Push>,
    /// [`Push::Deliver`]s sent and not yet taken by the connection (it
    /// counts them down as it receives them).
    pub(crate) queued: Arc<AtomicUsize>,
}

impl Channel {
    fn send(&self, push: Push) {
        let _ = self.tx.send(push);
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection for `device`, displacing an older one.
    pub(crate) fn register(&self, device: Address, at_ms: u64, tx: Channel) -> Ticket {
        let mut inner = self.lock();
        inner.next += 1;
        let ticket = Ticket(inner.next);
        if let Some((_, _, old)) = inner.online.insert(device, (ticket, at_ms, tx)) {
            old.send(Push::Replaced);
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
                tx.send(push);
                true
            }
            None => false,
        }
    }

    /// Tells every connection here.
    pub(crate) fn notify_all(&self, push: &Push) {
        for (_, _, tx) in self.lock().online.values() {
            tx.send(push.clone());
        }
    }

    /// Closes the device's connection here if it registered before `at_ms`
    /// (the device authenticated again on another node since).
    pub(crate) fn replace_older(&self, device: &Address, at_ms: u64) {
        if let Some((_, since, tx)) = self.lock().online.get(device)
            && *since < at_ms
        {
            tx.send(Push::Replaced);
        }
    }

    /// Hands an envelope this node just committed (sequence number `seq`)
    /// to its recipient's connection here, if it has one. Called by the
    /// store's commit listener in commit order, so a connection receives
    /// them in sequence order; past [`MAX_QUEUED_DELIVERIES`] waiting, a
    /// [`Push::Mail`] goes instead. The envelope is copied after the hub's
    /// lock is let go (other connections register and look up meanwhile);
    /// the order holds because the store's listener runs one commit at a
    /// time.
    pub(crate) fn deliver(&self, seq: u64, e: &NewEnvelope) {
        self.hand(&e.to, || {
            Push::Deliver(
                Arc::new(Deliver {
                    seq,
                    from: e.from.clone(),
                    conversation: e.conversation,
                    message_id: e.message_id,
                    sent_at_ms: e.sent_at_ms,
                    envelope: e.envelope.clone(),
                }),
                None,
            )
        });
    }

    /// Hands an envelope that did not come in commit order (stored by this
    /// node or another while several nodes store) to `to`'s connection
    /// here, if it has one, with the sequence number of the envelope stored
    /// for `to` before it; returns whether it had one.
    pub(crate) fn deliver_after(&self, to: &Address, d: Arc<Deliver>, prev: u64) -> bool {
        self.hand(to, move || Push::Deliver(d, Some(prev)))
    }

    /// Sends the push `make` builds (outside the hub's lock) to `to`'s
    /// connection here, or [`Push::Mail`] past [`MAX_QUEUED_DELIVERIES`]
    /// waiting; returns whether `to` has a connection here.
    fn hand(&self, to: &Address, make: impl FnOnce() -> Push) -> bool {
        let Some(channel) = self.lock().online.get(to).map(|(_, _, c)| c.clone()) else {
            return false;
        };
        if channel.queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED_DELIVERIES {
            channel.queued.fetch_sub(1, Ordering::AcqRel);
            channel.send(Push::Mail);
        } else {
            channel.send(make());
        }
        true
    }
}
