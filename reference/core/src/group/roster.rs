//! Group membership decided by members (docs/PROTOCOL.md §16.1): every
//! change is signed by a member entitled to make it, names the change
//! before it, and is checked by every member's client, so a server that
//! relays changes can drop or delay them but cannot add a member, remove
//! one, replay an old change or fork the group.
//!
//! ```text
//!  change₀ Create{members} ─sig(creator)─▶ head₀ = SHA-256(change₀)
//!  change₁ {epoch 1, prev head₀, Add(erin),  by alice} ─sig(alice)─▶ head₁
//!  change₂ {epoch 2, prev head₁, Remove(bob), by bob} ─sig(bob)──▶ head₂
//! ```
//!
//! Members are users, named with the Ed25519 identity key their safety
//! number shows (every device of a user holds it, PROTOCOL §12): a device
//! presenting another identity is not the member, whatever the server says.
//! Admins add, remove and promote members; anyone may remove themselves.
//!
//! ```
//! use chatify_core::Device;
//! use chatify_core::group::roster::{Change, Member, Roster};
//! use rand_chacha::ChaCha20Rng;
//! use rand_chacha::rand_core::SeedableRng;
//!
//! let mut rng = ChaCha20Rng::from_seed([1; 32]);
//! let (alice, bob) = (Device::generate(&mut rng), Device::generate(&mut rng));
//! let bob_member = Member::of("bob", &bob, false);
//! let (mut at_alice, create) = Roster::create([7; 16], "alice", &alice, vec![bob_member]);
//! // Bob's client checks the change it is shown, knowing Alice's identity.
//! let mut at_bob = Roster::join(&create, "alice", &alice.public_identity().signing_key).unwrap();
//! let leave = Change::Remove { user: "bob".into() };
//! let remove = at_bob.propose("bob", &bob, leave);
//! at_alice.apply(&remove).unwrap();
//! at_bob.apply(&remove).unwrap();
//! assert!(!at_alice.is_member("bob"));
//! ```

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer, Verifier, VerifyingKey};
use minicbor::{Decode, Encode};
use sha2::{Digest, Sha256};

use super::GroupId;
use crate::Device;

const SIGNATURE_CONTEXT: &[u8] = b"chatify/v1/group-change";

/// A member: a user and the identity signing key it is known by.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Member {
    /// The user name.
    #[n(0)]
    pub user: String,
    /// The user's Ed25519 identity key (what the safety number shows).
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    pub identity: [u8; 32],
    /// Whether the member may add, remove and promote others.
    #[n(2)]
    pub admin: bool,
}

impl Member {
    /// `user`, known by `device`'s identity.
    pub fn of(user: &str, device: &Device, admin: bool) -> Member {
        Member {
            user: user.to_owned(),
            identity: device.public_identity().signing_key,
            admin,
        }
    }
}

/// One change to a group's membership.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Change {
    /// The group is made with these members (the creator, an admin, first).
    #[n(0)]
    Create {
        /// The members.
        #[n(0)]
        members: Vec<Member>,
    },
    /// A member joins.
    #[n(1)]
    Add {
        /// The new member.
        #[n(0)]
        member: Member,
    },
    /// A member leaves (or is made to).
    #[n(2)]
    Remove {
        /// The member.
        #[n(0)]
        user: String,
    },
    /// A member becomes an admin.
    #[n(3)]
    Promote {
        /// The member.
        #[n(0)]
        user: String,
    },
}

/// What is signed: the change with its place in the group's history.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
struct Body {
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    group: GroupId,
    #[n(1)]
    epoch: u64,
    #[n(2)]
    #[cbor(with = "minicbor::bytes")]
    prev: [u8; 32],
    #[n(3)]
    by: String,
    #[n(4)]
    change: Change,
}

/// A change as members send it to each other: its body and the signature
/// of the member who made it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct SignedChange {
    #[n(0)]
    body: Body,
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    signature: [u8; 64],
}

