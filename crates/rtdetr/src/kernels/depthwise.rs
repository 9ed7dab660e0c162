//! Depthwise 2-D convolution (`nn.Conv2d(c, c, k, groups=c)`): every channel convolved
//! with its own k×k filter, plus bias, a fused activation and an optional fused affine
//! `scale · act(·) + shift` (HGNetV2's learnable affine block), on NCHW f32 buffers.
//!
//! HGNetV2's light blocks and stage down-sampling and D-FINE's SCDown use it. One rayon
//! task per (image, channel) plane. The plane is first copied into a zero-padded scratch
//! split into `stride` column phases (phase p holds padded columns p, p + s, p + 2s, …), so
//! that for every filter tap the inputs of consecutive outputs are consecutive in memory,
//! borders included: the inner loop is a branch-free multiply-add over 16 outputs held in
//! registers, and each output is stored once. These layers are memory-bound (k² multiply-
//! adds per output); the point is to touch each input and output as few times as possible.

use candle_core::Tensor;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::io::config::Activation;
use crate::kernels::dispatch;

/// Outputs accumulated together in registers (one AVX-512 vector, two AVX2 ones).
const LANES: usize = 16;

/// A depthwise convolution with bias (BatchNorm already folded in).
#[derive(Debug, Clone)]
pub struct DepthwiseConv2d {
    /// (channels, k·k), row-major: PyTorch's (c, 1, k, k) weight flattened.
    weight: Vec<f32>,
    bias: Vec<f32>,
    channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl DepthwiseConv2d {
    /// `weight`: (channels, 1, k, k) flattened; `bias`: (channels).
    pub fn new(
        weight: Vec<f32>,
        bias: Vec<f32>,
        channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        assert_eq!(weight.len(), channels * kernel * kernel, "depthwise weight shape");
        assert_eq!(bias.len(), channels, "depthwise bias shape");
        assert!(kernel >= 1 && stride >= 1, "kernel and stride must be positive");
        Self { weight, bias, channels, kernel, stride, padding }
    }

    /// Output spatial size for an `h`x`w` input (PyTorch's floor rule).
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let o = |n: usize| (n + 2 * self.padding).saturating_sub(self.kernel) / self.stride + 1;
        (o(h), o(w))
    }

    /// `act(conv(x) + bias)`, then `scale · y + shift` when `affine` is `Some((scale,
    /// shift))`, on a (B, channels, H, W) tensor.
    pub fn forward(&self, x: &Tensor, act: Activation, affine: Option<(f32, f32)>) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.channels {
            return Err(Error::InvalidArgument(format!("depthwise conv expects {} channels, got {c}", self.channels)));
        }
        if h + 2 * self.padding < self.kernel || w + 2 * self.padding < self.kernel {
            return Err(Error::InvalidArgument(format!("depthwise conv input {h}x{w} is smaller than its kernel")));
        }
        let (oh, ow) = self.out_size(h, w);
        let flops = 2 * (b * c * oh * ow * self.kernel * self.kernel) as u64;
        crate::kernels::flops::add(flops);
        let started = crate::kernels::flops::start();
        let out = dispatch::with_f32(x, |xs| self.run(xs, b, h, w, act, affine))?;
        let k = self.kernel;
        crate::kernels::flops::record(
            started,
            || format!("dwconv{k}x{k}/{} {c} {b}x{h}x{w} phased", self.stride),
            flops,
        );
        dispatch::tensor(out, (b, c, oh, ow), x.device())
    }

    /// The kernel on a raw (b, channels, h, w) buffer; returns (b, channels, oh, ow).
    pub fn run(
        &self,
        x: &[f32],
        b: usize,
        h: usize,
        w: usize,
        act: Activation,
        affine: Option<(f32, f32)>,
    ) -> Vec<f32> {
        assert_eq!(x.len(), b * self.channels * h * w, "depthwise conv input length");
        assert!(h + 2 * self.padding >= self.kernel && w + 2 * self.padding >= self.kernel, "input below kernel");
        let (oh, ow) = self.out_size(h, w);
        let (k, s, pad) = (self.kernel, self.stride, self.padding);
        let mut out = vec![0f32; b * self.channels * oh * ow];
        if out.is_empty() {
            return out;
        }
        // Phase-split padded plane: `s` phases of `rows` rows, `row_len` apart. A phase
        // holds ⌈(w + 2·pad) / s⌉ columns; rows are long enough that every tap may read
        // whole LANES-wide chunks, so partial chunks take the same path (their extra lanes
        // read zeros or the next row and are never stored).
        let rows = h + 2 * pad;
        let row_len = (w + 2 * pad).div_ceil(s).max((k - 1) / s + ow.div_ceil(LANES) * LANES);
        // Tap (ky, kx) of output row oy starts at oy·s·row_len + taps[ky·k + kx]: phase
        // kx mod s, row oy·s + ky, column kx div s.
        let taps: Vec<usize> = (0..k * k).map(|t| (t % k % s * rows + t / k) * row_len + t % k / s).collect();
        out.par_chunks_mut(oh * ow).enumerate().for_each_init(
            || vec![0f32; s * rows * row_len],
            |phased, (plane, dst)| {
                let c = plane % self.channels;
                let src = &x[plane * h * w..(plane + 1) * h * w];
                // Padded column j·s + p goes to phase p, column j. The border cells are
                // the same for every plane and never written: they stay zero from the
                // allocation.
                if s == 2 {
                    split_rows_in_two(src, w, pad, rows, row_len, phased);
                } else {
                    for (y, row) in src.chunks_exact(w).enumerate() {
                        for p in 0..s {
                            // The first input column x0 with (x0 + pad) mod s = p.
                            let x0 = (p + s - pad % s) % s;
                            if x0 >= w {
                                continue;
                            }
                            let start = (p * rows + y + pad) * row_len + (x0 + pad) / s;
                            let dst_row = &mut phased[start..start + (w - x0).div_ceil(s)];
                            if s == 1 {
                                dst_row.copy_from_slice(row);
                            } else {
                                for (d, &v) in dst_row.iter_mut().zip(row[x0..].iter().step_by(s)) {
                                    *d = v;
                                }
                            }
                        }
                    }
                }
                let filter = &self.weight[c * k * k..(c + 1) * k * k];
                dispatch_plane_rows(phased, s * row_len, &taps, filter, self.bias[c], ow, dst);
                match affine {
                    None => dispatch::act_inplace(dst, act),
                    Some((scale, shift)) => dispatch::act_affine_inplace(dst, act, scale, shift),
                }
            },
        );
        out
    }
}

