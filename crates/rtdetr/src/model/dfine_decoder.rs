//! D-FINE's decoder (`DFineDecoder` at inference): RT-DETR-style layers whose
//! cross-attention output is merged by a gate, and fine-grained distribution refinement
//! (FDR): each layer predicts, for every box edge, a distribution over `max_num_bins + 1`
//! bins of a non-uniform weighting function, refining the previous layer's distribution;
//! the expected offsets move the edges of the box that the pre-bbox head predicted after
//! layer 0. The class logits get a location-quality term (LQE) from the distributions'
//! top probabilities.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::io::config::{Activation, DFineConfig};
use crate::io::weights::Weights;
use crate::kernels::dispatch::with_f32;
use crate::kernels::ops::softmax_rows;
use crate::kernels::tensor_ops::add;
use crate::model::attention::{FeedForward, SelfAttention};
use crate::model::decoder::inverse_sigmoid;
use crate::model::deformable_attention::DeformableAttention;
use crate::model::layers::{LayerNorm, Linear, MlpHead};
use crate::model::LayerOutput;

/// `DFineGate`: `norm(g₁·residual + g₂·x)` with `(g₁, g₂) = sigmoid(gate([residual, x]))`.
struct Gate {
    gate: Linear,
    norm: LayerNorm,
    dim: usize,
}

