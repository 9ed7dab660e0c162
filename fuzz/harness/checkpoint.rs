//! Harness of the `checkpoint` fuzz target, also compiled into
//! `crates/rtdetr/tests/fuzz_regressions.rs` (which replays the committed corpus and every
//! crash found on stable). The first byte picks the file, the rest is its content:
//! - 0: `config.json`: parsed and validated, and when valid, the model built from it with the
//!   tiny fixture's weights (loads, or names what mismatches);
//! - 1: `preprocessor_config.json`: parsed, the preprocessor built and run on a small image;
//! - 2: a safetensors file through candle's parser and tensor conversion (what the engine's
//!   memory-mapped loader runs);
//! - 3: `model.safetensors` through the engine's loader, with the fixture's config.json.
//!
//! (A forward pass of each model that loads would take seconds under the sanitizer.)
//!
//! The engine reads checkpoints from files only: each thread writes them to its own scratch
//! directory (in memory where /dev/shm exists).

use std::path::{Path, PathBuf};

use rtdetr::io::config::{ModelConfig, PreprocessorConfig, MAX_INPUT_SIDE};
use rtdetr::io::preprocess::Preprocessor;
use rtdetr::{Detector, LoadOptions};

/// The tiny-bottleneck fixture, from the fuzz crate or from crates/rtdetr.
fn fixture() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    ["../crates/rtdetr/tests/fixtures/tiny-bottleneck", "tests/fixtures/tiny-bottleneck"]
        .iter()
        .map(|p| manifest.join(p))
        .find(|p| p.join("model.safetensors").is_file())
        .and_then(|p| p.canonicalize().ok())
        .expect("the tiny-bottleneck fixture")
}

/// Where the scratch directories go: `rtdetr-fuzz-checkpoint-<pid>-<thread>` under it.
fn scratch_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

struct Dirs {
    root: PathBuf,
    /// config.json under test + the fixture's model.safetensors.
    config: PathBuf,
    /// The fixture's config.json + model.safetensors under test.
    weights: PathBuf,
    /// preprocessor_config.json alone.
    pre: PathBuf,
}

impl Dirs {
    fn new() -> Self {
        let thread = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_alphanumeric(), "");
        let root = scratch_base().join(format!("rtdetr-fuzz-checkpoint-{}-{thread}", std::process::id()));
        let d = Dirs {
            root: root.clone(),
            config: root.join("config"),
            weights: root.join("weights"),
            pre: root.join("pre"),
        };
        for p in [&d.config, &d.weights, &d.pre] {
            std::fs::create_dir_all(p).expect("scratch dir");
        }
        let fixture = fixture();
        let link = d.config.join("model.safetensors");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(fixture.join("model.safetensors"), &link).expect("symlink");
        std::fs::copy(fixture.join("config.json"), d.weights.join("config.json")).expect("fixture config");
        d
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

thread_local! {
    static DIRS: Dirs = Dirs::new();
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("scratch file");
}

pub fn checkpoint(data: &[u8]) {
    let Some((&mode, content)) = data.split_first() else { return };
    DIRS.with(|d| match mode % 4 {
        0 => {
            let path = d.config.join("config.json");
            write(&path, content);
            if let Ok(cfg) = ModelConfig::from_file(&path) {
                assert!(!cfg.labels().is_empty());
                let _ = Detector::from_dir(&d.config, &LoadOptions::default());
            }
        }
        1 => {
            let path = d.pre.join("preprocessor_config.json");
            write(&path, content);
            let Ok(cfg) = PreprocessorConfig::from_file(&path) else { return };
            let Ok(p) = Preprocessor::from_config(&cfg) else { return };
            let (h, w) = p.output_size(3, 2);
            assert!((1..=MAX_INPUT_SIDE).contains(&h) && (1..=MAX_INPUT_SIDE).contains(&w), "input {h}x{w}");
            let _ = p.scratch_bytes(2, 3);
            // What every request runs (only small sizes: a large one takes a second).
            if h * w <= 1 << 20 {
                let img = image::RgbImage::from_pixel(2, 3, image::Rgb([10, 20, 30]));
                let input = p.prepare(&img).expect("a valid preprocessor prepares any image");
                assert_eq!(input.pixels.len(), 3 * h * w);
            }
        }
        2 => {
            if let Ok(tensors) = candle_core::safetensors::load_buffer(content, &candle_core::Device::Cpu) {
                for t in tensors.values() {
                    // At least 4 bits per element are stored (F4 is the smallest type).
                    assert!(t.elem_count() <= 2 * content.len(), "{:?} from {} bytes", t.shape(), content.len());
                }
            }
        }
        3 => {
            write(&d.weights.join("model.safetensors"), content);
            let _ = Detector::from_dir(&d.weights, &LoadOptions::default());
        }
        _ => unreachable!(),
    })
}
