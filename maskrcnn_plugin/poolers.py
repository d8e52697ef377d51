"""Multi-level RoI pooler whose per-level extraction is RoIPool, RoIWarp or RoIAlign (paper Section 3).

It pools the way detectron2's `ROIPooler` does (FPN level assignment by `assign_boxes_to_levels`, the
canonical 224 px box at level 4, boxes in (batch index, x0, y0, x1, y1) format) and only the per-level
operator differs, so the ablations of Tables 2c, 2d and 5 change nothing but the feature extraction.
"""
import math
from typing import List

import torch
from detectron2.layers import nonzero_tuple
from detectron2.modeling.poolers import assign_boxes_to_levels, convert_boxes_to_pooler_format
from detectron2.structures import Boxes
from torch import nn

from .config import check_roi_extractor
from .layers import RoIAlign, RoIPool, RoIWarp


def build_roi_extractor(method, aggregation, output_size, spatial_scale, sampling_ratio, aligned):
    """The single-level operator for `MODEL.ROI_EXTRACTOR.METHOD` (see maskrcnn_plugin.layers)."""
    if method == "RoIPool":
        return RoIPool(output_size, spatial_scale)
    if method == "RoIWarp":
        return RoIWarp(output_size, spatial_scale, sampling_ratio, aggregation=aggregation, aligned=aligned)
    if method == "RoIAlign":
        return RoIAlign(output_size, spatial_scale, sampling_ratio, aggregation=aggregation, aligned=aligned)
    raise ValueError(f"Unknown RoI extraction method {method!r}; valid: 'RoIPool', 'RoIWarp', 'RoIAlign'.")


def _pyramid_level(scale):
    level = -math.log2(scale)
    if not math.isclose(level, round(level)):
        raise ValueError(f"AblationROIPooler: feature scale {scale} is not a power of 2 (1/stride of a level).")
    return round(level)


class AblationROIPooler(nn.Module):
    """RoI features from one or several feature maps (FPN levels) with the operator `method`/`aggregation`.

    Args:
        output_size (int or (int, int)): side(s) of each pooled feature.
        scales (list[float]): 1 / stride of each feature map, finest first (e.g. 1/4 ... 1/32 for P2-P5).
        method, aggregation, sampling_ratio, aligned: the operator, as `MODEL.ROI_EXTRACTOR`'s keys.
        canonical_box_size, canonical_level: a box of canonical_box_size pixels (sqrt of area) is pooled
            from level canonical_level (FPN paper, Eq. 1).
    """

    def __init__(
        self,
        output_size,
        scales,
        *,
        method="RoIAlign",
        aggregation="avg",
        sampling_ratio=2,
        aligned=True,
        canonical_box_size=224,
        canonical_level=4,
    ):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if len(output_size) != 2 or not all(isinstance(s, int) for s in output_size):
            raise ValueError(f"AblationROIPooler: output_size must be an int or two ints, got {output_size!r}.")
        levels = [_pyramid_level(s) for s in scales]
        if levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(f"AblationROIPooler: scales {list(scales)} are not consecutive pyramid levels.")
        if canonical_box_size <= 0:
            raise ValueError(f"AblationROIPooler: canonical_box_size must be positive, got {canonical_box_size}.")
        self.output_size = tuple(output_size)
        self.min_level, self.max_level = levels[0], levels[-1]
        self.canonical_level = canonical_level
        self.canonical_box_size = canonical_box_size
        self.level_poolers = nn.ModuleList(
            build_roi_extractor(method, aggregation, self.output_size, scale, sampling_ratio, aligned)
            for scale in scales
        )

    @classmethod
    def from_config(cls, cfg, output_size, scales):
        """Pooler for `scales` with the operator of cfg.MODEL.ROI_EXTRACTOR (the defaults without that node)."""
        ex = cfg.MODEL.get("ROI_EXTRACTOR")  # absent in a stock detectron2 config that only names our heads
        if ex is None:
            return cls(output_size, scales)
        check_roi_extractor(ex)
        return cls(
            output_size,
            scales,
            method=ex.METHOD,
            aggregation=ex.AGGREGATION,
            sampling_ratio=ex.SAMPLING_RATIO,
            aligned=ex.ALIGNED,
        )

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> torch.Tensor:
        """Features (M, C, *output_size) of the M boxes of all images, image by image, in `box_lists` order.

        Args:
            x: one (N, C, H_l, W_l) feature map per level, in the order of `scales`.
            box_lists: N `Boxes` in input-image pixels, one per image.
        """
        if len(x) != len(self.level_poolers):
            raise ValueError(f"AblationROIPooler was built for {len(self.level_poolers)} feature maps, got {len(x)}.")
        if len(box_lists) != x[0].size(0):
            raise ValueError(f"AblationROIPooler: {x[0].size(0)} images in the features, {len(box_lists)} box lists.")
        if len(box_lists) == 0:
            return x[0].new_zeros((0, x[0].shape[1]) + self.output_size)
        rois = convert_boxes_to_pooler_format(box_lists)
        if len(self.level_poolers) == 1:
            return self.level_poolers[0](x[0], rois)
        level_of_box = assign_boxes_to_levels(
            box_lists, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )
        output = x[0].new_zeros((rois.size(0), x[0].shape[1]) + self.output_size)
        for level, pooler in enumerate(self.level_poolers):
            inds = nonzero_tuple(level_of_box == level)[0]
            # index_put_ rather than output[inds] = ...: the in-place form traces and exports (pytorch#49852)
            output.index_put_((inds,), pooler(x[level], rois[inds]))
        return output

    def extra_repr(self):
        return f"output_size={self.output_size}, levels={self.min_level}..{self.max_level}"
