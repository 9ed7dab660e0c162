//! Building blocks shared by the model stages: convolution (dense or depthwise) with folded BatchNorm,
//! linear layers, layer norm and the MLP prediction head, each built for the kernels its
//! weights were loaded for.

use candle_core::Tensor;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::io::config::Activation;
use crate::io::weights::Weights;
use crate::kernels::conv::Conv2d;
use crate::kernels::depthwise::DepthwiseConv2d;
use crate::kernels::dispatch::{self, with_f32, AddAt};
use crate::kernels::ops;
use crate::kernels::tensor_ops::{activate, add};
use crate::kernels::{KernelConfig, Products};

/// A 2-D convolution followed by inference-mode BatchNorm, folded at load time into one
/// convolution with bias, then an optional activation (fused into the convolution).
pub struct ConvBn {
    conv: Conv2d,
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
        let (weight, bias) = fold_bn(w, conv_key, bn_key, &[c_out, c_in, kernel, kernel], bn_eps)?;
        let conv = Conv2d::new(weight, bias, c_in, c_out, kernel, stride, padding).with_kernels(w.kernels());
        Ok(Self { conv, act })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x, None, self.act)
    }

    /// `act(conv(x) + residual)` in one pass; the layer's own activation must be identity.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor, act: Activation) -> Result<Tensor> {
        if self.act == Activation::Identity {
            self.conv.forward(x, Some((residual, AddAt::BeforeAct)), act)
        } else {
            activate(&add(&self.forward(x)?, residual)?, act)
        }
    }

    /// `scale · self(x) + shift (+ residual)`: HGNetV2's learnable affine block after the
    /// activation (then its block's residual), on the convolution's output in place.
    pub fn forward_affine(&self, x: &Tensor, scale: f32, shift: f32, residual: Option<&Tensor>) -> Result<Tensor> {
        self.conv.forward_affine(x, residual.map(|r| (r, AddAt::AfterAct)), self.act, Some((scale, shift)))
    }

    /// `self(x) + residual` (the layer's activation first) in one pass.
    pub fn forward_then_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.conv.forward(x, Some((residual, AddAt::AfterAct)), self.act)
    }

    /// Re-parameterises `act(self(x) + other(x))` (RepVGG: a k×k and a centred smaller
    /// convolution, both without activation) into one convolution.
    pub fn merge_parallel(mut self, other: &ConvBn, act: Activation) -> Result<Self> {
        if self.act != Activation::Identity || other.act != Activation::Identity {
            return Err(Error::Config("only convolutions without activation can be merged".into()));
        }
        self.conv.add_centered(&other.conv)?;
        self.act = act;
        Ok(self)
    }

    /// Stacks the output channels of convolutions that read the same input.
    pub fn concat(parts: &[&ConvBn]) -> Result<Self> {
        let act = parts[0].act;
        if parts.iter().any(|p| p.act != act) {
            return Err(Error::Config("concatenated convolutions need the same activation".into()));
        }
        let convs: Vec<&Conv2d> = parts.iter().map(|p| &p.conv).collect();
        Ok(Self { conv: Conv2d::concat(&convs)?, act })
    }
}

/// Loads `{conv_key}.weight` (of `shape`, output channels first, no bias) and folds the
/// inference-mode BatchNorm at `bn_key` into it: the flattened weight and the bias.
fn fold_bn(w: &Weights, conv_key: &str, bn_key: &str, shape: &[usize], bn_eps: f64) -> Result<(Vec<f32>, Vec<f32>)> {
    let c_out = shape[0];
    let weight = w.get(&format!("{conv_key}.weight"), shape)?;
    let gamma = w.get(&format!("{bn_key}.weight"), &[c_out])?;
    let beta = w.get(&format!("{bn_key}.bias"), &[c_out])?;
    let mean = w.get(&format!("{bn_key}.running_mean"), &[c_out])?;
    let var = w.get(&format!("{bn_key}.running_var"), &[c_out])?;
    // Same arithmetic as RTDetrFrozenBatchNorm2d:
    // scale = gamma / sqrt(var + eps); y = conv(x) * scale + (beta - mean * scale).
    let scale = gamma.broadcast_div(&(var + bn_eps)?.sqrt()?)?;
    let bias = (beta - mean.mul(&scale)?)?;
    let weight = weight.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
    Ok((weight.flatten_all()?.to_vec1()?, bias.to_vec1()?))
}

