//! The networks, one file per stage, weights addressed by their Hugging Face key paths.
//!
//! [`Model`] is the seam between architectures: one variant per `model_type` of
//! config.json ([`ModelConfig`]), each built from stages that the variants share where the
//! reference shares them (backbone, hybrid encoder, query selection, attention and
//! feed-forward blocks, deformable attention with per-level point counts). D-FINE adds
//! its own backbone (`hgnet_v2`), encoder blocks (`dfine_encoder`) and decoder
//! (`dfine_decoder`), assembled in `dfine`.

pub(crate) mod attention;
pub(crate) mod backbone;
pub(crate) mod decoder;
pub(crate) mod deformable_attention;
pub(crate) mod dfine;
pub(crate) mod dfine_decoder;
pub(crate) mod dfine_encoder;
pub(crate) mod encoder;
pub(crate) mod hgnet_v2;
pub(crate) mod layers;
pub(crate) mod query_selection;
pub(crate) mod rtdetr;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::io::config::ModelConfig;
use crate::io::weights::Weights;

/// Intermediate tensors of one forward pass, for stage-by-stage parity checks.
#[derive(Default)]
pub struct Trace {
    pub backbone: Vec<Tensor>,
    pub encoder: Vec<Tensor>,
    /// (B, Q) indices of the selected encoder positions.
    pub topk_indices: Vec<Vec<usize>>,
    /// (B, Q, C) encoder class logits of the selected positions.
    pub enc_topk_logits: Option<Tensor>,
    /// (B, Q, 4) sigmoid of the selected positions' box logits.
    pub enc_topk_boxes: Option<Tensor>,
}

/// One decoder layer's predictions.
pub struct LayerOutput {
    /// (B, Q, num_labels) class logits.
    pub logits: Tensor,
    /// (B, Q, 4) boxes, normalized cxcywh.
    pub boxes: Tensor,
}

/// Raw network output.
pub struct ModelOutput {
    /// (B, Q, C) class logits of the last executed decoder layer.
    pub logits: Tensor,
    /// (B, Q, 4) normalized cxcywh boxes of the last executed decoder layer.
    pub boxes: Tensor,
    /// Every executed decoder layer's logits and boxes.
    pub layers: Vec<LayerOutput>,
    pub trace: Option<Trace>,
}

/// Seconds spent in each stage of one forward pass.
#[derive(Debug, Default, Clone, Copy)]
pub struct StageTimes {
    pub backbone: f64,
    pub encoder: f64,
    pub query_selection: f64,
    pub decoder: f64,
}

/// A loaded network, one variant per architecture.
pub enum Model {
    /// RT-DETR (`model_type: "rt_detr"`).
    RtDetr(rtdetr::RtDetr),
    /// RT-DETRv2 (`model_type: "rt_detr_v2"`): RT-DETR's graph with RT-DETRv2's
    /// cross-attention.
    RtDetrV2(rtdetr::RtDetr),
    /// D-FINE (`model_type: "d_fine"`): HGNetV2 backbone, RepNCSPELAN4 encoder, decoder
    /// with fine-grained distribution refinement.
    DFine(Box<dfine::DFine>),
}

impl Model {
    pub(crate) fn load(cfg: &ModelConfig, weights: &Weights) -> Result<Self> {
        match cfg {
            ModelConfig::RtDetr(c) => Ok(Model::RtDetr(rtdetr::RtDetr::load(c, None, weights)?)),
            ModelConfig::RtDetrV2(c) => {
                let v2 = rtdetr::V2Sampling {
                    offset_scale: c.decoder_offset_scale,
                    discrete: c.decoder_method == "discrete",
                };
                Ok(Model::RtDetrV2(rtdetr::RtDetr::load(&c.base, Some(&v2), weights)?))
            }
            ModelConfig::DFine(c) => Ok(Model::DFine(Box::new(dfine::DFine::load(c, weights)?))),
        }
    }

    /// Decoder layers the checkpoint has.
    pub fn num_decoder_layers(&self) -> usize {
        match self {
            Model::RtDetr(m) | Model::RtDetrV2(m) => m.num_decoder_layers(),
            Model::DFine(m) => m.num_decoder_layers(),
        }
    }

    /// The stride the input's sides must be multiples of.
    pub fn max_stride(&self) -> usize {
        match self {
            Model::RtDetr(m) | Model::RtDetrV2(m) => m.max_stride(),
            Model::DFine(m) => m.max_stride(),
        }
    }

