//! The `checkpoint` fuzz target's inputs on stable, through its harness
//! (`fuzz/harness/checkpoint.rs`, compiled here unchanged): every committed corpus file
//! (`fuzz/corpus/checkpoint`), and one test per crash found (minimized reproducers, inline).

#[path = "../../../fuzz/harness/checkpoint.rs"]
mod harness;

use std::path::PathBuf;

use rtdetr::io::config::PreprocessorConfig;
use rtdetr::io::preprocess::Preprocessor;

#[test]
fn checkpoint_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/checkpoint");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("fuzz/corpus/checkpoint").map(|e| e.expect("entry").path()).collect();
    files.sort();
    assert!(!files.is_empty());
    for path in files {
        let bytes = std::fs::read(&path).expect("corpus file");
        if std::panic::catch_unwind(|| harness::checkpoint(&bytes)).is_err() {
            panic!("fuzz/corpus/checkpoint/{} fails its harness", path.file_name().unwrap().to_string_lossy());
        }
    }
}

/// Found by the `checkpoint` harness: a preprocessor_config.json asking for a 100000 x 100000
/// input loaded fine, then the first image's preprocessing allocated 30 GB (out-of-memory
/// abort; past 2^32 per side the size arithmetic overflowed). Such sizes are now refused
/// when the checkpoint loads.
#[test]
fn huge_preprocessor_size_is_refused_at_load() {
    for input in [
        &b"\x01{\"size\":{\"height\":100000,\"width\":100000}}"[..],
        &b"\x01{\"size\":{\"height\":4294967296,\"width\":4294967296}}"[..],
        &b"\x01{\"size\":{\"height\":8193,\"width\":640}}"[..],
    ] {
        harness::checkpoint(input);
        let cfg: PreprocessorConfig = serde_json::from_slice(&input[1..]).unwrap();
        let err = Preprocessor::from_config(&cfg).unwrap_err().to_string();
        assert!(err.contains("above the largest supported side"), "{err}");
    }
    let cfg: PreprocessorConfig = serde_json::from_str(r#"{"size":{"height":8192,"width":32}}"#).unwrap();
    assert_eq!(Preprocessor::from_config(&cfg).unwrap().size, Some((8192, 32)));
}

/// Found by the `checkpoint` harness: a config.json with `"num_labels": 100000000000` and no
/// `id2label` passed validation, and `ModelConfig::labels()` then allocated a name per class
/// (out-of-memory abort). Such counts are now refused when config.json is read.
#[test]
fn huge_num_labels_is_refused() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bottleneck/config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
    cfg["id2label"] = serde_json::json!({});
    cfg["label2id"] = serde_json::json!({});
    cfg["num_labels"] = serde_json::json!(100_000_000_000u64);
    let text = serde_json::to_vec(&cfg).unwrap();
    harness::checkpoint(&[&[0u8][..], &text].concat());
    let dir = std::env::temp_dir().join(format!("rtdetr-fuzz-regression-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(&path, &text).unwrap();
    let err = rtdetr::io::config::ModelConfig::from_file(&path).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.contains("num_labels 100000000000 is above"), "{err}");
}
