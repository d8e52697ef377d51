"""Pure-PyTorch kernels of RoIPool / RoIWarp / RoIAlign (Mask R-CNN Section 3), the fallback of the C++ ones.

Same functions, signatures and return values as the compiled extension (``csrc/roi_ops.cpp``) and the
Triton kernels (``roi_triton.py``), so the registered ops can swap kernel modules freely:

* ``pool_forward(input, batch, hs, he, ws, we) -> (out, argmax)``: argmax is the flat cell ``h * W + w``
  of each bin's maximum (-1 for an empty bin);
* ``pool_backward(grad, batch, argmax, N, C, H, W) -> grad_input``;
* ``sample_forward(input, batch, sy, sx, bh, bw, gh, gw, ph, pw, is_max) -> (out, argmax)``: argmax is the
  sample index ``iy * gw + ix`` of each bin's maximum (an empty ``[0, C, ph, pw]`` tensor for avg);
* ``sample_backward(grad, batch, sy, sx, bh, bw, gh, gw, argmax, N, C, H, W, ph, pw, is_max) -> grad_input``.

The work is vectorised over RoIs that share a sample-grid size, in chunks that bound the size of the
gathered intermediates; the geometry tensors come from :mod:`maskrcnn_plugin.layers.roi_ops`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .roi_ops import _bilinear_axis, _div, _sample_coords

_FLT_MAX = 3.4028234663852886e38  # C's FLT_MAX: the initial value of RoIPool's running max (torchvision)
_ELEMENT_BUDGET = 1 << 23  # elements of the largest gathered intermediate


def _groups(grid_h: Tensor, grid_w: Tensor, per_roi_elements):
    """Yield (gh, gw, roi indices) for RoIs sharing a grid size, in chunks of bounded intermediate size."""
    keys = torch.stack([grid_h, grid_w], 1)
    for gh, gw in torch.unique(keys, dim=0).tolist():
        if gh <= 0 or gw <= 0:
            continue  # no cell / sample in any bin: output 0, no gradient
        sel = torch.nonzero((keys[:, 0] == gh) & (keys[:, 1] == gw)).flatten()
        step = max(1, _ELEMENT_BUDGET // max(per_roi_elements(gh, gw), 1))
        for s in range(0, sel.numel(), step):
            yield gh, gw, sel[s : s + step]


# ----------------------------------------------------------------------------------------------------------
# RoIPool
# ----------------------------------------------------------------------------------------------------------
def pool_forward(input: Tensor, batch: Tensor, hs: Tensor, he: Tensor, ws: Tensor, we: Tensor):
    n, c, height, width = input.shape
    k, ph = hs.shape
    pw = ws.size(1)
    out = input.new_zeros((k, c, ph, pw))
    argmax = torch.full((k, c, ph, pw), -1, dtype=torch.int32, device=input.device)
    if k == 0 or c == 0:
        return out, argmax
    feat = input.permute(0, 2, 3, 1).reshape(n * height * width, c)
    span_h = (he - hs).clamp(min=0).amax(1)
    span_w = (we - ws).clamp(min=0).amax(1)
    for gh, gw, ids in _groups(span_h, span_w, lambda gh, gw: ph * gh * pw * gw * (c + 4)):
        kk = ids.numel()
        rows = hs[ids][:, :, None] + torch.arange(gh, device=input.device)  # [kk, ph, gh]
        cols = ws[ids][:, :, None] + torch.arange(gw, device=input.device)  # [kk, pw, gw]
        inside = (rows < he[ids][:, :, None])[:, :, :, None, None] & (cols < we[ids][:, :, None])[:, None, None]
        cell = rows.clamp(0, height - 1)[:, :, :, None, None] * width + cols.clamp(0, width - 1)[:, None, None]
        flat = batch[ids][:, None, None, None, None] * (height * width) + cell  # [kk, ph, gh, pw, gw]
        v = feat[flat.reshape(-1)].reshape(kk, ph, gh, pw, gw, c).masked_fill(~inside[..., None], float("-inf"))
        v = v.permute(0, 5, 1, 3, 2, 4).reshape(kk, c, ph, pw, gh * gw)
        best, pos = v.max(dim=-1)  # first maximum in scan order, as the C++ kernel
        cells = cell.permute(0, 1, 3, 2, 4).reshape(kk, 1, ph, pw, gh * gw).expand(kk, c, ph, pw, gh * gw)
        best_cell = cells.gather(-1, pos[..., None]).squeeze(-1)
        # the C++ / torchvision running max starts at -FLT_MAX with a strict '>': a bin whose values are all
        # <= -FLT_MAX keeps -FLT_MAX and no arg-max; an empty bin (all -inf here) is 0
        empty = ~inside.any(4).any(2)[:, None]  # [kk, 1, ph, pw]
        out[ids] = torch.where(empty, torch.zeros_like(best), best.clamp(min=-_FLT_MAX))
        argmax[ids] = torch.where(best > -_FLT_MAX, best_cell, torch.full_like(best_cell, -1)).to(torch.int32)
    return out, argmax


def pool_backward(grad: Tensor, batch: Tensor, argmax: Tensor, n: int, c: int, height: int, width: int):
    grad_input = grad.new_zeros(n * c * height * width)
    k = batch.numel()
    if k and c and height * width:
        plane = batch[:, None] * c + torch.arange(c, device=grad.device)  # [k, c]
        index = plane[:, :, None, None] * (height * width) + argmax.to(torch.int64)
        hit = argmax >= 0
        grad_input.index_add_(0, index[hit], grad[hit])
    return grad_input.reshape(n, c, height, width)


# ----------------------------------------------------------------------------------------------------------
# RoIAlign / RoIWarp (bilinear sampling)
# ----------------------------------------------------------------------------------------------------------
def _corners(ys: Tensor, xs: Tensor, height: int, width: int):
    """The four bilinear corners of every sample: [(row index, col index, row weight, col weight)]."""
    yl, yh, wyl, wyh = _bilinear_axis(ys, height)
    xl, xh, wxl, wxh = _bilinear_axis(xs, width)
    return [(yi, xi, wy, wx) for yi, wy in ((yl, wyl), (yh, wyh)) for xi, wx in ((xl, wxl), (xh, wxh))]


def sample_forward(input, batch, sy, sx, bh, bw, gh, gw, ph: int, pw: int, is_max: bool):
    n, c, height, width = input.shape
    k = batch.numel()
    out = input.new_zeros((k, c, ph, pw))
    argmax = torch.full((k if is_max else 0, c, ph, pw), -1, dtype=torch.int32, device=input.device)
    if k == 0 or c == 0:
        return out, argmax
    feat = input.permute(0, 2, 3, 1).reshape(n * height * width, c)
    for g_h, g_w, ids in _groups(gh, gw, lambda a, b: ph * a * pw * b * (3 * c + 16)):
        kk = ids.numel()
        ys = _sample_coords(sy[ids], bh[ids], g_h, ph)[:, :, :, None, None]  # [kk, ph, gh, 1, 1]
        xs = _sample_coords(sx[ids], bw[ids], g_w, pw)[:, None, None]  # [kk, 1, 1, pw, gw]
        base = (batch[ids] * (height * width))[:, None, None, None, None]
        v = None
        for yi, xi, wy, wx in _corners(ys, xs, height, width):
            term = (wy * wx).reshape(-1, 1) * feat[(base + yi * width + xi).reshape(-1)]
            v = term if v is None else v + term
        v = v.reshape(kk, ph, g_h, pw, g_w, c).permute(0, 5, 1, 3, 2, 4).reshape(kk, c, ph, pw, g_h * g_w)
        if is_max:
            best, pos = v.max(dim=-1)  # first maximum in scan order (iy * gw + ix), as the C++ kernel
            out[ids] = best
            argmax[ids] = pos.to(torch.int32)
        else:
            out[ids] = _div(v.sum(-1), g_h * g_w)
    return out, argmax


def sample_backward(grad, batch, sy, sx, bh, bw, gh, gw, argmax, n: int, c: int, height: int, width: int,
                    ph: int, pw: int, is_max: bool):
    if is_max:
        return _sample_backward_max(grad, batch, sy, sx, bh, bw, gh, gw, argmax, n, c, height, width, ph, pw)
    # average: every sample spreads grad / count over its four corners (accumulated channels-last)
    grad_input = grad.new_zeros((n * height * width, c))
    if batch.numel() and c:
        grad_hwc = grad.permute(0, 2, 3, 1)  # [k, ph, pw, c]
        for g_h, g_w, ids in _groups(gh, gw, lambda a, b: ph * a * pw * b * (c + 16)):
            ys = _sample_coords(sy[ids], bh[ids], g_h, ph)[:, :, :, None, None]
            xs = _sample_coords(sx[ids], bw[ids], g_w, pw)[:, None, None]
            base = (batch[ids] * (height * width))[:, None, None, None, None]
            g = grad_hwc[ids][:, :, None, :, None, :]  # [kk, ph, 1, pw, 1, c]
            count = g_h * g_w
            for yi, xi, wy, wx in _corners(ys, xs, height, width):
                index = (base + yi * width + xi).reshape(-1)
                grad_input.index_add_(0, index, (g * _div(wy * wx, count)[..., None]).reshape(-1, c))
    return grad_input.reshape(n, height, width, c).permute(0, 3, 1, 2).contiguous()


def _sample_backward_max(grad, batch, sy, sx, bh, bw, gh, gw, argmax, n, c, height, width, ph, pw):
    """Max: each output's gradient goes to the four corners of its arg-max sample only."""
    grad_input = grad.new_zeros(n * c * height * width)
    if batch.numel() == 0 or c == 0:
        return grad_input.reshape(n, c, height, width)
    for g_h, g_w, ids in _groups(gh, gw, lambda a, b: c * ph * pw * (a + b + 16)):
        kk = ids.numel()
        pos = argmax[ids].to(torch.int64)  # [kk, c, ph, pw]
        hit = pos >= 0
        pos = pos.clamp(min=0)
        ys = _sample_coords(sy[ids], bh[ids], g_h, ph)  # [kk, ph, gh]
        xs = _sample_coords(sx[ids], bw[ids], g_w, pw)  # [kk, pw, gw]
        y = ys[:, None, :, None, :].expand(kk, c, ph, pw, g_h).gather(-1, (pos // g_w)[..., None]).squeeze(-1)
        x = xs[:, None, None, :, :].expand(kk, c, ph, pw, g_w).gather(-1, (pos % g_w)[..., None]).squeeze(-1)
        plane = (batch[ids][:, None] * c + torch.arange(c, device=grad.device))[:, :, None, None]
        g = grad[ids]
        for yi, xi, wy, wx in _corners(y, x, height, width):
            index = plane * (height * width) + yi * width + xi
            grad_input.index_add_(0, index[hit], (g * (wy * wx))[hit])
    return grad_input.reshape(n, c, height, width)
