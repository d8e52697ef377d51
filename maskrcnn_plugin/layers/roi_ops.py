"""RoI feature extraction: RoIPool, RoIWarp and RoIAlign (Mask R-CNN, He et al. ICCV 2017, Section 3).

All three operators turn a box given in image coordinates into a fixed ``output_size`` grid of feature
values ("bins") read from a feature map that is ``1 / spatial_scale`` times smaller than the image. They
differ only in *where* the values of one bin are read and how they are combined:

* **RoIPool** (Fast R-CNN): the box is snapped to whole feature cells, the snapped box is cut into bins
  whose edges are snapped again (floor / ceil), and each output is the max over the whole cells of its bin.
  Both snaps misalign the extracted features with the box by up to a cell, i.e. up to one stride in pixels.
* **RoIWarp** (MNC, Dai et al.): the box is snapped to whole cells exactly as RoIPool does, but the bins
  are *not* snapped: each bin is sampled with bilinear interpolation at regularly spaced points inside the
  snapped box and the samples are combined by max or average.
* **RoIAlign** (Mask R-CNN): nothing is snapped. The continuous box ``x * spatial_scale`` is cut into equal
  continuous bins, each bin is sampled at ``sampling_ratio x sampling_ratio`` regularly spaced points
  (the paper uses 2 x 2 = 4) by bilinear interpolation of the four nearest cells, and the samples are
  combined by max or average.

Coordinate conventions (identical to torchvision's ``roi_align``): a feature cell ``(y, x)`` holds the value
*at* continuous point ``(y, x)``; bilinear interpolation at a point outside ``[-1, H] x [-1, W]`` yields 0;
points in ``[-1, 0]`` are clamped to 0 and points beyond ``H - 1`` (``W - 1``) to the last row (column).

This module holds what the operators share: argument handling, the conversion of boxes to rois, and the
per-RoI geometry (RoIPool's integer bins, the sample grids of RoIWarp / RoIAlign) computed in the input
dtype bit for bit like torchvision. The operators themselves are custom ops of PyTorch's dispatcher
(``torch.ops.maskrcnn_plugin.*``, registered in ``_registration.py``) with one public function + module per
operator in ``roi_pool.py``, ``roi_warp.py`` and ``roi_align.py``.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = [
    "roi_pool_bins",
    "roi_warp_sample_points",
    "roi_align_sample_points",
    "boxes_to_rois",
]

BoxesType = Union[Tensor, Sequence[Tensor]]


# ----------------------------------------------------------------------------------------------------------
# argument handling
# ----------------------------------------------------------------------------------------------------------
def _pair(output_size) -> Tuple[int, int]:
    if isinstance(output_size, int):
        ph = pw = output_size
    else:
        ph, pw = output_size
    ph, pw = int(ph), int(pw)
    if ph <= 0 or pw <= 0:
        raise ValueError(f"output_size must be positive, got {output_size}")
    return ph, pw


def _check_aggregation(aggregation: str) -> str:
    if aggregation not in ("max", "avg"):
        raise ValueError(f"aggregation must be 'max' or 'avg', got {aggregation!r}")
    return aggregation


def boxes_to_rois(boxes: BoxesType, input: Tensor) -> Tensor:
    """Return the boxes as a ``Tensor[K, 5]`` of ``(batch_index, x1, y1, x2, y2)`` in ``input``'s dtype.

    Accepts torchvision's two formats (``Tensor[K, 5]`` or a list of ``Tensor[L, 4]``, one per image) and
    raises ``ValueError`` for non-finite coordinates or batch indices outside ``[0, N)``.
    """
    if isinstance(boxes, (list, tuple)):
        for b in boxes:
            if not isinstance(b, Tensor) or b.dim() != 2 or b.size(1) != 4:
                raise ValueError("boxes given as a list must hold Tensor[L, 4] (x1, y1, x2, y2) per image")
        if len(boxes) == 0:
            rois = input.new_zeros((0, 5))
        else:
            ids = [torch.full_like(b[:, :1], i, dtype=input.dtype, device=input.device) for i, b in enumerate(boxes)]
            coords = [b.to(device=input.device, dtype=input.dtype) for b in boxes]
            rois = torch.cat([torch.cat(ids, 0), torch.cat(coords, 0)], dim=1)
    elif isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.size(1) != 5:
            raise ValueError(f"boxes given as a Tensor must be Tensor[K, 5] (batch_index, x1, y1, x2, y2), got {tuple(boxes.shape)}")
        rois = boxes.to(device=input.device, dtype=input.dtype)
    else:
        raise ValueError("boxes must be a Tensor[K, 5] or a list of Tensor[L, 4]")
    rois = rois.detach()
    if not _is_tracing(rois):
        _check_roi_values(rois, input.size(0))
    return rois.contiguous()


def _is_tracing(t: Tensor) -> bool:
    """True while torch.compile / torch.export / jit tracing records the graph (data is not available)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


