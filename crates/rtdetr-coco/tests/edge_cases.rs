//! Edge behaviours: malformed input is an error (never a panic), undefined
//! metrics are -1, hand-computed matching cases, results round-trip.

use rtdetr_coco::{
    evaluate, load_results, parse_results, results_to_json_string, validate_results, write_results, write_results_to,
    Annotation, Category, CocoDataset, CocoError, Detection, Image, Params,
};

/// Precision carries pycocotools' `tp / (tp + fp + spacing(1))`, so a perfect
/// AP is 0.9999999999999998: compare metrics with a tight tolerance.
#[track_caller]
fn close(got: f64, want: f64) {
    assert!((got - want).abs() < 1e-12, "got {got}, want {want}");
}

fn gt(anns: Vec<Annotation>) -> CocoDataset {
    CocoDataset {
        images: vec![Image { id: 1, ..Default::default() }, Image { id: 2, ..Default::default() }],
        annotations: anns,
        categories: vec![
            Category { id: 1, name: "person".into(), supercategory: None },
            Category { id: 2, name: "car".into(), supercategory: None },
        ],
    }
}

fn ann(id: i64, image_id: i64, category_id: i64, bbox: [f64; 4]) -> Annotation {
    Annotation { id, image_id, category_id, bbox, area: Some(bbox[2] * bbox[3]), iscrowd: 0, ignore: None }
}

fn det(image_id: i64, category_id: i64, bbox: [f64; 4], score: f64) -> Detection {
    Detection { image_id, category_id, bbox, score }
}

#[test]
fn malformed_annotation_files_are_errors() {
    let bad: &[&str] = &[
        "",
        "{",
        "not json",
        "[]",
        r#"{"images": []}"#,
        r#"{"images": [{"id": "one"}], "categories": []}"#,
        r#"{"images": [{"id": 1}], "categories": [{"id": 1}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}]}"#,
        r#"{"images": [{"id": 1}], "categories": [{"id": 1}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4],
                             "iscrowd": 0.5}]}"#,
        r#"{"images": [{"id": 1}], "categories": [{"id": 1}],
            "annotations": [{"id": 1, "image_id": 1, "bbox": [1, 2, 3, 4]}]}"#,
        r#"{"images": [{"id": 1}], "categories": [{"id": 1}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4e999]}]}"#,
    ];
    for text in bad {
        let err = CocoDataset::from_json_str(text).expect_err(text);
        assert!(matches!(err, CocoError::Json { .. }), "{text}: {err}");
        assert!(err.to_string().starts_with("invalid COCO annotation file"), "{err}");
    }
}

#[test]
fn minimal_annotation_file_defaults() {
    let gt = CocoDataset::from_json_str(
        r#"{"info": {}, "licenses": [], "images": [{"id": 3, "width": 640, "height": 480}],
            "categories": [{"id": 1, "name": "a"}],
            "annotations": [
              {"id": 1, "image_id": 3, "category_id": 1, "bbox": [0, 0, 10, 20],
               "segmentation": [[0, 0, 1, 1]]},
              {"id": 2, "image_id": 3, "category_id": 1, "bbox": [0, 0, 10, 20], "area": 5,
               "iscrowd": true, "ignore": 1}
            ]}"#,
    )
    .unwrap();
    assert_eq!(gt.annotations[0].effective_area(), 200.0);
    assert_eq!(gt.annotations[0].iscrowd, 0);
    assert_eq!(gt.annotations[1].effective_area(), 5.0);
    assert_eq!(gt.annotations[1].iscrowd, 1);
    assert_eq!(gt.annotations[1].ignore, Some(1));
    let no_anns = CocoDataset::from_json_str(r#"{"images": [], "categories": []}"#).unwrap();
    assert!(no_anns.annotations.is_empty());
}

#[test]
fn malformed_results_are_errors() {
    let bad: &[&str] = &[
        "",
        "[",
        r#"{"image_id": 1}"#,
        r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]"#,
        r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}]"#,
        r#"[{"image_id": 1, "category_id": 1, "bbox": [], "score": 0.5}]"#,
        r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": "high"}]"#,
        r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": NaN}]"#,
        r#"[null]"#,
    ];
    for text in bad {
        let err = parse_results(text.as_bytes()).expect_err(text);
        assert!(err.to_string().starts_with("invalid COCO results file"), "{err}");
    }
    assert!(parse_results(b"[]").unwrap().is_empty());
    let extra = parse_results(
        br#"[{"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 1, "id": 9,
              "segmentation": [], "area": 12}]"#,
    )
    .unwrap();
    assert_eq!(extra, vec![det(1, 2, [1.0, 2.0, 3.0, 4.0], 1.0)]);
}

