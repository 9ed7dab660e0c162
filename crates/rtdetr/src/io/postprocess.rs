//! Post-processing like `RTDetrImageProcessor.post_process_object_detection` (sigmoid,
//! top-k over queries x classes, cxcywh → xyxy in original pixels, `score > threshold`),
//! then box clipping, a class filter and a cap on the number of detections.

use serde::{Deserialize, Serialize};

/// A box in original-image pixels (the HF object-detection pipeline's convention).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoundingBox {
    pub xmin: f32,
    pub ymin: f32,
    pub xmax: f32,
    pub ymax: f32,
}

/// One detected object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub label: String,
    pub class_id: usize,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: BoundingBox,
}

/// What to keep of the raw predictions.
#[derive(Debug, Clone)]
pub struct DetectOptions {
    /// Keep detections with `score > threshold`.
    pub threshold: f32,
    /// At most this many detections per image (highest scores first).
    pub max_detections: usize,
    /// Keep only these class ids (all when `None`).
    pub classes: Option<Vec<usize>>,
}

impl Default for DetectOptions {
    fn default() -> Self {
        Self { threshold: 0.5, max_detections: 100, classes: None }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Turns one image's logits (Q x C, row-major) and cxcywh boxes (Q x 4) into detections.
pub fn post_process(
    logits: &[f32],
    boxes: &[f32],
    num_classes: usize,
    image_size: (u32, u32),
    labels: &[String],
    opts: &DetectOptions,
) -> Vec<Detection> {
    let q = boxes.len() / 4;
    let scores: Vec<f32> = logits.iter().map(|&l| sigmoid(l)).collect();
    let top = crate::model::query_selection::top_k_indices(&scores, q);
    let (w, h) = (image_size.0 as f32, image_size.1 as f32);
    let mut out = Vec::new();
    for i in top {
        let score = scores[i];
        // Written so that a NaN score also stops here.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(score > opts.threshold) {
            // Sorted by score: nothing after this passes either.
            break;
        }
        let (query, class_id) = (i / num_classes, i % num_classes);
        if let Some(keep) = &opts.classes {
            if !keep.contains(&class_id) {
                continue;
            }
        }
        let b = &boxes[query * 4..query * 4 + 4];
        let (cx, cy, bw, bh) = (b[0], b[1], b[2], b[3]);
        // center_to_corners_format, then scale by (w, h) as the reference does.
        let corners = [(cx - 0.5 * bw) * w, (cy - 0.5 * bh) * h, (cx + 0.5 * bw) * w, (cy + 0.5 * bh) * h];
        let bbox = BoundingBox {
            xmin: corners[0].clamp(0.0, w),
            ymin: corners[1].clamp(0.0, h),
            xmax: corners[2].clamp(0.0, w),
            ymax: corners[3].clamp(0.0, h),
        };
        out.push(Detection {
            label: labels.get(class_id).cloned().unwrap_or_else(|| format!("LABEL_{class_id}")),
            class_id,
            score,
            bbox,
        });
        if out.len() >= opts.max_detections {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn converts_and_filters() {
        // 2 queries x 2 classes.
        let logits = [2.0, -5.0, -5.0, 0.0];
        let boxes = [0.5, 0.5, 0.2, 0.4, 0.9, 0.9, 0.4, 0.4];
        let opts = DetectOptions { threshold: 0.3, ..Default::default() };
        let d = post_process(&logits, &boxes, 2, (100, 50), &labels(), &opts);
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].class_id, d[0].label.as_str()), (0, "a"));
        let b = d[0].bbox;
        for (got, want) in [(b.xmin, 40.0), (b.ymin, 15.0), (b.xmax, 60.0), (b.ymax, 35.0)] {
            assert!((got - want).abs() < 1e-4, "{b:?}");
        }
        // Second box is clipped at the image border.
        assert_eq!(d[1].class_id, 1);
        assert_eq!(d[1].bbox.xmax, 100.0);
        assert_eq!(d[1].bbox.ymax, 50.0);
        assert!((d[1].score - 0.5).abs() < 1e-6);

        let only_b = DetectOptions { threshold: 0.3, classes: Some(vec![1]), ..Default::default() };
        assert_eq!(post_process(&logits, &boxes, 2, (100, 50), &labels(), &only_b).len(), 1);
        let one = DetectOptions { threshold: 0.0, max_detections: 1, ..Default::default() };
        assert_eq!(post_process(&logits, &boxes, 2, (100, 50), &labels(), &one).len(), 1);
        let strict = DetectOptions { threshold: 0.9, ..Default::default() };
        assert!(post_process(&logits, &boxes, 2, (100, 50), &labels(), &strict).is_empty());
    }
}
