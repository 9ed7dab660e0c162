//! The evaluation: pycocotools' `evaluate()` + `accumulate()` + `summarize()`.

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::params::Params;
use crate::types::{CocoDataset, Detection};

/// `np.spacing(1)`.
const SPACING_1: f64 = f64::EPSILON;

/// Per-detection outcome at one (area range, IoU threshold).
const FP: u8 = 0;
const TP: u8 = 1;
const IGNORED: u8 = 2;

/// Names of [`Summary::stats`], in order.
pub const STAT_NAMES: [&str; 12] =
    ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"];

/// Accumulated results: pycocotools' `eval['precision']` and `eval['recall']`
/// plus the settings they were computed with.
///
/// Entries are -1 where a setting has no ground truth (or was never evaluated).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Evaluated image ids (sorted, unique).
    pub img_ids: Vec<i64>,
    /// Evaluated category ids (sorted, unique); index `k` of the arrays.
    pub cat_ids: Vec<i64>,
    /// IoU thresholds; index `t`.
    pub iou_thrs: Vec<f64>,
    /// Recall thresholds; index `r`.
    pub rec_thrs: Vec<f64>,
    /// Area ranges; index `a`.
    pub area_rng: Vec<[f64; 2]>,
    /// Area range labels; index `a`.
    pub area_rng_lbl: Vec<String>,
    /// maxDets (sorted); index `m`.
    pub max_dets: Vec<usize>,
    /// Category names, parallel to `cat_ids`.
    pub cat_names: Vec<String>,
    precision: Vec<f64>,
    recall: Vec<f64>,
}

/// AP of one category (IoU .50:.95, area `all`, maxDets 100).
#[derive(Debug, Clone, PartialEq)]
pub struct CategoryAp {
    /// Category id.
    pub category_id: i64,
    /// Category name from the ground truth (empty if none).
    pub name: String,
    /// Average precision, -1 if the category has no (non-crowd) ground truth.
    pub ap: f64,
}

/// The 12 standard COCO numbers, exactly as pycocotools' `summarize()` computes
/// them (`COCOeval.stats`), plus per-category AP.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl
    /// (see [`STAT_NAMES`]); -1 where undefined.
    pub stats: [f64; 12],
    /// AP per evaluated category, in category-id order.
    pub per_category: Vec<CategoryAp>,
    /// First and last IoU threshold (for the `IoU=0.50:0.95` label).
    pub iou_range: (f64, f64),
    /// The three maxDets values printed on lines 2–12 of the table
    /// (line 1 is always maxDets=100, as in pycocotools).
    pub max_dets: [usize; 3],
}

/// Evaluates detections against the ground truth and summarizes, exactly like
/// pycocotools `COCOeval(gt, dt, "bbox")` + `evaluate()`, `accumulate()`,
/// `summarize()`.
///
/// Detections on images outside the evaluated set, or with categories outside
/// it, are skipped (pycocotools' `loadRes` would refuse unknown image ids; use
/// [`crate::validate_results`] to get that check).
pub fn evaluate(gt: &CocoDataset, dets: &[Detection], params: &Params) -> Summary {
    accumulate(gt, dets, params).summarize()
}

