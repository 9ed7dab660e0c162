//! D-FINE (`DFineForObjectDetection` at inference): HGNetV2 backbone → D-FINE hybrid
//! encoder → RT-DETR's query selection → D-FINE decoder (fine-grained distribution
//! refinement), predicting at its `eval_idx` layer.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::io::config::{Activation, DFineConfig};
use crate::io::weights::Weights;
use crate::model::dfine_decoder::DFineDecoder;
use crate::model::dfine_encoder::DFineEncoder;
use crate::model::hgnet_v2::HgNetV2;
use crate::model::layers::ConvBn;
use crate::model::query_selection::QuerySelection;
use crate::model::{backbone_and_encoder, checked_depth, select_and_decode, ModelOutput, StageTimes};

pub struct DFine {
    backbone: HgNetV2,
    encoder: DFineEncoder,
    /// One per level; `None` is the identity (`d_model` equals the encoder's width).
    decoder_input_proj: Vec<Option<ConvBn>>,
    query_selection: QuerySelection,
    decoder: DFineDecoder,
    max_stride: usize,
}

impl DFine {
    pub fn load(cfg: &DFineConfig, w: &Weights) -> Result<Self> {
        let backbone = HgNetV2::load(w, &cfg.backbone(), "model.backbone.model")?;
        let encoder = DFineEncoder::load(w, cfg, backbone.out_channels())?;
        let d = cfg.d_model;
        // transformers: identity when d_model == decoder_in_channels[-1], else a 1×1
        // convolution + BatchNorm from decoder_in_channels[-1] on every level.
        let c_in = *cfg.decoder_in_channels.last().ok_or_else(|| Error::Config("no decoder_in_channels".into()))?;
        if c_in != cfg.encoder_hidden_dim {
            return Err(Error::Config(format!(
                "decoder_in_channels[-1] = {c_in} must equal encoder_hidden_dim {} (the encoder's output width)",
                cfg.encoder_hidden_dim
            )));
        }
        let decoder_input_proj = (0..cfg.num_feature_levels)
            .map(|i| {
                if d == c_in {
                    return Ok(None);
                }
                ConvBn::load(
                    w,
                    &format!("model.decoder_input_proj.{i}.0"),
                    &format!("model.decoder_input_proj.{i}.1"),
                    c_in,
                    d,
                    1,
                    1,
                    0,
                    cfg.batch_norm_eps,
                    Activation::Identity,
                )
                .map(Some)
            })
            .collect::<Result<Vec<_>>>()?;
        let max_stride = backbone.total_stride().max(cfg.feat_strides.iter().copied().max().unwrap_or(1));
        Ok(Self {
            backbone,
            encoder,
            decoder_input_proj,
            query_selection: QuerySelection::load(w, d, cfg.num_labels(), cfg.num_queries, cfg.layer_norm_eps)?,
            decoder: DFineDecoder::load(w, cfg)?,
            max_stride,
        })
    }

    /// Decoder layers that predict (up to `eval_idx`).
    pub fn num_decoder_layers(&self) -> usize {
        self.decoder.num_layers()
    }

    pub fn max_stride(&self) -> usize {
        self.max_stride
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
        if enc.len() != self.decoder_input_proj.len() {
            return Err(Error::Internal(format!(
                "the encoder returned {} maps for {} decoder levels",
                enc.len(),
                self.decoder_input_proj.len()
            )));
        }
        let sources = enc
            .iter()
            .zip(&self.decoder_input_proj)
            .map(|(e, p)| match p {
                Some(p) => p.forward(e),
                None => Ok(e.clone()),
            })
            .collect::<Result<Vec<_>>>()?;
        select_and_decode(&sources, &self.query_selection, tr, times, instants, |target, reference, memory, shapes| {
            self.decoder.forward(target, reference, memory, shapes, depth)
        })
    }
}
