//! The high-level API: load a checkpoint with its options, detect objects in images.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::error::{Error, Result};
use crate::io::config::{ModelConfig, PreprocessorConfig};
use crate::io::postprocess::{post_process, DetectOptions, Detection};
use crate::io::preprocess::{PreparedImage, Preprocessor};
use crate::io::weights::Weights;
use crate::kernels::{KernelConfig, Precision, WinogradChoice};
use crate::model::{Model, ModelOutput, StageTimes};

/// How to build a model: fixed for the life of a [`Detector`], so that two detectors with
/// different options live side by side in one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Arithmetic of the matrix products; `Bf16` on a CPU without bf16 dot products runs
    /// f32 ([`Detector::precision`] says which).
    pub precision: Precision,
    /// Input (height, width), each a multiple of 32; the checkpoint's
    /// preprocessor_config.json when `None`.
    pub size: Option<(usize, usize)>,
    /// Run only the first N decoder layers (RT-DETR's speed/accuracy knob); all when `None`.
    pub decoder_layers: Option<usize>,
    /// Winograd tile of stride-1 3×3 convolutions with f32 products (measurements and
    /// accuracy checks; the default is the fastest).
    pub winograd_f32: WinogradChoice,
    /// Winograd tile of stride-1 3×3 convolutions with bf16 products.
    pub winograd_bf16: WinogradChoice,
    /// Use the packed AVX-512 f32 kernel where the CPU has it (`false`: the `gemm` crate).
    pub packed_f32: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            precision: Precision::F32,
            size: None,
            decoder_layers: None,
            winograd_f32: WinogradChoice::default(),
            winograd_bf16: WinogradChoice::default(),
            packed_f32: true,
        }
    }
}

/// A loaded checkpoint ready to detect objects.
///
/// ```no_run
/// use rtdetr::{Detector, DetectOptions, LoadOptions};
/// let detector = Detector::load("models/shapes-demo", &LoadOptions::default())?;
/// let image = rtdetr::load_image("examples/shapes-1.png".as_ref())?;
/// for d in detector.detect(&image, &DetectOptions::default())? {
///     println!("{} {:.2} {:?}", d.label, d.score, d.bbox);
/// }
/// # Ok::<(), rtdetr::Error>(())
/// ```
pub struct Detector {
    model: Model,
    preprocessor: Preprocessor,
    labels: Vec<String>,
    decoder_layers: Option<usize>,
    precision: Precision,
    device: Device,
}

impl Detector {
    /// Loads from a local checkpoint directory or a Hugging Face Hub id.
    pub fn load(model: &str, opts: &LoadOptions) -> Result<Self> {
        let dir = crate::io::hub::resolve_model(model, true)?;
        Self::from_dir(&dir, opts)
    }

