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

Two execution paths compute the same numbers: a compiled C++ CPU extension (``_ext.py``; forward
parallel over RoIs, backward parallel over channels) and the vectorised pure-PyTorch path in this file
(used for CUDA tensors, other dtypes, or when the extension cannot be built). The environment variable
``MASKRCNN_PLUGIN_ROI_BACKEND`` = ``auto`` (default) | ``python`` | ``cpp`` chooses between them for CPU
float32/float64 tensors; ``cpp`` raises if the extension is unavailable.
"""
from __future__ import annotations

import math
import os
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

__all__ = [
    "roi_pool",
    "roi_warp",
    "roi_align",
    "roi_pool_bins",
    "roi_warp_sample_points",
    "roi_align_sample_points",
    "boxes_to_rois",
]

BoxesType = Union[Tensor, Sequence[Tensor]]

_FLT_MAX = 3.4028234663852886e38  # C's FLT_MAX: the initial value of RoIPool's running max (torchvision)
_ELEMENT_BUDGET = 1 << 23  # elements of the largest gathered intermediate of the pure-PyTorch path
_BACKEND_ENV = "MASKRCNN_PLUGIN_ROI_BACKEND"


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
    if rois.numel() and not bool(torch.isfinite(rois).all()):
        raise ValueError("boxes contain NaN or infinite values; RoI feature extraction needs finite coordinates")
    if rois.numel():
        b = rois[:, 0]
        n = input.size(0)
        if bool((b < 0).any()) or bool((b.trunc() >= n).any()):
            raise ValueError(f"box batch indices must lie in [0, {n}) for an input batch of {n} images")
    return rois.contiguous()


def _check_input(input: Tensor) -> None:
    if not isinstance(input, Tensor) or input.dim() != 4:
        raise ValueError("input must be a Tensor[N, C, H, W]")
    if not input.is_floating_point():
        raise ValueError(f"input must be a floating point tensor, got {input.dtype}")


def _c_round(x: Tensor) -> Tensor:
    """C's round(): halves go away from zero (torch.round rounds them to even)."""
    r = torch.round(x)
    t = torch.trunc(x)
    return torch.where((x - t).abs() == 0.5, t + torch.sign(x), r)


_INT_LIMIT = float(1 << 30)  # keeps absurd (but finite) coordinates from overflowing integer arithmetic


def _scale(rois: Tensor, spatial_scale: float) -> Tensor:
    # torchvision multiplies in the input dtype (spatial_scale is cast to T first)
    return rois[:, 1:5] * torch.tensor(spatial_scale, dtype=rois.dtype, device=rois.device)


# ----------------------------------------------------------------------------------------------------------
# per-RoI geometry (shared by both backends, so both compute the very same bins / sample positions)
# ----------------------------------------------------------------------------------------------------------
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
    bin_h = h.to(dt) / ph
    bin_w = w.to(dt) / pw
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
    g = torch.ceil(extent / pooled).clamp(min=0, max=_INT_LIMIT)
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
    bin_h = rh / ph
    bin_w = rw / pw
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
    return sy, sx, hf / ph, wf / pw, _grid_size(hf, ph, sampling_ratio), _grid_size(wf, pw, sampling_ratio)


def _sample_coords(start: Tensor, bin_size: Tensor, grid: int, pooled: int) -> Tensor:
    """Sample coordinates [k, pooled, grid]: start + p * bin + (i + 0.5) * bin / grid (torchvision's order)."""
    dt = start.dtype
    p = torch.arange(pooled, dtype=dt, device=start.device)
    i = torch.arange(grid, dtype=dt, device=start.device) + 0.5
    a = start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
    return a + (i[None, None, :] * bin_size[:, None, None]) / grid


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
# pure-PyTorch vectorised path (differentiable through autograd)
# ----------------------------------------------------------------------------------------------------------
def _connect(out: Tensor, input: Tensor) -> Tensor:
    """Make `out` part of the autograd graph of `input` even when no element depends on it (zero grad)."""
    if input.requires_grad and not out.requires_grad:
        out = out + input.reshape(-1)[:0].sum()
    return out


