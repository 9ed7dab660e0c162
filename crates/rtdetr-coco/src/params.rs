//! Evaluation parameters (pycocotools' `Params` for `iouType="bbox"`).

/// Evaluation parameters. [`Params::default`] is pycocotools' bbox setting:
/// IoU thresholds .50:.05:.95, 101 recall thresholds, maxDets `[1, 10, 100]`
/// and the all/small/medium/large area ranges.
///
/// [`crate::Summary`] follows pycocotools' `summarize()`, which assumes that
/// layout (area labels `all`/`small`/`medium`/`large`, at least three maxDets,
/// IoU thresholds containing 0.5 and 0.75); a summary line whose setting is
/// absent reads -1.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Images to evaluate; `None` = every image of the ground truth.
    /// Sorted and de-duplicated before use.
    pub img_ids: Option<Vec<i64>>,
    /// Categories to evaluate; `None` = every category of the ground truth.
    /// Sorted and de-duplicated before use.
    pub cat_ids: Option<Vec<i64>>,
    /// IoU thresholds `T`.
    pub iou_thrs: Vec<f64>,
    /// Recall thresholds `R` at which precision is sampled (should be sorted).
    pub rec_thrs: Vec<f64>,
    /// Maximum detections per image and category; sorted before use, the
    /// largest one also bounds how many detections are matched.
    pub max_dets: Vec<usize>,
    /// Object area ranges `[lo, hi]`; an object is outside when
    /// `area < lo || area > hi`.
    pub area_rng: Vec<[f64; 2]>,
    /// One label per area range (`summarize` looks ranges up by label).
    pub area_rng_lbl: Vec<String>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            img_ids: None,
            cat_ids: None,
            // np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1)
            iou_thrs: numpy_linspace(0.5, 0.95, 10),
            // np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1)
            rec_thrs: numpy_linspace(0.0, 1.0, 101),
            max_dets: vec![1, 10, 100],
            area_rng: vec![
                [0.0, 1e5f64 * 1e5],
                [0.0, 32.0 * 32.0],
                [32.0 * 32.0, 96.0 * 96.0],
                [96.0 * 96.0, 1e5f64 * 1e5],
            ],
            area_rng_lbl: ["all", "small", "medium", "large"].iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl Params {
    /// Default parameters restricted to the given images.
    pub fn with_img_ids(mut self, ids: impl Into<Vec<i64>>) -> Self {
        self.img_ids = Some(ids.into());
        self
    }

    /// Default parameters restricted to the given categories.
    pub fn with_cat_ids(mut self, ids: impl Into<Vec<i64>>) -> Self {
        self.cat_ids = Some(ids.into());
        self
    }
}

/// `numpy.linspace(start, stop, num, endpoint=True)` with numpy's exact
/// arithmetic (`i * step + start`, last value set to `stop`), so thresholds are
/// bit-identical to pycocotools'.
pub fn numpy_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let div = (num - 1) as f64;
            let delta = stop - start;
            let step = delta / div;
            let mut v: Vec<f64> = (0..num)
                .map(|i| if step == 0.0 { (i as f64 / div) * delta + start } else { i as f64 * step + start })
                .collect();
            v[num - 1] = stop;
            v
        }
    }
}
