//! Hybrid encoder (`RTDetrHybridEncoder`): input projections, the AIFI transformer
//! layer on the coarsest level with a 2-D sin-cos position embedding, then the CCFM
//! top-down (FPN) and bottom-up (PAN) fusion with RepVGG-style CSP blocks.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::io::config::{Activation, RtDetrConfig};
use crate::io::weights::Weights;
use crate::kernels::tensor_ops::{add, concat_channels};
use crate::model::attention::{FeedForward, SelfAttention};
use crate::model::layers::{ConvBn, LayerNorm};

/// The shape of an AIFI transformer layer.
pub(crate) struct EncoderLayerSpec {
    pub dim: usize,
    pub heads: usize,
    pub ffn_dim: usize,
    pub act: Activation,
    pub eps: f64,
    pub normalize_before: bool,
    /// The feed-forward layers' names under the layer's `mlp`: `fc1`, `fc2` (RT-DETR) or
    /// `layers.0`, `layers.1` (D-FINE).
    pub ffn_names: [&'static str; 2],
}

impl EncoderLayerSpec {
    fn rtdetr(cfg: &RtDetrConfig) -> Result<Self> {
        Ok(Self {
            dim: cfg.encoder_hidden_dim,
            heads: cfg.encoder_attention_heads,
            ffn_dim: cfg.encoder_ffn_dim,
            act: Activation::parse(&cfg.encoder_activation_function)?,
            eps: cfg.layer_norm_eps,
            normalize_before: cfg.normalize_before,
            ffn_names: ["fc1", "fc2"],
        })
    }
}

/// `RTDetrEncoderLayer` (post-norm unless `normalize_before`).
struct EncoderLayer {
    self_attn: SelfAttention,
    attn_norm: LayerNorm,
    mlp: FeedForward,
    final_norm: LayerNorm,
    normalize_before: bool,
}

impl EncoderLayer {
    fn load(w: &Weights, key: &str, s: &EncoderLayerSpec) -> Result<Self> {
        let d = s.dim;
        let [fc1, fc2] = s.ffn_names;
        Ok(Self {
            self_attn: SelfAttention::load(w, &format!("{key}.self_attn"), d, s.heads)?,
            attn_norm: LayerNorm::load(w, &format!("{key}.self_attn_layer_norm"), d, s.eps)?,
            mlp: FeedForward::load_named(
                w,
                &format!("{key}.mlp.{fc1}"),
                &format!("{key}.mlp.{fc2}"),
                d,
                s.ffn_dim,
                s.act,
            )?,
            final_norm: LayerNorm::load(w, &format!("{key}.final_layer_norm"), d, s.eps)?,
            normalize_before: s.normalize_before,
        })
    }

    /// `x`: (B, L, D); `pos`: (1, L, D) added to queries and keys.
    fn forward(&self, x: &Tensor, pos: Option<&Tensor>) -> Result<Tensor> {
        let h = if self.normalize_before { self.attn_norm.forward(x)? } else { x.clone() };
        let qk_in = match pos {
            Some(p) => add(&h, p)?,
            None => h.clone(),
        };
        let mut h = self.self_attn.forward(&qk_in, &h, x)?;
        if !self.normalize_before {
            h = self.attn_norm.forward(&h)?;
        }
        if self.normalize_before {
            h = self.final_norm.forward(&h)?;
        }
        let m = self.mlp.forward(&h)?;
        if self.normalize_before {
            Ok(m)
        } else {
            self.final_norm.forward(&m)
        }
    }
}

/// AIFI: transformer layers over one level of the projected maps, with the 2-D sin-cos
/// position embedding added to queries and keys.
pub(crate) struct Aifi {
    level: usize,
    layers: Vec<EncoderLayer>,
    dim: usize,
    temperature: f64,
    use_pos: bool,
}

impl Aifi {
    /// One AIFI per entry of `encode_proj_layers` (none when `encoder_layers` is 0), with
    /// `encoder_layers` layers each, under `model.encoder.aifi.{i}.layers.{j}`.
    pub(crate) fn load_all(
        w: &Weights,
        spec: &EncoderLayerSpec,
        encoder_layers: usize,
        encode_proj_layers: &[usize],
        temperature: f64,
        use_pos: bool,
    ) -> Result<Vec<Self>> {
        if encoder_layers == 0 {
            return Ok(Vec::new());
        }
        encode_proj_layers
            .iter()
            .enumerate()
            .map(|(i, &level)| {
                let layers = (0..encoder_layers)
                    .map(|j| EncoderLayer::load(w, &format!("model.encoder.aifi.{i}.layers.{j}"), spec))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Self { level, layers, dim: spec.dim, temperature, use_pos })
            })
            .collect()
    }