def _check_roi_values(rois: Tensor, n: int) -> None:
    """The checks that read the boxes' values (eager mode only: they synchronise and cannot be traced)."""
    if rois.numel() and not bool(torch.isfinite(rois).all()):
        raise ValueError("boxes contain NaN or infinite values; RoI feature extraction needs finite coordinates")
    if rois.numel():
        b = rois[:, 0]
        if bool((b < 0).any()) or bool((b.trunc() >= n).any()):
            raise ValueError(f"box batch indices must lie in [0, {n}) for an input batch of {n} images")


def _check_input(input: Tensor) -> None:
    if not isinstance(input, Tensor) or input.dim() != 4:
        raise ValueError("input must be a Tensor[N, C, H, W]")
    if not input.is_floating_point():
        raise ValueError(f"input must be a floating point tensor, got {input.dtype}")


def _check_feature_map(input: Tensor, num_rois) -> None:
    """An empty feature map has no cell to read: an error rather than silent zeros (shape-only, traceable)."""
    if (input.size(2) == 0 or input.size(3) == 0) and num_rois > 0:
        raise ValueError(
            f"cannot extract {num_rois} RoIs from an empty feature map of shape {tuple(input.shape)} (H or W is 0)"
        )


def _prepare(input: Tensor, boxes: BoxesType) -> Tensor:
    """Checked ``Tensor[K, 5]`` rois for the public functions."""
    _check_input(input)
    rois = boxes_to_rois(boxes, input)
    _check_feature_map(input, rois.size(0))
    return rois


def _c_round(x: Tensor) -> Tensor:
    """C's round(): halves go away from zero (torch.round rounds them to even)."""
    r = torch.round(x)
    t = torch.trunc(x)
    return torch.where((x - t).abs() == 0.5, t + torch.sign(x), r)


_INT_LIMIT = float(1 << 30)  # keeps absurd (but finite) coordinates from overflowing integer arithmetic


def _scale(rois: Tensor, spatial_scale: float) -> Tensor:
    # torchvision multiplies in the input dtype (spatial_scale is cast to T first)
    return rois[:, 1:5] * torch.tensor(spatial_scale, dtype=rois.dtype, device=rois.device)


class _SamplingRoIModule(nn.Module):
    """Shared module form of the bilinear-sampling operators (``_op`` is roi_warp or roi_align)."""

    _op = None
    _default_aligned = False

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int = -1, aggregation: str = "avg", aligned=None):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aggregation = _check_aggregation(aggregation)
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


# ----------------------------------------------------------------------------------------------------------
# per-RoI geometry (shared by every kernel, so all compute the very same bins / sample positions)
# ----------------------------------------------------------------------------------------------------------
def _div(x: Tensor, n) -> Tensor:
    """``x / n`` correctly rounded on every device: CUDA divides by a Python scalar as a multiplication by its
    reciprocal, which can differ in the last bit and then move a ceil()-ed bin edge or sample count."""
    return x / torch.full_like(x, n)


def _quantized_box(rois: Tensor, spatial_scale: float):
    """RoIPool's snap: start = round(x1 * s), end = round(x2 * s) (both inclusive cells), size >= 1."""
    q = _c_round(_scale(rois, spatial_scale)).clamp(-_INT_LIMIT, _INT_LIMIT).to(torch.int64)
    x1, y1, x2, y2 = q.unbind(1)
    w = (x2 - x1 + 1).clamp(min=1)
    h = (y2 - y1 + 1).clamp(min=1)
    return x1, y1, w, h


def _pool_bin_edges(rois: Tensor, spatial_scale: float, ph: int, pw: int, height: int, width: int):
    """Integer cell ranges [start, end) of each RoIPool bin, clipped to the feature map.

    Returns hs, he (int64 [K, ph]) and ws, we (int64 [K, pw]); a bin is empty when end <= start.
    The bin size is computed in the input dtype exactly like torchvision (so float32 rounding of e.g.
    7 * (22 / 7) is reproduced bit for bit).
    """
    dt = rois.dtype
    x1, y1, w, h = _quantized_box(rois, spatial_scale)
    bin_h = _div(h.to(dt), ph)
    bin_w = _div(w.to(dt), pw)
    r_h = torch.arange(ph, dtype=dt, device=rois.device)
    r_w = torch.arange(pw, dtype=dt, device=rois.device)
    hs = torch.floor(r_h[None] * bin_h[:, None]).to(torch.int64)
    he = torch.ceil((r_h + 1)[None] * bin_h[:, None]).to(torch.int64)
    ws = torch.floor(r_w[None] * bin_w[:, None]).to(torch.int64)
    we = torch.ceil((r_w + 1)[None] * bin_w[:, None]).to(torch.int64)
    hs = (hs + y1[:, None]).clamp(0, height)
    he = (he + y1[:, None]).clamp(0, height)
    ws = (ws + x1[:, None]).clamp(0, width)
    we = (we + x1[:, None]).clamp(0, width)
    return hs, he, ws, we


