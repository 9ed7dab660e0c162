//! Element-wise and layout operations on tensors that the model stages share: broadcast
//! add, activation, channel concatenation with upsampling, level flattening, multi-head
//! attention and the backbone's pools.

use candle_core::Tensor;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::io::config::Activation;
use crate::kernels::dispatch::{self, simd_dispatch, with_f32};
use crate::kernels::ops;

/// Applies an activation function element-wise.
pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    if act == Activation::Identity {
        return Ok(x.clone());
    }
    let mut v = with_f32(x, |s| s.to_vec())?;
    dispatch::act_inplace(&mut v, act);
    Ok(Tensor::from_vec(v, x.dims(), x.device())?)
}

/// `a + b` where `b`'s shape is a suffix of `a`'s (broadcast over the leading dims).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ad, bd) = (a.dims(), b.dims());
    let bd = &bd[bd.iter().take_while(|&&d| d == 1).count().min(bd.len())..];
    if bd.len() > ad.len() || ad[ad.len() - bd.len()..] != *bd {
        return Err(Error::InvalidArgument(format!("cannot add {:?} to {:?}", b.dims(), a.dims())));
    }
    let out = with_f32(a, |xs| {
        with_f32(b, |ys| {
            let mut out = xs.to_vec();
            if !ys.is_empty() {
                out.chunks_exact_mut(ys.len()).for_each(|o| o.iter_mut().zip(ys).for_each(|(o, y)| *o += y));
            }
            out
        })
    })??;
    Ok(Tensor::from_vec(out, ad, a.device())?)
}

/// Concatenates NCHW maps along channels; a part with `upsample` true is first enlarged
/// 2x by nearest neighbour (`F.interpolate(scale_factor=2, mode="nearest")`). All parts
/// must then have the same batch and spatial size.
pub fn concat_channels(parts: &[(&Tensor, bool)]) -> Result<Tensor> {
    let first = parts.first().ok_or_else(|| Error::InvalidArgument("nothing to concatenate".into()))?;
    let (b, _, h0, w0) = first.0.dims4()?;
    let (h, w) = if first.1 { (2 * h0, 2 * w0) } else { (h0, w0) };
    let mut channels = 0;
    for (t, up) in parts {
        let (pb, c, ph, pw) = t.dims4()?;
        let (ph, pw) = if *up { (2 * ph, 2 * pw) } else { (ph, pw) };
        if (pb, ph, pw) != (b, h, w) {
            return Err(Error::InvalidArgument(format!("cannot concatenate {:?} with {:?}", t.dims(), first.0.dims())));
        }
        channels += c;
    }
    let hw = h * w;
    let mut out = vec![0f32; b * channels * hw];
    let mut c0 = 0;
    for (t, up) in parts {
        let c = t.dim(1)?;
        with_f32(t, |src| {
            let plane_in = if *up { hw / 4 } else { hw };
            // One task per (image, channel) plane.
            let planes: Vec<(usize, &mut [f32])> = out
                .chunks_exact_mut(hw)
                .enumerate()
                .filter(|(i, _)| (c0..c0 + c).contains(&(i % channels)))
                .map(|(i, p)| ((i / channels) * c + i % channels - c0, p))
                .collect();
            planes.into_par_iter().for_each(|(i, dst)| {
                let s = &src[i * plane_in..(i + 1) * plane_in];
                if *up {
                    let wi = w / 2;
                    for (y, row) in dst.chunks_exact_mut(w).enumerate() {
                        let srow = &s[(y / 2) * wi..(y / 2 + 1) * wi];
                        for (pair, v) in row.as_chunks_mut::<2>().0.iter_mut().zip(srow) {
                            *pair = [*v, *v];
                        }
                    }
                } else {
                    dst.copy_from_slice(s);
                }
            });
        })?;
        c0 += c;
    }
    Ok(Tensor::from_vec(out, (b, channels, h, w), first.0.device())?)
}

