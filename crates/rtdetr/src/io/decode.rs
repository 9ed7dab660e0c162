//! Image decoding from untrusted bytes: the header read first ([`ImageHeader`]: format,
//! size, what the decode will allocate, JPEG scans), then a decode bounded by
//! [`DecodeLimits`] (pixels, side, allocation, JPEG scans) that another thread can cancel.
//! JPEG goes through libjpeg-turbo (as Pillow does, for identical pixels), the other
//! formats through the `image` crate.

use std::io::{BufRead, Cursor, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::error::{Error, Result};

/// Default cap on decoded pixels (about 8K x 8K); guards against decompression bombs.
pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;
/// Default cap on either side: a 40 MP panorama is at most 131072 x 305. Far longer sides
/// (a 40,000,000 x 1 PNG) make the resampling tables, not the pixels, the cost.
pub const DEFAULT_MAX_SIDE: u32 = 1 << 17;
/// Default cap on the scans of a progressive JPEG. Encoders write 10 or so (libjpeg's
/// progressive script has 10, mozjpeg's optimized ones fewer than 30); each scan costs a
/// pass over the whole image, so thousands of tiny scans turn a small file into minutes of
/// CPU (libjpeg-turbo's `-maxscans` guards the same way).
pub const DEFAULT_MAX_JPEG_SCANS: u32 = 64;

/// Formats this crate decodes.
pub const SUPPORTED_FORMATS: &str = "JPEG, PNG, WebP, BMP, GIF";

/// Bounds on one decode.
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    /// Most pixels (width x height) from the header.
    pub max_pixels: u64,
    /// Longest side.
    pub max_side: u32,
    /// Most scans in a JPEG (counted again while decoding).
    pub max_jpeg_scans: u32,
    /// Most bytes the decoder may allocate beyond what the header announces (frames larger
    /// than the logical screen, inflated metadata): `None` allows [`ImageHeader::decode_bytes`].
    pub max_alloc: Option<u64>,
    /// When set (by another thread), the decode stops at its next check with an error:
    /// between JPEG scans, between reads of the other formats' data.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_side: DEFAULT_MAX_SIDE,
            max_jpeg_scans: DEFAULT_MAX_JPEG_SCANS,
            max_alloc: None,
            cancel: None,
        }
    }
}

impl DecodeLimits {
    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// Why a header is refused by [`ImageHeader::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitExceeded {
    Pixels { pixels: u64, max: u64 },
    Side { side: u32, max: u32 },
    JpegScans { scans: u32, max: u32 },
}

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pixels { pixels, max } => write!(f, "{pixels} pixels, above the limit of {max}"),
            Self::Side { side, max } => write!(f, "a side of {side} pixels, above the limit of {max}"),
            Self::JpegScans { scans, max } => write!(f, "a JPEG of {scans} scans, above the limit of {max}"),
        }
    }
}

/// What an image's header says, read without decoding the pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageHeader {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes of the decoder's own output (its color type at the header's size).
    pub native_bytes: u64,
    /// JPEG only: start-of-scan markers in the file, and whether it is progressive.
    pub jpeg_scans: u32,
    pub progressive: bool,
}

impl ImageHeader {
    /// Reads the format and header. Errors: unrecognised or unsupported formats, unreadable
    /// headers, zero sizes.
    pub fn read(bytes: &[u8]) -> Result<Self> {
        let format = image::guess_format(bytes)
            .map_err(|_| Error::Image(format!("unrecognised image format; supported formats: {SUPPORTED_FORMATS}")))?;
        if !matches!(
            format,
            ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Bmp | ImageFormat::Gif
        ) {
            return Err(Error::Image(format!(
                "{format:?} images are not supported; supported formats: {SUPPORTED_FORMATS}"
            )));
        }
        let mut reader = ImageReader::new(Cursor::new(bytes));
        reader.set_format(format);
        reader.no_limits();
        let decoder = reader.into_decoder().map_err(|e| Error::Image(format!("cannot read the image header: {e}")))?;
        let (width, height) = decoder.dimensions();
        if width == 0 || height == 0 {
            return Err(Error::Image("the image has zero width or height".into()));
        }
        let native_bytes = decoder.total_bytes();
        let (jpeg_scans, progressive) = if format == ImageFormat::Jpeg { jpeg_scan_count(bytes) } else { (0, false) };
        Ok(Self { format, width, height, native_bytes, jpeg_scans, progressive })
    }

    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// The first limit the header exceeds, if any.
    pub fn check(&self, limits: &DecodeLimits) -> std::result::Result<(), LimitExceeded> {
        if self.pixels() > limits.max_pixels {
            return Err(LimitExceeded::Pixels { pixels: self.pixels(), max: limits.max_pixels });
        }
        let side = self.width.max(self.height);
        if side > limits.max_side {
            return Err(LimitExceeded::Side { side, max: limits.max_side });
        }
        if self.jpeg_scans > limits.max_jpeg_scans {
            return Err(LimitExceeded::JpegScans { scans: self.jpeg_scans, max: limits.max_jpeg_scans });
        }
        Ok(())
    }

