//! `/v1/stream` options messages, parsed and validated as the stream does.
//! The harness is `rtdetr_server::fuzzing::stream_options` (shared with the regression tests).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtdetr_server::fuzzing::stream_options(data));