/// Runs the per-image matching and the accumulation, returning the full
/// precision / recall arrays (for PR curves or custom summaries).
pub fn accumulate(gt: &CocoDataset, dets: &[Detection], params: &Params) -> Evaluation {
    let mut img_ids: Vec<i64> = match &params.img_ids {
        Some(ids) => ids.clone(),
        None => gt.images.iter().map(|i| i.id).collect(),
    };
    img_ids.sort_unstable();
    img_ids.dedup();
    let mut cat_ids: Vec<i64> = match &params.cat_ids {
        Some(ids) => ids.clone(),
        None => gt.categories.iter().map(|c| c.id).collect(),
    };
    cat_ids.sort_unstable();
    cat_ids.dedup();
    let mut max_dets = params.max_dets.clone();
    max_dets.sort_unstable();

    let t_n = params.iou_thrs.len();
    let r_n = params.rec_thrs.len();
    let k_n = cat_ids.len();
    let a_n = params.area_rng.len();
    let m_n = max_dets.len();

    let mut ev = Evaluation {
        cat_names: cat_ids
            .iter()
            .map(|&id| {
                // pycocotools' cats dict keeps the last entry of an id
                gt.categories.iter().rev().find(|c| c.id == id).map(|c| c.name.clone()).unwrap_or_default()
            })
            .collect(),
        img_ids,
        cat_ids,
        iou_thrs: params.iou_thrs.clone(),
        rec_thrs: params.rec_thrs.clone(),
        area_rng: params.area_rng.clone(),
        area_rng_lbl: params.area_rng_lbl.clone(),
        max_dets,
        precision: vec![-1.0; t_n * r_n * k_n * a_n * m_n],
        recall: vec![-1.0; t_n * k_n * a_n * m_n],
    };
    let Some(&max_det_last) = ev.max_dets.last() else {
        return ev;
    };

    let img_index: HashMap<i64, u32> = ev.img_ids.iter().enumerate().map(|(i, &id)| (id, i as u32)).collect();
    let cat_index: HashMap<i64, u32> = ev.cat_ids.iter().enumerate().map(|(k, &id)| (id, k as u32)).collect();

    // ---- _prepare(): group GT and detections by (category, image) ----------
    let mut buckets: HashMap<(u32, u32), Bucket> = HashMap::new();
    {
        // loadAnns(getAnnIds(imgIds, catIds)): walk images in id order and their
        // annotations in file order, filter on the category, then resolve the
        // id through the `anns` dict (last annotation with that id wins).
        let mut anns_by_id: HashMap<i64, usize> = HashMap::with_capacity(gt.annotations.len());
        let mut img_to_anns: HashMap<i64, Vec<usize>> = HashMap::new();
        for (idx, a) in gt.annotations.iter().enumerate() {
            anns_by_id.insert(a.id, idx);
            img_to_anns.entry(a.image_id).or_default().push(idx);
        }
        for img in &ev.img_ids {
            let Some(list) = img_to_anns.get(img) else {
                continue;
            };
            for &idx in list {
                if !cat_index.contains_key(&gt.annotations[idx].category_id) {
                    continue;
                }
                let resolved = anns_by_id[&gt.annotations[idx].id];
                let a = &gt.annotations[resolved];
                if let (Some(&i), Some(&k)) = (img_index.get(&a.image_id), cat_index.get(&a.category_id)) {
                    buckets.entry((k, i)).or_default().gts.push(resolved as u32);
                }
            }
        }
    }
    for (idx, d) in dets.iter().enumerate() {
        if let (Some(&i), Some(&k)) = (img_index.get(&d.image_id), cat_index.get(&d.category_id)) {
            buckets.entry((k, i)).or_default().dts.push(idx as u32);
        }
    }
    let mut keys: Vec<(u32, u32)> = buckets.keys().copied().collect();
    keys.sort_unstable();

    // Per-GT data in evaluation form.
    let gt_info: Vec<GtInfo> = gt
        .annotations
        .iter()
        .map(|a| GtInfo {
            bbox: a.bbox,
            area: a.effective_area(),
            // gt['ignore'] = 'iscrowd' in gt and gt['iscrowd']; int(o['iscrowd'])
            crowd: a.iscrowd != 0,
            id_nonzero: a.id != 0,
        })
        .collect();

    let ctx = Ctx { params, gts: &gt_info, dets, max_det: max_det_last };
    let mut cat_eval = CatEval::default();
    let mut scratch = Scratch::default();
    let mut start = 0;
    while start < keys.len() {
        let k = keys[start].0;
        let mut end = start;
        cat_eval.clear(a_n);
        while end < keys.len() && keys[end].0 == k {
            let b = &buckets[&keys[end]];
            ctx.evaluate_img(&b.gts, &b.dts, &mut cat_eval, &mut scratch);
            end += 1;
        }
        ev.accumulate_category(k as usize, &cat_eval, &mut scratch);
        start = end;
    }
    ev
}

