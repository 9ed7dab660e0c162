//! Transformer decoder (`RTDetrDecoder`): self-attention over the queries, multi-scale
//! deformable cross-attention into the encoder memory, FFN, and per-layer class / box
//! heads with iterative box refinement. Its depth can be cut at inference.

use candle_core::Tensor;

use crate::error::Result;
use crate::io::config::{Activation, RtDetrConfig};
use crate::io::weights::Weights;
use crate::kernels::tensor_ops::add;
use crate::model::attention::{FeedForward, SelfAttention};
use crate::model::deformable_attention::{DeformableAttention, V2Sampling};
use crate::model::layers::{LayerNorm, Linear, MlpHead};
use crate::model::LayerOutput;

struct DecoderLayer {
    self_attn: SelfAttention,
    self_attn_norm: LayerNorm,
    cross_attn: DeformableAttention,
    cross_attn_norm: LayerNorm,
    mlp: FeedForward,
    final_norm: LayerNorm,
}

impl DecoderLayer {
    fn load(w: &Weights, key: &str, cfg: &RtDetrConfig, v2: Option<&V2Sampling>) -> Result<Self> {
        let d = cfg.d_model;
        let eps = cfg.layer_norm_eps;
        let act = Activation::parse(&cfg.decoder_activation_function)?;
        Ok(Self {
            self_attn: SelfAttention::load(w, &format!("{key}.self_attn"), d, cfg.decoder_attention_heads)?,
            self_attn_norm: LayerNorm::load(w, &format!("{key}.self_attn_layer_norm"), d, eps)?,
            cross_attn: DeformableAttention::load(w, &format!("{key}.encoder_attn"), cfg, v2)?,
            cross_attn_norm: LayerNorm::load(w, &format!("{key}.encoder_attn_layer_norm"), d, eps)?,
            mlp: FeedForward::load(w, &format!("{key}.mlp"), d, cfg.decoder_ffn_dim, act)?,
            final_norm: LayerNorm::load(w, &format!("{key}.final_layer_norm"), d, eps)?,
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
        let x = self.self_attn_norm.forward(&self.self_attn.forward(&qk, x, x)?)?;
        let cross = self.cross_attn.forward(&add(&x, pos)?, reference, memory, shapes, &x)?;
        let x = self.cross_attn_norm.forward(&cross)?;
        self.final_norm.forward(&self.mlp.forward(&x)?)
    }
}

pub struct Decoder {
    layers: Vec<DecoderLayer>,
    query_pos_head: MlpHead,
    class_embed: Vec<Linear>,
    bbox_embed: Vec<MlpHead>,
}

/// `inverse_sigmoid` with the reference's clamping (eps 1e-5).
pub(crate) fn inverse_sigmoid(x: &Tensor) -> Result<Tensor> {
    let x = x.clamp(0f32, 1f32)?;
    let x1 = x.clamp(1e-5f32, f32::MAX)?;
    let x2 = x.affine(-1.0, 1.0)?.clamp(1e-5f32, f32::MAX)?;
    Ok((x1 / x2)?.log()?)
}

impl Decoder {
    /// `v2`: RT-DETRv2's cross-attention settings (RT-DETR's when `None`).
    pub fn load(w: &Weights, cfg: &RtDetrConfig, v2: Option<&V2Sampling>) -> Result<Self> {
        let d = cfg.d_model;
        let n = cfg.decoder_layers;
        Ok(Self {
            layers: (0..n)
                .map(|i| DecoderLayer::load(w, &format!("model.decoder.layers.{i}"), cfg, v2))
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
    ) -> Result<Vec<LayerOutput>> {
        let mut x = target.clone();
        let mut reference = candle_nn::ops::sigmoid(reference_unact)?;
        let mut outs = Vec::with_capacity(depth);
        for idx in 0..depth.min(self.layers.len()) {
            let pos = self.query_pos_head.forward(&reference)?;
            x = self.layers[idx].forward(&x, &pos, &reference, memory, shapes)?;
            let corners = self.bbox_embed[idx].forward(&x)?;
            let new_ref = candle_nn::ops::sigmoid(&(corners + inverse_sigmoid(&reference)?)?)?;
            let logits = self.class_embed[idx].forward(&x)?;
            outs.push(LayerOutput { logits, boxes: new_ref.clone() });
            reference = new_ref;
        }
        Ok(outs)
    }
}
