//! Configuration structs mirroring transformers' `RTDetrConfig`, `RTDetrResNetConfig`,
//! `RTDetrV2Config`, `DFineConfig` and `HGNetV2Config` (`config/dfine.rs`), and the image
//! processor's `preprocessor_config.json`.
//!
//! Only fields that change the inference graph are read; everything else in the file is
//! ignored. Defaults are transformers' defaults (the r50vd layout).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

mod dfine;
pub use dfine::{DFineConfig, HgNetV2Config, PointsSpec, StrideSpec};

/// Activation functions used by the checkpoints (transformers' `ACT2FN` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Silu,
    /// Exact (erf) GELU, as `nn.GELU()` / `ACT2FN["gelu"]`.
    Gelu,
    /// Tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Identity,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "identity" | "linear" => Self::Identity,
            other => return Err(Error::Config(format!("unsupported activation function {other:?}"))),
        })
    }
}

fn default_num_channels() -> usize {
    3
}
fn default_embedding_size() -> usize {
    64
}
fn default_hidden_sizes() -> Vec<usize> {
    vec![256, 512, 1024, 2048]
}
fn default_depths() -> Vec<usize> {
    vec![3, 4, 6, 3]
}
fn default_layer_type() -> String {
    "bottleneck".into()
}
fn default_relu() -> String {
    "relu".into()
}

/// `RTDetrResNetConfig` (the `backbone_config` entry of config.json).
#[derive(Debug, Clone, Deserialize)]
pub struct ResNetConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default = "default_num_channels")]
    pub num_channels: usize,
    #[serde(default = "default_embedding_size")]
    pub embedding_size: usize,
    #[serde(default = "default_hidden_sizes")]
    pub hidden_sizes: Vec<usize>,
    #[serde(default = "default_depths")]
    pub depths: Vec<usize>,
    #[serde(default = "default_layer_type")]
    pub layer_type: String,
    #[serde(default = "default_relu")]
    pub hidden_act: String,
    #[serde(default)]
    pub downsample_in_first_stage: bool,
    #[serde(default)]
    pub downsample_in_bottleneck: bool,
    #[serde(default)]
    pub out_features: Option<Vec<String>>,
    #[serde(default)]
    pub out_indices: Option<Vec<usize>>,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults parse")
    }
}

impl ResNetConfig {
    /// Stage indices (1-based stage numbers, as in `stage1..stage4`) whose outputs feed the encoder.
    pub fn out_stage_indices(&self) -> Result<Vec<usize>> {
        if let Some(names) = &self.out_features {
            names
                .iter()
                .map(|n| {
                    n.strip_prefix("stage")
                        .and_then(|i| i.parse::<usize>().ok())
                        .filter(|&i| i >= 1 && i <= self.depths.len())
                        .ok_or_else(|| Error::Config(format!("backbone out_features: bad stage {n:?}")))
                })
                .collect()
        } else if let Some(idx) = &self.out_indices {
            idx.iter()
                .map(|&i| {
                    if i >= 1 && i <= self.depths.len() {
                        Ok(i)
                    } else {
                        Err(Error::Config(format!("backbone out_indices: bad index {i}")))
                    }
                })
                .collect()
        } else {
            // RTDetrConfig's default backbone: out_indices [2, 3, 4].
            Ok(vec![2, 3, 4])
        }
    }
}

macro_rules! defaults {
    ($($name:ident: $ty:ty = $val:expr;)*) => {
        $(fn $name() -> $ty { $val })*
    };
}

