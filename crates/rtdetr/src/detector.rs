//! The high-level API: load a checkpoint, detect objects in images.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::config::{PreprocessorConfig, RtDetrConfig};
use crate::error::{Error, Result};
use crate::model::{ModelOutput, RtDetr, StageTimes};
use crate::postprocess::{post_process, DetectOptions, Detection};
use crate::preprocess::Preprocessor;
use crate::weights::Weights;

/// A loaded RT-DETR checkpoint ready to detect objects.
///
/// ```no_run
/// use rtdetr::{Detector, DetectOptions};
/// let detector = Detector::load("models/shapes-demo")?;
/// let image = rtdetr::load_image("examples/shapes-1.png".as_ref())?;
/// for d in detector.detect(&image, &DetectOptions::default())? {
///     println!("{} {:.2} {:?}", d.label, d.score, d.bbox);
/// }
/// # Ok::<(), rtdetr::Error>(())
/// ```
pub struct Detector {
    model: RtDetr,
    preprocessor: Preprocessor,
    labels: Vec<String>,
    device: Device,
}

impl Detector {
    /// Loads from a local checkpoint directory or a Hugging Face Hub id.
    pub fn load(model: &str) -> Result<Self> {
        let dir = crate::hub::resolve_model(model, true)?;
        Self::from_dir(&dir)
    }

    /// Loads a checkpoint directory in the transformers layout.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Io(format!("{}: not a directory", dir.display())));
        }
        let cfg = RtDetrConfig::from_file(&dir.join("config.json"))?;
        let pre_path = dir.join("preprocessor_config.json");
        let pre_cfg =
            if pre_path.is_file() { PreprocessorConfig::from_file(&pre_path)? } else { PreprocessorConfig::default() };
        let device = Device::Cpu;
        let weights = Weights::from_dir(dir, &device)?;
        let model = RtDetr::load(&cfg, &weights)?;
        Ok(Self { model, preprocessor: Preprocessor::from_config(&pre_cfg)?, labels: cfg.labels(), device })
    }

    /// Runs the model at another input size (each side a multiple of 32).
    pub fn set_input_size(&mut self, height: usize, width: usize) -> Result<()> {
        if height == 0 || width == 0 || !height.is_multiple_of(32) || !width.is_multiple_of(32) {
            return Err(Error::InvalidArgument(format!(
                "input size must be positive multiples of 32, got {height}x{width}"
            )));
        }
        self.preprocessor = self.preprocessor.clone().with_size(height, width);
        Ok(())
    }

    /// Class names, indexed by class id.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn model(&self) -> &RtDetr {
        &self.model
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
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
        let out = self.forward(&pixels, opts.decoder_layers, &mut StageTimes::default())?;
        self.post_process(&out, &sizes, opts)
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
    pub fn forward(
        &self,
        pixels: &Tensor,
        decoder_layers: Option<usize>,
        times: &mut StageTimes,
    ) -> Result<ModelOutput> {
        self.model.forward_timed(pixels, decoder_layers, false, times)
    }

    /// Converts raw outputs to detections for images of the given (width, height).
    pub fn post_process(
        &self,
        out: &ModelOutput,
        sizes: &[(u32, u32)],
        opts: &DetectOptions,
    ) -> Result<Vec<Vec<Detection>>> {
        let (b, q, c) = out.logits.dims3()?;
        if sizes.len() != b {
            return Err(Error::InvalidArgument(format!("{} image sizes for a batch of {b}", sizes.len())));
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
                    opts,
                )
            })
            .collect())
    }
}
