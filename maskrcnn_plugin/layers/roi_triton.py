"""Triton GPU kernels of the RoI feature-extraction operators (Mask R-CNN, He et al. ICCV 2017, Section 3):
RoIAlign / RoIWarp (bilinear sampling, max or avg over the samples of a bin) and RoIPool.

The four launchers have exactly the signatures, return values and numbers of the compiled CPU kernels
(``csrc/roi_ops.cpp``): they take the per-RoI geometry computed in Python by ``roi_ops`` (sample start, bin
size and sample grid for the samplers; integer bin ranges for RoIPool) and return int32 arg-max tensors with
the same conventions (sample index ``iy * grid_w + ix`` within the bin, resp. cell index ``h * W + w`` within
the feature plane; -1 where nothing was selected).

Numerics. float32 / float64 inputs are computed in their own dtype in the C++ kernels' operation order,
with floating-point contraction off and IEEE-rounded division (Triton's float32 ``/`` is approximate), so
the forward results and every arg-max equal the CPU kernels' bit for bit (checked under the interpreter,
and the sm_90 PTX is checked for FMA-free, round-to-nearest arithmetic). float16 / bfloat16 inputs are
loaded and computed in float32; the result is rounded to their dtype by torch (round-to-nearest-even).

Determinism. Every forward is deterministic: each output element is written by one program, which scans
the samples (cells) of its bin in a fixed order. Every backward (``sample_backward`` avg and max,
``pool_backward``) scatters with ``tl.atomic_add`` into a float32 buffer (float64 for float64 gradients),
cast to the gradient's dtype at the end. The values added are deterministic, but on a GPU the order in
which several of them are summed into one input cell (bins or RoIs sharing a cell) is not: the input
gradient is nondeterministic within float32 (float64) rounding, from run to run and w.r.t. the CPU kernel.

Interpreter. With ``TRITON_INTERPRET=1`` set while this module is imported, the kernels run on CPU tensors
(how the tests check them without a GPU). The kernels call only Triton builtins and this module's own
``@triton.jit`` helpers, so such a copy works even in a process that imported triton in compiled mode.
The module needs only ``torch`` and ``triton``, so scripts can load it by file path.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["sample_forward", "sample_backward", "pool_forward", "pool_backward"]

_FLT_MAX = 3.4028234663852886e38  # C's FLT_MAX: RoIPool's initial running max (torchvision, the C++ kernel)
_TILE_ELEMENTS = 2048  # outputs (channels x bins) handled by one program
_NUM_WARPS = 4
# contraction of a * b + c into an FMA would change the rounding w.r.t. the CPU kernels
_LAUNCH_OPTIONS = {"num_warps": _NUM_WARPS, "enable_fp_fusion": False}


# ----------------------------------------------------------------------------------------------------------
# shared device helpers
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _divide(a, b, IS_F64: tl.constexpr):
    # Triton's float32 '/' is an approximate division; div_rn is the IEEE one (float64 '/' already is)
    if IS_F64:
        return a / b
    else:
        return tl.math.div_rn(a, b)


@triton.jit
def _sample_coord(start, p, i, bin_size, grid, IS_F64: tl.constexpr):
    """start + p * bin + (i + 0.5) * bin / grid, in the C++ kernel's evaluation order."""
    t = start.dtype
    return start + tl.cast(p, t) * bin_size + _divide((tl.cast(i, t) + 0.5) * bin_size, tl.cast(grid, t), IS_F64)


@triton.jit
def _bilinear_tap(coord, size):
    """One axis of torchvision's bilinear rule: (low, high) cells, their weights, and whether the point
    lies in [-1, size] (outside it the sample reads 0)."""
    valid = (coord >= -1.0) & (coord <= size)
    c = tl.where(valid & (coord > 0), coord, 0.0)  # clamp to 0; invalid points get harmless indices
    low = c.to(tl.int32)
    at_end = low >= size - 1  # the last cell: both neighbours are the last cell
    low = tl.where(at_end, size - 1, low)
    high = tl.where(at_end, size - 1, low + 1)
    c = tl.where(at_end, low.to(c.dtype), c)
    frac = c - low.to(c.dtype)
    w_low = tl.where(valid, 1.0 - frac, 0.0)
    w_high = tl.where(valid, frac, 0.0)
    return low, high, w_low, w_high, valid


