"""The Triton RoI kernels (maskrcnn_plugin/layers/roi_triton.py) against the C++ CPU kernels, run on CPU
tensors by Triton's interpreter.

Both modules are loaded by file path: the kernels must be decorated while TRITON_INTERPRET=1 is set, so this
test loads its own copy of roi_triton.py in that state (whatever else the process imported before), and
neither module needs the package (nor detectron2).

Forward results and arg-max indices must be bit-identical to the C++ kernels (same operation order, no
contraction, IEEE division). Backward passes sum atomically in a different order than the sequential C++
loops, so they are compared with a tolerance: float32 within 1e-5 relative / 1e-6 absolute, float64 within
1e-12; float16 / bfloat16 (computed in float32) within one unit in the last place of their dtype. The
interpreter cannot show what the GPU compiler does with the arithmetic, so the last test compiles every
kernel for sm_90 (no GPU needed) and checks its PTX for FMA-free, round-to-nearest float arithmetic.
"""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

_LAYERS = Path(__file__).resolve().parents[1] / "maskrcnn_plugin" / "layers"
N, C, H, W = 2, 4, 7, 9


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_triton_kernels(name: str, interpret: bool):
    """A private copy of roi_triton.py whose kernels are decorated in the requested mode (triton reads
    TRITON_INTERPRET when @triton.jit runs)."""
    pytest.importorskip("triton")
    before = os.environ.pop("TRITON_INTERPRET", None)
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        return _load(name, _LAYERS / "roi_triton.py")
    finally:
        os.environ.pop("TRITON_INTERPRET", None)
        if before is not None:
            os.environ["TRITON_INTERPRET"] = before


@pytest.fixture(scope="module")
def tri():
    return _load_triton_kernels("_roi_triton_interpreted", interpret=True)


@pytest.fixture(scope="module")
def cpp():
    return _load("_roi_ext_loader", _LAYERS / "_ext.py").load_extension(strict=True)


# ----------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------
def _features(dtype=torch.float32, seed=0):
    """Random features plus channels that provoke ties and the out-of-map rule: channel 1 holds small
    integers (equal samples), channel 2 is 0 everywhere (all samples tie), channel 3 is negative everywhere
    (a point outside the map, which reads 0, wins)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    x[:, 1] = torch.randint(-2, 3, (N, H, W), generator=g).double()
    x[:, 2] = 0
    x[:, 3] = -1 - x[:, 3].abs()
    return x.to(dtype)


def _sampling_geometry(dtype=torch.float32, seed=0):
    """Per-RoI geometry (batch, start_y, start_x, bin_h, bin_w, grid_h, grid_w) as roi_ops passes it: random
    RoIs in and around the map with varying (adaptive-like) grids, plus hand-made edge cases."""
    g = torch.Generator().manual_seed(seed)
    k = 10
    batch = torch.randint(0, N, (k,), generator=g)
    sy = torch.rand(k, generator=g, dtype=torch.float64) * (H + 6) - 4
    sx = torch.rand(k, generator=g, dtype=torch.float64) * (W + 6) - 4
    bh = torch.rand(k, generator=g, dtype=torch.float64) * 3
    bw = torch.rand(k, generator=g, dtype=torch.float64) * 3
    gh = torch.randint(1, 4, (k,), generator=g)
    gw = torch.randint(1, 4, (k,), generator=g)
    # 0: degenerate box (zero-size bins); 1: entirely outside the map; 2/3: no samples along one axis
    bh[0], bw[0] = 0.0, 0.0
    sy[1], sx[1] = -30.0, W + 20.0
    gh[2], gw[3] = 0, 0
    # 4: points exactly on -1, 0, the last cell and the far edge (the clamping and last-cell rules)
    sy[4], bh[4], gh[4] = -1.5, 1.0, 1
    sx[4], bw[4], gw[4] = W - 2.5, 1.0, 1
    # 5: negative bin size (RoIAlign with aligned=True keeps inverted boxes)
    bh[5], bw[5] = -0.75, -1.25
    # coordinates that are exact in float16 / bfloat16 too, so every dtype reads the very same points
    floats = [(t * 8).round() / 8 for t in (sy, sx, bh, bw)]
    return (batch, *(t.to(dtype) for t in floats), gh, gw)


def _pool_geometry(ph, pw, seed=0):
    """RoIPool's integer bin ranges [start, end), clipped to the map; some bins empty, some overlapping."""
    g = torch.Generator().manual_seed(seed)
    k = 8
    batch = torch.randint(0, N, (k,), generator=g)

    def edges(pooled, size):
        start = torch.randint(-2, size, (k, pooled), generator=g)
        end = start + torch.randint(-1, 4, (k, pooled), generator=g)
        return start.clamp(0, size), end.clamp(0, size)

    hs, he = edges(ph, H)
    ws, we = edges(pw, W)
    hs[0], he[0] = 0, 0  # a RoI whose bins are all empty
    hs[1], he[1], ws[1], we[1] = 0, H, 0, W  # bins covering the whole map
    return batch, hs, he, ws, we


