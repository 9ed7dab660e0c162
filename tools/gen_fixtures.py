#!/usr/bin/env python3
"""Generates the engine's parity fixtures with transformers + torch (dev tool only).

For each fixture model: a checkpoint directory in the exact Hugging Face layout
(config.json, model.safetensors, preprocessor_config.json) with a *healthy* random
init, and `reference.safetensors` holding the reference tensors of every stage for
each test image, plus `detections.json` with post-processed detections.

Random init is ill-conditioned for RT-DETR (encoder scores tie, top-k flips on 1e-6
noise), so the init here is: Kaiming-normal convs, Xavier linears (except the
deformable sampling_offsets / attention_weights), non-trivial BatchNorm statistics and
an encoder score head widened x10. Each fixture is checked to be well conditioned
(a 1e-5 input perturbation moves logits by < 1e-4 and keeps the top-k) before saving.

D-FINE fixtures (`arch="dfine"`) also move the backbone's learnable affine blocks off the
identity, and take each decoder layer's reference by running with `eval_idx` = that layer
(in eval mode D-FINE predicts only at `eval_idx`).

Usage:
  python tools/gen_fixtures.py                       # small fixtures under tests/fixtures
  FIXTURES=tiny-dfine-n,tiny-dfine python tools/gen_fixtures.py   # only those (comma-separated)
  python tools/gen_fixtures.py --full r18vd r50vd    # full-size checkpoints (not in CI)
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from transformers import (
    DFineConfig,
    DFineForObjectDetection,
    HGNetV2Config,
    RTDetrConfig,
    RTDetrForObjectDetection,
    RTDetrResNetConfig,
    RTDetrV2Config,
    RTDetrV2ForObjectDetection,
)
from transformers.image_utils import load_image
from transformers.models.rt_detr.image_processing_pil_rt_detr import RTDetrImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "crates" / "rtdetr" / "tests" / "fixtures"



def healthy_init(model: RTDetrForObjectDetection, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.02)
            elif isinstance(m, torch.nn.Linear):
                if name.endswith("sampling_offsets") or name.endswith("attention_weights"):
                    # Keep transformers' init (zero weight, structured offset bias) but add a
                    # little weight so offsets depend on the query.
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.01)
                    continue
                fan_in, fan_out = m.weight.shape[1], m.weight.shape[0]
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2 - 1) * bound)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
            elif type(m).__name__ == "HGNetV2LearnableAffineBlock":
                # D-FINE's learnable affine blocks start at the identity (scale 1, bias 0):
                # move them so that a missing one shows in the outputs.
                m.scale.copy_(0.8 + torch.rand(1, generator=g) * 0.4)
                m.bias.copy_(torch.randn(1, generator=g) * 0.1)
            elif hasattr(m, "running_mean") and hasattr(m, "running_var"):
                n = m.running_mean.shape[0]
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(n, generator=g) * 1.5)
                m.weight.copy_(0.5 + torch.rand(n, generator=g) * 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
        model.model.enc_score_head.weight.mul_(10.0)
        if isinstance(model, DFineForObjectDetection):
            # Sharper edge distributions, so that each layer's refinement moves the boxes
            # well beyond the test tolerance (a near-uniform distribution integrates to ~0).
            for head in model.model.decoder.bbox_embed:
                head.layers[-1].weight.mul_(4.0)


def synthetic_photo(w, h, seed, mode="RGB"):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack(
        [
            127 + 100 * np.sin(x / (7 + seed) + rng.uniform(0, 6)),
            127 + 100 * np.cos(y / (11 + seed)),
            127 + 90 * np.sin((x + y) / 17.0),
        ],
        -1,
    )
    base += rng.normal(0, 12, base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.integers(0, w - 20), rng.integers(0, h - 20)
        x1, y1 = x0 + rng.integers(10, w // 2), y0 + rng.integers(10, h // 2)
        col = tuple(int(c) for c in rng.integers(0, 255, 3))
        if rng.random() < 0.5:
            d.ellipse([x0, y0, x1, y1], fill=col)
        else:
            d.rectangle([x0, y0, x1, y1], fill=col)
    if mode == "L":
        return img.convert("L")
    if mode == "RGBA":
        a = Image.fromarray(np.clip(x * 255 / w, 0, 255).astype(np.uint8), "L")
        img = img.copy()
        img.putalpha(a)
        return img
    return img


def write_images(dest: Path):
    """The test photos: JPEG (with EXIF orientation 6), PNG, grayscale PNG, RGBA PNG."""
    dest.mkdir(parents=True, exist_ok=True)
    files = {}
    jpg = synthetic_photo(180, 120, 1)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° CW on display
    jpg.save(dest / "photo_exif.jpg", quality=90, exif=exif.tobytes())
    files["photo_exif.jpg"] = None
    synthetic_photo(150, 200, 2).save(dest / "photo.png")
    synthetic_photo(160, 100, 3, "L").save(dest / "gray.png")
    synthetic_photo(120, 130, 4, "RGBA").save(dest / "rgba.png")
    return ["photo_exif.jpg", "photo.png", "gray.png", "rgba.png"]


FIXTURES = {
    # Bottleneck blocks, non-square input, transformers 5 module key names.
    "tiny-bottleneck": dict(
        backbone=dict(layer_type="bottleneck", depths=[1, 1, 2, 1], hidden_sizes=[32, 64, 128, 256], embedding_size=16),
        model=dict(
            encoder_in_channels=[64, 128, 256], encoder_hidden_dim=32, encoder_ffn_dim=64, encoder_attention_heads=4,
            hidden_expansion=1.0, d_model=32, decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64,
            decoder_layers=3, decoder_attention_heads=4, num_queries=40, num_labels=6,
        ),
        size=(96, 128), seed=11, legacy=False,
    ),
    # Basic blocks, hidden_expansion 0.5, square input, Hub (4.x) key names as save_pretrained writes.
    "tiny-basic-legacy": dict(
        backbone=dict(layer_type="basic", depths=[1, 2, 1, 1], hidden_sizes=[16, 32, 64, 128], embedding_size=16),
        model=dict(
            encoder_in_channels=[32, 64, 128], encoder_hidden_dim=32, encoder_ffn_dim=64, encoder_attention_heads=8,
            hidden_expansion=0.5, d_model=32, decoder_in_channels=[32, 32, 32], decoder_ffn_dim=48,
            decoder_layers=2, decoder_attention_heads=8, num_queries=25, num_labels=4,
        ),
        size=(64, 64), seed=12, legacy=True,
    ),
    # RT-DETRv2: bilinear sampling, 3 points per level, offset scale 0.5 (the default).
    "tiny-v2": dict(
        arch="v2",
        backbone=dict(layer_type="bottleneck", depths=[1, 1, 1, 1], hidden_sizes=[32, 64, 128, 256], embedding_size=16),
        model=dict(
            encoder_in_channels=[64, 128, 256], encoder_hidden_dim=32, encoder_ffn_dim=64, encoder_attention_heads=4,
            hidden_expansion=1.0, d_model=32, decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64,
            decoder_layers=3, decoder_attention_heads=4, num_queries=30, num_labels=5,
            decoder_n_points=3, decoder_offset_scale=0.5, decoder_method="default",
        ),
        size=(96, 64), seed=21, legacy=False,
    ),
    # RT-DETRv2 with discrete (nearest cell) sampling and another offset scale, 4.x key names.
    "tiny-v2-discrete": dict(
        arch="v2",
        backbone=dict(layer_type="basic", depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], embedding_size=16),
        model=dict(
            encoder_in_channels=[32, 64, 128], encoder_hidden_dim=32, encoder_ffn_dim=64, encoder_attention_heads=8,
            hidden_expansion=0.5, d_model=32, decoder_in_channels=[32, 32, 32], decoder_ffn_dim=48,
            decoder_layers=2, decoder_attention_heads=8, num_queries=25, num_labels=4,
            decoder_n_points=4, decoder_offset_scale=0.75, decoder_method="discrete",
        ),
        size=(64, 96), seed=22, legacy=True,
    ),
}

# D-FINE (DFineForObjectDetection, HGNetV2 backbone), one head per decoder layer
# (tie_word_embeddings=False, as the Hub's converted checkpoints have).
FIXTURES.update({
    # The nano shape (ustc-community/dfine-nano-coco, transformers' conversion script's
    # dfine_n): two feature levels (strides 16, 32; backbone out_indices [3, 4]), AIFI on
    # level 1, learnable affine blocks, light (depthwise) blocks in stages 3-4, depth_mult
    # 0.5 (two RepVGG blocks per CSP layer), hidden_expansion 0.34 (CSP width
    # round(0.34 * 20 // 2) = 3), decoder_n_points [6, 6], 3 decoder layers; widths scaled
    # down (head dim 5). Hub (4.x) key names as save_pretrained writes.
    "tiny-dfine-n": dict(
        arch="dfine",
        backbone=dict(
            stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 32, 48], stage_mid_channels=[8, 8, 16, 16],
            stage_out_channels=[16, 32, 48, 64], hidden_sizes=[16, 32, 48, 64], stage_num_blocks=[1, 1, 2, 1],
            stage_downsample=[False, True, True, True], stage_light_block=[False, False, True, True],
            stage_kernel_size=[3, 3, 5, 5], stage_numb_of_layers=[3, 3, 3, 3], use_learnable_affine_block=True,
            out_indices=[3, 4],
        ),
        model=dict(
            num_feature_levels=2, encoder_in_channels=[48, 64], feat_strides=[16, 32], encode_proj_layers=[1],
            encoder_hidden_dim=20, encoder_ffn_dim=40, encoder_attention_heads=4, d_model=20,
            decoder_in_channels=[20, 20], decoder_ffn_dim=40, decoder_attention_heads=4, decoder_n_points=[6, 6],
            depth_mult=0.5, hidden_expansion=0.34, decoder_layers=3, num_queries=20, num_labels=5,
        ),
        size=(96, 64), seed=31, legacy=True,
    ),
    # The larger shapes (dfine_s/m/l/x): three levels (strides 8, 16, 32), AIFI on level 2,
    # no learnable affine blocks (as dfine_l/x), per-level points [3, 6, 3], depth_mult 0.67
    # (two RepVGG blocks per CSP layer, as dfine_m), hidden_expansion 0.5 (as dfine_s),
    # 16 distribution bins instead of 32 (read from config.json, not assumed); widths
    # scaled down. transformers 5 module key names (o_proj, mlp.layers.N, encoder.aifi).
    "tiny-dfine": dict(
        arch="dfine",
        backbone=dict(
            stem_channels=[3, 8, 12], stage_in_channels=[12, 16, 24, 32], stage_mid_channels=[8, 8, 12, 16],
            stage_out_channels=[16, 24, 32, 48], hidden_sizes=[16, 24, 32, 48], stage_num_blocks=[1, 1, 2, 1],
            stage_downsample=[False, True, True, True], stage_light_block=[False, False, True, True],
            stage_kernel_size=[3, 3, 5, 5], stage_numb_of_layers=[3, 3, 3, 3], use_learnable_affine_block=False,
            out_indices=[2, 3, 4],
        ),
        model=dict(
            num_feature_levels=3, encoder_in_channels=[24, 32, 48], feat_strides=[8, 16, 32], encode_proj_layers=[2],
            encoder_hidden_dim=16, encoder_ffn_dim=32, encoder_attention_heads=2, d_model=16,
            decoder_in_channels=[16, 16, 16], decoder_ffn_dim=32, decoder_attention_heads=2,
            decoder_n_points=[3, 6, 3], depth_mult=0.67, hidden_expansion=0.5, max_num_bins=16, decoder_layers=3,
            num_queries=30, num_labels=4,
        ),
        size=(64, 96), seed=32, legacy=False,
    ),
    # D-FINE with discrete (nearest cell) sampling, uneven per-level points and another
    # offset scale; the nano's two levels without learnable affine blocks, 4.x key names.
    "tiny-dfine-discrete": dict(
        arch="dfine",
        backbone=dict(
            stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 24, 32], stage_mid_channels=[8, 8, 12, 16],
            stage_out_channels=[16, 24, 32, 48], hidden_sizes=[16, 24, 32, 48], stage_num_blocks=[1, 1, 1, 1],
            stage_downsample=[False, True, True, True], stage_light_block=[False, False, True, True],
            stage_kernel_size=[3, 3, 5, 5], stage_numb_of_layers=[2, 2, 2, 2], use_learnable_affine_block=False,
            out_indices=[3, 4],
        ),
        model=dict(
            num_feature_levels=2, encoder_in_channels=[32, 48], feat_strides=[16, 32], encode_proj_layers=[1],
            encoder_hidden_dim=16, encoder_ffn_dim=32, encoder_attention_heads=2, d_model=16,
            decoder_in_channels=[16, 16], decoder_ffn_dim=32, decoder_attention_heads=2, decoder_n_points=[5, 2],
            decoder_method="discrete", decoder_offset_scale=0.75, depth_mult=0.5, hidden_expansion=0.5,
            decoder_layers=2, num_queries=25, num_labels=3,
        ),
        size=(96, 96), seed=33, legacy=True,
    ),
})

FULL = {
    "r18vd": dict(
        backbone=dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], embedding_size=64),
        model=dict(encoder_in_channels=[128, 256, 512], hidden_expansion=0.5, decoder_layers=3, num_labels=80),
        size=(640, 640), seed=18, legacy=True,
    ),
    "r50vd": dict(
        backbone=dict(layer_type="bottleneck", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], embedding_size=64),
        model=dict(encoder_in_channels=[512, 1024, 2048], hidden_expansion=1.0, decoder_layers=6, num_labels=80),
        size=(640, 640), seed=50, legacy=True,
    ),
}
# RT-DETRv2 in the shapes of the Hub's rtdetr_v2_r18vd / _r50vd (transformers' defaults:
# bilinear sampling, 4 points per level, one head per decoder layer; seeds chosen to pass
# the conditioning check).
FULL["v2-r18vd"] = dict(FULL["r18vd"], arch="v2", seed=218)
FULL["v2-r50vd"] = dict(FULL["r50vd"], arch="v2", seed=50)
# D-FINE in the shapes of the Hub's dfine-nano / dfine-small (transformers' conversion
# script's dfine_n and dfine_s configs).
_HGNET_NS = dict(
    hidden_sizes=[128, 256, 512, 1024], stem_channels=[3, 16, 16], stage_in_channels=[16, 64, 256, 512],
    stage_mid_channels=[16, 32, 64, 128], stage_out_channels=[64, 256, 512, 1024], stage_num_blocks=[1, 1, 2, 1],
    stage_downsample=[False, True, True, True], stage_light_block=[False, False, True, True],
    stage_kernel_size=[3, 3, 5, 5], stage_numb_of_layers=[3, 3, 3, 3], use_learnable_affine_block=True,
)
FULL["dfine-n"] = dict(
    arch="dfine",
    backbone=dict(_HGNET_NS, out_indices=[3, 4]),
    model=dict(
        num_feature_levels=2, encoder_ffn_dim=512, encode_proj_layers=[1], d_model=128, encoder_hidden_dim=128,
        decoder_ffn_dim=512, encoder_in_channels=[512, 1024], decoder_n_points=[6, 6], decoder_in_channels=[128, 128],
        feat_strides=[16, 32], depth_mult=0.5, decoder_layers=3, hidden_expansion=0.34, num_labels=80,
    ),
    size=(640, 640), seed=60, legacy=True,
)
FULL["dfine-s"] = dict(
    arch="dfine",
    backbone=dict(_HGNET_NS, out_indices=[2, 3, 4]),
    model=dict(
        decoder_layers=3, hidden_expansion=0.5, depth_mult=0.34, decoder_n_points=[3, 6, 3],
        encoder_in_channels=[256, 512, 1024], num_labels=80,
    ),
    size=(640, 640), seed=61, legacy=True,
)


def build(spec):
    m = dict(spec["model"])
    n = m.pop("num_labels")
    arch = spec.get("arch")
    if arch == "dfine":
        # One head per decoder layer, as the Hub's converted checkpoints have.
        bb = HGNetV2Config(**spec["backbone"])
        cfg = DFineConfig(backbone_config=bb, num_labels=n, tie_word_embeddings=False, **m)
    elif arch == "v2":
        bb = RTDetrResNetConfig(**spec["backbone"], out_features=["stage2", "stage3", "stage4"])
        # One head per decoder layer, as the Hub's checkpoints have (tied heads would
        # leave layers 1.. untested).
        cfg = RTDetrV2Config(backbone_config=bb, num_labels=n, tie_word_embeddings=False, **m)
    else:
        bb = RTDetrResNetConfig(**spec["backbone"], out_features=["stage2", "stage3", "stage4"])
        cfg = RTDetrConfig(backbone_config=bb, num_labels=n, **m)
    cfg.id2label = {i: f"class_{i}" for i in range(n)}
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    torch.manual_seed(spec["seed"])
    cls = {"v2": RTDetrV2ForObjectDetection, "dfine": DFineForObjectDetection}.get(arch, RTDetrForObjectDetection)
    model = cls(cfg).eval()
    healthy_init(model, spec["seed"])
    return model


def stage_tensors(model, pixel_values, prefix, strict=True):
    """Reference tensors of every stage for one (1,3,H,W) input."""
    out = {}
    with torch.no_grad():
        o = model(pixel_values=pixel_values, output_hidden_states=True)
        mdl = model.model
        feats = mdl.backbone(pixel_values, torch.ones(pixel_values.shape[0], *pixel_values.shape[2:]))
        for i, (f, _) in enumerate(feats):
            out[f"{prefix}backbone.{i}"] = f
        proj = [mdl.encoder_input_proj[i](f) for i, (f, _) in enumerate(feats)]
        enc = mdl.encoder(proj).last_hidden_state
        for i, e in enumerate(enc):
            out[f"{prefix}encoder.{i}"] = e
        q = model.config.num_queries
        idx = torch.topk(o.enc_outputs_class.max(-1).values, q, dim=1).indices
        out[f"{prefix}topk_indices"] = idx.to(torch.int64)
        out[f"{prefix}enc_topk_logits"] = o.enc_topk_logits
        out[f"{prefix}enc_topk_bboxes"] = o.enc_topk_bboxes
        if isinstance(model, DFineForObjectDetection):
            out.update(dfine_decoder_tensors(model, pixel_values, o, prefix))
        else:
            for i in range(o.intermediate_logits.shape[1]):
                out[f"{prefix}decoder.{i}.logits"] = o.intermediate_logits[:, i]
                out[f"{prefix}decoder.{i}.boxes"] = o.intermediate_reference_points[:, i]
        out[f"{prefix}logits"] = o.logits
        out[f"{prefix}pred_boxes"] = o.pred_boxes
        # Conditioning check: a 1e-5 perturbation must barely move the outputs.
        o2 = model(pixel_values=pixel_values + 1e-5 * torch.randn_like(pixel_values))
        idx2 = torch.topk(o2.enc_outputs_class.max(-1).values, q, dim=1).indices
        dl = matched_drift(o, o2, idx, idx2)
        if dl >= 1e-4 or not torch.equal(idx.sort(1).values, idx2.sort(1).values):
            if strict:
                raise SystemExit(f"{prefix}: fixture ill-conditioned (logit drift {dl:.2e}); change the seed")
            print(f"  WARNING {prefix}: ill-conditioned on this input (logit drift {dl:.2e}); compare it loosely")
        # Well separated top-k: the gap at the cut-off must dwarf fp32 noise.
        best = o.enc_outputs_class.max(-1).values.sort(1, descending=True).values
        gap = (best[:, q - 1] - best[:, q]).min().item() if best.shape[1] > q else 1.0
        print(f"  {prefix or 'main'}: logit drift {dl:.1e}, top-k cut-off gap {gap:.2e}")
    return out, o


def matched_drift(o, o2, idx, idx2):
    """Largest logit change between two runs, query by query: queries are matched by the
    memory position they were selected from (the decoder is permutation-equivariant, so a
    reordering of equally selected positions, common at full size, is not drift)."""
    drift = 0.0
    for b in range(idx.shape[0]):
        pos = {int(v): k for k, v in enumerate(idx2[b])}
        if set(pos) != {int(v) for v in idx[b]}:
            return (o2.logits - o.logits).abs().max().item()
        perm = torch.tensor([pos[int(v)] for v in idx[b]])
        drift = max(drift, (o2.logits[b, perm] - o.logits[b]).abs().max().item())
    return drift


def dfine_decoder_tensors(model, pixel_values, o, prefix):
    """D-FINE's decoder in eval mode predicts only at its `eval_idx` layer (the last), so
    each layer's logits (LQE-adjusted) and boxes are taken by running with eval_idx = i;
    layer 0 also gives the pre-bbox head's boxes and the logits before the LQE."""
    out = {}
    dec = model.model.decoder
    layers = model.config.decoder_layers
    hidden = o.intermediate_hidden_states
    assert hidden.shape[0] == layers and hidden.shape[1] == pixel_values.shape[0], hidden.shape
    saved = dec.eval_idx
    try:
        for i in range(layers):
            dec.eval_idx = i
            oi = model(pixel_values=pixel_values)
            out[f"{prefix}decoder.{i}.logits"] = oi.intermediate_logits[:, -1]
            out[f"{prefix}decoder.{i}.boxes"] = oi.intermediate_reference_points[:, -1]
            out[f"{prefix}decoder.{i}.hidden"] = hidden[i]
            if i == 0:
                out[f"{prefix}decoder.pre.logits"] = oi.intermediate_logits[:, 0]
                out[f"{prefix}decoder.pre.boxes"] = oi.intermediate_reference_points[:, 0]
    finally:
        dec.eval_idx = saved
    assert torch.equal(out[f"{prefix}decoder.{layers - 1}.logits"], o.logits)
    return out


