"""maskrcnn_plugin.paste: the fast CPU mask paste-back against detectron2's paste_masks_in_image and a
straightforward float64 reference, and the postprocessing / meta-architecture that use it."""
import copy

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from detectron2.layers import paste_masks_in_image
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

import maskrcnn_plugin.paste as paste_module
from maskrcnn_plugin.layers import _ext
from maskrcnn_plugin.paste import detector_postprocess_fast, paste_masks_in_image_fast

M = 28


@pytest.fixture(autouse=True, params=["cpp", "python"])
def backend(request, monkeypatch):
    """Every test runs on the compiled kernel and on the pure-PyTorch path."""
    if request.param == "cpp" and _ext.load_extension() is None:
        pytest.skip("C++ extension could not be built here")
    monkeypatch.setenv("MASKRCNN_PLUGIN_ROI_BACKEND", request.param)
    return request.param


def test_backend_dispatch(backend, monkeypatch):
    """The cpp backend runs the compiled kernel (the PyTorch path is never entered), float32 only."""
    if backend != "cpp":
        pytest.skip("dispatch is checked for the cpp backend")

    def fail(*args, **kwargs):
        raise AssertionError("pure-PyTorch path used")

    masks, boxes = smooth_masks(4, 1), random_boxes(4, 2, 50, 60, 3, 40)
    expected = paste_masks_in_image(masks, boxes, (50, 60))
    monkeypatch.setattr(paste_module, "_axis_samples", fail)
    assert torch.equal(paste_masks_in_image_fast(masks, boxes, (50, 60)), expected)
    with pytest.raises(AssertionError, match="pure-PyTorch"):
        paste_masks_in_image_fast(masks.double(), boxes.double(), (50, 60))