/// Flattens NCHW maps with the same batch and channels into one (B, Σ H·W, C) sequence,
/// levels in order (`flatten(2).transpose(1, 2)` then `cat` along the sequence).
pub fn flatten_levels(maps: &[Tensor]) -> Result<Tensor> {
    let first = maps.first().ok_or_else(|| Error::InvalidArgument("no maps to flatten".into()))?;
    let (b, c, _, _) = first.dims4()?;
    let mut starts = Vec::with_capacity(maps.len());
    let mut seq = 0;
    for m in maps {
        let (mb, mc, h, w) = m.dims4()?;
        if (mb, mc) != (b, c) {
            return Err(Error::InvalidArgument(format!("cannot flatten {:?} with {:?}", m.dims(), first.dims())));
        }
        starts.push(seq);
        seq += h * w;
    }
    const BLOCK: usize = 64;
    let mut out = vec![0f32; b * seq * c];
    let dst = dispatch::SendPtr::new(&mut out);
    for (m, &s0) in maps.iter().zip(&starts) {
        let hw = m.dim(2)? * m.dim(3)?;
        with_f32(m, |src| {
            // One task per (image, block of positions): read channel rows, write tokens.
            (0..b * hw.div_ceil(BLOCK)).into_par_iter().for_each(|t| {
                let (img, p0) = (t / hw.div_ceil(BLOCK), (t % hw.div_ceil(BLOCK)) * BLOCK);
                let n = BLOCK.min(hw - p0);
                // SAFETY: tokens p0..p0+n of this level and image, inside `out` (checked in
                // debug builds), belong to this task only.
                let tokens = unsafe { dst.slice((img * seq + s0 + p0) * c, n * c) };
                for ch in 0..c {
                    let row = &src[(img * c + ch) * hw + p0..(img * c + ch) * hw + p0 + n];
                    for (j, v) in row.iter().enumerate() {
                        tokens[j * c + ch] = *v;
                    }
                }
            });
        })?;
    }
    Ok(Tensor::from_vec(out, (b, seq, c), first.device())?)
}

/// Multi-head scaled dot-product attention: q, k, v are (B, L, H*hd); returns (B, Lq, H*hd).
pub fn multi_head_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, lq, dim) = q.dims3()?;
    let lk = k.dim(1)?;
    if k.dims() != [b, lk, dim] || v.dims() != [b, lk, dim] || heads == 0 || dim % heads != 0 {
        return Err(Error::InvalidArgument(format!(
            "attention shapes q {:?} k {:?} v {:?} heads {heads}",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    let flops = 4 * (b * lq * lk * dim) as u64;
    crate::kernels::flops::add(flops);
    let started = crate::kernels::flops::start();
    let out = with_f32(q, |qs| with_f32(k, |ks| with_f32(v, |vs| ops::attention(qs, ks, vs, b, heads, dim))))???;
    crate::kernels::flops::record(started, || format!("attention {heads}x{} {b}x{lq}x{lk}", dim / heads), flops);
    Ok(Tensor::from_vec(out, (b, lq, dim), q.device())?)
}

/// `MaxPool2d(kernel=3, stride=2, padding=1)` on NCHW.
pub fn max_pool_3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (oh, ow) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
    let out = with_f32(x, |src| {
        let mut out = vec![0f32; b * c * oh * ow];
        out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, dst)| {
            max_pool_plane(&src[plane * h * w..(plane + 1) * h * w], h, w, dst);
        });
        out
    })?;
    Ok(Tensor::from_vec(out, (b, c, oh, ow), x.device())?)
}

/// PyTorch's pooling maximum: `b` replaces `a` when larger or NaN, so NaN propagates.
#[inline(always)]
fn nan_max(a: f32, b: f32) -> f32 {
    if b > a || b.is_nan() {
        b
    } else {
        a
    }
}

#[inline(always)]
fn max_pool_plane_impl(s: &[f32], h: usize, w: usize, dst: &mut [f32]) {
    let ow = dst.len() / ((h + 2 - 3) / 2 + 1);
    // Per output row: the maximum over its (up to) three input rows, with two -inf past
    // the right edge; then over column triples 2·ox − 1 ..= 2·ox + 1, as pairs
    // (2·ox − 1, 2·ox) of col_max[1..] and the next pair's first value. The pads give
    // every output column ox >= 1 its pair and a next pair.
    let mut col_max = vec![f32::NEG_INFINITY; w + 2];
    for (oy, out_row) in dst.chunks_exact_mut(ow).enumerate() {
        let rows = (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h);
        col_max[..w].fill(f32::NEG_INFINITY);
        for iy in rows {
            for (m, v) in col_max[..w].iter_mut().zip(&s[iy * w..(iy + 1) * w]) {
                *m = nan_max(*m, *v);
            }
        }
        out_row[0] = nan_max(col_max[0], col_max[1]);
        let (pairs, _) = col_max[1..].as_chunks::<2>();
        for (o, (p, next)) in out_row[1..].iter_mut().zip(pairs.iter().zip(pairs.iter().skip(1))) {
            *o = nan_max(nan_max(p[0], p[1]), next[0]);
        }
    }
}

simd_dispatch! {
    /// One plane of [`max_pool_3x3_s2_p1`].
    fn max_pool_plane(s: &[f32], h: usize, w: usize, dst: &mut [f32]) => max_pool_plane_impl
}

