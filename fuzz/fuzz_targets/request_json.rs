//! JSON bodies of `POST /v1/detections` and `POST /v1/chat/completions`, parsed and validated
//! as the handlers do (body, image references, options).
//! The harness is `rtdetr_server::fuzzing::request_json` (shared with the regression tests).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtdetr_server::fuzzing::request_json(data));
