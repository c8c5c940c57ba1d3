//! Fuzz target `json_metrics`: the property is `reference::check("json_metrics", data)` (see
//! tests/decode/reference.rs), the same check `tests/decode.rs` replays on stable Rust for every
//! file in fuzz/seeds/json_metrics and fuzz/regressions/json_metrics.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/decode/reference.rs"]
mod reference;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = reference::check("json_metrics", data) {
        panic!("property violated: {e}");
    }
});
