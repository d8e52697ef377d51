"""End-to-end CPU benchmark: maskrcnn_plugin vs stock detectron2 vs torchvision Mask R-CNN, side by side.

    .venv/bin/python benchmarks/bench_end_to_end.py                 # full run: writes json + docs/performance.md
    .venv/bin/python benchmarks/bench_end_to_end.py --quick         # smoke run (tiny sizes), prints only
    .venv/bin/python benchmarks/bench_end_to_end.py --roi-ops       # also re-runs benchmarks/bench_roi_ops.py

Everything runs in one invocation, on the same inputs, with `--threads` torch threads (default 2), warm-up
runs excluded, and the medians of `--repeats` repeats. The configurations are timed round-robin (one run of
each in turn), so background load affects them alike.

1. Inference, ms / image, batch of one image, under torch.no_grad(), Mask R-CNN R-50-FPN with random weights:
   * plugin: `configs/ablations/coco/2a/r50_fpn.yaml` (AblationStandardROIHeads, RoIAlign avg aligned,
     MaskRCNNFCNHead, sigmoid), pasted by detectron2's `detector_postprocess` and, on the same raw
     predictions, by `maskrcnn_plugin.paste.detector_postprocess_fast` ("plugin + fast paste");
   * detectron2: the model zoo's `COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml`, with the plugin
     model's weights copied in (the mask head's conv keys renamed), outputs checked identical;
   * torchvision: `maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)` (its own random weights);
   * "ours": the plugin model prepared as `train_net.py --eval-only` prepares it (`prepare_for_inference` with
     the config's defaults: BN folded, channels-last), with the fast paste; its outputs are compared with the
     unprepared model's (canonical order; raw mask probabilities too).
   Then the FLOP floor: the FLOP-bound stages' FLOPs (fvcore) over the attainable rate measured in the run.
   All three: score threshold 0, `--detections` per image, 1000 RPN proposals, NMS 0.5, RoIAlign sampling
   ratio `--sampling-ratio` (detectron2's zoo default would be 0 = adaptive; torchvision's is fixed at 2).
   The RPN's and box head's box-regression layers are zeroed in all three (see zero_box_regression: with
   random weights they would collapse all proposals onto the whole image).
   Inputs: `--images` generated "shapes" images upscaled 2x and cut to `--size` (H x W, default 800 x 1066),
   already at test scale, so no model resizes them. Time per stage: preprocess (normalise / pad), backbone,
   RPN, box branch (RoI pooling + head + box inference with NMS; pooling also shown alone), mask branch
   (pooling + head + mask inference), paste (postprocess: rescale boxes, paste masks into the image).
2. Paste-back alone: the fast paste vs detectron2's vs torchvision's `paste_masks_in_image` (which returns
   float probabilities, no threshold) on the plugin's raw predictions of each image, and on a synthetic
   workload with COCO-like box sizes (the random-weight detections are anchor-sized, mostly 32-64 px, which
   understates the paste cost of real detections), with the agreement of the fast paste's masks with
   detectron2's (per-instance IoU, share of identical instances).
3. Training, s / iteration (forward + backward + SGD step, no data loading) of the CPU-scale default
   `configs/shapes/mask_rcnn_R18_FPN_shapes.yaml` and of the stride-32 `configs/shapes/mask_rcnn_R18_C5_shapes.yaml`:
   plugin vs the same model with stock detectron2 heads (StandardROIHeads + ROIAlignV2 with the same sampling
   ratio + MaskRCNNConvUpsampleHead) and vs those heads with ROIPool; same weights, same batches (generated
   shapes images, SOLVER.IMS_PER_BATCH of them), same RNG seed per iteration (so the same RoIs are sampled);
   the first iteration's losses of plugin and stock ROIAlignV2 are compared; the FLOP floor of one plugin
   iteration (torch's FlopCounterMode, forward and backward) over the attainable rate.
4. Peak resident memory: each configuration in its own fresh subprocess (same weights and inputs, loaded
   from files). Once the model is built and the inputs are loaded, the kernel's peak-RSS mark is reset
   (/proc/self/clear_refs = 5); VmHWM is read after the measured runs (--mem-runs passes over all images,
   or training iterations; the first includes one-time lazy allocations). Reported: RSS before the runs
   (libraries + model + inputs), peak RSS during them, and the difference (the working memory of inference /
   a training iteration).
   Where clear_refs is not writable the peak is the process's lifetime peak and the output says so.
5. `--roi-ops` re-runs the RoI operator micro-benchmark `benchmarks/bench_roi_ops.py` (with `--quick`,
   `--no-write` passed through) and records its output.

Ratios are ours / peer (below 1: ours is faster / smaller). Output: markdown tables on stdout; unless
--no-write, a json (--json, default results/performance/end_to_end.json) and the markdown section between
the PERF markers of --doc (default docs/performance.md); --out DIR writes DIR/end_to_end.json and
DIR/end_to_end.md instead. --quick writes nothing unless --json / --doc / --out are given.
"""
import argparse
import copy
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_roofline: the attainable rate, FLOP counts

import detectron2  # noqa: E402
from detectron2 import model_zoo  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.postprocessing import detector_postprocess  # noqa: E402
from detectron2.solver import build_optimizer  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import maskrcnn_plugin  # noqa: E402
from maskrcnn_plugin import compat  # noqa: E402
from maskrcnn_plugin.data.shapes import shapes_params  # noqa: E402
from maskrcnn_plugin.data.shapes_render import render_image  # noqa: E402
from maskrcnn_plugin.inference import prepare_for_inference  # noqa: E402
from maskrcnn_plugin.layers import _ext  # noqa: E402
from maskrcnn_plugin.paste import detector_postprocess_fast, paste_masks_in_image_fast  # noqa: E402,F401

PLUGIN_R50 = "configs/ablations/coco/2a/r50_fpn.yaml"
STOCK_R50 = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
TRAIN_CFG = "configs/shapes/mask_rcnn_R18_FPN_shapes.yaml"
# Training is also timed on the stride-32 C5 model, where the RoIAlign-vs-ROIPool cost was measured.
TRAIN_CFGS = [TRAIN_CFG, "configs/shapes/mask_rcnn_R18_C5_shapes.yaml"]
TRAIN_MODELS = ["plugin", "detectron2 heads", "detectron2 heads, ROIPool"]
STAGES = ["preprocess", "backbone", "rpn", "box", "box_pool", "mask", "mask_pool", "paste", "total"]
STAGE_LABELS = {
    "preprocess": "preprocess (normalise, pad)",
    "backbone": "backbone (ResNet-50 + FPN)",
    "rpn": "RPN (+ proposal NMS)",
    "box": "box branch (pool + head + NMS)",
    "box_pool": "&nbsp;&nbsp;of which RoI pooling",
    "mask": "mask branch (pool + FCN + sigmoid)",
    "mask_pool": "&nbsp;&nbsp;of which RoI pooling",
    "paste": "paste-back / postprocess",
    "total": "**total**",
}
MARK_START = "<!-- PERF:START (generated by benchmarks/bench_end_to_end.py) -->"
MARK_END = "<!-- PERF:END -->"


