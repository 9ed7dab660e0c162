//! Depthwise 2-D convolution (`nn.Conv2d(c, c, k, groups=c)`): every channel convolved
//! with its own k×k filter, plus bias and a fused activation, on NCHW f32 buffers.
//!
//! HGNetV2's light blocks and stage down-sampling and D-FINE's SCDown use it. It is a
//! direct loop over each output plane (one rayon task per (image, channel) plane), one
//! pass over an output row per filter tap (contiguous, so the compiler vectorises it at
//! stride 1): these layers cost k² multiply-adds per output, far less than the dense
//! convolutions around them, so clarity wins over blocking here.

use candle_core::Tensor;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::io::config::Activation;
use crate::kernels::dispatch;

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

    /// `act(conv(x) + bias)` on a (B, channels, H, W) tensor.
    pub fn forward(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
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
        let out = dispatch::with_f32(x, |xs| self.run(xs, b, h, w, act))?;
        let k = self.kernel;
        crate::kernels::flops::record(
            started,
            || format!("dwconv{k}x{k}/{} {c} {b}x{h}x{w} direct", self.stride),
            flops,
        );
        dispatch::tensor(out, (b, c, oh, ow), x.device())
    }

    /// The kernel on a raw (b, channels, h, w) buffer; returns (b, channels, oh, ow).
    pub fn run(&self, x: &[f32], b: usize, h: usize, w: usize, act: Activation) -> Vec<f32> {
        assert_eq!(x.len(), b * self.channels * h * w, "depthwise conv input length");
        let (oh, ow) = self.out_size(h, w);
        let (k, s, pad) = (self.kernel, self.stride, self.padding);
        let mut out = vec![0f32; b * self.channels * oh * ow];
        if out.is_empty() {
            return out;
        }
        out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, dst)| {
            let c = plane % self.channels;
            let src = &x[plane * h * w..(plane + 1) * h * w];
            let filter = &self.weight[c * k * k..(c + 1) * k * k];
            for (oy, row) in dst.chunks_exact_mut(ow).enumerate() {
                row.fill(self.bias[c]);
                // Filter rows whose input row oy·s + ky − pad lies inside the map; per
                // filter tap, one pass over the output columns whose input column
                // ox·s + kx − pad does (each output sums bias, then taps in row-major
                // order, as a loop over one output at a time would).
                let ky_lo = pad.saturating_sub(oy * s);
                let ky_hi = (h + pad).saturating_sub(oy * s).min(k);
                for ky in ky_lo..ky_hi {
                    let iy = oy * s + ky - pad;
                    let src_row = &src[iy * w..(iy + 1) * w];
                    for (kx, &f) in filter[ky * k..(ky + 1) * k].iter().enumerate() {
                        let lo = pad.saturating_sub(kx).div_ceil(s).min(ow);
                        let hi = (w + pad).saturating_sub(kx).div_ceil(s).clamp(lo, ow);
                        if lo == hi {
                            continue;
                        }
                        // Inside the row by the choice of lo and hi.
                        let first = lo * s + kx - pad;
                        if s == 1 {
                            let taps = &src_row[first..first + (hi - lo)];
                            for (o, v) in row[lo..hi].iter_mut().zip(taps) {
                                *o += f * v;
                            }
                        } else {
                            for (o, v) in row[lo..hi].iter_mut().zip(src_row[first..].iter().step_by(s)) {
                                *o += f * v;
                            }
                        }
                    }
                }
            }
            dispatch::act_inplace(dst, act);
        });
        out
    }
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
        ] {
            let x = rng.vec(b * c * h * w);
            let wt = rng.vec(c * k * k);
            let bias = rng.vec(c);
            let conv = DepthwiseConv2d::new(wt.clone(), bias.clone(), c, k, s, pad);
            for act in [Activation::Identity, Activation::Relu, Activation::Silu] {
                let got = conv.run(&x, b, h, w, act);
                let want = naive(&x, &wt, &bias, (b, c, h, w), k, s, pad, act);
                assert_eq!(got.len(), want.len(), "b{b} c{c} {h}x{w} k{k} s{s} p{pad}");
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!((g - e).abs() <= 1e-6, "b{b} c{c} {h}x{w} k{k} s{s} p{pad} {act:?} [{i}]: {g} vs {e}");
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
            let got = conv.forward(&x, Activation::Identity).unwrap();
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
        assert!(conv.forward(&x, Activation::Identity).is_err());
        let x = Tensor::zeros((1, 2, 2, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(conv.forward(&x, Activation::Identity).is_err());
    }
}
