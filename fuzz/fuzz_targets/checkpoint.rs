//! Checkpoint loading: `config.json`, `preprocessor_config.json` and safetensors files, as
//! the engine loads them. The harness is `fuzz/harness/checkpoint.rs` (shared with
//! `crates/rtdetr/tests/fuzz_regressions.rs`).
#![no_main]

#[path = "../harness/checkpoint.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::checkpoint(data));
