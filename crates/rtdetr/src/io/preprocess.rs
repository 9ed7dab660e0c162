//! Image decoding and preprocessing identical to transformers' `RTDetrImageProcessorPil`:
//! EXIF orientation, conversion to RGB, Pillow-equivalent resize of the 8-bit image,
//! rescale (1/255), optional normalization, CHW float layout.

use image::RgbImage;

use crate::error::{Error, Result};
use crate::io::config::PreprocessorConfig;
use crate::io::resize::{resize_rgb8, Filter};

/// One image ready for the network: what the engine needs to run it and to scale its
/// boxes back. Plain data, cheap to send between threads.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// CHW f32 pixels from the model's preprocessor.
    pub pixels: Vec<f32>,
    /// (height, width) of `pixels`.
    pub input_size: (usize, usize),
    /// (width, height) of the original image: boxes are scaled to it.
    pub image_size: (u32, u32),
}

/// Converts RGB images to the model's input tensor layout.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    /// Target (height, width); `None` keeps the image size (do_resize false).
    pub size: Option<(usize, usize)>,
    filter: Filter,
    rescale: Option<f64>,
    normalize: Option<([f64; 3], [f64; 3])>,
}

impl Preprocessor {
    pub fn from_config(cfg: &PreprocessorConfig) -> Result<Self> {
        let code = cfg.resample.unwrap_or(2);
        let filter = Filter::from_pil_code(code)
            .ok_or_else(|| Error::Config(format!("preprocessor_config.json: unsupported resample {code}")))?;
        let normalize = if cfg.do_normalize {
            let mean = cfg.image_mean.clone().unwrap_or_else(|| vec![0.485, 0.456, 0.406]);
            let std = cfg.image_std.clone().unwrap_or_else(|| vec![0.229, 0.224, 0.225]);
            let three = |v: &[f64], what: &str| -> Result<[f64; 3]> {
                match v {
                    [a] => Ok([*a; 3]),
                    [a, b, c] => Ok([*a, *b, *c]),
                    _ => Err(Error::Config(format!("preprocessor_config.json: {what} needs 1 or 3 values"))),
                }
            };
            Some((three(&mean, "image_mean")?, three(&std, "image_std")?))
        } else {
            None
        };
        Ok(Self {
            size: if cfg.do_resize { Some(cfg.target_size()?) } else { None },
            filter,
            rescale: cfg.do_rescale.then(|| cfg.rescale_factor.unwrap_or(1.0 / 255.0)),
            normalize,
        })
    }

    /// Overrides the target size (e.g. `--size 800`).
    pub fn with_size(mut self, height: usize, width: usize) -> Self {
        self.size = Some((height, width));
        self
    }

    /// The (height, width) the model will see for an image of the given size.
    pub fn output_size(&self, img_h: usize, img_w: usize) -> (usize, usize) {
        self.size.unwrap_or((img_h, img_w))
    }

    /// Bytes that preprocessing an image of `width` x `height` allocates beyond the image:
    /// the resampler's intermediate 8-bit image and coefficient tables, the resized image
    /// and its f32 pixels.
    pub fn scratch_bytes(&self, width: u32, height: u32) -> u64 {
        let (w, h) = (u64::from(width), u64::from(height));
        let (oh, ow) = self.output_size(height as usize, width as usize);
        let (oh, ow) = (oh as u64, ow as u64);
        3 * (ow * h).max(w * oh) + 15 * ow * oh + 32 * (w + h)
    }

    /// Preprocesses one image for [`crate::Detector::detect_prepared`].
    pub fn prepare(&self, img: &RgbImage) -> Result<PreparedImage> {
        let input_size = self.output_size(img.height() as usize, img.width() as usize);
        Ok(PreparedImage { pixels: self.pixels(img)?, input_size, image_size: img.dimensions() })
    }

    /// Resizes the 8-bit image (exactly as Pillow) and returns CHW f32 pixels.
    pub fn pixels(&self, img: &RgbImage) -> Result<Vec<f32>> {
        let (w, h) = img.dimensions();
        let (oh, ow) = self.output_size(h as usize, w as usize);
        let resized = resize_rgb8(img.as_raw(), w as usize, h as usize, ow, oh, self.filter);
        let plane = oh * ow;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in resized.chunks_exact(3).enumerate() {
            for c in 0..3 {
                // Same arithmetic as transformers: upcast to f64, scale, then f32.
                let mut v = f64::from(px[c]);
                if let Some(s) = self.rescale {
                    v *= s;
                }
                let mut v = v as f32;
                if let Some((mean, std)) = &self.normalize {
                    v = ((f64::from(v) - mean[c]) / std[c]) as f32;
                }
                out[c * plane + i] = v;
            }
        }
        Ok(out)
    }
}
