"""Tests of maskrcnn_plugin.layers: RoIPool / RoIWarp / RoIAlign, both CPU backends (python, cpp).

The reference implementations below are deliberately plain Python loops over RoIs, bins and samples,
written from the operator definitions (Mask R-CNN Section 3 / torchvision conventions). Each reference
returns, for every output element, the list of (input index, weight) pairs it reads, so the same loops
give the forward value (sum of weight * input) and the gradient (scatter of weight * grad).
"""
import math
import os

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskrcnn_plugin.layers import (
    RoIAlign,
    RoIPool,
    RoIWarp,
    roi_align,
    roi_align_sample_points,
    roi_pool,
    roi_pool_bins,
    roi_warp,
    roi_warp_sample_points,
)
from maskrcnn_plugin.layers import _ext

FLT_MAX = float(np.finfo(np.float32).max)


# ------------------------------------------------------------------------------------------------------
# backends
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(params=["python", "cpp"])
def backend(request, monkeypatch):
    if request.param == "cpp" and _ext.load_extension() is None:
        pytest.skip("C++ RoI extension could not be built here")
    monkeypatch.setenv("MASKRCNN_PLUGIN_ROI_BACKEND", request.param)
    return request.param


@pytest.fixture(autouse=True)
def _single_thread():
    """Small ops run single-threaded: on a shared 2-core machine OpenMP barriers waiting for a busy core
    made gradcheck up to 10x slower. Multi-threaded kernels are covered by test_backends_agree."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _set_backend(name):
    os.environ["MASKRCNN_PLUGIN_ROI_BACKEND"] = name


# ------------------------------------------------------------------------------------------------------
# plain-loop references (float64; the geometry in the input dtype's arithmetic where it matters)
# ------------------------------------------------------------------------------------------------------
def c_round(v):
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def ref_bilinear_taps(y, x, H, W):
    """torchvision's bilinear rule: [(flat index, weight)] of the <= 4 cells read at (y, x)."""
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return []
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= H - 1:
        y_high = y_low = H - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= W - 1:
        x_high = x_low = W - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return [
        (y_low * W + x_low, hy * hx),
        (y_low * W + x_high, hy * lx),
        (y_high * W + x_low, ly * hx),
        (y_high * W + x_high, ly * lx),
    ]


def ref_sampler(x, rois, ph, pw, starts_bins_grids, aggregation):
    """Generic bilinear-sampling reference. starts_bins_grids(roi) -> (sy, sx, bin_h, bin_w, gh, gw)."""
    N, C, H, W = x.shape
    xs = x.detach().double()
    taps = {}  # (k, c, i, j) -> [(n, c, flat, weight)]
    out = torch.zeros(len(rois), C, ph, pw, dtype=torch.float64)
    for k, roi in enumerate(rois.tolist()):
        n = int(roi[0])
        sy, sx, bin_h, bin_w, gh, gw = starts_bins_grids(roi)
        for c in range(C):
            plane = xs[n, c].reshape(-1)
            for i in range(ph):
                for j in range(pw):
                    samples = []
                    for iy in range(gh):
                        yy = sy + i * bin_h + (iy + 0.5) * bin_h / gh
                        for ix in range(gw):
                            xx = sx + j * bin_w + (ix + 0.5) * bin_w / gw
                            t = ref_bilinear_taps(yy, xx, H, W)
                            samples.append((sum(w * float(plane[f]) for f, w in t), t))
                    if not samples:
                        out[k, c, i, j] = 0.0
                        taps[k, c, i, j] = []
                    elif aggregation == "avg":
                        out[k, c, i, j] = sum(v for v, _ in samples) / len(samples)
                        taps[k, c, i, j] = [(n, c, f, w / len(samples)) for _, t in samples for f, w in t]
                    else:
                        best = 0
                        for s in range(1, len(samples)):
                            if samples[s][0] > samples[best][0]:
                                best = s
                        out[k, c, i, j] = samples[best][0]
                        taps[k, c, i, j] = [(n, c, f, w) for f, w in samples[best][1]]
    return out, taps


def ref_roi_align(x, rois, ph, pw, scale, sampling_ratio, aggregation, aligned):
    def geom(roi):
        off = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = (v * scale - off for v in roi[1:])
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        gh = sampling_ratio if sampling_ratio > 0 else max(math.ceil(rh / ph), 0)
        gw = sampling_ratio if sampling_ratio > 0 else max(math.ceil(rw / pw), 0)
        return y1, x1, rh / ph, rw / pw, gh, gw

    return ref_sampler(x, rois, ph, pw, geom, aggregation)