def _grid_size(extent: Tensor, pooled: int, sampling_ratio: int) -> Tensor:
    if sampling_ratio > 0:
        return torch.full(extent.shape, sampling_ratio, dtype=torch.int64, device=extent.device)
    # adaptive: ceil(roi_size / output_size) samples per bin side (computed in the input dtype)
    g = torch.ceil(_div(extent, pooled)).clamp(min=0, max=_INT_LIMIT)
    return g.to(torch.int64)


def _align_params(rois: Tensor, spatial_scale: float, ph: int, pw: int, sampling_ratio: int, aligned: bool):
    """Continuous RoIAlign geometry: start_y, start_x, bin_h, bin_w (input dtype), grid_h, grid_w (int64)."""
    b = _scale(rois, spatial_scale)
    if aligned:
        b = b - torch.tensor(0.5, dtype=rois.dtype, device=rois.device)
    x1, y1, x2, y2 = b.unbind(1)
    rw = x2 - x1
    rh = y2 - y1
    if not aligned:  # legacy behaviour: force malformed boxes to 1 x 1 cells
        rw = rw.clamp(min=1.0)
        rh = rh.clamp(min=1.0)
    bin_h = _div(rh, ph)
    bin_w = _div(rw, pw)
    gh = _grid_size(rh, ph, sampling_ratio)
    gw = _grid_size(rw, pw, sampling_ratio)
    return y1.contiguous(), x1.contiguous(), bin_h, bin_w, gh, gw


def _warp_params(rois: Tensor, spatial_scale: float, ph: int, pw: int, sampling_ratio: int, aligned: bool):
    """RoIWarp geometry: RoIPool's snapped cells [x0, x0 + w) sampled like RoIAlign."""
    dt = rois.dtype
    x1, y1, w, h = _quantized_box(rois, spatial_scale)
    off = 0.5 if aligned else 0.0
    sy = y1.to(dt) - off
    sx = x1.to(dt) - off
    hf = h.to(dt)
    wf = w.to(dt)
    return sy, sx, _div(hf, ph), _div(wf, pw), _grid_size(hf, ph, sampling_ratio), _grid_size(wf, pw, sampling_ratio)


def _snapped_rois(rois: Tensor, spatial_scale: float) -> Tensor:
    """RoIWarp's sampled area as rois at scale 1: ``(batch, x0, y0, x0 + w, y0 + h)`` of the snapped cells.

    RoIWarp (avg) equals RoIAlign (avg) of these boxes with spatial_scale 1, which is how CUDA tensors
    reuse torchvision's kernel for it.
    """
    x1, y1, w, h = _quantized_box(rois, spatial_scale)
    corners = torch.stack([x1, y1, x1 + w, y1 + h], 1).to(rois.dtype)
    return torch.cat([rois[:, :1], corners], 1).contiguous()


def _sample_coords(start: Tensor, bin_size: Tensor, grid: int, pooled: int) -> Tensor:
    """Sample coordinates [k, pooled, grid]: start + p * bin + (i + 0.5) * bin / grid (torchvision's order)."""
    dt = start.dtype
    p = torch.arange(pooled, dtype=dt, device=start.device)
    i = torch.arange(grid, dtype=dt, device=start.device) + 0.5
    a = start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
    return a + _div(i[None, None, :] * bin_size[:, None, None], grid)


def _bilinear_axis(coord: Tensor, size: int):
    """One axis of torchvision's bilinear rule: (low, high) int64 indices and their weights (0 if invalid)."""
    valid = (coord >= -1.0) & (coord <= size)
    c = coord.clamp(min=0)
    low = torch.floor(c).clamp(max=size).to(torch.int64)
    at_end = low >= size - 1
    last = torch.full_like(low, size - 1)
    high = torch.where(at_end, last, low + 1)
    low = torch.where(at_end, last, low)
    c = torch.where(at_end, low.to(c.dtype), c)
    lw = c - low.to(c.dtype)
    hw = 1.0 - lw
    zero = torch.zeros_like(c)
    return low, high, torch.where(valid, hw, zero), torch.where(valid, lw, zero)


