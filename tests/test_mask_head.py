"""Tests of maskrcnn_plugin.mask_head: the FCN/MLP mask heads and the sigmoid/softmax mask losses.

Losses are checked against float64 references written with explicit per-pixel formulas, shapes and
parameter counts against closed forms, and every head x loss combination is trained for a few SGD steps
inside detectron2's own Mask R-CNN (model-zoo yaml, shrunk to R18 and tiny inputs) under StandardROIHeads
(FPN) and Res5ROIHeads (C4).
"""
import math

import pytest
import torch

from detectron2 import model_zoo
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, build_mask_head
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import maskrcnn_plugin.mask_head as mh
from maskrcnn_plugin.config import get_plugin_cfg

HEADS = ("MaskRCNNFCNHead", "MaskRCNNMLPHead")
LOSSES = ("sigmoid", "softmax")

# The test machines have 2 CPU cores shared with other jobs; more threads than cores only adds contention.
torch.set_num_threads(min(2, torch.get_num_threads()))


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def _cfg(head="MaskRCNNFCNHead", loss="sigmoid", agnostic=False, num_classes=3, zoo=None):
    cfg = get_plugin_cfg()
    if zoo:
        cfg.merge_from_file(model_zoo.get_config_file(zoo))
    cfg.MODEL.ROI_MASK_HEAD.NAME = head
    cfg.MODEL.ROI_MASK_HEAD.LOSS = loss
    cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = agnostic
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    return cfg


def _training_rois(masks_per_image, classes_per_image, boxes_per_image=None):
    """Instances as the ROI heads hand them to the mask head in training (fg RoIs with gt fields)."""
    out = []
    for i, (masks, classes) in enumerate(zip(masks_per_image, classes_per_image)):
        n, h, w = masks.shape
        inst = Instances((h, w))
        if boxes_per_image is None:
            boxes = torch.tensor([[0.0, 0.0, w, h]]).repeat(n, 1)
        else:
            boxes = boxes_per_image[i]
        inst.proposal_boxes = Boxes(boxes)
        inst.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
        inst.gt_masks = BitMasks(masks)
        out.append(inst)
    return out


def _random_problem(num_channels, m=4, rois=(2, 3), num_classes=3, seed=0):
    """Random float64 logits and full-image RoIs whose crop_and_resize target is the bitmask itself."""
    g = torch.Generator().manual_seed(seed)
    masks = [torch.rand(r, m, m, generator=g) > 0.5 for r in rois]
    classes = [torch.randint(0, num_classes, (r,), generator=g) for r in rois]
    logits = torch.randn(sum(rois), num_channels, m, m, generator=g, dtype=torch.float64)
    return logits, masks, classes


def _ref_sigmoid_loss(logits, masks, classes, agnostic):
    """Float64 reference of the paper's L_mask with explicit loops: BCE on the gt class's channel only."""
    gt = torch.cat(masks)
    cls = torch.cat(classes)
    total, count = 0.0, 0
    for r in range(logits.shape[0]):
        c = 0 if agnostic else int(cls[r])
        for i in range(logits.shape[2]):
            for j in range(logits.shape[3]):
                x = float(logits[r, c, i, j])
                y = float(gt[r, i, j])
                p = 1.0 / (1.0 + math.exp(-x))
                total += -(y * math.log(p) + (1 - y) * math.log(1 - p))
                count += 1
    return total / count


def _ref_softmax_loss(logits, masks, classes, agnostic):
    """Float64 reference of the multinomial loss: target = gt class inside the mask, background (last) outside."""
    gt = torch.cat(masks)
    cls = torch.cat(classes)
    num_channels = logits.shape[1]
    total, count = 0.0, 0
    for r in range(logits.shape[0]):
        fg = 0 if agnostic else int(cls[r])
        for i in range(logits.shape[2]):
            for j in range(logits.shape[3]):
                target = fg if bool(gt[r, i, j]) else num_channels - 1
                z = [float(logits[r, k, i, j]) for k in range(num_channels)]
                log_norm = math.log(sum(math.exp(v) for v in z))
                total += -(z[target] - log_norm)
                count += 1
    return total / count