#[derive(Default)]
struct Bucket {
    gts: Vec<u32>,
    dts: Vec<u32>,
}

struct GtInfo {
    bbox: [f64; 4],
    area: f64,
    crowd: bool,
    id_nonzero: bool,
}

/// evalImgs of one category, concatenated over images (in image-id order).
#[derive(Default)]
struct CatEval {
    /// Per detection: score, rank within its image (after score sort).
    scores: Vec<f64>,
    ranks: Vec<u32>,
    /// Per detection, per area range, per IoU threshold: FP / TP / IGNORED.
    status: Vec<u8>,
    /// Number of non-ignored GT per area range.
    npig: Vec<usize>,
}

impl CatEval {
    fn clear(&mut self, a_n: usize) {
        self.scores.clear();
        self.ranks.clear();
        self.status.clear();
        self.npig.clear();
        self.npig.resize(a_n, 0);
    }
}

#[derive(Default)]
struct Scratch {
    dt: Vec<u32>,
    ious: Vec<f64>,
    gt_ig: Vec<bool>,
    gt_order: Vec<usize>,
    gt_matched: Vec<bool>,
    order: Vec<u32>,
    sel: Vec<u32>,
    rc: Vec<f64>,
    pr: Vec<f64>,
}

struct Ctx<'a> {
    params: &'a Params,
    gts: &'a [GtInfo],
    dets: &'a [Detection],
    max_det: usize,
}

/// Ordering of `np.argsort(-scores, kind='mergesort')` (used with a stable
/// sort): higher score first, NaN last.
fn score_desc(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
    }
}

/// `maskUtils.iou` for boxes (maskApi.c `bbIou`). C `fmin`/`fmax` ignore a
/// NaN operand, like Rust's `f64::min`/`max`.
#[inline]
fn bb_iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let ga = g[2] * g[3];
    let da = d[2] * d[3];
    let w = (d[2] + d[0]).min(g[2] + g[0]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[3] + d[1]).min(g[3] + g[1]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    let u = if crowd { da } else { da + ga - i };
    i / u
}

