//! The codec: round trips, typed rejections, limits, and no panics on any input.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use chatify_proto::frame::{self, Address};
use chatify_proto::limits::{MAX_ENVELOPE_LEN, MAX_FRAME_LEN, MAX_LIST_LEN, MAX_USERNAME_LEN};
use chatify_proto::{
    Body, DecodeError, Envelope, ErrorCode, Frame, MessageHeader, PrekeyBundle, PrekeyHeader,
};
use proptest::prelude::*;

fn arb_bytes32() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn arb_address() -> impl Strategy<Value = Address> {
    ("[a-z]{1,64}", any::<u32>()).prop_map(|(user, device)| Address { user, device })
}

fn arb_envelope() -> impl Strategy<Value = Envelope> {
    let prekey = prop::option::of(
        (
            arb_bytes32(),
            arb_bytes32(),
            arb_bytes32(),
            any::<u32>(),
            prop::option::of(any::<u32>()),
        )
            .prop_map(
                |(signing_key, identity_key, base_key, signed_prekey_id, one_time_prekey_id)| {
                    PrekeyHeader {
                        signing_key,
                        identity_key,
                        base_key,
                        signed_prekey_id,
                        one_time_prekey_id,
                    }
                },
            ),
    );
    (
        any::<[u8; 16]>(),
        prekey,
        arb_bytes32(),
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..512),
    )
        .prop_map(
            |(conversation, prekey, ratchet_key, pn, n, ciphertext)| Envelope {
                conversation,
                prekey,
                header: MessageHeader {
                    ratchet_key,
                    previous_chain_length: pn,
                    counter: n,
                },
                ciphertext,
            },
        )
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let body = prop_oneof![
        ("[a-z]{1,64}", ".{0,100}")
            .prop_map(|(username, password)| Body::from(frame::Register { username, password })),
        (
            "[a-z]{1,64}",
            ".{0,100}",
            any::<u32>(),
            prop::option::of("[0-9]{6}")
        )
            .prop_map(|(username, password, device, second_factor)| frame::Login {
                username,
                password,
                device,
                second_factor
            }
            .into()),
        prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|token| frame::Authenticate { token }.into()),
        (
            arb_address(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            prop::collection::vec(any::<u8>(), 0..1024)
        )
            .prop_map(|(to, conversation, message_id, envelope)| frame::Send {
                to,
                conversation,
                message_id,
                envelope
            }
            .into()),
        prop::collection::vec(any::<u64>(), 0..50).prop_map(|seqs| frame::Ack { seqs }.into()),
        (
            any::<[u8; 16]>(),
            prop::option::of(any::<u64>()),
            0u32..1000
        )
            .prop_map(|(conversation, before, limit)| frame::FetchHistory {
                conversation,
                before,
                limit
            }
            .into()),
        (
            any::<u64>(),
            arb_address(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..256)
        )
            .prop_map(
                |(seq, from, conversation, message_id, sent_at_ms, envelope)| {
                    frame::Deliver {
                        seq,
                        from,
                        conversation,
                        message_id,
                        sent_at_ms,
                        envelope,
                    }
                    .into()
                }
            ),
        (0u16..60, ".{0,200}")
            .prop_map(|(c, m)| frame::Error::new(ErrorCode::from_u16(c), m).into()),
        any::<u32>().prop_map(|remaining| frame::PrekeysLow { remaining }.into()),
        Just(frame::Ping {}.into()),
        Just(frame::Pong {}.into()),
        Just(frame::Ok {}.into()),
        Just(frame::Logout {}.into()),
        any::<u64>().prop_map(|size| frame::BlobCreate { size }.into()),
        (
            any::<[u8; 16]>(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..512)
        )
            .prop_map(|(blob, part, data)| frame::BlobPut { blob, part, data }.into()),
        (
            any::<[u8; 16]>(),
            prop::collection::vec(arb_address(), 0..8)
        )
            .prop_map(|(blob, to)| frame::BlobGrant { blob, to }.into()),
        (any::<[u8; 16]>(), any::<u64>(), any::<u64>()).prop_map(|(blob, size, received)| {
            frame::BlobState {
                blob,
                size,
                received,
            }
            .into()
        }),
    ];
    (any::<u64>(), body).prop_map(|(id, body)| Frame { id, body })
}

