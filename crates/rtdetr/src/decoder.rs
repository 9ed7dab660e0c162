//! Transformer decoder (`RTDetrDecoder`): self-attention over the queries, multi-scale
//! deformable cross-attention into the encoder memory, FFN, and per-layer class / box
//! heads with iterative box refinement. Its depth can be cut at inference.

use candle_core::Tensor;

use crate::config::{Activation, RtDetrConfig};
use crate::cpu::with_f32;
use crate::deform_attn::{sample_memory, MsdaDims};
use crate::error::Result;
use crate::kernels::softmax_rows;
use crate::nn::{add, multi_head_attention, LayerNorm, Linear, MlpHead};
use crate::weights::Weights;

struct DeformableAttention {
    sampling_offsets: Linear,
    attention_weights: Linear,
    value_proj: Linear,
    output_proj: Linear,
    heads: usize,
    levels: usize,
    points: usize,
}

impl DeformableAttention {
    fn load(w: &Weights, key: &str, cfg: &RtDetrConfig) -> Result<Self> {
        let d = cfg.d_model;
        let (h, l, p) = (cfg.decoder_attention_heads, cfg.num_feature_levels, cfg.decoder_n_points);
        Ok(Self {
            sampling_offsets: Linear::load(w, &format!("{key}.sampling_offsets"), d, h * l * p * 2)?,
            attention_weights: Linear::load(w, &format!("{key}.attention_weights"), d, h * l * p)?,
            value_proj: Linear::load(w, &format!("{key}.value_proj"), d, d)?,
            output_proj: Linear::load(w, &format!("{key}.output_proj"), d, d)?,
            heads: h,
            levels: l,
            points: p,
        })
    }

    /// `query`: (B, Q, D) with position embedding added; `reference`: (B, Q, 4) cxcywh in
    /// [0, 1]; `memory`: (B, S, D) flattened levels of `shapes`. Returns
    /// `output_proj(attention) + residual`.
    fn forward(
        &self,
        query: &Tensor,
        reference: &Tensor,
        memory: &Tensor,
        shapes: &[(usize, usize)],
        residual: &Tensor,
    ) -> Result<Tensor> {
        let (b, q, d) = query.dims3()?;
        let (h, l, p) = (self.heads, self.levels, self.points);
        let s = memory.dim(1)?;
        let (mut locations, weights) = with_f32(query, |qs| {
            let offsets = self.sampling_offsets.run(qs, b * q, None, Activation::Identity);
            let mut weights = self.attention_weights.run(qs, b * q, None, Activation::Identity);
            softmax_rows(&mut weights, l * p);
            (offsets, weights)
        })?;
        // sampling_locations = ref_xy + offsets / P * ref_wh * 0.5 (reference's order of ops).
        with_f32(reference, |refs| {
            let per_query = h * l * p;
            for bq in 0..b * q {
                let r = &refs[bq * 4..bq * 4 + 4];
                for k in 0..per_query {
                    let i = (bq * per_query + k) * 2;
                    locations[i] = r[0] + locations[i] / p as f32 * r[2] * 0.5;
                    locations[i + 1] = r[1] + locations[i + 1] / p as f32 * r[3] * 0.5;
                }
            }
        })?;
        let dims = MsdaDims { batch: b, queries: q, heads: h, head_dim: d / h, points: p };
        // Sample the memory, then project the samples per head: the same sums as projecting
        // every memory position first (see `sample_memory`).
        let started = crate::flops::start();
        let (sampled, in_bounds) = with_f32(memory, |m| sample_memory(m, shapes, &locations, &weights, dims))?;
        let out = self.value_proj.run_per_head(&sampled, b * q, h, &in_bounds);
        // The model's nominal cost: the value projection of all S positions, then the
        // four bilinear corners per sample.
        let flops = 2 * (b * s * d * d) as u64 + (8 * weights.len() * (d / h)) as u64;
        crate::flops::add(flops);
        crate::flops::record(started, || format!("deformable attention {h}x{} {b}x{q}x{p}", d / h), flops);
        let out = Tensor::from_vec(out, (b, q, d), query.device())?;
        self.output_proj.forward_with(&out, Some(residual), Activation::Identity)
    }
}

struct DecoderLayer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    self_attn_norm: LayerNorm,
    cross_attn: DeformableAttention,
    cross_attn_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_norm: LayerNorm,
    heads: usize,
    act: Activation,
}