impl Gate {
    fn forward(&self, residual: &Tensor, x: &Tensor) -> Result<Tensor> {
        let d = self.dim;
        let out = with_f32(residual, |r| {
            with_f32(x, |xs| {
                let rows = r.len() / d;
                let mut cat = Vec::with_capacity(2 * r.len());
                for (rr, xr) in r.chunks_exact(d).zip(xs.chunks_exact(d)) {
                    cat.extend_from_slice(rr);
                    cat.extend_from_slice(xr);
                }
                let gates = self.gate.run(&cat, rows, None, Activation::Identity);
                let mut mixed = Vec::with_capacity(r.len());
                for ((g, rr), xr) in gates.chunks_exact(2 * d).zip(r.chunks_exact(d)).zip(xs.chunks_exact(d)) {
                    let (g1, g2) = g.split_at(d);
                    mixed.extend(
                        g1.iter()
                            .zip(g2)
                            .zip(rr.iter().zip(xr))
                            .map(|((a, b), (r, x))| sigmoid(*a) * r + sigmoid(*b) * x),
                    );
                }
                self.norm.run(&mixed, None)
            })
        })??;
        Ok(Tensor::from_vec(out, x.dims(), x.device())?)
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `DFineDecoderLayer`.
struct DecoderLayer {
    self_attn: SelfAttention,
    self_attn_norm: LayerNorm,
    cross_attn: DeformableAttention,
    gateway: Gate,
    mlp: FeedForward,
    final_norm: LayerNorm,
}

impl DecoderLayer {
    fn load(w: &Weights, key: &str, cfg: &DFineConfig) -> Result<Self> {
        let d = cfg.d_model;
        let eps = cfg.layer_norm_eps;
        let act = Activation::parse(&cfg.decoder_activation_function)?;
        Ok(Self {
            self_attn: SelfAttention::load(w, &format!("{key}.self_attn"), d, cfg.decoder_attention_heads)?,
            self_attn_norm: LayerNorm::load(w, &format!("{key}.self_attn_layer_norm"), d, eps)?,
            cross_attn: DeformableAttention::load_dfine(w, &format!("{key}.encoder_attn"), cfg)?,
            gateway: Gate {
                gate: Linear::load(w, &format!("{key}.gateway.gate"), 2 * d, 2 * d)?,
                norm: LayerNorm::load(w, &format!("{key}.gateway.norm"), d, eps)?,
                dim: d,
            },
            mlp: FeedForward::load_named(
                w,
                &format!("{key}.mlp.layers.0"),
                &format!("{key}.mlp.layers.1"),
                d,
                cfg.decoder_ffn_dim,
                act,
            )?,
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
        let cross = self.cross_attn.attend(&add(&x, pos)?, reference, memory, shapes)?;
        let x = self.gateway.forward(&x, &cross)?;
        // The reference clamps to the f16 range before the last norm.
        let y = self.mlp.forward(&x)?.clamp(-65504f32, 65504f32)?;
        self.final_norm.forward(&y)
    }
}

/// `weighting_function`: the `max_num_bins + 1` offsets W(n) the edge distributions
/// weigh, in the reference's f32 arithmetic: 0 in the middle, growing geometrically to
/// ±`|up|·|reg_scale|` next to the ends, ±twice that at the ends.
fn weighting_function(max_num_bins: usize, up: f32, reg_scale: f32) -> Vec<f32> {
    let upper1 = up.abs() * reg_scale.abs();
    let upper2 = upper1 * 2.0;
    let step = (upper1 + 1.0).powf((2.0 / (max_num_bins - 2) as f64) as f32);
    let half = max_num_bins / 2;
    let mut values = Vec::with_capacity(max_num_bins + 1);
    values.push(-upper2);
    values.extend((1..half).rev().map(|i| -step.powi(i as i32) + 1.0));
    values.push(0.0);
    values.extend((1..half).map(|i| step.powi(i as i32) - 1.0));
    values.push(upper2);
    values
}

/// The decoder layers up to `eval_idx` and their heads.
pub struct DFineDecoder {
    layers: Vec<DecoderLayer>,
    query_pos_head: MlpHead,
    pre_bbox_head: MlpHead,
    class_embed: Vec<Linear>,
    bbox_embed: Vec<MlpHead>,
    /// `lqe_layers.{i}.reg_conf`.
    lqe: Vec<MlpHead>,
    /// W(n), `max_num_bins + 1` values.
    project: Vec<f32>,
    reg_scale: f32,
    top_prob_values: usize,
}

impl DFineDecoder {
    pub fn load(w: &Weights, cfg: &DFineConfig) -> Result<Self> {
        let d = cfg.d_model;
        let bins = cfg.max_num_bins + 1;
        // The layers after `eval_idx` never change the outputs at inference.
        let n = cfg.eval_layer() + 1;
        // The checkpoint's values; transformers initialises them from the config where a
        // checkpoint lacks them.
        let scalar = |key: &str, default: f64| -> Result<f32> {
            if w.contains(key) {
                Ok(w.get(key, &[1])?.to_vec1::<f32>()?[0])
            } else {
                Ok(default as f32)
            }
        };
        let up = scalar("model.decoder.up", cfg.up)?;
        let reg_scale = scalar("model.decoder.reg_scale", cfg.reg_scale)?;
        if !(up.is_finite() && reg_scale.is_finite() && reg_scale != 0.0) {
            return Err(Error::Weights(format!(
                "model.decoder.up {up} and reg_scale {reg_scale} must be finite, reg_scale non-zero"
            )));
        }
        let lqe_in = 4 * (cfg.top_prob_values + 1);
        Ok(Self {
            layers: (0..n)
                .map(|i| DecoderLayer::load(w, &format!("model.decoder.layers.{i}"), cfg))
                .collect::<Result<_>>()?,
            query_pos_head: MlpHead::load(w, "model.decoder.query_pos_head", 4, 2 * d, d, 2)?,
            pre_bbox_head: MlpHead::load(w, "model.decoder.pre_bbox_head", d, d, 4, 3)?,
            class_embed: (0..n)
                .map(|i| Linear::load(w, &format!("model.decoder.class_embed.{i}"), d, cfg.num_labels()))
                .collect::<Result<_>>()?,
            bbox_embed: (0..n)
                .map(|i| MlpHead::load(w, &format!("model.decoder.bbox_embed.{i}"), d, d, 4 * bins, 3))
                .collect::<Result<_>>()?,
            lqe: (0..n)
                .map(|i| {
                    let key = format!("model.decoder.lqe_layers.{i}.reg_conf");
                    MlpHead::load(w, &key, lqe_in, cfg.lqe_hidden_dim, 1, cfg.lqe_layers)
                })
                .collect::<Result<_>>()?,
            project: weighting_function(cfg.max_num_bins, up, reg_scale),
            reg_scale: reg_scale.abs(),
            top_prob_values: cfg.top_prob_values,
        })
    }

    /// Layers that can run (up to and including `eval_idx`).
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Runs the first `depth` layers. `target`: (B, Q, D) initial queries;
    /// `reference_unact`: (B, Q, 4) box logits. Returns every executed layer's heads (what
    /// the reference predicts with `eval_idx` at that layer).
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
        let mut initial: Option<Tensor> = None;
        let mut previous: Option<(Tensor, Tensor)> = None;
        let mut outs = Vec::with_capacity(depth);
        for idx in 0..depth.min(self.layers.len()) {
            let pos = self.query_pos_head.forward(&reference)?.clamp(-10f32, 10f32)?;
            x = self.layers[idx].forward(&x, &pos, &reference, memory, shapes)?;
            let initial = initial.get_or_insert(candle_nn::ops::sigmoid(&add(
                &self.pre_bbox_head.forward(&x)?,
                &inverse_sigmoid(&reference)?,
            )?)?);
            // The edge distributions refine the previous layer's, from this layer's output
            // plus the previous one's.
            let corners = match &previous {
                None => self.bbox_embed[idx].forward(&x)?,
                Some((prev_x, prev_corners)) => add(&self.bbox_embed[idx].forward(&add(&x, prev_x)?)?, prev_corners)?,
            };
            // Each edge's distribution over the bins, for the box and for the quality score.
            let mut probs = with_f32(&corners, |c| c.to_vec())?;
            softmax_rows(&mut probs, self.project.len());
            let boxes = self.distance_to_boxes(initial, &probs)?;
            let logits = self.quality_adjusted(&self.class_embed[idx].forward(&x)?, &probs, idx)?;
            outs.push(LayerOutput { logits, boxes: boxes.clone() });
            previous = Some((x.clone(), corners));
            reference = boxes;
        }
        Ok(outs)
    }

    /// `distance2bbox(initial, integral(corners))`: each edge of the initial box moves by
    /// the expected offset of its distribution (`probs`: softmax of the corners over the
    /// bins), in units of the box's size / reg_scale.
    fn distance_to_boxes(&self, initial: &Tensor, probs: &[f32]) -> Result<Tensor> {
        let bins = self.project.len();
        let reg = self.reg_scale;
        let boxes = with_f32(initial, |init| {
            let mut out = Vec::with_capacity(init.len());
            for (b, p) in init.chunks_exact(4).zip(probs.chunks_exact(4 * bins)) {
                let dist: Vec<f32> =
                    p.chunks_exact(bins).map(|e| e.iter().zip(&self.project).map(|(a, w)| a * w).sum()).collect();
                let (cx, cy, w, h) = (b[0], b[1], b[2], b[3]);
                let x1 = cx - (0.5 * reg + dist[0]) * (w / reg);
                let y1 = cy - (0.5 * reg + dist[1]) * (h / reg);
                let x2 = cx + (0.5 * reg + dist[2]) * (w / reg);
                let y2 = cy + (0.5 * reg + dist[3]) * (h / reg);
                out.extend([(x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1]);
            }
            out
        })?;
        Ok(Tensor::from_vec(boxes, initial.dims(), initial.device())?)
    }

    /// `DFineLQE`: the logits plus a quality score from the top `top_prob_values`
    /// probabilities of each edge's distribution (`probs`) and their mean.
    fn quality_adjusted(&self, logits: &Tensor, probs: &[f32], layer: usize) -> Result<Tensor> {
        let bins = self.project.len();
        let k = self.top_prob_values;
        let mut stats = Vec::with_capacity(probs.len() / bins * (k + 1));
        for edge in probs.chunks_exact(bins) {
            let mut sorted = edge.to_vec();
            sorted.sort_unstable_by(|a, b| b.total_cmp(a));
            let top = &sorted[..k];
            stats.extend_from_slice(top);
            stats.push(top.iter().sum::<f32>() / k as f32);
        }
        let (b, q, _) = logits.dims3()?;
        let stats = Tensor::from_vec(stats, (b, q, 4 * (k + 1)), logits.device())?;
        let quality = self.lqe[layer].forward(&stats)?;
        Ok(logits.broadcast_add(&quality)?)
    }
}

#[cfg(test)]
mod tests {
    use super::weighting_function;

    #[test]
    fn weighting_function_is_symmetric_with_the_reference_bounds() {
        // transformers: weighting_function(32, up=0.5, reg_scale=4): ends ±4, inner ±2.
        let w = weighting_function(32, 0.5, 4.0);
        assert_eq!(w.len(), 33);
        assert_eq!((w[0], w[16], w[32]), (-4.0, 0.0, 4.0));
        assert!((w[31] - 2.0).abs() < 1e-5 && (w[1] + 2.0).abs() < 1e-5, "{w:?}");
        for i in 0..33 {
            assert!((w[i] + w[32 - i]).abs() < 1e-6);
        }
        assert!(w.windows(2).all(|p| p[0] < p[1]));
    }
}
