//! Group chat (PROTOCOL §16): membership decided by members, messages
//! encrypted once under each sender's key and fanned out by the server.
//!
//! ```text
//!  create/add/remove ─ signed change (§16.1) ─┐
//!                                              ├─ pairwise session ─▶ each member device
//!  first send after a change: sender key ─────┘   (GroupControl, §16.2)
//!  send_group: Content ─ SenderKey::encrypt ─▶ SendGroup{devices} ─▶ server
//!              stores one copy per device ─▶ Deliver ─▶ ReceiverKey::decrypt
//! ```
//!
//! Who is in a group is what the chain of signed changes says, checked by
//! this client: a device gets this device's sender key only if its user is
//! a member and its session presents the identity the group knows the
//! member by; a message is read only if it opens under the key that
//! device gave over its own session. A removal makes every remaining
//! member start a new key, given only to those who remain.
//!
//! The groups are kept in `groups.cbor`, sealed like the state. A sender
//! key is saved past each message before the message leaves, so a crash
//! never reuses a message key; a receiver key is saved before the message
//! it opened is acknowledged.

use std::collections::{BTreeMap, BTreeSet};

use chatify_core::SecretBuf;
use chatify_core::group::roster::{Change, Member, Roster, RosterError, SignedChange};
use chatify_core::group::{
    GROUP_MESSAGE_VERSION, GroupHeader, GroupId, ReceiverKey, SenderKey, SenderKeyDistribution,
};
use chatify_proto::content::{GroupControl, MAX_BODY_LEN};
use chatify_proto::frame::{self, Address, Deliver};
use chatify_proto::limits::MAX_GROUP_DEVICES;
use chatify_proto::{Body, Content};
use minicbor::bytes::ByteVec;
use minicbor::{Decode, Encode};
use rand::Rng;
use zeroize::Zeroize;

use super::{Client, Event, SendReceipt, now_ms};
use crate::ClientError;
use crate::connection::expect;
use crate::state::StoredMessage;

/// Keys kept per sender device: its current one and the one before (whose
/// last messages may still be on their way after a rotation).
const KEYS_PER_DEVICE: usize = 2;

/// A group as this device holds it.
pub(crate) struct Group {
    /// The signed changes from the creation on, as received (encoded).
    changes: Vec<Vec<u8>>,
    roster: Roster,
    /// This device's sending chain; `None` until the first send after the
    /// group was made or a member left.
    sender: Option<SenderKey>,
    /// Devices the current sending chain was given to.
    sent_to: BTreeSet<Address>,
    /// Other devices' chains, newest last.
    receivers: BTreeMap<Address, Vec<ReceiverKey>>,
    /// This device's next sequence number in the group.
    send_seq: u64,
    /// This device's user was removed (or left): nothing more is read or sent.
    left: bool,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("epoch", &self.roster.epoch())
            .field("sender", &self.sender)
            .field("receivers", &self.receivers.len())
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

/// What [`Client::groups`] lists of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group's id (also the conversation its messages are in).
    pub id: GroupId,
    /// The members, by user name, and whether each is an admin.
    pub members: Vec<(String, bool)>,
    /// How many changes were made since the creation.
    pub epoch: u64,
    /// This user is no longer a member.
    pub left: bool,
}

/// One change to a group, as [`Event::GroupChanged`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupChange {
    /// `by` made the group with these members.
    Created {
        /// Who.
        by: String,
        /// The members, the creator first.
        members: Vec<String>,
    },
    /// `by` added `user`.
    Added {
        /// Who.
        by: String,
        /// The new member.
        user: String,
    },
    /// `by` removed `user` (`by == user`: the member left).
    Removed {
        /// Who.
        by: String,
        /// The member.
        user: String,
    },
    /// `by` made `user` an admin.
    Promoted {
        /// Who.
        by: String,
        /// The member.
        user: String,
    },
}

impl std::fmt::Display for GroupChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupChange::Created { by, members } => {
                write!(f, "{by} created the group with {}", members.join(", "))
            }
            GroupChange::Added { by, user } => write!(f, "{by} added {user}"),
            GroupChange::Removed { by, user } if by == user => write!(f, "{user} left"),
            GroupChange::Removed { by, user } => write!(f, "{by} removed {user}"),
            GroupChange::Promoted { by, user } => write!(f, "{by} made {user} an admin"),
        }
    }
}

fn describe(c: &SignedChange) -> GroupChange {
    let by = c.by().to_owned();
    match c.change() {
        Change::Create { members } => GroupChange::Created {
            by,
            members: members.iter().map(|m| m.user.clone()).collect(),
        },
        Change::Add { member } => GroupChange::Added {
            by,
            user: member.user.clone(),
        },
        Change::Remove { user } => GroupChange::Removed {
            by,
            user: user.clone(),
        },
        Change::Promote { user } => GroupChange::Promoted {
            by,
            user: user.clone(),
        },
    }
}