    /// Loads a checkpoint directory in the transformers layout.
    pub fn from_dir(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::NotFound(format!("{}: not a directory", dir.display())));
        }
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        let pre_path = dir.join("preprocessor_config.json");
        let pre_cfg =
            if pre_path.is_file() { PreprocessorConfig::from_file(&pre_path)? } else { PreprocessorConfig::default() };
        let mut preprocessor = Preprocessor::from_config(&pre_cfg)?;
        if let Some((h, w)) = opts.size {
            if h == 0 || w == 0 || !h.is_multiple_of(32) || !w.is_multiple_of(32) {
                return Err(Error::InvalidArgument(format!(
                    "input size must be positive multiples of 32, got {h}x{w}"
                )));
            }
            preprocessor = preprocessor.with_size(h, w);
        }
        let kernels = KernelConfig::new(opts.precision, opts.packed_f32, opts.winograd_f32, opts.winograd_bf16);
        let device = Device::Cpu;
        let weights = Weights::from_dir(dir, &device)?.with_kernels(kernels);
        let model = Model::load(&cfg, &weights)?;
        if let Some(n) = opts.decoder_layers {
            let max = model.num_decoder_layers();
            if n == 0 || n > max {
                return Err(Error::InvalidArgument(format!("decoder layers must be in 1..={max}, got {n}")));
            }
        }
        Ok(Self {
            model,
            preprocessor,
            labels: cfg.labels(),
            decoder_layers: opts.decoder_layers,
            precision: kernels.precision(),
            device,
        })
    }

    /// Class names, indexed by class id.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The network, for stage-by-stage checks ([`Model::forward`] with a trace).
    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }

    /// The precision in effect (`F32` where `Bf16` was asked for on a CPU without it).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Decoder layers each forward pass runs.
    pub fn decoder_layers(&self) -> usize {
        self.decoder_layers.unwrap_or_else(|| self.model.num_decoder_layers())
    }

    /// Maps class names to ids; an unknown name is an error listing what exists.
    pub fn class_ids(&self, names: &[String]) -> Result<Vec<usize>> {
        names
            .iter()
            .map(|n| {
                self.labels.iter().position(|l| l == n).ok_or_else(|| {
                    Error::InvalidArgument(format!("unknown class {n:?}; this model knows: {}", self.labels.join(", ")))
                })
            })
            .collect()
    }

    /// Detects objects in one image.
    pub fn detect(&self, image: &RgbImage, opts: &DetectOptions) -> Result<Vec<Detection>> {
        let mut out = self.detect_batch(std::slice::from_ref(image), opts)?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Detects objects in several images with one forward pass. Results equal one-by-one calls.
    pub fn detect_batch(&self, images: &[RgbImage], opts: &DetectOptions) -> Result<Vec<Vec<Detection>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let pixels = self.pixel_batch(images)?;
        let sizes: Vec<(u32, u32)> = images.iter().map(|i| i.dimensions()).collect();
        let out = self.forward(&pixels, &mut StageTimes::default())?;
        self.post_process(&out, &sizes, &vec![opts; images.len()])
    }

    /// Preprocesses one image (for [`Detector::detect_prepared`]: safe to run on another
    /// thread than inference).
    pub fn prepare(&self, image: &RgbImage) -> Result<PreparedImage> {
        self.preprocessor.prepare(image)
    }

    /// Runs prepared images of one input size as one forward pass, each with its own
    /// options. Results equal [`Detector::detect`] on the same images.
    pub fn detect_prepared(&self, batch: &[(&PreparedImage, &DetectOptions)]) -> Result<Vec<Vec<Detection>>> {
        let Some((first, _)) = batch.first() else { return Ok(Vec::new()) };
        let (h, w) = first.input_size;
        let mut data = Vec::with_capacity(batch.len() * 3 * h * w);
        for (img, _) in batch {
            if img.input_size != (h, w) || img.pixels.len() != 3 * h * w {
                return Err(Error::InvalidArgument("images of a batch must share one input size".into()));
            }
            data.extend_from_slice(&img.pixels);
        }
        let pixels = Tensor::from_vec(data, (batch.len(), 3, h, w), &self.device)?;
        let out = self.forward(&pixels, &mut StageTimes::default())?;
        let sizes: Vec<(u32, u32)> = batch.iter().map(|(img, _)| img.image_size).collect();
        let opts: Vec<&DetectOptions> = batch.iter().map(|(_, o)| *o).collect();
        self.post_process(&out, &sizes, &opts)
    }

    /// One forward pass on a blank input of the model's size (640x640 where the
    /// preprocessor keeps image sizes), so that the first request does not pay for
    /// building the kernels' weight forms.
    pub fn warm_up(&self) -> Result<()> {
        let (h, w) = self.preprocessor.size.unwrap_or((640, 640));
        let pixels = Tensor::zeros((1, 3, h, w), candle_core::DType::F32, &self.device)?;
        self.forward(&pixels, &mut StageTimes::default())?;
        Ok(())
    }

    /// Preprocesses images into one (B, 3, H, W) tensor.
    pub fn pixel_batch(&self, images: &[RgbImage]) -> Result<Tensor> {
        let (h, w) = match (self.preprocessor.size, images.first()) {
            (Some(s), _) => s,
            (None, Some(i)) => (i.height() as usize, i.width() as usize),
            (None, None) => return Err(Error::InvalidArgument("no images".into())),
        };
        let mut data = Vec::with_capacity(images.len() * 3 * h * w);
        for img in images {
            let px = self.preprocessor.pixels(img)?;
            if px.len() != 3 * h * w {
                return Err(Error::InvalidArgument("images of a batch must share one input size".into()));
            }
            data.extend_from_slice(&px);
        }
        Ok(Tensor::from_vec(data, (images.len(), 3, h, w), &self.device)?)
    }

    /// Runs the network on preprocessed pixels, adding each stage's time to `times`.
    pub fn forward(&self, pixels: &Tensor, times: &mut StageTimes) -> Result<ModelOutput> {
        self.model.forward(pixels, self.decoder_layers, false, times)
    }

    /// Converts raw outputs to detections for images of the given (width, height), each
    /// with its options.
    pub fn post_process(
        &self,
        out: &ModelOutput,
        sizes: &[(u32, u32)],
        opts: &[&DetectOptions],
    ) -> Result<Vec<Vec<Detection>>> {
        let (b, q, c) = out.logits.dims3()?;
        if sizes.len() != b || opts.len() != b {
            return Err(Error::Internal(format!(
                "{} image sizes and {} option sets for a batch of {b}",
                sizes.len(),
                opts.len()
            )));
        }
        let logits = out.logits.flatten_all()?.to_vec1::<f32>()?;
        let boxes = out.boxes.flatten_all()?.to_vec1::<f32>()?;
        Ok((0..b)
            .map(|i| {
                post_process(
                    &logits[i * q * c..(i + 1) * q * c],
                    &boxes[i * q * 4..(i + 1) * q * 4],
                    c,
                    sizes[i],
                    &self.labels,
                    opts[i],
                )
            })
            .collect())
    }
}