/// Why a change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RosterError {
    /// The change is for another group.
    #[error("the change is for another group")]
    OtherGroup,
    /// Not the next change: replayed, skipped ahead, or on another branch.
    #[error("the change is not the next one (replayed, out of order, or forked)")]
    NotNext,
    /// The signer is not a member (or not with that identity).
    #[error("the change is signed by someone who is not a member")]
    NotMember,
    /// The signer may not make this change.
    #[error("the member who signed the change may not make it")]
    NotEntitled,
    /// The signature does not verify.
    #[error("the change's signature does not verify")]
    BadSignature,
    /// The change makes no sense here (adding a member twice, removing
    /// someone who is not one, a second Create, an empty group).
    #[error("the change does not apply: {0}")]
    Invalid(&'static str),
    /// The bytes are not a signed change.
    #[error("malformed change")]
    Malformed,
}

/// A group's membership as one member's client holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    group: GroupId,
    epoch: u64,
    head: [u8; 32],
    members: BTreeMap<String, Member>,
}

fn signed_bytes(body: &Body) -> Vec<u8> {
    let mut out = SIGNATURE_CONTEXT.to_vec();
    // Encoding into a Vec cannot fail.
    let _ = minicbor::encode(body, &mut out);
    out
}

impl SignedChange {
    /// The canonical encoding, as members send it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = minicbor::encode(self, &mut out);
        out
    }

    /// Parses [`SignedChange::to_bytes`]'s encoding (only that encoding).
    pub fn from_bytes(bytes: &[u8]) -> Result<SignedChange, RosterError> {
        let c: SignedChange = minicbor::decode(bytes).map_err(|_| RosterError::Malformed)?;
        if c.to_bytes() != bytes {
            return Err(RosterError::Malformed);
        }
        Ok(c)
    }

    /// The group it is a change of.
    pub fn group(&self) -> GroupId {
        self.body.group
    }

    /// Who made the change.
    pub fn by(&self) -> &str {
        &self.body.by
    }

    /// The change.
    pub fn change(&self) -> &Change {
        &self.body.change
    }

    /// Its epoch (0 for the group's creation).
    pub fn epoch(&self) -> u64 {
        self.body.epoch
    }

    /// SHA-256 of its encoding: the `prev` of the change after it.
    fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.to_bytes()).into()
    }

    fn verify(&self, identity: &[u8; 32]) -> Result<(), RosterError> {
        let key = VerifyingKey::from_bytes(identity).map_err(|_| RosterError::BadSignature)?;
        key.verify(
            &signed_bytes(&self.body),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| RosterError::BadSignature)
    }
}

fn sign(device: &Device, body: Body) -> SignedChange {
    let signature = device.identity_signing_key().sign(&signed_bytes(&body));
    SignedChange {
        body,
        signature: signature.to_bytes(),
    }
}

impl Roster {
    /// Makes a group: `creator` (known by `device`'s identity, an admin)
    /// and `others`. Returns the creator's roster and the change to send
    /// to the others.
    pub fn create(
        group: GroupId,
        creator: &str,
        device: &Device,
        others: Vec<Member>,
    ) -> (Roster, SignedChange) {
        let mut members = vec![Member::of(creator, device, true)];
        members.extend(others.into_iter().filter(|m| m.user != creator));
        let change = sign(
            device,
            Body {
                group,
                epoch: 0,
                prev: [0; 32],
                by: creator.to_owned(),
                change: Change::Create { members },
            },
        );
        let roster = Roster {
            group,
            epoch: 0,
            head: change.hash(),
            members: match &change.body.change {
                Change::Create { members } => members
                    .iter()
                    .map(|m| (m.user.clone(), m.clone()))
                    .collect(),
                _ => BTreeMap::new(),
            },
        };
        (roster, change)
    }