/// `F.pad(x, (0, 1, 0, 1))` on NCHW: one row and one column of zeros at the bottom and
/// the right.
pub fn pad_bottom_right(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let out = with_f32(x, |src| {
        let mut out = vec![0f32; b * c * (h + 1) * (w + 1)];
        for (dst, s) in out.chunks_exact_mut((h + 1) * (w + 1)).zip(src.chunks_exact(h * w)) {
            for (drow, srow) in dst.chunks_exact_mut(w + 1).zip(s.chunks_exact(w)) {
                drow[..w].copy_from_slice(srow);
            }
        }
        out
    })?;
    Ok(Tensor::from_vec(out, (b, c, h + 1, w + 1), x.device())?)
}

/// `MaxPool2d(kernel_size=2, stride=1)` on NCHW (no padding; `ceil_mode` changes nothing
/// at stride 1): an (H−1)×(W−1) map, NaN propagating as in PyTorch.
pub fn max_pool_2x2_s1(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h < 2 || w < 2 {
        return Err(Error::InvalidArgument(format!("2x2 max pool of a {h}x{w} map")));
    }
    let (oh, ow) = (h - 1, w - 1);
    let out = with_f32(x, |src| {
        let mut out = vec![0f32; b * c * oh * ow];
        out.par_chunks_mut(oh * ow).zip(src.par_chunks(h * w)).for_each(|(dst, s)| {
            for (oy, row) in dst.chunks_exact_mut(ow).enumerate() {
                let (top, bottom) = (&s[oy * w..(oy + 1) * w], &s[(oy + 1) * w..(oy + 2) * w]);
                for (ox, o) in row.iter_mut().enumerate() {
                    // PyTorch's window order: row by row, left to right.
                    *o = nan_max(nan_max(nan_max(top[ox], top[ox + 1]), bottom[ox]), bottom[ox + 1]);
                }
            }
        });
        out
    })?;
    Ok(Tensor::from_vec(out, (b, c, oh, ow), x.device())?)
}

/// `AvgPool2d(2, 2, 0, ceil_mode=True)` on NCHW: a partial window at an odd edge averages
/// only the elements inside the input, as PyTorch does without padding.
pub fn avg_pool_2x2_ceil(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
    let out = with_f32(x, |src| {
        let mut out = vec![0f32; b * c * oh * ow];
        out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, dst)| {
            avg_pool_plane(&src[plane * h * w..(plane + 1) * h * w], h, w, dst);
        });
        out
    })?;
    Ok(Tensor::from_vec(out, (b, c, oh, ow), x.device())?)
}

#[inline(always)]
fn avg_pool_plane_impl(s: &[f32], h: usize, w: usize, dst: &mut [f32]) {
    let ow = w.div_ceil(2);
    // Summed in PyTorch's window order (row by row, left to right); dividing by 4, 2 or 1
    // is exact as a multiplication.
    for (oy, out_row) in dst.chunks_exact_mut(ow).enumerate() {
        let top = &s[2 * oy * w..(2 * oy + 1) * w];
        let (top_pairs, top_last) = top.as_chunks::<2>();
        if 2 * oy + 1 < h {
            let bottom = &s[(2 * oy + 1) * w..(2 * oy + 2) * w];
            let (bottom_pairs, bottom_last) = bottom.as_chunks::<2>();
            for (o, (t, b)) in out_row.iter_mut().zip(top_pairs.iter().zip(bottom_pairs)) {
                *o = (((t[0] + t[1]) + b[0]) + b[1]) * 0.25;
            }
            if let ([t], [b]) = (top_last, bottom_last) {
                out_row[ow - 1] = (t + b) * 0.5;
            }
        } else {
            for (o, t) in out_row.iter_mut().zip(top_pairs) {
                *o = (t[0] + t[1]) * 0.5;
            }
            if let [t] = top_last {
                out_row[ow - 1] = *t;
            }
        }
    }
}