impl Ctx<'_> {
    /// pycocotools `computeIoU` + `evaluateImg` for one (image, category),
    /// for every area range at once; appends to `out`.
    fn evaluate_img(&self, gts: &[u32], dts: &[u32], out: &mut CatEval, s: &mut Scratch) {
        let p = self.params;
        let t_n = p.iou_thrs.len();
        let a_n = p.area_rng.len();

        // sort dt highest score first (stable), keep maxDets[-1]
        s.dt.clear();
        s.dt.extend_from_slice(dts);
        s.dt.sort_by(|&x, &y| score_desc(self.dets[x as usize].score, self.dets[y as usize].score));
        s.dt.truncate(self.max_det);
        let d_n = s.dt.len();
        let g_n = gts.len();

        // IoU matrix [d][g] in original GT order
        let have_ious = d_n > 0 && g_n > 0;
        s.ious.clear();
        if have_ious {
            for &di in &s.dt {
                let db = &self.dets[di as usize].bbox;
                for &gi in gts {
                    let g = &self.gts[gi as usize];
                    s.ious.push(bb_iou(db, &g.bbox, g.crowd));
                }
            }
        }

        let base = out.scores.len();
        for (rank, &di) in s.dt.iter().enumerate() {
            out.scores.push(self.dets[di as usize].score);
            out.ranks.push(rank as u32);
        }
        out.status.resize((base + d_n) * a_n * t_n, FP);

        for (a, rng) in p.area_rng.iter().enumerate() {
            let (lo, hi) = (rng[0], rng[1]);
            // _ignore flags, then gt sorted with ignored ones last (stable)
            s.gt_ig.clear();
            s.gt_ig.extend(gts.iter().map(|&gi| {
                let g = &self.gts[gi as usize];
                g.crowd || g.area < lo || g.area > hi
            }));
            s.gt_order.clear();
            s.gt_order.extend((0..g_n).filter(|&j| !s.gt_ig[j]));
            out.npig[a] += s.gt_order.len();
            s.gt_order.extend((0..g_n).filter(|&j| s.gt_ig[j]));

            for (t, &thr) in p.iou_thrs.iter().enumerate() {
                s.gt_matched.clear();
                s.gt_matched.resize(g_n, false);
                for (dpos, &di) in s.dt.iter().enumerate() {
                    // (dtm != 0, dtIg) for this detection
                    let mut matched_nonzero = false;
                    let mut dt_ig = false;
                    if have_ious {
                        let limit = 1.0 - 1e-10;
                        let mut iou = if limit < thr { limit } else { thr }; // min([t, 1-1e-10])
                        let mut m: Option<usize> = None;
                        let row = &s.ious[dpos * g_n..(dpos + 1) * g_n];
                        for (gind, &gj) in s.gt_order.iter().enumerate() {
                            // already matched and not a crowd
                            if s.gt_matched[gind] && !self.gts[gts[gj] as usize].crowd {
                                continue;
                            }
                            // matched to a regular gt and reached the ignored ones
                            if let Some(mm) = m {
                                if !s.gt_ig[s.gt_order[mm]] && s.gt_ig[gj] {
                                    break;
                                }
                            }
                            if row[gj] < iou {
                                continue;
                            }
                            iou = row[gj];
                            m = Some(gind);
                        }
                        if let Some(mm) = m {
                            let gj = s.gt_order[mm];
                            dt_ig = s.gt_ig[gj];
                            matched_nonzero = self.gts[gts[gj] as usize].id_nonzero;
                            s.gt_matched[mm] = true;
                        }
                    }
                    // unmatched detections outside the area range are ignored
                    if !matched_nonzero {
                        let da = self.dets[di as usize].area();
                        if da < lo || da > hi {
                            dt_ig = true;
                        }
                    }
                    let code = if dt_ig {
                        IGNORED
                    } else if matched_nonzero {
                        TP
                    } else {
                        FP
                    };
                    out.status[((base + dpos) * a_n + a) * t_n + t] = code;
                }
            }
        }
    }
}

