//! The whole network (`RTDetrForObjectDetection` at inference): backbone → hybrid
//! encoder → query selection → decoder.

use candle_core::{Device, Tensor};

use crate::backbone::Backbone;
use crate::config::Activation;
use crate::config::RtDetrConfig;
use crate::cpu::with_f32;
use crate::decoder::{Decoder, DecoderLayerOutput};
use crate::encoder::HybridEncoder;
use crate::error::{Error, Result};
use crate::nn::{add, flatten_levels, ConvBn, LayerNorm, Linear, MlpHead};
use crate::weights::Weights;

/// Intermediate tensors of one forward pass, for stage-by-stage parity checks.
#[derive(Default)]
pub struct Trace {
    pub backbone: Vec<Tensor>,
    pub encoder: Vec<Tensor>,
    /// (B, Q) indices of the selected encoder positions.
    pub topk_indices: Vec<Vec<usize>>,
    /// (B, Q, C) encoder class logits of the selected positions.
    pub enc_topk_logits: Option<Tensor>,
    /// (B, Q, 4) sigmoid of the selected positions' box logits.
    pub enc_topk_boxes: Option<Tensor>,
}

/// Raw network output.
pub struct ModelOutput {
    /// (B, Q, C) class logits of the last executed decoder layer.
    pub logits: Tensor,
    /// (B, Q, 4) normalized cxcywh boxes of the last executed decoder layer.
    pub boxes: Tensor,
    /// Every executed decoder layer's logits and boxes.
    pub layers: Vec<DecoderLayerOutput>,
    pub trace: Option<Trace>,
}

/// Seconds spent in each stage of one forward pass.
#[derive(Debug, Default, Clone, Copy)]
pub struct StageTimes {
    pub backbone: f64,
    pub encoder: f64,
    pub query_selection: f64,
    pub decoder: f64,
}

pub struct RtDetr {
    cfg: RtDetrConfig,
    backbone: Backbone,
    encoder: HybridEncoder,
    decoder_input_proj: Vec<ConvBn>,
    enc_output: Linear,
    enc_output_norm: LayerNorm,
    enc_score_head: Linear,
    enc_bbox_head: MlpHead,
    decoder: Decoder,
}

impl RtDetr {
    pub fn load(cfg: &RtDetrConfig, w: &Weights) -> Result<Self> {
        let backbone = Backbone::load(w, &cfg.backbone(), "model.backbone.model")?;
        if backbone.out_channels() != cfg.encoder_in_channels.as_slice() {
            return Err(Error::Config(format!(
                "encoder_in_channels {:?} do not match the backbone's output channels {:?}",
                cfg.encoder_in_channels,
                backbone.out_channels()
            )));
        }
        let encoder = HybridEncoder::load(w, cfg, backbone.out_channels())?;
        let d = cfg.d_model;
        let mut decoder_input_proj = Vec::new();
        let mut c_in = cfg.encoder_hidden_dim;
        for (i, &c) in cfg.decoder_in_channels.iter().enumerate() {
            c_in = c;
            decoder_input_proj.push(ConvBn::load(
                w,
                &format!("model.decoder_input_proj.{i}.0"),
                &format!("model.decoder_input_proj.{i}.1"),
                c,
                d,
                1,
                1,
                0,
                cfg.batch_norm_eps,
                Activation::Identity,
            )?);
        }
        for i in cfg.decoder_in_channels.len()..cfg.num_feature_levels {
            decoder_input_proj.push(ConvBn::load(
                w,
                &format!("model.decoder_input_proj.{i}.0"),
                &format!("model.decoder_input_proj.{i}.1"),
                c_in,
                d,
                3,
                2,
                1,
                cfg.batch_norm_eps,
                Activation::Identity,
            )?);
            c_in = d;
        }
        Ok(Self {
            cfg: cfg.clone(),
            backbone,
            encoder,
            decoder_input_proj,
            enc_output: Linear::load(w, "model.enc_output.0", d, d)?,
            enc_output_norm: LayerNorm::load(w, "model.enc_output.1", d, cfg.layer_norm_eps)?,
            enc_score_head: Linear::load(w, "model.enc_score_head", d, cfg.num_labels())?,
            enc_bbox_head: MlpHead::load(w, "model.enc_bbox_head", d, d, 4, 3)?,
            decoder: Decoder::load(w, cfg)?,
        })
    }