def detections_json(processor, outputs, sizes, labels, threshold):
    res = processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)
    out = []
    for r in res:
        dets = []
        for s, l, b in zip(r["scores"].tolist(), r["labels"].tolist(), r["boxes"].tolist()):
            dets.append({"label": labels[l], "class_id": l, "score": s, "box": dict(zip(["xmin", "ymin", "xmax", "ymax"], b))})
        out.append(dets)
    return out


def save_checkpoint(model, spec, dest: Path):
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    h, w = spec["size"]
    RTDetrImageProcessorPil(size={"height": h, "width": w}).save_pretrained(dest)
    if not spec["legacy"]:
        # save_pretrained writes the Hub (transformers 4.x) key names; also cover the
        # transformers 5 module names (o_proj, mlp.fc1, encoder.aifi) by writing those.
        sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
        save_file(sd, dest / "model.safetensors", metadata={"format": "pt"})


def make_fixture(name, spec, dest_root: Path, images_dir: Path, image_files, tiny: bool):
    print(f"{name}:")
    model = build(spec)
    dest = dest_root / name
    save_checkpoint(model, spec, dest)
    h, w = spec["size"]
    processor = RTDetrImageProcessorPil(size={"height": h, "width": w})
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    tensors = {}
    dets = {}
    # 1. A random input of the configured size: stage-by-stage reference.
    g = torch.Generator().manual_seed(spec["seed"] + 1000)
    pv = torch.rand(1, 3, h, w, generator=g)
    tensors["random.pixel_values"] = pv
    t, _ = stage_tensors(model, pv, "random.")
    tensors.update(t)
    # 2. A batch of the real test images (different original sizes): pixels, outputs, detections.
    imgs = [load_image(str(images_dir / f)) for f in image_files]
    batch = processor(images=imgs, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=batch)
    for i, f in enumerate(image_files):
        tensors[f"images.{f}.pixel_values"] = batch[i : i + 1]
        tensors[f"images.{f}.logits"] = out.logits[i : i + 1]
        tensors[f"images.{f}.pred_boxes"] = out.pred_boxes[i : i + 1]
        # Per-image conditioning check as well.
        stage_tensors(model, batch[i : i + 1], f"{f}.", strict=tiny)
    sizes = [(im.height, im.width) for im in imgs]
    for thr in (0.0, 0.3):
        for f, d in zip(image_files, detections_json(processor, out, sizes, labels, thr)):
            dets.setdefault(f, {})[str(thr)] = {"width": sizes[image_files.index(f)][1], "height": sizes[image_files.index(f)][0], "detections": d}
    # 3. Decoder depth cut: layer N's heads must equal the intermediate outputs of layer N.
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, dest / "reference.safetensors")
    (dest / "detections.json").write_text(json.dumps(dets, indent=1))
    print(f"  wrote {dest}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", nargs="*", help="also write full-size checkpoints (r18vd, r50vd, v2-r18vd, v2-r50vd, dfine-n, dfine-s) to --full-dir")
    ap.add_argument("--full-dir", default="/tmp/rtdetr-full")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("FIXTURE_THREADS", "2")))
    images_dir = FIX / "images"
    files = write_images(images_dir)
    if args.full:
        for name in args.full:
            make_fixture(name, FULL[name], Path(args.full_dir), images_dir, files, tiny=False)
        return
    only = os.environ.get("FIXTURES")
    for name, spec in FIXTURES.items():
        if only and name not in only.split(","):
            continue
        make_fixture(name, spec, FIX, images_dir, files, tiny=True)


if __name__ == "__main__":
    main()