/// A depthwise convolution (`groups` = channels, one k×k filter per channel) followed by
/// inference-mode BatchNorm, folded at load time, then an optional fused activation.
pub struct DwConvBn {
    conv: DepthwiseConv2d,
    act: Activation,
}

impl DwConvBn {
    /// `conv_key` holds the (channels, 1, k, k) weight (no bias), `bn_key` the BatchNorm.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &Weights,
        conv_key: &str,
        bn_key: &str,
        channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bn_eps: f64,
        act: Activation,
    ) -> Result<Self> {
        let (weight, bias) = fold_bn(w, conv_key, bn_key, &[channels, 1, kernel, kernel], bn_eps)?;
        Ok(Self { conv: DepthwiseConv2d::new(weight, bias, channels, kernel, stride, padding), act })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x, self.act, None)
    }

    /// `scale · forward(x) + shift` in the same pass (HGNetV2's learnable affine block).
    pub fn forward_affine(&self, x: &Tensor, scale: f32, shift: f32) -> Result<Tensor> {
        self.conv.forward(x, self.act, Some((scale, shift)))
    }
}

/// `nn.Linear`, run by [`ops::linear`] with an optional fused residual add and
/// activation.
pub struct Linear {
    /// Wᵀ: (in, out) row-major.
    weight_t: Vec<f32>,
    /// Wᵀ packed for the bf16 kernel, built on first use with bf16 products.
    weight_bf16: std::sync::OnceLock<crate::kernels::bf16::PackedB>,
    /// The kernels this layer runs on.
    kernels: KernelConfig,
    bias: Vec<f32>,
    in_features: usize,
    out_features: usize,
}

impl Linear {
    pub fn load(w: &Weights, key: &str, in_features: usize, out_features: usize) -> Result<Self> {
        let weight = w.get(&format!("{key}.weight"), &[out_features, in_features])?;
        let bias = w.get(&format!("{key}.bias"), &[out_features])?;
        Ok(Self::new(weight.flatten_all()?.to_vec1()?, bias.to_vec1()?, in_features, out_features)
            .with_kernels(w.kernels()))
    }

