"""Mask R-CNN's mask loss L_mask and mask inference, for a sigmoid or a softmax over the mask logits.

Paper Section 3, "Mask Representation" and L_mask; Table 2b compares the two:
* "sigmoid" (the paper's L_mask): a per-pixel sigmoid + binary cross-entropy on the mask of the RoI's
  ground-truth class only, so the K class masks do not compete;
* "softmax" (Table 2b's baseline): a per-pixel softmax over the K classes plus background with a multinomial
  cross-entropy.
Plain functions, as detectron2's `mask_rcnn_loss` / `mask_rcnn_inference`; the heads in mask_head.py call them.

Channel layout of the logits (R RoIs, K foreground classes, m x m masks):
  sigmoid: (R, K, m, m), or (R, 1, m, m) class-agnostic.
  softmax: (R, K + 1, m, m), or (R, 2, m, m) class-agnostic; the background channel is the last one, as
           in detectron2's box classifier, so channel k is class k for both losses.
"""
from typing import List

import torch
from torch.nn import functional as F

from detectron2.layers import cat
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from .config import MASK_LOSSES

__all__ = [
    "mask_rcnn_sigmoid_loss",
    "mask_rcnn_softmax_loss",
    "mask_rcnn_plugin_loss",
    "mask_rcnn_plugin_inference",
    "num_mask_channels",
    "check_mask_loss",
]


def check_mask_loss(loss: str) -> None:
    # Same wording as config.check_maskrcnn_plugin_config, so the message names the key to fix even when a
    # head is built without a config.
    if loss not in MASK_LOSSES:
        raise ValueError(
            f"Invalid config value MODEL.ROI_MASK_HEAD.LOSS={loss!r}; "
            f"valid values: {', '.join(map(repr, MASK_LOSSES))}."
        )


def num_mask_channels(num_classes: int, loss: str) -> int:
    """Channels the mask predictor must output for `num_classes` masks (1 if class-agnostic) under `loss`."""
    check_mask_loss(loss)
    # The softmax needs an explicit background channel to compete against; the sigmoid models background
    # implicitly as "probability below 0.5".
    return num_classes + 1 if loss == "softmax" else num_classes


# ----------------------------------------------------------------------------------------------------------
# Targets and training statistics
# ----------------------------------------------------------------------------------------------------------
def _mask_targets(instances: List[Instances], mask_side_len: int, device, with_classes: bool):
    """gt masks cropped to each RoI's proposal box and resized to m x m (detectron2's convention).

    Returns (gt_masks bool (R, m, m), gt_classes int64 (R,) or None), or (None, None) if there are no RoIs.
    """
    gt_masks, gt_classes = [], []
    for inst in instances:
        if len(inst) == 0:
            continue
        if with_classes:
            gt_classes.append(inst.gt_classes.to(dtype=torch.int64))
        # Targets are defined on the proposal box (not the gt box): the mask head sees the proposal's
        # features, so its target is the part of the gt mask that falls inside that box.
        gt_masks.append(inst.gt_masks.crop_and_resize(inst.proposal_boxes.tensor, mask_side_len).to(device))
    if not gt_masks:
        return None, None
    masks = cat(gt_masks, dim=0)
    # Polygon/bitmap rasterizers may return floats; binarize at 0.5 like detectron2.
    masks = masks if masks.dtype == torch.bool else masks > 0.5
    classes = cat(gt_classes, dim=0).to(device) if with_classes else None
    return masks, classes


def _log_mask_statistics(fg_prob: torch.Tensor, gt_masks: torch.Tensor, vis_period: int) -> None:
    """Log accuracy / false positive / false negative rates of the gt class's mask at threshold 0.5."""
    try:
        storage = get_event_storage()
    except AssertionError:
        # No EventStorage outside a detectron2 trainer: the loss functions stay callable on their own
        # (tests, benchmarks, notebooks) and simply skip logging.
        return
    with torch.no_grad():
        incorrect = (fg_prob > 0.5) != gt_masks
        num_pos = gt_masks.sum().item()
        storage.put_scalar("mask_rcnn/accuracy", 1.0 - incorrect.sum().item() / max(incorrect.numel(), 1))
        storage.put_scalar(
            "mask_rcnn/false_positive",
            (incorrect & ~gt_masks).sum().item() / max(gt_masks.numel() - num_pos, 1),
        )
        storage.put_scalar("mask_rcnn/false_negative", (incorrect & gt_masks).sum().item() / max(num_pos, 1))
        if vis_period > 0 and storage.iter % vis_period == 0:
            side_by_side = torch.cat([fg_prob, gt_masks.to(fg_prob.dtype)], dim=2)
            for idx, vis in enumerate(side_by_side):
                storage.put_image(f"Left: mask prediction;   Right: mask GT ({idx})", vis[None].repeat(3, 1, 1))


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------
def mask_rcnn_sigmoid_loss(pred_mask_logits: torch.Tensor, instances: List[Instances], vis_period: int = 0):
    """The paper's L_mask: mean per-pixel binary cross-entropy of the sigmoid of the gt class's mask.

    Args:
        pred_mask_logits: (R, K, m, m) class-specific or (R, 1, m, m) class-agnostic logits, R = total number
            of foreground RoIs over `instances`, in the same order.
        instances: per image, the foreground RoIs with fields proposal_boxes, gt_classes, gt_masks.
        vis_period: period (iterations) at which prediction/gt images are written to the event storage.

    Only the gt class's channel enters the loss, so the other K-1 channels receive exactly zero gradient:
    masks of different classes do not compete, which decouples mask and class prediction (Table 2b).
    """
    assert pred_mask_logits.size(2) == pred_mask_logits.size(3), "Mask prediction must be square!"
    agnostic = pred_mask_logits.size(1) == 1
    gt_masks, gt_classes = _mask_targets(
        instances, pred_mask_logits.size(2), pred_mask_logits.device, with_classes=not agnostic
    )
    if gt_masks is None:
        # Keeps the graph connected (DDP needs every parameter to receive a gradient) with a zero loss.
        return pred_mask_logits.sum() * 0
    if agnostic:
        logits = pred_mask_logits[:, 0]
    else:
        logits = pred_mask_logits[torch.arange(gt_classes.numel(), device=gt_classes.device), gt_classes]
    _log_mask_statistics(logits.detach().sigmoid(), gt_masks, vis_period)
    return F.binary_cross_entropy_with_logits(logits, gt_masks.to(logits.dtype), reduction="mean")