proptest! {
    #[test]
    fn frames_round_trip(frame in arb_frame()) {
        let bytes = frame.encode();
        prop_assert_eq!(Frame::decode(&bytes), Ok(frame.clone()));
        prop_assert_eq!(Frame::peek_id(&bytes), Some(frame.id));
    }

    #[test]
    fn envelopes_round_trip(env in arb_envelope()) {
        let bytes = env.encode();
        prop_assert_eq!(Envelope::decode(&bytes), Ok(env.clone()));
        // The AD part is a prefix of the encoding, re-headed as an array of 4.
        let ad = env.associated_data();
        prop_assert_eq!(ad[0], 0x84);
        prop_assert_eq!(bytes[0], 0x85);
        prop_assert_eq!(&ad[1..], &bytes[1..ad.len()]);
    }

    /// Arbitrary bytes never panic the decoders.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Frame::decode(&bytes);
        let _ = Frame::peek_id(&bytes);
        let _ = Envelope::decode(&bytes);
        let _ = PrekeyBundle::decode(&bytes);
    }

    /// Mutations of valid frames never panic and never decode to a frame
    /// that re-encodes differently from a valid one silently.
    #[test]
    fn mutated_frames_never_panic(frame in arb_frame(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = frame.encode();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        if let Ok(decoded) = Frame::decode(&bytes) {
            // Whatever decodes must itself round-trip.
            prop_assert_eq!(Frame::decode(&decoded.encode()), Ok(decoded));
        }
    }
}

#[path = "../../test-support/raw_frame.rs"]
mod raw_frame;
use raw_frame::raw_frame as raw;

#[test]
fn unknown_version_is_rejected_before_the_body() {
    // Version 2 with a body this version could not parse.
    let bytes = raw(2, 10, 5, &[0xff, 0xff]);
    assert_eq!(
        Frame::decode(&bytes),
        Err(DecodeError::UnsupportedVersion(2))
    );
    assert_eq!(
        DecodeError::UnsupportedVersion(2).code(),
        ErrorCode::UnsupportedVersion
    );

    let mut env = Envelope {
        conversation: [0; 16],
        prekey: None,
        header: MessageHeader {
            ratchet_key: [1; 32],
            previous_chain_length: 0,
            counter: 0,
        },
        ciphertext: vec![1, 2, 3],
    }
    .encode();
    env[1] = 0x02;
    assert_eq!(
        Envelope::decode(&env),
        Err(DecodeError::UnsupportedVersion(2))
    );
}

#[test]
fn unknown_frame_type_is_typed() {
    let bytes = raw(1, 999, 5, &[0xa0]);
    assert_eq!(
        Frame::decode(&bytes),
        Err(DecodeError::UnknownFrameType(999))
    );
    assert_eq!(Frame::peek_id(&bytes), Some(5));
    assert_eq!(
        DecodeError::UnknownFrameType(1).code(),
        ErrorCode::UnknownFrameType
    );
}

#[test]
fn trailing_bytes_and_truncation_are_rejected() {
    let mut bytes = Frame {
        id: 1,
        body: frame::Ping {}.into(),
    }
    .encode();
    bytes.push(0);
    assert_eq!(Frame::decode(&bytes), Err(DecodeError::TrailingBytes(1)));
    let full = Frame {
        id: 1,
        body: frame::Register {
            username: "a".into(),
            password: "b".into(),
        }
        .into(),
    }
    .encode();
    for cut in 0..full.len() {
        assert!(
            Frame::decode(&full[..cut]).is_err(),
            "prefix of {cut} bytes decoded"
        );
    }
}

#[test]
fn size_limits_are_enforced() {
    let huge = vec![0u8; MAX_FRAME_LEN + 1];
    assert!(matches!(
        Frame::decode(&huge),
        Err(DecodeError::TooLarge { .. })
    ));
    assert_eq!(
        DecodeError::TooLarge { len: 1, max: 0 }.code(),
        ErrorCode::FrameTooLarge
    );
    assert!(matches!(
        Envelope::decode(&vec![0u8; MAX_ENVELOPE_LEN + 1]),
        Err(DecodeError::TooLarge { .. })
    ));

    let long_name = "x".repeat(MAX_USERNAME_LEN + 1);
    let bytes = Frame {
        id: 1,
        body: frame::Register {
            username: long_name,
            password: "p".into(),
        }
        .into(),
    }
    .encode();
    assert!(matches!(
        Frame::decode(&bytes),
        Err(DecodeError::FieldTooLong {
            field: "username",
            ..
        })
    ));

    let bytes = Frame {
        id: 1,
        body: frame::Ack {
            seqs: vec![1; MAX_LIST_LEN + 1],
        }
        .into(),
    }
    .encode();
    assert!(matches!(
        Frame::decode(&bytes),
        Err(DecodeError::FieldTooLong { field: "seqs", .. })
    ));

    let bytes = Frame {
        id: 1,
        body: frame::Send {
            to: Address {
                user: "bob".into(),
                device: 1,
            },
            conversation: [0; 16],
            message_id: [0; 16],
            envelope: vec![0; MAX_ENVELOPE_LEN + 1],
        }
        .into(),
    }
    .encode();
    assert!(matches!(
        Frame::decode(&bytes),
        Err(DecodeError::FieldTooLong {
            field: "envelope",
            ..
        })
    ));
}

