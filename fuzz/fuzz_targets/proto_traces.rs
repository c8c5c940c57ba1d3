//! Fuzz target `proto_traces`: the property is `reference::check("proto_traces", data)` (see
//! tests/decode/reference.rs), the same check `tests/decode.rs` replays on stable Rust for every
//! file in fuzz/seeds/proto_traces and fuzz/regressions/proto_traces.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/decode/reference.rs"]
mod reference;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = reference::check("proto_traces", data) {
        panic!("property violated: {e}");
    }
});
