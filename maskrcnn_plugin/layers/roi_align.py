"""RoIAlign (Mask R-CNN, Section 3): function and module.

Both call the dispatcher op ``torch.ops.maskrcnn_plugin.roi_align`` (``_registration.py``).
"""
import torch
from torch import Tensor

from . import _registration  # noqa: F401  (registers torch.ops.maskrcnn_plugin.*)
from .roi_ops import BoxesType, _check_aggregation, _pair, _prepare, _SamplingRoIModule

__all__ = ["roi_align", "RoIAlign"]


def roi_align(
    input: Tensor,
    boxes: BoxesType,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aggregation: str = "avg",
    aligned: bool = False,
) -> Tensor:
    """RoIAlign (Mask R-CNN, Section 3): bilinear sampling of the exact box, no quantization anywhere.

    The box ``(x1, y1, x2, y2) * spatial_scale`` (shifted by -0.5 when ``aligned``) is kept continuous and
    cut into ``ph x pw`` equal bins of ``(y2 - y1) / ph x (x2 - x1) / pw`` feature cells. Each bin is
    sampled at ``sampling_ratio x sampling_ratio`` regularly spaced points (the centres of an equal
    sub-division of the bin); each point's value is bilinearly interpolated from its four nearest cells,
    and the points are combined by their average or maximum. With ``aggregation="avg"`` the result equals
    ``torchvision.ops.roi_align`` (and detectron2's ROIAlign) for the same arguments.

    Bilinear conventions (as torchvision): cell ``(y, x)`` holds the value at point ``(y, x)``; a point
    outside ``[-1, H] x [-1, W]`` reads 0, points between -1 and 0 are clamped to 0 and points past the last
    cell read the last cell. With ``aligned=False`` (the paper / Detectron's original ROIAlign) a box is
    widened to at least 1 x 1 cells; ``aligned=True`` (detectron2's ROIAlignV2) first shifts the box by
    half a cell so that a cell's area ``[i, i + 1)`` has its value at its centre, and keeps degenerate boxes
    as they are.

    Args:
        input (Tensor[N, C, H, W]): feature map of a batch of N images.
        boxes (Tensor[K, 5] or List[Tensor[L, 4]]): boxes ``(x1, y1, x2, y2)`` in image coordinates, with the
            batch index as first column (``Tensor[K, 5]``) or one ``Tensor[L, 4]`` per image. Coordinates
            must be finite (``ValueError`` otherwise).
        output_size (int or Tuple[int, int]): ``(ph, pw)``, the number of bins along y and x.
        spatial_scale (float): scale from image to feature coordinates (1 / stride).
        sampling_ratio (int): bilinear samples per bin side; the paper uses 2 (four points per bin). ``<= 0``
            (torchvision's default -1, detectron2's 0) is adaptive: ``ceil(roi_height / ph)`` x
            ``ceil(roi_width / pw)`` samples per bin.
        aggregation (str): ``"avg"`` (the usual RoIAlign) or ``"max"`` (the paper notes that either works;
            the gradient then goes to the arg-max sample's four bilinear neighbours).
        aligned (bool): apply the half-pixel shift (detectron2's ROIAlignV2). Default False as torchvision.

    Returns:
        Tensor[K, C, ph, pw]
    """
    ph, pw = _pair(output_size)
    _check_aggregation(aggregation)
    rois = _prepare(input, boxes)
    out, _ = torch.ops.maskrcnn_plugin.roi_align(
        input, rois, float(spatial_scale), ph, pw, int(sampling_ratio), aggregation, bool(aligned)
    )
    return out


class RoIAlign(_SamplingRoIModule):
    """Module form of :func:`roi_align` (Mask R-CNN RoIAlign; with avg equals ``torchvision.ops.RoIAlign``)."""

    _op = staticmethod(roi_align)