impl Evaluation {
    #[inline]
    fn p_idx(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> usize {
        let (rn, kn, an, mn) = (self.rec_thrs.len(), self.cat_ids.len(), self.area_rng.len(), self.max_dets.len());
        (((t * rn + r) * kn + k) * an + a) * mn + m
    }

    #[inline]
    fn r_idx(&self, t: usize, k: usize, a: usize, m: usize) -> usize {
        let (kn, an, mn) = (self.cat_ids.len(), self.area_rng.len(), self.max_dets.len());
        ((t * kn + k) * an + a) * mn + m
    }

    /// `precision[t, r, k, a, m]`, or `None` if an index is out of range.
    pub fn precision(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> Option<f64> {
        if t < self.iou_thrs.len()
            && r < self.rec_thrs.len()
            && k < self.cat_ids.len()
            && a < self.area_rng.len()
            && m < self.max_dets.len()
        {
            Some(self.precision[self.p_idx(t, r, k, a, m)])
        } else {
            None
        }
    }

    /// `recall[t, k, a, m]`, or `None` if an index is out of range.
    pub fn recall(&self, t: usize, k: usize, a: usize, m: usize) -> Option<f64> {
        if t < self.iou_thrs.len() && k < self.cat_ids.len() && a < self.area_rng.len() && m < self.max_dets.len() {
            Some(self.recall[self.r_idx(t, k, a, m)])
        } else {
            None
        }
    }

    /// pycocotools `accumulate()` for one category.
    fn accumulate_category(&mut self, k: usize, ce: &CatEval, s: &mut Scratch) {
        let t_n = self.iou_thrs.len();
        let a_n = self.area_rng.len();
        let n = ce.scores.len();
        // one stable sort serves every maxDet: the subset kept for a smaller
        // maxDet keeps its relative order
        s.order.clear();
        s.order.extend(0..n as u32);
        s.order.sort_by(|&x, &y| score_desc(ce.scores[x as usize], ce.scores[y as usize]));

        for m in 0..self.max_dets.len() {
            let md = self.max_dets[m];
            s.sel.clear();
            s.sel.extend(s.order.iter().copied().filter(|&j| (ce.ranks[j as usize] as usize) < md));
            let nd = s.sel.len();
            for a in 0..a_n {
                let npig = ce.npig[a];
                if npig == 0 {
                    continue;
                }
                let npig_f = npig as f64;
                for t in 0..t_n {
                    s.rc.clear();
                    s.pr.clear();
                    let (mut tp, mut fp) = (0u64, 0u64);
                    for &j in &s.sel {
                        match ce.status[(j as usize * a_n + a) * t_n + t] {
                            TP => tp += 1,
                            FP => fp += 1,
                            _ => {}
                        }
                        let (tpf, fpf) = (tp as f64, fp as f64);
                        s.rc.push(tpf / npig_f);
                        s.pr.push(tpf / (fpf + tpf + SPACING_1));
                    }
                    let ri = self.r_idx(t, k, a, m);
                    self.recall[ri] = if nd > 0 { s.rc[nd - 1] } else { 0.0 };

                    // make precision monotonically decreasing (from the right)
                    for i in (1..nd).rev() {
                        if s.pr[i] > s.pr[i - 1] {
                            s.pr[i - 1] = s.pr[i];
                        }
                    }
                    // q = zeros; q[ri] = pr[searchsorted(rc, recThrs, 'left')]
                    // until the first out-of-range index (IndexError -> pass)
                    let mut stopped = false;
                    for r in 0..self.rec_thrs.len() {
                        let mut q = 0.0;
                        if !stopped {
                            let thr = self.rec_thrs[r];
                            let pi = s.rc.partition_point(|&x| x < thr);
                            if pi < nd {
                                q = s.pr[pi];
                            } else {
                                stopped = true;
                            }
                        }
                        let idx = self.p_idx(t, r, k, a, m);
                        self.precision[idx] = q;
                    }
                }
            }
        }
    }

    /// pycocotools `summarize()` for bbox: the 12 stats plus per-category AP.
    pub fn summarize(&self) -> Summary {
        let md = |i: usize| self.max_dets.get(i).copied();
        let specs: [(bool, Option<f64>, &str, Option<usize>); 12] = [
            (true, None, "all", Some(100)),
            (true, Some(0.5), "all", md(2)),
            (true, Some(0.75), "all", md(2)),
            (true, None, "small", md(2)),
            (true, None, "medium", md(2)),
            (true, None, "large", md(2)),
            (false, None, "all", md(0)),
            (false, None, "all", md(1)),
            (false, None, "all", md(2)),
            (false, None, "small", md(2)),
            (false, None, "medium", md(2)),
            (false, None, "large", md(2)),
        ];
        let mut stats = [-1.0; 12];
        for (st, &(ap, iou, area, max_det)) in stats.iter_mut().zip(specs.iter()) {
            *st = match max_det {
                Some(max_det) => self.summarize_one(ap, iou, area, max_det),
                None => -1.0,
            };
        }

        let a_all = self.area_rng_lbl.iter().position(|l| l == "all");
        let m100 = self.max_dets.iter().position(|&m| m == 100);
        let per_category = self
            .cat_ids
            .iter()
            .enumerate()
            .map(|(k, &id)| {
                let ap = match (a_all, m100) {
                    (Some(a), Some(m)) => {
                        let mut vals = Vec::with_capacity(self.iou_thrs.len() * self.rec_thrs.len());
                        for t in 0..self.iou_thrs.len() {
                            for r in 0..self.rec_thrs.len() {
                                let v = self.precision[self.p_idx(t, r, k, a, m)];
                                if v > -1.0 {
                                    vals.push(v);
                                }
                            }
                        }
                        numpy_mean(&vals)
                    }
                    _ => -1.0,
                };
                CategoryAp { category_id: id, name: self.cat_names[k].clone(), ap }
            })
            .collect();

        Summary {
            stats,
            per_category,
            iou_range: (
                self.iou_thrs.first().copied().unwrap_or(f64::NAN),
                self.iou_thrs.last().copied().unwrap_or(f64::NAN),
            ),
            max_dets: [md(0).unwrap_or(1), md(1).unwrap_or(10), md(2).unwrap_or(100)],
        }
    }

    /// `_summarize(ap, iouThr, areaRng, maxDets)`: mean of the selected
    /// entries that are > -1, or -1 if there are none.
    fn summarize_one(&self, ap: bool, iou: Option<f64>, area: &str, max_det: usize) -> f64 {
        let aind: Vec<usize> = (0..self.area_rng_lbl.len()).filter(|&i| self.area_rng_lbl[i] == area).collect();
        let mind: Vec<usize> = (0..self.max_dets.len()).filter(|&i| self.max_dets[i] == max_det).collect();
        // s[..., aind, mind]: the two index lists broadcast together
        let pairs: Vec<(usize, usize)> = if aind.len() == mind.len() {
            aind.iter().copied().zip(mind.iter().copied()).collect()
        } else if aind.len() == 1 {
            mind.iter().map(|&m| (aind[0], m)).collect()
        } else if mind.len() == 1 {
            aind.iter().map(|&a| (a, mind[0])).collect()
        } else {
            Vec::new()
        };
        let tind: Vec<usize> = match iou {
            None => (0..self.iou_thrs.len()).collect(),
            Some(thr) => (0..self.iou_thrs.len()).filter(|&t| self.iou_thrs[t] == thr).collect(),
        };
        let mut vals = Vec::new();
        for &t in &tind {
            if ap {
                for r in 0..self.rec_thrs.len() {
                    for k in 0..self.cat_ids.len() {
                        for &(a, m) in &pairs {
                            vals.push(self.precision[self.p_idx(t, r, k, a, m)]);
                        }
                    }
                }
            } else {
                for k in 0..self.cat_ids.len() {
                    for &(a, m) in &pairs {
                        vals.push(self.recall[self.r_idx(t, k, a, m)]);
                    }
                }
            }
        }
        vals.retain(|&v| v > -1.0);
        numpy_mean(&vals)
    }
}

/// `np.mean` of a 1-D float64 array (numpy's pairwise summation), or -1 when
/// empty (pycocotools' `mean_s = -1`).
fn numpy_mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        -1.0
    } else {
        pairwise_sum(v) / v.len() as f64
    }
}