def ref_roi_warp(x, rois, ph, pw, scale, sampling_ratio, aggregation, aligned=True):
    def geom(roi):
        x1, y1, x2, y2 = (c_round(v * scale) for v in roi[1:])
        w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)  # RoIPool's whole cells x1..x2 inclusive
        off = 0.5 if aligned else 0.0  # sample the cells' own area [x1, x1 + w) (cell centres at i + 0.5)
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(h / ph)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(w / pw)
        return y1 - off, x1 - off, h / ph, w / pw, gh, gw

    return ref_sampler(x, rois, ph, pw, geom, aggregation)


def ref_roi_pool(x, rois, ph, pw, scale):
    """Fast R-CNN RoIPool as torchvision computes it (bin sizes in the input dtype)."""
    N, C, H, W = x.shape
    T = np.float32 if x.dtype == torch.float32 else np.float64
    xs = x.detach().double()
    out = torch.zeros(len(rois), C, ph, pw, dtype=torch.float64)
    taps = {}
    for k, roi in enumerate(rois.tolist()):
        n = int(roi[0])
        x1, y1, x2, y2 = (c_round(float(T(v) * T(scale))) for v in roi[1:])
        rw, rh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        bh, bw = T(rh) / T(ph), T(rw) / T(pw)
        for c in range(C):
            for i in range(ph):
                hs = min(max(int(math.floor(T(i) * bh)) + y1, 0), H)
                he = min(max(int(math.ceil(T(i + 1) * bh)) + y1, 0), H)
                for j in range(pw):
                    ws = min(max(int(math.floor(T(j) * bw)) + x1, 0), W)
                    we = min(max(int(math.ceil(T(j + 1) * bw)) + x1, 0), W)
                    if he <= hs or we <= ws:
                        out[k, c, i, j] = 0.0
                        taps[k, c, i, j] = []
                        continue
                    best, arg = -FLT_MAX, None
                    for r in range(hs, he):
                        for q in range(ws, we):
                            v = float(xs[n, c, r, q])
                            if v > best:
                                best, arg = v, r * W + q
                    out[k, c, i, j] = best
                    taps[k, c, i, j] = [] if arg is None else [(n, c, arg, 1.0)]
    return out, taps


def ref_grad(x, taps, grad_out):
    N, C, H, W = x.shape
    g = torch.zeros(N, C, H * W, dtype=torch.float64)
    for (k, c, i, j), lst in taps.items():
        go = float(grad_out[k, c, i, j])
        for n, cc, f, w in lst:
            g[n, cc, f] += go * w
    return g.reshape(N, C, H, W)


