//! Parity with pycocotools' COCOeval (iouType="bbox") on the committed fixtures.
//!
//! The fixtures and `reference.json` come from `tools/gen_coco_reference.py`
//! (run with pycocotools 2.0.11); regenerate them with
//! `/work/pyenv/bin/python tools/gen_coco_reference.py` when adding cases.

use std::path::PathBuf;

use rtdetr_coco::{evaluate, load_results, validate_results, CocoDataset, Params, STAT_NAMES};
use serde_json::Value;

const TOL: f64 = 1e-6;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("data")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(data_dir().join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference.json is JSON")
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

#[test]
fn default_thresholds_are_bit_identical_to_numpy() {
    let r = reference();
    let p = Params::default();
    assert_eq!(p.iou_thrs, f64s(&r["iou_thrs"]));
    assert_eq!(p.rec_thrs, f64s(&r["rec_thrs"]));
}

#[test]
fn matches_pycocotools_on_every_case() {
    let r = reference();
    let cases = r["cases"].as_array().expect("cases");
    assert!(cases.len() >= 10, "expected the full fixture set");
    let mut failures = Vec::new();
    let mut max_diff = 0.0f64;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let gt = CocoDataset::from_path(data_dir().join(case["gt"].as_str().unwrap()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let dets =
            load_results(data_dir().join(case["dt"].as_str().unwrap())).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(dets.len() as u64, case["num_dt"].as_u64().unwrap(), "{name}");
        validate_results(&gt, &dets).unwrap_or_else(|e| panic!("{name}: {e}"));

        let summary = evaluate(&gt, &dets, &Params::default());

        for (i, want) in f64s(&case["stats"]).into_iter().enumerate() {
            let got = summary.stats[i];
            let diff = (got - want).abs();
            max_diff = max_diff.max(diff);
            if diff.is_nan() || diff > TOL {
                failures.push(format!("{name}: {} = {got}, pycocotools {want}", STAT_NAMES[i]));
            }
        }

        let per_cat = case["per_category"].as_array().unwrap();
        assert_eq!(summary.per_category.len(), per_cat.len(), "{name}: category count");
        for (got, want) in summary.per_category.iter().zip(per_cat) {
            let want_id = want["category_id"].as_i64().unwrap();
            let want_ap = want["ap"].as_f64().unwrap();
            assert_eq!(got.category_id, want_id, "{name}: category order");
            let diff = (got.ap - want_ap).abs();
            max_diff = max_diff.max(diff);
            if diff.is_nan() || diff > TOL {
                failures.push(format!("{name}: category {want_id} AP = {}, pycocotools {want_ap}", got.ap));
            }
        }

        let want_table: String =
            case["summary_lines"].as_array().unwrap().iter().map(|l| format!("{}\n", l.as_str().unwrap())).collect();
        if summary.format_table() != want_table {
            failures.push(format!(
                "{name}: table differs\n--- rust\n{}--- pycocotools\n{want_table}",
                summary.format_table()
            ));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    eprintln!("{} cases match pycocotools; max |diff| = {max_diff:e}", cases.len());
}
