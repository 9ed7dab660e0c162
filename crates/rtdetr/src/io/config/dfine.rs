//! D-FINE's `config.json` (`model_type: "d_fine"`): transformers' `DFineConfig` and its
//! `backbone_config`, `HGNetV2Config`.
//!
//! Only fields that change the inference graph are read (training-only fields such as the
//! matcher and loss weights are ignored). Defaults are transformers' defaults.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{labels_from, num_labels_from, Activation, SharedShape};

/// A stride in `HGNetV2Config` (`int | list[int]`): one value, or `[height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum StrideSpec {
    One(usize),
    Pair([usize; 2]),
}

impl StrideSpec {
    /// The stride when it is the same along both axes (the only kind the engine runs).
    pub fn square(self) -> Option<usize> {
        match self {
            StrideSpec::One(s) => Some(s),
            StrideSpec::Pair([h, w]) if h == w => Some(h),
            StrideSpec::Pair(_) => None,
        }
    }
}

macro_rules! defaults {
    ($($name:ident: $ty:ty = $val:expr;)*) => {
        $(fn $name() -> $ty { $val })*
    };
}

defaults! {
    d_num_channels: usize = 3;
    d_embedding_size: usize = 64;
    d_depths: Vec<usize> = vec![3, 4, 6, 3];
    d_hidden_sizes: Vec<usize> = vec![256, 512, 1024, 2048];
    d_relu: String = "relu".into();
    d_stem_channels: Vec<usize> = vec![3, 32, 48];
    d_stem_strides: Vec<StrideSpec> = [2, 1, 1, 2, 1].map(StrideSpec::One).to_vec();
    d_stage_in_channels: Vec<usize> = vec![48, 128, 512, 1024];
    d_stage_mid_channels: Vec<usize> = vec![48, 96, 192, 384];
    d_stage_out_channels: Vec<usize> = vec![128, 512, 1024, 2048];
    d_stage_num_blocks: Vec<usize> = vec![1, 1, 3, 1];
    d_stage_downsample: Vec<bool> = vec![false, true, true, true];
    d_stage_downsample_strides: Vec<StrideSpec> = [2, 2, 2, 2].map(StrideSpec::One).to_vec();
    d_stage_light_block: Vec<bool> = vec![false, false, true, true];
    d_stage_kernel_size: Vec<usize> = vec![3, 3, 5, 5];
    d_stage_numb_of_layers: Vec<usize> = vec![6, 6, 6, 6];
}

/// `HGNetV2Config` (the `backbone_config` entry of a D-FINE config.json).
#[derive(Debug, Clone, Deserialize)]
pub struct HgNetV2Config {
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default = "d_num_channels")]
    pub num_channels: usize,
    #[serde(default = "d_embedding_size")]
    pub embedding_size: usize,
    #[serde(default = "d_depths")]
    pub depths: Vec<usize>,
    /// Channels the backbone announces per stage (`BackboneMixin.channels`): the input
    /// widths of D-FINE's encoder projections. They must equal `stage_out_channels`.
    #[serde(default = "d_hidden_sizes")]
    pub hidden_sizes: Vec<usize>,
    #[serde(default = "d_relu")]
    pub hidden_act: String,
    #[serde(default)]
    pub out_features: Option<Vec<String>>,
    #[serde(default)]
    pub out_indices: Option<Vec<usize>>,
    /// `[input channels, stem width, stem output channels]`.
    #[serde(default = "d_stem_channels")]
    pub stem_channels: Vec<usize>,
    /// Strides of stem1, stem2a, stem2b, stem3, stem4.
    #[serde(default = "d_stem_strides")]
    pub stem_strides: Vec<StrideSpec>,
    #[serde(default = "d_stage_in_channels")]
    pub stage_in_channels: Vec<usize>,
    #[serde(default = "d_stage_mid_channels")]
    pub stage_mid_channels: Vec<usize>,
    #[serde(default = "d_stage_out_channels")]
    pub stage_out_channels: Vec<usize>,
    #[serde(default = "d_stage_num_blocks")]
    pub stage_num_blocks: Vec<usize>,
    #[serde(default = "d_stage_downsample")]
    pub stage_downsample: Vec<bool>,
    #[serde(default = "d_stage_downsample_strides")]
    pub stage_downsample_strides: Vec<StrideSpec>,
    #[serde(default = "d_stage_light_block")]
    pub stage_light_block: Vec<bool>,
    #[serde(default = "d_stage_kernel_size")]
    pub stage_kernel_size: Vec<usize>,
    #[serde(default = "d_stage_numb_of_layers")]
    pub stage_numb_of_layers: Vec<usize>,
    #[serde(default)]
    pub use_learnable_affine_block: bool,
}

impl Default for HgNetV2Config {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults parse")
    }
}

