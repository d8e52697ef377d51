"""The paper's keypoint head (Section 5) with inference that cannot fail on large heatmap logits.

The head itself is detectron2's `KRCNNConvDeconvUpsampleHead`, which is what the paper describes: a stack of
3x3 convs (8 x 512 in the paper) on the 14x14 RoI features, a 4x4 stride-2 deconv and 2x bilinear upsampling
to m x m = 56 x 56 heatmaps, trained with a softmax cross-entropy over the m^2 locations of each keypoint's
one-hot target (`keypoint_rcnn_loss`). Training is unchanged.

Only inference differs. detectron2's `heatmaps_to_keypoints` upsamples each heatmap bicubically to the box
size, takes the argmax, and scores it with ``exp(up_max - up_max) / sum(exp(heatmap - up_max))``. Bicubic
interpolation overshoots: when logits span a few hundred (a barely trained model, or a from-scratch CPU model
early on) the upsampled maximum ``up_max`` can exceed every heatmap value by more than ~88, every
``exp(heatmap - up_max)`` underflows to 0 in float32, the score is 1/0 or 0/0, and its internal
``assert`` stops the whole evaluation. `heatmaps_to_keypoints_stable` computes the same location and the same
score, ``exp(up_max - logsumexp(heatmap))``, without the underflow; the exponent is capped at
`MAX_LOG_SCORE` (20) so that such an overshoot gives a large finite score instead of inf. Below the cap (every
case where detectron2's assert does not fire and its score is under e^20 = 4.9e8) the scores are detectron2's.
Registered as ``MODEL.ROI_KEYPOINT_HEAD.NAME: MaskRCNNKeypointHead``; its parameters are named as detectron2's
head's, so checkpoints load into either.
"""
from typing import List

import torch
from detectron2.modeling.roi_heads.keypoint_head import ROI_KEYPOINT_HEAD_REGISTRY, KRCNNConvDeconvUpsampleHead
from detectron2.structures import Instances
from torch.nn import functional as F

__all__ = ["MaskRCNNKeypointHead", "heatmaps_to_keypoints_stable", "keypoint_inference_stable", "MAX_LOG_SCORE"]

# Cap of log(score): an ordinary heatmap's score is at most ~1 (e^overshoot with a small bicubic overshoot).
MAX_LOG_SCORE = 20.0


def heatmaps_to_keypoints_stable(maps: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """Keypoint locations and scores from heatmap logits, as detectron2's `heatmaps_to_keypoints`.

    Args:
        maps: (R, K, S, S) heatmap logits of R boxes.
        rois: (R, 4) boxes, XYXY in image coordinates.
    Returns:
        (R, K, 4): x, y (continuous image coordinates: the centre of the argmax cell of the heatmap resized to
        the box), the logit there, and its score ``exp(min(logit - logsumexp(maps[r, k]), MAX_LOG_SCORE))``
        (normalised at the heatmap resolution, so that boxes of different sizes compare).
    """
    maps = maps.detach()
    rois = rois.detach()
    num_rois, num_kp = maps.shape[:2]
    out = maps.new_zeros(num_rois, num_kp, 4)
    if num_rois == 0:
        return out
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    widths_ceil, heights_ceil = widths.ceil(), heights.ceil()
    log_norm = torch.logsumexp(maps.flatten(2), dim=2)  # (R, K)
    for i in range(num_rois):
        size = (int(heights_ceil[i]), int(widths_ceil[i]))
        resized = F.interpolate(maps[i:i + 1], size=size, mode="bicubic", align_corners=False)[0]
        logit, pos = resized.flatten(1).max(dim=1)  # first maximum, like argmax
        x_cell = pos % size[1]
        y_cell = torch.div(pos, size[1], rounding_mode="floor")
        # cell index -> continuous coordinate (d + 0.5), rescaled from the ceil'ed size to the box size
        out[i, :, 0] = (x_cell.to(maps.dtype) + 0.5) * (widths[i] / widths_ceil[i]) + rois[i, 0]
        out[i, :, 1] = (y_cell.to(maps.dtype) + 0.5) * (heights[i] / heights_ceil[i]) + rois[i, 1]
        out[i, :, 2] = logit
        out[i, :, 3] = (logit - log_norm[i]).clamp(max=MAX_LOG_SCORE).exp()
    return out


def keypoint_inference_stable(pred_keypoint_logits: torch.Tensor, pred_instances: List[Instances]):
    """Add ``pred_keypoints`` ((N, K, 3): x, y, score) and ``pred_keypoint_heatmaps`` to every image's
    Instances, as detectron2's `keypoint_rcnn_inference` does, using `heatmaps_to_keypoints_stable`."""
    boxes = torch.cat([inst.pred_boxes.tensor for inst in pred_instances], dim=0)
    logits = pred_keypoint_logits.detach()
    results = heatmaps_to_keypoints_stable(logits, boxes)[:, :, [0, 1, 3]]
    counts = [len(inst) for inst in pred_instances]
    for kps, heatmaps, inst in zip(results.split(counts), logits.split(counts), pred_instances):
        inst.pred_keypoints = kps
        inst.pred_keypoint_heatmaps = heatmaps


@ROI_KEYPOINT_HEAD_REGISTRY.register()
class MaskRCNNKeypointHead(KRCNNConvDeconvUpsampleHead):
    """detectron2's conv-deconv-upsample keypoint head (the paper's) with `keypoint_inference_stable`."""

    def forward(self, x, instances: List[Instances]):
        if self.training:
            return super().forward(x, instances)
        keypoint_inference_stable(self.layers(x), instances)
        return instances
