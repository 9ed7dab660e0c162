//! Image decoding and preprocessing identical to transformers' `RTDetrImageProcessorPil`:
//! EXIF orientation, conversion to RGB, Pillow-equivalent resize of the 8-bit image,
//! rescale (1/255), optional normalization, CHW float layout.

use std::io::Cursor;
use std::path::Path;

use fast_image_resize as fr;
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::config::PreprocessorConfig;
use crate::error::{Error, Result};

/// Default cap on decoded pixels (about 8K x 8K); guards against decompression bombs.
pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// Reads the dimensions from the image header without decoding the pixels.
pub fn image_dimensions(bytes: &[u8]) -> Result<(u32, u32)> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Image(format!("cannot read image: {e}")))?;
    if reader.format().is_none() {
        return Err(Error::Image("unsupported or unrecognised image format".into()));
    }
    reader
        .into_dimensions()
        .map_err(|e| Error::Image(format!("cannot read image header: {e}")))
}

/// Decodes JPEG, PNG, WebP, BMP or GIF (first frame) bytes to RGB, applying the EXIF
/// orientation. Images above `max_pixels` are refused from their header, before decoding.
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    let (w, h) = image_dimensions(bytes)?;
    if w == 0 || h == 0 {
        return Err(Error::Image("image has zero width or height".into()));
    }
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(Error::Image(format!(
            "image is {w}x{h} = {} pixels, above the limit of {max_pixels}",
            u64::from(w) * u64::from(h)
        )));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Image(format!("cannot read image: {e}")))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    // Room for a 16-bit RGBA decode of the announced size plus the RGB copy.
    limits.max_alloc = Some(max_pixels.saturating_mul(12).max(1 << 20));
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| Error::Image(format!("cannot decode image: {e}")))?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| Error::Image(format!("cannot decode image: {e}")))?;
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

/// Reads and decodes an image file.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
    decode_image(&bytes, DEFAULT_MAX_PIXELS).map_err(|e| match e {
        Error::Image(m) => Error::Image(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Converts RGB images to the model's input tensor layout.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    /// Target (height, width); `None` keeps the image size (do_resize false).
    pub size: Option<(usize, usize)>,
    filter: fr::ResizeAlg,
    rescale: Option<f64>,
    normalize: Option<([f64; 3], [f64; 3])>,
}

impl Preprocessor {
    pub fn from_config(cfg: &PreprocessorConfig) -> Result<Self> {
        use fr::{FilterType, ResizeAlg};
        let filter = match cfg.resample.unwrap_or(2) {
            0 => ResizeAlg::Nearest,
            1 => ResizeAlg::Convolution(FilterType::Lanczos3),
            2 => ResizeAlg::Convolution(FilterType::Bilinear),
            3 => ResizeAlg::Convolution(FilterType::CatmullRom),
            4 => ResizeAlg::Convolution(FilterType::Box),
            5 => ResizeAlg::Convolution(FilterType::Hamming),
            r => return Err(Error::Config(format!("preprocessor_config.json: unsupported resample {r}"))),
        };
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

    /// Resizes the 8-bit image (Pillow-equivalent) and returns CHW f32 pixels.
    pub fn pixels(&self, img: &RgbImage) -> Result<Vec<f32>> {
        let (w, h) = img.dimensions();
        let (oh, ow) = self.output_size(h as usize, w as usize);
        let resized: Vec<u8> = if (oh, ow) == (h as usize, w as usize) {
            img.as_raw().clone()
        } else {
            let src = fr::images::ImageRef::new(w, h, img.as_raw(), fr::PixelType::U8x3)
                .map_err(|e| Error::Image(format!("resize: {e}")))?;
            let mut dst = fr::images::Image::new(ow as u32, oh as u32, fr::PixelType::U8x3);
            let opts = fr::ResizeOptions::new().resize_alg(self.filter);
            fr::Resizer::new()
                .resize(&src, &mut dst, &opts)
                .map_err(|e| Error::Image(format!("resize: {e}")))?;
            dst.into_vec()
        };
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
