//! Any bytes into the frame decoder: never a panic; whatever decodes
//! re-encodes to a frame that decodes to itself.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    chatify_proto::fuzzing::frame_decode(data);
});
