//! HGNetV2 backbone (transformers' `HGNetV2Backbone`, D-FINE's backbone): a stem with a
//! max-pool / convolution split, then HG stages of HG blocks that concatenate every
//! layer's output and aggregate them with a squeeze and an excitation 1×1 convolution.
//!
//! Weights are read by their Hugging Face key paths under `{prefix}` (D-FINE:
//! `model.backbone.model`): `embedder.stem{1,2a,2b,3,4}` and
//! `encoder.stages.{s}.{downsample,blocks.{b}.{layers.{l},aggregation.{0,1}}}`, each a
//! `convolution` + `normalization` (BatchNorm, folded at load) and, with
//! `use_learnable_affine_block`, a `lab` (`scale`, `bias`) after the activation.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::io::config::{Activation, HgNetV2Config};
use crate::io::weights::Weights;
use crate::kernels::tensor_ops::{add, concat_channels, max_pool_2x2_s1, pad_bottom_right};
use crate::model::layers::{ConvBn, DwConvBn};

/// BatchNorm epsilon of the backbone (`nn.BatchNorm2d`'s default, also
/// `DFineFrozenBatchNorm2d`'s fixed value).
const BN_EPS: f64 = 1e-5;

/// The convolution of a [`ConvLayer`]: dense, or depthwise (`groups` = channels).
enum Conv {
    Dense(ConvBn),
    Depthwise(DwConvBn),
}

/// `HGNetV2ConvLayer`: convolution (padding (k−1)/2, no bias) + BatchNorm + activation,
/// then the learnable affine block `scale · x + bias` when configured (only layers with an
/// activation have one).
struct ConvLayer {
    conv: Conv,
    lab: Option<(f32, f32)>,
}

/// How a [`ConvLayer`] is built.
#[derive(Clone, Copy)]
struct ConvSpec {
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    /// Depthwise (`groups` = `c_in` = `c_out`).
    depthwise: bool,
    act: Activation,
    /// The checkpoint has learnable affine blocks (used where `act` is not identity).
    lab: bool,
}

impl ConvSpec {
    fn dense(c_in: usize, c_out: usize, kernel: usize, stride: usize, act: Activation, lab: bool) -> Self {
        Self { c_in, c_out, kernel, stride, depthwise: false, act, lab }
    }

    fn depthwise(channels: usize, kernel: usize, stride: usize, act: Activation, lab: bool) -> Self {
        Self { c_in: channels, c_out: channels, kernel, stride, depthwise: true, act, lab }
    }
}

impl ConvLayer {
    fn load(w: &Weights, key: &str, spec: ConvSpec) -> Result<Self> {
        let (conv_key, bn_key) = (format!("{key}.convolution"), format!("{key}.normalization"));
        let padding = (spec.kernel - 1) / 2;
        let conv = if spec.depthwise {
            Conv::Depthwise(DwConvBn::load(
                w,
                &conv_key,
                &bn_key,
                spec.c_out,
                spec.kernel,
                spec.stride,
                padding,
                BN_EPS,
                spec.act,
            )?)
        } else {
            Conv::Dense(ConvBn::load(
                w,
                &conv_key,
                &bn_key,
                spec.c_in,
                spec.c_out,
                spec.kernel,
                spec.stride,
                padding,
                BN_EPS,
                spec.act,
            )?)
        };
        // transformers: `if activation and use_learnable_affine_block`.
        let lab = if spec.lab && spec.act != Activation::Identity {
            let scale = w.get(&format!("{key}.lab.scale"), &[1])?.to_vec1::<f32>()?[0];
            let bias = w.get(&format!("{key}.lab.bias"), &[1])?.to_vec1::<f32>()?[0];
            Some((scale, bias))
        } else {
            None
        };
        Ok(Self { conv, lab })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match (&self.conv, self.lab) {
            (Conv::Dense(c), None) => c.forward(x),
            (Conv::Dense(c), Some((scale, bias))) => c.forward_affine(x, scale, bias, None),
            (Conv::Depthwise(c), None) => c.forward(x),
            (Conv::Depthwise(c), Some((scale, bias))) => c.forward_affine(x, scale, bias),
        }
    }

    /// `self(x) + residual`, in one pass for dense layers.
    fn forward_then_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        match (&self.conv, self.lab) {
            (Conv::Dense(c), None) => c.forward_then_add(x, residual),
            (Conv::Dense(c), Some((scale, bias))) => c.forward_affine(x, scale, bias, Some(residual)),
            (Conv::Depthwise(_), _) => add(&self.forward(x)?, residual),
        }
    }
}

/// One layer of an HG block: a convolution, or a light block (`HGNetV2ConvLayerLight`:
/// a 1×1 convolution without activation, then a depthwise k×k one).
struct BlockLayer {
    /// The light block's 1×1 convolution.
    pointwise: Option<ConvLayer>,
    conv: ConvLayer,
}