    /// Replaces its level of `maps` (B, D, H, W) by the transformer's output.
    pub(crate) fn apply(&self, maps: &mut [Tensor]) -> Result<()> {
        let x = &maps[self.level];
        let (b, c, h, w) = x.dims4()?;
        let mut seq = x.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let pos = if self.use_pos {
            Some(sincos_position_embedding(h, w, self.dim, self.temperature, x.device())?)
        } else {
            None
        };
        for l in &self.layers {
            seq = l.forward(&seq, pos.as_ref())?;
        }
        maps[self.level] = seq.transpose(1, 2)?.reshape((b, c, h, w))?.contiguous()?;
        Ok(())
    }
}

/// 2-D sin-cos embedding `[sin_h | cos_h | sin_w | cos_w]`, row-major positions,
/// frequencies computed in f64 as the reference does: (1, H*W, dim).
pub fn sincos_position_embedding(
    height: usize,
    width: usize,
    dim: usize,
    temperature: f64,
    device: &Device,
) -> Result<Tensor> {
    let pos_dim = dim / 4;
    let omega: Vec<f64> = (0..pos_dim).map(|i| 1.0 / temperature.powf(i as f64 / pos_dim as f64)).collect();
    let mut data = Vec::with_capacity(height * width * dim);
    for y in 0..height {
        for x in 0..width {
            for f in [f64::sin, f64::cos] {
                data.extend(omega.iter().map(|o| f(y as f64 * o) as f32));
            }
            for f in [f64::sin, f64::cos] {
                data.extend(omega.iter().map(|o| f(x as f64 * o) as f32));
            }
        }
    }
    Ok(Tensor::from_vec(data, (1, height * width, dim), device)?)
}

/// `RTDetrCSPRepLayer` (and D-FINE's `DFineCSPRepLayer`). Its `RTDetrRepVggBlock`s,
/// act(conv3x3(x) + conv1x1(x)), are re-parameterised at load into one 3x3 convolution
/// each (RepVGG), and conv1/conv2, which read the same input, run as one convolution.
pub struct CspRepLayer {
    /// conv1 and conv2 stacked: the first `hidden` output channels are conv1's.
    conv12: ConvBn,
    hidden: usize,
    blocks: Vec<ConvBn>,
    conv3: Option<ConvBn>,
}

/// `RTDetrConvNormLayer` / `DFineConvNormLayer`: `{key}.conv` (no bias) + `{key}.norm`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_norm(
    w: &Weights,
    key: &str,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    bn_eps: f64,
    act: Activation,
) -> Result<ConvBn> {
    ConvBn::load(w, &format!("{key}.conv"), &format!("{key}.norm"), c_in, c_out, k, stride, padding, bn_eps, act)
}

/// The shape of a [`CspRepLayer`].
pub(crate) struct CspSpec {
    pub c_in: usize,
    pub c_out: usize,
    /// `int(c_out * expansion)`.
    pub hidden: usize,
    pub num_blocks: usize,
    pub act: Activation,
    pub bn_eps: f64,
}

impl CspRepLayer {
    pub(crate) fn load(w: &Weights, key: &str, s: &CspSpec) -> Result<Self> {
        let (hidden, eps, act) = (s.hidden, s.bn_eps, s.act);
        let mut blocks = Vec::new();
        for i in 0..s.num_blocks {
            let b = format!("{key}.bottlenecks.{i}");
            let conv1 = conv_norm(w, &format!("{b}.conv1"), hidden, hidden, 3, 1, 1, eps, Activation::Identity)?;
            let conv2 = conv_norm(w, &format!("{b}.conv2"), hidden, hidden, 1, 1, 0, eps, Activation::Identity)?;
            blocks.push(conv1.merge_parallel(&conv2, act)?);
        }
        let conv3 = if hidden != s.c_out {
            Some(conv_norm(w, &format!("{key}.conv3"), hidden, s.c_out, 1, 1, 0, eps, act)?)
        } else {
            None
        };
        let conv1 = conv_norm(w, &format!("{key}.conv1"), s.c_in, hidden, 1, 1, 0, eps, act)?;
        let conv2 = conv_norm(w, &format!("{key}.conv2"), s.c_in, hidden, 1, 1, 0, eps, act)?;
        Ok(Self { conv12: ConvBn::concat(&[&conv1, &conv2])?, hidden, blocks, conv3 })
    }

    /// conv3(blocks(conv1(x)) + conv2(x)).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let both = self.conv12.forward(x)?;
        let mut h = both.narrow(1, 0, self.hidden)?;
        let c2 = both.narrow(1, self.hidden, self.hidden)?;
        let n = self.blocks.len();
        for (i, b) in self.blocks.iter().enumerate() {
            h = if i + 1 == n { b.forward_then_add(&h, &c2)? } else { b.forward(&h)? };
        }
        if n == 0 {
            h = add(&h, &c2)?;
        }
        match &self.conv3 {
            Some(c) => c.forward(&h),
            None => Ok(h),
        }
    }
}

/// A block of the encoder's cross-scale fusion: one NCHW map to another.
pub trait FusionBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

impl FusionBlock for ConvBn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ConvBn::forward(self, x)
    }
}

