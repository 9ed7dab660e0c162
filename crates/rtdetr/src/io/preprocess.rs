//! Image decoding and preprocessing identical to transformers' `RTDetrImageProcessorPil`:
//! EXIF orientation, conversion to RGB, Pillow-equivalent resize of the 8-bit image,
//! rescale (1/255), optional normalization, CHW float layout.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::error::{Error, Result};
use crate::io::config::PreprocessorConfig;
use crate::io::resize::{resize_rgb8, Filter};

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
    reader.into_dimensions().map_err(|e| Error::Image(format!("cannot read image header: {e}")))
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
    let format = reader.format().ok_or_else(|| Error::Image("unsupported or unrecognised image format".into()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    // Room for a 16-bit RGBA decode of the announced size plus the RGB copy.
    limits.max_alloc = Some(max_pixels.saturating_mul(12).max(1 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| Error::Image(format!("cannot decode image: {e}")))?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = match format {
        // Pillow decodes JPEG with libjpeg-turbo; other decoders differ by a few levels in
        // chroma upsampling, so use the same library for identical pixels.
        image::ImageFormat::Jpeg => match decode_jpeg_libjpeg(bytes)? {
            Some(rgb) => DynamicImage::ImageRgb8(rgb),
            None => {
                DynamicImage::from_decoder(decoder).map_err(|e| Error::Image(format!("cannot decode image: {e}")))?
            }
        },
        _ => DynamicImage::from_decoder(decoder).map_err(|e| Error::Image(format!("cannot decode image: {e}")))?,
    };
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// Decodes a JPEG with libjpeg (through mozjpeg, whose decoder is libjpeg-turbo's).
/// `Ok(None)` when libjpeg cannot produce RGB (e.g. CMYK): the caller falls back.
fn decode_jpeg_libjpeg(bytes: &[u8]) -> Result<Option<RgbImage>> {
    // libjpeg only warns on a missing end of image and pads with grey: refuse instead.
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        return Err(Error::Image("truncated JPEG (no end-of-image marker)".into()));
    }
    let result = std::panic::catch_unwind(|| -> std::io::Result<Option<RgbImage>> {
        let d = mozjpeg::Decompress::new_mem(bytes)?;
        if matches!(d.color_space(), mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK) {
            return Ok(None);
        }
        let mut started = d.rgb()?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let pixels: Vec<u8> = started.read_scanlines()?;
        started.finish()?;
        Ok(RgbImage::from_raw(w, h, pixels))
    });
    match result {
        Ok(Ok(img)) => Ok(img),
        Ok(Err(e)) => Err(Error::Image(format!("cannot decode JPEG: {e}"))),
        Err(_) => Err(Error::Image("cannot decode JPEG: corrupt data".into())),
    }
}

/// Reads and decodes an image file.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image(&bytes, DEFAULT_MAX_PIXELS).map_err(|e| match e {
        Error::Image(m) => Error::Image(format!("{}: {m}", path.display())),
        other => other,
    })
}

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