simd_dispatch! {
    /// One plane of [`avg_pool_2x2_ceil`].
    fn avg_pool_plane(s: &[f32], h: usize, w: usize, dst: &mut [f32]) => avg_pool_plane_impl
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::test_rng::Rng;

    /// PyTorch's loops: every window element in row-major order.
    fn naive_pool(x: &[f32], h: usize, w: usize, max: bool) -> Vec<f32> {
        let (oh, ow) = if max { ((h - 1) / 2 + 1, (w - 1) / 2 + 1) } else { (h.div_ceil(2), w.div_ceil(2)) };
        let mut out = Vec::new();
        for oy in 0..oh {
            for ox in 0..ow {
                let (y0, x0) =
                    if max { ((2 * oy).saturating_sub(1), (2 * ox).saturating_sub(1)) } else { (2 * oy, 2 * ox) };
                let (y1, x1) = ((2 * oy + 2).min(h), (2 * ox + 2).min(w));
                let (mut m, mut sum, mut n) = (f32::NEG_INFINITY, 0f32, 0f32);
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        let v = x[iy * w + ix];
                        if v > m || v.is_nan() {
                            m = v;
                        }
                        sum += v;
                        n += 1.0;
                    }
                }
                out.push(if max { m } else { sum / n });
            }
        }
        out
    }

    #[test]
    fn pools_match_the_reference_loops() {
        let mut rng = Rng(31);
        for h in 1..8 {
            for w in 1..8 {
                let mut x = rng.vec(2 * h * w);
                if h * w > 3 {
                    x[h * w + 2] = f32::NAN;
                }
                let t = Tensor::from_vec(x.clone(), (1, 2, h, w), &Device::Cpu).unwrap();
                for max in [true, false] {
                    let got = if max { max_pool_3x3_s2_p1(&t) } else { avg_pool_2x2_ceil(&t) };
                    let got: Vec<f32> = got.unwrap().flatten_all().unwrap().to_vec1().unwrap();
                    let want: Vec<f32> = x.chunks_exact(h * w).flat_map(|plane| naive_pool(plane, h, w, max)).collect();
                    assert_eq!(got.len(), want.len(), "{h}x{w} max={max}");
                    for (g, e) in got.iter().zip(&want) {
                        assert!(g == e || (g.is_nan() && e.is_nan()), "{h}x{w} max={max}: {g} vs {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn stem_pad_and_pool_match_the_definition() {
        let mut rng = Rng(33);
        let (b, c, h, w) = (2, 3, 4, 5);
        let mut x = rng.vec(b * c * h * w);
        x[7] = f32::NAN;
        let t = Tensor::from_vec(x.clone(), (b, c, h, w), &Device::Cpu).unwrap();
        let padded = pad_bottom_right(&t).unwrap();
        assert_eq!(padded.dims(), [b, c, h + 1, w + 1]);
        let p: Vec<f32> = padded.flatten_all().unwrap().to_vec1().unwrap();
        let at = |v: &[f32], plane: usize, y: usize, xx: usize, ww: usize, hh: usize| v[(plane * hh + y) * ww + xx];
        for plane in 0..b * c {
            for y in 0..=h {
                for xx in 0..=w {
                    let want = if y < h && xx < w { at(&x, plane, y, xx, w, h) } else { 0.0 };
                    let got = at(&p, plane, y, xx, w + 1, h + 1);
                    assert!(got == want || (got.is_nan() && want.is_nan()));
                }
            }
        }
        let pooled = max_pool_2x2_s1(&padded).unwrap();
        assert_eq!(pooled.dims(), [b, c, h, w]);
        let q: Vec<f32> = pooled.flatten_all().unwrap().to_vec1().unwrap();
        for plane in 0..b * c {
            for y in 0..h {
                for xx in 0..w {
                    let mut m = f32::NEG_INFINITY;
                    for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let v = at(&p, plane, y + dy, xx + dx, w + 1, h + 1);
                        if v > m || v.is_nan() {
                            m = v;
                        }
                    }
                    let got = at(&q, plane, y, xx, w, h);
                    assert!(got == m || (got.is_nan() && m.is_nan()), "{plane} {y} {xx}: {got} vs {m}");
                }
            }
        }
        let one = Tensor::zeros((1, 1, 1, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(max_pool_2x2_s1(&one).is_err());
    }

    #[test]
    fn concat_upsamples_by_nearest_neighbour() {
        let small =
            Tensor::from_vec((0..2 * 6).map(|v| v as f32).collect::<Vec<_>>(), (1, 2, 2, 3), &Device::Cpu).unwrap();
        let big = Tensor::from_vec(vec![-1f32; 24], (1, 1, 4, 6), &Device::Cpu).unwrap();
        let out = concat_channels(&[(&small, true), (&big, false)]).unwrap();
        assert_eq!(out.dims(), [1, 3, 4, 6]);
        let v: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        for c in 0..2 {
            for y in 0..4 {
                for x in 0..6 {
                    assert_eq!(v[(c * 4 + y) * 6 + x], (c * 6 + (y / 2) * 3 + x / 2) as f32);
                }
            }
        }
        assert!(v[48..].iter().all(|&e| e == -1.0));
    }
}
