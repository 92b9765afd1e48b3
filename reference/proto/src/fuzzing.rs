//! Entry points of the cargo-fuzz targets in `fuzz/` (their seed corpora are
//! replayed by `cargo test`). Each takes arbitrary bytes and checks the
//! decoder's contract; a violation is an assertion failure, which the fuzzer
//! reports.

use crate::{Envelope, Frame};

/// Frames: no panic; whatever decodes re-encodes to an equal frame.
pub fn frame_decode(data: &[u8]) {
    let _ = Frame::peek_id(data);
    if let Ok(frame) = Frame::decode(data) {
        let again = Frame::decode(&frame.encode());
        assert_eq!(
            again.as_ref(),
            Ok(&frame),
            "a decoded frame does not round-trip"
        );
    }
}

/// Envelopes: no panic; only the canonical encoding decodes.
pub fn envelope_decode(data: &[u8]) {
    if let Ok(envelope) = Envelope::decode(data) {
        assert_eq!(
            envelope.encode(),
            data,
            "a non-canonical envelope was accepted"
        );
    }
}
