//! The fuzz targets' inputs on stable, through the same harnesses (`rtdetr_server::fuzzing`):
//! every committed corpus file (`fuzz/corpus/<target>`), and one test per crash the fuzzers
//! found (minimized reproducers, inline).

use std::path::PathBuf;

use rtdetr_server::fuzzing;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("corpus file");
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    files
}

/// Runs every corpus file of `target`, naming the file that fails.
fn replay(target: &str, harness: fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        if std::panic::catch_unwind(|| harness(&bytes)).is_err() {
            panic!("fuzz/corpus/{target}/{} fails its harness", path.file_name().unwrap().to_string_lossy());
        }
    }
}

#[test]
fn image_input_corpus() {
    replay("image_input", fuzzing::image_input);
}

#[test]
fn request_json_corpus() {
    replay("request_json", fuzzing::request_json);
}

#[test]
fn multipart_corpus() {
    replay("multipart", fuzzing::multipart);
}

#[test]
fn stream_options_corpus() {
    replay("stream_options", fuzzing::stream_options);
}
