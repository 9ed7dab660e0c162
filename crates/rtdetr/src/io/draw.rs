//! Annotated images: boxes, labels and scores drawn over the original image, one stable
//! colour per class. Used by the CLI's `--output` and the server's `return_image`.

use ab_glyph::{FontRef, PxScale};
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_rect_mut, draw_hollow_rect_mut, draw_line_segment_mut, draw_text_mut, text_size};
use imageproc::rect::Rect;

use crate::io::postprocess::Detection;

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSansMono-Bold.ttf");

/// A well-separated colour for a class id (golden-ratio hue steps).
pub fn class_color(class_id: usize) -> Rgb<u8> {
    let h = (class_id as f32 * 0.618_034).fract();
    let (s, v) = (0.85f32, 0.95f32);
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - f * s), v * (1.0 - (1.0 - f) * s));
    let (r, g, b) = match i as i32 % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    Rgb([(r * 255.0) as u8, (g * 255.0) as u8, (b * 255.0) as u8])
}

/// Draws the detections onto a copy of `image`.
pub fn annotate(image: &RgbImage, detections: &[Detection]) -> RgbImage {
    let mut canvas = image.clone();
    annotate_in_place(&mut canvas, detections);
    canvas
}

/// Draws the detections onto `canvas` itself.
pub fn annotate_in_place(canvas: &mut RgbImage, detections: &[Detection]) {
    let (w, h) = canvas.dimensions();
    if w == 0 || h == 0 {
        return;
    }
    let font = FontRef::try_from_slice(FONT).ok();
    let thickness = line_thickness(w, h);
    let scale = PxScale::from((w.min(h) as f32 / 30.0).clamp(11.0, 32.0));
    for d in detections {
        let color = class_color(d.class_id);
        let x0 = d.bbox.xmin.max(0.0).min(w as f32 - 1.0) as i32;
        let y0 = d.bbox.ymin.max(0.0).min(h as f32 - 1.0) as i32;
        let x1 = d.bbox.xmax.max(0.0).min(w as f32 - 1.0) as i32;
        let y1 = d.bbox.ymax.max(0.0).min(h as f32 - 1.0) as i32;
        for t in 0..thickness {
            let (bw, bh) = ((x1 - x0 - 2 * t).max(1) as u32, (y1 - y0 - 2 * t).max(1) as u32);
            draw_hollow_rect_mut(canvas, Rect::at(x0 + t, y0 + t).of_size(bw, bh), color);
        }
        if let Some(font) = &font {
            let text = format!("{} {:.2}", d.label, d.score);
            let (tw, th) = text_size(scale, font, &text);
            let ty = if y0 >= th as i32 + 2 { y0 - th as i32 - 2 } else { y0 };
            draw_filled_rect_mut(canvas, Rect::at(x0, ty).of_size(tw + 4, th + 2), color);
            draw_text_mut(canvas, Rgb([0, 0, 0]), x0 + 2, ty, scale, font, &text);
        }
    }
}

/// Draws `text` in black on a filled box of `color` whose top-left corner is at (x, y),
/// in the font and size [`annotate`] uses for an image of this size (for captions such as
/// track ids or counts).
pub fn draw_label(canvas: &mut RgbImage, x: i32, y: i32, text: &str, color: Rgb<u8>) {
    let (w, h) = canvas.dimensions();
    let Some(font) = FontRef::try_from_slice(FONT).ok().filter(|_| w > 0 && h > 0 && !text.is_empty()) else {
        return;
    };
    let scale = PxScale::from((w.min(h) as f32 / 30.0).clamp(11.0, 32.0));
    let (tw, th) = text_size(scale, &font, text);
    draw_filled_rect_mut(canvas, Rect::at(x, y).of_size(tw + 4, th + 2), color);
    draw_text_mut(canvas, Rgb([0, 0, 0]), x + 2, y, scale, &font, text);
}

/// Draws a line from `a` to `b` (pixels), `thickness` pixels wide.
pub fn draw_line(canvas: &mut RgbImage, a: (f32, f32), b: (f32, f32), color: Rgb<u8>, thickness: i32) {
    if ![a.0, a.1, b.0, b.1].iter().all(|v| v.is_finite()) {
        return;
    }
    let t = thickness.max(1);
    for dx in 0..t {
        for dy in 0..t {
            let (ox, oy) = ((dx - t / 2) as f32, (dy - t / 2) as f32);
            draw_line_segment_mut(canvas, (a.0 + ox, a.1 + oy), (b.0 + ox, b.1 + oy), color);
        }
    }
}

/// The box line width [`annotate`] uses for an image of this size.
pub fn line_thickness(width: u32, height: u32) -> i32 {
    ((width.min(height) as f32 / 300.0).round() as i32).clamp(1, 6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::postprocess::BoundingBox;

    #[test]
    fn draws_box_in_class_colour() {
        let img = RgbImage::from_pixel(120, 80, Rgb([255, 255, 255]));
        let det = Detection {
            label: "cat".into(),
            class_id: 3,
            score: 0.9,
            bbox: BoundingBox { xmin: 20.0, ymin: 30.0, xmax: 100.0, ymax: 70.0 },
        };
        let out = annotate(&img, &[det]);
        assert_eq!(out.get_pixel(60, 69), &class_color(3));
        assert_eq!(out.get_pixel(5, 5), &Rgb([255, 255, 255]));
        // Degenerate boxes and empty images do not panic.
        let tiny = Detection {
            label: String::new(),
            class_id: 0,
            score: 0.1,
            bbox: BoundingBox { xmin: 119.0, ymin: 79.0, xmax: 500.0, ymax: -3.0 },
        };
        let _ = annotate(&img, &[tiny]);
        let _ = annotate(&RgbImage::new(0, 0), &[]);
    }

    #[test]
    fn labels_and_lines() {
        let mut img = RgbImage::from_pixel(100, 60, Rgb([255, 255, 255]));
        draw_label(&mut img, 5, 5, "#3", Rgb([0, 200, 0]));
        assert_eq!(img.get_pixel(6, 6), &Rgb([0, 200, 0]));
        draw_line(&mut img, (10.0, 50.0), (90.0, 50.0), Rgb([255, 0, 0]), 3);
        assert_eq!(img.get_pixel(50, 50), &Rgb([255, 0, 0]));
        assert_eq!(img.get_pixel(50, 40), &Rgb([255, 255, 255]));
        // Off the image, NaN, empty text or an empty image: nothing drawn, no panic.
        draw_line(&mut img, (-50.0, -50.0), (500.0, -3.0), Rgb([1, 2, 3]), 2);
        draw_line(&mut img, (f32::NAN, 0.0), (5.0, 5.0), Rgb([1, 2, 3]), 2);
        draw_label(&mut img, 95, 55, "beyond the edge", Rgb([1, 2, 3]));
        draw_label(&mut img, 0, 0, "", Rgb([1, 2, 3]));
        draw_label(&mut RgbImage::new(0, 0), 0, 0, "x", Rgb([1, 2, 3]));
    }

    #[test]
    fn colours_differ_between_classes() {
        let c: Vec<_> = (0..10).map(class_color).collect();
        for i in 0..10 {
            for j in i + 1..10 {
                assert_ne!(c[i], c[j]);
            }
        }
    }
}