defaults! {
    d_layer_norm_eps: f64 = 1e-5;
    d_batch_norm_eps: f64 = 1e-5;
    d_encoder_hidden_dim: usize = 256;
    d_encoder_in_channels: Vec<usize> = vec![512, 1024, 2048];
    d_feat_strides: Vec<usize> = vec![8, 16, 32];
    d_encoder_layers: usize = 1;
    d_encoder_ffn_dim: usize = 1024;
    d_encoder_attention_heads: usize = 8;
    d_encode_proj_layers: Vec<usize> = vec![2];
    d_pos_temperature: f64 = 10000.0;
    d_gelu: String = "gelu".into();
    d_silu: String = "silu".into();
    d_relu: String = "relu".into();
    d_hidden_expansion: f64 = 1.0;
    d_d_model: usize = 256;
    d_num_queries: usize = 300;
    d_decoder_in_channels: Vec<usize> = vec![256, 256, 256];
    d_decoder_ffn_dim: usize = 1024;
    d_num_feature_levels: usize = 3;
    d_decoder_n_points: usize = 4;
    d_decoder_layers: usize = 6;
    d_decoder_attention_heads: usize = 8;
    d_true: bool = true;
}

/// `RTDetrConfig` as stored in a checkpoint's config.json.
#[derive(Debug, Clone, Deserialize)]
pub struct RtDetrConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub backbone_config: Option<ResNetConfig>,
    #[serde(default = "d_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_batch_norm_eps")]
    pub batch_norm_eps: f64,
    #[serde(default = "d_encoder_hidden_dim")]
    pub encoder_hidden_dim: usize,
    #[serde(default = "d_encoder_in_channels")]
    pub encoder_in_channels: Vec<usize>,
    #[serde(default = "d_feat_strides")]
    pub feat_strides: Vec<usize>,
    #[serde(default = "d_encoder_layers")]
    pub encoder_layers: usize,
    #[serde(default = "d_encoder_ffn_dim")]
    pub encoder_ffn_dim: usize,
    #[serde(default = "d_encoder_attention_heads")]
    pub encoder_attention_heads: usize,
    #[serde(default = "d_encode_proj_layers")]
    pub encode_proj_layers: Vec<usize>,
    #[serde(default = "d_pos_temperature")]
    pub positional_encoding_temperature: f64,
    #[serde(default = "d_gelu")]
    pub encoder_activation_function: String,
    #[serde(default = "d_silu")]
    pub activation_function: String,
    #[serde(default)]
    pub eval_size: Option<serde_json::Value>,
    #[serde(default)]
    pub normalize_before: bool,
    #[serde(default = "d_hidden_expansion")]
    pub hidden_expansion: f64,
    #[serde(default = "d_d_model")]
    pub d_model: usize,
    #[serde(default = "d_num_queries")]
    pub num_queries: usize,
    #[serde(default = "d_decoder_in_channels")]
    pub decoder_in_channels: Vec<usize>,
    #[serde(default = "d_decoder_ffn_dim")]
    pub decoder_ffn_dim: usize,
    #[serde(default = "d_num_feature_levels")]
    pub num_feature_levels: usize,
    #[serde(default = "d_decoder_n_points")]
    pub decoder_n_points: usize,
    #[serde(default = "d_decoder_layers")]
    pub decoder_layers: usize,
    #[serde(default = "d_decoder_attention_heads")]
    pub decoder_attention_heads: usize,
    #[serde(default = "d_relu")]
    pub decoder_activation_function: String,
    #[serde(default)]
    pub learn_initial_query: bool,
    #[serde(default)]
    pub anchor_image_size: Option<serde_json::Value>,
    #[serde(default = "d_true")]
    pub with_box_refine: bool,
    #[serde(default)]
    pub freeze_backbone_batch_norms: Option<bool>,
    #[serde(default)]
    pub id2label: BTreeMap<String, String>,
    #[serde(default)]
    pub num_labels: Option<usize>,
}

/// Most classes a checkpoint may have (LVIS has 1203): [`RtDetrConfig::labels`] makes one
/// name per class.
pub const MAX_LABELS: usize = 1 << 16;