/// `groups.cbor`'s plaintext.
#[derive(Default, Encode, Decode)]
struct Book {
    #[n(0)]
    groups: Vec<Record>,
}

#[derive(Encode, Decode)]
struct Record {
    #[n(0)]
    changes: Vec<ByteVec>,
    #[n(1)]
    sender: Option<ByteVec>,
    #[n(2)]
    sent_to: Vec<Address>,
    #[n(3)]
    receivers: Vec<KeyRecord>,
    #[n(4)]
    send_seq: u64,
    #[n(5)]
    left: bool,
}

#[derive(Encode, Decode)]
struct KeyRecord {
    #[n(0)]
    from: Address,
    #[n(1)]
    key: ByteVec,
}

impl Drop for Record {
    fn drop(&mut self) {
        if let Some(s) = &mut self.sender {
            s.zeroize();
        }
        for r in &mut self.receivers {
            r.key.zeroize();
        }
    }
}

fn damaged(what: &str) -> ClientError {
    ClientError::State(format!("the groups' record is damaged: {what}"))
}

/// The roster a chain of changes gives, checked as it was when received.
fn replay(changes: &[Vec<u8>]) -> Result<Roster, ClientError> {
    let (first, rest) = changes
        .split_first()
        .ok_or_else(|| damaged("no creation"))?;
    let create = SignedChange::from_bytes(first).map_err(|e| damaged(&e.to_string()))?;
    let Change::Create { members } = create.change() else {
        return Err(damaged("no creation"));
    };
    let creator = members.first().ok_or_else(|| damaged("no members"))?;
    let mut roster = Roster::join(&create, create.by(), &creator.identity)
        .map_err(|e| damaged(&e.to_string()))?;
    for c in rest {
        let c = SignedChange::from_bytes(c).map_err(|e| damaged(&e.to_string()))?;
        roster.apply(&c).map_err(|e| damaged(&e.to_string()))?;
    }
    Ok(roster)
}

impl Group {
    fn new(changes: Vec<Vec<u8>>, roster: Roster) -> Group {
        Group {
            changes,
            roster,
            sender: None,
            sent_to: BTreeSet::new(),
            receivers: BTreeMap::new(),
            send_seq: 0,
            left: false,
        }
    }

    fn to_record(&self) -> Record {
        Record {
            changes: self.changes.iter().cloned().map(ByteVec::from).collect(),
            sender: self
                .sender
                .as_ref()
                .map(|s| ByteVec::from(s.to_state().to_vec())),
            sent_to: self.sent_to.iter().cloned().collect(),
            receivers: self
                .receivers
                .iter()
                .flat_map(|(from, keys)| {
                    keys.iter().map(|k| KeyRecord {
                        from: from.clone(),
                        key: ByteVec::from(k.to_state().to_vec()),
                    })
                })
                .collect(),
            send_seq: self.send_seq,
            left: self.left,
        }
    }

    fn from_record(r: &Record) -> Result<Group, ClientError> {
        let changes: Vec<Vec<u8>> = r.changes.iter().map(|c| c.to_vec()).collect();
        let roster = replay(&changes)?;
        let mut g = Group::new(changes, roster);
        g.sender = match &r.sender {
            Some(s) => Some(SenderKey::from_state(s).map_err(|e| damaged(&e.to_string()))?),
            None => None,
        };
        g.sent_to = r.sent_to.iter().cloned().collect();
        for k in &r.receivers {
            let key = ReceiverKey::from_state(&k.key).map_err(|e| damaged(&e.to_string()))?;
            g.receivers.entry(k.from.clone()).or_default().push(key);
        }
        g.send_seq = r.send_seq;
        g.left = r.left;
        Ok(g)
    }

    /// Applies a change this client checked (or made): the roster moves
    /// on, and a removal takes effect on the keys.
    fn apply(&mut self, me: &str, bytes: Vec<u8>, c: &SignedChange) -> Result<(), RosterError> {
        self.roster.apply(c)?;
        self.changes.push(bytes);
        if let Change::Remove { user } = c.change() {
            // Whoever stays starts a new chain, given only to those who
            // remain: the removed member reads nothing sent after.
            self.sender = None;
            self.sent_to.clear();
            if user == me {
                self.left = true;
                self.receivers.clear();
            } else {
                self.receivers.retain(|from, _| from.user != *user);
            }
        }
        Ok(())
    }