#[test]
fn missing_files_are_io_errors() {
    let err = CocoDataset::from_path("/nonexistent/annotations.json").unwrap_err();
    assert!(matches!(err, CocoError::Io { .. }), "{err}");
    let err = load_results("/nonexistent/results.json").unwrap_err();
    assert!(matches!(err, CocoError::Io { .. }), "{err}");
}

#[test]
fn unknown_image_ids_fail_validation_but_do_not_change_metrics() {
    let g = gt(vec![ann(1, 1, 1, [0.0, 0.0, 50.0, 50.0])]);
    let good = vec![det(1, 1, [0.0, 0.0, 50.0, 50.0], 0.9)];
    let mut with_stray = good.clone();
    with_stray.push(det(77, 1, [0.0, 0.0, 50.0, 50.0], 0.95));
    assert!(validate_results(&g, &good).is_ok());
    match validate_results(&g, &with_stray) {
        Err(CocoError::UnknownImage { index: 1, image_id: 77 }) => {}
        other => panic!("{other:?}"),
    }
    let p = Params::default();
    assert_eq!(evaluate(&g, &good, &p), evaluate(&g, &with_stray, &p));
}

#[test]
fn single_match_hand_computed() {
    // IoU = 0.72: a match at thresholds .50 .. .70 (5 of 10)
    let g = gt(vec![ann(1, 1, 1, [0.0, 0.0, 100.0, 100.0])]);
    let d = vec![det(1, 1, [0.0, 0.0, 100.0, 72.0], 0.9)];
    let s = evaluate(&g, &d, &Params::default());
    close(s.ap(), 0.5);
    close(s.ap50(), 1.0);
    close(s.ap75(), 0.0);
    close(s.ap_small(), -1.0);
    close(s.ap_medium(), -1.0);
    close(s.ap_large(), 0.5);
    close(s.ar1(), 0.5);
    close(s.ar_large(), 0.5);
    // category 2 has no GT: -1 in the per-category table
    assert_eq!(s.per_category.len(), 2);
    close(s.per_category[0].ap, 0.5);
    assert_eq!(s.per_category[0].name, "person");
    close(s.per_category[1].ap, -1.0);
}

#[test]
fn no_gt_in_an_area_range_gives_minus_one() {
    // only a small object: medium and large are undefined
    let g = gt(vec![ann(1, 1, 1, [5.0, 5.0, 10.0, 10.0])]);
    let d = vec![
        det(1, 1, [5.0, 5.0, 10.0, 10.0], 0.9),
        det(2, 1, [0.0, 0.0, 200.0, 200.0], 0.95), // unmatched large FP
    ];
    let s = evaluate(&g, &d, &Params::default());
    close(s.ap_medium(), -1.0);
    close(s.ap_large(), -1.0);
    close(s.ar_medium(), -1.0);
    close(s.ar_large(), -1.0);
    close(s.ap_small(), 1.0); // the large FP is ignored in the small range
    assert!(s.ap() < 1.0 && s.ap() > 0.0); // but counts in "all"
    close(s.ar100(), 1.0);
    let table = s.format_table();
    assert!(table.contains(" Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = -1.000\n"));
}

#[test]
fn everything_undefined_without_gt_and_zero_without_dets() {
    let g = gt(vec![]);
    let d = vec![det(1, 1, [0.0, 0.0, 10.0, 10.0], 0.5)];
    let s = evaluate(&g, &d, &Params::default());
    assert_eq!(s.stats, [-1.0; 12]);

    let g = gt(vec![ann(1, 1, 1, [0.0, 0.0, 50.0, 50.0])]);
    let s = evaluate(&g, &[], &Params::default());
    close(s.ap(), 0.0);
    close(s.ar100(), 0.0);
    close(s.ap_large(), -1.0);

    let empty = CocoDataset::default();
    assert_eq!(evaluate(&empty, &d, &Params::default()).stats, [-1.0; 12]);
}

#[test]
fn crowd_gt_absorbs_detections_without_penalty() {
    let mut crowd = ann(1, 1, 1, [0.0, 0.0, 200.0, 200.0]);
    crowd.iscrowd = 1;
    let g = gt(vec![crowd, ann(2, 1, 1, [300.0, 300.0, 50.0, 50.0])]);
    // inside the crowd: intersection / det area = 1, so they are ignored
    let d = vec![
        det(1, 1, [10.0, 10.0, 20.0, 20.0], 0.99),
        det(1, 1, [50.0, 50.0, 20.0, 20.0], 0.98),
        det(1, 1, [300.0, 300.0, 50.0, 50.0], 0.5),
    ];
    let s = evaluate(&g, &d, &Params::default());
    close(s.ap(), 1.0);
    close(s.ar1(), 0.0); // the top-scored detection per image is a crowd hit
    close(s.ar10(), 1.0);
}