# ------------------------------------------------------------------------------------------------------
# random cases
# ------------------------------------------------------------------------------------------------------
def make_case(seed, N=2, C=3, H=9, W=11, K=7, scale=0.5, dtype=torch.float64):
    """Feature map and boxes (image coordinates) incl. partly / wholly outside, zero-size and tiny boxes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64).to(dtype)
    img_h, img_w = H / scale, W / scale
    xy = torch.rand(K, 2, generator=g, dtype=torch.float64) * torch.tensor([img_w * 1.2, img_h * 1.2]) - torch.tensor([img_w * 0.1, img_h * 0.1])
    wh = torch.rand(K, 2, generator=g, dtype=torch.float64) * torch.tensor([img_w * 0.8, img_h * 0.8])
    boxes = torch.cat([xy, xy + wh], 1)
    if K >= 4:
        boxes[0] = torch.tensor([3.0, 4.0, 3.0, 4.0])  # zero-size box
        boxes[1] = torch.tensor([-50.0, -40.0, -20.0, -10.0])  # wholly outside (top-left)
        boxes[2] = torch.tensor([img_w - 3.0, img_h - 5.0, img_w + 30.0, img_h + 9.0])  # partly outside
        boxes[3] = torch.tensor([img_w * 2, 1.0, img_w * 2 + 5.0, 6.0])  # wholly outside (right)
    bidx = torch.randint(0, N, (K, 1), generator=g).double()
    rois = torch.cat([bidx, boxes], 1).to(dtype)
    return x, rois


ALIGN_CASES = [(sr, agg, al) for sr in (-1, 2) for agg in ("avg", "max") for al in (False, True)]


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item() if a.numel() else 0.0


# ------------------------------------------------------------------------------------------------------
# forward and backward against the references
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sr,agg,aligned", ALIGN_CASES)
def test_roi_align_matches_reference(backend, sr, agg, aligned):
    seed = 100 + ALIGN_CASES.index((sr, agg, aligned))
    x, rois = make_case(seed)
    x.requires_grad_(True)
    out = roi_align(x, rois, (3, 4), 0.5, sr, agg, aligned)
    ref, taps = ref_roi_align(x, rois, 3, 4, 0.5, sr, agg, aligned)
    assert out.shape == (rois.size(0), 3, 3, 4)
    assert _rel_err(out.detach(), ref) <= 1e-5
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (gx,) = torch.autograd.grad(out, x, go)
    assert _rel_err(gx, ref_grad(x, taps, go)) <= 1e-5


@pytest.mark.parametrize("sr,agg,aligned", ALIGN_CASES)
def test_roi_warp_matches_reference(backend, sr, agg, aligned):
    seed = 200 + ALIGN_CASES.index((sr, agg, aligned))
    x, rois = make_case(seed, scale=0.73)
    x.requires_grad_(True)
    out = roi_warp(x, rois, (4, 3), 0.73, sr, agg, aligned)
    ref, taps = ref_roi_warp(x, rois, 4, 3, 0.73, sr, agg, aligned)
    assert _rel_err(out.detach(), ref) <= 1e-5
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (gx,) = torch.autograd.grad(out, x, go)
    assert _rel_err(gx, ref_grad(x, taps, go)) <= 1e-5


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.73])
def test_roi_pool_matches_reference(backend, scale):
    seed = 300 + int(scale * 100)
    x, rois = make_case(seed, scale=scale)
    x.requires_grad_(True)
    out = roi_pool(x, rois, (3, 2), scale)
    ref, taps = ref_roi_pool(x, rois, 3, 2, scale)
    assert torch.equal(out.detach(), ref)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (gx,) = torch.autograd.grad(out, x, go)
    assert _rel_err(gx, ref_grad(x, taps, go)) <= 1e-12


# ------------------------------------------------------------------------------------------------------
# gradcheck (float64, small)
# ------------------------------------------------------------------------------------------------------
def _small(seed):
    x, rois = make_case(seed, N=2, C=2, H=6, W=7, K=5, scale=0.5)
    return x.requires_grad_(True), rois


@pytest.mark.parametrize("agg", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True])
def test_gradcheck_align_warp(backend, agg, aligned):
    x, rois = _small(400 + (agg == "max") * 2 + aligned)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, (2, 3), 0.5, 2, agg, aligned), (x,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda t: roi_warp(t, rois, (3, 2), 0.5, -1, agg, aligned), (x,), eps=1e-6, atol=1e-5)


def test_gradcheck_pool(backend):
    x, rois = _small(410)
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, (2, 3), 0.5), (x,), eps=1e-6, atol=1e-5)


# ------------------------------------------------------------------------------------------------------
# torchvision equivalences
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_pool_equals_torchvision(backend, dtype):
    for i, (scale, out_size) in enumerate([(1.0, 7), (0.25, (5, 3)), (1 / 32, 7), (0.73, (2, 6))]):
        x, rois = make_case(500 + i, N=2, C=4, H=13, W=17, K=24, scale=scale, dtype=dtype)
        # boxes whose snapped size is a multiple of 7 cells (exercise the float bin-edge arithmetic)
        rois[4, 1:] = torch.tensor([0.0, 0.0, 21 / scale, 13 / scale], dtype=dtype)
        x.requires_grad_(True)
        ours = roi_pool(x, rois, out_size, scale)
        x2 = x.detach().clone().requires_grad_(True)
        theirs = torchvision.ops.roi_pool(x2, rois, out_size, scale)
        assert torch.equal(ours, theirs)
        go = torch.randn(ours.shape, generator=torch.Generator().manual_seed(i), dtype=dtype)
        ours.backward(go)
        theirs.backward(go)
        assert torch.allclose(x.grad, x2.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sr", [-1, 0, 2])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_avg_equals_torchvision(backend, dtype, sr, aligned):
    x, rois = make_case(600 + sr * 3 + aligned, N=2, C=5, H=12, W=15, K=20, scale=0.25, dtype=dtype)
    x.requires_grad_(True)
    ours = roi_align(x, rois, (7, 5), 0.25, sr, "avg", aligned)
    x2 = x.detach().clone().requires_grad_(True)
    theirs = torchvision.ops.roi_align(x2, rois, (7, 5), 0.25, sr, aligned)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert _rel_err(ours.detach(), theirs.detach()) <= tol
    go = torch.randn(ours.shape, generator=torch.Generator().manual_seed(7), dtype=dtype)
    ours.backward(go)
    theirs.backward(go)
    assert _rel_err(x.grad, x2.grad) <= 10 * tol


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_warp_is_roi_align_of_snapped_box(backend, aligned):
    """RoIWarp == torchvision roi_align (avg) on RoIPool's snapped cells [x0, x1 + 1) (scale 1)."""
    x, rois = make_case(700 + aligned, scale=0.5, K=9)
    snapped = rois.clone()
    q = [[c_round(v * 0.5) for v in r[1:]] for r in rois.tolist()]
    for k, (x1, y1, x2, y2) in enumerate(q):
        snapped[k, 1:] = torch.tensor([x1, y1, x1 + max(x2 - x1 + 1, 1), y1 + max(y2 - y1 + 1, 1)], dtype=rois.dtype)
    ours = roi_warp(x, rois, 3, 0.5, 2, "avg", aligned)
    theirs = torchvision.ops.roi_align(x, snapped, 3, 1.0, 2, aligned)
    assert _rel_err(ours, theirs) <= 1e-12


