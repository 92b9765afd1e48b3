//! The malicious server against a group (docs/PROTOCOL.md §16): it relabels
//! a member's group message as another's, replays one, delivers one to a
//! member removed before it was sent, publishes a device of its own for a
//! member before a send, and pushes a membership change of its own making.
//! Each through the real server and clients; the checks are the suite's.

use anyhow::{Context as _, Result};
use chatify_core::group::roster::{Change, Member, Roster};
use chatify_core::group::{GROUP_MESSAGE_VERSION, GroupId};
use chatify_proto::content::GroupControl;
use chatify_proto::frame::Address;
use chatify_server::store::{NewEnvelope, Store, StoreError};

use super::{AdversaryStore, Attack, Bench, Observed, addr, fresh_id, lock};

/// The device the server makes for Carol.
fn ghost() -> Address {
    Address {
        user: "carol".into(),
        device: 2,
    }
}

impl AdversaryStore {
    /// The armed group attack on one envelope the server is asked to store.
    pub(super) fn group_enqueue(
        &self,
        attack: Attack,
        e: &NewEnvelope,
    ) -> Result<Option<u64>, StoreError> {
        let group_message = e.envelope.first() == Some(&GROUP_MESSAGE_VERSION);
        let mut s = lock(&self.state);
        if e.to == ghost() || (group_message && e.from.user == "alice") {
            s.captured.push(e.clone());
        }
        let alices = s
            .captured
            .iter()
            .rev()
            .find(|c| c.from.user == "alice" && c.to != ghost())
            .map(|c| c.envelope.clone());
        if !group_message || e.from.user != s.from || e.to.user != "bob" {
            drop(s);
            return self.inner.enqueue(e);
        }
        let k = s.seen;
        s.seen += 1;
        drop(s);
        let mut out = e.clone();
        match attack {
            // Relabelled as Alice's, under her key id and next iteration
            // (both in the clear in her last message): Bob holds that key,
            // so only the signature can tell.
            Attack::GroupForgedSender if k == 0 => {
                out.from = addr("alice");
                if let (Some(hers), Some(header)) = (alices, out.envelope.get_mut(17..25)) {
                    let mut next = [0u8; 8];
                    next.copy_from_slice(hers.get(17..25).unwrap_or(&[0; 8]));
                    let iteration = u32::from_be_bytes([next[4], next[5], next[6], next[7]]);
                    next[4..].copy_from_slice(&iteration.wrapping_add(1).to_be_bytes());
                    header.copy_from_slice(&next);
                }
            }
            Attack::GroupReplayed if k == 0 => {
                let stored = self.inner.enqueue(&out)?;
                out.message_id = fresh_id(&out.message_id);
                self.inner.enqueue(&out)?;
                return Ok(stored);
            }
            // Every message after the first (sent once Carol was removed)
            // is also stored for her.
            Attack::GroupToRemovedMember if k >= 1 => {
                let mut copy = out.clone();
                copy.to = addr("carol");
                self.inner.enqueue(&copy)?;
            }
            _ => {}
        }
        self.inner.enqueue(&out)
    }

    /// Publishes keys of the server's own as a second device of Carol's.
    fn publish_ghost(&self) -> Result<()> {
        let keys = lock(&self.mallory).publish_keys(5, &mut rand::rng());
        self.inner.publish_keys(
            &ghost(),
            &keys.identity,
            &keys.signed_prekey,
            &keys.one_time_prekeys,
        )?;
        Ok(())
    }

    /// Envelopes addressed to the server's device for Carol.
    fn sent_to_ghost(&self) -> usize {
        lock(&self.state)
            .captured
            .iter()
            .filter(|e| e.to == ghost())
            .count()
    }

    /// The server adds Erin: an Add signed by a key of its own, as the next
    /// change of a roster it made up for the group, pushed to Bob over a
    /// session from a device of Alice's that it made.
    fn forge_group_change(&self, group: GroupId) -> Result<()> {
        let change = {
            let mallory = lock(&self.mallory);
            let (roster, _) = Roster::create(group, "alice", &mallory, Vec::new());
            let erin = Member::of("erin", &mallory, false);
            roster
                .propose("alice", &mallory, Change::Add { member: erin })
                .to_bytes()
        };
        let claimed = Address {
            user: "alice".into(),
            device: 2,
        };
        self.forge_contents(&claimed, "bob", 1, |_, message_id| chatify_proto::Content {
            group: Some(GroupControl {
                group,
                changes: vec![change.as_slice().into()],
                sender_key: None,
            }),
            ..chatify_proto::Content::message(message_id, 0, 0, 0, b"")
        })
    }
}

impl Bench {
    /// Alice makes a group of Alice, Bob and Carol; then the attack.
    pub(super) async fn group_attack(
        &mut self,
        attack: Attack,
        target: &str,
        o: &mut Observed,
    ) -> Result<()> {
        let group = self
            .user("alice")?
            .client
            .create_group(&["bob", "carol"])
            .await?;
        self.drain("bob", o).await?;
        self.drain("carol", o).await?;
        match attack {
            Attack::GroupForgedSender => {
                self.send_group("alice", group, "alice-1", o).await?;
                self.send_group("carol", group, target, o).await?;
                self.drain("bob", o).await?;
            }
            Attack::GroupReplayed => {
                self.send_group("alice", group, target, o).await?;
                self.drain("bob", o).await?;
                // The genuine copy is shown once; the replay must not be.
                if let Some(i) = o.shown.iter().position(|s| s.2 == target) {
                    o.shown.remove(i);
                }
            }
            Attack::GroupToRemovedMember => {
                self.send_group("alice", group, "before", o).await?;
                self.drain("carol", o).await?;
                let alice = self.user("alice")?;
                alice.client.remove_from_group(&group, "carol").await?;
                self.drain("carol", o).await?;
                self.drain("bob", o).await?;
                self.send_group("alice", group, target, o).await?;
                self.drain("bob", o).await?;
                self.push_injected("carol", o).await?;
            }
            Attack::GroupGhostDevice => {
                self.store.publish_ghost()?;
                self.send_group("alice", group, target, o).await?;
                self.drain("bob", o).await?;
                self.drain("carol", o).await?;
                o.left_sender = self.store.sent_to_ghost();
            }
            _ => {
                self.store.forge_group_change(group)?;
                self.push_injected("bob", o).await?;
                let known = ["alice", "bob", "carol"];
                for g in self.user("bob")?.client.groups()? {
                    o.members_added.extend(
                        g.members
                            .into_iter()
                            .map(|(u, _)| u)
                            .filter(|u| !known.contains(&u.as_str())),
                    );
                }
            }
        }
        Ok(())
    }

    /// `from` sends `text` to the group; every other current member is
    /// recorded as a genuine recipient.
    async fn send_group(
        &mut self,
        from: &str,
        group: GroupId,
        text: &str,
        o: &mut Observed,
    ) -> Result<()> {
        let u = self.user(from)?;
        let members: Vec<String> = u
            .client
            .groups()?
            .into_iter()
            .find(|g| g.id == group)
            .context("no such group")?
            .members
            .into_iter()
            .map(|(m, _)| m)
            .filter(|m| m != from)
            .collect();
        match u.client.send_group(&group, text.as_bytes()).await {
            Ok(receipt) => {
                o.sent.insert(receipt.message_id, text.to_owned());
            }
            Err(e) => o.send_errors.push(e.to_string()),
        }
        for to in members {
            self.genuine.push((from.into(), to, text.into()));
        }
        Ok(())
    }
}
