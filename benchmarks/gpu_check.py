"""GPU check of the Triton RoI kernels (maskrcnn_plugin/layers/roi_triton.py): correctness, then speed.

    python3 benchmarks/gpu_check.py            # on a CUDA machine, from the repository root (< 3 min on an H200)
    python3 benchmarks/gpu_check.py --dry-run  # anywhere: tiny shapes on the CPU under TRITON_INTERPRET=1

Needs only torch and triton (torchvision for the comparison, if installed): roi_triton.py is loaded by file
path, so neither the package (which imports detectron2) nor the C++ extension is needed.

(a) Correctness. Every kernel (RoIAlign / RoIWarp avg and max, RoIPool; forward and backward) runs on the
device in float32, float16 and bfloat16 and is compared on the CPU with a plain PyTorch reference written
here, which follows the C++ kernels' rules and operation order:
  * "exact": the reference evaluated in float32 (the kernels' compute dtype) and rounded to the input dtype
    must equal the device output bit for bit, and its arg-max the device arg-max;
  * "f64": the reference evaluated in float64 on the same inputs; the device output must lie within the
    dtype's tolerance of it, and each device arg-max must select a maximal sample (up to that tolerance);
  * "bwd": the input gradient must match the float64 reference backward (scattering through the device
    arg-max) within the dtype's tolerance, relative to the largest gradient element.
(b) Speed. Forward and forward+backward on FPN-shaped workloads, ours (the geometry in PyTorch plus the
kernels, and the forward kernel alone) vs torchvision.ops.roi_align / roi_pool on the same device; median of
repeats timed with CUDA events. Prints markdown tables; writes everything to $OUT/gpu_check.json if $OUT is
set. Exits 1 if a correctness check failed.
"""
import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLT_MAX = 3.4028234663852886e38
INT_LIMIT = float(1 << 30)
TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}  # relative to the largest magnitude

# name, (N, C, H, W), stride, K, output size, box side range in image pixels (as bench_roi_ops.py)
BENCH = [
    ("P2 2x256x200x272 s4, 512 RoIs 7x7", (2, 256, 200, 272), 4, 512, 7, (16, 112)),
    ("2x256x100x136 s8, 512 RoIs 14x14", (2, 256, 100, 136), 8, 512, 14, (16, 400)),
]
CHECK = ("2x16x40x56 s8, 96 RoIs 7x7", (2, 16, 40, 56), 8, 96, 7, (4, 200))
DRY_BENCH = [("dry 2x3x12x16 s4, 5 RoIs 3x3", (2, 3, 12, 16), 4, 5, 3, (4, 40))]
DRY_CHECK = ("dry 2x3x12x16 s8, 8 RoIs 3x3", (2, 3, 12, 16), 8, 8, 3, (4, 150))
SAMPLING, ALIGNED = 2, True  # the benchmark's RoIAlign / RoIWarp settings (detectron2's ROIAlignV2)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU under TRITON_INTERPRET=1")
    p.add_argument("--repeats", type=int, default=25, help="timed runs per measurement (median reported)")
    return p.parse_args()


ARGS = parse_args()
if ARGS.dry_run:
    os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton decorates the kernels

import torch  # noqa: E402


