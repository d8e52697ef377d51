"""RoIWarp (MNC, Dai et al.), the middle step of Mask R-CNN's Table 2c (Section 3): function and module.

Both call the dispatcher op ``torch.ops.maskrcnn_plugin.roi_warp`` (``_registration.py``).
"""
import torch
from torch import Tensor

from . import _registration  # noqa: F401  (registers torch.ops.maskrcnn_plugin.*)
from .roi_ops import BoxesType, _check_aggregation, _pair, _prepare, _SamplingRoIModule

__all__ = ["roi_warp", "RoIWarp"]


def roi_warp(
    input: Tensor,
    boxes: BoxesType,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aggregation: str = "avg",
    aligned: bool = True,
) -> Tensor:
    """RoIWarp (MNC, Dai et al.): the box is snapped to whole cells like RoIPool, then sampled bilinearly.

    Snapping is RoIPool's: cells ``x0 = round(x1 * s) .. round(x2 * s)`` inclusive, i.e. ``w = max(round(x2
    * s) - x0 + 1, 1)`` whole cells (same along y). The continuous box that is then sampled is the area of
    exactly those cells, ``[x0, x0 + w) x [y0, y0 + h)`` in a frame where cell ``i`` occupies ``[i, i + 1)``
    (its centre at ``i + 0.5``); this area is cut into ``output_size`` equal, *unsnapped* bins sampled like
    RoIAlign (``sampling_ratio`` points per bin side, bilinear interpolation, max or average). With the
    default ``aligned=True`` the bilinear reads use the cell-centre convention, i.e. the sample at area
    point ``p`` reads feature coordinate ``p - 0.5``; a box covering one cell with a 1 x 1 output
    therefore reads exactly that cell, and the samples lie symmetrically inside the cells RoIPool would
    max over. So RoIWarp differs from RoIPool only by the bins (bilinear, no bin-edge snapping) and from
    RoIAlign only by the box snapping, the decomposition of the paper's Table 2c. ``aligned=False`` reads
    the same points without the half-cell shift (the legacy pixel model of ``torchvision.ops.roi_align``
    with ``aligned=False`` applied to the snapped box), which is biased by half a cell towards the
    bottom-right.

    Args:
        input (Tensor[N, C, H, W]): feature map of a batch of N images.
        boxes (Tensor[K, 5] or List[Tensor[L, 4]]): boxes ``(x1, y1, x2, y2)`` in image coordinates, with the
            batch index as first column (``Tensor[K, 5]``) or one ``Tensor[L, 4]`` per image. Coordinates
            must be finite (``ValueError`` otherwise).
        output_size (int or Tuple[int, int]): ``(ph, pw)``, the number of bins along y and x.
        spatial_scale (float): scale from image to feature coordinates (1 / stride).
        sampling_ratio (int): bilinear samples per bin side (2 gives the paper's 4 points per bin); ``<= 0``
            uses ``ceil(w / pw)`` (``ceil(h / ph)``) samples, adaptive to the snapped box size.
        aggregation (str): ``"avg"`` (mean of the samples) or ``"max"`` (gradient to the arg-max sample's
            four bilinear neighbours).
        aligned (bool): see above; default True (sample the snapped cells' own area).

    Returns:
        Tensor[K, C, ph, pw]
    """
    ph, pw = _pair(output_size)
    _check_aggregation(aggregation)
    rois = _prepare(input, boxes)
    out, _ = torch.ops.maskrcnn_plugin.roi_warp(
        input, rois, float(spatial_scale), ph, pw, int(sampling_ratio), aggregation, bool(aligned)
    )
    return out


class RoIWarp(_SamplingRoIModule):
    """Module form of :func:`roi_warp` (box snapped to cells like RoIPool, bins sampled bilinearly)."""

    _op = staticmethod(roi_warp)
    _default_aligned = True  # sample the snapped cells' own area (see roi_warp)