/// numpy's `pairwise_sum` for doubles (blocks of 128, 8 accumulators).
fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

impl Summary {
    /// AP @ IoU .50:.95, all areas, maxDets 100.
    pub fn ap(&self) -> f64 {
        self.stats[0]
    }
    /// AP @ IoU .50.
    pub fn ap50(&self) -> f64 {
        self.stats[1]
    }
    /// AP @ IoU .75.
    pub fn ap75(&self) -> f64 {
        self.stats[2]
    }
    /// AP for small objects (area < 32²).
    pub fn ap_small(&self) -> f64 {
        self.stats[3]
    }
    /// AP for medium objects (32² ≤ area ≤ 96²).
    pub fn ap_medium(&self) -> f64 {
        self.stats[4]
    }
    /// AP for large objects (area > 96²).
    pub fn ap_large(&self) -> f64 {
        self.stats[5]
    }
    /// AR with 1 detection per image.
    pub fn ar1(&self) -> f64 {
        self.stats[6]
    }
    /// AR with 10 detections per image.
    pub fn ar10(&self) -> f64 {
        self.stats[7]
    }
    /// AR with 100 detections per image.
    pub fn ar100(&self) -> f64 {
        self.stats[8]
    }
    /// AR for small objects.
    pub fn ar_small(&self) -> f64 {
        self.stats[9]
    }
    /// AR for medium objects.
    pub fn ar_medium(&self) -> f64 {
        self.stats[10]
    }
    /// AR for large objects.
    pub fn ar_large(&self) -> f64 {
        self.stats[11]
    }