    /// The most memory the decode holds at once: the decoder's output and the RGB copy
    /// (for a progressive JPEG, libjpeg's coefficient buffers: at most 2 bytes per sample of
    /// three full-resolution components).
    pub fn decode_bytes(&self) -> u64 {
        let rgb = self.pixels() * 3;
        match self.format {
            ImageFormat::Jpeg if self.progressive => rgb + self.pixels() * 6,
            ImageFormat::Jpeg => rgb,
            _ => self.native_bytes.saturating_add(rgb),
        }
    }

    /// The decoded RGB image's size in bytes.
    pub fn rgb_bytes(&self) -> u64 {
        self.pixels() * 3
    }
}

/// Reads the dimensions from the image header without decoding the pixels.
pub fn image_dimensions(bytes: &[u8]) -> Result<(u32, u32)> {
    ImageHeader::read(bytes).map(|h| (h.width, h.height))
}

/// Decodes JPEG, PNG, WebP, BMP or GIF (first frame) bytes to RGB, applying the EXIF
/// orientation. Images above `max_pixels` are refused from their header, before decoding.
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    decode_image_limited(bytes, &DecodeLimits { max_pixels, ..DecodeLimits::default() })
}

/// [`decode_image`] under `limits`: the header is checked first, then the decoder may
/// allocate no more than the header announces (or `limits.max_alloc`), a JPEG may not
/// have more scans than allowed, and `limits.cancel` stops the work.
pub fn decode_image_limited(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage> {
    let header = ImageHeader::read(bytes)?;
    header.check(limits).map_err(|e| Error::Image(format!("the image is refused: {e}")))?;
    if limits.cancelled() {
        return Err(Error::Image("the decode was cancelled".into()));
    }
    let mut reader = ImageReader::new(CancellableReader { inner: Cursor::new(bytes), cancel: limits.cancel.clone() });
    reader.set_format(header.format);
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(header.width);
    decoder_limits.max_image_height = Some(header.height);
    // What the header announces, with 1 MiB for metadata: a GIF frame larger than its
    // screen, or an ICC profile that inflates to gigabytes, is refused rather than
    // allocated.
    decoder_limits.max_alloc = Some(limits.max_alloc.unwrap_or_else(|| header.decode_bytes()).saturating_add(1 << 20));
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(|e| Error::Image(format!("cannot decode the image: {e}")))?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = match header.format {
        // Pillow decodes JPEG with libjpeg-turbo; other decoders differ by a few levels in
        // chroma upsampling, so use the same library for identical pixels.
        ImageFormat::Jpeg => match super::jpeg::decode(bytes, limits.max_jpeg_scans, limits.cancel.clone())? {
            Some(rgb) => DynamicImage::ImageRgb8(rgb),
            None => from_decoder(decoder, limits)?,
        },
        _ => from_decoder(decoder, limits)?,
    };
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

fn from_decoder(decoder: impl ImageDecoder, limits: &DecodeLimits) -> Result<DynamicImage> {
    DynamicImage::from_decoder(decoder).map_err(|e| {
        if limits.cancelled() {
            Error::Image("the decode was cancelled".into())
        } else {
            Error::Image(format!("cannot decode the image: {e}"))
        }
    })
}

/// Reads and decodes an image file.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image(&bytes, DEFAULT_MAX_PIXELS).map_err(|e| match e {
        Error::Image(m) => Error::Image(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Counts the start-of-scan markers of a JPEG by walking its segments (skipping the
/// entropy-coded data after each scan header), and tells whether a progressive frame
/// header (SOF2, SOF6, SOF10, SOF14) is present. Stops at the end of image or of the data.
fn jpeg_scan_count(b: &[u8]) -> (u32, bool) {
    let (mut scans, mut progressive) = (0u32, false);
    let mut i = 2; // after SOI
    while i + 1 < b.len() {
        if b[i] != 0xFF {
            i += 1;
            continue;
        }
        let marker = b[i + 1];
        match marker {
            0xFF => i += 1, // fill byte
            0x00 | 0x01 | 0xD0..=0xD8 => i += 2,
            0xD9 => break,
            _ => {
                let Some(len) = b.get(i + 2..i + 4).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else {
                    break;
                };
                if matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE) {
                    progressive = true;
                }
                i += 2 + len.max(2);
                if marker == 0xDA {
                    scans += 1;
                    // Entropy-coded data: 0xFF is followed by 0x00 (a stuffed byte) or a
                    // restart marker until the next real marker.
                    while i + 1 < b.len() && (b[i] != 0xFF || matches!(b[i + 1], 0x00 | 0xD0..=0xD7)) {
                        i += 1;
                    }
                }
            }
        }
    }
    (scans, progressive)
}

/// A reader that fails once its cancel flag is set, so that decoders which read as they go
/// (PNG, GIF, WebP, BMP) stop at their next read.
struct CancellableReader<R> {
    inner: R,
    cancel: Option<Arc<AtomicBool>>,
}

impl<R> CancellableReader<R> {
    fn check(&self) -> std::io::Result<()> {
        if self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "the decode was cancelled"));
        }
        Ok(())
    }
}