# ----------------------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------------------
def test_full_image_box_target_is_the_bitmask():
    # The loss references below rely on this: a full-image proposal box at the mask's own resolution.
    _, masks, _ = _random_problem(3, m=5)
    bm = BitMasks(masks[0])
    out = bm.crop_and_resize(torch.tensor([[0.0, 0.0, 5.0, 5.0]]).repeat(len(masks[0]), 1), 5)
    assert torch.equal(out, masks[0])


@pytest.mark.parametrize("agnostic", [False, True])
def test_sigmoid_loss_matches_reference(agnostic):
    logits, masks, classes = _random_problem(1 if agnostic else 3)
    loss = mh.mask_rcnn_sigmoid_loss(logits, _training_rois(masks, classes))
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(_ref_sigmoid_loss(logits, masks, classes, agnostic), abs=1e-12, rel=1e-12)
    # The dispatch is the same function.
    loss2 = mh.mask_rcnn_plugin_loss(logits, _training_rois(masks, classes), loss="sigmoid")
    assert loss2.item() == loss.item()


@pytest.mark.parametrize("agnostic", [False, True])
def test_softmax_loss_matches_reference(agnostic):
    logits, masks, classes = _random_problem(2 if agnostic else 4)  # K + 1 (or 2) channels, bg last
    loss = mh.mask_rcnn_softmax_loss(logits, _training_rois(masks, classes))
    assert loss.item() == pytest.approx(_ref_softmax_loss(logits, masks, classes, agnostic), abs=1e-12, rel=1e-12)
    loss2 = mh.mask_rcnn_plugin_loss(logits, _training_rois(masks, classes), loss="softmax")
    assert loss2.item() == loss.item()


@pytest.mark.parametrize("loss_name", LOSSES)
def test_targets_are_cropped_to_the_proposal_box(loss_name):
    # Object fills the right half of an 8x8 image; a proposal on that half sees an all-foreground target,
    # a proposal on the left half an all-background one.
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, :, 4:] = True
    boxes = torch.tensor([[4.0, 0.0, 8.0, 8.0], [0.0, 0.0, 4.0, 8.0]])
    rois = _training_rois([mask], [torch.tensor([1, 1])], [boxes])
    channels = 3 if loss_name == "sigmoid" else 4
    logits = torch.randn(2, channels, 4, 4, dtype=torch.float64)
    expected_targets = [torch.ones(1, 4, 4, dtype=torch.bool), torch.zeros(1, 4, 4, dtype=torch.bool)]
    ref = _ref_sigmoid_loss if loss_name == "sigmoid" else _ref_softmax_loss
    expected = ref(logits, [torch.cat(expected_targets)], [torch.tensor([1, 1])], False)
    assert mh.mask_rcnn_plugin_loss(logits, rois, loss_name).item() == pytest.approx(expected, rel=1e-12)


def test_sigmoid_gradient_only_reaches_gt_class():
    logits, masks, classes = _random_problem(3)
    logits.requires_grad_(True)
    mh.mask_rcnn_sigmoid_loss(logits, _training_rois(masks, classes)).backward()
    cls = torch.cat(classes)
    for r in range(logits.shape[0]):
        for k in range(3):
            g = logits.grad[r, k]
            if k == cls[r]:
                assert g.abs().sum() > 0
            else:
                assert torch.count_nonzero(g) == 0  # exactly zero, not just small


def test_softmax_gradient_reaches_every_channel():
    logits, masks, classes = _random_problem(4)
    logits.requires_grad_(True)
    mh.mask_rcnn_softmax_loss(logits, _training_rois(masks, classes)).backward()
    # Every class channel (and background) of every RoI gets gradient: the classes compete.
    assert (logits.grad.abs().sum(dim=(2, 3)) > 0).all()


@pytest.mark.parametrize("loss_name", LOSSES)
def test_loss_without_rois_is_zero_and_differentiable(loss_name):
    logits = torch.randn(0, 4, 6, 6, requires_grad=True)
    empty = Instances((10, 10))
    empty.proposal_boxes = Boxes(torch.zeros(0, 4))
    empty.gt_classes = torch.zeros(0, dtype=torch.int64)
    empty.gt_masks = BitMasks(torch.zeros(0, 10, 10, dtype=torch.bool))
    loss = mh.mask_rcnn_plugin_loss(logits, [empty], loss_name)
    assert loss.item() == 0.0
    loss.backward()