# ------------------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------------------
def settings_from_args(args):
    if args.quick:
        s = dict(size=(160, 213), images=1, repeats=1, warmup=1, detections=10, proposals=100,
                 train_size=128, train_batch=2, train_repeats=1, train_warmup=1, mem_runs=1)
    else:
        s = dict(size=(800, 1066), images=3, repeats=5, warmup=1, detections=100, proposals=1000,
                 train_size=256, train_batch=None, train_repeats=5, train_warmup=2, mem_runs=2)
    for key in ("images", "repeats", "warmup", "detections", "train_repeats", "train_warmup", "mem_runs"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.size is not None:
        s["size"] = tuple(args.size)
    s.update(threads=args.threads, sampling_ratio=args.sampling_ratio, seed=args.seed, quick=bool(args.quick))
    return s


# ------------------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------------------
def make_images(n, size, seed):
    """n RGB uint8 (H, W, 3) arrays: crowded shapes images rendered at half the size, upscaled 2x (bilinear)
    and cut to H x W."""
    h, w = size
    side = (max(h, w) + 1) // 2
    params = shapes_params(seed, n, image_size=max(side, 32), min_instances=12, max_instances=20,
                           max_size_frac=0.4, min_size=max(4, min(12, side // 8)))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img, _ = render_image(rng, params)
        big = Image.fromarray(img).resize((2 * params["image_size"],) * 2, Image.BILINEAR)
        out.append(np.ascontiguousarray(np.asarray(big)[:h, :w]))
    return out


def synthetic_predictions(n, size, seed, side=28):
    """Raw detectron2 predictions with COCO-like box sizes for the paste-alone comparison: box sides
    log-uniform in [16, 640] px, aspect ratio log-uniform in [1/2, 2], centres anywhere (boxes clipped to the
    image like real detections), smooth soft masks (sigmoid of upsampled random logits)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    scale = min(1.0, max(h, w) / 1066)  # --quick: shrink with the image
    area_side = torch.exp(torch.empty(n).uniform_(np.log(16 * scale), np.log(640 * scale), generator=g))
    aspect = torch.exp(torch.empty(n).uniform_(np.log(0.5), np.log(2.0), generator=g))
    bw, bh = area_side * aspect.sqrt(), area_side / aspect.sqrt()
    cx, cy = torch.rand(n, generator=g) * w, torch.rand(n, generator=g) * h
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    boxes = Boxes(boxes)
    boxes.clip((h, w))
    logits = torch.nn.functional.interpolate(torch.randn(n, 1, 7, 7, generator=g) * 4, size=(side, side),
                                             mode="bilinear", align_corners=False)
    inst = Instances((h, w))
    inst.pred_boxes = boxes
    inst.scores = torch.rand(n, generator=g)
    inst.pred_classes = torch.randint(0, 80, (n,), generator=g)
    inst.pred_masks = logits.sigmoid()
    return inst


def box_side_stats(instances):
    b = torch.cat([i.pred_boxes.tensor for i in instances])
    if len(b) == 0:
        return {}
    sides = ((b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)).sqrt()
    return {"min": sides.min().item(), "median": sides.median().item(), "max": sides.max().item()}


def d2_inputs(images_rgb):
    # detectron2 configs use BGR (INPUT.FORMAT); already at test scale, so "height"/"width" = the input size.
    return [{"image": torch.from_numpy(im[:, :, ::-1].copy()).permute(2, 0, 1).float(), "height": im.shape[0],
             "width": im.shape[1]} for im in images_rgb]


def tv_inputs(images_rgb):
    return [torch.from_numpy(im).permute(2, 0, 1).float() / 255.0 for im in images_rgb]


def make_train_batches(num_batches, batch, size, seed):
    """Batches of detectron2 training inputs (BGR image + gt Instances with bitmask masks) from the shapes
    generator at the training config's image size."""
    params = shapes_params(seed, num_batches * batch, image_size=size, min_size=max(4, min(12, size // 8)))
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(num_batches):
        items = []
        for _ in range(batch):
            img, insts = render_image(rng, params)
            masks = np.stack([i["mask"] for i in insts]) if insts else np.zeros((0, size, size), bool)
            boxes = []
            for m in masks:
                ys, xs = np.nonzero(m)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            inst = Instances((size, size))
            inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.gt_classes = torch.tensor([params["classes"].index(i["category"]) for i in insts], dtype=torch.int64)
            inst.gt_masks = BitMasks(torch.from_numpy(masks))
            items.append({"image": torch.from_numpy(img[:, :, ::-1].copy()).permute(2, 0, 1).float(),
                          "instances": inst})
        batches.append(items)
    return batches


# ------------------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------------------
def _common_test_settings(cfg, s):
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = s["detections"]
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = s["proposals"]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = s["proposals"]


def r50_configs(s, fast_paste=False):
    """(plugin cfg, stock detectron2 cfg) for the inference comparison."""
    plugin = get_cfg()
    maskrcnn_plugin.add_maskrcnn_plugin_config(plugin)
    plugin.merge_from_file(str(ROOT / PLUGIN_R50))
    _common_test_settings(plugin, s)
    plugin.MODEL.ROI_EXTRACTOR.SAMPLING_RATIO = s["sampling_ratio"]
    # The plugin's configs use the fast paste; "plugin" here pastes like detectron2 unless fast_paste.
    plugin.MODEL.META_ARCHITECTURE = "GeneralizedRCNNFastPaste" if fast_paste else "GeneralizedRCNN"
    stock = get_cfg()
    stock.merge_from_file(model_zoo.get_config_file(STOCK_R50))
    _common_test_settings(stock, s)
    stock.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = s["sampling_ratio"]
    stock.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = s["sampling_ratio"]
    return plugin, stock


def train_configs(s, config_file=TRAIN_CFG):
    """(plugin cfg, stock-heads cfg) for the training comparison: a CPU-scale config (default: the README's
    model), and the same config with detectron2's own heads and pooler."""
    plugin = get_cfg()
    maskrcnn_plugin.add_maskrcnn_plugin_config(plugin)
    plugin.merge_from_file(str(ROOT / config_file))
    plugin.MODEL.DEVICE = "cpu"
    plugin.MODEL.WEIGHTS = ""
    stock = plugin.clone()
    stock.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    stock.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    for head in (stock.MODEL.ROI_BOX_HEAD, stock.MODEL.ROI_MASK_HEAD):
        head.POOLER_TYPE = "ROIAlignV2"
        head.POOLER_SAMPLING_RATIO = plugin.MODEL.ROI_EXTRACTOR.SAMPLING_RATIO
    stock.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    return plugin, stock


def stock_to_plugin_keys(state):
    """detectron2's MaskRCNNConvUpsampleHead names its convs mask_fcn1..n; MaskRCNNFCNHead names them convs.0..n-1."""
    out = {}
    for k, v in state.items():
        if ".mask_head.mask_fcn" in k:
            pre, rest = k.split(".mask_head.mask_fcn", 1)
            idx, tail = rest.split(".", 1)
            k = f"{pre}.mask_head.convs.{int(idx) - 1}.{tail}"
        out[k] = v
    return out


def zero_box_regression(rpn_deltas, box_deltas):
    """Random weights make the backbone's features large (~1e3) and the random box deltas then stretch every
    proposal to the whole image: NMS leaves a handful of RoIs and no valid detection. With the two
    regression layers zeroed (they still run, at the same cost) proposals are anchors and detections are
    proposals, which gives a realistic number and spread of RoIs; all other weights stay random."""
    with torch.no_grad():
        for layer in (rpn_deltas, box_deltas):
            layer.weight.zero_()
            layer.bias.zero_()


def build_pair(cfg_plugin, cfg_stock, seed, inference=False):
    """Stock model with seeded random weights, and the plugin model with exactly those weights."""
    torch.manual_seed(seed)
    stock = build_model(cfg_stock)
    if inference:
        zero_box_regression(stock.proposal_generator.rpn_head.anchor_deltas, stock.roi_heads.box_predictor.bbox_pred)
    plugin = build_model(cfg_plugin)
    plugin.load_state_dict(stock_to_plugin_keys(stock.state_dict()), strict=True)
    return plugin, stock


def build_torchvision(s, seed):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(seed)
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0, box_detections_per_img=s["detections"],
        rpn_pre_nms_top_n_test=s["proposals"], rpn_post_nms_top_n_test=s["proposals"], min_size=s["size"][0],
        max_size=max(1333, max(s["size"])),
    )
    if s["sampling_ratio"] != 2:  # torchvision's MultiScaleRoIAlign default
        for pool in (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool):
            pool.sampling_ratio = s["sampling_ratio"]
    zero_box_regression(model.rpn.head.bbox_pred, model.roi_heads.box_predictor.bbox_pred)
    return model


# ------------------------------------------------------------------------------------------------------------
# Staged inference (each function calls the library's own stage methods, in the order its forward does)
# ------------------------------------------------------------------------------------------------------------
class PoolTimer:
    """Accumulates the wall time spent inside given modules (forward pre/post hooks)."""

    def __init__(self, modules):
        self.total = {name: 0.0 for name in modules}
        self._start = {}
        for name, mod in modules.items():
            mod.register_forward_pre_hook(self._pre(name))
            mod.register_forward_hook(self._post(name))

    def _pre(self, name):
        def hook(mod, inp):
            self._start[name] = time.perf_counter()
        return hook

    def _post(self, name):
        def hook(mod, inp, out):
            self.total[name] += time.perf_counter() - self._start.pop(name)
        return hook

    def reset(self):
        for k in self.total:
            self.total[k] = 0.0


def d2_staged(model, timer, inputs, paste_variants=None):
    """GeneralizedRCNN.inference split into stages. Returns (stage seconds, postprocessed results, raw
    results). paste_variants: {name: fn(raw instances, h, w) -> instances}, each timed on its own copy of the
    same raw predictions; the first one's output is returned and its time is the "paste" stage."""
    t = {}
    timer.reset()
    t0 = time.perf_counter()
    images = model.preprocess_image(inputs)
    t1 = time.perf_counter()
    features = model.backbone(images.tensor)
    t2 = time.perf_counter()
    proposals, _ = model.proposal_generator(images, features, None)
    t3 = time.perf_counter()
    instances = compat.box_inference(model.roi_heads, features, proposals)
    t4 = time.perf_counter()
    instances = model.roi_heads.forward_with_given_boxes(features, instances)
    t5 = time.perf_counter()
    t.update(preprocess=t1 - t0, backbone=t2 - t1, rpn=t3 - t2, box=t4 - t3, mask=t5 - t4,
             box_pool=timer.total["box"], mask_pool=timer.total["mask"])
    variants = paste_variants or {"detectron2": detector_postprocess}
    outputs, paste_times = {}, {}
    for name, fn in variants.items():
        raws = [copy.deepcopy(r) for r in instances]  # postprocessing rescales boxes in place
        p0 = time.perf_counter()
        outputs[name] = [fn(r, x.get("height", r.image_size[0]), x.get("width", r.image_size[1]))
                         for r, x in zip(raws, inputs)]
        paste_times[name] = time.perf_counter() - p0
    first = next(iter(variants))
    t["paste"] = paste_times[first]
    t["total"] = sum(t[k] for k in ("preprocess", "backbone", "rpn", "box", "mask", "paste"))
    return t, paste_times, outputs, instances


def tv_paste(raw, h, w):
    """torchvision's paste as its transform.postprocess calls it (float probabilities, no threshold)."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste_masks

    return tv_paste_masks(raw.pred_masks, raw.pred_boxes.tensor, (h, w))


def tv_staged(model, images):
    """torchvision MaskRCNN eval forward split into stages (RoIHeads.forward's eval path, module by module)."""
    from torchvision.models.detection.roi_heads import maskrcnn_inference

    t = {}
    rh = model.roi_heads
    t0 = time.perf_counter()
    original_sizes = [tuple(im.shape[-2:]) for im in images]
    batch, _ = model.transform(images, None)
    t1 = time.perf_counter()
    features = model.backbone(batch.tensors)
    t2 = time.perf_counter()
    proposals, _ = model.rpn(batch, features, None)
    t3 = time.perf_counter()
    feats = rh.box_roi_pool(features, proposals, batch.image_sizes)
    tp = time.perf_counter()
    class_logits, box_regression = rh.box_predictor(rh.box_head(feats))
    boxes, scores, labels = rh.postprocess_detections(class_logits, box_regression, proposals, batch.image_sizes)
    t4 = time.perf_counter()
    mfeats = rh.mask_roi_pool(features, boxes, batch.image_sizes)
    tm = time.perf_counter()
    probs = maskrcnn_inference(rh.mask_predictor(rh.mask_head(mfeats)), labels)
    t5 = time.perf_counter()
    dets = [{"boxes": b, "labels": l, "scores": s, "masks": m} for b, l, s, m in zip(boxes, labels, scores, probs)]
    dets = model.transform.postprocess(dets, batch.image_sizes, original_sizes)
    t6 = time.perf_counter()
    t.update(preprocess=t1 - t0, backbone=t2 - t1, rpn=t3 - t2, box=t4 - t3, box_pool=tp - t3, mask=t5 - t4,
             mask_pool=tm - t4, paste=t6 - t5, total=t6 - t0)
    return t, dets


# ------------------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------------------
def compare_d2_outputs(a, b):
    """Max differences between two lists of postprocessed detectron2 outputs (same model weights)."""
    r = {"same_count": True, "box_max_abs": 0.0, "score_max_abs": 0.0, "classes_equal": True, "mask_pixels_differing": 0}
    for x, y in zip(a, b):
        if len(x) != len(y):
            r["same_count"] = False
            continue
        if len(x) == 0:
            continue
        r["box_max_abs"] = max(r["box_max_abs"], (x.pred_boxes.tensor - y.pred_boxes.tensor).abs().max().item())
        r["score_max_abs"] = max(r["score_max_abs"], (x.scores - y.scores).abs().max().item())
        r["classes_equal"] &= bool(torch.equal(x.pred_classes, y.pred_classes))
        r["mask_pixels_differing"] += int((x.pred_masks != y.pred_masks).sum())
    return r


def mask_agreement(a, b):
    """Per-instance IoU of two lists of postprocessed outputs' masks: min IoU, share identical."""
    ious, same = [], []
    for x, y in zip(a, b):
        m, n = x.pred_masks, y.pred_masks
        inter = (m & n).flatten(1).sum(1).double()
        union = (m | n).flatten(1).sum(1).double()
        ious += torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).tolist()
        same += (m == n).flatten(1).all(1).tolist()
    return {"instances": len(ious), "min_iou": min(ious) if ious else 1.0,
            "identical_share": (sum(same) / len(same)) if same else 1.0}


def prepared_agreement(plugin, prepared, inputs, plugin_outputs):
    """How the prepared model's outputs differ from the plugin's, detections put in one canonical order (random
    weights give tied scores, whose order top-k may break either way): the postprocessed differences, and the
    largest difference of the raw mask probabilities (a pasted pixel can flip only where its probability is
    within that of the threshold)."""
    from bench_roofline import canonical_order

    a = [canonical_order(o) for o in plugin_outputs]
    b = [canonical_order(prepared([x])[0]["instances"]) for x in inputs]
    out = compare_d2_outputs(a, b)
    raw_a = [canonical_order(r) for r in plugin.inference(inputs, do_postprocess=False)]
    raw_b = [canonical_order(r) for r in prepared.inference(inputs, do_postprocess=False)]
    out["raw_mask_probability_max_abs"] = max(
        ((x.pred_masks - y.pred_masks).abs().max().item() if len(x) == len(y) and len(x) else 0.0)
        for x, y in zip(raw_a, raw_b))
    return out


# ------------------------------------------------------------------------------------------------------------
# 1 + 2: inference
# ------------------------------------------------------------------------------------------------------------
def bench_inference(s, log):
    images = make_images(s["images"], s["size"], s["seed"])
    inputs_d2 = d2_inputs(images)
    inputs_tv = tv_inputs(images)
    cfg_plugin, cfg_stock = r50_configs(s)
    plugin, stock = build_pair(cfg_plugin, cfg_stock, s["seed"], inference=True)
    tv = build_torchvision(s, s["seed"])
    for m in (plugin, stock, tv):
        m.eval()
    # The plugin as `train_net.py --eval-only` runs it: the inference speedups its config turns on by default.
    prepared = prepare_for_inference(copy.deepcopy(plugin), cfg_plugin)
    timers = {name: PoolTimer({"box": m.roi_heads.box_pooler, "mask": m.roi_heads.mask_pooler})
              for name, m in (("plugin", plugin), ("prepared", prepared), ("detectron2", stock))}
    plugin_pastes = {"detectron2": detector_postprocess, "fast": detector_postprocess_fast, "torchvision": tv_paste}

    synth = [synthetic_predictions(s["detections"], s["size"], s["seed"] + 10 + i) for i in range(len(images))]
    checks = {}
    with torch.no_grad():
        # Checks (untimed): the staged calls reproduce each model's forward; plugin == stock; fast paste ~ stock.
        ref_plugin = [plugin([x])[0]["instances"] for x in inputs_d2]
        ref_stock = [stock([x])[0]["instances"] for x in inputs_d2]
        ref_tv = [tv([x])[0] for x in inputs_tv]
        staged_plugin = [d2_staged(plugin, timers["plugin"], [x], plugin_pastes)[2] for x in inputs_d2]
        staged_stock = [d2_staged(stock, timers["detectron2"], [x])[2]["detectron2"][0] for x in inputs_d2]
        staged_tv = [tv_staged(tv, [x])[1][0] for x in inputs_tv]
        checks["plugin_staged_vs_forward"] = compare_d2_outputs(ref_plugin, [o["detectron2"][0] for o in staged_plugin])
        checks["stock_staged_vs_forward"] = compare_d2_outputs(ref_stock, staged_stock)
        checks["torchvision_staged_vs_forward_box_max_abs"] = max(
            float("inf") if a["boxes"].shape != b["boxes"].shape else
            (a["boxes"] - b["boxes"]).abs().max().item() if len(a["boxes"]) else 0.0 for a, b in zip(ref_tv, staged_tv))
        checks["plugin_vs_stock_same_weights"] = compare_d2_outputs(ref_plugin, ref_stock)
        checks["prepared_vs_plugin"] = prepared_agreement(plugin, prepared, inputs_d2, ref_plugin)
        checks["fast_paste_vs_detectron2_paste"] = mask_agreement(
            [o["fast"][0] for o in staged_plugin], [o["detectron2"][0] for o in staged_plugin])
        checks["plugin_detection_box_side_px"] = box_side_stats(ref_plugin)
        checks["synthetic_box_side_px"] = box_side_stats(synth)
        checks["fast_paste_vs_detectron2_paste_synthetic"] = mask_agreement(
            [detector_postprocess_fast(copy.deepcopy(r), *r.image_size) for r in synth],
            [detector_postprocess(copy.deepcopy(r), *r.image_size) for r in synth])
        checks["detections_per_image"] = {
            "plugin": [len(x) for x in ref_plugin], "detectron2": [len(x) for x in ref_stock],
            "torchvision": [len(x["boxes"]) for x in ref_tv]}
        log(f"checks: {json.dumps(checks)}")

        samples = {k: {st: [] for st in STAGES} for k in ("plugin", "prepared", "detectron2", "torchvision")}
        paste_samples = {k: [] for k in plugin_pastes}
        prepared_paste_samples = {k: [] for k in ("detectron2", "fast")}
        synth_samples = {k: [] for k in plugin_pastes}
        for rep in range(s["warmup"] + s["repeats"]):
            per = {k: {st: [] for st in STAGES} for k in samples}
            per_paste = {k: [] for k in plugin_pastes}
            per_prepared_paste = {k: [] for k in prepared_paste_samples}
            per_synth = {k: [] for k in plugin_pastes}
            for i in range(len(images)):
                t, pt, _, _ = d2_staged(plugin, timers["plugin"], [inputs_d2[i]], plugin_pastes)
                for st in STAGES:
                    per["plugin"][st].append(t[st])
                for k in plugin_pastes:
                    per_paste[k].append(pt[k])
                t, pt, _, _ = d2_staged(prepared, timers["prepared"], [inputs_d2[i]],
                                        {k: plugin_pastes[k] for k in prepared_paste_samples})
                for st in STAGES:
                    per["prepared"][st].append(t[st])
                for k in prepared_paste_samples:
                    per_prepared_paste[k].append(pt[k])
                t = d2_staged(stock, timers["detectron2"], [inputs_d2[i]])[0]
                for st in STAGES:
                    per["detectron2"][st].append(t[st])
                t = tv_staged(tv, [inputs_tv[i]])[0]
                for st in STAGES:
                    per["torchvision"][st].append(t[st])
                for k, fn in plugin_pastes.items():
                    raw = copy.deepcopy(synth[i])
                    p0 = time.perf_counter()
                    fn(raw, *raw.image_size)
                    per_synth[k].append(time.perf_counter() - p0)
            tag = "warm-up" if rep < s["warmup"] else f"repeat {rep - s['warmup'] + 1}/{s['repeats']}"
            log(f"inference {tag}: " + ", ".join(f"{k} {1e3 * statistics.mean(v['total']):.0f} ms" for k, v in per.items()))
            if rep >= s["warmup"]:
                for k in samples:
                    for st in STAGES:
                        samples[k][st].append(statistics.mean(per[k][st]))
                for k in plugin_pastes:
                    paste_samples[k].append(statistics.mean(per_paste[k]))
                    synth_samples[k].append(statistics.mean(per_synth[k]))
                for k in prepared_paste_samples:
                    prepared_paste_samples[k].append(statistics.mean(per_prepared_paste[k]))

    med = {k: {st: 1e3 * statistics.median(v[st]) for st in STAGES} for k, v in samples.items()}

    def with_fast_paste(name, pastes):
        """`name`'s stages with the fast paste timed on the same raw predictions."""
        fast = dict(med[name])
        fast["paste"] = 1e3 * statistics.median(pastes["fast"])
        fast["total"] = 1e3 * statistics.median(
            [tot - d2p + fp for tot, d2p, fp in zip(samples[name]["total"], pastes["detectron2"], pastes["fast"])])
        return fast
    med = {"prepared_fast_paste": with_fast_paste("prepared", prepared_paste_samples),
           "plugin_fast_paste": with_fast_paste("plugin", paste_samples), **med}
    paste_med = {k: 1e3 * statistics.median(v) for k, v in paste_samples.items()}
    synth_med = {k: 1e3 * statistics.median(v) for k, v in synth_samples.items()}
    log("FLOP floor: counting the stages' FLOPs and measuring the attainable rate")
    return {"ms_per_image": med, "paste_ms_per_image": paste_med, "paste_synthetic_ms_per_image": synth_med,
            "checks": checks, "flop_floor": flop_floor(s, plugin),
            "samples_s": {k: v["total"] for k, v in samples.items()}}


def flop_floor(s, model):
    """The least time the model's FLOP-bound stages could take here: their FLOPs (fvcore, bench_roofline's
    stages: backbone + FPN, RPN head, box head + predictor on the proposals, mask head on the detections) over
    this machine's attainable float32 rate, measured now (bench_roofline.attainable). No layout or fusion brings
    direct float32 convolutions below it; only less arithmetic would."""
    from bench_roofline import flops, stages

    div = model.backbone.size_divisibility
    padded = tuple(-(-x // div) * div for x in s["size"])
    _, _, named = stages(model, s["quick"], size=padded, rois=(s["proposals"], s["detections"]))
    with torch.no_grad():
        gflop = {name: flops(m, inputs) / 1e9 for name, m, inputs in named if name != "ResNet-50 (bottom-up)"}
    best = attainable_rate(s)
    return {"padded_size": list(padded), "gflop": gflop, "attainable": _ATTAINABLE["kernels"], "attainable_gflops": best,
            "floor_ms": 1e3 * sum(gflop.values()) / best}


# ------------------------------------------------------------------------------------------------------------
# 3: training
# ------------------------------------------------------------------------------------------------------------
def _train_iteration(model, optimizer, batch, seed):
    torch.manual_seed(seed)  # same RoI / anchor sampling for both models
    t0 = time.perf_counter()
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    t1 = time.perf_counter()
    optimizer.zero_grad()
    total.backward()
    t2 = time.perf_counter()
    optimizer.step()
    t3 = time.perf_counter()
    return {"forward": t1 - t0, "backward": t2 - t1, "step": t3 - t2, "iteration": t3 - t0}, \
        {k: float(v.detach()) for k, v in losses.items()}


def _optimizer(cfg, model):
    # A constant, small learning rate (the config's first warm-up value): random weights plus the full base
    # LR could diverge within a few iterations and change the work (NaN boxes).
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.BASE_LR = cfg.SOLVER.BASE_LR * cfg.SOLVER.WARMUP_FACTOR
    return build_optimizer(cfg, model)


def train_batch_size(s, cfg):
    return s["train_batch"] or cfg.SOLVER.IMS_PER_BATCH


def bench_training(s, log):
    return {cfg: _bench_training_config(s, log, cfg) for cfg in TRAIN_CFGS}


def _bench_training_config(s, log, config_file):
    """Plugin (RoIAlign) vs stock heads with ROIAlignV2 (same weights: outputs must agree) and with ROIPool
    (the cheap stock operator: the issue's target is RoIAlign training at no more than its cost)."""
    cfg_plugin, cfg_stock = train_configs(s, config_file)
    plugin, stock = build_pair(cfg_plugin, cfg_stock, s["seed"])
    cfg_pool = cfg_stock.clone()
    for head in (cfg_pool.MODEL.ROI_BOX_HEAD, cfg_pool.MODEL.ROI_MASK_HEAD):
        head.POOLER_TYPE = "ROIPool"
    stock_pool = build_model(cfg_pool)
    stock_pool.load_state_dict(stock.state_dict(), strict=True)
    batch = train_batch_size(s, cfg_plugin)
    n_iter = s["train_warmup"] + s["train_repeats"]
    batches = make_train_batches(min(n_iter, 4), batch, s["train_size"], s["seed"] + 1)
    models = {"plugin": (plugin.train(), _optimizer(cfg_plugin, plugin)),
              "detectron2 heads": (stock.train(), _optimizer(cfg_stock, stock)),
              "detectron2 heads, ROIPool": (stock_pool.train(), _optimizer(cfg_pool, stock_pool))}
    samples = {k: {p: [] for p in ("forward", "backward", "step", "iteration")} for k in models}
    first_losses = {}
    for it in range(n_iter):
        for name, (model, opt) in models.items():
            t, losses = _train_iteration(model, opt, batches[it % len(batches)], s["seed"] + it)
            if it == 0:
                first_losses[name] = losses
            if it >= s["train_warmup"]:
                for p in t:
                    samples[name][p].append(t[p])
        log(f"training {config_file} iteration {it + 1}/{n_iter}" + (" (warm-up)" if it < s["train_warmup"] else ""))
    a, b = first_losses["plugin"], first_losses["detectron2 heads"]
    loss_diff = {k: abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in a}
    log(f"training {config_file}: FLOP floor")
    return {"s_per_iter": {k: {p: statistics.median(v) for p, v in d.items()} for k, d in samples.items()},
            "samples_s": {k: d["iteration"] for k, d in samples.items()},
            "first_iteration_losses": first_losses, "first_iteration_loss_rel_diff": loss_diff,
            "batch": batch, "image_size": s["train_size"],
            "flop_floor": training_flop_floor(s, *models["plugin"], batches[0])}


def training_flop_floor(s, model, optimizer, batch):
    """One more training iteration of `model` under torch's FlopCounterMode (convolutions, matmuls of forward
    and backward; a multiply-add = 2 FLOPs; RoI pooling and the elementwise work are not counted) over this
    machine's attainable rate: the least time the iteration's arithmetic could take here."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        _train_iteration(model, optimizer, batch, s["seed"])
    rate = attainable_rate(s)
    gflop = counter.get_total_flops() / 1e9
    return {"gflop": gflop, "attainable_gflops": rate, "floor_s": gflop / rate}


_ATTAINABLE = {}


def attainable_rate(s):
    """This machine's attainable float32 GFLOP/s (bench_roofline.attainable: the better of a large GEMM and a
    large 3x3 convolution), measured once per run."""
    from bench_roofline import attainable

    if "rate" not in _ATTAINABLE:
        _ATTAINABLE["kernels"] = attainable(s["quick"], repeats=3)
        _ATTAINABLE["rate"] = max(v["gflops"] for v in _ATTAINABLE["kernels"].values())
    return _ATTAINABLE["rate"]


# ------------------------------------------------------------------------------------------------------------
# 4: memory (one subprocess per configuration)
# ------------------------------------------------------------------------------------------------------------
MEM_CONFIGS = ["infer:plugin", "infer:plugin_fast_paste", "infer:detectron2", "infer:torchvision",
               "train:plugin", "train:detectron2 heads"]


def _vm_hwm_kib():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]), "VmHWM"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"


def _vm_rss_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def mem_child(config, workdir):
    """Runs in a fresh process: prints a json line with the peak RSS of the measured runs of `config`."""
    s = json.loads((Path(workdir) / "settings.json").read_text())
    s["size"] = tuple(s["size"])
    torch.set_num_threads(s["threads"])
    kind, name = config.split(":", 1)
    with torch.no_grad() if kind == "infer" else _nullcontext():
        if kind == "infer":
            images = torch.load(Path(workdir) / "images.pt", weights_only=False)
            if name == "torchvision":
                model = build_torchvision(s, s["seed"]).eval()
                model.load_state_dict(torch.load(Path(workdir) / "tv.pt"))
                inputs = tv_inputs(images)
                run = lambda: [model([x]) for x in inputs]  # noqa: E731
            else:
                cfg_plugin, cfg_stock = r50_configs(s, fast_paste=(name == "plugin_fast_paste"))
                state = torch.load(Path(workdir) / "d2.pt")
                if name == "detectron2":
                    model = build_model(cfg_stock)
                    model.load_state_dict(state)
                else:
                    model = build_model(cfg_plugin)
                    model.load_state_dict(stock_to_plugin_keys(state))
                model.eval()
                inputs = d2_inputs(images)
                run = lambda: [model([x]) for x in inputs]  # noqa: E731
        else:
            cfg_plugin, cfg_stock = train_configs(s)
            cfg = cfg_plugin if name == "plugin" else cfg_stock
            state = torch.load(Path(workdir) / "train.pt")
            model = build_model(cfg).train()
            model.load_state_dict(stock_to_plugin_keys(state) if name == "plugin" else state)
            opt = _optimizer(cfg, model)
            batches = torch.load(Path(workdir) / "train_batches.pt", weights_only=False)
            state = None
            counter = [0]

            def run():
                for b in batches:
                    _train_iteration(model, opt, b, s["seed"] + counter[0])
                    counter[0] += 1

        state = None
        gc.collect()
        # Peak-RSS mark := current RSS (model, inputs, libraries), then the first run (with its one-time lazy
        # allocations) and the further runs. Measuring only after a warm-up would hide the working memory
        # that the allocator keeps from the warm-up.
        reset = True
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            reset = False
        before = _vm_rss_kib()
        for _ in range(s["mem_runs"]):
            run()
        peak, source = _vm_hwm_kib()
    print(json.dumps({"config": config, "rss_before_mib": before / 1024, "peak_rss_mib": peak / 1024,
                      "increase_mib": (peak - before) / 1024, "source": source, "peak_reset": reset,
                      "lifetime_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


@contextmanager
def _nullcontext():
    yield


def bench_memory(s, log):
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as work:
        work = Path(work)
        (work / "settings.json").write_text(json.dumps(s))
        torch.save(make_images(s["images"], s["size"], s["seed"]), work / "images.pt")
        cfg_plugin, cfg_stock = r50_configs(s)
        torch.save(build_pair(cfg_plugin, cfg_stock, s["seed"], inference=True)[1].state_dict(), work / "d2.pt")
        torch.save(build_torchvision(s, s["seed"]).state_dict(), work / "tv.pt")
        tp, ts = train_configs(s)
        torch.manual_seed(s["seed"])
        torch.save(build_model(ts).state_dict(), work / "train.pt")
        torch.save(make_train_batches(1, train_batch_size(s, tp), s["train_size"], s["seed"] + 1), work / "train_batches.pt")
        for config in MEM_CONFIGS:
            p = subprocess.run([sys.executable, __file__, "--mem-child", config, str(work)],
                               capture_output=True, text=True, cwd=ROOT)
            try:
                results[config] = json.loads(p.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                results[config] = {"error": (p.stderr or p.stdout)[-2000:]}
            log(f"memory {config}: {results[config].get('peak_rss_mib', float('nan')):.0f} MiB peak")
    return results


# ------------------------------------------------------------------------------------------------------------
# 5: RoI operator micro-benchmark
# ------------------------------------------------------------------------------------------------------------
def run_roi_ops(args, log):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_roi_ops.py")]
    if args.quick:
        cmd += ["--quick", "--repeats", "1"]
    if args.quick or args.no_write:
        cmd.append("--no-write")
    env = dict(os.environ, MASKRCNN_PLUGIN_ROI_BACKEND="cpp")
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    log(p.stdout[-4000:])
    shown = [str(Path(c).relative_to(ROOT)) if c.startswith(str(ROOT)) else c for c in cmd[1:]]
    return {"command": "MASKRCNN_PLUGIN_ROI_BACKEND=cpp .venv/bin/python " + " ".join(shown),
            "returncode": p.returncode, "stdout_tail": p.stdout[-6000:], "stderr_tail": p.stderr[-2000:]}


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------
def cpu_model():
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ratio(a, b):
    return f"{a / b:.2f}" if b and b > 0 else "n/a"


def render_markdown(res):
    s, lines = res["settings"], []
    lines += [
        f"Command: `{res['command']}`",
        "",
        f"Machine: {res['machine']['cpu']}, {res['machine']['logical_cpus']} logical CPUs, "
        f"torch threads = {s['threads']}; torch {res['machine']['torch']}, torchvision {res['machine']['torchvision']}, "
        f"detectron2 {res['machine']['detectron2']}; plugin RoI backend: {res['machine']['roi_backend']}. "
        f"Run {res['date']}, {res['wall_s']:.0f} s; load average (1 min) {res['load'][0]:.2f} before, {res['load'][1]:.2f} after.",
        "",
    ]
    if s["quick"]:
        lines += ["**Smoke run (--quick): tiny sizes, not a measurement.**", ""]
    if "inference" in res:
        inf = res["inference"]
        m = inf["ms_per_image"]
        h, w = s["size"]
        lines += [
            f"### Inference, ms / image (R-50-FPN, {h} x {w} input, {s['images']} images, batch 1, median of "
            f"{s['repeats']} repeats after {s['warmup']} warm-up; {s['detections']} detections / image, score "
            f"threshold 0, RoIAlign sampling ratio {s['sampling_ratio']})",
            "",
            "| stage | ours: --eval-only defaults | plugin + fast paste, unprepared | plugin (detectron2 paste) "
            "| detectron2 stock | torchvision | ours / detectron2 | ours / torchvision |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        has_prepared = "prepared_fast_paste" in m  # runs before the inference defaults existed lack it
        for st in STAGES:
            pf, pl, d2, tv = (m[k][st] for k in ("plugin_fast_paste", "plugin", "detectron2", "torchvision"))
            ours = m["prepared_fast_paste"][st] if has_prepared else pf
            lines.append(f"| {STAGE_LABELS[st]} | {ours:.1f} | {pf:.1f} | {pl:.1f} | {d2:.1f} | {tv:.1f} "
                         f"| {_ratio(ours, d2)} | {_ratio(ours, tv)} |")
        det = inf["checks"]["detections_per_image"]
        lines += ["", "\"ours\" = the plugin as `train_net.py --eval-only` runs it: `prepare_for_inference` "
                  "(TEST.FOLD_BATCHNORM, TEST.CHANNELS_LAST: on by default) and the fast paste; \"unprepared\" is the same "
                  "model without them. torchvision's paste row is its `transform.postprocess` (float masks, no"
                  " threshold). Detections per image: " + "; ".join(f"{k} {v}" for k, v in det.items()) + "."]
        if "prepared_vs_plugin" in inf["checks"]:
            pc = inf["checks"]["prepared_vs_plugin"]
            lines += ["", f"Prepared vs unprepared outputs (detections in a canonical order): same count "
                      f"{pc['same_count']}, classes equal {pc['classes_equal']}, largest box difference "
                      f"{pc['box_max_abs']:.1e} px, score {pc['score_max_abs']:.1e}, raw mask probability "
                      f"{pc['raw_mask_probability_max_abs']:.1e}, pasted mask pixels differing "
                      f"{pc['mask_pixels_differing']} (a pixel can flip only where its probability is within the "
                      "raw difference of the threshold)."]
        if "flop_floor" in inf:
            fl = inf["flop_floor"]
            d2_total = m["detectron2"]["total"]
            ours_total = m["prepared_fast_paste" if has_prepared else "plugin_fast_paste"]["total"]
            parts = ", ".join(f"{k} {v:.1f}" for k, v in fl["gflop"].items())
            rates = ", ".join(f"{k} {v['gflops']:.0f}" for k, v in fl["attainable"].items())
            lines += ["", f"**FLOP floor.** The FLOP-bound stages on the padded {fl['padded_size'][0]} x "
                      f"{fl['padded_size'][1]} input ({parts} GFLOP; {sum(fl['gflop'].values()):.1f} in all) at the "
                      f"attainable rate measured in this run ({fl['attainable_gflops']:.0f} GFLOP/s, the best of "
                      f"{rates}) take {fl['floor_ms']:.0f} ms = {_ratio(fl['floor_ms'], d2_total)} of stock "
                      f"detectron2's total, with nothing else run (ours: {_ratio(ours_total, fl['floor_ms'])} times "
                      "the floor). A ratio to detectron2 below the floor's needs less arithmetic, not faster "
                      "kernels."]
        pm, ps = inf["paste_ms_per_image"], inf["paste_synthetic_ms_per_image"]
        ck = inf["checks"]
        side = lambda d: f"{d.get('min', 0):.0f} / {d.get('median', 0):.0f} / {d.get('max', 0):.0f}"  # noqa: E731
        agree = lambda a: (f"{a['instances']} instances, min IoU {a['min_iou']:.6f}, "  # noqa: E731
                           f"{100 * a['identical_share']:.1f}% identical")
        lines += [
            "",
            f"### Paste-back alone, ms / image ({s['detections']} masks / image)",
            "",
            "| implementation | model's predictions | fast / this | COCO-like boxes | fast / this |",
            "|---|---:|---:|---:|---:|",
            f"| `maskrcnn_plugin.paste.detector_postprocess_fast` | {pm['fast']:.1f} | 1.00 | {ps['fast']:.1f} | 1.00 |",
            f"| detectron2 `detector_postprocess` (`paste_masks_in_image`) | {pm['detectron2']:.1f} | "
            f"{_ratio(pm['fast'], pm['detectron2'])} | {ps['detectron2']:.1f} | {_ratio(ps['fast'], ps['detectron2'])} |",
            f"| torchvision `paste_masks_in_image` (float, no threshold) | {pm['torchvision']:.1f} | "
            f"{_ratio(pm['fast'], pm['torchvision'])} | {ps['torchvision']:.1f} | {_ratio(ps['fast'], ps['torchvision'])} |",
            "",
            f"Box sides (sqrt of area, min / median / max px): model's predictions {side(ck['plugin_detection_box_side_px'])}"
            f" (random weights: anchor-sized boxes), COCO-like {side(ck['synthetic_box_side_px'])}.",
            f"Fast vs detectron2 masks: model's predictions {agree(ck['fast_paste_vs_detectron2_paste'])}; COCO-like "
            f"{agree(ck['fast_paste_vs_detectron2_paste_synthetic'])}. Plugin vs detectron2 stock outputs (same weights): "
            f"{json.dumps(ck['plugin_vs_stock_same_weights'])}.",
        ]
    for config_file, tr in res.get("training", {}).items():
        sp = tr["s_per_iter"]
        a, b, c = (sp[k] for k in TRAIN_MODELS)
        lines += [
            "",
            f"### Training, s / iteration (`{config_file}`, batch {tr['batch']} x {tr['image_size']} px, median of "
            f"{s['train_repeats']} after {s['train_warmup']} warm-up; no data loading)",
            "",
            "| part | plugin (RoIAlign) | detectron2 heads, ROIAlignV2 | detectron2 heads, ROIPool "
            "| plugin / detectron2 ROIAlignV2 | plugin / detectron2 ROIPool |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for p in ("forward", "backward", "step", "iteration"):
            lines.append(f"| {p} | {a[p]:.3f} | {b[p]:.3f} | {c[p]:.3f} | {_ratio(a[p], b[p])} | {_ratio(a[p], c[p])} |")
        worst = max(tr["first_iteration_loss_rel_diff"].values()) if tr["first_iteration_loss_rel_diff"] else 0.0
        lines += ["", "First iteration, plugin vs detectron2 ROIAlignV2 heads (same weights and batch): largest relative "
                  f"loss difference {worst:.1e}."]
        if "flop_floor" in tr:
            fl = tr["flop_floor"]
            lines += ["", f"**FLOP floor.** One plugin iteration's convolutions and matmuls, forward and backward "
                      f"(torch's FlopCounterMode), are {fl['gflop']:.1f} GFLOP: at the attainable rate measured in this "
                      f"run ({fl['attainable_gflops']:.0f} GFLOP/s) {fl['floor_s']:.3f} s = "
                      f"{_ratio(fl['floor_s'], b['iteration'])} of the stock ROIAlignV2 iteration, with nothing else "
                      f"run (ours: {_ratio(a['iteration'], fl['floor_s'])} times the floor)."]
    if "memory" in res:
        mem = res["memory"]
        lines += [
            "",
            "### Peak resident memory (fresh process per configuration; MiB)",
            "",
            "| configuration | RSS before measured runs | peak RSS during them | increase |",
            "|---|---:|---:|---:|",
        ]
        for cfg in MEM_CONFIGS:
            r = mem.get(cfg, {})
            if "peak_rss_mib" in r:
                lines.append(f"| {cfg} | {r['rss_before_mib']:.0f} | {r['peak_rss_mib']:.0f} | {r['increase_mib']:.0f} |")
            else:
                lines.append(f"| {cfg} | error | error | error |")
        pk = lambda c: mem.get(c, {}).get("peak_rss_mib")  # noqa: E731
        pairs = [("infer:plugin_fast_paste", "infer:detectron2"), ("infer:plugin_fast_paste", "infer:torchvision"),
                 ("train:plugin", "train:detectron2 heads")]
        lines += ["", "Peak ratios (ours / peer): " + "; ".join(
            f"{a} / {b} = {_ratio(pk(a), pk(b)) if pk(a) and pk(b) else 'n/a'}" for a, b in pairs) + ".",
            "Source: " + ", ".join(sorted({
                r["source"] + (" (mark reset before the runs)" if r.get("peak_reset") else " (lifetime peak)")
                for r in mem.values() if "source" in r})) + "."]
    if "roi_ops" in res:
        ro = res["roi_ops"]
        lines += ["", f"RoI operator micro-benchmark re-run: `{ro['command']}` (exit code {ro['returncode']})."]
    return "\n".join(lines)


def write_doc(path, block):
    path = Path(path)
    text = path.read_text() if path.exists() else "# Performance\n"
    a, b = text.find("<!-- PERF:START"), text.find(MARK_END)
    block = f"{MARK_START}\n{block}\n{MARK_END}"
    text = text[:a] + block + text[b + len(MARK_END):] if a >= 0 and b >= 0 else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 repeat; writes nothing by default")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (all runs and subprocesses)")
    ap.add_argument("--repeats", type=int, help="inference repeats (median); default 5")
    ap.add_argument("--warmup", type=int, help="inference warm-up rounds, excluded; default 1")
    ap.add_argument("--images", type=int, help="number of inference images; default 3")
    ap.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="inference input size; default 800 1066")
    ap.add_argument("--detections", type=int, help="detections per image for all models; default 100")
    ap.add_argument("--sampling-ratio", type=int, default=2, help="RoIAlign samples per bin side, all models")
    ap.add_argument("--train-repeats", type=int, help="timed training iterations; default 5")
    ap.add_argument("--train-warmup", type=int, help="untimed training iterations first; default 2")
    ap.add_argument("--mem-runs", type=int, help="runs over all images (training: iterations) per memory child; default 2")
    ap.add_argument("--skip", nargs="*", default=[], choices=["inference", "training", "memory"])
    ap.add_argument("--roi-ops", action="store_true", help="also re-run benchmarks/bench_roi_ops.py")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="json output (default results/performance/end_to_end.json; none with --quick)")
    ap.add_argument("--doc", help="markdown file whose PERF section is replaced (default docs/performance.md; none with --quick)")
    ap.add_argument("--out", help="directory: write end_to_end.json and end_to_end.md there instead of the defaults")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--mem-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.mem_child:
        mem_child(*args.mem_child)
        return
    s = settings_from_args(args)
    t_start, load_before = time.time(), os.getloadavg()

    def log(msg):
        print(f"[{time.time() - t_start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    res = {"settings": s}
    if "inference" not in args.skip:
        res["inference"] = bench_inference(s, log)
    if "training" not in args.skip:
        res["training"] = bench_training(s, log)
    if "memory" not in args.skip:
        res["memory"] = bench_memory(s, log)
    if args.roi_ops:
        res["roi_ops"] = run_roi_ops(args, log)
    res.update(
        command=" ".join([".venv/bin/python benchmarks/bench_end_to_end.py"] + list(sys.argv[1:] if argv is None else argv)),
        date=time.strftime("%Y-%m-%d %H:%M"), wall_s=time.time() - t_start, load=[load_before[0], os.getloadavg()[0]],
        machine={"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                 "torch": torch.__version__, "torchvision": torchvision.__version__, "detectron2": detectron2.__version__,
                 "python": platform.python_version(), "nice": os.nice(0),
                 "roi_backend": "C++ extension" if _ext.load_extension() is not None else "pure PyTorch"},
    )
    md = render_markdown(res)
    print(md)
    if args.no_write:
        return res
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "end_to_end.md").write_text(md + "\n")
        print(f"wrote {Path(args.out) / 'end_to_end.md'}", file=sys.stderr)
    default_json = None if args.quick or args.out else str(ROOT / "results" / "performance" / "end_to_end.json")
    json_path = args.json or (str(Path(args.out) / "end_to_end.json") if args.out else default_json)
    doc_path = args.doc or (None if args.quick or args.out else str(ROOT / "docs" / "performance.md"))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(res, indent=1, default=float) + "\n")
        print(f"wrote {json_path}", file=sys.stderr)
    if doc_path:
        write_doc(doc_path, md)
        print(f"wrote {doc_path}", file=sys.stderr)
    return res


if __name__ == "__main__":
    main()