    /// `weight`: (out, in) row-major, PyTorch's layout.
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, in_features: usize, out_features: usize) -> Self {
        assert_eq!(weight.len(), in_features * out_features, "linear weight shape");
        assert_eq!(bias.len(), out_features, "linear bias shape");
        let mut weight_t = vec![0f32; weight.len()];
        for (o, row) in weight.chunks_exact(in_features.max(1)).enumerate() {
            for (i, v) in row.iter().enumerate() {
                weight_t[i * out_features + o] = *v;
            }
        }
        Self {
            weight_t,
            weight_bf16: Default::default(),
            kernels: KernelConfig::default(),
            bias,
            in_features,
            out_features,
        }
    }

    /// The same layer on other kernels.
    pub fn with_kernels(mut self, kernels: KernelConfig) -> Self {
        self.kernels = kernels;
        self.weight_bf16 = Default::default();
        self
    }

    /// `x`: (..., in) → (..., out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, None, Activation::Identity)
    }

    /// `act(x·Wᵀ + b + residual)`; `residual` has the output's shape.
    pub fn forward_with(&self, x: &Tensor, residual: Option<&Tensor>, act: Activation) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_f = *dims.last().unwrap_or(&0);
        if in_f != self.in_features {
            return Err(Error::InvalidArgument(format!("linear expects {} features, got {in_f}", self.in_features)));
        }
        let rows = x.elem_count() / in_f.max(1);
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = self.out_features;
        let out = with_f32(x, |xs| match residual {
            Some(r) => with_f32(r, |rs| {
                if rs.len() != rows * self.out_features {
                    return Err(Error::InvalidArgument("linear residual shape".into()));
                }
                Ok(self.run(xs, rows, Some(rs), act))
            })?,
            None => Ok(self.run(xs, rows, None, act)),
        })??;
        Ok(Tensor::from_vec(out, out_dims, x.device())?)
    }

    /// The layer on a raw (rows, in) buffer.
    pub fn run(&self, x: &[f32], rows: usize, residual: Option<&[f32]>, act: Activation) -> Vec<f32> {
        let flops = 2 * (rows * self.in_features * self.out_features) as u64;
        crate::kernels::flops::add(flops);
        let started = crate::kernels::flops::start();
        let packed = (self.kernels.products == Products::Bf16).then(|| {
            self.weight_bf16
                .get_or_init(|| crate::kernels::bf16::PackedB::new(&self.weight_t, self.in_features, self.out_features))
        });
        let packed_f32 = self.kernels.products == Products::PackedF32;
        let out =
            ops::linear(x, rows, &self.weight_t, packed, packed_f32, &self.bias, self.out_features, residual, act);
        crate::kernels::flops::record(
            started,
            || format!("linear {}->{} x{rows}", self.in_features, self.out_features),
            flops,
        );
        out
    }

    /// The layer applied head by head: row r of `x` holds `heads` input vectors, and output
    /// block h (out / heads columns) is head h's vector through that block's rows of W,
    /// plus the bias scaled by `bias_scale[r·heads + h]`. Used for the value projection of
    /// deformable attention after sampling ([`crate::kernels::deform_sample::sample_memory`]); f32 in
    /// every precision (it is a small product).
    pub fn run_per_head(&self, x: &[f32], rows: usize, heads: usize, bias_scale: &[f32]) -> Vec<f32> {
        let (k, n) = (self.in_features, self.out_features);
        assert!(heads > 0 && n.is_multiple_of(heads), "heads divide the output features");
        assert_eq!(x.len(), rows * heads * k, "per-head input shape");
        assert_eq!(bias_scale.len(), rows * heads, "bias scale shape");
        let hd = n / heads;
        let mut out = vec![0f32; rows * n];
        // Row blocks in parallel; per block, one product per head.
        let block = rows.div_ceil(8).max(1);
        out.par_chunks_mut(block * n).enumerate().for_each(|(bi, dst)| {
            let r0 = bi * block;
            let m = dst.len() / n;
            for h in 0..heads {
                // Head h: columns h·hd.. of dst's m rows of n, its k inputs in each of x's
                // rows r0.. of heads·k, and its hd columns of Wᵀ (k × n).
                let x_off = (r0 * heads + h) * k;
                dispatch::debug_check_block("per-head dst", dst.len(), h * hd, m, hd, n);
                dispatch::debug_check_block("per-head x", x.len(), x_off, m, k, heads * k);
                dispatch::debug_check_block("per-head weight", self.weight_t.len(), h * hd, k, hd, n);
                // SAFETY: the three blocks lie inside their slices (the shapes asserted
                // above; checked block by block in debug builds), dst apart from the inputs.
                unsafe {
                    ops::gemm_ab(
                        m,
                        hd,
                        k,
                        dst.as_mut_ptr().add(h * hd),
                        n,
                        x.as_ptr().add(x_off),
                        heads * k,
                        self.weight_t.as_ptr().add(h * hd),
                        n,
                    )
                };
            }
            for (r, row) in dst.chunks_exact_mut(n).enumerate() {
                for (h, out_h) in row.chunks_exact_mut(hd).enumerate() {
                    let scale = bias_scale[(r0 + r) * heads + h];
                    for (o, b) in out_h.iter_mut().zip(&self.bias[h * hd..(h + 1) * hd]) {
                        *o += b * scale;
                    }
                }
            }
        });
        out
    }
}

/// `nn.LayerNorm` over the last dimension.
pub struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    pub fn load(w: &Weights, key: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{key}.weight"), &[dim])?.to_vec1()?,
            bias: w.get(&format!("{key}.bias"), &[dim])?.to_vec1()?,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = with_f32(x, |xs| self.run(xs, None))?;
        Ok(Tensor::from_vec(y, x.dims(), x.device())?)
    }

    pub fn run(&self, x: &[f32], residual: Option<&[f32]>) -> Vec<f32> {
        ops::layer_norm(x, residual, &self.weight, &self.bias, self.eps)
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
            let act = if i + 1 < n { Activation::Relu } else { Activation::Identity };
            x = l.forward_with(&x, None, act)?;
        }
        Ok(x)
    }
}