/// A checkpoint's `config.json`, one variant per architecture (its `model_type`).
#[derive(Debug, Clone)]
pub enum ModelConfig {
    /// `"rt_detr"` (also assumed when config.json names no `model_type`).
    RtDetr(RtDetrConfig),
    /// `"rt_detr_v2"`: RT-DETR's graph with RT-DETRv2's decoder cross-attention.
    RtDetrV2(RtDetrV2Config),
    /// `"d_fine"`: D-FINE (HGNetV2 backbone, RepNCSPELAN4 encoder, decoder with
    /// fine-grained distribution refinement).
    DFine(Box<DFineConfig>),
}

/// The `model_type`s this engine runs.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["rt_detr", "rt_detr_v2", "d_fine"];

fn d_decoder_n_levels() -> usize {
    3
}
fn d_decoder_offset_scale() -> f64 {
    0.5
}
fn d_decoder_method() -> String {
    "default".into()
}

/// `RTDetrV2Config`: every `RTDetrConfig` field plus the decoder's sampling settings.
#[derive(Debug, Clone, Deserialize)]
pub struct RtDetrV2Config {
    #[serde(flatten)]
    pub base: RtDetrConfig,
    /// Feature levels the decoder's cross-attention samples.
    #[serde(default = "d_decoder_n_levels")]
    pub decoder_n_levels: usize,
    /// Scale of the sampling offsets (relative to the reference box).
    #[serde(default = "d_decoder_offset_scale")]
    pub decoder_offset_scale: f64,
    /// `"default"` (bilinear) or `"discrete"` (the nearest cell).
    #[serde(default = "d_decoder_method")]
    pub decoder_method: String,
}

impl RtDetrV2Config {
    fn validate(&self) -> std::result::Result<(), String> {
        self.base.validate()?;
        if self.decoder_n_levels != self.base.num_feature_levels {
            return Err(format!(
                "decoder_n_levels {} must equal num_feature_levels {}",
                self.decoder_n_levels, self.base.num_feature_levels
            ));
        }
        if !self.decoder_offset_scale.is_finite() {
            return Err("decoder_offset_scale must be finite".into());
        }
        match self.decoder_method.as_str() {
            "default" | "discrete" => Ok(()),
            other => Err(format!("decoder_method must be \"default\" or \"discrete\", got {other:?}")),
        }
    }
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json = |source| Error::Json { path: path.to_path_buf(), what: "config.json", source };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(json)?;
        let model_type = match value.get("model_type") {
            None | Some(serde_json::Value::Null) => "rt_detr".to_string(),
            Some(serde_json::Value::String(t)) => t.clone(),
            Some(other) => {
                return Err(Error::Config(format!("{}: model_type must be a string, got {other}", path.display())))
            }
        };
        let cfg = match model_type.as_str() {
            "rt_detr" => ModelConfig::RtDetr(serde_json::from_value(value).map_err(json)?),
            "rt_detr_v2" => ModelConfig::RtDetrV2(serde_json::from_value(value).map_err(json)?),
            "d_fine" => ModelConfig::DFine(serde_json::from_value(value).map_err(json)?),
            other => {
                return Err(Error::Config(format!(
                    "{}: unsupported model_type {other:?}: this engine runs {} checkpoints",
                    path.display(),
                    SUPPORTED_MODEL_TYPES.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ")
                )))
            }
        };
        match &cfg {
            ModelConfig::RtDetr(c) => c.validate(),
            ModelConfig::RtDetrV2(c) => c.validate(),
            ModelConfig::DFine(c) => c.validate(),
        }
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Class names indexed by class id.
    pub fn labels(&self) -> Vec<String> {
        match self {
            ModelConfig::RtDetr(c) => c.labels(),
            ModelConfig::RtDetrV2(c) => c.base.labels(),
            ModelConfig::DFine(c) => c.labels(),
        }
    }
}

impl RtDetrConfig {
    pub fn backbone(&self) -> ResNetConfig {
        self.backbone_config.clone().unwrap_or_default()
    }

    /// Number of classes: `len(id2label)`, else `num_labels`, else 80.
    pub fn num_labels(&self) -> usize {
        num_labels_from(&self.id2label, self.num_labels)
    }

