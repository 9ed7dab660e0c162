//! Multi-scale deformable cross-attention (`RTDetrMultiscaleDeformableAttention`,
//! RT-DETRv2's `RTDetrV2MultiscaleDeformableAttention` and D-FINE's
//! `DFineMultiscaleDeformableAttention`): each query predicts sampling offsets and
//! attention weights per head, level and point around its reference box, and reads the
//! encoder memory there.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::io::config::{Activation, DFineConfig, RtDetrConfig};
use crate::io::weights::Weights;
use crate::kernels::deform_sample::{sample_head_slices, sample_memory, MsdaDims, SamplingMethod};
use crate::kernels::dispatch::with_f32;
use crate::kernels::ops::softmax_rows;
use crate::model::layers::Linear;

/// Sampling offsets, attention weights, value and output projections under `key` (D-FINE
/// has neither projection: it samples the memory itself).
pub struct DeformableAttention {
    sampling_offsets: Linear,
    attention_weights: Linear,
    value_proj: Option<Linear>,
    output_proj: Option<Linear>,
    heads: usize,
    /// Sampling points on each level.
    points: Vec<usize>,
    offsets: Offsets,
    method: SamplingMethod,
}

/// How the predicted offsets become sampling locations around the reference box.
enum Offsets {
    /// RT-DETR: `ref_xy + offset / P_l · ref_wh · 0.5`.
    PerLevelPoints,
    /// RT-DETRv2 and D-FINE: `ref_xy + offset · n_points_scale · ref_wh · offset_scale`,
    /// with the checkpoint's `n_points_scale` (D-FINE: `num_points_scale`) buffer, one value
    /// per level and point.
    Scaled { points_scale: Vec<f32>, offset_scale: f32 },
}

/// RT-DETRv2's settings of the cross-attention.
pub struct V2Sampling {
    pub offset_scale: f64,
    pub discrete: bool,
}

impl DeformableAttention {
    /// `v2`: RT-DETRv2's offsets and sampling method (RT-DETR's when `None`).
    pub fn load(w: &Weights, key: &str, cfg: &RtDetrConfig, v2: Option<&V2Sampling>) -> Result<Self> {
        let d = cfg.d_model;
        let (h, l, p) = (cfg.decoder_attention_heads, cfg.num_feature_levels, cfg.decoder_n_points);
        let (offsets, method) = match v2 {
            None => (Offsets::PerLevelPoints, SamplingMethod::Bilinear),
            Some(v2) => (
                Offsets::Scaled {
                    points_scale: w.get(&format!("{key}.n_points_scale"), &[l * p])?.to_vec1()?,
                    offset_scale: v2.offset_scale as f32,
                },
                if v2.discrete { SamplingMethod::Discrete } else { SamplingMethod::Bilinear },
            ),
        };
        Ok(Self {
            sampling_offsets: Linear::load(w, &format!("{key}.sampling_offsets"), d, h * l * p * 2)?,
            attention_weights: Linear::load(w, &format!("{key}.attention_weights"), d, h * l * p)?,
            value_proj: Some(Linear::load(w, &format!("{key}.value_proj"), d, d)?),
            output_proj: Some(Linear::load(w, &format!("{key}.output_proj"), d, d)?),
            heads: h,
            points: vec![p; l],
            offsets,
            method,
        })
    }

    /// D-FINE's cross-attention: per-level point counts, scaled offsets, no projections.
    pub fn load_dfine(w: &Weights, key: &str, cfg: &DFineConfig) -> Result<Self> {
        let d = cfg.d_model;
        let h = cfg.decoder_attention_heads;
        let points = cfg.points_per_level();
        let total: usize = points.iter().sum();
        // The checkpoint's buffer; transformers recomputes it (1 / P_l for each point of
        // level l) where a checkpoint lacks it.
        let scale_key = format!("{key}.num_points_scale");
        let points_scale = if w.contains(&scale_key) {
            w.get(&scale_key, &[total])?.to_vec1()?
        } else {
            points.iter().flat_map(|&p| std::iter::repeat_n(1.0 / p as f32, p)).collect()
        };
        Ok(Self {
            sampling_offsets: Linear::load(w, &format!("{key}.sampling_offsets"), d, h * total * 2)?,
            attention_weights: Linear::load(w, &format!("{key}.attention_weights"), d, h * total)?,
            value_proj: None,
            output_proj: None,
            heads: h,
            points,
            offsets: Offsets::Scaled { points_scale, offset_scale: cfg.decoder_offset_scale as f32 },
            method: if cfg.decoder_method == "discrete" { SamplingMethod::Discrete } else { SamplingMethod::Bilinear },
        })
    }

