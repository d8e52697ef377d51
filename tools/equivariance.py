#!/usr/bin/env python
"""Equivariance of RoIPool / RoIWarp / RoIAlign, measured (issue #29; Mask R-CNN's "Equivariance" argument).

The paper's talk (Figures 14-19 of the article in the project's references) argues: FCN features and the FCN
mask head are translation-equivariant; RoIAlign keeps that pixel-to-pixel behaviour (translation-equivariant)
and, with the paste-back, is scale- and aspect-ratio-equivariant; RoIPool's two quantizations break it. This
tool measures that property.

**Operators alone (no training).** A feature map is modelled as a smooth random field ``f`` (``--channels``
channels, each a sum of ``--waves`` random plane waves with wavelengths log-uniform in ``[--lam-min,
--lam-max]`` feature cells, random directions and phases, RMS 1) sampled at the centres of the feature cells
of stride ``s``: cell ``(i, j)`` holds ``f`` at image point ``(s (j + 0.5), s (i + 0.5))``, the convention of
``aligned=True``. Each random box gets its own field (one image per box).

* Translation by ``d`` pixels (along x): the map holds ``f(x - d, y)`` (content moved by ``+d``) and the box
  moves by ``+d``. Equivariance error at ``d`` = RMS over boxes, channels and bins of ``pool(map_d, box + d) -
  pool(map_0, box)``, in units of the field's RMS (1). An operator that reads the content at fixed positions
  relative to the box gives 0 for every ``d``. Only ``d`` = whole strides keeps the feature lattice (the map
  is then the old map moved by whole cells), where every operator must give 0 to float rounding.
* Scale by ``sigma`` about the box centre ``c``: the map holds ``f(c + (x - c) / sigma)`` and the box is
  ``c + sigma (box - c)``; error as above against ``sigma = 1``.

Operators: RoIPool (max), RoIWarp and RoIAlign (avg and max), 7 x 7 output, ``sampling_ratio=2`` (the paper's
2 x 2 points per bin, the configs' value), ``aligned=True`` (the configs' value; RoIWarp's default). The
diagnostic row "RoIAlign avg, aligned=False" reads every sample half a cell off: still translation-equivariant
(the offset moves with the box) but not scale-equivariant (the offset does not scale with the box).

**End to end (``--e2e NAME=CHECKPOINT``, trained models).** Each validation image is put on a canvas ``--e2e-max-shift``
pixels wider than the image (padding = the pixel mean, i.e. 0 after normalisation, as detectron2 pads) at
x offset ``d`` = 0, ``--e2e-step``, ..., ``--e2e-max-shift``, and the model runs on the canvas (no resizing).
For every detection of the unshifted canvas (score >= 0.5): (a) *end to end*, the detection of the shifted
canvas with the same class and the highest box IoU with the shifted box (>= 0.5; otherwise counted as a miss);
(b) *given box*, the mask head run on the shifted canvas's features for the unshifted detection's box moved by
``d`` (same class), which removes the detector's own box jitter. Error = 1 - IoU of the 0.5-thresholded
pasted masks, shifted unshifted mask against the mask of the shifted canvas (mean over detections).

Outputs: ``results/equivariance/equivariance.json`` (all curves and settings) and ``equivariance.md``
(tables), ``docs/images/equivariance_translation.png``, ``equivariance_scale.png``,
``equivariance_end_to_end.png`` (when end-to-end results exist), and the block between ``<!-- BEGIN
equivariance -->`` and ``<!-- END equivariance -->`` in ``docs/roi_ops.md``. Figures, tables and the docs
block are drawn from the json only.

    python tools/equivariance.py                       # operators (about a minute); keeps stored end-to-end results
    python tools/equivariance.py --e2e RoIAlign=/path/roialign_avg/model_final.pth --e2e RoIPool=/path/roipool/model_final.pth
    python tools/equivariance.py --report              # only redraw figures, tables and the docs block from the json
"""
import argparse
import datetime
import json
import math
import os
import sys
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from maskrcnn_plugin.checkpoint import atomic_open  # noqa: E402
from maskrcnn_plugin.layers import roi_align, roi_pool, roi_warp  # noqa: E402

RESULTS_DIR = os.path.join(REPO, "results", "equivariance")
JSON_PATH = os.path.join(RESULTS_DIR, "equivariance.json")
MD_PATH = os.path.join(RESULTS_DIR, "equivariance.md")
IMAGES_DIR = os.path.join(REPO, "docs", "images")
DOCS_PATH = os.path.join(REPO, "docs", "roi_ops.md")
DOCS_BLOCK = "equivariance"

STRIDES = (16, 32)
OUTPUT_SIZE = 7
SAMPLING_RATIO = 2


# ----------------------------------------------------------------------------------------------------------
# the operators: callables (feature map [N, C, H, W], rois [K, 5], spatial_scale) -> [K, C, 7, 7]
# ----------------------------------------------------------------------------------------------------------
def operators(output_size=OUTPUT_SIZE, sampling_ratio=SAMPLING_RATIO):
    """The compared operators, as configured in the ablation configs (aligned=True, 2 x 2 samples per bin)."""
    o, sr = output_size, sampling_ratio
    return {
        "RoIPool": lambda x, r, sc: roi_pool(x, r, o, sc),
        "RoIWarp avg": lambda x, r, sc: roi_warp(x, r, o, sc, sr, "avg", aligned=True),
        "RoIWarp max": lambda x, r, sc: roi_warp(x, r, o, sc, sr, "max", aligned=True),
        "RoIAlign avg": lambda x, r, sc: roi_align(x, r, o, sc, sr, "avg", aligned=True),
        "RoIAlign max": lambda x, r, sc: roi_align(x, r, o, sc, sr, "max", aligned=True),
    }


def diagnostic_operators(output_size=OUTPUT_SIZE, sampling_ratio=SAMPLING_RATIO):
    """Variants shown beside the compared operators: RoIAlign without the half-cell shift (the paper's / Detectron's
    original pixel model, samples half a cell down-right of where aligned=True reads them)."""
    o, sr = output_size, sampling_ratio
    return {"RoIAlign avg, aligned=False": lambda x, r, sc: roi_align(x, r, o, sc, sr, "avg", aligned=False)}