#[test]
fn duplicates_are_false_positives_and_ties_keep_input_order() {
    let g = gt(vec![ann(1, 1, 1, [0.0, 0.0, 50.0, 50.0])]);
    // same score: the first listed (worse box) is matched first
    let d = vec![
        det(1, 1, [0.0, 0.0, 50.0, 30.0], 0.5), // IoU .6
        det(1, 1, [0.0, 0.0, 50.0, 50.0], 0.5), // IoU 1
    ];
    let s = evaluate(&g, &d, &Params::default());
    // t <= .60: first det TP, AP 1; t > .60: second det TP after one FP -> AP .5
    // (precision 0.5 at every recall threshold)
    let want = (3.0 * 1.0 + 7.0 * 0.5) / 10.0;
    assert!((s.ap() - want).abs() < 1e-12, "{}", s.ap());
}

#[test]
fn restricting_categories_and_images() {
    let g = gt(vec![ann(1, 1, 1, [0.0, 0.0, 50.0, 50.0]), ann(2, 2, 2, [0.0, 0.0, 50.0, 50.0])]);
    let d = vec![det(1, 1, [0.0, 0.0, 50.0, 50.0], 0.9)];
    let all = evaluate(&g, &d, &Params::default());
    close(all.ap(), 0.5);
    let only_1 = evaluate(&g, &d, &Params::default().with_cat_ids(vec![1]));
    close(only_1.ap(), 1.0);
    assert_eq!(only_1.per_category.len(), 1);
    let only_img2 = evaluate(&g, &d, &Params::default().with_img_ids(vec![2]));
    close(only_img2.ap(), 0.0);
}

#[test]
fn odd_params_do_not_panic() {
    let g = gt(vec![ann(1, 1, 1, [0.0, 0.0, 50.0, 50.0])]);
    let d = vec![det(1, 1, [0.0, 0.0, 50.0, 50.0], 0.9)];
    let mut p = Params::default();
    p.max_dets.clear();
    assert_eq!(evaluate(&g, &d, &p).stats, [-1.0; 12]);
    let p = Params {
        max_dets: vec![5],
        iou_thrs: vec![0.3],
        rec_thrs: vec![],
        area_rng_lbl: vec!["x".into()],
        ..Default::default()
    };
    let s = evaluate(&g, &d, &p);
    assert_eq!(s.stats, [-1.0; 12]);
    let _ = s.format_table();
    let mut p = Params::default();
    p.area_rng.clear();
    p.area_rng_lbl.clear();
    assert_eq!(evaluate(&g, &d, &p).stats, [-1.0; 12]);
    // non-finite detections built in code are tolerated by evaluate
    let d = vec![det(1, 1, [f64::NAN, 0.0, 50.0, 50.0], f64::NAN), det(1, 1, [0.0; 4], f64::INFINITY)];
    let _ = evaluate(&g, &d, &Params::default());
}

#[test]
fn results_round_trip() {
    let dets = vec![det(1, 1, [0.1, 0.2, 30.25, 1e-3], 0.123456789012345), det(2, 18, [-4.0, 5.5, 640.0, 480.0], 1.0)];
    let text = results_to_json_string(&dets).unwrap();
    assert_eq!(parse_results(text.as_bytes()).unwrap(), dets);

    let path = std::env::temp_dir().join(format!("rtdetr_coco_results_{}.json", std::process::id()));
    write_results(&path, &dets).unwrap();
    assert_eq!(load_results(&path).unwrap(), dets);
    std::fs::remove_file(&path).ok();

    let mut buf = Vec::new();
    write_results_to(&mut buf, &dets).unwrap();
    assert_eq!(String::from_utf8(buf).unwrap(), text);

    let bad = vec![det(1, 1, [0.0, 0.0, 1.0, 1.0], f64::NAN)];
    assert!(matches!(results_to_json_string(&bad), Err(CocoError::NonFinite { index: 0, field: "score" })));
    let bad = vec![dets[0], det(1, 1, [0.0, f64::INFINITY, 1.0, 1.0], 0.5)];
    let mut buf = Vec::new();
    assert!(matches!(write_results_to(&mut buf, &bad), Err(CocoError::NonFinite { index: 1, field: "bbox" })));
    assert!(buf.is_empty());
}

#[test]
fn table_format_matches_pycocotools_layout() {
    let g = gt(vec![ann(1, 1, 1, [0.0, 0.0, 100.0, 100.0])]);
    let d = vec![det(1, 1, [0.0, 0.0, 100.0, 72.0], 0.9)];
    let table = evaluate(&g, &d, &Params::default()).format_table();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 12);
    assert_eq!(lines[0], " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.500");
    assert_eq!(lines[1], " Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 1.000");
    assert_eq!(lines[3], " Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ] = -1.000");
    assert_eq!(lines[4], " Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ] = -1.000");
    assert_eq!(lines[6], " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ] = 0.500");
    assert_eq!(lines[7], " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ] = 0.500");
}
