//! Fuzz target `grpc_frame`: the property is `reference::check("grpc_frame", data)` (see
//! tests/decode/reference.rs), the same check `tests/decode.rs` replays on stable Rust for every
//! file in fuzz/seeds/grpc_frame and fuzz/regressions/grpc_frame.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/decode/reference.rs"]
mod reference;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = reference::check("grpc_frame", data) {
        panic!("property violated: {e}");
    }
});
