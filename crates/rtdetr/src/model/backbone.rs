//! ResNet-vd backbone (`RTDetrResNetBackbone`): deep stem, basic or bottleneck stages,
//! average-pool shortcuts on down-sampling ("vd").

use candle_core::Tensor;

use crate::error::Result;
use crate::io::config::{Activation, ResNetConfig};
use crate::io::weights::Weights;
use crate::kernels::tensor_ops::{avg_pool_2x2_ceil, max_pool_3x3_s2_p1};
use crate::model::layers::ConvBn;

/// Frozen BatchNorm in the backbone uses a fixed epsilon (RTDetrFrozenBatchNorm2d).
const BACKBONE_BN_EPS: f64 = 1e-5;

/// `RTDetrResNetConvLayer`: conv (padding k/2, no bias) + BN + activation.
fn conv_layer(
    w: &Weights,
    key: &str,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    act: Activation,
) -> Result<ConvBn> {
    ConvBn::load(
        w,
        &format!("{key}.convolution"),
        &format!("{key}.normalization"),
        c_in,
        c_out,
        kernel,
        stride,
        kernel / 2,
        BACKBONE_BN_EPS,
        act,
    )
}

/// The residual branch's projection.
enum Shortcut {
    Identity,
    /// 1x1 conv + BN (stride as given).
    Conv(ConvBn),
    /// AvgPool 2x2 (ceil mode) then an optional 1x1 conv + BN.
    PoolConv(Option<ConvBn>),
}

impl Shortcut {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Identity => Ok(x.clone()),
            Self::Conv(c) => c.forward(x),
            Self::PoolConv(c) => {
                let p = avg_pool_2x2_ceil(x)?;
                match c {
                    Some(c) => c.forward(&p),
                    None => Ok(p),
                }
            }
        }
    }
}

/// A residual layer. Its inner convolutions always use ReLU (transformers hard-codes it);
/// only the activation after the residual sum follows `hidden_act`.
struct ResidualLayer {
    convs: Vec<ConvBn>,
    shortcut: Shortcut,
    act: Activation,
}

impl ResidualLayer {
    fn shortcut_conv(w: &Weights, key: &str, c_in: usize, c_out: usize, stride: usize) -> Result<ConvBn> {
        conv_layer(w, key, c_in, c_out, 1, stride, Activation::Identity)
    }

    /// `RTDetrResNetBasicLayer`.
    fn basic(
        w: &Weights,
        key: &str,
        c_in: usize,
        c_out: usize,
        stride: usize,
        apply_shortcut: bool,
        act: Activation,
    ) -> Result<Self> {
        let shortcut = match (c_in != c_out, apply_shortcut) {
            (_, false) => Shortcut::Identity,
            (true, true) => {
                Shortcut::PoolConv(Some(Self::shortcut_conv(w, &format!("{key}.shortcut.1"), c_in, c_out, 1)?))
            }
            (false, true) => Shortcut::Conv(Self::shortcut_conv(w, &format!("{key}.shortcut"), c_in, c_out, stride)?),
        };
        let convs = vec![
            conv_layer(w, &format!("{key}.layer.0"), c_in, c_out, 3, stride, Activation::Relu)?,
            conv_layer(w, &format!("{key}.layer.1"), c_out, c_out, 3, 1, Activation::Identity)?,
        ];
        Ok(Self { convs, shortcut, act })
    }