/// The phase split at stride 2 (the common case: HGNetV2's down-sampling, SCDown): input
/// column 2j goes to phase pad mod 2, column j + ⌊pad/2⌋, and column 2j + 1 to the other
/// phase, column j + ⌊(pad + 1)/2⌋; one pass over each row's pairs, which vectorises (the
/// general loop's strided reads do not).
fn split_rows_in_two(src: &[f32], w: usize, pad: usize, rows: usize, row_len: usize, phased: &mut [f32]) {
    let (phase0, phase1) = phased.split_at_mut(rows * row_len);
    let (even_phase, odd_phase) = if pad.is_multiple_of(2) { (phase0, phase1) } else { (phase1, phase0) };
    let (even_col, odd_col) = (pad / 2, pad.div_ceil(2));
    for (y, row) in src.chunks_exact(w).enumerate() {
        let r = (y + pad) * row_len;
        let even = &mut even_phase[r + even_col..r + even_col + w.div_ceil(2)];
        let odd = &mut odd_phase[r + odd_col..r + odd_col + w / 2];
        for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2)) {
            *e = pair[0];
            *o = pair[1];
        }
        if w % 2 == 1 {
            even[w / 2] = row[w - 1];
        }
    }
}

/// One output plane (`dst`: rows of `ow`) from its phase-split padded input: output (oy,
/// ox) = bias + Σ_t filter[t] · phased[oy·row_step + taps[t] + ox]. Every tap reads whole
/// LANES-wide chunks (the caller's rows are long enough); a partial last chunk stores only
/// its `ow mod LANES` outputs.
#[inline(always)]
fn plane_rows_impl(
    phased: &[f32],
    row_step: usize,
    taps: &[usize],
    filter: &[f32],
    bias: f32,
    ow: usize,
    dst: &mut [f32],
) {
    for (oy, out_row) in dst.chunks_exact_mut(ow).enumerate() {
        let base = oy * row_step;
        for (chunk, out) in out_row.chunks_mut(LANES).enumerate() {
            let first = base + chunk * LANES;
            let mut acc = [bias; LANES];
            for (&tap, &f) in taps.iter().zip(filter) {
                let v: &[f32; LANES] = phased[first + tap..][..LANES].try_into().expect("LANES inputs");
                for (a, v) in acc.iter_mut().zip(v) {
                    *a += f * v;
                }
            }
            out.copy_from_slice(&acc[..out.len()]);
        }
    }
}

