//! Any bytes as an envelope into an established session and into session
//! setup: never a panic, never an accepted forgery, state unchanged on failure.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    chatify_core::fuzzing::session_decrypt(data);
});