impl HgNetV2Config {
    /// Number of HG stages.
    pub fn num_stages(&self) -> usize {
        self.stage_in_channels.len()
    }

    /// Stage numbers (1-based, as in `stage1..stageN`) whose outputs the backbone returns:
    /// `out_features`, else `out_indices`, else D-FINE's default `[2, 3, 4]`.
    pub fn out_stage_indices(&self) -> std::result::Result<Vec<usize>, String> {
        let n = self.num_stages();
        let idx: Vec<usize> = if let Some(names) = &self.out_features {
            names
                .iter()
                .map(|s| {
                    s.strip_prefix("stage")
                        .and_then(|i| i.parse::<usize>().ok())
                        .ok_or_else(|| format!("backbone out_features: unsupported feature {s:?}"))
                })
                .collect::<std::result::Result<_, _>>()?
        } else if let Some(idx) = &self.out_indices {
            idx.clone()
        } else {
            vec![2, 3, 4]
        };
        if let Some(bad) = idx.iter().find(|&&i| i < 1 || i > n) {
            return Err(format!("backbone output stage {bad} out of range 1..={n}"));
        }
        if idx.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("backbone output stages must be increasing, got {idx:?}"));
        }
        Ok(idx)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(t) = &self.model_type {
            if t != "hgnet_v2" {
                return Err(format!("unsupported D-FINE backbone model_type {t:?} (expected \"hgnet_v2\")"));
            }
        }
        let n = self.num_stages();
        let lens = [
            self.stage_mid_channels.len(),
            self.stage_out_channels.len(),
            self.stage_num_blocks.len(),
            self.stage_downsample.len(),
            self.stage_downsample_strides.len(),
            self.stage_light_block.len(),
            self.stage_kernel_size.len(),
            self.stage_numb_of_layers.len(),
        ];
        if n == 0 || lens.iter().any(|&l| l != n) {
            return Err("backbone stage lists must all have the same non-zero length".into());
        }
        if self.stem_channels.len() != 3 || self.stem_channels.contains(&0) {
            return Err(format!("backbone stem_channels must be 3 positive widths, got {:?}", self.stem_channels));
        }
        if self.stem_channels[0] != self.num_channels {
            return Err("backbone stem_channels[0] must equal num_channels".into());
        }
        if self.stem_channels[1] < 2 {
            return Err("backbone stem width stem_channels[1] must be at least 2".into());
        }
        if self.stem_strides.len() != 5 {
            return Err(format!("backbone stem_strides must have 5 entries, got {}", self.stem_strides.len()));
        }
        for s in self.stem_strides.iter().chain(&self.stage_downsample_strides) {
            match s.square() {
                Some(v) if v >= 1 => {}
                Some(_) => return Err("backbone strides must be positive".into()),
                None => return Err(format!("backbone stride {s:?}: only equal strides along both axes are supported")),
            }
        }
        if self.stage_in_channels[0] != self.stem_channels[2] {
            return Err("backbone stage_in_channels[0] must equal the stem's output channels".into());
        }
        for s in 1..n {
            if self.stage_in_channels[s] != self.stage_out_channels[s - 1] {
                return Err(format!("backbone stage_in_channels[{s}] must equal stage_out_channels[{}]", s - 1));
            }
        }
        for s in 0..n {
            if self.stage_num_blocks[s] == 0 || self.stage_numb_of_layers[s] == 0 {
                return Err("backbone stages need at least one block of at least one layer".into());
            }
            if self.stage_mid_channels[s] == 0 || self.stage_out_channels[s] < 2 {
                return Err("backbone stage widths must be positive (out channels at least 2)".into());
            }
            if self.stage_kernel_size[s] == 0 {
                return Err("backbone stage_kernel_size entries must be positive".into());
            }
        }
        for &i in &self.out_stage_indices()? {
            if self.hidden_sizes.get(i - 1) != Some(&self.stage_out_channels[i - 1]) {
                return Err(format!(
                    "backbone hidden_sizes[{}] must equal stage_out_channels[{}] = {} (the encoder's input width)",
                    i - 1,
                    i - 1,
                    self.stage_out_channels[i - 1]
                ));
            }
        }
        Activation::parse(&self.hidden_act).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// `decoder_n_points` (`int | list[int]`): sampling points per level, for every level or