dispatch::simd_dispatch! {
    /// [`plane_rows_impl`] compiled for the CPU's vector width.
    fn dispatch_plane_rows(
        phased: &[f32],
        row_step: usize,
        taps: &[usize],
        filter: &[f32],
        bias: f32,
        ow: usize,
        dst: &mut [f32],
    ) => plane_rows_impl
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    use crate::test_rng::Rng;

    /// The definition, one output at a time: zero padding, then bias and activation.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f32],
        wt: &[f32],
        bias: &[f32],
        (b, c, h, w): (usize, usize, usize, usize),
        k: usize,
        s: usize,
        pad: usize,
        act: Activation,
    ) -> Vec<f32> {
        let oh = (h + 2 * pad - k) / s + 1;
        let ow = (w + 2 * pad - k) / s + 1;
        let mut out = Vec::with_capacity(b * c * oh * ow);
        for img in 0..b {
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias[ch];
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky) as isize - pad as isize;
                                let ix = (ox * s + kx) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let v = x[((img * c + ch) * h + iy as usize) * w + ix as usize];
                                acc += wt[(ch * k + ky) * k + kx] * v;
                            }
                        }
                        out.push(dispatch::act(acc, act));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition() {
        let mut rng = Rng(41);
        // Odd and even kernels, strides 1-3, paddings below, at and above k/2, maps smaller
        // than the kernel's reach, odd sizes.
        for &(b, c, h, w, k, s, pad) in &[
            (1, 3, 7, 5, 3, 1, 1),
            (2, 4, 8, 9, 3, 2, 1),
            (1, 5, 9, 6, 5, 1, 2),
            (1, 2, 11, 10, 5, 2, 2),
            (1, 3, 4, 6, 2, 1, 0),
            (1, 2, 5, 5, 3, 3, 0),
            (1, 2, 3, 2, 5, 1, 2),
            (1, 1, 1, 1, 1, 1, 0),
            (2, 3, 6, 7, 3, 2, 3),
            // Rows of 16 outputs and more (the register-blocked path) with and without a
            // tail, at strides 1-3.
            (1, 3, 9, 40, 5, 1, 2),
            (1, 2, 7, 16, 3, 1, 1),
            (1, 2, 8, 45, 3, 2, 1),
            (2, 2, 5, 33, 3, 3, 1),
            (1, 2, 6, 64, 2, 2, 0),
            (1, 1, 3, 70, 5, 2, 2),
        ] {
            let x = rng.vec(b * c * h * w);
            let wt = rng.vec(c * k * k);
            let bias = rng.vec(c);
            let conv = DepthwiseConv2d::new(wt.clone(), bias.clone(), c, k, s, pad);
            for act in [Activation::Identity, Activation::Relu, Activation::Silu] {
                for affine in [None, Some((0.7f32, -0.3f32))] {
                    let got = conv.run(&x, b, h, w, act, affine);
                    let mut want = naive(&x, &wt, &bias, (b, c, h, w), k, s, pad, act);
                    if let Some((scale, shift)) = affine {
                        want.iter_mut().for_each(|v| *v = scale * *v + shift);
                    }
                    assert_eq!(got.len(), want.len(), "b{b} c{c} {h}x{w} k{k} s{s} p{pad}");
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - e).abs() <= 1e-6,
                            "b{b} c{c} {h}x{w} k{k} s{s} p{pad} {act:?} {affine:?} [{i}]: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matches_candle_grouped_conv() {
        let mut rng = Rng(42);
        let (b, c, h, w, k) = (2, 6, 9, 8, 5);
        let x = Tensor::from_vec(rng.vec(b * c * h * w), (b, c, h, w), &Device::Cpu).unwrap();
        let wt = rng.vec(c * k * k);
        let bias = rng.vec(c);
        for (s, pad) in [(1, 2), (2, 2)] {
            let conv = DepthwiseConv2d::new(wt.clone(), bias.clone(), c, k, s, pad);
            let got = conv.forward(&x, Activation::Identity, None).unwrap();
            let wt_t = Tensor::from_vec(wt.clone(), (c, 1, k, k), &Device::Cpu).unwrap();
            let bt = Tensor::from_vec(bias.clone(), (1, c, 1, 1), &Device::Cpu).unwrap();
            let want = x.conv2d(&wt_t, pad, s, 1, c).unwrap().broadcast_add(&bt).unwrap();
            assert_eq!(got.dims(), want.dims());
            let d = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let conv = DepthwiseConv2d::new(vec![0.0; 2 * 9], vec![0.0; 2], 2, 3, 1, 0);
        let x = Tensor::zeros((1, 3, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(conv.forward(&x, Activation::Identity, None).is_err());
        let x = Tensor::zeros((1, 2, 2, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(conv.forward(&x, Activation::Identity, None).is_err());
    }
}