impl BlockLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.pointwise {
            Some(p) => self.conv.forward(&p.forward(x)?),
            None => self.conv.forward(x),
        }
    }
}

/// `HGNetV2BasicLayer` (an HG block): layers in sequence, the block's input and every
/// layer's output concatenated, squeezed to out/2 then excited to out channels (1×1,
/// ReLU), plus the input for every block but a stage's first.
struct HgBlock {
    layers: Vec<BlockLayer>,
    squeeze: ConvLayer,
    excite: ConvLayer,
    residual: bool,
}

/// The shape of one HG block.
struct BlockSpec {
    c_in: usize,
    mid: usize,
    c_out: usize,
    num_layers: usize,
    kernel: usize,
    light: bool,
    residual: bool,
    lab: bool,
}

impl HgBlock {
    fn load(w: &Weights, key: &str, s: &BlockSpec) -> Result<Self> {
        // The block's convolutions always use ReLU (transformers' default activation);
        // only the stem follows `hidden_act`.
        let relu = Activation::Relu;
        let mut layers = Vec::with_capacity(s.num_layers);
        for i in 0..s.num_layers {
            let c_in = if i == 0 { s.c_in } else { s.mid };
            let lk = format!("{key}.layers.{i}");
            layers.push(if s.light {
                let pointwise = ConvSpec::dense(c_in, s.mid, 1, 1, Activation::Identity, s.lab);
                BlockLayer {
                    pointwise: Some(ConvLayer::load(w, &format!("{lk}.conv1"), pointwise)?),
                    conv: ConvLayer::load(
                        w,
                        &format!("{lk}.conv2"),
                        ConvSpec::depthwise(s.mid, s.kernel, 1, relu, s.lab),
                    )?,
                }
            } else {
                let spec = ConvSpec::dense(c_in, s.mid, s.kernel, 1, relu, s.lab);
                BlockLayer { pointwise: None, conv: ConvLayer::load(w, &lk, spec)? }
            });
        }
        let total = s.c_in + s.num_layers * s.mid;
        let squeeze = ConvLayer::load(
            w,
            &format!("{key}.aggregation.0"),
            ConvSpec::dense(total, s.c_out / 2, 1, 1, relu, s.lab),
        )?;
        let excite = ConvLayer::load(
            w,
            &format!("{key}.aggregation.1"),
            ConvSpec::dense(s.c_out / 2, s.c_out, 1, 1, relu, s.lab),
        )?;
        Ok(Self { layers, squeeze, excite, residual: s.residual })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut outs = Vec::with_capacity(self.layers.len() + 1);
        outs.push(x.clone());
        for layer in &self.layers {
            let y = layer.forward(outs.last().expect("the input is first"))?;
            outs.push(y);
        }
        let parts: Vec<(&Tensor, bool)> = outs.iter().map(|t| (t, false)).collect();
        let squeezed = self.squeeze.forward(&concat_channels(&parts)?)?;
        if self.residual {
            self.excite.forward_then_add(&squeezed, x)
        } else {
            self.excite.forward(&squeezed)
        }
    }
}

/// `HGNetV2Stage`: an optional depthwise 3×3 down-sampling convolution (BatchNorm, no
/// activation), then HG blocks.
struct Stage {
    downsample: Option<ConvLayer>,
    blocks: Vec<HgBlock>,
}

/// `HGNetV2Embeddings`: the stem.
struct Stem {
    stem1: ConvLayer,
    stem2a: ConvLayer,
    stem2b: ConvLayer,
    stem3: ConvLayer,
    stem4: ConvLayer,
}

impl Stem {
    fn load(w: &Weights, cfg: &HgNetV2Config, prefix: &str, act: Activation) -> Result<Self> {
        let [c0, c1, c2] = [cfg.stem_channels[0], cfg.stem_channels[1], cfg.stem_channels[2]];
        let stride = |i: usize| -> Result<usize> {
            cfg.stem_strides[i]
                .square()
                .ok_or_else(|| Error::Config(format!("backbone stem stride {i}: unequal strides are not supported")))
        };
        let lab = cfg.use_learnable_affine_block;
        let p = format!("{prefix}.embedder");
        let layer = |name: &str, c_in: usize, c_out: usize, k: usize, i: usize| -> Result<ConvLayer> {
            ConvLayer::load(w, &format!("{p}.{name}"), ConvSpec::dense(c_in, c_out, k, stride(i)?, act, lab))
        };
        Ok(Self {
            stem1: layer("stem1", c0, c1, 3, 0)?,
            stem2a: layer("stem2a", c1, c1 / 2, 2, 1)?,
            stem2b: layer("stem2b", c1 / 2, c1, 2, 2)?,
            stem3: layer("stem3", c1 * 2, c1, 3, 3)?,
            stem4: layer("stem4", c1, c2, 1, 4)?,
        })
    }

    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        // stem1, pad right/bottom by one; one branch max-pools 2×2 (stride 1), the other
        // runs stem2a, pads again and runs stem2b (2×2 kernels, no padding); both keep the
        // size, and their concatenation goes through stem3 (stride 2) and stem4 (1×1).
        let e = pad_bottom_right(&self.stem1.forward(pixels)?)?;
        let a = self.stem2b.forward(&pad_bottom_right(&self.stem2a.forward(&e)?)?)?;
        let pooled = max_pool_2x2_s1(&e)?;
        let cat = concat_channels(&[(&pooled, false), (&a, false)])?;
        self.stem4.forward(&self.stem3.forward(&cat)?)
    }
}