def load_kernels():
    spec = importlib.util.spec_from_file_location("roi_triton", ROOT / "maskrcnn_plugin" / "layers" / "roi_triton.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tri = load_kernels()
try:
    import torchvision.ops as tv
except ImportError:  # the comparison columns are left empty
    tv = None


# ----------------------------------------------------------------------------------------------------------
# inputs and per-RoI geometry (the rules of maskrcnn_plugin/layers/roi_ops.py, computed in the input dtype)
# ----------------------------------------------------------------------------------------------------------
def make_inputs(shape, stride, k, sides, device, seed=0):
    """Features and K boxes (batch, x1, y1, x2, y2) in image pixels; some boxes cross the image border."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(shape, generator=g)
    size = torch.tensor([w * stride, h * stride], dtype=torch.float32)
    lo, hi = sides
    wh = lo + torch.rand(k, 2, generator=g) * (hi - lo)
    xy = torch.rand(k, 2, generator=g) * (size * 1.1) - size * 0.05 - wh / 2
    rois = torch.cat([torch.randint(0, n, (k, 1), generator=g).float(), xy, xy + wh], 1)
    rois[0, 3] = rois[0, 1]  # a degenerate (zero-width) box
    return x.to(device), rois.to(device)


def _grid(extent, pooled, sampling):
    if sampling > 0:
        return torch.full(extent.shape, sampling, dtype=torch.int64, device=extent.device)
    # clamped in float32: 2**30 overflows float16
    return torch.ceil(_div(extent, pooled)).float().clamp(0, INT_LIMIT).to(torch.int64)


def _c_round(v):
    r = torch.round(v)
    t = torch.trunc(v)
    return torch.where((v - t).abs() == 0.5, t + torch.sign(v), r)


def _snapped(rois, scale):
    q = _c_round(rois[:, 1:5] * scale).float().clamp(-INT_LIMIT, INT_LIMIT).to(torch.int64)
    x1, y1, x2, y2 = q.unbind(1)
    return x1, y1, (x2 - x1 + 1).clamp(min=1), (y2 - y1 + 1).clamp(min=1)


def align_geometry(rois, scale, out, sampling, aligned):
    b = rois[:, 1:5] * scale
    if aligned:
        b = b - 0.5
    x1, y1, x2, y2 = b.unbind(1)
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    return (rois[:, 0].long(), y1.contiguous(), x1.contiguous(), _div(rh, out), _div(rw, out),
            _grid(rh, out, sampling), _grid(rw, out, sampling))


def warp_geometry(rois, scale, out, sampling, aligned):
    x1, y1, w, h = _snapped(rois, scale)
    off = 0.5 if aligned else 0.0
    hf, wf = h.to(rois.dtype), w.to(rois.dtype)
    return (rois[:, 0].long(), y1.to(rois.dtype) - off, x1.to(rois.dtype) - off, _div(hf, out), _div(wf, out),
            _grid(hf, out, sampling), _grid(wf, out, sampling))


def pool_geometry(rois, scale, out, height, width):
    x1, y1, w, h = _snapped(rois, scale)
    r = torch.arange(out, dtype=rois.dtype, device=rois.device)
    edges = []
    for start, extent, size in ((y1, h, height), (x1, w, width)):
        b = _div(extent.to(rois.dtype), out)
        lo = torch.floor(r[None] * b[:, None]).to(torch.int64) + start[:, None]
        hi = torch.ceil((r + 1)[None] * b[:, None]).to(torch.int64) + start[:, None]
        edges += [lo.clamp(0, size), hi.clamp(0, size)]
    return (rois[:, 0].long(), *edges)  # batch, hs, he, ws, we


# ----------------------------------------------------------------------------------------------------------
# CPU reference (the C++ kernels' rules and evaluation order, vectorised over RoIs, channels and bins)
# ----------------------------------------------------------------------------------------------------------
def _div(a, b):
    # a tensor divisor: torch may turn division by a Python scalar into a multiplication by its reciprocal
    return a / torch.full_like(a, b)


def _coords(start, bin_size, i, grid, out, dim):
    """start + p * bin + (i + 0.5) * bin / grid as [k, 1 or C, ph, pw] tensors, bins p along `dim` (2: y,
    3: x); i is a sample index (int) or a tensor of them."""
    shape = [1, 1, out, 1] if dim == 2 else [1, 1, 1, out]
    p = torch.arange(out, dtype=start.dtype).view(shape)
    st, bs = start.view(-1, 1, 1, 1), bin_size.view(-1, 1, 1, 1)
    if isinstance(i, torch.Tensor):
        i = i.to(start.dtype)
    return st + p * bs + _div((i + 0.5) * bs, grid)


def _taps(c, size):
    """torchvision's bilinear rule along one axis: low, high, their weights, and validity."""
    valid = (c >= -1) & (c <= size)
    c = torch.where(valid & (c > 0), c, torch.zeros_like(c))
    low = c.to(torch.int64)
    end = low >= size - 1
    low = torch.where(end, torch.full_like(low, size - 1), low)
    high = torch.where(end, low, low + 1)
    c = torch.where(end, low.to(c.dtype), c)
    frac = c - low.to(c.dtype)
    zero = torch.zeros_like(c)
    return low, high, torch.where(valid, 1 - frac, zero), torch.where(valid, frac, zero), valid


def _corners(ty, tx):
    """(y index, x index, weight) of the four bilinear neighbours, weights formed as the C++ kernel does."""
    (yl, yh, wyl, wyh, _), (xl, xh, wxl, wxh, _) = ty, tx
    return [(yl, xl, wyl * wxl), (yl, xh, wyl * wxh), (yh, xl, wyh * wxl), (yh, xh, wyh * wxh)]


def _groups(gh, gw):
    """RoIs sharing a sample grid (grid_h, grid_w), skipping those without samples (output 0)."""
    for g_h, g_w in torch.unique(torch.stack([gh, gw], 1), dim=0).tolist():
        if g_h > 0 and g_w > 0:
            yield g_h, g_w, torch.nonzero((gh == g_h) & (gw == g_w)).flatten()


def _gather(planes, yi, xi):
    """planes[k, c, yi, xi] for [k, C, H, W] planes and index tensors broadcastable to [k, C, ph, pw]."""
    kk = torch.arange(planes.size(0)).view(-1, 1, 1, 1)
    cc = torch.arange(planes.size(1)).view(1, -1, 1, 1)
    return planes[kk, cc, yi, xi]


def _kernel_geometry(geom):
    """The geometry in the precision the kernels compute sample coordinates in: float32, float64 for float64."""
    batch, sy, sx, bh, bw, gh, gw = geom
    ct = torch.float64 if sy.dtype == torch.float64 else torch.float32
    return (batch, *(t.to(ct) for t in (sy, sx, bh, bw)), gh, gw)


def ref_sample_forward(x, geom, out, is_max, dtype):
    """Reference RoIAlign / RoIWarp forward in `dtype` (float32: the kernels' arithmetic; float64: exact).

    The sample coordinates are computed in the kernels' coordinate precision in both cases (`_kernel_geometry`):
    a float64 coordinate can fall on the other side of a validity or cell boundary (e.g. -1.0000001 instead of
    -1.0 on RoIWarp's lattice), which is a different sample, not an error of the interpolation being checked."""
    batch, sy, sx, bh, bw, gh, gw = _kernel_geometry(geom)
    x = x.to(dtype)
    k, c, h, w = batch.numel(), x.size(1), x.size(2), x.size(3)
    res = torch.zeros(k, c, out, out, dtype=dtype)
    arg = torch.full((k, c, out, out), -1, dtype=torch.int32)
    for g_h, g_w, ids in _groups(gh, gw):
        planes = x[batch[ids]]
        acc = torch.full((ids.numel(), c, out, out), -math.inf if is_max else 0.0, dtype=dtype)
        best = torch.full(acc.shape, -1, dtype=torch.int32)
        for iy in range(g_h):
            ty = _taps(_coords(sy[ids], bh[ids], iy, g_h, out, dim=2).to(dtype), h)
            for ix in range(g_w):
                tx = _taps(_coords(sx[ids], bw[ids], ix, g_w, out, dim=3).to(dtype), w)
                value = None
                for yi, xi, wt in _corners(ty, tx):  # summed in the kernel's order
                    term = wt * _gather(planes, yi, xi)
                    value = term if value is None else value + term
                value = torch.where(ty[4] & tx[4], value, torch.zeros_like(value))  # outside: reads 0
                if is_max:  # strict '>': the first maximal sample wins
                    better = value > acc
                    acc = torch.where(better, value, acc)
                    best = torch.where(better, torch.full_like(best, iy * g_w + ix), best)
                else:
                    acc = acc + value
        res[ids] = acc if is_max else _div(acc, g_h * g_w)
        arg[ids] = best
    return res, arg


def _scatter(grad_input, batch_ids, yi, xi, values, valid):
    """grad_input[b, c, y, x] += values where valid (tensors broadcastable to [k, C, ph, pw])."""
    n, c, h, w = grad_input.shape
    chans = torch.arange(c).view(1, -1, 1, 1)
    flat = ((batch_ids.view(-1, 1, 1, 1) * c + chans) * h + yi) * w + xi
    flat, values, valid = torch.broadcast_tensors(flat, values, valid)
    grad_input.view(-1).index_put_((flat[valid],), values[valid], accumulate=True)


def ref_sample_backward(grad, geom, argmax, shape, out, is_max):
    """Float64 reference input gradient; max mode scatters through the given arg-max."""
    batch, sy, sx, bh, bw, gh, gw = _kernel_geometry(geom)
    grad = grad.double()
    gi = torch.zeros(shape, dtype=torch.float64)
    h, w = shape[2], shape[3]
    for g_h, g_w, ids in _groups(gh, gw):
        g, b = grad[ids], batch[ids]
        if is_max:
            s = argmax[ids].long()
            chosen = s.clamp(min=0)
            ty = _taps(_coords(sy[ids], bh[ids], chosen // g_w, g_h, out, dim=2).double(), h)
            tx = _taps(_coords(sx[ids], bw[ids], chosen % g_w, g_w, out, dim=3).double(), w)
            for yi, xi, wt in _corners(ty, tx):
                _scatter(gi, b, yi, xi, g * wt, (s >= 0) & ty[4] & tx[4])
            continue
        for iy in range(g_h):
            ty = _taps(_coords(sy[ids], bh[ids], iy, g_h, out, dim=2).double(), h)
            for ix in range(g_w):
                tx = _taps(_coords(sx[ids], bw[ids], ix, g_w, out, dim=3).double(), w)
                for yi, xi, wt in _corners(ty, tx):
                    _scatter(gi, b, yi, xi, g * _div(wt, g_h * g_w), ty[4] & tx[4])
    return gi


def sample_values_at(x, geom, out, chosen):
    """Float64 value of sample `chosen` [k, C, ph, pw] of each bin (0 where chosen < 0 or outside)."""
    batch, sy, sx, bh, bw, gh, gw = _kernel_geometry(geom)
    x = x.double()
    res = torch.zeros(chosen.shape, dtype=torch.float64)
    h, w = x.shape[2], x.shape[3]
    for g_h, g_w, ids in _groups(gh, gw):
        s = chosen[ids].long().clamp(min=0)
        ty = _taps(_coords(sy[ids], bh[ids], s // g_w, g_h, out, dim=2).double(), h)
        tx = _taps(_coords(sx[ids], bw[ids], s % g_w, g_w, out, dim=3).double(), w)
        planes = x[batch[ids]]
        v = sum(wt * _gather(planes, yi, xi) for yi, xi, wt in _corners(ty, tx))
        res[ids] = torch.where(ty[4] & tx[4] & (chosen[ids] >= 0), v, torch.zeros_like(v))
    return res


def ref_pool_forward(x, geom, dtype):
    """Reference RoIPool: max over the cells of each bin scanned row-major from -FLT_MAX; empty bins 0."""
    batch, hs, he, ws, we = geom
    x = x.to(dtype)
    k, c, out, height, width = batch.numel(), x.size(1), hs.size(1), x.size(2), x.size(3)
    planes = x[batch]
    acc = torch.full((k, c, out, out), -FLT_MAX, dtype=dtype)
    arg = torch.full((k, c, out, out), -1, dtype=torch.int32)
    rows = int((he - hs).clamp(min=0).max()) if k else 0
    cols = int((we - ws).clamp(min=0).max()) if k else 0
    for dh in range(rows):
        hh = (hs + dh).view(k, 1, out, 1)
        for dw in range(cols):
            ww = (ws + dw).view(k, 1, 1, out)
            inside = (hh < he.view(k, 1, out, 1)) & (ww < we.view(k, 1, 1, out))
            v = _gather(planes, hh.clamp(max=height - 1), ww.clamp(max=width - 1))
            better = inside & (v > acc)
            acc = torch.where(better, v, acc)
            arg = torch.where(better, (hh * width + ww).to(torch.int32), arg)
    empty = (he <= hs).view(k, 1, out, 1) | (we <= ws).view(k, 1, 1, out)
    return torch.where(empty, torch.zeros_like(acc), acc), arg


def ref_pool_backward(grad, batch, argmax, shape):
    gi = torch.zeros(shape, dtype=torch.float64)
    cell = argmax.long().clamp(min=0)
    _scatter(gi, batch, cell // shape[3], cell % shape[3], grad.double(), argmax >= 0)
    return gi


# ----------------------------------------------------------------------------------------------------------
# (a) correctness
# ----------------------------------------------------------------------------------------------------------
def _rel_err(actual, expected):
    scale = max(expected.abs().max().item(), 1e-30) if expected.numel() else 1.0
    return ((actual.double() - expected.double()).abs().max().item() / scale) if expected.numel() else 0.0


def _record(results, name, dtype, kind, ok, detail):
    results.append({"op": name, "dtype": dtype, "check": kind, "ok": bool(ok), "detail": detail})
    print(f"  {'ok  ' if ok else 'FAIL'} {name:10s} {dtype:9s} {kind:5s} {detail}", flush=True)


def _check_sample(results, name, x, geom, out, is_max, dt_name):
    dev_out, dev_arg = tri.sample_forward(x, *geom, out, out, is_max)
    cpu_geom = [t.cpu() for t in geom]
    xc = x.cpu()
    ref32, arg32 = ref_sample_forward(xc, cpu_geom, out, is_max, torch.float32)
    same = torch.equal(dev_out.cpu(), ref32.to(x.dtype)) and (not is_max or torch.equal(dev_arg.cpu(), arg32))
    _record(results, name, dt_name, "exact", same,
            f"max |diff| {(dev_out.cpu().double() - ref32.to(x.dtype).double()).abs().max().item():.3g}"
            + (f", arg-max equal {torch.equal(dev_arg.cpu(), arg32)}" if is_max else ""))
    ref64, _ = ref_sample_forward(xc, cpu_geom, out, is_max, torch.float64)
    err = _rel_err(dev_out.cpu(), ref64)
    ok = err <= TOLERANCE[dt_name]
    detail = f"rel err {err:.2e}"
    if is_max:  # the chosen sample must be a maximal one (up to rounding)
        chosen = dev_arg.cpu()
        values = sample_values_at(xc, cpu_geom, out, chosen)
        gap = _rel_err(values, ref64)
        ok = ok and gap <= TOLERANCE[dt_name]
        detail += f", value at device arg-max vs max: rel {gap:.2e}"
    _record(results, name, dt_name, "f64", ok, detail)

    grad = torch.randn(dev_out.shape, generator=torch.Generator().manual_seed(1)).to(x.dtype)
    n, c, h, w = x.shape
    dev_gi = tri.sample_backward(grad.to(x.device), *geom, dev_arg, n, c, h, w, out, out, is_max)
    ref_gi = ref_sample_backward(grad, cpu_geom, dev_arg.cpu(), (n, c, h, w), out, is_max)
    err = _rel_err(dev_gi.cpu(), ref_gi)
    _record(results, name, dt_name, "bwd", err <= TOLERANCE[dt_name] and dev_gi.dtype == x.dtype, f"rel err {err:.2e}")


def _check_pool(results, x, geom, dt_name):
    dev_out, dev_arg = tri.pool_forward(x, *geom)
    cpu_geom = [t.cpu() for t in geom]
    ref, ref_arg = ref_pool_forward(x.cpu(), cpu_geom, torch.float32)
    same = torch.equal(dev_out.cpu(), ref.to(x.dtype)) and torch.equal(dev_arg.cpu(), ref_arg)
    _record(results, "pool", dt_name, "exact", same, f"arg-max equal {torch.equal(dev_arg.cpu(), ref_arg)}")
    grad = torch.randn(dev_out.shape, generator=torch.Generator().manual_seed(1)).to(x.dtype)
    n, c, h, w = x.shape
    dev_gi = tri.pool_backward(grad.to(x.device), geom[0], dev_arg, n, c, h, w)
    err = _rel_err(dev_gi.cpu(), ref_pool_backward(grad, cpu_geom[0], dev_arg.cpu(), (n, c, h, w)))
    _record(results, "pool", dt_name, "bwd", err <= TOLERANCE[dt_name], f"rel err {err:.2e}")


def _check_torchvision(results, x, rois, scale, out):
    """Our RoIAlign avg / RoIPool against torchvision's kernels on the same device."""
    if tv is None:
        return
    ours, _ = tri.sample_forward(x, *align_geometry(rois, scale, out, SAMPLING, ALIGNED), out, out, False)
    theirs = tv.roi_align(x, rois, out, scale, SAMPLING, ALIGNED)
    err = _rel_err(ours, theirs)
    _record(results, "align_avg", "float32", "tv", err <= 1e-5, f"vs torchvision.ops.roi_align rel err {err:.2e}")
    ours, _ = tri.pool_forward(x, *pool_geometry(rois, scale, out, x.size(2), x.size(3)))
    theirs = tv.roi_pool(x, rois, out, scale)
    _record(results, "pool", "float32", "tv", torch.equal(ours, theirs), "vs torchvision.ops.roi_pool: equal")


def run_checks(device, spec):
    name, shape, stride, k, out, sides = spec
    print(f"\n## Correctness ({name}; reference on the CPU)\n", flush=True)
    results = []
    x32, rois32 = make_inputs(shape, stride, k, sides, device)
    scale = 1.0 / stride
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        dt_name = str(dtype).replace("torch.", "")
        x, rois = x32.to(dtype), rois32.to(dtype)
        for op, geometry, sampling, aligned in (
            ("align", align_geometry, -1, False),  # adaptive grid: varies per RoI
            ("warp", warp_geometry, SAMPLING, True),
        ):
            geom = geometry(rois, scale, out, sampling, aligned)
            for is_max in (False, True):
                _check_sample(results, f"{op}_{'max' if is_max else 'avg'}", x, geom, out, is_max, dt_name)
        _check_pool(results, x, pool_geometry(rois, scale, out, shape[2], shape[3]), dt_name)
    _check_torchvision(results, x32, rois32, scale, out)
    return results


# ----------------------------------------------------------------------------------------------------------
# (b) speed
# ----------------------------------------------------------------------------------------------------------
def _timer(device):
    if device.type == "cuda":
        def measure(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
    else:
        def measure(fn):
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3
    return measure


def _median_ms(fn, device, repeats, warmup):
    measure = _timer(device)
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return statistics.median(measure(fn) for _ in range(repeats))


def _ours(op, x, rois, scale, out):
    """(forward incl. geometry, forward kernel alone, forward + backward incl. geometry) closures."""
    n, c, h, w = x.shape
    grad = torch.ones((rois.size(0), c, out, out), dtype=x.dtype, device=x.device)
    if op == "pool":
        def geometry():
            return pool_geometry(rois, scale, out, h, w)

        def forward():
            return tri.pool_forward(x, *geometry())

        fixed = geometry()

        def kernel():
            return tri.pool_forward(x, *fixed)

        def both():
            geom = geometry()
            _, arg = tri.pool_forward(x, *geom)
            return tri.pool_backward(grad, geom[0], arg, n, c, h, w)
        return forward, kernel, both
    kind, agg = op.split("_")
    make = align_geometry if kind == "align" else warp_geometry
    is_max = agg == "max"

    def forward():
        return tri.sample_forward(x, *make(rois, scale, out, SAMPLING, ALIGNED), out, out, is_max)

    fixed = make(rois, scale, out, SAMPLING, ALIGNED)

    def kernel():
        return tri.sample_forward(x, *fixed, out, out, is_max)

    def both():
        geom = make(rois, scale, out, SAMPLING, ALIGNED)
        _, arg = tri.sample_forward(x, *geom, out, out, is_max)
        return tri.sample_backward(grad, *geom, arg, n, c, h, w, out, out, is_max)
    return forward, kernel, both


def _torchvision(op, x, rois, scale, out):
    """torchvision's counterpart (roi_pool for pool, roi_align avg otherwise): forward, forward + backward."""
    if tv is None:
        return None, None
    if op == "pool":
        def call(inp):
            return tv.roi_pool(inp, rois, out, scale)
    else:
        def call(inp):
            return tv.roi_align(inp, rois, out, scale, SAMPLING, ALIGNED)
    xg = x.detach().clone().requires_grad_(True)

    def both():
        xg.grad = None
        call(xg).backward(torch.ones((rois.size(0), x.size(1), out, out), dtype=x.dtype, device=x.device))
    return (lambda: call(x)), both


def run_bench(device, specs, repeats, warmup):
    rows = []
    for name, shape, stride, k, out, sides in specs:
        x, rois = make_inputs(shape, stride, k, sides, device, seed=1)
        scale = 1.0 / stride
        for op in ("align_avg", "align_max", "warp_avg", "warp_max", "pool"):
            forward, kernel, both = _ours(op, x, rois, scale, out)
            tv_forward, tv_both = _torchvision(op, x, rois, scale, out)
            row = {"workload": name, "op": op, "dtype": "float32"}
            row["ours_fwd_ms"] = _median_ms(forward, device, repeats, warmup)
            row["ours_fwd_kernel_ms"] = _median_ms(kernel, device, repeats, warmup)
            row["ours_fwd_bwd_ms"] = _median_ms(both, device, repeats, warmup)
            if tv_forward is not None:
                row["tv_op"] = "roi_pool" if op == "pool" else "roi_align (avg)"
                row["tv_fwd_ms"] = _median_ms(tv_forward, device, repeats, warmup)
                row["tv_fwd_bwd_ms"] = _median_ms(tv_both, device, repeats, warmup)
            rows.append(row)
            print(f"  timed {name} {op}", flush=True)
    return rows


def _fmt(v):
    return "" if v is None else f"{v:.3f}"


def print_bench(rows):
    print("\n## Speed (ms, median; float32; ours = PyTorch geometry + Triton kernels)\n")
    print("| workload | op | ours fwd | ours fwd kernel | torchvision fwd | ours fwd+bwd | torchvision fwd+bwd "
          "| tv/ours fwd | tv/ours fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tv_f, tv_b = r.get("tv_fwd_ms"), r.get("tv_fwd_bwd_ms")
        ratio_f = None if tv_f is None else tv_f / r["ours_fwd_ms"]
        ratio_b = None if tv_b is None else tv_b / r["ours_fwd_bwd_ms"]
        print(f"| {r['workload']} | {r['op']} | {_fmt(r['ours_fwd_ms'])} | {_fmt(r['ours_fwd_kernel_ms'])} | "
              f"{_fmt(tv_f)} | {_fmt(r['ours_fwd_bwd_ms'])} | {_fmt(tv_b)} | {_fmt(ratio_f)} | {_fmt(ratio_b)} |")
    print("\ntorchvision counterpart: roi_pool for pool, roi_align (avg, the same sampling) for every other op.")


def main():
    if ARGS.dry_run:
        device, check, bench, repeats, warmup = torch.device("cpu"), DRY_CHECK, DRY_BENCH, 1, 0
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device (use --dry-run to exercise the script on the CPU)")
        device, check, bench, repeats, warmup = torch.device("cuda"), CHECK, BENCH, ARGS.repeats, 3
    import triton

    started = time.time()
    info = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (TRITON_INTERPRET=1)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "torchvision": None if tv is None else sys.modules["torchvision"].__version__,
        "dry_run": ARGS.dry_run,
    }
    print(f"# GPU check of the Triton RoI kernels: {info}")
    checks = run_checks(device, check)
    bench_rows = run_bench(device, bench, repeats, warmup)
    print_bench(bench_rows)
    failed = [c for c in checks if not c["ok"]]
    info["seconds"] = round(time.time() - started, 1)
    print(f"\n{len(checks) - len(failed)}/{len(checks)} checks passed; {info['seconds']} s")
    out_dir = os.environ.get("OUT")
    if out_dir:
        path = Path(out_dir) / "gpu_check.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"info": info, "checks": checks, "bench": bench_rows}, indent=1))
        print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