# ------------------------------------------------------------------------------------------------------
# backends agree, thread-count independence, dtypes
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["pool", "align_avg", "align_max", "warp_max", "warp_avg"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backends_agree(op, dtype):
    if _ext.load_extension() is None:
        pytest.skip("C++ RoI extension could not be built here")
    x, rois = make_case(800, N=2, C=16, H=20, W=24, K=40, scale=0.25, dtype=dtype)
    fns = {
        "pool": lambda t: roi_pool(t, rois, 7, 0.25),
        "align_avg": lambda t: roi_align(t, rois, 7, 0.25, 2, "avg", True),
        "align_max": lambda t: roi_align(t, rois, 7, 0.25, 0, "max", False),
        "warp_max": lambda t: roi_warp(t, rois, 5, 0.25, 2, "max"),
        "warp_avg": lambda t: roi_warp(t, rois, 5, 0.25, -1, "avg"),
    }
    results = []
    old = os.environ.get("MASKRCNN_PLUGIN_ROI_BACKEND")
    threads = torch.get_num_threads()
    try:
        for name, nthreads in (("python", 1), ("cpp", 1), ("cpp", 2)):
            _set_backend(name)
            torch.set_num_threads(nthreads)
            t = x.detach().clone().requires_grad_(True)
            y = fns[op](t)
            y.backward(torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape))
            results.append((y.detach(), t.grad))
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("MASKRCNN_PLUGIN_ROI_BACKEND", None)
        else:
            os.environ["MASKRCNN_PLUGIN_ROI_BACKEND"] = old
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for y, g in results[1:]:
        assert _rel_err(y, results[0][0]) <= tol
        assert _rel_err(g, results[0][1]) <= tol
    assert torch.equal(results[1][0], results[2][0]) and torch.equal(results[1][1], results[2][1])


def test_float32_close_to_float64(backend):
    x, rois = make_case(900, C=4)
    for fn in (
        lambda t, r: roi_align(t, r, 5, 0.5, 2, "avg", True),
        lambda t, r: roi_align(t, r, 5, 0.5, 2, "max", False),
        lambda t, r: roi_warp(t, r, 5, 0.5, 2, "avg"),
    ):
        assert _rel_err(fn(x.float(), rois.float()).double(), fn(x, rois)) <= 1e-5


# ------------------------------------------------------------------------------------------------------
# edge cases
# ------------------------------------------------------------------------------------------------------
ALL_OPS = {
    "pool": lambda x, b: roi_pool(x, b, (2, 3), 0.5),
    "warp": lambda x, b: roi_warp(x, b, (2, 3), 0.5, 2, "max"),
    "align_avg": lambda x, b: roi_align(x, b, (2, 3), 0.5, -1, "avg", True),
    "align_max": lambda x, b: roi_align(x, b, (2, 3), 0.5, 2, "max", False),
}


@pytest.mark.parametrize("op", sorted(ALL_OPS))
def test_empty_boxes(backend, op):
    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    for boxes in (torch.zeros(0, 5), [torch.zeros(0, 4), torch.zeros(0, 4)]):
        y = ALL_OPS[op](x, boxes)
        assert y.shape == (0, 3, 2, 3)
        y.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))
        x.grad = None


