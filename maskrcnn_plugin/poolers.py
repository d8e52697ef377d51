"""Multi-level RoI pooler whose per-level extraction is RoIPool, RoIWarp or RoIAlign (paper Section 3).

It keeps detectron2's `ROIPooler` behaviour (FPN level assignment by `assign_boxes_to_levels`, the
canonical 224 px box at level 4, batch-index conversion) and only swaps the per-level operator, so the
ablations of Table 2c/2d/5 change nothing but the feature extraction.
"""
from detectron2.modeling.poolers import ROIPooler
from torch import nn

from .config import check_maskrcnn_plugin_config, with_plugin_defaults
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


class AblationROIPooler(ROIPooler):
    """detectron2's ROIPooler with the per-level operator chosen by method/aggregation/aligned."""

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
        # The parent builds stock poolers only to validate the scales and set up level assignment;
        # they are replaced right away.
        super().__init__(
            output_size,
            scales,
            sampling_ratio=sampling_ratio,
            pooler_type="ROIPool",
            canonical_box_size=canonical_box_size,
            canonical_level=canonical_level,
        )
        self.level_poolers = nn.ModuleList(
            build_roi_extractor(method, aggregation, self.output_size, scale, sampling_ratio, aligned)
            for scale in scales
        )

    @classmethod
    def from_config(cls, cfg, output_size, scales):
        """Pooler for `scales` with the operator described by cfg.MODEL.ROI_EXTRACTOR."""
        cfg = with_plugin_defaults(cfg)
        check_maskrcnn_plugin_config(cfg)
        ex = cfg.MODEL.ROI_EXTRACTOR
        return cls(
            output_size,
            scales,
            method=ex.METHOD,
            aggregation=ex.AGGREGATION,
            sampling_ratio=ex.SAMPLING_RATIO,
            aligned=ex.ALIGNED,
        )