/// One meaning per frame: a map key twice, an indefinite length or a head
/// longer than needed is refused (whichever copy a decoder kept, two
/// decoders could read two frames); the version is checked before the
/// frame's shape.
#[test]
fn frames_have_one_spelling_and_the_version_comes_first() {
    // Ping with its (empty) body: [1, 10, 5, {}].
    assert!(Frame::decode(&[0x84, 0x01, 0x0a, 0x05, 0xa0]).is_ok());
    for bad in [
        // FetchHistory with key 2 (limit) twice.
        &[
            0x84, 0x01, 0x09, 0x05, 0xa3, 0x00, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0x02, 0x01, 0x02, 0x05,
        ][..],
        // The id written in two bytes where one does.
        &[0x84, 0x01, 0x0a, 0x18, 0x05, 0xa0],
        // An indefinite-length body.
        &[0x84, 0x01, 0x0a, 0x05, 0xbf, 0xff],
    ] {
        match Frame::decode(bad) {
            Err(e) => assert_eq!(e.code(), chatify_proto::ErrorCode::BadFrame, "{e}"),
            Ok(f) => panic!("accepted {f:?}"),
        }
    }
    for wrong_version in [&[0x82, 0x02, 0x19, 0x04, 0xd2][..], &[0x9f, 0x02, 0xff]] {
        assert_eq!(
            Frame::decode(wrong_version).map(|_| ()),
            Err(DecodeError::UnsupportedVersion(2))
        );
    }
}

#[test]
fn huge_declared_lengths_do_not_allocate_or_panic() {
    // An Ack whose array claims 2^63 elements, and a byte string claiming 2^32 bytes.
    let body = [0xa1, 0x00, 0x9b, 0x80, 0, 0, 0, 0, 0, 0, 0];
    assert!(Frame::decode(&raw(1, 8, 1, &body)).is_err());
    let body = [0xa1, 0x00, 0x5a, 0xff, 0xff, 0xff, 0xff];
    assert!(Frame::decode(&raw(1, 3, 1, &body)).is_err());
    // Deeply nested values (even in an unknown field) are refused without
    // recursing into them: no frame of the protocol nests that deep.
    let mut body = vec![0xa1, 0x10];
    body.extend(std::iter::repeat_n(0x81, 100_000));
    body.push(0x00);
    assert!(Frame::decode(&raw(1, 10, 1, &body)).is_err());
    // A shallow unknown field is ignored.
    let body = [0xa1, 0x10, 0x81, 0x81, 0x00];
    assert!(Frame::decode(&raw(1, 10, 1, &body)).is_ok());
}

#[test]
fn non_canonical_envelopes_are_rejected() {
    let env = Envelope {
        conversation: [0; 16],
        prekey: None,
        header: MessageHeader {
            ratchet_key: [1; 32],
            previous_chain_length: 0,
            counter: 5,
        },
        ciphertext: vec![],
    };
    let bytes = env.encode();
    // Re-encode the counter (5) in a longer form: 0x18 0x05 instead of 0x05.
    let pos = bytes.windows(2).rposition(|w| w == [0x02, 0x05]).unwrap();
    let mut longer = bytes[..pos + 1].to_vec();
    longer.extend_from_slice(&[0x18, 0x05]);
    longer.extend_from_slice(&bytes[pos + 2..]);
    assert_eq!(Envelope::decode(&longer), Err(DecodeError::NonCanonical));
}

#[test]
fn error_codes_round_trip_and_unknown_maps_to_internal() {
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::from_u16(code.as_u16()), code);
    }
    assert_eq!(ErrorCode::from_u16(9999), ErrorCode::Internal);
}

#[test]
fn frame_type_numbers_are_unique() {
    let mut numbers: Vec<u32> = Body::TYPES.iter().map(|(n, _)| *n).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), Body::TYPES.len());
}

#[test]
fn decode_errors_never_quote_input() {
    // A frame whose username is invalid UTF-8 containing a recognisable marker.
    let mut body = vec![0xa2, 0x00, 0x6a];
    body.extend_from_slice(b"SECRET\xff\xfe\xfd\xfc");
    body.extend_from_slice(&[0x01, 0x61, b'p']);
    let err = Frame::decode(&raw(1, 1, 1, &body)).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("SECRET"), "{text}");
}