impl<R: Read> Read for CancellableReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.check()?;
        self.inner.read(buf)
    }
}

impl<R: BufRead> BufRead for CancellableReader<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.check()?;
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt)
    }
}

impl<R: Seek> Seek for CancellableReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(RgbImage::from_pixel(w, h, image::Rgb([9, 99, 199])))
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    fn jpeg(w: u32, h: u32, progressive: bool) -> Vec<u8> {
        let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        if progressive {
            c.set_progressive_mode();
        } else {
            c.set_fastest_defaults();
        }
        c.set_size(w as usize, h as usize);
        let mut c = c.start_compress(Vec::new()).unwrap();
        let px: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        c.write_scanlines(&px).unwrap();
        c.finish().unwrap()
    }

    #[test]
    fn header_counts_jpeg_scans() {
        let base = ImageHeader::read(&jpeg(40, 24, false)).unwrap();
        assert_eq!((base.width, base.height, base.jpeg_scans, base.progressive), (40, 24, 1, false));
        let prog = ImageHeader::read(&jpeg(40, 24, true)).unwrap();
        assert!(prog.progressive && prog.jpeg_scans > 1, "{prog:?}");
        assert!(prog.decode_bytes() > base.decode_bytes());
        let limits = DecodeLimits { max_jpeg_scans: prog.jpeg_scans - 1, ..DecodeLimits::default() };
        assert_eq!(
            prog.check(&limits),
            Err(LimitExceeded::JpegScans { scans: prog.jpeg_scans, max: prog.jpeg_scans - 1 })
        );
        // The decode-time count is the backstop when the header walk is fooled.
        let err = super::super::jpeg::decode(&jpeg(40, 24, true), 1, None).unwrap_err();
        assert!(err.to_string().contains("scans"), "{err}");
        assert!(decode_image_limited(&jpeg(40, 24, true), &DecodeLimits::default()).is_ok());
    }

    #[test]
    fn side_and_pixel_limits() {
        let h = ImageHeader::read(&png(300, 2)).unwrap();
        assert_eq!(h.native_bytes, 300 * 2 * 3);
        assert_eq!(
            h.check(&DecodeLimits { max_side: 299, ..DecodeLimits::default() }),
            Err(LimitExceeded::Side { side: 300, max: 299 })
        );
        assert_eq!(
            h.check(&DecodeLimits { max_pixels: 599, ..DecodeLimits::default() }),
            Err(LimitExceeded::Pixels { pixels: 600, max: 599 })
        );
        assert!(decode_image_limited(&png(300, 2), &DecodeLimits { max_side: 299, ..DecodeLimits::default() }).is_err());
    }

    #[test]
    fn cancelled_decodes_stop() {
        let cancel = Arc::new(AtomicBool::new(true));
        for bytes in [png(64, 64), jpeg(64, 64, true), jpeg(64, 64, false)] {
            let limits = DecodeLimits { cancel: Some(cancel.clone()), ..DecodeLimits::default() };
            let err = decode_image_limited(&bytes, &limits).unwrap_err();
            assert!(err.to_string().contains("cancelled"), "{err}");
        }
        let err = super::super::jpeg::decode(&jpeg(64, 64, true), 64, Some(cancel)).unwrap_err();
        assert!(err.to_string().contains("cancelled"), "{err}");
    }

    #[test]
    fn truncated_jpeg_with_an_end_marker_is_refused() {
        let full = jpeg(64, 64, false);
        assert!(decode_image(&full, 1 << 20).is_ok());
        let mut cut = full[..full.len() * 2 / 3].to_vec();
        cut.extend_from_slice(&[0xFF, 0xD9]);
        let err = decode_image(&cut, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("truncated") || err.to_string().contains("corrupt"), "{err}");
        let err = decode_image(&full[..full.len() / 2], 1 << 20).unwrap_err();
        assert!(err.to_string().contains("truncated") || err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn gif_frame_larger_than_its_screen_is_refused() {
        // A 1x1 logical screen with a 3000x3000 frame: the header promises 1 pixel.
        let mut gif = Vec::new();
        {
            let mut enc = gif::Encoder::new(&mut gif, 1, 1, &[0, 0, 0, 255, 255, 255]).unwrap();
            let frame =
                gif::Frame { width: 3000, height: 3000, buffer: vec![1u8; 9_000_000].into(), ..gif::Frame::default() };
            enc.write_frame(&frame).unwrap();
        }
        let header = ImageHeader::read(&gif).unwrap();
        assert_eq!((header.width, header.height), (1, 1));
        let err = decode_image(&gif, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("limit") || err.to_string().contains("memory"), "{err}");
    }
}