    /// `query`: (B, Q, D) with position embedding added; `reference`: (B, Q, 4) cxcywh in
    /// [0, 1]; `memory`: (B, S, D) flattened levels of `shapes`. Returns
    /// `output_proj(attention) + residual`.
    pub fn forward(
        &self,
        query: &Tensor,
        reference: &Tensor,
        memory: &Tensor,
        shapes: &[(usize, usize)],
        residual: &Tensor,
    ) -> Result<Tensor> {
        let out = self.attend(query, reference, memory, shapes)?;
        match &self.output_proj {
            Some(o) => o.forward_with(&out, Some(residual), Activation::Identity),
            None => Err(Error::Internal("deformable attention without an output projection".into())),
        }
    }

    /// The attention itself, (B, Q, D): the heads' weighted samples of the (value-projected)
    /// memory, before any output projection.
    pub fn attend(
        &self,
        query: &Tensor,
        reference: &Tensor,
        memory: &Tensor,
        shapes: &[(usize, usize)],
    ) -> Result<Tensor> {
        let (b, q, d) = query.dims3()?;
        let h = self.heads;
        let per_head: usize = self.points.iter().sum();
        let s = memory.dim(1)?;
        let (mut locations, weights) = with_f32(query, |qs| {
            let offsets = self.sampling_offsets.run(qs, b * q, None, Activation::Identity);
            let mut weights = self.attention_weights.run(qs, b * q, None, Activation::Identity);
            softmax_rows(&mut weights, per_head);
            (offsets, weights)
        })?;
        // The reference's order of operations, per architecture.
        let divisors: Vec<f32> = self.points.iter().flat_map(|&p| std::iter::repeat_n(p as f32, p)).collect();
        with_f32(reference, |refs| {
            for bq in 0..b * q {
                let r = &refs[bq * 4..bq * 4 + 4];
                for k in 0..h * per_head {
                    let i = (bq * h * per_head + k) * 2;
                    let (ox, oy) = (locations[i], locations[i + 1]);
                    (locations[i], locations[i + 1]) = match &self.offsets {
                        Offsets::PerLevelPoints => {
                            let p = divisors[k % per_head];
                            (r[0] + ox / p * r[2] * 0.5, r[1] + oy / p * r[3] * 0.5)
                        }
                        Offsets::Scaled { points_scale, offset_scale } => {
                            let s = points_scale[k % per_head];
                            (r[0] + ox * s * r[2] * offset_scale, r[1] + oy * s * r[3] * offset_scale)
                        }
                    };
                }
            }
        })?;
        let dims = MsdaDims { batch: b, queries: q, heads: h, head_dim: d / h, method: self.method };
        // Sample the memory, then project the samples per head: the same sums as projecting
        // every memory position first (see `sample_memory`).
        let started = crate::kernels::flops::start();
        let out = with_f32(memory, |m| match &self.value_proj {
            Some(v) => {
                let (sampled, in_bounds) = sample_memory(m, shapes, &self.points, &locations, &weights, dims);
                v.run_per_head(&sampled, b * q, h, &in_bounds)
            }
            // No projection: each head samples only its own slice of the memory.
            None => sample_head_slices(m, shapes, &self.points, &locations, &weights, dims),
        })?;
        // The model's nominal cost: the value projection of all S positions (where there is
        // one), then the four bilinear corners per sample.
        let projection = if self.value_proj.is_some() { 2 * (b * s * d * d) as u64 } else { 0 };
        let flops = projection + (8 * weights.len() * (d / h)) as u64;
        crate::kernels::flops::add(flops);
        crate::kernels::flops::record(
            started,
            || format!("deformable attention {h}x{} {b}x{q}x{per_head}", d / h),
            flops,
        );
        Ok(Tensor::from_vec(out, (b, q, d), query.device())?)
    }
}