# ----------------------------------------------------------------------------------------------------------
# RoIAlign / RoIWarp: bilinear sampling
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _sample_forward_kernel(
    x_ptr, batch_ptr, sy_ptr, sx_ptr, bh_ptr, bw_ptr, gh_ptr, gw_ptr, out_ptr, argmax_ptr,
    C, H, W, PH, PW,
    IS_MAX: tl.constexpr, IS_F64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # one program: RoI k x a block of channels x a block of bins (bins flattened as p_h * PW + p_w)
    k = tl.program_id(0).to(tl.int64)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    bins = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    c_ok = chans < C
    p_ok = bins < PH * PW
    p_h = bins // PW
    p_w = bins % PW

    start_y = tl.load(sy_ptr + k)
    start_x = tl.load(sx_ptr + k)
    bin_h = tl.load(bh_ptr + k)
    bin_w = tl.load(bw_ptr + k)
    grid_h = tl.load(gh_ptr + k)
    grid_w = tl.load(gw_ptr + k)
    ft = start_y.dtype
    no_sample = (grid_h <= 0) | (grid_w <= 0)  # such a RoI outputs 0 (arg-max -1)
    rows = tl.where(no_sample, 0, grid_h)

    plane = x_ptr + tl.load(batch_ptr + k) * C * H * W
    chan_off = chans.to(tl.int64)[:, None] * H * W
    mask_cp = c_ok[:, None] & p_ok[None, :]
    if IS_MAX:
        acc = tl.full([BLOCK_C, BLOCK_P], float("-inf"), ft)
        arg = tl.full([BLOCK_C, BLOCK_P], -1, tl.int32)
    else:
        acc = tl.full([BLOCK_C, BLOCK_P], 0.0, ft)
    for iy in range(0, rows):
        y = _sample_coord(start_y, p_h, iy, bin_h, grid_h, IS_F64)
        y_lo, y_hi, wy_lo, wy_hi, y_ok = _bilinear_tap(y, H)
        for ix in range(0, grid_w):
            x = _sample_coord(start_x, p_w, ix, bin_w, grid_w, IS_F64)
            x_lo, x_hi, wx_lo, wx_hi, x_ok = _bilinear_tap(x, W)
            ok = y_ok & x_ok
            m = mask_cp & ok[None, :]
            v1 = tl.load(plane + chan_off + (y_lo * W + x_lo)[None, :], mask=m, other=0.0).to(ft)
            v2 = tl.load(plane + chan_off + (y_lo * W + x_hi)[None, :], mask=m, other=0.0).to(ft)
            v3 = tl.load(plane + chan_off + (y_hi * W + x_lo)[None, :], mask=m, other=0.0).to(ft)
            v4 = tl.load(plane + chan_off + (y_hi * W + x_hi)[None, :], mask=m, other=0.0).to(ft)
            w1 = (wy_lo * wx_lo)[None, :]
            w2 = (wy_lo * wx_hi)[None, :]
            w3 = (wy_hi * wx_lo)[None, :]
            w4 = (wy_hi * wx_hi)[None, :]
            value = tl.where(ok[None, :], w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4, 0.0)
            if IS_MAX:
                # strict '>': the first maximal sample in scan order wins; points outside read 0 and compete
                better = value > acc
                acc = tl.where(better, value, acc)
                arg = tl.where(better, tl.cast(iy * grid_w + ix, tl.int32), arg)
            else:
                acc = acc + value

    if IS_MAX:
        result = tl.where(no_sample, 0.0, acc)
        arg = tl.where(no_sample, -1, arg)
    else:
        count = tl.maximum(grid_h * grid_w, 1).to(ft)
        result = tl.where(no_sample, 0.0, _divide(acc, count, IS_F64))
    out_off = (k * C + chans.to(tl.int64))[:, None] * (PH * PW) + bins[None, :]
    tl.store(out_ptr + out_off, result.to(out_ptr.dtype.element_ty), mask=mask_cp)
    if IS_MAX:
        tl.store(argmax_ptr + out_off, arg, mask=mask_cp)


@triton.jit
def _sample_backward_avg_kernel(
    grad_ptr, batch_ptr, sy_ptr, sx_ptr, bh_ptr, bw_ptr, gh_ptr, gw_ptr, gin_ptr,
    C, H, W, PH, PW,
    IS_F64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # every sample of a bin receives grad / count, split over its four bilinear neighbours
    k = tl.program_id(0).to(tl.int64)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    bins = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    c_ok = chans < C
    p_ok = bins < PH * PW
    p_h = bins // PW
    p_w = bins % PW

    start_y = tl.load(sy_ptr + k)
    start_x = tl.load(sx_ptr + k)
    bin_h = tl.load(bh_ptr + k)
    bin_w = tl.load(bw_ptr + k)
    grid_h = tl.load(gh_ptr + k)
    grid_w = tl.load(gw_ptr + k)
    ft = start_y.dtype
    no_sample = (grid_h <= 0) | (grid_w <= 0)
    rows = tl.where(no_sample, 0, grid_h)
    count = tl.maximum(grid_h * grid_w, 1).to(ft)

    mask_cp = c_ok[:, None] & p_ok[None, :]
    out_off = (k * C + chans.to(tl.int64))[:, None] * (PH * PW) + bins[None, :]
    g = tl.load(grad_ptr + out_off, mask=mask_cp, other=0.0).to(ft)
    plane = gin_ptr + tl.load(batch_ptr + k) * C * H * W
    chan_off = chans.to(tl.int64)[:, None] * H * W
    for iy in range(0, rows):
        y = _sample_coord(start_y, p_h, iy, bin_h, grid_h, IS_F64)
        y_lo, y_hi, wy_lo, wy_hi, y_ok = _bilinear_tap(y, H)
        for ix in range(0, grid_w):
            x = _sample_coord(start_x, p_w, ix, bin_w, grid_w, IS_F64)
            x_lo, x_hi, wx_lo, wx_hi, x_ok = _bilinear_tap(x, W)
            m = mask_cp & (y_ok & x_ok)[None, :]
            w1 = _divide(wy_lo * wx_lo, count, IS_F64)[None, :]
            w2 = _divide(wy_lo * wx_hi, count, IS_F64)[None, :]
            w3 = _divide(wy_hi * wx_lo, count, IS_F64)[None, :]
            w4 = _divide(wy_hi * wx_hi, count, IS_F64)[None, :]
            tl.atomic_add(plane + chan_off + (y_lo * W + x_lo)[None, :], g * w1, mask=m, sem="relaxed")
            tl.atomic_add(plane + chan_off + (y_lo * W + x_hi)[None, :], g * w2, mask=m, sem="relaxed")
            tl.atomic_add(plane + chan_off + (y_hi * W + x_lo)[None, :], g * w3, mask=m, sem="relaxed")
            tl.atomic_add(plane + chan_off + (y_hi * W + x_hi)[None, :], g * w4, mask=m, sem="relaxed")


@triton.jit
def _sample_backward_max_kernel(
    grad_ptr, argmax_ptr, batch_ptr, sy_ptr, sx_ptr, bh_ptr, bw_ptr, gh_ptr, gw_ptr, gin_ptr,
    C, H, W, PH, PW,
    IS_F64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # the arg-max sample of each output receives its gradient, split over its four bilinear neighbours
    k = tl.program_id(0).to(tl.int64)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    bins = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    c_ok = chans < C
    p_ok = bins < PH * PW
    p_h = (bins // PW)[None, :]
    p_w = (bins % PW)[None, :]

    start_y = tl.load(sy_ptr + k)
    start_x = tl.load(sx_ptr + k)
    bin_h = tl.load(bh_ptr + k)
    bin_w = tl.load(bw_ptr + k)
    # a RoI without samples has arg-max -1 everywhere; 1 keeps its (masked) arithmetic finite
    grid_h = tl.maximum(tl.load(gh_ptr + k), 1)
    grid_w = tl.maximum(tl.load(gw_ptr + k), 1)

    mask_cp = c_ok[:, None] & p_ok[None, :]
    out_off = (k * C + chans.to(tl.int64))[:, None] * (PH * PW) + bins[None, :]
    sample = tl.load(argmax_ptr + out_off, mask=mask_cp, other=-1)
    g = tl.load(grad_ptr + out_off, mask=mask_cp, other=0.0).to(start_y.dtype)
    y = _sample_coord(start_y, p_h, sample // grid_w, bin_h, grid_h, IS_F64)
    x = _sample_coord(start_x, p_w, sample % grid_w, bin_w, grid_w, IS_F64)
    y_lo, y_hi, wy_lo, wy_hi, y_ok = _bilinear_tap(y, H)
    x_lo, x_hi, wx_lo, wx_hi, x_ok = _bilinear_tap(x, W)
    m = mask_cp & (sample >= 0) & y_ok & x_ok  # a chosen point outside the map read 0: no gradient
    plane = gin_ptr + tl.load(batch_ptr + k) * C * H * W + chans.to(tl.int64)[:, None] * H * W
    tl.atomic_add(plane + y_lo * W + x_lo, g * (wy_lo * wx_lo), mask=m, sem="relaxed")
    tl.atomic_add(plane + y_lo * W + x_hi, g * (wy_lo * wx_hi), mask=m, sem="relaxed")
    tl.atomic_add(plane + y_hi * W + x_lo, g * (wy_hi * wx_lo), mask=m, sem="relaxed")
    tl.atomic_add(plane + y_hi * W + x_hi, g * (wy_hi * wx_hi), mask=m, sem="relaxed")


# ----------------------------------------------------------------------------------------------------------
# RoIPool: max over integer cell ranges
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _larger(a, b):
    # tl.max is itself a @triton.jit function, decorated in the mode triton was first imported in
    return tl.maximum(a, b)


@triton.jit
def _pool_forward_kernel(
    x_ptr, batch_ptr, hs_ptr, he_ptr, ws_ptr, we_ptr, out_ptr, argmax_ptr,
    C, H, W, PH, PW, INIT_MAX,
    IS_F64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    k = tl.program_id(0).to(tl.int64)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    bins = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    c_ok = chans < C
    p_ok = bins < PH * PW
    p_h = bins // PW
    p_w = bins % PW
    h0 = tl.load(hs_ptr + k * PH + p_h, mask=p_ok, other=0).to(tl.int32)
    h1 = tl.load(he_ptr + k * PH + p_h, mask=p_ok, other=0).to(tl.int32)
    w0 = tl.load(ws_ptr + k * PW + p_w, mask=p_ok, other=0).to(tl.int32)
    w1 = tl.load(we_ptr + k * PW + p_w, mask=p_ok, other=0).to(tl.int32)
    empty = (h1 <= h0) | (w1 <= w0)  # such a bin outputs 0 (arg-max -1)
    rows = tl.reduce(tl.where(empty, 0, h1 - h0), 0, _larger)  # the largest bin extent along y, x
    cols = tl.reduce(tl.where(empty, 0, w1 - w0), 0, _larger)

    plane = x_ptr + tl.load(batch_ptr + k) * C * H * W
    chan_off = chans.to(tl.int64)[:, None] * H * W
    mask_cp = c_ok[:, None] & p_ok[None, :]
    if IS_F64:
        acc = tl.full([BLOCK_C, BLOCK_P], INIT_MAX, tl.float64)
    else:
        acc = tl.full([BLOCK_C, BLOCK_P], INIT_MAX, tl.float32)
    ft = acc.dtype
    arg = tl.full([BLOCK_C, BLOCK_P], -1, tl.int32)
    for dh in range(0, rows):  # cells of a bin in row-major order, as the C++ kernel scans them
        h = h0 + dh
        for dw in range(0, cols):
            w = w0 + dw
            cell = h * W + w
            inside = (h < h1) & (w < w1)
            m = mask_cp & inside[None, :]
            v = tl.load(plane + chan_off + cell[None, :], mask=m, other=0.0).to(ft)
            better = m & (v > acc)
            acc = tl.where(better, v, acc)
            arg = tl.where(better, cell[None, :], arg)
    result = tl.where(empty[None, :], 0.0, acc)
    out_off = (k * C + chans.to(tl.int64))[:, None] * (PH * PW) + bins[None, :]
    tl.store(out_ptr + out_off, result.to(out_ptr.dtype.element_ty), mask=mask_cp)
    tl.store(argmax_ptr + out_off, arg, mask=mask_cp)


@triton.jit
def _pool_backward_kernel(
    grad_ptr, argmax_ptr, batch_ptr, gin_ptr,
    C, HW, P,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    k = tl.program_id(0).to(tl.int64)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    bins = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_cp = (chans < C)[:, None] & (bins < P)[None, :]
    out_off = (k * C + chans.to(tl.int64))[:, None] * P + bins[None, :]
    cell = tl.load(argmax_ptr + out_off, mask=mask_cp, other=-1)
    g = tl.load(grad_ptr + out_off, mask=mask_cp, other=0.0).to(gin_ptr.dtype.element_ty)
    plane = gin_ptr + tl.load(batch_ptr + k) * C * HW + chans.to(tl.int64)[:, None] * HW
    tl.atomic_add(plane + cell, g, mask=mask_cp & (cell >= 0), sem="relaxed")


# ----------------------------------------------------------------------------------------------------------
# launchers (signatures and results of the C++ extension's functions)
# ----------------------------------------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tile(bins: int, channels: int) -> Tuple[int, int]:
    block_p = min(triton.next_power_of_2(bins), 256)
    block_c = max(1, min(triton.next_power_of_2(channels), _TILE_ELEMENTS // block_p))
    return block_c, block_p


def _grid(k: int, channels: int, bins: int, block_c: int, block_p: int):
    return (k, triton.cdiv(channels, block_c), triton.cdiv(bins, block_p))


def _result_buffer(out: Tensor) -> Tensor:
    """Where a forward kernel writes: `out` itself, or a float32 buffer for float16 / bfloat16 outputs,
    rounded by torch afterwards (round-to-nearest-even, as on the GPU; Triton's interpreter truncates
    float32 to bfloat16)."""
    if out.dtype in (torch.float32, torch.float64):
        return out
    return torch.empty(out.shape, dtype=torch.float32, device=out.device)


def _geometry(dtype: torch.dtype, batch, sy, sx, bh, bw, gh, gw):
    """The per-RoI sampling geometry as the kernels read it: floats in the compute dtype, integers int64."""
    ft = _compute_dtype(dtype)
    floats = [t.to(ft).contiguous() for t in (sy, sx, bh, bw)]
    ints = [t.to(torch.int64).contiguous() for t in (batch, gh, gw)]
    return ints[0], floats, ints[1], ints[2]


def sample_forward(
    input: Tensor, batch: Tensor, sy: Tensor, sx: Tensor, bh: Tensor, bw: Tensor, gh: Tensor, gw: Tensor,
    ph: int, pw: int, is_max: bool,
) -> Tuple[Tensor, Tensor]:
    """RoIAlign / RoIWarp forward: (out [K, C, ph, pw] in input's dtype, argmax [K or 0, C, ph, pw] int32)."""
    n, c, h, w = input.shape
    k = batch.size(0)
    out = input.new_empty((k, c, ph, pw))
    argmax = torch.empty((k if is_max else 0, c, ph, pw), dtype=torch.int32, device=input.device)
    if k == 0 or c == 0:
        return out, argmax
    if h == 0 or w == 0:  # nothing to sample from
        out.zero_()
        argmax.fill_(-1)
        return out, argmax
    batch, (sy, sx, bh, bw), gh, gw = _geometry(input.dtype, batch, sy, sx, bh, bw, gh, gw)
    argmax_arg = argmax if is_max else torch.empty(1, dtype=torch.int32, device=input.device)
    result = _result_buffer(out)
    block_c, block_p = _tile(ph * pw, c)
    _sample_forward_kernel[_grid(k, c, ph * pw, block_c, block_p)](
        input.contiguous(), batch, sy, sx, bh, bw, gh, gw, result, argmax_arg,
        c, h, w, ph, pw,
        IS_MAX=bool(is_max), IS_F64=sy.dtype == torch.float64, BLOCK_C=block_c, BLOCK_P=block_p,
        **_LAUNCH_OPTIONS,
    )
    return result.to(input.dtype), argmax


def sample_backward(
    grad: Tensor, batch: Tensor, sy: Tensor, sx: Tensor, bh: Tensor, bw: Tensor, gh: Tensor, gw: Tensor,
    argmax: Tensor, N: int, C: int, H: int, W: int, ph: int, pw: int, is_max: bool,
) -> Tensor:
    """RoIAlign / RoIWarp backward: the input gradient [N, C, H, W] in grad's dtype (see the module
    docstring for its determinism)."""
    ft = _compute_dtype(grad.dtype)
    grad_input = torch.zeros((N, C, H, W), dtype=ft, device=grad.device)
    k = batch.size(0)
    if k == 0 or N * C * H * W == 0:
        return grad_input.to(grad.dtype)
    batch, (sy, sx, bh, bw), gh, gw = _geometry(grad.dtype, batch, sy, sx, bh, bw, gh, gw)
    block_c, block_p = _tile(ph * pw, C)
    grid = _grid(k, C, ph * pw, block_c, block_p)
    is_f64 = ft == torch.float64
    if is_max:
        _sample_backward_max_kernel[grid](
            grad.contiguous(), argmax.contiguous(), batch, sy, sx, bh, bw, gh, gw, grad_input,
            C, H, W, ph, pw,
            IS_F64=is_f64, BLOCK_C=block_c, BLOCK_P=block_p, **_LAUNCH_OPTIONS,
        )
    else:
        _sample_backward_avg_kernel[grid](
            grad.contiguous(), batch, sy, sx, bh, bw, gh, gw, grad_input,
            C, H, W, ph, pw,
            IS_F64=is_f64, BLOCK_C=block_c, BLOCK_P=block_p, **_LAUNCH_OPTIONS,
        )
    return grad_input.to(grad.dtype)


def pool_forward(
    input: Tensor, batch: Tensor, hs: Tensor, he: Tensor, ws: Tensor, we: Tensor
) -> Tuple[Tensor, Tensor]:
    """RoIPool forward: (out [K, C, ph, pw] in input's dtype, argmax [K, C, ph, pw] int32 cell indices)."""
    n, c, h, w = input.shape
    k = batch.size(0)
    ph, pw = hs.size(1), ws.size(1)
    out = input.new_empty((k, c, ph, pw))
    argmax = torch.empty((k, c, ph, pw), dtype=torch.int32, device=input.device)
    if k == 0 or c == 0:
        return out, argmax
    hs, he, ws, we, batch = (t.to(torch.int64).contiguous() for t in (hs, he, ws, we, batch))
    result = _result_buffer(out)
    block_c, block_p = _tile(ph * pw, c)
    _pool_forward_kernel[_grid(k, c, ph * pw, block_c, block_p)](
        input.contiguous(), batch, hs, he, ws, we, result, argmax,
        c, h, w, ph, pw, -_FLT_MAX,
        IS_F64=input.dtype == torch.float64, BLOCK_C=block_c, BLOCK_P=block_p, **_LAUNCH_OPTIONS,
    )
    return result.to(input.dtype), argmax


def pool_backward(grad: Tensor, batch: Tensor, argmax: Tensor, N: int, C: int, H: int, W: int) -> Tensor:
    """RoIPool backward: each output's gradient goes to its arg-max cell; [N, C, H, W] in grad's dtype."""
    ft = _compute_dtype(grad.dtype)
    grad_input = torch.zeros((N, C, H, W), dtype=ft, device=grad.device)
    k = batch.size(0)
    if k == 0 or N * C * H * W == 0:
        return grad_input.to(grad.dtype)
    bins = grad.size(2) * grad.size(3)
    block_c, block_p = _tile(bins, C)
    _pool_backward_kernel[_grid(k, C, bins, block_c, block_p)](
        grad.contiguous(), argmax.contiguous(), batch.to(torch.int64).contiguous(), grad_input,
        C, H * W, bins,
        BLOCK_C=block_c, BLOCK_P=block_p, **_LAUNCH_OPTIONS,
    )
    return grad_input.to(grad.dtype)