def test_training_statistics_are_logged_when_a_storage_exists():
    logits, masks, classes = _random_problem(4)
    with EventStorage() as storage:
        mh.mask_rcnn_softmax_loss(logits.float(), _training_rois(masks, classes))
        assert "mask_rcnn/accuracy" in storage.latest()


# ----------------------------------------------------------------------------------------------------------
# heads: registry, config validation, shapes, parameter counts
# ----------------------------------------------------------------------------------------------------------
def test_heads_are_registered():
    for name in HEADS:
        assert issubclass(ROI_MASK_HEAD_REGISTRY.get(name), mh.MaskRCNNPluginBaseHead)


def test_invalid_loss_raises_value_error_naming_the_key():
    cfg = _cfg(loss="l2")
    with pytest.raises(ValueError, match=r"MODEL\.ROI_MASK_HEAD\.LOSS.*'sigmoid'.*'softmax'"):
        build_mask_head(cfg, ShapeSpec(channels=8, height=14, width=14))
    with pytest.raises(ValueError, match=r"MODEL\.ROI_MASK_HEAD\.LOSS"):
        mh.MaskRCNNFCNHead(ShapeSpec(channels=8), num_classes=3, conv_dims=[8], loss="l2")
    with pytest.raises(ValueError, match=r"MODEL\.ROI_MASK_HEAD\.LOSS"):
        mh.mask_rcnn_plugin_loss(torch.zeros(1, 1, 2, 2), [], loss="l2")


