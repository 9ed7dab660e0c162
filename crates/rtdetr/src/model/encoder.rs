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

/// `RTDetrEncoderLayer` (post-norm unless `normalize_before`).
struct EncoderLayer {
    self_attn: SelfAttention,
    attn_norm: LayerNorm,
    mlp: FeedForward,
    final_norm: LayerNorm,
    normalize_before: bool,
}

impl EncoderLayer {
    fn load(w: &Weights, key: &str, cfg: &RtDetrConfig) -> Result<Self> {
        let d = cfg.encoder_hidden_dim;
        let act = Activation::parse(&cfg.encoder_activation_function)?;
        Ok(Self {
            self_attn: SelfAttention::load(w, &format!("{key}.self_attn"), d, cfg.encoder_attention_heads)?,
            attn_norm: LayerNorm::load(w, &format!("{key}.self_attn_layer_norm"), d, cfg.layer_norm_eps)?,
            mlp: FeedForward::load(w, &format!("{key}.mlp"), d, cfg.encoder_ffn_dim, act)?,
            final_norm: LayerNorm::load(w, &format!("{key}.final_layer_norm"), d, cfg.layer_norm_eps)?,
            normalize_before: cfg.normalize_before,
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

/// `RTDetrCSPRepLayer`. Its `RTDetrRepVggBlock`s, act(conv3x3(x) + conv1x1(x)), are
/// re-parameterised at load into one 3x3 convolution each (RepVGG), and conv1/conv2,
/// which read the same input, run as one convolution.
struct CspRepLayer {
    /// conv1 and conv2 stacked: the first `hidden` output channels are conv1's.
    conv12: ConvBn,
    hidden: usize,
    blocks: Vec<ConvBn>,
    conv3: Option<ConvBn>,
}

#[allow(clippy::too_many_arguments)]
fn conv_norm(
    w: &Weights,
    key: &str,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    cfg: &RtDetrConfig,
    act: Activation,
) -> Result<ConvBn> {
    ConvBn::load(
        w,
        &format!("{key}.conv"),
        &format!("{key}.norm"),
        c_in,
        c_out,
        k,
        stride,
        padding,
        cfg.batch_norm_eps,
        act,
    )
}

impl CspRepLayer {
    fn load(w: &Weights, key: &str, cfg: &RtDetrConfig) -> Result<Self> {
        let act = Activation::parse(&cfg.activation_function)?;
        let out = cfg.encoder_hidden_dim;
        let c_in = out * 2;
        let hidden = (out as f64 * cfg.hidden_expansion) as usize;
        let mut blocks = Vec::new();
        for i in 0..3 {
            let b = format!("{key}.bottlenecks.{i}");
            let conv1 = conv_norm(w, &format!("{b}.conv1"), hidden, hidden, 3, 1, 1, cfg, Activation::Identity)?;
            let conv2 = conv_norm(w, &format!("{b}.conv2"), hidden, hidden, 1, 1, 0, cfg, Activation::Identity)?;
            blocks.push(conv1.merge_parallel(&conv2, act)?);
        }
        let conv3 = if hidden != out {
            Some(conv_norm(w, &format!("{key}.conv3"), hidden, out, 1, 1, 0, cfg, act)?)
        } else {
            None
        };
        let conv1 = conv_norm(w, &format!("{key}.conv1"), c_in, hidden, 1, 1, 0, cfg, act)?;
        let conv2 = conv_norm(w, &format!("{key}.conv2"), c_in, hidden, 1, 1, 0, cfg, act)?;
        Ok(Self { conv12: ConvBn::concat(&[&conv1, &conv2])?, hidden, blocks, conv3 })
    }

    /// conv3(blocks(conv1(x)) + conv2(x)).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
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

/// Input projections + hybrid encoder. Output: one (B, D, H, W) map per level.
pub struct HybridEncoder {
    input_proj: Vec<ConvBn>,
    aifi: Vec<(usize, Vec<EncoderLayer>)>,
    lateral: Vec<ConvBn>,
    fpn: Vec<CspRepLayer>,
    downsample: Vec<ConvBn>,
    pan: Vec<CspRepLayer>,
    dim: usize,
    temperature: f64,
    use_pos: bool,
}

impl HybridEncoder {
    pub fn load(w: &Weights, cfg: &RtDetrConfig, backbone_channels: &[usize]) -> Result<Self> {
        let d = cfg.encoder_hidden_dim;
        let act = Activation::parse(&cfg.activation_function)?;
        let mut input_proj = Vec::new();
        for (i, &c) in backbone_channels.iter().enumerate() {
            // nn.BatchNorm2d(encoder_hidden_dim) with its default eps.
            input_proj.push(ConvBn::load(
                w,
                &format!("model.encoder_input_proj.{i}.0"),
                &format!("model.encoder_input_proj.{i}.1"),
                c,
                d,
                1,
                1,
                0,
                1e-5,
                Activation::Identity,
            )?);
        }
        let mut aifi = Vec::new();
        if cfg.encoder_layers > 0 {
            for (i, &level) in cfg.encode_proj_layers.iter().enumerate() {
                let layers = (0..cfg.encoder_layers)
                    .map(|j| EncoderLayer::load(w, &format!("model.encoder.aifi.{i}.layers.{j}"), cfg))
                    .collect::<Result<Vec<_>>>()?;
                aifi.push((level, layers));
            }
        }
        let n = backbone_channels.len() - 1;
        let mut lateral = Vec::new();
        let mut fpn = Vec::new();
        let mut downsample = Vec::new();
        let mut pan = Vec::new();
        for i in 0..n {
            lateral.push(conv_norm(w, &format!("model.encoder.lateral_convs.{i}"), d, d, 1, 1, 0, cfg, act)?);
            fpn.push(CspRepLayer::load(w, &format!("model.encoder.fpn_blocks.{i}"), cfg)?);
            downsample.push(conv_norm(w, &format!("model.encoder.downsample_convs.{i}"), d, d, 3, 2, 1, cfg, act)?);
            pan.push(CspRepLayer::load(w, &format!("model.encoder.pan_blocks.{i}"), cfg)?);
        }
        Ok(Self {
            input_proj,
            aifi,
            lateral,
            fpn,
            downsample,
            pan,
            dim: d,
            temperature: cfg.positional_encoding_temperature,
            use_pos: cfg.aifi_uses_pos_embed(),
        })
    }

    pub fn forward(&self, features: &[Tensor]) -> Result<Vec<Tensor>> {
        let mut maps = features.iter().zip(&self.input_proj).map(|(f, p)| p.forward(f)).collect::<Result<Vec<_>>>()?;
        for (level, layers) in &self.aifi {
            let x = &maps[*level];
            let (b, c, h, w) = x.dims4()?;
            let mut seq = x.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
            let pos = if self.use_pos {
                Some(sincos_position_embedding(h, w, self.dim, self.temperature, x.device())?)
            } else {
                None
            };
            for l in layers {
                seq = l.forward(&seq, pos.as_ref())?;
            }
            maps[*level] = seq.transpose(1, 2)?.reshape((b, c, h, w))?.contiguous()?;
        }
        let n = self.lateral.len();
        let mut fpn_maps = vec![maps[n].clone()];
        for idx in 0..n {
            let lower = &maps[n - idx - 1];
            let last = fpn_maps.len() - 1;
            let top = self.lateral[idx].forward(&fpn_maps[last])?;
            fpn_maps[last] = top.clone();
            fpn_maps.push(self.fpn[idx].forward(&concat_channels(&[(&top, true), (lower, false)])?)?);
        }
        fpn_maps.reverse();
        let mut pan_maps = vec![fpn_maps[0].clone()];
        for idx in 0..n {
            let down = self.downsample[idx].forward(&pan_maps[pan_maps.len() - 1])?;
            pan_maps.push(self.pan[idx].forward(&concat_channels(&[(&down, false), (&fpn_maps[idx + 1], false)])?)?);
        }
        Ok(pan_maps)
    }
}
