//! RT-DETR (`RTDetrForObjectDetection` at inference): ResNet-vd backbone → hybrid encoder →
//! query selection → deformable-attention decoder. RT-DETRv2 (`RTDetrV2ForObjectDetection`)
//! is the same graph with its own decoder cross-attention ([`V2Sampling`]).

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::io::config::{Activation, RtDetrConfig};
use crate::io::weights::Weights;
use crate::model::backbone::Backbone;
use crate::model::decoder::Decoder;
pub use crate::model::deformable_attention::V2Sampling;
use crate::model::encoder::HybridEncoder;
use crate::model::layers::ConvBn;
use crate::model::query_selection::QuerySelection;
use crate::model::{backbone_and_encoder, checked_depth, select_and_decode, ModelOutput, StageTimes};

pub struct RtDetr {
    cfg: RtDetrConfig,
    backbone: Backbone,
    encoder: HybridEncoder,
    decoder_input_proj: Vec<ConvBn>,
    query_selection: QuerySelection,
    decoder: Decoder,
}

impl RtDetr {
    /// `v2`: RT-DETRv2's cross-attention settings (RT-DETR when `None`).
    pub fn load(cfg: &RtDetrConfig, v2: Option<&V2Sampling>, w: &Weights) -> Result<Self> {
        let backbone = Backbone::load(w, &cfg.backbone(), "model.backbone.model")?;
        if backbone.out_channels() != cfg.encoder_in_channels.as_slice() {
            return Err(Error::Config(format!(
                "encoder_in_channels {:?} do not match the backbone's output channels {:?}",
                cfg.encoder_in_channels,
                backbone.out_channels()
            )));
        }
        let encoder = <HybridEncoder>::load(w, cfg, backbone.out_channels())?;
        let d = cfg.d_model;
        let mut decoder_input_proj = Vec::new();
        let mut c_in = cfg.encoder_hidden_dim;
        for (i, &c) in cfg.decoder_in_channels.iter().enumerate() {
            c_in = c;
            decoder_input_proj.push(ConvBn::load(
                w,
                &format!("model.decoder_input_proj.{i}.0"),
                &format!("model.decoder_input_proj.{i}.1"),
                c,
                d,
                1,
                1,
                0,
                cfg.batch_norm_eps,
                Activation::Identity,
            )?);
        }
        for i in cfg.decoder_in_channels.len()..cfg.num_feature_levels {
            decoder_input_proj.push(ConvBn::load(
                w,
                &format!("model.decoder_input_proj.{i}.0"),
                &format!("model.decoder_input_proj.{i}.1"),
                c_in,
                d,
                3,
                2,
                1,
                cfg.batch_norm_eps,
                Activation::Identity,
            )?);
            c_in = d;
        }
        Ok(Self {
            cfg: cfg.clone(),
            backbone,
            encoder,
            decoder_input_proj,
            query_selection: QuerySelection::load(w, d, cfg.num_labels(), cfg.num_queries, cfg.layer_norm_eps)?,
            decoder: Decoder::load(w, cfg, v2)?,
        })
    }

    pub fn num_decoder_layers(&self) -> usize {
        self.decoder.num_layers()
    }

    pub fn max_stride(&self) -> usize {
        *self.cfg.feat_strides.iter().max().unwrap_or(&32)
    }

    pub fn forward(
        &self,
        pixels: &Tensor,
        decoder_layers: Option<usize>,
        trace: bool,
        times: &mut StageTimes,
    ) -> Result<ModelOutput> {
        let depth = checked_depth(pixels, self.max_stride(), decoder_layers, self.decoder.num_layers())?;
        let (enc, tr, instants) =
            backbone_and_encoder(pixels, trace, |x| self.backbone.forward(x), |f| self.encoder.forward(f))?;

        // Decoder inputs: project each level and flatten to (B, S, D).
        let mut sources = Vec::new();
        for (i, p) in self.decoder_input_proj.iter().enumerate() {
            let src = match enc.get(i).or(enc.last()) {
                Some(s) => s,
                None => return Err(Error::Internal("the encoder returned no feature map".into())),
            };
            sources.push(p.forward(src)?);
        }
        select_and_decode(&sources, &self.query_selection, tr, times, instants, |target, reference, memory, shapes| {
            self.decoder.forward(target, reference, memory, shapes, depth)
        })
    }
}