    /// `RTDetrResNetBottleNeckLayer`.
    fn bottleneck(
        w: &Weights,
        key: &str,
        c_in: usize,
        c_out: usize,
        stride: usize,
        downsample_in_bottleneck: bool,
        act: Activation,
    ) -> Result<Self> {
        let apply = c_in != c_out || stride != 1;
        let reduced = c_out / 4;
        let shortcut = if stride == 2 {
            let conv =
                if apply { Some(Self::shortcut_conv(w, &format!("{key}.shortcut.1"), c_in, c_out, 1)?) } else { None };
            Shortcut::PoolConv(conv)
        } else if apply {
            Shortcut::Conv(Self::shortcut_conv(w, &format!("{key}.shortcut"), c_in, c_out, stride)?)
        } else {
            Shortcut::Identity
        };
        let (s1, s2) = if downsample_in_bottleneck { (stride, 1) } else { (1, stride) };
        let convs = vec![
            conv_layer(w, &format!("{key}.layer.0"), c_in, reduced, 1, s1, Activation::Relu)?,
            conv_layer(w, &format!("{key}.layer.1"), reduced, reduced, 3, s2, Activation::Relu)?,
            conv_layer(w, &format!("{key}.layer.2"), reduced, c_out, 1, 1, Activation::Identity)?,
        ];
        Ok(Self { convs, shortcut, act })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (last, first) = self.convs.split_last().expect("residual layers have convolutions");
        let mut h = x.clone();
        for c in first {
            h = c.forward(&h)?;
        }
        let r = self.shortcut.forward(x)?;
        last.forward_add(&h, &r, self.act)
    }
}

/// The backbone: returns the feature maps of the configured output stages.
pub struct Backbone {
    stem: Vec<ConvBn>,
    stages: Vec<Vec<ResidualLayer>>,
    out_stages: Vec<usize>,
    out_channels: Vec<usize>,
}

impl Backbone {
    pub fn load(w: &Weights, cfg: &ResNetConfig, prefix: &str) -> Result<Self> {
        let act = Activation::parse(&cfg.hidden_act)?;
        let e = cfg.embedding_size;
        let p = format!("{prefix}.embedder.embedder");
        let stem = vec![
            conv_layer(w, &format!("{p}.0"), cfg.num_channels, e / 2, 3, 2, act)?,
            conv_layer(w, &format!("{p}.1"), e / 2, e / 2, 3, 1, act)?,
            conv_layer(w, &format!("{p}.2"), e / 2, e, 3, 1, act)?,
        ];
        let bottleneck = cfg.layer_type == "bottleneck";
        let mut stages = Vec::new();
        let mut c_in = e;
        for (s, (&c_out, &depth)) in cfg.hidden_sizes.iter().zip(&cfg.depths).enumerate() {
            let stride = if s == 0 && !cfg.downsample_in_first_stage { 1 } else { 2 };
            let mut layers = Vec::with_capacity(depth);
            for l in 0..depth {
                let key = format!("{prefix}.encoder.stages.{s}.layers.{l}");
                let (li, ls) = if l == 0 { (c_in, stride) } else { (c_out, 1) };
                layers.push(if bottleneck {
                    ResidualLayer::bottleneck(w, &key, li, c_out, ls, cfg.downsample_in_bottleneck, act)?
                } else {
                    ResidualLayer::basic(w, &key, li, c_out, ls, l == 0, act)?
                });
            }
            stages.push(layers);
            c_in = c_out;
        }
        let out_stages = cfg.out_stage_indices()?;
        let out_channels = out_stages.iter().map(|&i| cfg.hidden_sizes[i - 1]).collect();
        Ok(Self { stem, stages, out_stages, out_channels })
    }

    /// Channels of each returned feature map.
    pub fn out_channels(&self) -> &[usize] {
        &self.out_channels
    }

    pub fn forward(&self, pixels: &Tensor) -> Result<Vec<Tensor>> {
        let mut x = pixels.clone();
        for c in &self.stem {
            x = c.forward(&x)?;
        }
        x = max_pool_3x3_s2_p1(&x)?;
        let mut outs = Vec::new();
        for (s, layers) in self.stages.iter().enumerate() {
            for l in layers {
                x = l.forward(&x)?;
            }
            if self.out_stages.contains(&(s + 1)) {
                outs.push(x.clone());
            }
        }
        Ok(outs)
    }
}
