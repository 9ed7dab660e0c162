//! Pillow's `Image.resize` for 8-bit RGB, reproduced exactly.
//!
//! The reference preprocessing resizes the 8-bit image with Pillow. `fast_image_resize`
//! rounds its fixed-point coefficients differently and lands one level off on some
//! pixels, which is enough to reorder near-tied detections; so this module follows
//! Pillow's `Resample.c` (Pillow 13): coefficients from the filter in f64, normalised,
//! converted to 22-bit fixed point; two passes through an 8-bit intermediate, in the
//! order Pillow picks.

use rayon::prelude::*;

/// Pillow's resampling filters (`Image.Resampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Nearest,
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

impl Filter {
    /// From Pillow's integer code (`resample` in preprocessor_config.json).
    pub fn from_pil_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Self::Nearest,
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            4 => Self::Box,
            5 => Self::Hamming,
            _ => return None,
        })
    }

    fn support(self) -> f64 {
        match self {
            Self::Nearest | Self::Box => 0.5,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        use std::f64::consts::PI;
        let sinc = |x: f64| if x == 0.0 { 1.0 } else { (x * PI).sin() / (x * PI) };
        match self {
            Self::Nearest | Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * PI;
                    x.sin() / x * (0.54 + 0.46 * x.cos())
                }
            }
            Self::Bicubic => {
                let a = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output index: first source index, tap count, fixed-point weights.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn precompute(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncation toward zero, as Pillow does.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for x in 0..n {
            let v = if ww != 0.0 { k[x] / ww } else { k[x] };
            let f = v * f64::from(1u32 << PRECISION_BITS);
            row[x] = if v < 0.0 { (-0.5 + f) as i32 } else { (0.5 + f) as i32 };
        }
        bounds.push((xmin, n));
    }
    Coeffs { ksize, bounds, weights }
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS) * 256 {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes packed RGB8 `src` (w x h) to (ow x oh) exactly as Pillow's `Image.resize`.
pub fn resize_rgb8(src: &[u8], w: usize, h: usize, ow: usize, oh: usize, filter: Filter) -> Vec<u8> {
    assert_eq!(src.len(), w * h * 3, "source buffer size");
    if ow == 0 || oh == 0 {
        return Vec::new();
    }
    if (w, h) == (ow, oh) {
        return src.to_vec();
    }
    if filter == Filter::Nearest {
        return resize_nearest(src, w, h, ow, oh);
    }
    let need_h = ow != w;
    let need_v = oh != h;
    // Pillow >= 11 runs the vertical pass first when the height shrinks by more than
    // twice what the width does; the 8-bit intermediate makes the order visible.
    let (dh, dw) = (h as i64 - oh as i64, w as i64 - ow as i64);
    let horizontal_first = !(dh > 0 && dh > dw * 2);
    let ch = precompute(w, ow, filter);
    let cv = precompute(h, oh, filter);
    if horizontal_first {
        // Horizontal pass over just the source rows the vertical pass reads.
        let (first, last) = (cv.bounds[0].0, cv.bounds[oh - 1].0 + cv.bounds[oh - 1].1);
        let tmp = if need_h {
            horizontal_pass(&src[first * w * 3..last * w * 3], w, last - first, &ch)
        } else {
            src[first * w * 3..last * w * 3].to_vec()
        };
        if need_v {
            vertical_pass(&tmp, ow, &cv, first)
        } else {
            tmp
        }
    } else {
        let tmp = vertical_pass(src, w, &cv, 0);
        if need_h {
            horizontal_pass(&tmp, w, oh, &ch)
        } else {
            tmp
        }
    }
}

/// Resamples each of `rows` rows of width `w` to `c.bounds.len()` columns.
fn horizontal_pass(src: &[u8], w: usize, rows: usize, c: &Coeffs) -> Vec<u8> {
    let ow = c.bounds.len();
    let mut out = vec![0u8; rows * ow * 3];
    out.par_chunks_mut(ow * 3).enumerate().for_each(|(r, dst)| {
        let line = &src[r * w * 3..(r + 1) * w * 3];
        for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
            let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
            for (x, &kx) in k.iter().enumerate() {
                let p = &line[(xmin + x) * 3..(xmin + x) * 3 + 3];
                ss[0] += i32::from(p[0]) * kx;
                ss[1] += i32::from(p[1]) * kx;
                ss[2] += i32::from(p[2]) * kx;
            }
            dst[xx * 3] = clip8(ss[0]);
            dst[xx * 3 + 1] = clip8(ss[1]);
            dst[xx * 3 + 2] = clip8(ss[2]);
        }
    });
    out
}

/// Resamples columns of width-`w` rows (row 0 of `src` is source row `row_offset`).
fn vertical_pass(src: &[u8], w: usize, c: &Coeffs, row_offset: usize) -> Vec<u8> {
    let oh = c.bounds.len();
    let mut out = vec![0u8; oh * w * 3];
    out.par_chunks_mut(w * 3).enumerate().for_each(|(yy, dst)| {
        let (ymin, n) = c.bounds[yy];
        let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
        for (i, d) in dst.iter_mut().enumerate() {
            let mut ss = 1i32 << (PRECISION_BITS - 1);
            for (y, &ky) in k.iter().enumerate() {
                ss += i32::from(src[(ymin - row_offset + y) * w * 3 + i]) * ky;
            }
            *d = clip8(ss);
        }
    });
    out
}

/// Pillow's nearest-neighbour resize: source index floor((x + 0.5) * scale).
fn resize_nearest(src: &[u8], w: usize, h: usize, ow: usize, oh: usize) -> Vec<u8> {
    let (sx, sy) = (w as f64 / ow as f64, h as f64 / oh as f64);
    let mut out = Vec::with_capacity(ow * oh * 3);
    for y in 0..oh {
        let iy = (((y as f64 + 0.5) * sy) as usize).min(h - 1);
        for x in 0..ow {
            let ix = (((x as f64 + 0.5) * sx) as usize).min(w - 1);
            out.extend_from_slice(&src[(iy * w + ix) * 3..(iy * w + ix) * 3 + 3]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_image_stays_constant() {
        for filter in
            [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos, Filter::Box, Filter::Hamming, Filter::Nearest]
        {
            let src = vec![77u8; 37 * 23 * 3];
            for (ow, oh) in [(10, 10), (64, 48), (5, 90)] {
                let out = resize_rgb8(&src, 37, 23, ow, oh, filter);
                assert_eq!(out.len(), ow * oh * 3);
                assert!(out.iter().all(|&v| v == 77), "{filter:?} {ow}x{oh}");
            }
        }
    }

    #[test]
    fn bilinear_upscale_interpolates() {
        // 2x1 black/white upscaled to 4x1: Pillow gives 0, 64, 191, 255.
        let src = [0, 0, 0, 255, 255, 255];
        let out = resize_rgb8(&src, 2, 1, 4, 1, Filter::Bilinear);
        let r: Vec<u8> = out.chunks(3).map(|p| p[0]).collect();
        assert_eq!(r, vec![0, 64, 191, 255]);
    }
}