    /// Keeps `from`'s key, unless it holds one with that id already: a
    /// replayed key would wind its chain back and open old messages again.
    fn take_key(&mut self, from: &Address, key: ReceiverKey) -> bool {
        let keys = self.receivers.entry(from.clone()).or_default();
        if keys.iter().any(|k| k.key_id() == key.key_id()) {
            return false;
        }
        keys.push(key);
        if keys.len() > KEYS_PER_DEVICE {
            keys.remove(0);
        }
        true
    }

    fn info(&self) -> GroupInfo {
        GroupInfo {
            id: self.roster.group(),
            members: self
                .roster
                .members()
                .map(|m| (m.user.clone(), m.admin))
                .collect(),
            epoch: self.roster.epoch(),
            left: self.left,
        }
    }
}

impl Client {
    /// Loads the groups from the home on first use.
    fn groups_loaded(&mut self) -> Result<&mut BTreeMap<GroupId, Group>, ClientError> {
        if self.groups.is_none() {
            let bytes = self.file.groups()?;
            let mut groups = BTreeMap::new();
            if !bytes.is_empty() {
                let book: Book = minicbor::decode(&bytes).map_err(|_| damaged("undecodable"))?;
                for r in &book.groups {
                    let g = Group::from_record(r)?;
                    groups.insert(g.roster.group(), g);
                }
            }
            self.groups = Some(groups);
        }
        self.groups
            .as_mut()
            .ok_or_else(|| ClientError::State("groups not loaded".into()))
    }

    /// Saves the groups durably (on a blocking thread: it ends with fsync).
    pub(crate) async fn save_groups(&mut self) -> Result<(), ClientError> {
        let Some(groups) = &self.groups else {
            return Ok(());
        };
        let book = Book {
            groups: groups.values().map(Group::to_record).collect(),
        };
        let mut bytes = SecretBuf::default();
        minicbor::encode(&book, &mut bytes)
            .map_err(|e| ClientError::State(format!("encoding the groups: {e}")))?;
        let file = self.file.clone();
        let bytes = bytes.into_inner();
        tokio::task::spawn_blocking(move || file.save_groups(&bytes)).await??;
        self.groups_dirty = false;
        Ok(())
    }

    /// The groups this device is in (or was, until it was removed).
    pub fn groups(&mut self) -> Result<Vec<GroupInfo>, ClientError> {
        Ok(self.groups_loaded()?.values().map(Group::info).collect())
    }

    /// The group whose id (in hex) starts with `prefix`, if exactly one does.
    pub fn find_group(&mut self, prefix: &str) -> Result<GroupId, ClientError> {
        let prefix = prefix.to_ascii_lowercase();
        let found: Vec<GroupId> = self
            .groups_loaded()?
            .keys()
            .filter(|id| chatify_proto::hex::lower(&id[..]).starts_with(&prefix))
            .copied()
            .collect();
        match found[..] {
            [id] => Ok(id),
            [] => Err(ClientError::Usage(format!(
                "no group's id starts with {prefix}"
            ))),
            _ => Err(ClientError::Usage(format!(
                "more than one group's id starts with {prefix}; give more of it"
            ))),
        }
    }

    fn group_mut(&mut self, id: &GroupId) -> Result<&mut Group, ClientError> {
        self.groups_loaded()?
            .get_mut(id)
            .ok_or_else(|| ClientError::Usage("no such group on this device".into()))
    }

    /// `user` as a member: known by the identity this client pinned for
    /// them, which a session with one of their devices gives (set up now
    /// if there is none). Refused while their identity change is not
    /// confirmed.
    async fn member(&mut self, user: &str, admin: bool) -> Result<Member, ClientError> {
        if self.blocked(user) {
            return Err(ClientError::IdentityChanged {
                peer: user.to_owned(),
            });
        }
        if !self.state.pins.contains_key(user) {
            for to in self.targets(user, None).await? {
                if self.state.sessions.get(&to).is_none_or(Vec::is_empty) {
                    self.set_up_session(&to).await?;
                }
            }
        }
        let pin =
            self.state.pins.get(user).ok_or_else(|| {
                ClientError::Usage(format!("no device of {user} has published keys"))
            })?;
        Ok(Member {
            user: user.to_owned(),
            identity: pin.identity.signing_key,
            admin,
        })
    }

    /// Makes a group of this user and `members` (user names); returns its
    /// id. Each member's devices are told (over their sessions) and get
    /// this device's key with its first message.
    pub async fn create_group(&mut self, members: &[&str]) -> Result<GroupId, ClientError> {
        let mut others = Vec::new();
        for user in members {
            if *user != self.state.user && !others.iter().any(|m: &Member| m.user == *user) {
                others.push(self.member(user, false).await?);
            }
        }
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let user = self.state.user.clone();
        let (roster, create) = Roster::create(id, &user, &self.state.device, others);
        let bytes = create.to_bytes();
        self.groups_loaded()?
            .insert(id, Group::new(vec![bytes.clone()], roster));
        self.save_groups().await?;
        self.tell_members(&id, &[bytes], None).await?;
        Ok(id)
    }