    /// Class names indexed by class id (`"LABEL_i"` where config.json has none).
    pub fn labels(&self) -> Vec<String> {
        labels_from(&self.id2label, self.num_labels())
    }

    /// The model uses the learned position embedding of the AIFI layer only when
    /// `eval_size` is unset (transformers drops it otherwise at inference).
    pub fn aifi_uses_pos_embed(&self) -> bool {
        matches!(self.eval_size, None | Some(serde_json::Value::Null))
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let bb = self.backbone();
        if let Some(t) = &bb.model_type {
            if t != "rt_detr_resnet" {
                return Err(format!("unsupported backbone model_type {t:?} (expected \"rt_detr_resnet\")"));
            }
        }
        if bb.layer_type != "basic" && bb.layer_type != "bottleneck" {
            return Err(format!("backbone layer_type must be basic or bottleneck, got {:?}", bb.layer_type));
        }
        if bb.depths.len() != bb.hidden_sizes.len() || bb.depths.is_empty() {
            return Err("backbone depths and hidden_sizes must have the same non-zero length".into());
        }
        if self.num_feature_levels < self.decoder_in_channels.len() {
            return Err("num_feature_levels must be >= len(decoder_in_channels)".into());
        }
        SharedShape {
            backbone_outputs: bb.out_stage_indices().map_err(|e| e.to_string())?.len(),
            encoder_in_channels: &self.encoder_in_channels,
            feat_strides: &self.feat_strides,
            encode_proj_layers: &self.encode_proj_layers,
            encoder_hidden_dim: self.encoder_hidden_dim,
            encoder_attention_heads: self.encoder_attention_heads,
            d_model: self.d_model,
            decoder_attention_heads: self.decoder_attention_heads,
            decoder_layers: self.decoder_layers,
            decoder_in_channels: &self.decoder_in_channels,
            num_queries: self.num_queries,
            learn_initial_query: self.learn_initial_query,
            num_labels: self.num_labels(),
            activations: &[
                &self.activation_function,
                &self.encoder_activation_function,
                &self.decoder_activation_function,
                &bb.hidden_act,
            ],
        }
        .validate()
    }
}

/// What RT-DETR's and D-FINE's configs have in common (the hybrid encoder's levels and
/// attention, the decoder's attention and depth, queries, labels, activations), validated
/// by one function.
pub(crate) struct SharedShape<'a> {
    /// Feature maps the backbone gives the encoder.
    pub backbone_outputs: usize,
    pub encoder_in_channels: &'a [usize],
    pub feat_strides: &'a [usize],
    pub encode_proj_layers: &'a [usize],
    pub encoder_hidden_dim: usize,
    pub encoder_attention_heads: usize,
    pub d_model: usize,
    pub decoder_attention_heads: usize,
    pub decoder_layers: usize,
    pub decoder_in_channels: &'a [usize],
    pub num_queries: usize,
    pub learn_initial_query: bool,
    pub num_labels: usize,
    /// Every activation function name the checkpoint uses.
    pub activations: &'a [&'a str],
}