    /// The roster a group's creation gives, checked against the identity
    /// this client knows for the creator (`creator`, whose safety number it
    /// pinned): a creation signed by anyone else is refused.
    pub fn join(
        create: &SignedChange,
        creator: &str,
        creator_identity: &[u8; 32],
    ) -> Result<Roster, RosterError> {
        let Change::Create { members } = &create.body.change else {
            return Err(RosterError::Invalid("not a group's creation"));
        };
        let first = members
            .first()
            .ok_or(RosterError::Invalid("an empty group"))?;
        if create.body.epoch != 0 || create.body.prev != [0; 32] {
            return Err(RosterError::NotNext);
        }
        if create.body.by != creator
            || first.user != creator
            || first.identity != *creator_identity
            || !first.admin
        {
            return Err(RosterError::NotMember);
        }
        let mut seen = BTreeMap::new();
        for m in members {
            if seen.insert(m.user.clone(), m.clone()).is_some() {
                return Err(RosterError::Invalid("a member listed twice"));
            }
        }
        create.verify(creator_identity)?;
        Ok(Roster {
            group: create.body.group,
            epoch: 0,
            head: create.hash(),
            members: seen,
        })
    }

    /// Signs `change` as `by` (this client's user, known by `device`'s
    /// identity), as the next change of the group. It takes effect when
    /// applied (here and at every member).
    pub fn propose(&self, by: &str, device: &Device, change: Change) -> SignedChange {
        sign(
            device,
            Body {
                group: self.group,
                epoch: self.epoch + 1,
                prev: self.head,
                by: by.to_owned(),
                change,
            },
        )
    }

    /// Checks `change` and applies it: the next change of this group,
    /// signed by a member with the identity this roster knows, who may
    /// make it. A refused change changes nothing.
    pub fn apply(&mut self, change: &SignedChange) -> Result<(), RosterError> {
        let b = &change.body;
        if b.group != self.group {
            return Err(RosterError::OtherGroup);
        }
        if b.epoch != self.epoch + 1 || b.prev != self.head {
            return Err(RosterError::NotNext);
        }
        let signer = self.members.get(&b.by).ok_or(RosterError::NotMember)?;
        change.verify(&signer.identity)?;
        let entitled = match &b.change {
            Change::Create { .. } => return Err(RosterError::Invalid("a second creation")),
            Change::Remove { user } => signer.admin || *user == b.by,
            Change::Add { .. } | Change::Promote { .. } => signer.admin,
        };
        if !entitled {
            return Err(RosterError::NotEntitled);
        }
        let mut members = self.members.clone();
        match &b.change {
            Change::Add { member } => {
                if members
                    .insert(member.user.clone(), member.clone())
                    .is_some()
                {
                    return Err(RosterError::Invalid("already a member"));
                }
            }
            Change::Remove { user } => {
                members
                    .remove(user)
                    .ok_or(RosterError::Invalid("not a member"))?;
                if members.is_empty() {
                    return Err(RosterError::Invalid("the last member cannot leave"));
                }
            }
            Change::Promote { user } => {
                members
                    .get_mut(user)
                    .ok_or(RosterError::Invalid("not a member"))?
                    .admin = true;
            }
            Change::Create { .. } => {}
        }
        self.members = members;
        self.epoch = b.epoch;
        self.head = change.hash();
        Ok(())
    }

    /// The group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The number of changes since the creation.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether `user` is a member.
    pub fn is_member(&self, user: &str) -> bool {
        self.members.contains_key(user)
    }