    pub fn config(&self) -> &RtDetrConfig {
        &self.cfg
    }

    pub fn num_decoder_layers(&self) -> usize {
        self.decoder.num_layers()
    }

    /// Runs the network on (B, 3, H, W) pixels (H and W multiples of 32) using the first
    /// `decoder_layers` decoder layers (all when `None`).
    pub fn forward(&self, pixels: &Tensor, decoder_layers: Option<usize>, trace: bool) -> Result<ModelOutput> {
        self.forward_timed(pixels, decoder_layers, trace, &mut StageTimes::default())
    }

    pub fn forward_timed(
        &self,
        pixels: &Tensor,
        decoder_layers: Option<usize>,
        trace: bool,
        times: &mut StageTimes,
    ) -> Result<ModelOutput> {
        let (_, c, h, w) = pixels.dims4()?;
        let stride = *self.cfg.feat_strides.iter().max().unwrap_or(&32);
        if c != 3 || h == 0 || w == 0 || h % stride != 0 || w % stride != 0 {
            return Err(Error::InvalidArgument(format!(
                "input must be (B, 3, H, W) with H and W multiples of {stride}, got {:?}",
                pixels.dims()
            )));
        }
        let depth = match decoder_layers {
            None => self.decoder.num_layers(),
            Some(n) if n >= 1 && n <= self.decoder.num_layers() => n,
            Some(n) => {
                return Err(Error::InvalidArgument(format!(
                    "decoder layers must be in 1..={}, got {n}",
                    self.decoder.num_layers()
                )))
            }
        };
        let mut tr = trace.then(Trace::default);
        let t0 = std::time::Instant::now();
        let feats = self.backbone.forward(pixels)?;
        let t1 = std::time::Instant::now();
        let enc = self.encoder.forward(&feats)?;
        let t2 = std::time::Instant::now();
        if let Some(tr) = tr.as_mut() {
            tr.backbone = feats;
            tr.encoder = enc.clone();
        }

        // Decoder inputs: project each level and flatten to (B, S, D).
        let mut sources = Vec::new();
        for (i, p) in self.decoder_input_proj.iter().enumerate() {
            let src = if i < enc.len() { &enc[i] } else { enc.last().expect("at least two levels") };
            sources.push(p.forward(src)?);
        }
        let shapes: Vec<(usize, usize)> =
            sources.iter().map(|s| (s.dim(2).unwrap_or(0), s.dim(3).unwrap_or(0))).collect();
        let memory = flatten_levels(&sources)?;

        // Query selection: score every memory position, keep the top num_queries.
        let (anchors, valid) = generate_anchors(&shapes, pixels.device())?;
        // memory * valid: positions outside the valid anchors read zeros.
        let masked = with_f32(&valid, |v| {
            with_f32(&memory, |m| {
                let d = memory.dim(2).unwrap_or(1).max(1);
                let mut out = m.to_vec();
                for (row, &ok) in out.chunks_exact_mut(d).zip(v.iter().cycle()) {
                    if ok == 0.0 {
                        row.fill(0.0);
                    }
                }
                out
            })
        })??;
        let masked = Tensor::from_vec(masked, memory.dims(), memory.device())?;
        let output_memory = self.enc_output_norm.forward(&self.enc_output.forward(&masked)?)?;
        let enc_class = self.enc_score_head.forward(&output_memory)?;
        let classes = enc_class.dim(2)?.max(1);
        let best: Vec<Vec<f32>> = with_f32(&enc_class, |c| {
            let per_image = c.len() / enc_class.dim(0).unwrap_or(1).max(1);
            c.chunks(per_image.max(1))
                .map(|img| {
                    img.chunks_exact(classes).map(|r| r.iter().copied().fold(f32::NEG_INFINITY, f32::max)).collect()
                })
                .collect()
        })?;
        let q = self.cfg.num_queries.min(best.first().map_or(0, |r| r.len()));
        let topk: Vec<Vec<usize>> = best.iter().map(|row| top_k_indices(row, q)).collect();
        let gather = |t: &Tensor| -> Result<Tensor> {
            let per_batch = topk
                .iter()
                .enumerate()
                .map(|(b, idx)| {
                    let idx =
                        Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), t.device())?;
                    Ok(t.get(b)?.index_select(&idx, 0)?)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::stack(&per_batch, 0)?)
        };
        let target = gather(&output_memory)?;
        // The box head is row-wise: running it on the selected rows only gives the reference's
        // values at a fraction of the cost (300 of ~8400 positions).
        let anchors = Tensor::cat(&vec![anchors; topk.len()], 0)?;
        let reference_unact = add(&self.enc_bbox_head.forward(&target)?, &gather(&anchors)?)?;
        if let Some(tr) = tr.as_mut() {
            tr.enc_topk_logits = Some(gather(&enc_class)?);
            tr.enc_topk_boxes = Some(candle_nn::ops::sigmoid(&reference_unact)?);
            tr.topk_indices = topk.clone();
        }
        let t3 = std::time::Instant::now();
        let layers = self.decoder.forward(&target, &reference_unact, &memory, &shapes, depth)?;
        let t4 = std::time::Instant::now();
        times.backbone += (t1 - t0).as_secs_f64();
        times.encoder += (t2 - t1).as_secs_f64();
        times.query_selection += (t3 - t2).as_secs_f64();
        times.decoder += (t4 - t3).as_secs_f64();
        let last = layers.last().ok_or_else(|| Error::InvalidArgument("no decoder layer ran".into()))?;
        Ok(ModelOutput { logits: last.logits.clone(), boxes: last.boxes.clone(), layers, trace: tr })
    }
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let cmp = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_unstable_by(cmp);
    idx
}