impl SharedShape<'_> {
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        let levels = self.encoder_in_channels.len();
        if self.backbone_outputs != levels {
            return Err(format!(
                "backbone has {} output stages but encoder_in_channels has {levels} entries",
                self.backbone_outputs
            ));
        }
        if levels < 2 {
            return Err("the hybrid encoder needs at least two feature levels".into());
        }
        if self.feat_strides.len() != levels {
            return Err("feat_strides and encoder_in_channels must have the same length".into());
        }
        if self.feat_strides.contains(&0) {
            return Err("feat_strides must be positive".into());
        }
        if let Some(&l) = self.encode_proj_layers.iter().find(|&&l| l >= levels) {
            return Err(format!("encode_proj_layers entry {l} out of range"));
        }
        if self.encoder_attention_heads == 0 || !self.encoder_hidden_dim.is_multiple_of(self.encoder_attention_heads) {
            return Err("encoder_hidden_dim must be divisible by encoder_attention_heads".into());
        }
        if self.encoder_hidden_dim == 0 || !self.encoder_hidden_dim.is_multiple_of(4) {
            return Err("encoder_hidden_dim must be a positive multiple of 4 (2D sin-cos embedding)".into());
        }
        if self.decoder_attention_heads == 0 || !self.d_model.is_multiple_of(self.decoder_attention_heads) {
            return Err("d_model must be divisible by decoder_attention_heads".into());
        }
        if self.decoder_layers == 0 {
            return Err("decoder_layers must be at least 1".into());
        }
        if self.decoder_in_channels.len() != levels {
            return Err("decoder_in_channels must have one entry per encoder level".into());
        }
        if self.num_queries == 0 {
            return Err("num_queries must be at least 1".into());
        }
        if self.learn_initial_query {
            return Err("learn_initial_query=true is not supported".into());
        }
        if self.num_labels == 0 {
            return Err("the checkpoint has no labels".into());
        }
        if self.num_labels > MAX_LABELS {
            return Err(format!("num_labels {} is above the largest supported {MAX_LABELS}", self.num_labels));
        }
        for name in self.activations {
            Activation::parse(name).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Number of classes of a checkpoint: `len(id2label)`, else `num_labels`, else 80.
fn num_labels_from(id2label: &BTreeMap<String, String>, num_labels: Option<usize>) -> usize {
    if !id2label.is_empty() {
        id2label.len()
    } else {
        num_labels.unwrap_or(80)
    }
}

/// `n` class names indexed by class id (`"LABEL_i"` where `id2label` has none).
fn labels_from(id2label: &BTreeMap<String, String>, n: usize) -> Vec<String> {
    (0..n).map(|i| id2label.get(&i.to_string()).cloned().unwrap_or_else(|| format!("LABEL_{i}"))).collect()
}

/// Largest input side `preprocessor_config.json` may ask for (the checkpoints use 640): the
/// model's input alone takes 15 bytes per pixel, about 1 GiB at 8192 x 8192.
pub const MAX_INPUT_SIDE: usize = 8192;

/// `preprocessor_config.json` of the RT-DETR image processor.
#[derive(Debug, Clone, Deserialize)]
pub struct PreprocessorConfig {
    #[serde(default = "d_true")]
    pub do_resize: bool,
    #[serde(default)]
    pub size: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub resample: Option<u32>,
    #[serde(default = "d_true")]
    pub do_rescale: bool,
    #[serde(default)]
    pub rescale_factor: Option<f64>,
    #[serde(default)]
    pub do_normalize: bool,
    #[serde(default)]
    pub image_mean: Option<Vec<f64>>,
    #[serde(default)]
    pub image_std: Option<Vec<f64>>,
    #[serde(default)]
    pub do_pad: bool,
}

impl Default for PreprocessorConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults parse")
    }
}

impl PreprocessorConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            what: "preprocessor_config.json",
            source,
        })
    }

    /// Target `(height, width)`; 640x640 when unset. Sides above [`MAX_INPUT_SIDE`] are
    /// refused: every image would be resized to that size before any other check.
    pub fn target_size(&self) -> Result<(usize, usize)> {
        let Some(size) = &self.size else { return Ok((640, 640)) };
        let get = |k: &str| size.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
        match (get("height"), get("width")) {
            (Some(h), Some(w)) if h > MAX_INPUT_SIDE || w > MAX_INPUT_SIDE => Err(Error::Config(format!(
                "preprocessor_config.json: size {h}x{w} is above the largest supported side of {MAX_INPUT_SIDE}"
            ))),
            (Some(h), Some(w)) if h > 0 && w > 0 => Ok((h, w)),
            _ => Err(Error::Config(format!(
                "preprocessor_config.json: only size {{\"height\", \"width\"}} is supported, got {size:?}"
            ))),
        }
    }
}
