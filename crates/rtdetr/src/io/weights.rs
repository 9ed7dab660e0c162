//! Access to a checkpoint's tensors by their Hugging Face key path.
//!
//! The published `PekingU/rtdetr_*` checkpoints were written by transformers 4.x, whose
//! key names differ from what transformers 5 writes (`out_proj` vs `o_proj`, `fc1` vs
//! `mlp.fc1`, `encoder.encoder.N` vs `encoder.aifi.N`). Both layouts load unchanged:
//! each lookup tries the current name, then its legacy spelling.

use std::path::{Path, PathBuf};

use candle_core::{safetensors::MmapedSafetensors, DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::kernels::KernelConfig;

/// The tensors of one checkpoint (memory-mapped safetensors, one or more shards).
pub struct Weights {
    st: MmapedSafetensors,
    files: Vec<PathBuf>,
    device: Device,
    /// The kernels the layers built from these weights run on (like the dtype of
    /// candle's `VarBuilder`).
    kernels: KernelConfig,
}

impl Weights {
    /// Memory-maps `model.safetensors` (or the shards listed in `model.safetensors.index.json`).
    pub fn from_dir(dir: &Path, device: &Device) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shard_files(&index)?
        } else {
            // A missing file rather than a malformed one (Python: FileNotFoundError).
            return Err(Error::NotFound(format!(
                "{}: no model.safetensors (or model.safetensors.index.json) in the model directory",
                dir.display()
            )));
        };
        Self::from_files(files, device)
    }

    pub fn from_files(files: Vec<PathBuf>, device: &Device) -> Result<Self> {
        for f in &files {
            if !f.is_file() {
                return Err(Error::Weights(format!("{}: file not found", f.display())));
            }
        }
        // SAFETY: `MmapedSafetensors::multi` maps the files read-only; the tensors borrow
        // that memory for as long as `st` lives. Mapping is sound only while no one
        // truncates or rewrites the files meanwhile (the OS would then change or unmap
        // memory Rust treats as immutable): like every mmap-based loader, we assume that
        // checkpoints are not modified while a model is loaded from them.
        let st = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| Error::Weights(format!("{}: not a valid safetensors file: {e}", display_files(&files))))?;
        Ok(Self { st, files, device: device.clone(), kernels: KernelConfig::default() })
    }

    /// The same weights, building layers on `kernels`.
    pub fn with_kernels(mut self, kernels: KernelConfig) -> Self {
        self.kernels = kernels;
        self
    }

    pub fn kernels(&self) -> KernelConfig {
        self.kernels
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The key as stored in the file: the current transformers name or its legacy spelling.
    fn resolve(&self, key: &str) -> Option<String> {
        if self.st.get(key).is_ok() {
            return Some(key.to_string());
        }
        legacy_names(key).into_iter().find(|k| self.st.get(k).is_ok())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.resolve(key).is_some()
    }

    /// Loads `key` as f32 and checks its shape.
    pub fn get(&self, key: &str, shape: &[usize]) -> Result<Tensor> {
        let name = self
            .resolve(key)
            .ok_or_else(|| Error::Weights(format!("{}: missing tensor {key:?}", display_files(&self.files))))?;
        let t = self
            .st
            .load(&name, &self.device)
            .map_err(|e| Error::Weights(format!("{}: cannot read tensor {name:?}: {e}", display_files(&self.files))))?;
        if t.dims() != shape {
            return Err(Error::Weights(format!(
                "{}: tensor {name:?} has shape {:?}, expected {:?} from config.json",
                display_files(&self.files),
                t.dims(),
                shape
            )));
        }
        Ok(t.to_dtype(DType::F32)?)
    }
}

fn display_files(files: &[PathBuf]) -> String {
    files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Weights(format!("{}: invalid JSON: {e}", index.display())))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Weights(format!("{}: no weight_map", index.display())))?;
    let mut names: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// Legacy (transformers 4.x) spellings of a current key, most likely first.
fn legacy_names(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut k = key.replace(".o_proj.", ".out_proj.");
    k = k.replace(".mlp.fc1.", ".fc1.").replace(".mlp.fc2.", ".fc2.");
    // D-FINE's feed-forward layers (`DFineMLP`).
    k = k.replace(".mlp.layers.0.", ".fc1.").replace(".mlp.layers.1.", ".fc2.");
    k = k.replace("model.encoder.aifi.", "model.encoder.encoder.");
    if k != key {
        out.push(k.clone());
    }
    // Some exports also tie the decoder heads at the top level.
    for (new, old) in [("model.decoder.class_embed.", "class_embed."), ("model.decoder.bbox_embed.", "bbox_embed.")] {
        if let Some(rest) = k.strip_prefix(new) {
            out.push(format!("{old}{rest}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::legacy_names;

    #[test]
    fn legacy_spellings() {
        assert_eq!(
            legacy_names("model.decoder.layers.0.self_attn.o_proj.weight"),
            vec!["model.decoder.layers.0.self_attn.out_proj.weight".to_string()]
        );
        assert_eq!(
            legacy_names("model.encoder.aifi.0.layers.0.mlp.fc1.bias"),
            vec!["model.encoder.encoder.0.layers.0.fc1.bias".to_string()]
        );
        assert_eq!(
            legacy_names("model.encoder.aifi.0.layers.0.mlp.layers.1.weight"),
            vec!["model.encoder.encoder.0.layers.0.fc2.weight".to_string()]
        );
        assert_eq!(legacy_names("model.decoder.class_embed.2.weight"), vec!["class_embed.2.weight".to_string()]);
        assert!(legacy_names("model.enc_output.0.weight").is_empty());
    }
}
