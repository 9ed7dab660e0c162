//! Resolving `--model`: a local checkpoint directory, or a Hugging Face Hub id downloaded
//! with `hf-hub` into the standard cache (`HF_HOME`, `HF_ENDPOINT` are honoured).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The files a checkpoint directory must provide (preprocessor_config.json is optional:
/// the family's defaults apply without it).
pub const CHECKPOINT_FILES: [&str; 3] = ["config.json", "model.safetensors", "preprocessor_config.json"];

/// The default model when none is given.
pub const DEFAULT_MODEL: &str = "PekingU/rtdetr_r50vd";

/// Returns a local directory holding the checkpoint named by `model`.
pub fn resolve_model(model: &str, progress: bool) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        return Err(Error::NotFound(format!("{model}: not a model directory")));
    }
    if !looks_like_hub_id(model) {
        return Err(Error::NotFound(format!(
            "{model}: no such model directory (expected a directory with config.json and model.safetensors, or a Hub id like {DEFAULT_MODEL})"
        )));
    }
    download(model, progress)
}

fn looks_like_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !p.starts_with('.')
        })
}

fn download(repo_id: &str, progress: bool) -> Result<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(progress)
        .build()
        .map_err(|e| Error::Hub(format!("cannot set up the Hugging Face Hub client: {e}")))?;
    let repo = api.model(repo_id.to_string());
    let mut dir = None;
    for file in CHECKPOINT_FILES {
        match repo.get(file) {
            Ok(p) => dir = p.parent().map(Path::to_path_buf),
            Err(e) if file == "preprocessor_config.json" => {
                tracing::warn!("{repo_id}: no preprocessor_config.json ({e}); using the RT-DETR defaults");
            }
            Err(e) => {
                return Err(Error::Hub(format!(
                    "cannot download {file} of {repo_id} from the Hugging Face Hub ({e}). \
                     Without network access, pass a local checkpoint directory, e.g. the bundled demo: --model models/shapes-demo"
                )))
            }
        }
    }
    dir.ok_or_else(|| Error::Hub(format!("{repo_id}: download gave no files")))
}

#[cfg(test)]
mod tests {
    use super::looks_like_hub_id;

    #[test]
    fn hub_ids() {
        assert!(looks_like_hub_id("PekingU/rtdetr_r50vd"));
        assert!(!looks_like_hub_id("models/shapes-demo/"));
        assert!(!looks_like_hub_id("../x"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("single"));
    }
}