/// Anchors in logit space for the given level shapes (grid size 0.05 doubling per level),
/// with invalid (near-border) anchors set to f32::MAX, and the (1, S, 1) valid mask.
pub fn generate_anchors(shapes: &[(usize, usize)], device: &Device) -> Result<(Tensor, Tensor)> {
    let total: usize = shapes.iter().map(|(h, w)| h * w).sum();
    let mut anchors = Vec::with_capacity(total * 4);
    let mut valid = Vec::with_capacity(total);
    let eps = 1e-2f32;
    for (level, &(h, w)) in shapes.iter().enumerate() {
        let wh = 0.05f32 * 2f32.powi(level as i32);
        for y in 0..h {
            for x in 0..w {
                let a = [(x as f32 + 0.5) / w as f32, (y as f32 + 0.5) / h as f32, wh, wh];
                let ok = a.iter().all(|&v| v > eps && v < 1.0 - eps);
                valid.push(if ok { 1f32 } else { 0f32 });
                for v in a {
                    anchors.push(if ok { (v / (1.0 - v)).ln() } else { f32::MAX });
                }
            }
        }
    }
    Ok((Tensor::from_vec(anchors, (1, total, 4), device)?, Tensor::from_vec(valid, (1, total, 1), device)?))
}

#[cfg(test)]
mod tests {
    use super::top_k_indices;

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        let v = [0.1, 0.9, 0.5, 0.9, -1.0, 0.7];
        assert_eq!(top_k_indices(&v, 3), vec![1, 3, 5]);
        assert_eq!(top_k_indices(&v, 6), vec![1, 3, 5, 2, 0, 4]);
        assert_eq!(top_k_indices(&v, 0), Vec::<usize>::new());
    }
}
