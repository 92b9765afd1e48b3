//! Any bytes into the envelope decoder: never a panic; only canonical
//! encodings are accepted.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    chatify_proto::fuzzing::envelope_decode(data);
});