    /// The 12 summary lines exactly as pycocotools' `summarize()` prints them,
    /// each terminated by `\n`, e.g.
    /// ` Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.532`.
    pub fn format_table(&self) -> String {
        let iou_all = format!("{:.2}:{:.2}", self.iou_range.0, self.iou_range.1);
        let md = self.max_dets;
        let specs: [(bool, &str, &str, usize); 12] = [
            (true, &iou_all, "all", 100),
            (true, "0.50", "all", md[2]),
            (true, "0.75", "all", md[2]),
            (true, &iou_all, "small", md[2]),
            (true, &iou_all, "medium", md[2]),
            (true, &iou_all, "large", md[2]),
            (false, &iou_all, "all", md[0]),
            (false, &iou_all, "all", md[1]),
            (false, &iou_all, "all", md[2]),
            (false, &iou_all, "small", md[2]),
            (false, &iou_all, "medium", md[2]),
            (false, &iou_all, "large", md[2]),
        ];
        let mut out = String::new();
        for (&(ap, iou, area, max_det), &v) in specs.iter().zip(self.stats.iter()) {
            let (title, ty) = if ap { ("Average Precision", "(AP)") } else { ("Average Recall", "(AR)") };
            // ' {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}'
            out.push_str(&format!(
                " {title:<18} {ty} @[ IoU={iou:<9} | area={area:>6} | maxDets={max_det:>3} ] = {v:.3}\n"
            ));
        }
        out
    }

    /// A per-category AP table (`id  name  AP`), one line per category,
    /// AP printed with 3 decimals (-1.000 when undefined).
    pub fn format_per_category(&self) -> String {
        let width = self.per_category.iter().map(|c| c.name.chars().count()).max().unwrap_or(0).max(8);
        let mut out = format!("{:>6}  {:<width$}  {:>6}\n", "id", "category", "AP");
        for c in &self.per_category {
            out.push_str(&format!("{:>6}  {:<width$}  {:>6.3}\n", c.category_id, c.name, c.ap));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_iou_plain_and_crowd() {
        let g = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(bb_iou(&[5.0, 0.0, 10.0, 10.0], &g, false), 50.0 / 150.0);
        // crowd: intersection over detection area
        assert_eq!(bb_iou(&[5.0, 0.0, 10.0, 10.0], &g, true), 0.5);
        assert_eq!(bb_iou(&[2.0, 2.0, 2.0, 2.0], &g, true), 1.0);
        // touching edges and zero-size boxes do not overlap
        assert_eq!(bb_iou(&[10.0, 0.0, 5.0, 5.0], &g, false), 0.0);
        assert_eq!(bb_iou(&[1.0, 1.0, 0.0, 5.0], &g, false), 0.0);
    }

    #[test]
    fn score_order_is_descending_stable_nan_last() {
        let scores = [0.5, f64::NAN, 0.9, 0.5, -0.0, 0.0];
        let mut idx: Vec<usize> = (0..scores.len()).collect();
        idx.sort_by(|&a, &b| score_desc(scores[a], scores[b]));
        assert_eq!(idx, vec![2, 0, 3, 4, 5, 1]);
    }

    #[test]
    fn numpy_mean_uses_pairwise_summation() {
        assert_eq!(numpy_mean(&[]), -1.0);
        assert_eq!(numpy_mean(&[0.25, 0.75]), 0.5);
        // np.mean(np.full(1000, 0.1)) == 0.10000000000000002, whereas naive
        // left-to-right summation gives 0.09999999999999859
        let v = vec![0.1; 1000];
        assert_eq!(v.iter().sum::<f64>() / 1000.0, 0.09999999999999859);
        assert_eq!(numpy_mean(&v), 0.10000000000000002);
    }
}
