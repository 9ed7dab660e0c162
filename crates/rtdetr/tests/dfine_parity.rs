//! D-FINE's own stages in isolation: parity with transformers' `DFineForObjectDetection` on
//! the fixtures written by `tools/gen_fixtures.py` (`tiny-dfine-n`: the nano shape, two
//! levels, learnable affine blocks, Hub key names; `tiny-dfine`: three levels, no affine
//! blocks, 16 bins, transformers 5 key names; `tiny-dfine-discrete`: discrete sampling,
//! points [5, 2]). The whole network (query selection, every
//! decoder layer, detections from image files) is checked with the other architectures in
//! `parity.rs`.

use std::collections::HashMap;
mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::{fixture_dir, max_abs_diff};
use rtdetr::dfine_internals::{DFineEncoder, HgNetV2, Weights};
use rtdetr::io::config::{DFineConfig, ModelConfig};

const TOL: f32 = 1e-4;
const FIXTURES: [&str; 3] = ["tiny-dfine-n", "tiny-dfine", "tiny-dfine-discrete"];

fn reference(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).expect("reference tensors")
}

fn config(dir: &Path) -> DFineConfig {
    match ModelConfig::from_file(&dir.join("config.json")).unwrap() {
        ModelConfig::DFine(c) => *c,
        other => panic!("{}: expected a D-FINE config, got {other:?}", dir.display()),
    }
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let d = max_abs_diff(got, want);
    let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    eprintln!("{what}: max abs diff {d:.1e} (reference max {scale:.2})");
    assert!(d <= tol, "{what}: max abs diff {d:e} > {tol:e}");
}

#[test]
fn configs_parse_with_their_shapes() {
    let n = config(&fixture_dir("tiny-dfine-n"));
    assert_eq!(n.points_per_level(), vec![6, 6]);
    assert_eq!(n.backbone().out_stage_indices().unwrap(), vec![3, 4]);
    assert!(n.backbone().use_learnable_affine_block);
    assert_eq!((n.csp_blocks(), n.elan_branch_dim(), n.eval_layer()), (2, 3, 2));
    assert_eq!(n.labels().len(), 5);
    let l = config(&fixture_dir("tiny-dfine"));
    assert_eq!(l.points_per_level(), vec![3, 6, 3]);
    assert_eq!(l.backbone().out_stage_indices().unwrap(), vec![2, 3, 4]);
    assert!(!l.backbone().use_learnable_affine_block);
    assert_eq!((l.csp_blocks(), l.elan_branch_dim(), l.max_num_bins), (2, 4, 16));
    let d = config(&fixture_dir("tiny-dfine-discrete"));
    assert_eq!((d.decoder_method.as_str(), d.points_per_level()), ("discrete", vec![5, 2]));
}

/// The HGNetV2 backbone's feature maps equal transformers' (`DFineConvEncoder`, frozen
/// BatchNorm) on the fixture's random input, alone and in a batch.
#[test]
fn backbone_matches_reference() {
    for name in FIXTURES {
        let dir = fixture_dir(name);
        let cfg = config(&dir);
        let w = Weights::from_dir(&dir, &Device::Cpu).unwrap();
        let backbone = HgNetV2::load(&w, &cfg.backbone(), "model.backbone.model").unwrap();
        let r = reference(&dir);
        let px = &r["random.pixel_values"];
        let maps = backbone.forward(px).unwrap();
        assert_eq!(maps.len(), cfg.encoder_in_channels.len(), "{name}: feature maps");
        for (i, m) in maps.iter().enumerate() {
            assert_eq!(m.dim(1).unwrap(), backbone.out_channels()[i], "{name}: channels of map {i}");
            assert_close(&format!("{name} backbone.{i}"), m, &r[&format!("random.backbone.{i}")], TOL);
        }
        // A batch of two images (the random input and a test photo): the first image's
        // maps are unchanged, the second's equal its own run.
        let photo = &r["images.photo.png.pixel_values"];
        let batch = Tensor::cat(&[px, photo], 0).unwrap();
        let alone = backbone.forward(photo).unwrap();
        for (i, m) in backbone.forward(&batch).unwrap().iter().enumerate() {
            assert_close(&format!("{name} batch backbone.{i}"), &m.get(0).unwrap(), &maps[i].get(0).unwrap(), 0.0);
            assert_close(
                &format!("{name} batch backbone.{i} image 1"),
                &m.get(1).unwrap(),
                &alone[i].get(0).unwrap(),
                0.0,
            );
        }
    }
}

/// The hybrid encoder (input projections, AIFI, RepNCSPELAN4 FPN/PAN blocks, SCDown)
/// equals transformers' on the backbone's maps of the fixture's random input.
#[test]
fn encoder_matches_reference() {
    for name in FIXTURES {
        let dir = fixture_dir(name);
        let cfg = config(&dir);
        let w = Weights::from_dir(&dir, &Device::Cpu).unwrap();
        let backbone = HgNetV2::load(&w, &cfg.backbone(), "model.backbone.model").unwrap();
        let encoder = DFineEncoder::load(&w, &cfg, backbone.out_channels()).unwrap();
        let r = reference(&dir);
        let maps = encoder.forward(&backbone.forward(&r["random.pixel_values"]).unwrap()).unwrap();
        assert_eq!(maps.len(), cfg.encoder_in_channels.len(), "{name}: encoder maps");
        for (i, m) in maps.iter().enumerate() {
            assert_close(&format!("{name} encoder.{i}"), m, &r[&format!("random.encoder.{i}")], TOL);
        }
    }
}

/// transformers recomputes the decoder's `up`, `reg_scale` and `num_points_scale` from the
/// config where a checkpoint lacks them; so does the engine, with the same outputs.
#[test]
fn missing_decoder_buffers_come_from_the_config() {
    let dir = fixture_dir("tiny-dfine-n");
    let tmp = std::env::temp_dir().join(format!("rtdetr-dfine-buffers-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for f in ["config.json", "preprocessor_config.json"] {
        std::fs::copy(dir.join(f), tmp.join(f)).unwrap();
    }
    let mut tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let before = tensors.len();
    tensors.retain(|k, _| {
        !(k.ends_with(".num_points_scale") || k == "model.decoder.up" || k == "model.decoder.reg_scale")
    });
    assert_eq!(before - tensors.len(), 2 + config(&dir).decoder_layers, "the fixture has the buffers");
    candle_core::safetensors::save(&tensors, tmp.join("model.safetensors")).unwrap();
    let px = &reference(&dir)["random.pixel_values"];
    let run = |d: &Path| {
        let det = rtdetr::Detector::from_dir(d, &rtdetr::LoadOptions::default()).unwrap();
        det.model().forward(px, None, false, &mut rtdetr::StageTimes::default()).unwrap()
    };
    let (with, without) = (run(&dir), run(&tmp));
    std::fs::remove_dir_all(&tmp).unwrap();
    assert_close("logits without buffers", &without.logits, &with.logits, 0.0);
    assert_close("boxes without buffers", &without.boxes, &with.boxes, 0.0);
}
