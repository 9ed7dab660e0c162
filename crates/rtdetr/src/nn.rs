//! Building blocks shared by the model stages: convolution with folded BatchNorm,
//! linear layers, layer norm, the MLP prediction head and activations.

use candle_core::{Tensor, D};

use crate::config::Activation;
use crate::error::Result;
use crate::weights::Weights;

/// Applies an activation function element-wise.
pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::Relu => x.relu()?,
        Activation::Silu => candle_nn::ops::silu(x)?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Identity => x.clone(),
    })
}

/// A 2-D convolution followed by inference-mode BatchNorm, folded at load time into one
/// convolution with bias, then an optional activation.
pub struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
    act: Activation,
}

impl ConvBn {
    /// `conv_key` holds the convolution weight (`{conv_key}.weight`, no bias), `bn_key` the
    /// BatchNorm parameters (`weight`, `bias`, `running_mean`, `running_var`).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &Weights,
        conv_key: &str,
        bn_key: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bn_eps: f64,
        act: Activation,
    ) -> Result<Self> {
        let weight = w.get(&format!("{conv_key}.weight"), &[c_out, c_in, kernel, kernel])?;
        let gamma = w.get(&format!("{bn_key}.weight"), &[c_out])?;
        let beta = w.get(&format!("{bn_key}.bias"), &[c_out])?;
        let mean = w.get(&format!("{bn_key}.running_mean"), &[c_out])?;
        let var = w.get(&format!("{bn_key}.running_var"), &[c_out])?;
        // Same arithmetic as RTDetrFrozenBatchNorm2d:
        // scale = gamma / sqrt(var + eps); y = conv(x) * scale + (beta - mean * scale).
        let scale = gamma.broadcast_div(&(var + bn_eps)?.sqrt()?)?;
        let bias = (beta - mean.mul(&scale)?)?;
        let weight = weight.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?.contiguous()?;
        Ok(Self { weight, bias: bias.reshape((1, c_out, 1, 1))?, stride, padding, act })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
        let w = self.weight.dims();
        crate::flops::add(2 * (y.elem_count() * w[1] * w[2] * w[3]) as u64);
        activate(&y.broadcast_add(&self.bias)?, self.act)
    }
}

/// `nn.Linear` with the weight stored transposed for a plain row-major GEMM.
pub struct Linear {
    weight_t: Tensor,
    bias: Tensor,
    out_features: usize,
}

impl Linear {
    pub fn load(w: &Weights, key: &str, in_features: usize, out_features: usize) -> Result<Self> {
        let weight = w.get(&format!("{key}.weight"), &[out_features, in_features])?;
        let bias = w.get(&format!("{key}.bias"), &[out_features])?;
        Ok(Self { weight_t: weight.t()?.contiguous()?, bias, out_features })
    }

    /// `x`: (..., in) → (..., out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_f = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = x.reshape((rows, in_f))?.matmul(&self.weight_t)?.broadcast_add(&self.bias)?;
        crate::flops::add(2 * (rows * in_f * self.out_features) as u64);
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = self.out_features;
        Ok(y.reshape(out_dims)?)
    }
}

/// `nn.LayerNorm` over the last dimension.
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn load(w: &Weights, key: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: w.get(&format!("{key}.weight"), &[dim])?, bias: w.get(&format!("{key}.bias"), &[dim])?, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(y.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

/// `RTDetrMLPPredictionHead`: `num_layers` linear layers with ReLU between them.
pub struct MlpHead {
    layers: Vec<Linear>,
}

impl MlpHead {
    pub fn load(w: &Weights, key: &str, input: usize, hidden: usize, output: usize, num_layers: usize) -> Result<Self> {
        let mut layers = Vec::with_capacity(num_layers);
        for i in 0..num_layers {
            let i_dim = if i == 0 { input } else { hidden };
            let o_dim = if i + 1 == num_layers { output } else { hidden };
            layers.push(Linear::load(w, &format!("{key}.layers.{i}"), i_dim, o_dim)?);
        }
        Ok(Self { layers })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        let n = self.layers.len();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x)?;
            if i + 1 < n {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

/// Multi-head scaled dot-product attention: q, k, v are (B, L, H*hd); returns (B, Lq, H*hd).
pub fn multi_head_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, lq, dim) = q.dims3()?;
    let lk = k.dim(1)?;
    let hd = dim / heads;
    let split =
        |t: &Tensor, l: usize| -> Result<Tensor> { Ok(t.reshape((b, l, heads, hd))?.transpose(1, 2)?.contiguous()?) };
    let (q, k, v) = (split(q, lq)?, split(k, lk)?, split(v, lk)?);
    let scale = (hd as f64).powf(-0.5);
    crate::flops::add(4 * (b * heads * lq * lk * hd) as u64);
    let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(&v)?;
    Ok(out.transpose(1, 2)?.reshape((b, lq, dim))?)
}

/// `MaxPool2d(kernel=3, stride=2, padding=1)` on NCHW.
pub fn max_pool_3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (oh, ow) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
    let src = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; b * c * oh * ow];
    use rayon::prelude::*;
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, dst)| {
        let s = &src[plane * h * w..(plane + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for ky in 0..3 {
                    let iy = (oy * 2 + ky) as isize - 1;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..3 {
                        let ix = (ox * 2 + kx) as isize - 1;
                        if ix < 0 || ix >= w as isize {
                            continue;
                        }
                        let v = s[iy as usize * w + ix as usize];
                        if v > m || v.is_nan() {
                            m = v;
                        }
                    }
                }
                dst[oy * ow + ox] = m;
            }
        }
    });
    Ok(Tensor::from_vec(out, (b, c, oh, ow), x.device())?)
}

/// `AvgPool2d(2, 2, 0, ceil_mode=True)` on NCHW: a partial window at an odd edge averages
/// only the elements inside the input, as PyTorch does without padding.
pub fn avg_pool_2x2_ceil(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h % 2 == 0 && w % 2 == 0 {
        return Ok(x.avg_pool2d(2)?);
    }
    let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
    let src = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; b * c * oh * ow];
    for plane in 0..b * c {
        let s = &src[plane * h * w..(plane + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut sum, mut n) = (0f32, 0f32);
                for iy in oy * 2..(oy * 2 + 2).min(h) {
                    for ix in ox * 2..(ox * 2 + 2).min(w) {
                        sum += s[iy * w + ix];
                        n += 1.0;
                    }
                }
                out[plane * oh * ow + oy * ow + ox] = sum / n;
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, c, oh, ow), x.device())?)
}