# --------------------------------------------------------------------------------------------------------
# Inputs and the float64 reference
# --------------------------------------------------------------------------------------------------------
def smooth_masks(n, seed, side=M, dtype=torch.float32):
    """Mask-head-like probabilities: sigmoid of smooth random logits, values spread over (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 1, 7, 7, generator=g) * 4
    return torch.sigmoid(F.interpolate(low, size=(side, side), mode="bilinear", align_corners=False))[:, 0].to(dtype)


def random_boxes(n, seed, img_h, img_w, min_size, max_size, overlap_image=True):
    """Boxes of side min_size..max_size centred anywhere in the image, so many stick out of it; with
    overlap_image every box shares at least part of a pixel row and column with the image (detectron2's
    paste raises on boxes wholly outside)."""
    g = torch.Generator().manual_seed(seed)
    wh = min_size + torch.rand(n, 2, generator=g) * (max_size - min_size)
    centre = torch.rand(n, 2, generator=g) * torch.tensor([img_w, img_h], dtype=torch.float32)
    boxes = torch.cat([centre - wh / 2, centre + wh / 2], 1)
    if overlap_image:
        boxes[:, 2] = boxes[:, 2].clamp(min=0.5)
        boxes[:, 3] = boxes[:, 3].clamp(min=0.5)
        boxes[:, 0] = boxes[:, 0].clamp(max=img_w - 0.5)
        boxes[:, 1] = boxes[:, 1].clamp(max=img_h - 0.5)
    return boxes


def reference_values(masks, boxes, img_h, img_w):
    """Float64, pixel by pixel as the definition reads: pixel (x, y) has centre (x + 0.5, y + 0.5) and reads
    the mask at ((x + 0.5 - x0) / (x1 - x0) * M - 0.5, likewise y) bilinearly, zero outside the mask; only
    detectron2's region [floor(x0) - 1, ceil(x1) + 1) x [floor(y0) - 1, ceil(y1) + 1) is written.
    Returns (N, H, W) float64 values (NaN outside the regions) and the region masks."""
    masks = masks.double().numpy()
    boxes = boxes.double().numpy()
    n, side = masks.shape[0], masks.shape[-1]
    values = np.full((n, img_h, img_w), np.nan)
    region = np.zeros((n, img_h, img_w), dtype=bool)
    for i in range(n):
        x0, y0, x1, y1 = boxes[i]
        xa, xb = max(int(np.floor(x0)) - 1, 0), min(int(np.ceil(x1)) + 1, img_w)
        ya, yb = max(int(np.floor(y0)) - 1, 0), min(int(np.ceil(y1)) + 1, img_h)
        if xa >= xb or ya >= yb:
            continue
        padded = np.pad(masks[i], 1)
        u = (np.arange(xa, xb) + 0.5 - x0) / (x1 - x0) * side - 0.5
        v = (np.arange(ya, yb) + 0.5 - y0) / (y1 - y0) * side - 0.5
        ui, vi = np.floor(u), np.floor(v)
        fu, fv = u - ui, v - vi
        ci = np.clip(ui.astype(np.int64) + 1, 0, side + 1), np.clip(ui.astype(np.int64) + 2, 0, side + 1)
        ri = np.clip(vi.astype(np.int64) + 1, 0, side + 1), np.clip(vi.astype(np.int64) + 2, 0, side + 1)
        top = padded[ri[0]][:, ci[0]] * (1 - fu) + padded[ri[0]][:, ci[1]] * fu
        bottom = padded[ri[1]][:, ci[0]] * (1 - fu) + padded[ri[1]][:, ci[1]] * fu
        values[i, ya:yb, xa:xb] = top * (1 - fv)[:, None] + bottom * fv[:, None]
        region[i, ya:yb, xa:xb] = True
    return values, region


def reference_paste(masks, boxes, img_h, img_w, threshold=0.5):
    values, region = reference_values(masks, boxes, img_h, img_w)
    return torch.from_numpy(region & (np.nan_to_num(values, nan=-1.0) >= threshold))


def per_instance_iou(a, b):
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def assert_disagreements_at_threshold(ours, theirs, masks, boxes, img_h, img_w, threshold, tol=2e-6):
    """Every pixel where the two results differ has an exact (float64) value within float32 rounding of the
    threshold: a flip there is rounding, not a different sampling."""
    diff = (ours != theirs).numpy()
    if not diff.any():
        return
    values, _ = reference_values(masks, boxes, img_h, img_w)
    near = np.abs(values[diff] - threshold)
    assert np.all(near < tol), f"{diff.sum()} differing pixels, largest distance to the threshold {near.max():.3g}"


# --------------------------------------------------------------------------------------------------------
# paste_masks_in_image_fast vs detectron2 and the reference
# --------------------------------------------------------------------------------------------------------
CASES = {
    # name: (n, min box side, max box side, image h, image w)
    "typical": (60, 8, 300, 240, 320),
    "partly_outside": (40, 50, 200, 120, 160),  # centres anywhere: most boxes cross an image border
    "tiny_subpixel": (60, 0.05, 0.99, 64, 64),
    "large": (8, 300, 900, 200, 260),  # larger than the image
    "mixed_odd_size": (50, 0.5, 250, 97, 131),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_paste_matches_detectron2_and_reference(case):
    n, lo, hi, img_h, img_w = CASES[case]
    seed = sorted(CASES).index(case)
    masks = smooth_masks(n, seed)
    boxes = random_boxes(n, seed + 100, img_h, img_w, lo, hi)
    theirs = paste_masks_in_image(masks, boxes, (img_h, img_w))
    ours = paste_masks_in_image_fast(masks, boxes, (img_h, img_w))
    assert ours.dtype == theirs.dtype == torch.bool and ours.shape == theirs.shape == (n, img_h, img_w)
    assert ours.is_contiguous()
    assert per_instance_iou(ours, theirs).min() >= 0.999
    exact = (ours == theirs).flatten(1).all(1).double().mean()
    assert exact >= 0.95, f"only {exact:.1%} of instances bit-identical"
    ref = reference_paste(masks, boxes, img_h, img_w)
    assert per_instance_iou(ours, ref).min() >= 0.999
    assert_disagreements_at_threshold(ours, theirs, masks, boxes, img_h, img_w, 0.5)
    assert_disagreements_at_threshold(ours, ref, masks, boxes, img_h, img_w, 0.5)


def test_values_near_threshold_differ_only_by_rounding():
    # Random-weight models give masks within ~1e-3 of 0.5; here 1e-4: some pixels are within float32
    # rounding of the threshold, and any disagreement must be at those.
    g = torch.Generator().manual_seed(5)
    masks = 0.5 + 1e-4 * torch.randn(40, M, M, generator=g)
    boxes = random_boxes(40, 6, 160, 200, 20, 150)
    theirs = paste_masks_in_image(masks, boxes, (160, 200))
    ours = paste_masks_in_image_fast(masks, boxes, (160, 200))
    assert (ours != theirs).double().mean() < 1e-3
    assert_disagreements_at_threshold(ours, theirs, masks, boxes, 160, 200, 0.5)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.9])
def test_other_thresholds(threshold):
    masks = smooth_masks(30, 7)
    boxes = random_boxes(30, 8, 100, 120, 3, 90)
    theirs = paste_masks_in_image(masks, boxes, (100, 120), threshold=threshold)
    ours = paste_masks_in_image_fast(masks, boxes, (100, 120), threshold=threshold)
    assert per_instance_iou(ours, theirs).min() >= 0.999
    assert_disagreements_at_threshold(ours, theirs, masks, boxes, 100, 120, threshold)
    if threshold == 0.0:  # every pixel of detectron2's region, including where the value is 0
        assert torch.equal(ours, theirs)


def test_negative_threshold_returns_uint8_values():
    masks = smooth_masks(20, 9)
    boxes = random_boxes(20, 10, 80, 90, 3, 60)
    theirs = paste_masks_in_image(masks, boxes, (80, 90), threshold=-1)
    ours = paste_masks_in_image_fast(masks, boxes, (80, 90), threshold=-1)
    assert ours.dtype == theirs.dtype == torch.uint8
    assert (ours.int() - theirs.int()).abs().max() <= 1  # truncation of value * 255 after rounding


def test_float64_masks_boxes_object_and_integer_masks():
    masks = smooth_masks(15, 11, dtype=torch.float64)
    boxes = random_boxes(15, 12, 70, 70, 2, 50).double()
    theirs = paste_masks_in_image(masks, Boxes(boxes), (70, 70))
    ours = paste_masks_in_image_fast(masks, Boxes(boxes), (70, 70))
    assert torch.equal(ours, theirs)
    binary = (smooth_masks(15, 13) > 0.5).to(torch.uint8)  # non-float masks are converted like detectron2
    assert torch.equal(
        paste_masks_in_image_fast(binary, boxes.float(), (70, 70)), paste_masks_in_image(binary, boxes.float(), (70, 70))
    )


def test_empty_input():
    for fn in (paste_masks_in_image, paste_masks_in_image_fast):
        out = fn(torch.zeros(0, M, M), torch.zeros(0, 4), (30, 40))
        assert out.shape == (0, 30, 40) and out.dtype == torch.uint8  # detectron2's (odd) empty dtype


def test_boxes_wholly_outside_and_degenerate():
    # detectron2 raises for a box wholly outside the image (its region becomes an inverted arange); the fast
    # paste gives an empty mask. Zero-width boxes give nothing in both (detectron2's grid is nan there).
    masks = smooth_masks(6, 14)
    boxes = torch.tensor(
        [[-50.0, 5, -10, 20], [70, 5, 90, 20], [5, 60, 20, 80], [10, 10, 10, 30], [5, 5, 5, 5], [10, 10, 30, 30]]
    )
    for threshold in (0.5, 0.0):
        ours = paste_masks_in_image_fast(masks, boxes, (40, 60), threshold=threshold)
        assert not ours[:5].any()
        assert torch.equal(ours[5], paste_masks_in_image(masks[5:], boxes[5:], (40, 60), threshold=threshold)[0])
    degenerate = paste_masks_in_image(masks[3:5], boxes[3:5], (40, 60), threshold=0.0)
    assert not degenerate.any()


# --------------------------------------------------------------------------------------------------------
# detector_postprocess_fast and the meta-architecture
# --------------------------------------------------------------------------------------------------------
def _raw_instances(n=25, image_size=(120, 160), seed=15):
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(n, seed, *image_size, 0, 80)
    boxes[3, 2] = boxes[3, 0]  # an empty box: detector_postprocess drops it
    boxes[4] = torch.tensor([170.0, 10, 190, 30])  # outside: clipped to an empty box, dropped
    inst = Instances(image_size)
    inst.pred_boxes = Boxes(boxes)
    inst.scores = torch.rand(n, generator=g)
    inst.pred_classes = torch.randint(0, 5, (n,), generator=g)
    inst.pred_masks = smooth_masks(n, seed + 1)[:, None]
    return inst


@pytest.mark.parametrize("out_size", [(120, 160), (240, 320), (90, 100)])
def test_detector_postprocess_fast_equals_detectron2(out_size):
    raw = _raw_instances()
    theirs = detector_postprocess(copy.deepcopy(raw), *out_size)
    ours = detector_postprocess_fast(copy.deepcopy(raw), *out_size)
    assert list(ours.get_fields()) == list(theirs.get_fields())
    assert ours.image_size == theirs.image_size and len(ours) == len(theirs) == len(raw) - 2
    assert torch.equal(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)
    assert torch.equal(ours.scores, theirs.scores) and torch.equal(ours.pred_classes, theirs.pred_classes)
    assert ours.pred_masks.dtype == theirs.pred_masks.dtype == torch.bool
    assert per_instance_iou(ours.pred_masks, theirs.pred_masks).min() >= 0.999


def test_detector_postprocess_fast_without_masks_or_detections():
    raw = _raw_instances()
    raw.remove("pred_masks")
    assert not detector_postprocess_fast(copy.deepcopy(raw), 120, 160).has("pred_masks")
    empty = _raw_instances()[:0]
    out = detector_postprocess_fast(empty, 120, 160)
    assert len(out) == 0 and out.pred_masks.shape == (0, 120, 160)


def test_meta_architecture_gives_detectron2_outputs():
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import META_ARCH_REGISTRY, build_model

    import maskrcnn_plugin

    assert META_ARCH_REGISTRY.get("GeneralizedRCNNFastPaste") is not None
    cfg = get_cfg()
    maskrcnn_plugin.add_maskrcnn_plugin_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS, cfg.MODEL.RESNETS.NORM = 18, 64, "BN"
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM, cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 64, 32
    cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 3, 30
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, cfg.TEST.DETECTIONS_PER_IMAGE = 0.0, 20
    cfg.MODEL.ROI_HEADS.NAME = "AblationStandardROIHeads"
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNFCNHead"
    torch.manual_seed(0)
    stock = build_model(cfg).eval()
    cfg_fast = cfg.clone()
    cfg_fast.MODEL.META_ARCHITECTURE = "GeneralizedRCNNFastPaste"
    fast = build_model(cfg_fast).eval()
    fast.load_state_dict(stock.state_dict(), strict=True)
    g = torch.Generator().manual_seed(0)
    # "height"/"width" differ from the input size, so the postprocessing rescales.
    inputs = [{"image": torch.randint(0, 255, (3, 64, 96), generator=g).float(), "height": 80, "width": 120}]
    with torch.no_grad():
        a = stock(inputs)[0]["instances"]
        b = fast(inputs)[0]["instances"]
        raw = fast.inference(inputs, do_postprocess=False)[0]
    assert len(a) == len(b) > 0 and b.image_size == (80, 120)
    assert list(a.get_fields()) == list(b.get_fields())
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)
    # Random weights put the probabilities within ~1e-3 of 0.5: allow rounding flips exactly at it.
    assert (a.pred_masks != b.pred_masks).double().mean() < 1e-3
    assert raw.pred_masks.shape[1:] == (1, 28, 28)  # do_postprocess=False: GeneralizedRCNN's raw outputs