def _chunks(idx: Tensor, per_item: int):
    step = max(1, _ELEMENT_BUDGET // max(per_item, 1))
    for s in range(0, idx.numel(), step):
        yield idx[s : s + step]


def _assemble(input: Tensor, k: int, ph: int, pw: int, parts) -> Tensor:
    c = input.size(1)
    if not parts:
        return _connect(input.new_zeros((k, c, ph, pw)), input)
    idx = torch.cat([p[0] for p in parts])
    vals = torch.cat([p[1] for p in parts])
    out = input.new_zeros((k, c, ph, pw)).index_put((idx,), vals)
    return _connect(out, input)


def _roi_pool_python(input: Tensor, rois: Tensor, ph: int, pw: int, spatial_scale: float) -> Tensor:
    n, c, height, width = input.shape
    k = rois.size(0)
    if k == 0 or height == 0 or width == 0:
        return _connect(input.new_zeros((k, c, ph, pw)), input)
    hs, he, ws, we = _pool_bin_edges(rois, spatial_scale, ph, pw, height, width)
    batch = rois[:, 0].to(torch.int64)
    mh = (he - hs).clamp(min=0).amax(1)
    mw = (we - ws).clamp(min=0).amax(1)
    feat = input.permute(0, 2, 3, 1).reshape(n * height * width, c)
    parts = []
    keys = torch.stack([mh, mw], 1)
    for key in torch.unique(keys, dim=0).tolist():
        gh, gw = key
        if gh == 0 or gw == 0:
            continue  # every bin of these RoIs is empty -> 0
        sel = torch.nonzero((keys[:, 0] == gh) & (keys[:, 1] == gw)).flatten()
        for ids in _chunks(sel, ph * gh * pw * gw * (c + 4)):
            kk = ids.numel()
            rh = hs[ids][:, :, None] + torch.arange(gh, device=input.device)  # [kk, ph, gh]
            rw = ws[ids][:, :, None] + torch.arange(gw, device=input.device)  # [kk, pw, gw]
            mask = (rh < he[ids][:, :, None])[:, :, :, None, None] & (rw < we[ids][:, :, None])[:, None, None]
            flat = (
                batch[ids][:, None, None, None, None] * (height * width)
                + rh.clamp(0, height - 1)[:, :, :, None, None] * width
                + rw.clamp(0, width - 1)[:, None, None]
            )
            v = feat[flat.reshape(-1)].reshape(kk, ph, gh, pw, gw, c)
            v = v.masked_fill(~mask[..., None], float("-inf"))
            v = v.permute(0, 5, 1, 3, 2, 4).reshape(kk, c, ph, pw, gh * gw)
            m = v.max(dim=-1).values
            # torchvision starts the running max at -FLT_MAX and pools empty bins to 0
            m = m.clamp(min=-_FLT_MAX)
            empty = ~mask.any(4).any(2)  # [kk, ph, pw]
            m = torch.where(empty[:, None], torch.zeros_like(m), m)
            parts.append((ids, m))
    return _assemble(input, k, ph, pw, parts)


def _sample_python(input: Tensor, batch: Tensor, params, ph: int, pw: int, aggregation: str) -> Tensor:
    """Bilinear-sampling RoI extraction (RoIAlign / RoIWarp) given the per-RoI geometry."""
    n, c, height, width = input.shape
    k = batch.numel()
    if k == 0 or height == 0 or width == 0:
        return _connect(input.new_zeros((k, c, ph, pw)), input)
    sy, sx, bh, bw, gh_all, gw_all = params
    feat = input.permute(0, 2, 3, 1).reshape(n * height * width, c)
    keys = torch.stack([gh_all, gw_all], 1)
    parts = []
    for key in torch.unique(keys, dim=0).tolist():
        gh, gw = key
        if gh <= 0 or gw <= 0:
            continue  # no sample in any bin -> 0
        sel = torch.nonzero((keys[:, 0] == gh) & (keys[:, 1] == gw)).flatten()
        for ids in _chunks(sel, ph * gh * pw * gw * (3 * c + 16)):
            kk = ids.numel()
            ys = _sample_coords(sy[ids], bh[ids], gh, ph)  # [kk, ph, gh]
            xs = _sample_coords(sx[ids], bw[ids], gw, pw)  # [kk, pw, gw]
            yl, yh, wyl, wyh = (t[:, :, :, None, None] for t in _bilinear_axis(ys, height))
            xl, xh, wxl, wxh = (t[:, None, None] for t in _bilinear_axis(xs, width))
            base = (batch[ids] * (height * width))[:, None, None, None, None]
            v = None
            for yi, wy in ((yl, wyl), (yh, wyh)):
                for xi, wx in ((xl, wxl), (xh, wxh)):
                    w = (wy * wx).reshape(-1, 1)
                    idx = (base + yi * width + xi).reshape(-1)
                    term = w * feat[idx]
                    v = term if v is None else v + term
            v = v.reshape(kk, ph, gh, pw, gw, c).permute(0, 5, 1, 3, 2, 4).reshape(kk, c, ph, pw, gh * gw)
            if aggregation == "avg":
                out = v.sum(-1) / float(max(gh * gw, 1))
            else:
                out = v.max(-1).values
            parts.append((ids, out))
    return _assemble(input, k, ph, pw, parts)


# ----------------------------------------------------------------------------------------------------------
# compiled path
# ----------------------------------------------------------------------------------------------------------
class _RoIPoolFunction(Function):
    @staticmethod
    def forward(ctx, input, batch, hs, he, ws, we):
        ext = _ext_module()
        out, argmax = ext.pool_forward(input, batch, hs, he, ws, we)
        ctx.save_for_backward(batch, argmax)
        ctx.input_shape = input.shape
        ctx.mark_non_differentiable(argmax)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        batch, argmax = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        gi = _ext_module().pool_backward(grad.contiguous(), batch, argmax, n, c, h, w)
        return gi, None, None, None, None, None


class _SampleFunction(Function):
    @staticmethod
    def forward(ctx, input, batch, sy, sx, bh, bw, gh, gw, ph, pw, is_max):
        ext = _ext_module()
        out, argmax = ext.sample_forward(input, batch, sy, sx, bh, bw, gh, gw, ph, pw, is_max)
        ctx.save_for_backward(batch, sy, sx, bh, bw, gh, gw, argmax)
        ctx.input_shape = input.shape
        ctx.meta = (ph, pw, is_max)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        batch, sy, sx, bh, bw, gh, gw, argmax = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        ph, pw, is_max = ctx.meta
        gi = _ext_module().sample_backward(
            grad.contiguous(), batch, sy, sx, bh, bw, gh, gw, argmax, n, c, h, w, ph, pw, is_max
        )
        return (gi,) + (None,) * 10


def _ext_module():
    from . import _ext

    return _ext.load_extension()


def _use_cpp(input: Tensor) -> bool:
    backend = os.environ.get(_BACKEND_ENV, "auto").strip().lower() or "auto"
    if backend not in ("auto", "python", "cpp"):
        raise ValueError(f"{_BACKEND_ENV} must be 'auto', 'python' or 'cpp', got {backend!r}")
    if backend == "python":
        return False
    eligible = input.device.type == "cpu" and input.dtype in (torch.float32, torch.float64)
    if backend == "cpp":
        if not eligible:
            return False  # CUDA tensors / other dtypes always take the pure-PyTorch path
        from . import _ext

        if _ext.load_extension(strict=True) is None:  # pragma: no cover - strict raises
            raise RuntimeError("the compiled RoI extension is unavailable")
        return True
    if not eligible:
        return False
    from . import _ext

    return _ext.load_extension() is not None


def _prepare(input: Tensor, boxes: BoxesType):
    _check_input(input)
    rois = boxes_to_rois(boxes, input)
    return rois, rois[:, 0].to(torch.int64).contiguous()


def _run_sampler(input, rois, batch, params, ph, pw, aggregation):
    if _use_cpp(input) and input.size(2) > 0 and input.size(3) > 0:
        sy, sx, bh, bw, gh, gw = (t.contiguous() for t in params)
        return _SampleFunction.apply(input.contiguous(), batch, sy, sx, bh, bw, gh, gw, ph, pw, aggregation == "max")
    return _sample_python(input, batch, params, ph, pw, aggregation)


# ----------------------------------------------------------------------------------------------------------
# public functional API
# ----------------------------------------------------------------------------------------------------------
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
    rois, batch = _prepare(input, boxes)
    n, c, height, width = input.shape
    if rois.size(0) and height > 0 and width > 0 and _use_cpp(input):
        hs, he, ws, we = _pool_bin_edges(rois, spatial_scale, ph, pw, height, width)
        return _RoIPoolFunction.apply(input.contiguous(), batch, hs, he, ws, we)
    return _roi_pool_python(input, rois, ph, pw, spatial_scale)


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
    rois, batch = _prepare(input, boxes)
    params = _warp_params(rois, spatial_scale, ph, pw, int(sampling_ratio), bool(aligned))
    return _run_sampler(input, rois, batch, params, ph, pw, aggregation)


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
    rois, batch = _prepare(input, boxes)
    params = _align_params(rois, spatial_scale, ph, pw, int(sampling_ratio), bool(aligned))
    return _run_sampler(input, rois, batch, params, ph, pw, aggregation)


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