    /// Runs the network on (B, 3, H, W) pixels (H and W multiples of [`Model::max_stride`])
    /// using the first `decoder_layers` decoder layers (all when `None`), adding each
    /// stage's time to `times`; `trace` keeps the intermediate tensors.
    pub fn forward(
        &self,
        pixels: &Tensor,
        decoder_layers: Option<usize>,
        trace: bool,
        times: &mut StageTimes,
    ) -> Result<ModelOutput> {
        match self {
            Model::RtDetr(m) | Model::RtDetrV2(m) => m.forward(pixels, decoder_layers, trace, times),
            Model::DFine(m) => m.forward(pixels, decoder_layers, trace, times),
        }
    }
}

/// Checks the input (B, 3, H, W) against the model's largest stride and the requested
/// decoder depth against the `max` layers that can run; returns the depth to run.
pub(crate) fn checked_depth(
    pixels: &Tensor,
    stride: usize,
    decoder_layers: Option<usize>,
    max: usize,
) -> Result<usize> {
    let (_, c, h, w) = pixels.dims4()?;
    if c != 3 || h == 0 || w == 0 || h % stride != 0 || w % stride != 0 {
        return Err(Error::InvalidArgument(format!(
            "input must be (B, 3, H, W) with H and W multiples of {stride}, got {:?}",
            pixels.dims()
        )));
    }
    match decoder_layers {
        None => Ok(max),
        Some(n) if n >= 1 && n <= max => Ok(n),
        Some(n) => Err(Error::InvalidArgument(format!("decoder layers must be in 1..={max}, got {n}"))),
    }
}

/// Backbone then encoder, timed, their maps kept in a new trace when `trace` is asked for.
/// Returns the encoder's maps, the trace, and the instants at which the backbone, the
/// encoder and what follows began (for [`select_and_decode`]).
pub(crate) fn backbone_and_encoder(
    pixels: &Tensor,
    trace: bool,
    backbone: impl FnOnce(&Tensor) -> Result<Vec<Tensor>>,
    encoder: impl FnOnce(&[Tensor]) -> Result<Vec<Tensor>>,
) -> Result<(Vec<Tensor>, Option<Trace>, [std::time::Instant; 3])> {
    let mut tr = trace.then(Trace::default);
    let t0 = std::time::Instant::now();
    let feats = backbone(pixels)?;
    let t1 = std::time::Instant::now();
    let enc = encoder(&feats)?;
    let t2 = std::time::Instant::now();
    if let Some(tr) = tr.as_mut() {
        tr.backbone = feats;
        tr.encoder = enc.clone();
    }
    Ok((enc, tr, [t0, t1, t2]))
}

/// The stages after the encoder that every architecture shares: flatten the decoder's input
/// maps, select the queries (into the trace), run the architecture's decoder
/// (`decode(target, reference_unact, memory, shapes)`), and add the four stages' times,
/// given the instants at which the backbone, the encoder and the projections began.
pub(crate) fn select_and_decode(
    sources: &[Tensor],
    query_selection: &query_selection::QuerySelection,
    mut tr: Option<Trace>,
    times: &mut StageTimes,
    [t0, t1, t2]: [std::time::Instant; 3],
    decode: impl FnOnce(&Tensor, &Tensor, &Tensor, &[(usize, usize)]) -> Result<Vec<LayerOutput>>,
) -> Result<ModelOutput> {
    let shapes: Vec<(usize, usize)> = sources.iter().map(|s| (s.dim(2).unwrap_or(0), s.dim(3).unwrap_or(0))).collect();
    let memory = crate::kernels::tensor_ops::flatten_levels(sources)?;
    let sel = query_selection.forward(&memory, &shapes)?;
    if let Some(tr) = tr.as_mut() {
        tr.enc_topk_logits = Some(query_selection::gather_rows(&sel.enc_class, &sel.topk)?);
        tr.enc_topk_boxes = Some(candle_nn::ops::sigmoid(&sel.reference_unact)?);
        tr.topk_indices = sel.topk.clone();
    }
    let t3 = std::time::Instant::now();
    let layers = decode(&sel.target, &sel.reference_unact, &memory, &shapes)?;
    let t4 = std::time::Instant::now();
    times.backbone += (t1 - t0).as_secs_f64();
    times.encoder += (t2 - t1).as_secs_f64();
    times.query_selection += (t3 - t2).as_secs_f64();
    times.decoder += (t4 - t3).as_secs_f64();
    let last = layers.last().ok_or_else(|| crate::error::Error::Internal("no decoder layer ran".into()))?;
    Ok(ModelOutput { logits: last.logits.clone(), boxes: last.boxes.clone(), layers, trace: tr })
}