@pytest.mark.parametrize("op", sorted(ALL_OPS))
def test_channels_last_input_gives_the_same_outputs_and_gradients(backend, op):
    """Features in channels-last order (a model prepared with TEST.CHANNELS_LAST) go to the kernels as they
    are; outputs and input gradients equal those of the same values in the default layout."""
    x, rois = make_case(951)
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    x_nchw = x.detach().contiguous().requires_grad_()
    y_cl, y = ALL_OPS[op](x_cl, rois), ALL_OPS[op](x_nchw, rois)
    assert torch.equal(y_cl, y)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    y_cl.backward(g)
    y.backward(g)
    assert torch.equal(x_cl.grad, x_nchw.grad)


@pytest.mark.parametrize("op", sorted(ALL_OPS))
def test_list_boxes_equal_tensor_boxes(backend, op):
    x, rois = make_case(950)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    order = torch.cat([torch.nonzero(rois[:, 0] == i).flatten() for i in range(2)])
    assert torch.equal(ALL_OPS[op](x, per_image), ALL_OPS[op](x, rois[order]))


@pytest.mark.parametrize("op", sorted(ALL_OPS))
def test_outside_and_degenerate_boxes_are_finite(backend, op):
    x = torch.randn(1, 2, 6, 7, requires_grad=True)
    boxes = torch.tensor(
        [
            [0, -100.0, -100.0, -60.0, -70.0],  # wholly outside
            [0, 1000.0, 5.0, 2000.0, 9.0],  # wholly outside
            [0, 5.0, 5.0, 5.0, 5.0],  # zero size
            [0, 8.0, 3.0, 2.0, 1.0],  # x2 < x1, y2 < y1
            [0, -5.0, -5.0, 30.0, 40.0],  # larger than the image
        ]
    )
    y = ALL_OPS[op](x, boxes)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    if op != "pool":  # sampled ops read 0 outside [-1, H] x [-1, W]
        assert torch.equal(y[:2], torch.zeros_like(y[:2]))
    else:  # RoIPool's bins of a box beyond the map are clipped away -> empty -> 0
        assert torch.equal(y[:2], torch.zeros_like(y[:2]))


@pytest.mark.parametrize("op", sorted(ALL_OPS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_boxes_raise(backend, op, bad):
    x = torch.randn(1, 2, 6, 7)
    boxes = torch.tensor([[0, 1.0, 1.0, 4.0, 4.0]])
    boxes[0, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        ALL_OPS[op](x, boxes)
    with pytest.raises(ValueError, match="NaN or infinite"):
        ALL_OPS[op](x, [boxes[:, 1:]])


def test_bad_arguments():
    x = torch.randn(1, 2, 6, 7)
    with pytest.raises(ValueError, match="batch indices"):
        roi_align(x, torch.tensor([[1, 0.0, 0.0, 3.0, 3.0]]), 2)
    with pytest.raises(ValueError, match="aggregation"):
        roi_align(x, torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]]), 2, aggregation="mean")
    with pytest.raises(ValueError):
        roi_pool(x, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError):
        RoIWarp(7, 0.25, 2, aggregation="sum")


