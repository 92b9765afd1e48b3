//! The end-to-end-encrypted envelope.
//!
//! Clients build and open envelopes (`chatify-core`); the server only ever
//! sees their encoding as the opaque `envelope` byte string of a
//! [`Send`](crate::frame::Send) frame.
//!
//! Encoding: the CBOR array `[version, conversation, prekey, header, ciphertext]`
//! where `prekey` is `null` or a [`PrekeyHeader`] map. The first four elements,
//! encoded as the array `[version, conversation, prekey, header]`, are the
//! envelope's part of the AEAD associated data ([`Envelope::associated_data`]).
//! Decoding accepts only the canonical encoding: an envelope must re-encode to
//! exactly the bytes it was decoded from, so no two byte strings carry the
//! same envelope.

use core::fmt;

use minicbor::data::Type;
use minicbor::{Decode, Decoder, Encode, Encoder};

use crate::frame::Hex;
use crate::limits::MAX_ENVELOPE_LEN;
use crate::{ConversationId, DecodeError, PROTOCOL_VERSION};

/// The Double Ratchet message header (sent in the clear, bound by the AEAD).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
#[cbor(map)]
pub struct MessageHeader {
    /// The sender's current ratchet public key (X25519).
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub ratchet_key: [u8; 32],
    /// Number of messages in the sender's previous sending chain.
    #[n(1)]
    pub previous_chain_length: u32,
    /// This message's number in the current sending chain.
    #[n(2)]
    pub counter: u32,
}

/// The session-setup fields an initiator attaches until the responder answers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
#[cbor(map)]
pub struct PrekeyHeader {
    /// The initiator's Ed25519 identity public key.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub signing_key: [u8; 32],
    /// The initiator's X25519 identity public key.
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    pub identity_key: [u8; 32],
    /// The initiator's ephemeral X25519 public key (the X3DH base key).
    #[n(2)]
    #[cbor(with = "minicbor::bytes")]
    pub base_key: [u8; 32],
    /// The responder's signed prekey the initiator used.
    #[n(3)]
    pub signed_prekey_id: u32,
    /// The responder's one-time prekey the initiator used, if any.
    #[n(4)]
    pub one_time_prekey_id: Option<u32>,
}

/// An encrypted message as the sender built it.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The conversation the message belongs to.
    pub conversation: ConversationId,
    /// Present on the initiator's messages until the responder has answered.
    pub prekey: Option<PrekeyHeader>,
    /// The ratchet header.
    pub header: MessageHeader,
    /// AES-256-GCM ciphertext of the padded plaintext, with the 16-byte tag appended.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("conversation", &Hex(&self.conversation))
            .field("prekey", &self.prekey)
            .field("header", &self.header)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

impl fmt::Debug for MessageHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageHeader")
            .field("ratchet_key", &Hex(&self.ratchet_key))
            .field("previous_chain_length", &self.previous_chain_length)
            .field("counter", &self.counter)
            .finish()
    }
}

impl fmt::Debug for PrekeyHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrekeyHeader")
            .field("signing_key", &Hex(&self.signing_key))
            .field("identity_key", &Hex(&self.identity_key))
            .field("base_key", &Hex(&self.base_key))
            .field("signed_prekey_id", &self.signed_prekey_id)
            .field("one_time_prekey_id", &self.one_time_prekey_id)
            .finish()
    }
}

type EncodeResult = Result<(), minicbor::encode::Error<core::convert::Infallible>>;

impl Envelope {
    fn encode_prefix(&self, e: &mut Encoder<&mut Vec<u8>>, len: u64) -> EncodeResult {
        e.array(len)?
            .u8(PROTOCOL_VERSION)?
            .bytes(&self.conversation)?;
        match &self.prekey {
            Some(p) => e.encode(p)?,
            None => e.null()?,
        };
        e.encode(self.header)?;
        Ok(())
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.ciphertext.len() + 160);
        let mut e = Encoder::new(&mut buf);
        // Writing to a Vec is infallible and the header types' Encode impls
        // raise no errors of their own.
        let result = self
            .encode_prefix(&mut e, 5)
            .and_then(|()| e.bytes(&self.ciphertext).map(|_| ()));
        debug_assert!(result.is_ok());
        buf
    }

    /// The envelope's contribution to the AEAD associated data: the CBOR array
    /// `[version, conversation, prekey, header]`.
    pub fn associated_data(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(160);
        let mut e = Encoder::new(&mut buf);
        let result = self.encode_prefix(&mut e, 4);
        debug_assert!(result.is_ok());
        buf
    }

    /// Decodes an envelope, accepting only its canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_ENVELOPE_LEN,
            });
        }
        let mut d = Decoder::new(bytes);
        if d.array()? != Some(5) {
            return Err(DecodeError::malformed("envelope is not an array of 5", 0));
        }
        let version = d.u64()?;
        if version != u64::from(PROTOCOL_VERSION) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let conversation = fixed::<16>(&mut d)?;
        let prekey = if d.datatype()? == Type::Null {
            d.null()?;
            None
        } else {
            Some(PrekeyHeader::decode(&mut d, &mut ())?)
        };
        let header = MessageHeader::decode(&mut d, &mut ())?;
        let ciphertext = d.bytes()?.to_vec();
        if d.position() != bytes.len() {
            return Err(DecodeError::TrailingBytes(bytes.len() - d.position()));
        }
        let envelope = Envelope {
            conversation,
            prekey,
            header,
            ciphertext,
        };
        if envelope.encode() != bytes {
            return Err(DecodeError::NonCanonical);
        }
        Ok(envelope)
    }
}

fn fixed<const N: usize>(d: &mut Decoder<'_>) -> Result<[u8; N], DecodeError> {
    let position = d.position();
    d.bytes()?
        .try_into()
        .map_err(|_| DecodeError::malformed("byte string of the wrong length", position))
}