# (setting, input ShapeSpec as detectron2's ROI heads pass it, real feature side, output side)
SETTINGS = {
    # StandardROIHeads + FPN: 14x14 RoIAlign on 256-channel FPN levels.
    "fpn": ("StandardROIHeads", ShapeSpec(channels=256, height=14, width=14), 14, 28),
    # AblationRes5ROIHeads + C4: 14x14 pooling, halved to 7x7 x 2048 by res5, which is the size it reports.
    "c4": ("AblationRes5ROIHeads", ShapeSpec(channels=2048, height=7, width=7), 7, 14),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("loss_name", LOSSES)
def test_output_shapes(setting, head, agnostic, loss_name):
    roi_heads, shape, side, out_side = SETTINGS[setting]
    num_classes = 5
    cfg = _cfg(head, loss_name, agnostic, num_classes)
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 4 if setting == "fpn" else 0
    cfg.MODEL.ROI_MASK_HEAD.MLP_DIMS = [16, 16]  # the flatten -> fc1 weight stays small for C4
    model = build_mask_head(cfg, shape).eval()
    x = torch.randn(3, shape.channels, side, side)
    with torch.no_grad():
        logits = model.layers(x)
    expected_channels = (1 if agnostic else num_classes) + (1 if loss_name == "softmax" else 0)
    assert logits.shape == (3, expected_channels, out_side, out_side)

    inst = [Instances((50, 50), pred_classes=torch.tensor([4, 0])), Instances((50, 50), pred_classes=torch.tensor([2]))]
    with torch.no_grad():
        out = model(x, inst)
    assert [tuple(i.pred_masks.shape) for i in out] == [(2, 1, out_side, out_side), (1, 1, out_side, out_side)]


def test_fcn_head_matches_the_paper_layout():
    head = mh.MaskRCNNFCNHead(ShapeSpec(channels=256), num_classes=80, conv_dims=[256] * 5)
    assert len(head.convs) == 4
    assert all(c.kernel_size == (3, 3) and c.out_channels == 256 for c in head.convs)
    assert head.deconv.kernel_size == (2, 2) and head.deconv.stride == (2, 2)
    assert head.predictor.kernel_size == (1, 1) and head.predictor.out_channels == 80
    n_params = sum(p.numel() for p in head.parameters())
    assert n_params == 4 * (256 * 256 * 9 + 256) + (256 * 256 * 4 + 256) + (256 * 80 + 80)


def test_fcn_norm_from_config():
    cfg = _cfg("MaskRCNNFCNHead")
    cfg.MODEL.ROI_MASK_HEAD.NORM = "GN"
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    head = build_mask_head(cfg, ShapeSpec(channels=32, height=14, width=14))
    assert len(head.convs) == 2
    assert all(isinstance(c.norm, torch.nn.GroupNorm) and c.bias is None for c in head.convs)


def _mlp_params(c, side, dims, channels, m):
    sizes = [c * side * side] + list(dims) + [channels * m * m]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


@pytest.mark.parametrize("dims", [[1024, 1024], [1024, 1024, 1024]])
@pytest.mark.parametrize("loss_name", LOSSES)
def test_mlp_parameter_count_closed_form(dims, loss_name):
    num_classes = 2
    cfg = _cfg("MaskRCNNMLPHead", loss_name, num_classes=num_classes)
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"  # get_cfg()'s default is Res5ROIHeads (7x7 features)
    cfg.MODEL.ROI_MASK_HEAD.MLP_DIMS = dims
    head = build_mask_head(cfg, ShapeSpec(channels=256, height=14, width=14))
    channels = num_classes + (1 if loss_name == "softmax" else 0)
    assert len(head.fcs) == len(dims)
    assert sum(p.numel() for p in head.parameters()) == _mlp_params(256, 14, dims, channels, 28)


@pytest.mark.parametrize(
    "roi_heads,side", [("StandardROIHeads", 14), ("AblationStandardROIHeads", 14), ("AblationRes5ROIHeads", 7)]
)
def test_mlp_input_side_is_what_the_roi_heads_report(roi_heads, side):
    # AblationRes5ROIHeads pools 14x14 and runs res5 (stride 2) before the mask head: it reports 7x7.
    from detectron2.modeling.roi_heads import build_roi_heads

    cfg = _cfg("MaskRCNNMLPHead")
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    cfg.MODEL.ROI_MASK_HEAD.MLP_DIMS = [4]
    if roi_heads == "AblationRes5ROIHeads":
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS, cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 16, 4
        cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
        shapes, channels = {"res4": ShapeSpec(channels=64, stride=16)}, 16 * 8  # res5: 8 x res2's channels
    else:
        cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
        cfg.MODEL.ROI_BOX_HEAD.NUM_FC, cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 1, 8
        cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
        shapes, channels = {f"p{i}": ShapeSpec(channels=8, stride=2 ** i) for i in range(2, 6)}, 8
    head = build_roi_heads(cfg, shapes).mask_head
    assert head.input_numel == channels * side * side and head.mask_size == 2 * side


def test_mlp_under_detectron2_res5_heads_is_rejected_naming_the_key():
    # detectron2's Res5ROIHeads reports the pooler's 14x14, not the 7x7 its mask head receives.
    from maskrcnn_plugin.config import check_maskrcnn_plugin_config

    cfg = _cfg("MaskRCNNMLPHead")
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
    with pytest.raises(ValueError, match=r"MODEL\.ROI_HEADS\.NAME='Res5ROIHeads'.*AblationRes5ROIHeads"):
        check_maskrcnn_plugin_config(cfg)
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNFCNHead"  # the FCN head does not depend on the input size
    check_maskrcnn_plugin_config(cfg)


def test_mlp_rejects_wrong_input_size():
    head = mh.MaskRCNNMLPHead(ShapeSpec(channels=4, height=7, width=7), num_classes=2, fc_dims=[8])
    assert head.mask_size == 14
    with pytest.raises(ValueError, match="MaskRCNNMLPHead"):
        head.layers(torch.zeros(1, 4, 14, 14))


# ----------------------------------------------------------------------------------------------------------
# inference
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("loss_name", LOSSES)
def test_inference_selects_predicted_class(agnostic, loss_name):
    num_classes, m = 4, 6
    channels = (1 if agnostic else num_classes) + (1 if loss_name == "softmax" else 0)
    logits = torch.randn(5, channels, m, m, dtype=torch.float64)
    pred = [torch.tensor([3, 0, 1]), torch.tensor([2, 3])]
    inst = [Instances((20, 20), pred_classes=p) for p in pred]
    mh.mask_rcnn_plugin_inference(logits, inst, loss_name)
    assert [tuple(i.pred_masks.shape) for i in inst] == [(3, 1, m, m), (2, 1, m, m)]
    got = torch.cat([i.pred_masks for i in inst])
    for r, c in enumerate(torch.cat(pred).tolist()):
        ch = 0 if agnostic else c
        if loss_name == "sigmoid":
            expected = 1.0 / (1.0 + torch.exp(-logits[r, ch]))
        else:
            expected = torch.exp(logits[r, ch]) / torch.exp(logits[r]).sum(dim=0)
        torch.testing.assert_close(got[r, 0], expected, rtol=1e-12, atol=1e-12)
    assert ((got >= 0) & (got <= 1)).all()


# ----------------------------------------------------------------------------------------------------------
# end to end inside detectron2's own Mask R-CNN
# ----------------------------------------------------------------------------------------------------------
ZOO = {
    "fpn": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    "c4": "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml",
}


def _tiny_zoo_cfg(arch, head, loss_name, agnostic):
    cfg = _cfg(head, loss_name, agnostic, num_classes=2, zoo=ZOO[arch])
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.PIXEL_MEAN = [0.0, 0.0, 0.0]  # random images in [0, 1]
    cfg.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    # Training from scratch: no frozen stages and GroupNorm instead of frozen BN statistics.
    cfg.MODEL.RESNETS.FREEZE_AT = 0
    cfg.MODEL.RESNETS.NORM = "GN"
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 8  # C4: narrows the res5 bottleneck of Res5ROIHeads
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 16
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 5
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_MASK_HEAD.MLP_DIMS = [32, 32]
    if arch == "fpn":
        cfg.MODEL.FPN.OUT_CHANNELS = 32
        cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    else:
        cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8, 16, 32]]
    return cfg