# ----------------------------------------------------------------------------------------------------------
# RoIAlign / RoIWarp sampling
# ----------------------------------------------------------------------------------------------------------
def _assert_grad_close(actual, expected, dtype):
    tol = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-6)}[dtype]
    torch.testing.assert_close(actual, expected, rtol=tol[0], atol=tol[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("is_max", [False, True], ids=["avg", "max"])
@pytest.mark.parametrize("ph,pw", [(2, 2), (3, 5)])
def test_sample_matches_cpp(tri, cpp, dtype, is_max, ph, pw):
    x = _features(dtype)
    geom = _sampling_geometry(dtype)
    out, arg = tri.sample_forward(x, *geom, ph, pw, is_max)
    ref_out, ref_arg = cpp.sample_forward(x, *geom, ph, pw, is_max)
    assert out.dtype == dtype and arg.dtype == torch.int32
    assert torch.equal(out, ref_out)
    assert torch.equal(arg, ref_arg)
    assert (out[1] == 0).all() and (out[2] == 0).all() and (out[3] == 0).all()  # outside / no samples
    if is_max:
        assert (arg[2] == -1).all() and (arg[3] == -1).all()
        assert (arg[1] == 0).all()  # every point outside reads 0; the first one wins
        has_samples = (geom[5] > 0) & (geom[6] > 0)
        assert (arg[has_samples, 2] == 0).all()  # all-zero channel: a tie, the first sample wins

    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    gi = tri.sample_backward(grad, *geom, arg, N, C, H, W, ph, pw, is_max)
    ref_gi = cpp.sample_backward(grad, *geom, ref_arg, N, C, H, W, ph, pw, is_max)
    assert gi.dtype == dtype and gi.shape == (N, C, H, W)
    assert ref_gi.abs().sum() > 0
    _assert_grad_close(gi, ref_gi, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("is_max", [False, True], ids=["avg", "max"])
def test_sample_half_precision_computes_in_float32(tri, cpp, dtype, is_max):
    """float16 / bfloat16 reads the same points as the float32 kernel and rounds only the result."""
    ph, pw = 3, 3
    x = _features(dtype)
    geom = _sampling_geometry(dtype)
    geom32 = tuple(t.float() if t.is_floating_point() else t for t in geom)
    out, arg = tri.sample_forward(x, *geom, ph, pw, is_max)
    ref_out, ref_arg = cpp.sample_forward(x.float(), *geom32, ph, pw, is_max)
    assert out.dtype == dtype
    assert torch.equal(out, ref_out.to(dtype))
    assert torch.equal(arg, ref_arg)

    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    gi = tri.sample_backward(grad, *geom, arg, N, C, H, W, ph, pw, is_max)
    ref_gi = cpp.sample_backward(grad.float(), *geom32, ref_arg, N, C, H, W, ph, pw, is_max)
    assert gi.dtype == dtype
    ulp = torch.finfo(dtype).eps
    torch.testing.assert_close(gi.float(), ref_gi, rtol=ulp, atol=ulp * ref_gi.abs().max().item())


@pytest.mark.parametrize("is_max", [False, True], ids=["avg", "max"])
def test_sample_without_rois(tri, cpp, is_max):
    x = _features()
    empty = (torch.zeros(0, dtype=torch.int64),) + (torch.zeros(0),) * 4 + (torch.zeros(0, dtype=torch.int64),) * 2
    out, arg = tri.sample_forward(x, *empty, 2, 3, is_max)
    ref_out, ref_arg = cpp.sample_forward(x, *empty, 2, 3, is_max)
    assert out.shape == ref_out.shape and arg.shape == ref_arg.shape and arg.dtype == ref_arg.dtype
    gi = tri.sample_backward(out, *empty, arg, N, C, H, W, 2, 3, is_max)
    assert gi.shape == (N, C, H, W) and not gi.any()


# ----------------------------------------------------------------------------------------------------------
# RoIPool
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ph,pw", [(2, 2), (4, 3)])
def test_pool_matches_cpp(tri, cpp, dtype, ph, pw):
    x = _features(dtype)
    x[0, 0, :, :4] = float("-inf")  # no cell beats the initial -FLT_MAX: output -FLT_MAX, arg-max -1
    geom = _pool_geometry(ph, pw)
    out, arg = tri.pool_forward(x, *geom)
    ref_out, ref_arg = cpp.pool_forward(x, *geom)
    assert out.dtype == dtype and arg.dtype == torch.int32
    assert torch.equal(out, ref_out)
    assert torch.equal(arg, ref_arg)
    assert not out[0].any() and (arg[0] == -1).all()

    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    gi = tri.pool_backward(grad, geom[0], arg, N, C, H, W)
    ref_gi = cpp.pool_backward(grad, geom[0], ref_arg, N, C, H, W)
    assert gi.dtype == dtype
    _assert_grad_close(gi, ref_gi, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pool_half_precision(tri, cpp, dtype):
    x = _features(dtype)
    geom = _pool_geometry(3, 3)
    out, arg = tri.pool_forward(x, *geom)
    ref_out, ref_arg = cpp.pool_forward(x.float(), *geom)
    assert torch.equal(out, ref_out.to(dtype))
    assert torch.equal(arg, ref_arg)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    gi = tri.pool_backward(grad, geom[0], arg, N, C, H, W)
    ref_gi = cpp.pool_backward(grad.float(), geom[0], ref_arg, N, C, H, W)
    ulp = torch.finfo(dtype).eps
    torch.testing.assert_close(gi.float(), ref_gi, rtol=ulp, atol=ulp * ref_gi.abs().max().item())


def test_pool_without_rois(tri, cpp):
    x = _features()
    none = torch.zeros(0, dtype=torch.int64)
    edges = torch.zeros(0, 2, dtype=torch.int64)
    out, arg = tri.pool_forward(x, none, edges, edges, edges, edges)
    ref_out, ref_arg = cpp.pool_forward(x, none, edges, edges, edges, edges)
    assert out.shape == ref_out.shape and arg.shape == ref_arg.shape and arg.dtype == ref_arg.dtype
    gi = tri.pool_backward(out, none, arg, N, C, H, W)
    assert gi.shape == (N, C, H, W) and not gi.any()


# ----------------------------------------------------------------------------------------------------------
# the compiled kernels (no GPU needed: Triton compiles for a given target offline)
# ----------------------------------------------------------------------------------------------------------
_FLOAT_PTRS = ("sy_ptr", "sx_ptr", "bh_ptr", "bw_ptr")
_INDEX_PTRS = ("batch_ptr", "gh_ptr", "gw_ptr", "hs_ptr", "he_ptr", "ws_ptr", "we_ptr")


def _signature(kernel, element: str, compute: str, constexprs: dict) -> dict:
    """Triton argument types of a kernel launched on `element` tensors computed in `compute`."""
    types = {}
    for name in kernel.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name in _FLOAT_PTRS or name in ("out_ptr", "gin_ptr"):  # half precision writes float32
            types[name] = "*" + compute
        elif name in _INDEX_PTRS:
            types[name] = "*i64"
        elif name == "argmax_ptr":
            types[name] = "*i32"
        elif name.endswith("_ptr"):
            types[name] = "*" + element
        elif name == "INIT_MAX":
            types[name] = "fp32"
        else:
            types[name] = "i32"
    return types


@pytest.mark.parametrize("element,compute", [("fp32", "fp32"), ("bf16", "fp32"), ("fp64", "fp64")])
def test_kernels_compile_for_h100_without_contraction(element, compute):
    """Every kernel lowers to sm_90 PTX whose float arithmetic is IEEE-rounded and never fused into an FMA,
    the property that makes the GPU forward bit-identical to the CPU kernels."""
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    mod = _load_triton_kernels("_roi_triton_compiled", interpret=False)
    is_f64 = compute == "fp64"
    cases = [
        (mod._sample_forward_kernel, {"IS_MAX": False, "IS_F64": is_f64, "BLOCK_C": 32, "BLOCK_P": 64}),
        (mod._sample_forward_kernel, {"IS_MAX": True, "IS_F64": is_f64, "BLOCK_C": 32, "BLOCK_P": 64}),
        (mod._sample_backward_avg_kernel, {"IS_F64": is_f64, "BLOCK_C": 8, "BLOCK_P": 256}),
        (mod._sample_backward_max_kernel, {"IS_F64": is_f64, "BLOCK_C": 8, "BLOCK_P": 256}),
        (mod._pool_forward_kernel, {"IS_F64": is_f64, "BLOCK_C": 2048, "BLOCK_P": 1}),
        (mod._pool_backward_kernel, {"BLOCK_C": 32, "BLOCK_P": 64}),
    ]
    float_ops = []
    for kernel, constexprs in cases:
        source = ASTSource(
            kernel,
            _signature(kernel, element, compute, constexprs),
            constexprs={(kernel.arg_names.index(n),): v for n, v in constexprs.items()},
        )
        ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False}).asm["ptx"]
        # arithmetic instructions (atomic adds, `atom....add.f32`, round to nearest by definition)
        ops = re.findall(r"^\s*(?:@!?%p\d+\s+)?((?:fma|mul|add|sub|div)(?:\.[a-z0-9]+)*\.f(?:32|64))\b", ptx, re.M)
        unrounded = [op for op in ops if op.startswith("fma") or ".rn." not in op]
        assert not unrounded, (kernel.__name__, sorted(set(unrounded)))
        float_ops += ops
    assert {"mul.rn." + compute.replace("fp", "f"), "div.rn." + compute.replace("fp", "f")} <= set(float_ops)
