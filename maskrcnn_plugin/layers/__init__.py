"""RoI feature extraction operators of Mask R-CNN (Section 3): RoIPool, RoIWarp and RoIAlign.

See :mod:`maskrcnn_plugin.layers.roi_ops` for the semantics and ``docs/roi_ops.md`` for benchmarks.
"""
from torch import nn

from .roi_ops import (
    boxes_to_rois,
    roi_align,
    roi_align_sample_points,
    roi_pool,
    roi_pool_bins,
    roi_warp,
    roi_warp_sample_points,
)

__all__ = [
    "roi_pool",
    "roi_warp",
    "roi_align",
    "RoIPool",
    "RoIWarp",
    "RoIAlign",
    "roi_pool_bins",
    "roi_align_sample_points",
    "roi_warp_sample_points",
    "boxes_to_rois",
]


def _size(output_size):
    return (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool` (Fast R-CNN RoIPool; equals ``torchvision.ops.RoIPool``)."""

    def __init__(self, output_size, spatial_scale: float):
        super().__init__()
        self.output_size = _size(output_size)
        self.spatial_scale = spatial_scale

    def forward(self, input, rois):
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self):
        return f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"


class _BilinearRoIOp(nn.Module):
    """Shared module form of the bilinear-sampling operators (`_op` is roi_warp or roi_align)."""

    _op = None
    _default_aligned = False

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int = -1, aggregation: str = "avg", aligned=None):
        super().__init__()
        if aggregation not in ("max", "avg"):
            raise ValueError(f"aggregation must be 'max' or 'avg', got {aggregation!r}")
        self.output_size = _size(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aggregation = aggregation
        self.aligned = self._default_aligned if aligned is None else aligned

    def forward(self, input, rois):
        return type(self)._op(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aggregation, self.aligned
        )

    def __repr__(self):
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aggregation={self.aggregation!r}, aligned={self.aligned})"
        )


class RoIWarp(_BilinearRoIOp):
    """Module form of :func:`roi_warp` (box snapped to cells like RoIPool, bins sampled bilinearly)."""

    _op = staticmethod(roi_warp)
    _default_aligned = True  # sample the snapped cells' own area (see roi_warp)


class RoIAlign(_BilinearRoIOp):
    """Module form of :func:`roi_align` (Mask R-CNN RoIAlign; with avg equals ``torchvision.ops.RoIAlign``)."""

    _op = staticmethod(roi_align)