impl FusionBlock for CspRepLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        CspRepLayer::forward(self, x)
    }
}

/// Input projections + hybrid encoder (AIFI, then top-down and bottom-up fusion across
/// levels). Output: one (B, D, H, W) map per level. Generic over the fusion block `F` and
/// the down-sampling `D`: RT-DETR's CSP-Rep layers and strided 3×3 convolutions (the
/// defaults), or D-FINE's RepNCSPELAN4 blocks and SCDown ([`DFineEncoder`]).
///
/// [`DFineEncoder`]: crate::model::dfine_encoder::DFineEncoder
pub struct HybridEncoder<F = CspRepLayer, D = ConvBn> {
    pub(crate) input_proj: Vec<ConvBn>,
    pub(crate) aifi: Vec<Aifi>,
    pub(crate) lateral: Vec<ConvBn>,
    pub(crate) fpn: Vec<F>,
    pub(crate) downsample: Vec<D>,
    pub(crate) pan: Vec<F>,
}

/// The encoder's input projections (`model.encoder_input_proj.{i}`): a 1x1 convolution
/// from each backbone map's channels to `dim`, BatchNorm with its default eps.
pub(crate) fn input_projections(w: &Weights, backbone_channels: &[usize], dim: usize) -> Result<Vec<ConvBn>> {
    backbone_channels
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            ConvBn::load(
                w,
                &format!("model.encoder_input_proj.{i}.0"),
                &format!("model.encoder_input_proj.{i}.1"),
                c,
                dim,
                1,
                1,
                0,
                1e-5,
                Activation::Identity,
            )
        })
        .collect()
}

impl HybridEncoder {
    pub fn load(w: &Weights, cfg: &RtDetrConfig, backbone_channels: &[usize]) -> Result<Self> {
        let d = cfg.encoder_hidden_dim;
        let act = Activation::parse(&cfg.activation_function)?;
        let eps = cfg.batch_norm_eps;
        let input_proj = input_projections(w, backbone_channels, d)?;
        let aifi = Aifi::load_all(
            w,
            &EncoderLayerSpec::rtdetr(cfg)?,
            cfg.encoder_layers,
            &cfg.encode_proj_layers,
            cfg.positional_encoding_temperature,
            cfg.aifi_uses_pos_embed(),
        )?;
        let csp = CspSpec {
            c_in: 2 * d,
            c_out: d,
            hidden: (d as f64 * cfg.hidden_expansion) as usize,
            num_blocks: 3,
            act,
            bn_eps: eps,
        };
        let n = backbone_channels.len() - 1;
        let mut lateral = Vec::new();
        let mut fpn = Vec::new();
        let mut downsample = Vec::new();
        let mut pan = Vec::new();
        for i in 0..n {
            lateral.push(conv_norm(w, &format!("model.encoder.lateral_convs.{i}"), d, d, 1, 1, 0, eps, act)?);
            fpn.push(CspRepLayer::load(w, &format!("model.encoder.fpn_blocks.{i}"), &csp)?);
            downsample.push(conv_norm(w, &format!("model.encoder.downsample_convs.{i}"), d, d, 3, 2, 1, eps, act)?);
            pan.push(CspRepLayer::load(w, &format!("model.encoder.pan_blocks.{i}"), &csp)?);
        }
        Ok(Self { input_proj, aifi, lateral, fpn, downsample, pan })
    }
}

impl<F: FusionBlock, D: FusionBlock> HybridEncoder<F, D> {
    /// The backbone's maps → one fused map per level, finest first.
    pub fn forward(&self, features: &[Tensor]) -> Result<Vec<Tensor>> {
        let mut maps = features.iter().zip(&self.input_proj).map(|(f, p)| p.forward(f)).collect::<Result<Vec<_>>>()?;
        for aifi in &self.aifi {
            aifi.apply(&mut maps)?;
        }
        // Top-down: the lateral convolution replaces the coarser map, whose 2× nearest
        // upsampling is fused with the next finer level.
        let n = self.lateral.len();
        let mut fpn_maps = vec![maps[n].clone()];
        for idx in 0..n {
            let finer = &maps[n - idx - 1];
            let last = fpn_maps.len() - 1;
            let top = self.lateral[idx].forward(&fpn_maps[last])?;
            fpn_maps[last] = top.clone();
            fpn_maps.push(self.fpn[idx].forward(&concat_channels(&[(&top, true), (finer, false)])?)?);
        }
        fpn_maps.reverse();
        // Bottom-up: each fused map is down-sampled and fused with the next coarser one.
        let mut pan_maps = vec![fpn_maps[0].clone()];
        for idx in 0..n {
            let down = self.downsample[idx].forward(&pan_maps[pan_maps.len() - 1])?;
            pan_maps.push(self.pan[idx].forward(&concat_channels(&[(&down, false), (&fpn_maps[idx + 1], false)])?)?);
        }
        Ok(pan_maps)
    }
}