impl DecoderLayer {
    fn load(w: &Weights, key: &str, cfg: &RtDetrConfig) -> Result<Self> {
        let d = cfg.d_model;
        let eps = cfg.layer_norm_eps;
        let a = format!("{key}.self_attn");
        Ok(Self {
            q: Linear::load(w, &format!("{a}.q_proj"), d, d)?,
            k: Linear::load(w, &format!("{a}.k_proj"), d, d)?,
            v: Linear::load(w, &format!("{a}.v_proj"), d, d)?,
            o: Linear::load(w, &format!("{a}.o_proj"), d, d)?,
            self_attn_norm: LayerNorm::load(w, &format!("{key}.self_attn_layer_norm"), d, eps)?,
            cross_attn: DeformableAttention::load(w, &format!("{key}.encoder_attn"), cfg)?,
            cross_attn_norm: LayerNorm::load(w, &format!("{key}.encoder_attn_layer_norm"), d, eps)?,
            fc1: Linear::load(w, &format!("{key}.mlp.fc1"), d, cfg.decoder_ffn_dim)?,
            fc2: Linear::load(w, &format!("{key}.mlp.fc2"), cfg.decoder_ffn_dim, d)?,
            final_norm: LayerNorm::load(w, &format!("{key}.final_layer_norm"), d, eps)?,
            heads: cfg.decoder_attention_heads,
            act: Activation::parse(&cfg.decoder_activation_function)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        pos: &Tensor,
        reference: &Tensor,
        memory: &Tensor,
        shapes: &[(usize, usize)],
    ) -> Result<Tensor> {
        let qk = add(x, pos)?;
        let attn = multi_head_attention(&self.q.forward(&qk)?, &self.k.forward(&qk)?, &self.v.forward(x)?, self.heads)?;
        let x = self.self_attn_norm.forward(&self.o.forward_with(&attn, Some(x), Activation::Identity)?)?;
        let cross = self.cross_attn.forward(&add(&x, pos)?, reference, memory, shapes, &x)?;
        let x = self.cross_attn_norm.forward(&cross)?;
        let m = self.fc2.forward_with(&self.fc1.forward_with(&x, None, self.act)?, Some(&x), Activation::Identity)?;
        self.final_norm.forward(&m)
    }
}

/// Per-layer outputs of the decoder.
pub struct DecoderLayerOutput {
    /// (B, Q, num_labels) class logits.
    pub logits: Tensor,
    /// (B, Q, 4) boxes, normalized cxcywh.
    pub boxes: Tensor,
}

pub struct Decoder {
    layers: Vec<DecoderLayer>,
    query_pos_head: MlpHead,
    class_embed: Vec<Linear>,
    bbox_embed: Vec<MlpHead>,
}

/// `inverse_sigmoid` with the reference's clamping (eps 1e-5).
fn inverse_sigmoid(x: &Tensor) -> Result<Tensor> {
    let x = x.clamp(0f32, 1f32)?;
    let x1 = x.clamp(1e-5f32, f32::MAX)?;
    let x2 = x.affine(-1.0, 1.0)?.clamp(1e-5f32, f32::MAX)?;
    Ok((x1 / x2)?.log()?)
}

impl Decoder {
    pub fn load(w: &Weights, cfg: &RtDetrConfig) -> Result<Self> {
        let d = cfg.d_model;
        let n = cfg.decoder_layers;
        Ok(Self {
            layers: (0..n)
                .map(|i| DecoderLayer::load(w, &format!("model.decoder.layers.{i}"), cfg))
                .collect::<Result<_>>()?,
            query_pos_head: MlpHead::load(w, "model.decoder.query_pos_head", 4, 2 * d, d, 2)?,
            class_embed: (0..n)
                .map(|i| Linear::load(w, &format!("model.decoder.class_embed.{i}"), d, cfg.num_labels()))
                .collect::<Result<_>>()?,
            bbox_embed: (0..n)
                .map(|i| MlpHead::load(w, &format!("model.decoder.bbox_embed.{i}"), d, d, 4, 3))
                .collect::<Result<_>>()?,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Runs the first `depth` layers. `target`: (B, Q, D) initial queries;
    /// `reference_unact`: (B, Q, 4) box logits. Returns every executed layer's heads.
    pub fn forward(
        &self,
        target: &Tensor,
        reference_unact: &Tensor,
        memory: &Tensor,
        shapes: &[(usize, usize)],
        depth: usize,
    ) -> Result<Vec<DecoderLayerOutput>> {
        let mut x = target.clone();
        let mut reference = candle_nn::ops::sigmoid(reference_unact)?;
        let mut outs = Vec::with_capacity(depth);
        for idx in 0..depth.min(self.layers.len()) {
            let pos = self.query_pos_head.forward(&reference)?;
            x = self.layers[idx].forward(&x, &pos, &reference, memory, shapes)?;
            let corners = self.bbox_embed[idx].forward(&x)?;
            let new_ref = candle_nn::ops::sigmoid(&(corners + inverse_sigmoid(&reference)?)?)?;
            let logits = self.class_embed[idx].forward(&x)?;
            outs.push(DecoderLayerOutput { logits, boxes: new_ref.clone() });
            reference = new_ref;
        }
        Ok(outs)
    }
}
