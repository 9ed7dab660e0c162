//! Two-stage query selection (`RTDetrModel.forward` between encoder and decoder): score
//! every encoder memory position, keep the `num_queries` best as the decoder's initial
//! queries and reference boxes.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::io::weights::Weights;
use crate::kernels::dispatch::with_f32;
use crate::kernels::tensor_ops::add;
use crate::model::layers::{LayerNorm, Linear, MlpHead};

/// The selected queries of a batch.
pub struct Selection {
    /// (B, Q, D) initial decoder queries (the selected rows of the normalised memory).
    pub target: Tensor,
    /// (B, Q, 4) box logits of the selected positions (box head + anchor).
    pub reference_unact: Tensor,
    /// (B, Q) indices of the selected positions, best first.
    pub topk: Vec<Vec<usize>>,
    /// (B, S, C) class logits of every position.
    pub enc_class: Tensor,
}

/// `enc_output` (Linear + LayerNorm), `enc_score_head` and `enc_bbox_head`.
pub struct QuerySelection {
    enc_output: Linear,
    enc_output_norm: LayerNorm,
    enc_score_head: Linear,
    enc_bbox_head: MlpHead,
    num_queries: usize,
}

impl QuerySelection {
    pub fn load(w: &Weights, d_model: usize, num_labels: usize, num_queries: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            enc_output: Linear::load(w, "model.enc_output.0", d_model, d_model)?,
            enc_output_norm: LayerNorm::load(w, "model.enc_output.1", d_model, eps)?,
            enc_score_head: Linear::load(w, "model.enc_score_head", d_model, num_labels)?,
            enc_bbox_head: MlpHead::load(w, "model.enc_bbox_head", d_model, d_model, 4, 3)?,
            num_queries,
        })
    }

    /// `memory`: (B, S, D), the flattened levels of `shapes`.
    pub fn forward(&self, memory: &Tensor, shapes: &[(usize, usize)]) -> Result<Selection> {
        let (anchors, valid) = generate_anchors(shapes, memory.device())?;
        // memory * valid: positions outside the valid anchors read zeros.
        let masked = with_f32(&valid, |v| {
            with_f32(memory, |m| {
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
        let q = self.num_queries.min(best.first().map_or(0, |r| r.len()));
        let topk: Vec<Vec<usize>> = best.iter().map(|row| top_k_indices(row, q)).collect();
        let target = gather_rows(&output_memory, &topk)?;
        // The box head is row-wise: running it on the selected rows only gives the reference's
        // values at a fraction of the cost (300 of ~8400 positions).
        let anchors = Tensor::cat(&vec![anchors; topk.len()], 0)?;
        let reference_unact = add(&self.enc_bbox_head.forward(&target)?, &gather_rows(&anchors, &topk)?)?;
        Ok(Selection { target, reference_unact, topk, enc_class })
    }
}

/// Rows `idx[b]` of each image `b` of a (B, S, X) tensor: (B, Q, X).
pub fn gather_rows(t: &Tensor, idx: &[Vec<usize>]) -> Result<Tensor> {
    let per_batch = idx
        .iter()
        .enumerate()
        .map(|(b, idx)| {
            let idx = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), t.device())?;
            Ok(t.get(b)?.index_select(&idx, 0)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&per_batch, 0)?)
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