/// The backbone: returns the feature maps of the configured output stages.
pub struct HgNetV2 {
    stem: Stem,
    stages: Vec<Stage>,
    /// 1-based stage numbers whose outputs are returned, increasing.
    out_stages: Vec<usize>,
    out_channels: Vec<usize>,
    total_stride: usize,
}

impl HgNetV2 {
    /// Builds the backbone from the checkpoint's tensors under `prefix` (D-FINE:
    /// `model.backbone.model`). `cfg` must have been validated (it is when read by
    /// [`crate::io::config::ModelConfig::from_file`]).
    pub fn load(w: &Weights, cfg: &HgNetV2Config, prefix: &str) -> Result<Self> {
        let act = Activation::parse(&cfg.hidden_act)?;
        let lab = cfg.use_learnable_affine_block;
        let stem = Stem::load(w, cfg, prefix, act)?;
        let mut stages = Vec::with_capacity(cfg.num_stages());
        for s in 0..cfg.num_stages() {
            let key = format!("{prefix}.encoder.stages.{s}");
            let (c_in, c_out) = (cfg.stage_in_channels[s], cfg.stage_out_channels[s]);
            let downsample = if cfg.stage_downsample[s] {
                let stride = cfg.stage_downsample_strides[s].square().ok_or_else(|| {
                    Error::Config(format!("backbone stage {s}: unequal down-sampling strides are not supported"))
                })?;
                // No activation, hence no affine block.
                let spec = ConvSpec::depthwise(c_in, 3, stride, Activation::Identity, lab);
                Some(ConvLayer::load(w, &format!("{key}.downsample"), spec)?)
            } else {
                None
            };
            let blocks = (0..cfg.stage_num_blocks[s])
                .map(|b| {
                    let spec = BlockSpec {
                        c_in: if b == 0 { c_in } else { c_out },
                        mid: cfg.stage_mid_channels[s],
                        c_out,
                        num_layers: cfg.stage_numb_of_layers[s],
                        kernel: cfg.stage_kernel_size[s],
                        light: cfg.stage_light_block[s],
                        residual: b != 0,
                        lab,
                    };
                    HgBlock::load(w, &format!("{key}.blocks.{b}"), &spec)
                })
                .collect::<Result<Vec<_>>>()?;
            stages.push(Stage { downsample, blocks });
        }
        let out_stages = cfg.out_stage_indices().map_err(Error::Config)?;
        let out_channels = out_stages.iter().map(|&i| cfg.stage_out_channels[i - 1]).collect();
        let last = out_stages.last().copied().unwrap_or(0);
        let stem_stride: usize = cfg.stem_strides.iter().filter_map(|s| s.square()).product();
        let stage_stride: usize = (0..last)
            .filter(|&s| cfg.stage_downsample[s])
            .filter_map(|s| cfg.stage_downsample_strides[s].square())
            .product();
        Ok(Self { stem, stages, out_stages, out_channels, total_stride: stem_stride * stage_stride })
    }

    /// Channels of each returned feature map.
    pub fn out_channels(&self) -> &[usize] {
        &self.out_channels
    }

    /// The stride of the coarsest returned map: inputs whose sides are multiples of it
    /// give every map an exact size.
    pub fn total_stride(&self) -> usize {
        self.total_stride
    }

    /// (B, 3, H, W) pixels → the feature maps of the output stages, in order.
    pub fn forward(&self, pixels: &Tensor) -> Result<Vec<Tensor>> {
        let mut x = self.stem.forward(pixels)?;
        let last = self.out_stages.last().copied().unwrap_or(0);
        let mut outs = Vec::with_capacity(self.out_stages.len());
        // Stages after the last returned one would be wasted work.
        for (s, stage) in self.stages.iter().enumerate().take(last) {
            if let Some(d) = &stage.downsample {
                x = d.forward(&x)?;
            }
            for block in &stage.blocks {
                x = block.forward(&x)?;
            }
            if self.out_stages.contains(&(s + 1)) {
                outs.push(x.clone());
            }
        }
        Ok(outs)
    }
}