    /// Adds `user` to the group (this user must be an admin of it). The
    /// new member gets the whole chain of changes; the others the change.
    pub async fn add_to_group(&mut self, id: &GroupId, user: &str) -> Result<(), ClientError> {
        let member = self.member(user, false).await?;
        let change = self.propose(id, Change::Add { member }).await?;
        let chain = self.group_mut(id)?.changes.clone();
        for to in self.member_devices(id, Some(user)).await? {
            self.send_group_control(&to, *id, &chain, None).await?;
        }
        self.tell_members(id, &[change], Some(user)).await
    }

    /// Removes `user` from the group (an admin may remove anyone; anyone
    /// may remove themselves: [`Client::leave_group`]). Every remaining
    /// member starts a new key on its next message.
    pub async fn remove_from_group(&mut self, id: &GroupId, user: &str) -> Result<(), ClientError> {
        let removed: Vec<Address> = self.member_devices(id, Some(user)).await?;
        let change = self
            .propose(
                id,
                Change::Remove {
                    user: user.to_owned(),
                },
            )
            .await?;
        // The removed member is told too: its client stops, and shows why.
        for to in removed {
            self.send_group_control(&to, *id, std::slice::from_ref(&change), None)
                .await?;
        }
        self.tell_members(id, &[change], None).await
    }

    /// Leaves the group.
    pub async fn leave_group(&mut self, id: &GroupId) -> Result<(), ClientError> {
        let me = self.state.user.clone();
        self.remove_from_group(id, &me).await
    }

    /// Signs `change` as the group's next, applies it here and saves.
    async fn propose(&mut self, id: &GroupId, change: Change) -> Result<Vec<u8>, ClientError> {
        let me = self.state.user.clone();
        let signed = {
            let device = &self.state.device;
            let groups = self
                .groups
                .as_ref()
                .ok_or_else(|| ClientError::State("groups not loaded".into()))?;
            let g = groups
                .get(id)
                .ok_or_else(|| ClientError::Usage("no such group on this device".into()))?;
            if g.left {
                return Err(ClientError::Usage(
                    "this user is no longer in the group".into(),
                ));
            }
            g.roster.propose(&me, device, change)
        };
        let bytes = signed.to_bytes();
        self.group_mut(id)?
            .apply(&me, bytes.clone(), &signed)
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        self.save_groups().await?;
        Ok(bytes)
    }

    /// Sends `changes` to every device of every member but `except`'s.
    async fn tell_members(
        &mut self,
        id: &GroupId,
        changes: &[Vec<u8>],
        except: Option<&str>,
    ) -> Result<(), ClientError> {
        for to in self.member_devices(id, None).await? {
            if Some(to.user.as_str()) != except {
                self.send_group_control(&to, *id, changes, None).await?;
            }
        }
        Ok(())
    }