def test_backend_env_var(monkeypatch):
    x, rois = make_case(960)
    monkeypatch.setenv("MASKRCNN_PLUGIN_ROI_BACKEND", "bogus")
    with pytest.raises(ValueError, match="MASKRCNN_PLUGIN_ROI_BACKEND"):
        roi_align(x, rois, 2)
    # other dtypes take the pure-PyTorch path even when cpp is requested
    monkeypatch.setenv("MASKRCNN_PLUGIN_ROI_BACKEND", "cpp")
    if _ext.load_extension() is not None:
        y16 = roi_align(x.bfloat16(), rois.bfloat16(), 2, 0.5, 2, "avg", True)
        assert y16.dtype == torch.bfloat16 and torch.isfinite(y16.float()).all()


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    x, rois = make_case(965)
    monkeypatch.setenv("MASKRCNN_PLUGIN_ROI_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        roi_align(x, rois, 2)


def test_modules_and_repr(backend):
    x, rois = make_case(970)
    m = RoIAlign((7, 7), 0.5, 2, aggregation="max", aligned=True)
    assert repr(m) == "RoIAlign(output_size=(7, 7), spatial_scale=0.5, sampling_ratio=2, aggregation='max', aligned=True)"
    assert torch.equal(m(x, rois), roi_align(x, rois, 7, 0.5, 2, "max", True))
    p = RoIPool(3, 0.5)
    assert repr(p) == "RoIPool(output_size=(3, 3), spatial_scale=0.5)"
    assert torch.equal(p(x, rois), roi_pool(x, rois, 3, 0.5))
    w = RoIWarp(4, 0.5, 2, aggregation="avg")
    assert repr(w) == "RoIWarp(output_size=(4, 4), spatial_scale=0.5, sampling_ratio=2, aggregation='avg', aligned=True)"
    assert torch.equal(w(x, rois), roi_warp(x, rois, 4, 0.5, 2, "avg"))


def test_max_gradient_goes_to_argmax_sample_corners(backend):
    """1 x 1 output, 2 x 2 samples: the gradient is the arg-max sample's bilinear weights only."""
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 2, 2] = 5.0  # makes the bottom-right sample the maximum
    x.requires_grad_(True)
    box = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]], dtype=torch.float64)
    y = roi_align(x, box, 1, 1.0, 2, "max", False)
    ys, xs = roi_align_sample_points(box[0, 1:].tolist(), 1.0, 1, 2, False)
    assert ys == [[0.75, 2.25]] and xs == [[0.75, 2.25]]
    y.backward()
    expect = torch.zeros(4, 4, dtype=torch.float64)
    for f, w in ref_bilinear_taps(2.25, 2.25, 4, 4):
        expect.view(-1)[f] += w
    assert torch.allclose(x.grad[0, 0], expect)
    assert y.item() == pytest.approx(5.0 * 0.75 * 0.75)


def test_helpers_match_ops(backend):
    """roi_pool_bins / roi_*_sample_points describe what the ops compute (value = y * W + x map)."""
    H, W = 9, 12
    x = (torch.arange(H, dtype=torch.float64)[:, None] * W + torch.arange(W, dtype=torch.float64)).expand(1, 1, H, W)
    box = (3.0, 2.0, 17.0, 13.0)
    rois = torch.tensor([[0.0, *box]], dtype=torch.float64)
    rows, cols = roi_pool_bins(box, 0.5, (3, 4), (H, W), dtype=torch.float64)
    out = roi_pool(x, rois, (3, 4), 0.5)[0, 0]
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            assert out[i, j].item() == (r1 - 1) * W + (c1 - 1)  # max of an increasing map: last cell
    ys, xs = roi_align_sample_points(box, 0.5, (3, 4), 2, True)
    out = roi_align(x, rois, (3, 4), 0.5, 2, "avg", True)[0, 0]
    for i in range(3):
        for j in range(4):
            assert out[i, j].item() == pytest.approx(np.mean(ys[i]) * W + np.mean(xs[j]), rel=1e-12)
    ys, xs = roi_warp_sample_points(box, 0.5, (3, 4), 2)
    out = roi_warp(x, rois, (3, 4), 0.5, 2, "max")[0, 0]
    for i in range(3):
        for j in range(4):
            assert out[i, j].item() == pytest.approx(max(ys[i]) * W + max(xs[j]), rel=1e-12)


# ------------------------------------------------------------------------------------------------------
# property tests
# ------------------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**31 - 1),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    k=st.integers(0, 6),
    ph=st.integers(1, 4),
    pw=st.integers(1, 4),
    scale=st.sampled_from([1.0, 0.5, 0.25, 1 / 3, 0.0625]),
    sr=st.integers(-1, 3),
    agg=st.sampled_from(["avg", "max"]),
    aligned=st.booleans(),
    op=st.sampled_from(["pool", "warp", "align"]),
)
def test_property_finite_and_shapes(backend, seed, h, w, k, ph, pw, scale, sr, agg, aligned, op):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, h, w, generator=g, requires_grad=True)
    extent = max(h, w) / scale
    pts = (torch.rand(k, 4, generator=g) * 1.6 - 0.3) * extent
    rois = torch.cat([torch.randint(0, 2, (k, 1), generator=g).float(), pts], 1)
    if op == "pool":
        y = roi_pool(x, rois, (ph, pw), scale)
    elif op == "warp":
        y = roi_warp(x, rois, (ph, pw), scale, sr, agg, aligned)
    else:
        y = roi_align(x, rois, (ph, pw), scale, sr, agg, aligned)
    assert y.shape == (k, 3, ph, pw)
    assert torch.isfinite(y).all()
    # every output lies within the range of the input values (or is 0 from samples outside the map)
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    assert (y >= lo - 1e-5).all() and (y <= hi + 1e-5).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
