//! Any bytes into the prekey-bundle decoder and verifier: never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    chatify_core::fuzzing::bundle_decode_verify(data);
});