    /// The members, by user name.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    fn devices() -> Vec<Device> {
        let mut rng = ChaCha20Rng::from_seed([2; 32]);
        (0..4).map(|_| Device::generate(&mut rng)).collect()
    }

    /// Alice makes a group with Bob and Carol; everyone's roster.
    fn group(d: &[Device]) -> (Vec<Roster>, SignedChange) {
        let (alice, create) = Roster::create(
            [5; 16],
            "alice",
            &d[0],
            vec![
                Member::of("bob", &d[1], false),
                Member::of("carol", &d[2], false),
            ],
        );
        let id = d[0].public_identity().signing_key;
        let bob = Roster::join(&create, "alice", &id).unwrap();
        let carol = Roster::join(&create, "alice", &id).unwrap();
        (vec![alice, bob, carol], create)
    }

    fn apply_all(rosters: &mut [Roster], c: &SignedChange) {
        for r in rosters {
            r.apply(c).unwrap();
        }
    }

    #[test]
    fn members_change_the_group_and_every_client_agrees() {
        let d = devices();
        let (mut r, _) = group(&d);
        let add = r[0].propose(
            "alice",
            &d[0],
            Change::Add {
                member: Member::of("mallory", &d[3], false),
            },
        );
        apply_all(&mut r, &add);
        let leave = r[1].propose("bob", &d[1], Change::Remove { user: "bob".into() });
        apply_all(&mut r, &leave);
        assert!(r.iter().all(|x| x == &r[0]));
        assert!(r[0].is_member("mallory") && !r[0].is_member("bob"));
        assert_eq!(r[0].epoch(), 2);
        let bytes = leave.to_bytes();
        assert_eq!(SignedChange::from_bytes(&bytes).unwrap(), leave);
    }

    /// What a server can do with changes, and what a member may not do,
    /// is refused, and a refused change changes nothing.
    #[test]
    fn the_server_and_unentitled_members_cannot_change_the_group() {
        let d = devices();
        let (mut r, create) = group(&d);
        let before = r[1].clone();
        // The server makes a change of its own, as alice, with its key.
        let forged = r[0].propose(
            "alice",
            &d[3],
            Change::Add {
                member: Member::of("mallory", &d[3], false),
            },
        );
        assert_eq!(r[1].apply(&forged), Err(RosterError::BadSignature));
        // A non-member signs with its own key.
        let outsider = r[0].propose("mallory", &d[3], Change::Remove { user: "bob".into() });
        assert_eq!(r[1].apply(&outsider), Err(RosterError::NotMember));
        // A member who is not an admin adds or removes someone.
        let carol_adds = r[2].propose(
            "carol",
            &d[2],
            Change::Add {
                member: Member::of("mallory", &d[3], false),
            },
        );
        assert_eq!(r[1].apply(&carol_adds), Err(RosterError::NotEntitled));
        let carol_removes = r[2].propose("carol", &d[2], Change::Remove { user: "bob".into() });
        assert_eq!(r[1].apply(&carol_removes), Err(RosterError::NotEntitled));
        // A bit of a real change flipped.
        let real = r[0].propose(
            "alice",
            &d[0],
            Change::Promote {
                user: "carol".into(),
            },
        );
        let mut bytes = real.to_bytes();
        let at = bytes.len() - 70;
        bytes[at] ^= 1;
        let flipped = SignedChange::from_bytes(&bytes);
        assert!(flipped.is_err() || r[1].apply(&flipped.unwrap()).is_err());
        assert_eq!(r[1], before, "nothing refused changed the roster");
        // Replayed, skipped ahead, forked, for another group, a second creation.
        apply_all(&mut r, &real);
        assert_eq!(r[1].apply(&real), Err(RosterError::NotNext));
        let a = r[0].propose(
            "alice",
            &d[0],
            Change::Remove {
                user: "carol".into(),
            },
        );
        let b = r[0].propose("alice", &d[0], Change::Remove { user: "bob".into() });
        r[1].apply(&a).unwrap();
        assert_eq!(r[1].apply(&b), Err(RosterError::NotNext), "a fork");
        assert_eq!(r[1].apply(&create), Err(RosterError::NotNext));
        // A creation by someone other than the creator this client knows.
        let (_, fake) = Roster::create([5; 16], "alice", &d[3], vec![]);
        let id = d[0].public_identity().signing_key;
        assert_eq!(
            Roster::join(&fake, "alice", &id),
            Err(RosterError::NotMember)
        );
    }

    proptest::proptest! {
        /// Any change by an entitled member applies at every member; any
        /// byte of its encoding changed, it applies nowhere.
        #[test]
        fn a_changed_byte_is_always_refused(at in 0usize..400, bit in 0u8..8, promote in proptest::bool::ANY) {
            let d = devices();
            let (mut r, _) = group(&d);
            let change = if promote {
                Change::Promote { user: "bob".into() }
            } else {
                Change::Remove { user: "carol".into() }
            };
            let c = r[0].propose("alice", &d[0], change);
            let mut bytes = c.to_bytes();
            let at = at % bytes.len();
            bytes[at] ^= 1 << bit;
            if let Ok(bad) = SignedChange::from_bytes(&bytes) {
                proptest::prop_assert!(r[1].clone().apply(&bad).is_err());
            }
            apply_all(&mut r, &c);
        }
    }
}