/// level by level.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PointsSpec {
    All(usize),
    PerLevel(Vec<usize>),
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
    d_hidden_expansion: f64 = 1.0;
    d_d_model: usize = 256;
    d_num_queries: usize = 300;
    d_decoder_in_channels: Vec<usize> = vec![256, 256, 256];
    d_decoder_ffn_dim: usize = 1024;
    d_num_feature_levels: usize = 3;
    d_decoder_n_points: PointsSpec = PointsSpec::All(4);
    d_decoder_layers: usize = 6;
    d_decoder_attention_heads: usize = 8;
    d_true: bool = true;
    d_eval_idx: i64 = -1;
    d_layer_scale: f64 = 1.0;
    d_max_num_bins: usize = 32;
    d_reg_scale: f64 = 4.0;
    d_depth_mult: f64 = 1.0;
    d_top_prob_values: usize = 4;
    d_lqe_hidden_dim: usize = 64;
    d_lqe_layers: usize = 2;
    d_decoder_offset_scale: f64 = 0.5;
    d_decoder_method: String = "default".into();
    d_up: f64 = 0.5;
}

/// `DFineConfig` as stored in a checkpoint's config.json.
#[derive(Debug, Clone, Deserialize)]
pub struct DFineConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub backbone_config: Option<HgNetV2Config>,
    #[serde(default = "d_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_batch_norm_eps")]
    pub batch_norm_eps: f64,
    #[serde(default = "d_true")]
    pub freeze_backbone_batch_norms: bool,
    // Hybrid encoder.
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
    /// Scales the RepVGG blocks per CSP layer: `round(3 * depth_mult)`.
    #[serde(default = "d_depth_mult")]
    pub depth_mult: f64,
    // Decoder.
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
    pub decoder_n_points: PointsSpec,
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
    #[serde(default = "d_decoder_offset_scale")]
    pub decoder_offset_scale: f64,
    /// `"default"` (bilinear) or `"discrete"` (the nearest cell).
    #[serde(default = "d_decoder_method")]
    pub decoder_method: String,
    /// The decoder layer whose heads predict at inference; negative counts from the end.
    #[serde(default = "d_eval_idx")]
    pub eval_idx: i64,
    #[serde(default = "d_layer_scale")]
    pub layer_scale: f64,
    // Fine-grained distribution refinement.
    #[serde(default = "d_max_num_bins")]
    pub max_num_bins: usize,
    #[serde(default = "d_reg_scale")]
    pub reg_scale: f64,
    #[serde(default = "d_up")]
    pub up: f64,
    #[serde(default = "d_top_prob_values")]
    pub top_prob_values: usize,
    #[serde(default = "d_lqe_hidden_dim")]
    pub lqe_hidden_dim: usize,
    #[serde(default = "d_lqe_layers")]
    pub lqe_layers: usize,
    /// Whether the top-level `class_embed` / `bbox_embed` share the decoder's heads
    /// (only the file's layout changes: each layer keeps its own head either way).
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub id2label: BTreeMap<String, String>,
    #[serde(default)]
    pub num_labels: Option<usize>,
}