# ----------------------------------------------------------------------------------------------------------
# the smooth random field (in feature-cell units) and its feature maps
# ----------------------------------------------------------------------------------------------------------
def random_fields(n, channels=8, waves=8, lam_min=4.0, lam_max=32.0, seed=0):
    """``n`` independent random fields of ``channels`` channels, each a sum of ``waves`` plane waves.

    Wavelengths are log-uniform in ``[lam_min, lam_max]`` feature cells, directions and phases uniform; the
    amplitude sqrt(2 / waves) gives every channel an RMS of 1 (in expectation over the phases). Returns a dict of
    float64 tensors: ``k`` [n, C, W, 2] (wave vectors in radians per cell, x then y) and ``phase`` [n, C, W].
    """
    g = torch.Generator().manual_seed(int(seed))
    shape = (n, channels, waves)
    lam = torch.exp(math.log(lam_min) + (math.log(lam_max) - math.log(lam_min)) * torch.rand(shape, generator=g, dtype=torch.float64))
    theta = 2 * math.pi * torch.rand(shape, generator=g, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(shape, generator=g, dtype=torch.float64)
    k = torch.stack([torch.cos(theta), torch.sin(theta)], -1) * (2 * math.pi / lam)[..., None]
    return {"k": k, "phase": phase, "amp": math.sqrt(2.0 / waves)}


def feature_maps(field, stride, size_px, shift_px=0.0, scale=1.0, centre_px=None):
    """Sample the transformed fields on the feature grid of ``stride``: a float64 tensor [n, C, H, W].

    The image content is the field moved by ``shift_px`` along x and scaled by ``scale`` about ``centre_px``
    ([n, 2] or None = no scaling): cell (i, j) (image point ``p = (s (j + 0.5), s (i + 0.5))``) holds
    ``f(c + (p - (shift, 0) - c) / scale)``, ``f`` in feature-cell units (``f(x / s)``).
    """
    k, phase = field["k"], field["phase"]
    n = k.shape[0]
    h = w = int(round(size_px / stride))
    xs = stride * (torch.arange(w, dtype=torch.float64) + 0.5)
    ys = stride * (torch.arange(h, dtype=torch.float64) + 0.5)
    if centre_px is None:
        centre_px = torch.zeros(n, 2, dtype=torch.float64)
    cx = centre_px[:, 0].view(n, 1)
    cy = centre_px[:, 1].view(n, 1)
    # pre-images in feature-cell units, [n, W] and [n, H]
    ux = (cx + (xs.view(1, w) - shift_px - cx) / scale) / stride
    uy = (cy + (ys.view(1, h) - cy) / scale) / stride
    out = torch.zeros(n, k.shape[1], h, w, dtype=torch.float64)
    buf = torch.empty_like(out)
    for i in range(k.shape[2]):  # one wave at a time keeps the memory at two maps
        ax = k[:, :, i, 0, None] * ux[:, None, :]  # [n, C, W]
        ay = k[:, :, i, 1, None] * uy[:, None, :] + phase[:, :, i, None]  # [n, C, H]
        torch.add(ay[..., :, None], ax[..., None, :], out=buf)
        out += buf.sin_()
    return out.mul_(field["amp"])


def random_boxes(n, size_px, side_min, side_max, margin_px, seed=0, centre_range_px=None):
    """``n`` boxes (x0, y0, x1, y1) in image pixels, float64 [n, 4], sides log-uniform in [side_min, side_max]
    (independently along x and y), placed uniformly with at least ``margin_px`` to the image border, or with the
    centre uniform in ``size_px / 2 +- centre_range_px`` when that is given."""
    g = torch.Generator().manual_seed(int(seed) + 7919)
    sides = torch.exp(math.log(side_min) + (math.log(side_max) - math.log(side_min)) * torch.rand(n, 2, generator=g, dtype=torch.float64))
    if centre_range_px is None:
        free = size_px - 2 * margin_px - sides
        if (free <= 0).any():
            raise ValueError("boxes do not fit: raise size_px or lower side_max / margin_px")
        x0y0 = margin_px + free * torch.rand(n, 2, generator=g, dtype=torch.float64)
    else:
        centre = size_px / 2 + centre_range_px * (2 * torch.rand(n, 2, generator=g, dtype=torch.float64) - 1)
        x0y0 = centre - sides / 2
    return torch.cat([x0y0, x0y0 + sides], 1)


def _rois(boxes):
    return torch.cat([torch.arange(len(boxes), dtype=torch.float64)[:, None], boxes], 1)


def _rms_per_box(diff):
    return diff.pow(2).flatten(1).mean(1).sqrt()


# ----------------------------------------------------------------------------------------------------------
# the measurements
# ----------------------------------------------------------------------------------------------------------
def translation_errors(ops, stride, offsets_px, boxes, field, size_px):
    """Per operator: [len(offsets_px), n_boxes] RMS difference (per box, over channels and bins) between the
    pooled features of (map shifted by d, box + d) and of (map, box), in units of the field's RMS."""
    sc = 1.0 / stride
    rois0 = _rois(boxes)
    ref_map = feature_maps(field, stride, size_px)
    ref = {name: op(ref_map, rois0, sc) for name, op in ops.items()}
    errs = {name: [] for name in ops}
    for d in offsets_px:
        fmap = ref_map if d == 0 else feature_maps(field, stride, size_px, shift_px=float(d))
        rois = rois0.clone()
        rois[:, 1] += float(d)
        rois[:, 3] += float(d)
        for name, op in ops.items():
            errs[name].append(_rms_per_box(op(fmap, rois, sc) - ref[name]))
    return {name: torch.stack(v).numpy() for name, v in errs.items()}


def scale_errors(ops, stride, scales, boxes, field, size_px):
    """Per operator: [len(scales), n_boxes] RMS difference between the pooled features of (content scaled by
    sigma about the box centre, box scaled by sigma about its centre) and of (content, box)."""
    sc = 1.0 / stride
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2
    ref_map = feature_maps(field, stride, size_px)
    ref = {name: op(ref_map, _rois(boxes), sc) for name, op in ops.items()}
    errs = {name: [] for name in ops}
    for sigma in scales:
        fmap = feature_maps(field, stride, size_px, scale=float(sigma), centre_px=centre)
        scaled = torch.cat([centre - sigma * half, centre + sigma * half], 1)
        for name, op in ops.items():
            errs[name].append(_rms_per_box(op(fmap, _rois(scaled), sc) - ref[name]))
    return {name: torch.stack(v).numpy() for name, v in errs.items()}


def rms(per_box):
    """Aggregate [..., n_boxes] per-box RMS errors into one RMS over all boxes."""
    return np.sqrt(np.mean(np.asarray(per_box) ** 2, axis=-1))


def snap_changes(x0, x1, stride, offsets_px):
    """Offsets (from ``offsets_px``, ascending) at which RoIPool's snapped x-range of box [x0, x1] changes
    (C-style round of (x + d) / stride, halves away from zero)."""
    def c_round(v):
        return np.floor(np.abs(v) + 0.5) * np.sign(v)

    out = []
    prev = None
    for d in offsets_px:
        cur = (c_round((x0 + d) / stride), c_round((x1 + d) / stride))
        if prev is not None and cur != prev:
            out.append(float(d))
        prev = cur
    return out


# ----------------------------------------------------------------------------------------------------------
# the experiment of the figure / tables
# ----------------------------------------------------------------------------------------------------------
DEFAULTS = dict(
    size_px=1024,  # image side: 64 x 64 cells at stride 16, 32 x 32 at stride 32
    channels=8,
    waves=8,
    lam_min=4.0,
    lam_max=32.0,
    n_boxes=256,
    seed=0,
    translation_steps=16,  # offsets 0, s/16, ..., s
    translation_side_px=(64.0, 400.0),  # box sides (2 .. 12.5 cells at stride 32, 4 .. 25 at stride 16)
    scale_range=(0.5, 2.0),
    scale_steps=24,  # 25 scales, log-spaced, 1 included
    scale_side_px=(96.0, 256.0),  # unscaled box sides; 48 .. 512 px over the scale range
    scale_centre_range_px=64.0,
    single_box=(100.0, 100.0, 765.0, 765.0),  # the article's 665 x 665 px box, away from the border
    single_stride=32,
    single_step_px=0.25,
    sensitivity_lam_min=(2.0, 4.0, 8.0, 16.0),  # lam_max = 8 lam_min
)


def run_operators(p=None, log=print):
    p = dict(DEFAULTS, **(p or {}))
    ops = operators()
    ops_all = dict(ops, **diagnostic_operators())
    t0 = time.time()
    res = {"settings": p, "operators": list(ops), "diagnostic_operators": list(diagnostic_operators())}

    def fields(n, seed, lam_min=p["lam_min"], lam_max=p["lam_max"]):
        return random_fields(n, p["channels"], p["waves"], lam_min, lam_max, seed=seed)

    # translation, averaged over random boxes
    res["translation"] = {}
    for stride in STRIDES:
        offsets = [stride * i / p["translation_steps"] for i in range(p["translation_steps"] + 1)]
        # margin: the shift (1 cell), RoIPool's rounding (<= 1 cell) and the bilinear neighbour (1 cell), plus one
        boxes = random_boxes(p["n_boxes"], p["size_px"], *p["translation_side_px"], margin_px=4 * stride, seed=p["seed"] + stride)
        e = translation_errors(ops_all, stride, offsets, boxes, fields(p["n_boxes"], p["seed"] + stride), p["size_px"])
        res["translation"][str(stride)] = {
            "offsets_px": offsets,
            "rms": {name: rms(v).tolist() for name, v in e.items()},
            "p90": {name: np.percentile(v, 90, axis=1).tolist() for name, v in e.items()},
        }
        log(f"translation, stride {stride}: done ({time.time() - t0:.1f} s)")

    # translation of one box (the article's 665 px box), fine steps
    s1 = p["single_stride"]
    n_off = int(round(s1 / p["single_step_px"]))
    offsets = [i * p["single_step_px"] for i in range(n_off + 1)]
    box = torch.tensor([p["single_box"]], dtype=torch.float64)
    e = translation_errors(ops_all, s1, offsets, box, fields(1, p["seed"] + 1000), p["size_px"])
    res["single_box"] = {
        "stride": s1,
        "box": list(p["single_box"]),
        "offsets_px": offsets,
        "error": {name: v[:, 0].tolist() for name, v in e.items()},
        "snap_changes_px": snap_changes(p["single_box"][0], p["single_box"][2], s1, offsets),
    }
    log(f"single box: done ({time.time() - t0:.1f} s)")

    # scale about the box centre
    lo, hi = p["scale_range"]
    scales = [float(2 ** (math.log2(lo) + (math.log2(hi) - math.log2(lo)) * i / p["scale_steps"])) for i in range(p["scale_steps"] + 1)]
    res["scale"] = {}
    for stride in STRIDES:
        boxes = random_boxes(p["n_boxes"], p["size_px"], *p["scale_side_px"], margin_px=0, seed=p["seed"] + 100 + stride,
                             centre_range_px=p["scale_centre_range_px"])
        e = scale_errors(ops_all, stride, scales, boxes, fields(p["n_boxes"], p["seed"] + 100 + stride), p["size_px"])
        res["scale"][str(stride)] = {
            "scales": scales,
            "rms": {name: rms(v).tolist() for name, v in e.items()},
            "p90": {name: np.percentile(v, 90, axis=1).tolist() for name, v in e.items()},
        }
        log(f"scale, stride {stride}: done ({time.time() - t0:.1f} s)")

    # sensitivity of the half-stride translation error to the field's smoothness
    res["sensitivity"] = {"lam_min": list(p["sensitivity_lam_min"]), "half_stride_rms": {}}
    n = max(32, p["n_boxes"] // 4)
    for stride in STRIDES:
        boxes = random_boxes(n, p["size_px"], *p["translation_side_px"], margin_px=4 * stride, seed=p["seed"] + 200 + stride)
        rows = {name: [] for name in ops}
        for lam_min in p["sensitivity_lam_min"]:
            f = fields(n, p["seed"] + 200 + stride, lam_min=lam_min, lam_max=8 * lam_min)
            e = translation_errors(ops, stride, [stride / 2], boxes, f, p["size_px"])
            for name in ops:
                rows[name].append(float(rms(e[name])[0]))
        res["sensitivity"]["half_stride_rms"][str(stride)] = rows
    log(f"sensitivity: done ({time.time() - t0:.1f} s)")
    res["wall_s"] = time.time() - t0
    return res


# ----------------------------------------------------------------------------------------------------------
# end to end: a trained model on shifted validation images
# ----------------------------------------------------------------------------------------------------------
def _mask_iou(a, b):
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def _box_iou(a, b):
    """IoU of every box of a [n, 4] with every box of b [m, 4] -> [n, m]."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda t: (t[:, 2:] - t[:, :2]).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter).clamp(min=1e-9)


def load_model(checkpoint, config=None):
    """Build the model of ``config`` (default: config.yaml beside the checkpoint, as train_net.py writes it) and
    load ``checkpoint``; returns (model in eval mode, cfg)."""
    import maskrcnn_plugin
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from maskrcnn_plugin.data import register_datasets_from_cfg

    config = config or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "config.yaml")
    cfg = maskrcnn_plugin.get_plugin_cfg()
    cfg.merge_from_file(config)
    cfg.MODEL.WEIGHTS = checkpoint
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    register_datasets_from_cfg(cfg)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(checkpoint)
    model.eval()
    return model, cfg


def end_to_end(model, cfg, num_images=50, max_shift=32, step=2, base_margin=32, score_thresh=0.5, log=print):
    """Shift the first ``num_images`` images of the config's first test set along x on a padded canvas and compare
    masks with the unshifted run (see the module docstring). Returns a dict of per-shift means."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.structures import Boxes, Instances

    from maskrcnn_plugin.paste import paste_masks_in_image_fast

    dataset = cfg.DATASETS.TEST[0]
    dicts = DatasetCatalog.get(dataset)[:num_images]
    shifts = list(range(0, max_shift + 1, step))
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN, dtype=torch.float32).view(3, 1, 1)
    stride = model.backbone.output_shape()[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].stride
    acc = {k: [[] for _ in shifts] for k in ("e2e_mask_err", "e2e_box_err", "e2e_miss", "given_mask_err", "given_soft_err")}
    feat_err = [[] for _ in shifts]
    t0 = time.time()
    for n, dd in enumerate(dicts):
        img = torch.as_tensor(np.ascontiguousarray(read_image(dd["file_name"], format=cfg.INPUT.FORMAT).transpose(2, 0, 1))).float()
        h, w = img.shape[1:]
        cw = w + 2 * base_margin + max_shift
        batch = []
        for d in shifts:
            canvas = mean.expand(3, h, cw).clone()
            canvas[:, :, base_margin + d: base_margin + d + w] = img
            batch.append({"image": canvas, "height": h, "width": cw})
        with torch.no_grad():
            images = model.preprocess_image(batch)
            features = model.backbone(images.tensor)
            proposals, _ = model.proposal_generator(images, features, None)
            results, _ = model.roi_heads(images, features, proposals, None)
            ref = results[0]
            keep = ref.scores >= score_thresh
            ref_boxes, ref_cls = ref.pred_boxes.tensor[keep], ref.pred_classes[keep]
            given = []
            for d in shifts:
                inst = Instances((h, cw))
                inst.pred_boxes = Boxes(ref_boxes + torch.tensor([d, 0.0, d, 0.0]))
                inst.pred_classes = ref_cls
                given.append(inst)
            given = model.roi_heads.forward_with_given_boxes(features, given)
        # The backbone's own equivariance: the feature map of the shifted image against the unshifted one moved by
        # d / stride cells (linear interpolation between columns for sub-stride d; exact for whole strides), on the
        # image interior (2 cells in from its edges).
        f0 = features[model.roi_heads.in_features[0]]
        lo, hi = (base_margin + 2 * stride) // stride, (base_margin + w - 2 * stride) // stride
        for i, d in enumerate(shifts):
            k, frac = divmod(d / stride, 1.0)
            k = int(k)
            cols = slice(lo + k + 1, hi + k)
            moved = (1 - frac) * f0[0][:, :, lo + 1: hi] + frac * f0[0][:, :, lo: hi - 1]
            fd = f0[i][:, :, cols]
            feat_err[i].append(float((fd - moved).norm() / fd.norm()))
        if len(ref_boxes) == 0:
            continue
        paste = lambda m, bx: paste_masks_in_image_fast(m[:, 0], bx, (h, cw), threshold=0.5)  # noqa: E731
        ref_masks = paste(given[0].pred_masks, ref_boxes)
        ref_soft = given[0].pred_masks[:, 0]
        for i, d in enumerate(shifts):
            target = torch.roll(ref_masks, d, dims=2)  # the canvas margin keeps every mask inside
            shifted_boxes = ref_boxes + torch.tensor([d, 0.0, d, 0.0])
            g = given[i]
            acc["given_mask_err"][i].extend((1 - _mask_iou(paste(g.pred_masks, shifted_boxes), target)).tolist())
            acc["given_soft_err"][i].extend((g.pred_masks[:, 0] - ref_soft).abs().flatten(1).mean(1).tolist())
            r = results[i]
            ious = _box_iou(shifted_boxes, r.pred_boxes.tensor)
            ious[ref_cls[:, None] != r.pred_classes[None, :]] = 0
            best, j = ious.max(1) if len(r) else (torch.zeros(len(ref_boxes)), torch.zeros(len(ref_boxes), dtype=torch.long))
            hit = best >= 0.5
            acc["e2e_miss"][i].extend((~hit).double().tolist())
            if hit.any():
                m = paste(r.pred_masks[j[hit]], r.pred_boxes.tensor[j[hit]])
                acc["e2e_mask_err"][i].extend((1 - _mask_iou(m, target[hit])).tolist())
                acc["e2e_box_err"][i].extend((1 - best[hit]).tolist())
        if (n + 1) % 10 == 0:
            log(f"  {n + 1}/{len(dicts)} images ({time.time() - t0:.0f} s)")
    out = {"dataset": dataset, "num_images": len(dicts), "shifts_px": shifts, "stride": stride,
           "num_detections": len(acc["given_mask_err"][0]), "score_thresh": score_thresh,
           "canvas": f"{base_margin} px margin + image + {base_margin + max_shift} px margin (x), padding = pixel mean",
           "backbone_rel_change": [float(np.mean(v)) for v in feat_err],
           "wall_s": time.time() - t0}
    for k, v in acc.items():
        out[k] = [float(np.mean(x)) if x else None for x in v]
    return out


def run_end_to_end(specs, num_images, max_shift, step, log=print):
    res = {}
    for spec in specs:
        name, _, ckpt = spec.partition("=")
        if not ckpt:
            raise SystemExit(f"--e2e takes NAME=CHECKPOINT, got {spec!r}")
        load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None
        model, cfg = load_model(ckpt)
        log(f"end to end: {name} ({ckpt}; {cfg.MODEL.ROI_EXTRACTOR.METHOD} {cfg.MODEL.ROI_EXTRACTOR.AGGREGATION})")
        r = end_to_end(model, cfg, num_images=num_images, max_shift=max_shift, step=step, log=log)
        r.update(checkpoint=ckpt, roi_extractor=dict(cfg.MODEL.ROI_EXTRACTOR), loadavg_at_start=load,
                 threads=torch.get_num_threads())
        ev = os.path.join(os.path.dirname(os.path.abspath(ckpt)), "eval_results.json")
        if os.path.isfile(ev):
            with open(ev) as f:
                m = json.load(f)
            r["eval"] = {"bbox_AP": m.get("bbox", {}).get("AP"), "segm_AP": m.get("segm", {}).get("AP")}
        res[name] = r
    return res


# ----------------------------------------------------------------------------------------------------------
# report: tables, figures, docs block (from the json only)
# ----------------------------------------------------------------------------------------------------------
STYLE = {
    "RoIPool": dict(color="#d62728", ls="-", lw=1.8),
    "RoIWarp avg": dict(color="#ff7f0e", ls="-", lw=1.6),
    "RoIWarp max": dict(color="#ff7f0e", ls="--", lw=1.4),
    "RoIAlign avg": dict(color="#1f77b4", ls="-", lw=1.8),
    "RoIAlign max": dict(color="#1f77b4", ls="--", lw=1.4),
    "RoIAlign avg, aligned=False": dict(color="#7f7f7f", ls=":", lw=1.6),
}


def _f(v, nd=3):
    if v is None:
        return "n/a"
    if v != 0 and abs(v) < 10 ** -nd:
        return f"{v:.1e}"
    return f"{v:.{nd}f}"


def _at(xs, ys, x):
    return ys[min(range(len(xs)), key=lambda i: abs(xs[i] - x))]


def summary(res):
    """The headline numbers, used by the md tables and the docs block."""
    out = {"translation": {}, "scale": {}}
    names = res["operators"] + res["diagnostic_operators"]
    for s, t in res["translation"].items():
        stride = int(s)
        offs = t["offsets_px"]
        row = {}
        for name in names:
            ys = t["rms"][name]
            sub = [y for x, y in zip(offs, ys) if 0 < x < stride]
            row[name] = {"quarter": _at(offs, ys, stride / 4), "half": _at(offs, ys, stride / 2),
                         "three_quarter": _at(offs, ys, 3 * stride / 4), "max": max(ys), "mean_sub": float(np.mean(sub)),
                         "lattice": _at(offs, ys, stride)}
        out["translation"][s] = row
    for s, t in res["scale"].items():
        sc = t["scales"]
        row = {}
        for name in names:
            ys = t["rms"][name]
            off1 = [y for x, y in zip(sc, ys) if abs(x - 1) > 1e-12]
            row[name] = {"0.5": _at(sc, ys, 0.5), "0.71": _at(sc, ys, 2 ** -0.5), "1.41": _at(sc, ys, 2 ** 0.5),
                         "2": _at(sc, ys, 2.0), "mean": float(np.mean(off1)), "max": max(ys)}
        out["scale"][s] = row
    sb = res["single_box"]
    out["single_box"] = {}
    for name in names:
        e = np.asarray(sb["error"][name])
        j = np.abs(np.diff(e))
        out["single_box"][name] = {"max": float(e.max()), "max_step": float(j.max()),
                                   "max_step_at_px": float(sb["offsets_px"][int(j.argmax()) + 1])}
    return out


def markdown_tables(res):
    s = summary(res)
    ref = "RoIAlign avg"
    L = []
    st = res["settings"]
    L.append(f"Settings: random fields of {st['channels']} channels x {st['waves']} plane waves, wavelengths log-uniform in "
             f"[{st['lam_min']:g}, {st['lam_max']:g}] feature cells, RMS 1; {st['n_boxes']} boxes (one field each) per "
             f"stride; {st['size_px']} x {st['size_px']} px image; 7 x 7 output, sampling_ratio 2, aligned=True; float64, "
             f"C++ CPU kernels; seed {st['seed']}. Errors: RMS difference of the pooled features, in units of the "
             "field's RMS.")
    L.append("")
    L.append("### Translation along x by d (box and content together)")
    L.append("")
    L.append(f"Translation boxes: sides log-uniform in [{st['translation_side_px'][0]:g}, {st['translation_side_px'][1]:g}] px. "
             f"d = 0, s/{st['translation_steps']}, ..., s. d = s moves the content by one whole cell (lattice-preserving).")
    for stride, row in s["translation"].items():
        L.append("")
        L.append(f"Stride {stride}:")
        L.append("")
        L.append("| operator | d = s/4 | d = s/2 | d = 3s/4 | max over d | mean over 0 < d < s | ratio to RoIAlign avg (mean) | d = s (lattice) |")
        L.append("|---|---|---|---|---|---|---|---|")
        for name, r in row.items():
            ratio = r["mean_sub"] / row[ref]["mean_sub"]
            L.append(f"| {name} | {_f(r['quarter'])} | {_f(r['half'])} | {_f(r['three_quarter'])} | {_f(r['max'])} | "
                     f"{_f(r['mean_sub'])} | {ratio:.1f}x | {r['lattice']:.1e} |")
    sb = res["single_box"]
    L.append("")
    L.append(f"One box, the article's 665 x 665 px box at {tuple(sb['box'])}, stride {sb['stride']}, one field, "
             f"d in steps of {sb['offsets_px'][1]:g} px; RoIPool's snapped x-range changes at d = "
             f"{', '.join(f'{v:g}' for v in sb['snap_changes_px'])} px:")
    L.append("")
    L.append("| operator | max error over d | largest change between neighbouring d | at d (px) |")
    L.append("|---|---|---|---|")
    for name, r in s["single_box"].items():
        L.append(f"| {name} | {_f(r['max'])} | {_f(r['max_step'])} | {r['max_step_at_px']:g} |")
    L.append("")
    L.append("### Scale by sigma about the box centre (box and content together)")
    L.append("")
    L.append(f"Unscaled box sides log-uniform in [{st['scale_side_px'][0]:g}, {st['scale_side_px'][1]:g}] px; sigma "
             f"log-spaced in [{st['scale_range'][0]:g}, {st['scale_range'][1]:g}] ({st['scale_steps'] + 1} values). At "
             "sigma < 1 the content gets finer on the map (wavelength down to lam_min x sigma cells), so every operator's "
             "interpolation error grows there.")
    for stride, row in s["scale"].items():
        L.append("")
        L.append(f"Stride {stride}:")
        L.append("")
        L.append("| operator | sigma = 0.5 | 0.71 | 1.41 | 2 | mean over sigma != 1 | ratio to RoIAlign avg (mean) |")
        L.append("|---|---|---|---|---|---|---|")
        for name, r in row.items():
            ratio = r["mean"] / row[ref]["mean"]
            L.append(f"| {name} | {_f(r['0.5'])} | {_f(r['0.71'])} | {_f(r['1.41'])} | {_f(r['2'])} | {_f(r['mean'])} | {ratio:.1f}x |")
    sens = res["sensitivity"]
    L.append("")
    L.append("### Dependence on the field's smoothness (translation by d = s/2)")
    L.append("")
    L.append("Wavelengths log-uniform in [lam_min, 8 lam_min] cells. RoIAlign's error is bilinear interpolation error, second "
             "order in 1/lam; RoIPool's / RoIWarp's is first order (they read the same cells while the content moves), so "
             "the ratio grows with the smoothness of the features.")
    for stride, rows in sens["half_stride_rms"].items():
        L.append("")
        L.append(f"Stride {stride}:")
        L.append("")
        L.append("| lam_min (cells) | " + " | ".join(rows) + " | RoIPool / RoIAlign avg | RoIWarp avg / RoIAlign avg |")
        L.append("|---" * (len(rows) + 3) + "|")
        for i, lam in enumerate(sens["lam_min"]):
            vals = [rows[n][i] for n in rows]
            L.append(f"| {lam:g} | " + " | ".join(_f(v) for v in vals) +
                     f" | {rows['RoIPool'][i] / rows[ref][i]:.1f}x | {rows['RoIWarp avg'][i] / rows[ref][i]:.1f}x |")
    e2e = res.get("end_to_end")
    if e2e:
        L.append("")
        L.append("### End to end: trained models on shifted validation images")
        L.append("")
        L.extend(e2e_table(e2e))
    L.append("")
    return "\n".join(L)


def e2e_table(e2e):
    L = []
    first = next(iter(e2e.values()))
    stride = first["stride"]
    L.append(f"{first['num_images']} images of {first['dataset']}, shifted along x by d = 0, {first['shifts_px'][1]}, ..., "
             f"{first['shifts_px'][-1]} px on a canvas ({first['canvas']}); RoI features from one stride-{stride} map. "
             f"Detections of the unshifted image with score >= {first['score_thresh']}. Error = 1 - mask IoU of the pasted "
             "masks (0.5 threshold) against the shifted unshifted mask; 'sub-stride' = mean over the d that are not "
             f"multiples of {stride}; 'whole strides' = mean over d = {stride}, {2 * stride}, ... 'Given box': the mask "
             "head run on the shifted image for the unshifted detection's box moved by d. Backbone feature change: "
             "relative RMS difference between the feature map of the shifted image and that of the unshifted image "
             "moved by d / stride cells (linear interpolation between columns when that is fractional), image interior.")
    L.append("")
    L.append("| model | box / mask AP | detections | end to end: sub-stride | whole strides | max | missed (sub-stride) | "
             "given box: sub-stride | whole strides | max | mask-head output change, given box (mean abs prob, sub-stride) | "
             "backbone feature change, sub-stride / whole strides |")
    L.append("|---" * 12 + "|")
    for name, r in e2e.items():
        sh = r["shifts_px"]
        sub = [i for i, d in enumerate(sh) if d % stride]
        whole = [i for i, d in enumerate(sh) if d and d % stride == 0]
        m = lambda k, idx: float(np.mean([r[k][i] for i in idx if r[k][i] is not None]))  # noqa: E731
        ev = r.get("eval") or {}
        ap = f"{_f(ev.get('bbox_AP'), 1)} / {_f(ev.get('segm_AP'), 1)}" if ev else "n/a"
        bb = f"{m('backbone_rel_change', sub):.3f} / {m('backbone_rel_change', whole):.4f}"
        L.append(f"| {name} | {ap} | {r['num_detections']} | {m('e2e_mask_err', sub):.3f} | {m('e2e_mask_err', whole):.3f} | "
                 f"{max(v for v in r['e2e_mask_err'] if v is not None):.3f} | {m('e2e_miss', sub):.3f} | "
                 f"{m('given_mask_err', sub):.3f} | {m('given_mask_err', whole):.3f} | {max(r['given_mask_err']):.3f} | "
                 f"{m('given_soft_err', sub):.4f} | {bb} |")
    return L


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, title, rect=(0, 0, 1, 1)):
    """Title, lay out, write and close a figure (the tail every figure of this tool shares)."""
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def plot_translation(res, path):
    plt = _pyplot()

    names = res["operators"] + res["diagnostic_operators"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
    sb = res["single_box"]
    ax = axes[0]
    for name in names:
        ax.plot(sb["offsets_px"], sb["error"][name], label=name, **STYLE[name])
    for i, d in enumerate(sb["snap_changes_px"]):
        ax.axvline(d, color="#d62728", alpha=0.35, lw=0.8, label="RoIPool's snapped box changes" if i == 0 else None)
    ax.set_xlabel("shift d of box and content (px)")
    ax.set_ylabel("equivariance error (RMS, units of feature RMS)")
    ax.set_title(f"one box: 665 x 665 px at stride {sb['stride']} (the article's box)", fontsize=10)
    ax.set_xlim(0, sb["offsets_px"][-1])
    for ax, (s, t) in zip(axes[1:], res["translation"].items()):
        x = [d / int(s) for d in t["offsets_px"]]
        for name in names:
            ax.plot(x, t["rms"][name], marker="o", ms=2.5, label=name, **STYLE[name])
        ax.set_xlabel(f"shift d / stride (stride {s} px)")
        ax.set_title(f"stride {s}: RMS over {res['settings']['n_boxes']} random boxes and fields", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(bottom=0)
    for ax in axes:
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    _save(fig, path, "Translation equivariance: pool(content and box shifted by d) vs pool(content, box); "
          "0 = equivariant. d = one stride keeps the lattice: 0 for every operator.", rect=(0, 0.06, 1, 1))


def plot_scale(res, path):
    plt = _pyplot()

    names = res["operators"] + res["diagnostic_operators"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.0), sharey=True)
    for ax, (s, t) in zip(axes, res["scale"].items()):
        for name in names:
            ax.plot(t["scales"], t["rms"][name], marker="o", ms=2.5, label=name, **STYLE[name])
        ax.set_xscale("log", base=2)
        ax.set_xticks([0.5, 0.71, 1, 1.41, 2])
        ax.set_xticklabels(["0.5", "0.71", "1", "1.41", "2"])
        ax.set_xlabel("scale sigma of box and content (about the box centre)")
        ax.set_title(f"stride {s}: RMS over {res['settings']['n_boxes']} random boxes and fields", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("equivariance error (RMS, units of feature RMS)")
    axes[0].legend(fontsize=8)
    _save(fig, path, "Scale equivariance: pool(content and box scaled by sigma) vs pool(content, box), same 7 x 7 "
          "output; 0 = equivariant")


def plot_end_to_end(e2e, path):
    plt = _pyplot()

    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"]
    fig, axes = plt.subplots(1, 4, figsize=(23, 5.0))
    keys = [("e2e_mask_err", "end to end: 1 - mask IoU (matched detections)"),
            ("given_mask_err", "given box: 1 - mask IoU"),
            ("given_soft_err", "given box: mean |change| of the 28 x 28 mask probabilities"),
            ("backbone_rel_change", "backbone: relative change of the feature map\n(vs the unshifted map moved by d / stride cells)")]
    for ax, (k, title) in zip(axes, keys):
        for c, (name, r) in zip(colors, e2e.items()):
            ax.plot(r["shifts_px"], r[k], marker="o", ms=3, color=c, label=name)
        stride = next(iter(e2e.values()))["stride"]
        for d in next(iter(e2e.values()))["shifts_px"]:
            if d and d % stride == 0:
                ax.axvline(d, color="k", alpha=0.25, lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("shift of the image (px); grey lines: whole strides")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save(fig, path, "Trained models: masks of the shifted image vs the shifted masks of the unshifted image "
          "(0 = equivariant)")


def docs_block(res, cmd):
    s = summary(res)
    T, S = s["translation"], s["scale"]
    L = [f"Generated by `{cmd}` from `results/equivariance/equivariance.json` (full tables: "
         "`results/equivariance/equivariance.md`); do not edit by hand.", ""]
    L.append("| stride | operator | translation: error at d = s/2 | mean over 0 < d < s | at d = s | scale: error at sigma = 2 | "
             "sigma = 0.5 | mean over sigma in [0.5, 2] |")
    L.append("|---|---|---|---|---|---|---|---|")
    for stride in T:
        for name in res["operators"] + res["diagnostic_operators"]:
            t, c = T[stride][name], S[stride][name]
            L.append(f"| {stride} | {name} | {_f(t['half'])} | {_f(t['mean_sub'])} | {t['lattice']:.0e} | {_f(c['2'])} | "
                     f"{_f(c['0.5'])} | {_f(c['mean'])} |")
    L.append("")
    ref = "RoIAlign avg"
    for stride in T:
        t, c = T[stride], S[stride]
        L.append(f"* **Stride {stride}.** Translation (mean over sub-stride shifts): RoIPool's error is "
                 f"{t['RoIPool']['mean_sub'] / t[ref]['mean_sub']:.1f}x RoIAlign avg's ({_f(t['RoIPool']['mean_sub'])} vs "
                 f"{_f(t[ref]['mean_sub'])}), RoIWarp avg's {t['RoIWarp avg']['mean_sub'] / t[ref]['mean_sub']:.1f}x; with max "
                 f"aggregation RoIWarp max / RoIAlign max = {t['RoIWarp max']['mean_sub'] / t['RoIAlign max']['mean_sub']:.1f}x. "
                 f"Scale (mean over sigma): RoIPool {c['RoIPool']['mean'] / c[ref]['mean']:.1f}x, RoIWarp avg "
                 f"{c['RoIWarp avg']['mean'] / c[ref]['mean']:.1f}x RoIAlign avg's ({_f(c['RoIPool']['mean'])}, "
                 f"{_f(c['RoIWarp avg']['mean'])} vs {_f(c[ref]['mean'])}).")
    sb = s["single_box"]
    single = res["single_box"]
    L.append(f"* **One box** (665 px at stride {single['stride']}, steps of {single['offsets_px'][1]:g} px): RoIPool's curve jumps "
             f"by up to {_f(sb['RoIPool']['max_step'])} between neighbouring shifts (at d = {sb['RoIPool']['max_step_at_px']:g} px; "
             f"its snapped box changes at d = {', '.join(f'{v:g}' for v in single['snap_changes_px'])} px), RoIWarp avg's by "
             f"{_f(sb['RoIWarp avg']['max_step'])}; RoIAlign avg's changes by at most {_f(sb[ref]['max_step'])} per step (smooth) "
             f"and stays below {_f(sb[ref]['max'])} (RoIPool reaches {_f(sb['RoIPool']['max'])}).")
    sens = res["sensitivity"]
    for stride, rows in sens["half_stride_rms"].items():
        ratios = ", ".join(f"{rows['RoIPool'][i] / rows[ref][i]:.0f}x at {lam:g}" for i, lam in enumerate(sens["lam_min"]))
        L.append(f"* **Smoothness** (stride {stride}, d = s/2): RoIPool / RoIAlign avg = {ratios} cells minimum wavelength.")
    e2e = res.get("end_to_end")
    if e2e:
        L.append("")
        L.append(f"End to end (trained models; `{res.get('end_to_end_command', '--e2e')}`):")
        L.append("")
        L.extend(e2e_table(e2e))
        names = list(e2e)
        if len(names) >= 2:
            a = e2e[names[0]]
            sub = [i for i, d in enumerate(a["shifts_px"]) if d % a["stride"]]

            def m(r, k):
                return float(np.mean([r[k][i] for i in sub if r[k][i] is not None]))

            L.append("")
            for other in names[1:]:
                b = e2e[other]
                L.append(f"* Sub-stride shifts, {other} model / {names[0]} model: mask-head output change (given box) "
                         f"{m(b, 'given_soft_err') / m(a, 'given_soft_err'):.1f}x, 1 - mask IoU given box "
                         f"{m(b, 'given_mask_err') / m(a, 'given_mask_err'):.2f}x, end to end "
                         f"{m(b, 'e2e_mask_err') / m(a, 'e2e_mask_err'):.2f}x, missed detections "
                         f"{_f(m(b, 'e2e_miss'))} vs {_f(m(a, 'e2e_miss'))}; their backbones' own feature change "
                         f"{_f(m(b, 'backbone_rel_change'))} vs {_f(m(a, 'backbone_rel_change'))}.")
    return "\n".join(L)


def write_report(res, cmd, docs=True):
    os.makedirs(RESULTS_DIR, exist_ok=True)
    os.makedirs(IMAGES_DIR, exist_ok=True)
    with open(MD_PATH, "w") as f:
        f.write(f"# Equivariance of the RoI operators (generated by `{cmd}`)\n\n"
                f"Run: {res.get('date', '?')}, operators {res.get('wall_s', 0):.0f} s; torch {res.get('torch', '?')}; "
                f"{res.get('threads', '?')} torch thread(s); load average (1/5/15 min) at the start "
                f"{' / '.join(res.get('loadavg') or ['?'])}.\n\n")
        f.write(markdown_tables(res))
    plot_translation(res, os.path.join(IMAGES_DIR, "equivariance_translation.png"))
    plot_scale(res, os.path.join(IMAGES_DIR, "equivariance_scale.png"))
    if res.get("end_to_end"):
        plot_end_to_end(res["end_to_end"], os.path.join(IMAGES_DIR, "equivariance_end_to_end.png"))
    if docs:
        from tools.markdown_blocks import write_marked_block
        write_marked_block(DOCS_PATH, DOCS_BLOCK, docs_block(res, cmd))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", action="store_true", help="only redraw figures, tables and the docs block from the json")
    ap.add_argument("--e2e", action="append", default=[], metavar="NAME=CHECKPOINT",
                    help="also measure a trained model (config.yaml beside the checkpoint); repeatable")
    ap.add_argument("--e2e-images", type=int, default=50)
    ap.add_argument("--e2e-max-shift", type=int, default=32)
    ap.add_argument("--e2e-step", type=int, default=2)
    ap.add_argument("--skip-operators", action="store_true", help="keep the stored operator results (with --e2e)")
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite the block in docs/roi_ops.md")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the operator part (default 1: many small calls; the results do not "
                         "depend on it); the end-to-end part uses torch's default")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    cmd = "python tools/equivariance.py"
    old = None
    if os.path.isfile(JSON_PATH):
        with open(JSON_PATH) as f:
            old = json.load(f)
    if args.report:
        if old is None:
            raise SystemExit(f"{JSON_PATH} does not exist; run without --report first")
        write_report(old, cmd, docs=not args.no_docs)
        return
    if args.skip_operators:
        if old is None:
            raise SystemExit("--skip-operators needs a stored json")
        res = old
    else:
        load_at_start = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None
        default_threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        res = run_operators()
        torch.set_num_threads(default_threads)
        res.update(date=datetime.datetime.now().isoformat(timespec="seconds"), torch=torch.__version__,
                   loadavg=load_at_start,
                   threads=args.threads)
        if old and old.get("end_to_end") and not args.e2e:
            res["end_to_end"] = old["end_to_end"]  # the trained-model part is only rerun when asked
    if args.e2e:
        res["end_to_end"] = run_end_to_end(args.e2e, args.e2e_images, args.e2e_max_shift, args.e2e_step)
        res["end_to_end_command"] = " ".join(["python tools/equivariance.py"] + (sys.argv[1:] if argv is None else list(argv)))
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with atomic_open(JSON_PATH, "w") as f:
        json.dump(res, f, indent=1)
    write_report(res, cmd, docs=not args.no_docs)
    print(f"wrote {os.path.relpath(JSON_PATH, REPO)}, {os.path.relpath(MD_PATH, REPO)}, docs/images/equivariance_*.png"
          + ("" if args.no_docs else ", docs/roi_ops.md"))


if __name__ == "__main__":
    main()