def mask_rcnn_softmax_loss(pred_mask_logits: torch.Tensor, instances: List[Instances], vis_period: int = 0):
    """Multinomial mask loss (Table 2b's softmax baseline): per-pixel softmax over K classes + background.

    Args:
        pred_mask_logits: (R, K + 1, m, m) class-specific or (R, 2, m, m) class-agnostic logits; the last
            channel is background.
        instances, vis_period: as in :func:`mask_rcnn_sigmoid_loss`.

    Each pixel's target is the RoI's gt class inside the gt mask and background outside, and the loss is
    the mean cross-entropy over all pixels of all RoIs. Every channel enters the normalisation, so all
    classes receive gradient and compete for each pixel. With class-agnostic masks this reduces to a
    two-way foreground/background softmax.
    """
    assert pred_mask_logits.size(2) == pred_mask_logits.size(3), "Mask prediction must be square!"
    num_channels = pred_mask_logits.size(1)
    assert num_channels >= 2, "The softmax mask loss needs at least one class channel plus background."
    agnostic = num_channels == 2
    background = num_channels - 1
    gt_masks, gt_classes = _mask_targets(
        instances, pred_mask_logits.size(2), pred_mask_logits.device, with_classes=not agnostic
    )
    if gt_masks is None:
        return pred_mask_logits.sum() * 0
    if agnostic:
        # With one foreground channel, every RoI's "class" is channel 0 (also correct when K == 1).
        gt_classes = torch.zeros(gt_masks.size(0), dtype=torch.int64, device=gt_masks.device)
    target = torch.where(gt_masks, gt_classes[:, None, None], background)
    with torch.no_grad():
        rois = torch.arange(gt_masks.size(0), device=gt_masks.device)
        fg_prob = pred_mask_logits.softmax(dim=1)[rois, gt_classes]
    _log_mask_statistics(fg_prob, gt_masks, vis_period)
    return F.cross_entropy(pred_mask_logits, target, reduction="mean")


def mask_rcnn_plugin_loss(
    pred_mask_logits: torch.Tensor, instances: List[Instances], loss: str = "sigmoid", vis_period: int = 0
):
    """Mask loss selected by name ("sigmoid" or "softmax", MODEL.ROI_MASK_HEAD.LOSS)."""
    check_mask_loss(loss)
    fn = mask_rcnn_sigmoid_loss if loss == "sigmoid" else mask_rcnn_softmax_loss
    return fn(pred_mask_logits, instances, vis_period)


# ----------------------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------------------
def mask_rcnn_plugin_inference(
    pred_mask_logits: torch.Tensor, pred_instances: List[Instances], loss: str = "sigmoid"
):
    """Attach to each instance the probability mask of its predicted class as `pred_masks` (n, 1, m, m).

    For "sigmoid" it is the sigmoid of that class's logits; for "softmax" the softmax probability of that
    class's channel (background and other classes included in the normalisation). Class-agnostic heads use
    their single foreground channel. The masks stay soft: pasting into the image and thresholding at 0.5 is
    done by detectron2's detector_postprocess, as for its own heads.
    """
    check_mask_loss(loss)
    num_fg = pred_mask_logits.size(1) - (1 if loss == "softmax" else 0)
    if loss == "sigmoid":
        probs = pred_mask_logits.sigmoid()
    else:
        probs = pred_mask_logits.softmax(dim=1)
    if num_fg == 1:
        mask_probs = probs[:, 0:1]
    else:
        class_pred = cat([i.pred_classes for i in pred_instances]).to(probs.device)
        mask_probs = probs[torch.arange(probs.size(0), device=probs.device), class_pred][:, None]
    for prob, inst in zip(mask_probs.split([len(i) for i in pred_instances], dim=0), pred_instances):
        inst.pred_masks = prob