impl DFineConfig {
    pub fn backbone(&self) -> HgNetV2Config {
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

    /// The AIFI layers add the sin-cos position embedding only when `eval_size` is unset
    /// (as in RT-DETR).
    pub fn aifi_uses_pos_embed(&self) -> bool {
        matches!(self.eval_size, None | Some(serde_json::Value::Null))
    }

    /// Sampling points of each feature level.
    pub fn points_per_level(&self) -> Vec<usize> {
        match &self.decoder_n_points {
            PointsSpec::All(n) => vec![*n; self.num_feature_levels],
            PointsSpec::PerLevel(v) => v.clone(),
        }
    }

    /// `eval_idx` as a layer index (validated to lie in `0..decoder_layers`).
    pub fn eval_layer(&self) -> usize {
        let n = self.decoder_layers as i64;
        (if self.eval_idx >= 0 { self.eval_idx } else { n + self.eval_idx }).clamp(0, (n - 1).max(0)) as usize
    }

    /// RepVGG blocks per CSP layer of the encoder's RepNCSPELAN4 blocks:
    /// `round(3 * depth_mult)` (Python's round half to even).
    pub fn csp_blocks(&self) -> usize {
        (3.0 * self.depth_mult).round_ties_even() as usize
    }

    /// Width of the RepNCSPELAN4 branches: `round(hidden_expansion * encoder_hidden_dim // 2)`.
    pub fn elan_branch_dim(&self) -> usize {
        (self.hidden_expansion * self.encoder_hidden_dim as f64 / 2.0).floor() as usize
    }

    pub(super) fn validate(&self) -> std::result::Result<(), String> {
        let bb = self.backbone();
        bb.validate()?;
        let levels = self.encoder_in_channels.len();
        SharedShape {
            backbone_outputs: bb.out_stage_indices()?.len(),
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
            ],
        }
        .validate()?;
        for (name, v) in [
            ("hidden_expansion", self.hidden_expansion),
            ("depth_mult", self.depth_mult),
            ("layer_scale", self.layer_scale),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} must be positive and finite, got {v}"));
            }
        }
        if self.csp_blocks() > 64 || self.elan_branch_dim() == 0 || self.elan_branch_dim() > 1 << 16 {
            return Err("depth_mult or hidden_expansion out of range".into());
        }
        let n = self.decoder_layers as i64;
        if self.eval_idx >= n || self.eval_idx < -n {
            return Err(format!("eval_idx {} out of range for {n} decoder layers", self.eval_idx));
        }
        if self.num_feature_levels != levels {
            // transformers would add levels by strided convolutions of the last map; no
            // D-FINE checkpoint does.
            return Err(format!(
                "num_feature_levels {} must equal the encoder's {levels} levels (extra decoder levels are not supported)",
                self.num_feature_levels
            ));
        }
        let points = self.points_per_level();
        if points.len() != self.num_feature_levels || points.contains(&0) {
            return Err(format!(
                "decoder_n_points must give a positive count for each of the {} feature levels",
                self.num_feature_levels
            ));
        }
        match self.decoder_method.as_str() {
            "default" | "discrete" => {}
            other => return Err(format!("decoder_method must be \"default\" or \"discrete\", got {other:?}")),
        }
        for (name, v) in
            [("decoder_offset_scale", self.decoder_offset_scale), ("reg_scale", self.reg_scale), ("up", self.up)]
        {
            if !v.is_finite() {
                return Err(format!("{name} must be finite"));
            }
        }
        // The weighting function has max_num_bins + 1 values only for an even count of at
        // least 4 (transformers fails otherwise).
        if self.max_num_bins < 4 || !self.max_num_bins.is_multiple_of(2) || self.max_num_bins > 1 << 12 {
            return Err(format!("max_num_bins must be an even number from 4 to 4096, got {}", self.max_num_bins));
        }
        if self.top_prob_values == 0 || self.top_prob_values > self.max_num_bins + 1 {
            return Err("top_prob_values must be in 1..=max_num_bins + 1".into());
        }
        if self.lqe_layers == 0 {
            return Err("lqe_layers must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_transformers_defaults() {
        let c: DFineConfig = serde_json::from_str(r#"{"model_type": "d_fine"}"#).unwrap();
        c.validate().unwrap();
        assert_eq!(c.points_per_level(), vec![4, 4, 4]);
        assert_eq!(c.eval_layer(), 5);
        assert_eq!(c.csp_blocks(), 3);
        assert_eq!(c.elan_branch_dim(), 128);
        assert_eq!(c.num_labels(), 80);
        let bb = c.backbone();
        assert_eq!(bb.out_stage_indices().unwrap(), vec![2, 3, 4]);
        assert_eq!(bb.stem_strides[3], StrideSpec::One(2));
    }

    #[test]
    fn nano_shape_values() {
        // dfine_n of transformers' conversion script (hidden_expansion 0.34, depth_mult 0.5).
        let c: DFineConfig = serde_json::from_str(
            r#"{"model_type": "d_fine", "hidden_expansion": 0.34, "depth_mult": 0.5, "encoder_hidden_dim": 128,
                "decoder_n_points": [6, 6], "num_feature_levels": 2, "eval_idx": -1, "decoder_layers": 3,
                "backbone_config": {"model_type": "hgnet_v2", "stem_strides": [2, 1, [1, 1], 2, 1]}}"#,
        )
        .unwrap();
        // round(0.34 * 128 // 2) = round(21.0); round(1.5) = 2 (half to even).
        assert_eq!(c.elan_branch_dim(), 21);
        assert_eq!(c.csp_blocks(), 2);
        assert_eq!(c.points_per_level(), vec![6, 6]);
        assert_eq!(c.eval_layer(), 2);
        assert_eq!(c.backbone().stem_strides[2].square(), Some(1));
    }

    #[test]
    fn refuses_what_transformers_cannot_run() {
        for bad in [
            r#"{"max_num_bins": 31}"#,
            r#"{"eval_idx": 6}"#,
            r#"{"decoder_n_points": [3, 6]}"#,
            r#"{"decoder_method": "nearest"}"#,
            r#"{"backbone_config": {"stage_num_blocks": [1, 1, 3]}}"#,
            r#"{"backbone_config": {"stem_strides": [2, 1, [1, 2], 2, 1]}}"#,
            r#"{"backbone_config": {"model_type": "resnet"}}"#,
            r#"{"backbone_config": {"hidden_sizes": [1, 2, 3, 4]}}"#,
            r#"{"backbone_config": {"out_indices": [0, 1]}, "encoder_in_channels": [1, 2]}"#,
            r#"{"depth_mult": -1.0}"#,
        ] {
            let c: DFineConfig = serde_json::from_str(bad).unwrap();
            assert!(c.validate().is_err(), "{bad} was accepted");
        }
    }
}