    /// The devices of the group's members (of `only`, if given), other
    /// than this one, whose sessions present the identity the group knows
    /// the member by. A device presenting another identity (one the server
    /// made, or a reinstall not confirmed) is left out.
    async fn member_devices(
        &mut self,
        id: &GroupId,
        only: Option<&str>,
    ) -> Result<Vec<Address>, ClientError> {
        let members: Vec<Member> = self
            .group_mut(id)?
            .roster
            .members()
            .filter(|m| only.is_none_or(|u| u == m.user))
            .cloned()
            .collect();
        let me = self.state.address();
        let mut out = Vec::new();
        for m in members {
            for to in self.targets(&m.user, None).await? {
                if to == me {
                    continue;
                }
                if self.state.sessions.get(&to).is_none_or(Vec::is_empty) {
                    match self.set_up_session(&to).await {
                        Ok(()) => {}
                        Err(ClientError::IdentityChanged { .. }) => continue,
                        Err(ClientError::Server { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
                let presented = self
                    .state
                    .sessions
                    .get(&to)
                    .and_then(|s| s.first())
                    .map(|s| s.remote_identity().signing_key);
                if presented == Some(m.identity) {
                    out.push(to);
                }
            }
        }
        Ok(out)
    }

    /// Sends a group control to `to` over its pairwise session.
    async fn send_group_control(
        &mut self,
        to: &Address,
        group: GroupId,
        changes: &[Vec<u8>],
        sender_key: Option<&[u8]>,
    ) -> Result<(), ClientError> {
        let control = GroupControl {
            group,
            changes: changes.iter().map(|c| c.as_slice().into()).collect(),
            sender_key,
        };
        self.send_control_content(to, |empty| Content {
            group: Some(control),
            ..empty
        })
        .await
    }

    /// Encrypts `text` once under this device's key for the group and has
    /// the server store a copy for each member device. A device that has
    /// not had this device's current key gets it first, over its session.
    pub async fn send_group(
        &mut self,
        id: &GroupId,
        text: &[u8],
    ) -> Result<SendReceipt, ClientError> {
        if text.len() > MAX_BODY_LEN {
            return Err(chatify_core::Error::PlaintextTooLong(text.len()).into());
        }
        if self.group_mut(id)?.left {
            return Err(ClientError::Usage(
                "this user is no longer in the group".into(),
            ));
        }
        let devices = self.member_devices(id, None).await?;
        if devices.len() > MAX_GROUP_DEVICES {
            return Err(ClientError::Usage(format!(
                "the group has {} devices; at most {MAX_GROUP_DEVICES} can be sent to",
                devices.len()
            )));
        }
        if devices.is_empty() {
            return Err(ClientError::Usage(
                "no other member has a device this group can be sent to".into(),
            ));
        }
        let g = self.group_mut(id)?;
        if g.sender.is_none() {
            let key_id = rand::rng().next_u32();
            g.sender = Some(SenderKey::generate(*id, key_id, &mut rand::rng()));
            g.sent_to.clear();
        }
        let due: Vec<Address> = devices
            .iter()
            .filter(|d| !g.sent_to.contains(*d))
            .cloned()
            .collect();
        if !due.is_empty() {
            let distribution = g
                .sender
                .as_ref()
                .map(|s| s.distribution().to_bytes())
                .ok_or_else(|| ClientError::State("sender key vanished".into()))?;
            // Saved first: a key given out is a key this device keeps.
            self.save_groups().await?;
            for to in &due {
                self.send_group_control(to, *id, &[], Some(&distribution))
                    .await?;
                self.group_mut(id)?.sent_to.insert(to.clone());
            }
        }
        let mut message_id = [0u8; 16];
        rand::rng().fill_bytes(&mut message_id);
        let g = self.group_mut(id)?;
        let seq = g.send_seq;
        let content = Content::message(message_id, seq, 0, now_ms(), text);
        let mut plaintext = SecretBuf::with_capacity(content.encoded_len_max());
        content
            .encode(&mut plaintext)
            .map_err(|e| ClientError::State(format!("encoding the message: {e}")))?;
        let sender = g
            .sender
            .as_mut()
            .ok_or_else(|| ClientError::State("sender key vanished".into()))?;
        let started = std::time::Instant::now();
        let envelope = sender.encrypt(plaintext.as_slice())?;
        g.send_seq += 1;
        self.timings.encrypt = Some(started.elapsed());
        // The chain and the sequence move on durably before the message
        // leaves: no key and no number is used twice.
        self.save_groups().await?;
        let reply = self
            .conn
            .request(frame::SendGroup {
                to: devices.clone(),
                conversation: *id,
                message_id,
                envelope,
            })
            .await?;
        let ok = expect(reply, |b| match b {
            Body::SendOk(ok) => Some(ok),
            _ => None,
        })?;
        Ok(SendReceipt {
            seq: ok.seq,
            message_id,
            devices: devices.len() as u32,
        })
    }

    /// A group message (PROTOCOL §16.3): opened with the key its sender
    /// device gave this device, and judged by its sequence number as a
    /// pairwise message is.
    pub(super) fn receive_group(
        &mut self,
        d: Deliver,
        logged: &mut Vec<StoredMessage>,
        changed: &mut bool,
    ) -> Event {
        let rejected = |d: &Deliver, reason: &str| Event::Rejected {
            from: d.from.clone(),
            seq: d.seq,
            reason: reason.to_owned(),
        };
        let Ok(header) = GroupHeader::parse(&d.envelope) else {
            return rejected(&d, "a malformed group message");
        };
        if d.conversation != header.group {
            return rejected(&d, "the conversation does not match the group");
        }
        let seen = self.state.seen(&d.message_id);
        let groups = match self.groups_loaded() {
            Ok(g) => g,
            Err(e) => return rejected(&d, &e.to_string()),
        };
        let Some(g) = groups.get_mut(&header.group) else {
            return rejected(&d, "a message for a group this device is not in");
        };
        if g.left {
            return rejected(&d, "a message for a group this user is no longer in");
        }
        let Some(identity) = g
            .roster
            .members()
            .find(|m| m.user == d.from.user)
            .map(|m| m.identity)
        else {
            return rejected(&d, "a group message from someone who is not a member");
        };
        let Some(key) = g
            .receivers
            .get_mut(&d.from)
            .and_then(|keys| keys.iter_mut().find(|k| k.key_id() == header.key_id))
        else {
            return rejected(&d, "no key from this device for this group");
        };
        let started = std::time::Instant::now();
        let plaintext = match key.decrypt(&d.envelope) {
            Ok(p) => p,
            Err(chatify_core::Error::Duplicate) if seen => {
                return Event::Duplicate {
                    from: d.from,
                    message_id: d.message_id,
                };
            }
            Err(e) => return rejected(&d, &e.to_string()),
        };
        let took = started.elapsed();
        self.timings.decrypt = Some(took);
        self.decrypt_times.push(took);
        self.groups_dirty = true;
        *changed = true;
        self.group_message(d, &plaintext, identity, logged)
    }

    /// The opened group message, judged and logged.
    fn group_message(
        &mut self,
        d: Deliver,
        plaintext: &[u8],
        identity: [u8; 32],
        logged: &mut Vec<StoredMessage>,
    ) -> Event {
        let rejected = |d: &Deliver, reason: &str| Event::Rejected {
            from: d.from.clone(),
            seq: d.seq,
            reason: reason.to_owned(),
        };
        let Ok(content) = Content::decode(plaintext) else {
            return rejected(&d, "malformed message content");
        };
        if content.message_id != d.message_id {
            return rejected(
                &d,
                "the message id does not match the one sealed in the message",
            );
        }
        if content.is_control() || content.file.is_some() {
            return rejected(&d, "a group message may carry only text");
        }
        if self.state.seen(&content.message_id) {
            return Event::Duplicate {
                from: d.from,
                message_id: d.message_id,
            };
        }
        let group = Some(d.conversation);
        self.accept(d, content, (identity, None), group, logged)
    }

    /// A group control from `d.from` (PROTOCOL §16.2), authenticated by its
    /// session: changes are checked against the chain this device holds
    /// (each is signed by a member entitled to make it), and a sender key
    /// is kept only from a member's device presenting the member's identity.
    pub(super) fn group_control(
        &mut self,
        d: &Deliver,
        control: &GroupControl<'_>,
        trusted: bool,
    ) -> Event {
        let rejected = |reason: String| Event::Rejected {
            from: d.from.clone(),
            seq: d.seq,
            reason,
        };
        if !trusted {
            return rejected(
                "a group change or key from an identity not confirmed for this user: ignored"
                    .into(),
            );
        }
        let presented = self
            .state
            .sessions
            .get(&d.from)
            .and_then(|s| s.first())
            .map(|s| s.remote_identity().signing_key);
        let pinned: BTreeMap<String, [u8; 32]> = self
            .state
            .pins
            .iter()
            .filter(|(_, p)| p.changed_to.is_none())
            .map(|(u, p)| (u.clone(), p.identity.signing_key))
            .collect();
        let me = self.state.user.clone();
        let groups = match self.groups_loaded() {
            Ok(g) => g,
            Err(e) => return rejected(e.to_string()),
        };
        let who = (me.as_str(), d.from.user.as_str(), presented);
        let (changes, key) = match take_control(groups, who, &pinned, control) {
            Ok(done) => done,
            Err(reason) => return rejected(reason),
        };
        let Some(g) = groups.get_mut(&control.group) else {
            return rejected("a key for a group this device is not in".into());
        };
        let member = g.roster.members().find(|m| m.user == d.from.user);
        let from_member = member.is_some_and(|m| Some(m.identity) == presented);
        if let Some(key) = key {
            if !from_member || g.left {
                return rejected(
                    "a group key from a device that is not a member's (or not with the \
                     member's identity): ignored"
                        .into(),
                );
            }
            g.take_key(&d.from, key);
        }
        self.groups_dirty = true;
        Event::GroupChanged {
            group: control.group,
            from: d.from.clone(),
            changes,
        }
    }
}

/// Checks and applies a control's changes to `groups` (joining a new group
/// from its creation); returns what changed and the key it carries, parsed.
fn take_control(
    groups: &mut BTreeMap<GroupId, Group>,
    (me, from, presented): (&str, &str, Option<[u8; 32]>),
    pinned: &BTreeMap<String, [u8; 32]>,
    control: &GroupControl<'_>,
) -> Result<(Vec<GroupChange>, Option<ReceiverKey>), String> {
    let key = match control.sender_key {
        Some(bytes) => {
            let d = SenderKeyDistribution::from_bytes(bytes).map_err(|e| e.to_string())?;
            if d.group != control.group {
                return Err("a group key for another group".into());
            }
            Some(ReceiverKey::from_distribution(&d).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let mut done = Vec::new();
    let mut rest = &control.changes[..];
    if let std::collections::btree_map::Entry::Vacant(slot) = groups.entry(control.group) {
        let Some((first, tail)) = rest.split_first() else {
            return Ok((done, key));
        };
        let create = SignedChange::from_bytes(first).map_err(|e| e.to_string())?;
        let Change::Create { members } = create.change() else {
            return Err("a change for a group this device is not in".into());
        };
        // The creator is known by the identity this client pinned for
        // them, if it did; otherwise by the one the creation names (the
        // member who sent it vouches for it, below).
        let named = members.first().map(|m| m.identity).unwrap_or_default();
        let creator_key = pinned.get(create.by()).copied().unwrap_or(named);
        let roster = Roster::join(&create, create.by(), &creator_key)
            .map_err(|e| format!("a group creation was refused: {e}"))?;
        if create.group() != control.group {
            return Err("a group creation for another group".into());
        }
        let mut g = Group::new(vec![first.to_vec()], roster);
        done.push(describe(&create));
        for c in tail {
            let sc = SignedChange::from_bytes(c).map_err(|e| e.to_string())?;
            g.apply(me, c.to_vec(), &sc).map_err(|e| e.to_string())?;
            done.push(describe(&sc));
        }
        if !g.roster.is_member(me) {
            return Err("a group this user is not a member of".into());
        }
        // Whoever brings this device into a group must be in it, with the
        // identity the group knows them by.
        if !g
            .roster
            .members()
            .any(|m| m.user == from && Some(m.identity) == presented)
        {
            return Err("a group sent by someone who is not a member of it".into());
        }
        slot.insert(g);
        rest = &[];
    }
    let Some(g) = groups.get_mut(&control.group) else {
        return Ok((done, key));
    };
    for c in rest {
        let sc = SignedChange::from_bytes(c).map_err(|e| e.to_string())?;
        let epoch = usize::try_from(sc.epoch()).unwrap_or(usize::MAX);
        if let Some(held) = g.changes.get(epoch) {
            if held[..] != c[..] {
                return Err("a group change that contradicts one already applied".into());
            }
            continue;
        }
        // Applied one by one: a refused change leaves those before it.
        g.apply(me, c.to_vec(), &sc).map_err(|e| e.to_string())?;
        done.push(describe(&sc));
    }
    Ok((done, key))
}

/// Whether a delivered envelope is a group message (its first byte; a
/// pairwise envelope is a CBOR array).
pub(super) fn is_group_message(envelope: &[u8]) -> bool {
    envelope.first() == Some(&GROUP_MESSAGE_VERSION)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use chatify_core::Device;

    const ID: GroupId = [4; 16];

    struct World {
        alice: Device,
        bob: Device,
        eve: Device,
        create: Vec<u8>,
        at_alice: Roster,
    }

    fn world() -> World {
        let mut rng = rand::rng();
        let (alice, bob, eve) = (
            Device::generate(&mut rng),
            Device::generate(&mut rng),
            Device::generate(&mut rng),
        );
        let (at_alice, create) =
            Roster::create(ID, "alice", &alice, vec![Member::of("bob", &bob, false)]);
        World {
            alice,
            bob,
            eve,
            create: create.to_bytes(),
            at_alice,
        }
    }

    fn control<'a>(changes: &'a [Vec<u8>], key: Option<&'a [u8]>) -> GroupControl<'a> {
        GroupControl {
            group: ID,
            changes: changes.iter().map(|c| c.as_slice().into()).collect(),
            sender_key: key,
        }
    }

    fn alice_key(w: &World) -> [u8; 32] {
        w.alice.public_identity().signing_key
    }

    /// Bob's client, having joined from Alice's creation.
    fn joined(w: &World) -> BTreeMap<GroupId, Group> {
        let mut groups = BTreeMap::new();
        let from_alice = ("bob", "alice", Some(alice_key(w)));
        let (done, _) = take_control(
            &mut groups,
            from_alice,
            &BTreeMap::new(),
            &control(std::slice::from_ref(&w.create), None),
        )
        .unwrap();
        assert!(matches!(&done[..], [GroupChange::Created { .. }]));
        groups
    }

    #[test]
    fn changes_nobody_entitled_made_are_refused_and_replays_change_nothing() {
        let w = world();
        let mut groups = joined(&w);
        let from_alice = ("bob", "alice", Some(alice_key(&w)));
        let add = |by: &str, dev: &Device, roster: &Roster| {
            let eve = Member::of("eve", &w.eve, false);
            roster
                .propose(by, dev, Change::Add { member: eve })
                .to_bytes()
        };
        // Signed by an outsider (what a server adding a member would
        // have to do), by a member who is not an admin, or under Alice's
        // name with another key: each refused, the roster unchanged.
        for forged in [
            add("eve", &w.eve, &w.at_alice),
            add("bob", &w.bob, &w.at_alice),
            add("alice", &w.eve, &w.at_alice),
        ] {
            let refused = take_control(
                &mut groups,
                from_alice,
                &BTreeMap::new(),
                &control(&[forged], None),
            );
            assert!(refused.is_err());
            assert!(!groups[&ID].roster.is_member("eve"));
        }
        // A genuine change with its signature altered.
        let mut flipped = add("alice", &w.alice, &w.at_alice);
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(
            take_control(
                &mut groups,
                from_alice,
                &BTreeMap::new(),
                &control(&[flipped], None)
            )
            .is_err()
        );
        // The genuine change applies once; sent again it changes nothing;
        // another change at the same place is a fork, refused.
        let genuine = add("alice", &w.alice, &w.at_alice);
        for _ in 0..2 {
            take_control(
                &mut groups,
                from_alice,
                &BTreeMap::new(),
                &control(std::slice::from_ref(&genuine), None),
            )
            .unwrap();
            assert_eq!(groups[&ID].roster.epoch(), 1);
        }
        let fork = w
            .at_alice
            .propose("alice", &w.alice, Change::Promote { user: "bob".into() })
            .to_bytes();
        let refused = take_control(
            &mut groups,
            from_alice,
            &BTreeMap::new(),
            &control(&[fork], None),
        );
        assert!(refused.unwrap_err().contains("contradicts"));
        assert!(!groups[&ID].info().members.contains(&("bob".into(), true)));
    }

    #[test]
    fn a_group_is_joined_only_from_a_member_with_the_creators_pinned_identity() {
        let w = world();
        let create = control(std::slice::from_ref(&w.create), None);
        // Relayed by someone not in it (or in it under another identity).
        for from in [
            ("bob", "eve", Some(w.eve.public_identity().signing_key)),
            ("bob", "alice", Some(w.eve.public_identity().signing_key)),
        ] {
            let mut groups = BTreeMap::new();
            assert!(take_control(&mut groups, from, &BTreeMap::new(), &create).is_err());
            assert!(groups.is_empty());
        }
        // Alice is pinned with another identity than the creation names.
        let mut groups = BTreeMap::new();
        let pinned = BTreeMap::from([("alice".to_owned(), w.eve.public_identity().signing_key)]);
        let from_alice = ("bob", "alice", Some(alice_key(&w)));
        assert!(take_control(&mut groups, from_alice, &pinned, &create).is_err());
        // A group Bob is not in.
        let (_, without_bob) = Roster::create(ID, "alice", &w.alice, vec![]);
        let without = [without_bob.to_bytes()];
        assert!(
            take_control(
                &mut groups,
                from_alice,
                &BTreeMap::new(),
                &control(&without, None)
            )
            .is_err()
        );
        assert!(groups.is_empty());
    }

    #[test]
    fn a_replayed_key_does_not_wind_a_chain_back() {
        let w = world();
        let mut groups = joined(&w);
        let mut sender = SenderKey::generate(ID, 1, &mut rand::rng());
        let first = sender.distribution().to_bytes();
        let from = Address {
            user: "alice".into(),
            device: 1,
        };
        let g = groups.get_mut(&ID).unwrap();
        assert!(g.take_key(&from, ReceiverKey::from_distribution_bytes(&first).unwrap()));
        let m = sender.encrypt(b"once").unwrap();
        assert!(g.receivers.get_mut(&from).unwrap()[0].decrypt(&m).is_ok());
        assert!(!g.take_key(&from, ReceiverKey::from_distribution_bytes(&first).unwrap()));
        assert!(
            g.receivers.get_mut(&from).unwrap()[0].decrypt(&m).is_err(),
            "opened twice"
        );
        // A key for another group is refused outright.
        let other = SenderKey::generate([5; 16], 2, &mut rand::rng());
        let other = other.distribution().to_bytes();
        let from_alice = ("bob", "alice", Some(alice_key(&w)));
        assert!(
            take_control(
                &mut groups,
                from_alice,
                &BTreeMap::new(),
                &control(&[], Some(&other))
            )
            .is_err()
        );
        // And the record round-trips with every key and change.
        let g = &groups[&ID];
        let back = Group::from_record(&g.to_record()).unwrap();
        assert_eq!((back.roster, back.receivers.len()), (g.roster.clone(), 1));
    }
}