def _synthetic_batch(size=64):
    g = torch.Generator().manual_seed(0)
    batch = []
    for boxes, classes in [([[4, 6, 30, 40], [34, 20, 60, 58]], [0, 1]), ([[10, 10, 50, 44]], [1])]:
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.gt_classes = torch.tensor(classes)
        masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            # An ellipse inside each box, so masks differ from their boxes.
            yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
            cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
            masks[k] = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        inst.gt_masks = BitMasks(masks)
        image = torch.rand(3, size, size, generator=g)
        batch.append({"image": image, "height": size, "width": size, "instances": inst})
    return batch


# Every head x loss in a whole detector: FPN under detectron2's StandardROIHeads with class-specific masks, C4
# under AblationRes5ROIHeads (the MLP head needs it there) with class-agnostic masks (the shape tests cover the
# remaining combinations without a whole detector).
@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("arch,agnostic", [("fpn", False), ("c4", True)])
def test_zoo_model_trains_and_predicts(arch, agnostic, head, loss_name):
    torch.manual_seed(0)
    cfg = _tiny_zoo_cfg(arch, head, loss_name, agnostic)
    if arch == "c4":
        cfg.MODEL.ROI_HEADS.NAME = "AblationRes5ROIHeads"
    model = build_model(cfg)
    assert type(model.roi_heads).__name__ == ("StandardROIHeads" if arch == "fpn" else "AblationRes5ROIHeads")
    assert type(model.roi_heads.mask_head).__name__ == head
    batch = _synthetic_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    with EventStorage():
        for step in range(3):
            losses = model(batch)
            assert "loss_mask" in losses
            if step == 0:
                # The near-zero predictor init gives uniform predictions: BCE = log 2 for the sigmoid,
                # cross-entropy = log(number of channels) for the softmax.
                channels = (1 if agnostic else cfg.MODEL.ROI_HEADS.NUM_CLASSES) + 1
                expected = math.log(2) if loss_name == "sigmoid" else math.log(channels)
                assert losses["loss_mask"].item() == pytest.approx(expected, abs=0.02)
            assert all(torch.isfinite(v) for v in losses.values()), losses
            assert losses["loss_mask"].item() > 0
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
    # The mask head's parameters were trained.
    assert all(p.grad is not None for p in model.roi_heads.mask_head.parameters())
    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in batch[0].items() if k != "instances"}])[0]["instances"]
    # detectron2's postprocess pasted the m x m probabilities and thresholded them into image-size masks.
    assert out.pred_masks.shape == (len(out), 64, 64)
    assert out.pred_masks.dtype == torch.bool
