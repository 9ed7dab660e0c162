//! D-FINE's hybrid encoder (`DFineHybridEncoder`): RT-DETR's input projections and AIFI
//! transformer layer, then a top-down (FPN) and bottom-up (PAN) fusion whose blocks are
//! RepNCSPELAN4 (two CSP branches of RepVGG blocks, every branch's output concatenated)
//! and whose down-sampling is SCDown (a 1×1 then a depthwise 3×3 stride-2 convolution).

use candle_core::Tensor;

use crate::error::Result;
use crate::io::config::{Activation, DFineConfig};
use crate::io::weights::Weights;
use crate::kernels::tensor_ops::concat_channels;
use crate::model::encoder::{
    conv_norm, input_projections, Aifi, CspRepLayer, CspSpec, EncoderLayerSpec, FusionBlock, HybridEncoder,
};
use crate::model::layers::{ConvBn, DwConvBn};

/// `DFineRepNCSPELAN4`: conv1 (1×1) splits into two halves; the second goes through
/// CSP layer 1 and a 3×3 convolution (branch 1), branch 1 through CSP layer 2 and another
/// 3×3 (branch 2); conv4 (1×1) reads both halves and both branches.
pub struct RepNcspElan4 {
    conv1: ConvBn,
    csp1: CspRepLayer,
    conv2: ConvBn,
    csp2: CspRepLayer,
    conv3: ConvBn,
    conv4: ConvBn,
    /// Channels of each half of conv1's output (`encoder_hidden_dim`).
    half: usize,
}

impl RepNcspElan4 {
    fn load(w: &Weights, key: &str, cfg: &DFineConfig) -> Result<Self> {
        let h = cfg.encoder_hidden_dim;
        let c4 = cfg.elan_branch_dim();
        let eps = cfg.batch_norm_eps;
        // The block's own convolutions use SiLU (`DFineRepNCSPELAN4`'s default `act`); its
        // CSP layers follow `activation_function`.
        let silu = Activation::Silu;
        let act = Activation::parse(&cfg.activation_function)?;
        let csp = |c_in| CspSpec { c_in, c_out: c4, hidden: c4, num_blocks: cfg.csp_blocks(), act, bn_eps: eps };
        Ok(Self {
            conv1: conv_norm(w, &format!("{key}.conv1"), 2 * h, 2 * h, 1, 1, 0, eps, silu)?,
            csp1: CspRepLayer::load(w, &format!("{key}.csp_rep1"), &csp(h))?,
            conv2: conv_norm(w, &format!("{key}.conv2"), c4, c4, 3, 1, 1, eps, silu)?,
            csp2: CspRepLayer::load(w, &format!("{key}.csp_rep2"), &csp(c4))?,
            conv3: conv_norm(w, &format!("{key}.conv3"), c4, c4, 3, 1, 1, eps, silu)?,
            conv4: conv_norm(w, &format!("{key}.conv4"), 2 * h + 2 * c4, h, 1, 1, 0, eps, silu)?,
            half: h,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let halves = self.conv1.forward(x)?;
        let second = halves.narrow(1, self.half, self.half)?;
        let branch1 = self.conv2.forward(&self.csp1.forward(&second)?)?;
        let branch2 = self.conv3.forward(&self.csp2.forward(&branch1)?)?;
        // cat(first half, second half, branch 1, branch 2): the halves are conv1's output.
        self.conv4.forward(&concat_channels(&[(&halves, false), (&branch1, false), (&branch2, false)])?)
    }
}

/// `DFineSCDown`: a 1×1 convolution, then a depthwise 3×3 stride-2 one, both BatchNorm
/// and no activation.
pub struct ScDown {
    conv1: ConvBn,
    conv2: DwConvBn,
}

impl ScDown {
    fn load(w: &Weights, key: &str, cfg: &DFineConfig) -> Result<Self> {
        let (d, eps) = (cfg.encoder_hidden_dim, cfg.batch_norm_eps);
        Ok(Self {
            conv1: conv_norm(w, &format!("{key}.conv1"), d, d, 1, 1, 0, eps, Activation::Identity)?,
            conv2: DwConvBn::load(
                w,
                &format!("{key}.conv2.conv"),
                &format!("{key}.conv2.norm"),
                d,
                3,
                2,
                1,
                eps,
                Activation::Identity,
            )?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv2.forward(&self.conv1.forward(x)?)
    }
}

/// Input projections + D-FINE's hybrid encoder: RT-DETR's graph with RepNCSPELAN4 fusion
/// blocks, SCDown down-sampling, and lateral 1×1 convolutions without activation.
pub type DFineEncoder = HybridEncoder<RepNcspElan4, ScDown>;

impl FusionBlock for RepNcspElan4 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        RepNcspElan4::forward(self, x)
    }
}

impl FusionBlock for ScDown {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ScDown::forward(self, x)
    }
}

impl DFineEncoder {
    pub fn load(w: &Weights, cfg: &DFineConfig, backbone_channels: &[usize]) -> Result<Self> {
        let d = cfg.encoder_hidden_dim;
        let eps = cfg.batch_norm_eps;
        let spec = EncoderLayerSpec {
            dim: d,
            heads: cfg.encoder_attention_heads,
            ffn_dim: cfg.encoder_ffn_dim,
            act: Activation::parse(&cfg.encoder_activation_function)?,
            eps: cfg.layer_norm_eps,
            normalize_before: cfg.normalize_before,
            ffn_names: ["layers.0", "layers.1"],
        };
        let aifi = Aifi::load_all(
            w,
            &spec,
            cfg.encoder_layers,
            &cfg.encode_proj_layers,
            cfg.positional_encoding_temperature,
            cfg.aifi_uses_pos_embed(),
        )?;
        let n = backbone_channels.len().saturating_sub(1);
        let mut lateral = Vec::with_capacity(n);
        let mut fpn = Vec::with_capacity(n);
        let mut downsample = Vec::with_capacity(n);
        let mut pan = Vec::with_capacity(n);
        for i in 0..n {
            let lateral_key = format!("model.encoder.lateral_convs.{i}");
            lateral.push(conv_norm(w, &lateral_key, d, d, 1, 1, 0, eps, Activation::Identity)?);
            fpn.push(RepNcspElan4::load(w, &format!("model.encoder.fpn_blocks.{i}"), cfg)?);
            downsample.push(ScDown::load(w, &format!("model.encoder.downsample_convs.{i}"), cfg)?);
            pan.push(RepNcspElan4::load(w, &format!("model.encoder.pan_blocks.{i}"), cfg)?);
        }
        Ok(Self { input_proj: input_projections(w, backbone_channels, d)?, aifi, lateral, fpn, downsample, pan })
    }
}