# ----------------------------------------------------------------------------------------------------------
# inspection helpers (used by the tests and tools/draw_roi_example.py)
# ----------------------------------------------------------------------------------------------------------
def _single_roi(box, dtype) -> Tensor:
    b = torch.as_tensor(box, dtype=dtype).reshape(-1)
    if b.numel() == 4:
        b = torch.cat([b.new_zeros(1), b])
    return b.reshape(1, 5)


def roi_pool_bins(
    box, spatial_scale: float, output_size, feature_size=None, dtype: torch.dtype = torch.float32
) -> Tuple[List[Tuple[int, int]], List[Tuple[int, int]]]:
    """The integer cells each RoIPool bin maxes over, exactly as :func:`roi_pool` computes them.

    Args:
        box: ``(x1, y1, x2, y2)`` in image coordinates.
        spatial_scale (float): 1 / stride.
        output_size (int or (ph, pw)).
        feature_size ((H, W) or None): clip the ranges to the feature map (None: no clipping).
        dtype: the input dtype whose arithmetic to reproduce (float32 by default, as most models).

    Returns:
        (rows, cols): ``rows[i] = (start, end)`` is the half-open range of cell rows of bin row i and
        ``cols[j]`` that of cell columns of bin column j; bin ``(i, j)`` covers rows x cols.
    """
    ph, pw = _pair(output_size)
    h, w = feature_size if feature_size is not None else (1 << 30, 1 << 30)
    rois = _single_roi(box, dtype)
    if feature_size is None:
        # no clipping: shift by a large offset so the clamp at 0 never applies, then shift back
        x1, y1, qw, qh = _quantized_box(rois, spatial_scale)
        bin_h = qh.to(dtype) / ph
        bin_w = qw.to(dtype) / pw
        rows = [
            (int(torch.floor(torch.tensor(i, dtype=dtype) * bin_h)) + int(y1), int(torch.ceil(torch.tensor(i + 1, dtype=dtype) * bin_h)) + int(y1))
            for i in range(ph)
        ]
        cols = [
            (int(torch.floor(torch.tensor(j, dtype=dtype) * bin_w)) + int(x1), int(torch.ceil(torch.tensor(j + 1, dtype=dtype) * bin_w)) + int(x1))
            for j in range(pw)
        ]
        return rows, cols
    hs, he, ws, we = _pool_bin_edges(rois, spatial_scale, ph, pw, h, w)
    rows = list(zip(hs[0].tolist(), he[0].tolist()))
    cols = list(zip(ws[0].tolist(), we[0].tolist()))
    return rows, cols


def _points(params, ph, pw):
    sy, sx, bh, bw, gh, gw = params
    ys = _sample_coords(sy, bh, int(gh[0]), ph)[0] if int(gh[0]) > 0 else torch.zeros(ph, 0, dtype=sy.dtype)
    xs = _sample_coords(sx, bw, int(gw[0]), pw)[0] if int(gw[0]) > 0 else torch.zeros(pw, 0, dtype=sx.dtype)
    return ys.tolist(), xs.tolist()


def roi_align_sample_points(
    box, spatial_scale: float, output_size, sampling_ratio: int = -1, aligned: bool = False,
    dtype: torch.dtype = torch.float64,
) -> Tuple[List[List[float]], List[List[float]]]:
    """The bilinear sample coordinates :func:`roi_align` reads, in feature-cell index coordinates.

    Returns ``(ys, xs)``: ``ys[i]`` lists the sample y coordinates of bin row i, ``xs[j]`` the sample x
    coordinates of bin column j; bin ``(i, j)`` samples the grid ``ys[i] x xs[j]``. Cell ``(r, c)`` holds the
    value at coordinate ``(r, c)``.
    """
    ph, pw = _pair(output_size)
    return _points(_align_params(_single_roi(box, dtype), spatial_scale, ph, pw, int(sampling_ratio), aligned), ph, pw)


def roi_warp_sample_points(
    box, spatial_scale: float, output_size, sampling_ratio: int = -1, aligned: bool = True,
    dtype: torch.dtype = torch.float64,
) -> Tuple[List[List[float]], List[List[float]]]:
    """The bilinear sample coordinates :func:`roi_warp` reads (same format as roi_align_sample_points)."""
    ph, pw = _pair(output_size)
    return _points(_warp_params(_single_roi(box, dtype), spatial_scale, ph, pw, int(sampling_ratio), aligned), ph, pw)
