//! Shared by tests that send frames a well-behaved encoder never would
//! (included with `#[path]`): the frame prefix `[version, type, id, ...]`
//! written by hand, followed by arbitrary body bytes.

/// `[version, type, id]` as a CBOR array of 4, then `body` as it is.
pub(crate) fn raw_frame(version: u64, ty: u64, id: u64, body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut e = minicbor::Encoder::new(&mut buf);
    let header = e
        .array(4)
        .and_then(|e| e.u64(version))
        .and_then(|e| e.u64(ty))
        .and_then(|e| e.u64(id));
    assert!(header.is_ok(), "writing to a Vec cannot fail");
    buf.extend_from_slice(body);
    buf
}
