"""RoIPool (Fast R-CNN), the operator Mask R-CNN's RoIAlign replaces (Section 3): function and module.

Both call the dispatcher op ``torch.ops.maskrcnn_plugin.roi_pool`` (``_registration.py``).
"""
import torch
from torch import Tensor, nn

from . import _registration  # noqa: F401  (registers torch.ops.maskrcnn_plugin.*)
from .roi_ops import BoxesType, _pair, _prepare

__all__ = ["roi_pool", "RoIPool"]


def roi_pool(input: Tensor, boxes: BoxesType, output_size, spatial_scale: float = 1.0) -> Tensor:
    """RoIPool (Fast R-CNN), the operator RoIAlign replaces; numerically identical to
    ``torchvision.ops.roi_pool``.

    The box is first snapped to the feature grid: its corners become the cells
    ``round(x1 * spatial_scale) .. round(x2 * spatial_scale)`` (both ends *inclusive*, halves rounded away
    from zero, at least one cell), so a box is widened or narrowed by up to a cell. The snapped box of
    ``w x h`` whole cells is cut into ``output_size`` bins whose edges are snapped again: bin ``i`` covers
    cells ``floor(i * w / pw) .. ceil((i + 1) * w / pw) - 1`` (neighbouring bins may share a cell), clipped
    to the feature map. Each output is the maximum over the cells of its bin (0 for a bin that lies
    entirely outside the map). Both snaps cause the misalignment between RoI and features that the paper
    measures (Table 2c); the gradient flows to the arg-max cell only.

    Args:
        input (Tensor[N, C, H, W]): feature map of a batch of N images.
        boxes (Tensor[K, 5] or List[Tensor[L, 4]]): boxes ``(x1, y1, x2, y2)`` in image coordinates. As a
            ``Tensor[K, 5]`` the first column is the index of the image in the batch; as a list, the i-th
            tensor holds the boxes of image i. Coordinates must be finite (``ValueError`` otherwise).
        output_size (int or Tuple[int, int]): ``(ph, pw)``, the number of bins along y and x.
        spatial_scale (float): scale from image to feature coordinates (1 / stride, e.g. 1/32).

    Returns:
        Tensor[K, C, ph, pw]: the pooled features, in the order of the boxes.
    """
    ph, pw = _pair(output_size)
    rois = _prepare(input, boxes)
    out, _ = torch.ops.maskrcnn_plugin.roi_pool(input, rois, float(spatial_scale), ph, pw)
    return out


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool` (Fast R-CNN RoIPool; equals ``torchvision.ops.RoIPool``)."""

    def __init__(self, output_size, spatial_scale: float):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale

    def forward(self, input, rois):
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self):
        return f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"
