"""RoI feature extraction operators of Mask R-CNN (Section 3): RoIPool, RoIWarp and RoIAlign.

One file per operator (function + module): ``roi_pool.py``, ``roi_warp.py``, ``roi_align.py``; all are custom
ops of PyTorch's dispatcher (``torch.ops.maskrcnn_plugin.*``, registered in ``_registration.py``) with the
shared geometry in ``roi_ops.py``. See ``docs/roi_ops.md`` for semantics and benchmarks.
"""
from .roi_align import RoIAlign, roi_align
from .roi_ops import boxes_to_rois, roi_align_sample_points, roi_pool_bins, roi_warp_sample_points
from .roi_pool import RoIPool, roi_pool
from .roi_warp import RoIWarp, roi_warp

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
