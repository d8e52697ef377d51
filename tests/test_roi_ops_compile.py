"""The RoI operators as dispatcher ops (issue 23): opcheck, torch.compile(fullgraph=True), torch.export.

Every op (RoIPool; RoIWarp and RoIAlign with avg and max) is checked with ``torch.library.opcheck`` (schema,
fake implementation, autograd registration, AOT dispatch with dynamic shapes), forward and backward op,
with the default CPU kernels and with the Triton kernels under Triton's interpreter. Compiled and exported
graphs must give the eager outputs and gradients exactly, also for the multi-level pooler on FPN-shaped
features, and eager-only input checks must not break tracing.
"""
import importlib
import os
import sys

import pytest
import torch
from detectron2.structures import Boxes
from torch.export import Dim
from torch.library import opcheck

from maskrcnn_plugin.layers import RoIAlign, RoIPool, RoIWarp, roi_align, roi_pool, roi_warp
from maskrcnn_plugin.poolers import AblationROIPooler

OPS = {
    "pool": lambda x, r: roi_pool(x, r, (3, 2), 0.5),
    "warp_avg": lambda x, r: roi_warp(x, r, (2, 3), 0.5, 2, "avg", True),
    "warp_max": lambda x, r: roi_warp(x, r, (2, 3), 0.5, -1, "max", False),
    "align_avg": lambda x, r: roi_align(x, r, (3, 2), 0.5, -1, "avg", True),
    "align_max": lambda x, r: roi_align(x, r, (3, 2), 0.5, 2, "max", False),
}


def _op_args(name, x, rois):
    """(forward op, its arguments) equivalent to OPS[name]."""
    ops = torch.ops.maskrcnn_plugin
    return {
        "pool": (ops.roi_pool.default, (x, rois, 0.5, 3, 2)),
        "warp_avg": (ops.roi_warp.default, (x, rois, 0.5, 2, 3, 2, "avg", True)),
        "warp_max": (ops.roi_warp.default, (x, rois, 0.5, 2, 3, -1, "max", False)),
        "align_avg": (ops.roi_align.default, (x, rois, 0.5, 3, 2, -1, "avg", True)),
        "align_max": (ops.roi_align.default, (x, rois, 0.5, 3, 2, 2, "max", False)),
    }[name]


def _backward_args(name, x, rois, grad):
    """(backward op, its arguments) for the forward of OPS[name] on (x, rois)."""
    op, args = _op_args(name, x.detach(), rois)
    _, argmax = op(*args)
    ops = torch.ops.maskrcnn_plugin
    shape = tuple(x.shape)
    if name == "pool":
        return ops.roi_pool_backward.default, (grad, rois, argmax, 0.5, 3, 2, *shape)
    backward = ops.roi_warp_backward.default if name.startswith("warp") else ops.roi_align_backward.default
    scale, ph, pw, sr, agg, aligned = args[2:]
    return backward, (grad, rois, argmax, scale, ph, pw, *shape, sr, agg, aligned)


def make_case(seed, n=2, c=3, h=9, w=11, k=6, dtype=torch.float64):
    """Features and rois (scale 0.5) with an empty, an out-of-image and a partly outside box."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64).to(dtype)
    xy = torch.rand(k, 2, generator=g, dtype=torch.float64) * torch.tensor([2.4 * w, 2.4 * h]) - 2.0
    wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * torch.tensor([1.6 * w, 1.6 * h])
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[0] = torch.tensor([3.0, 4.0, 3.0, 4.0])
    boxes[1] = torch.tensor([-50.0, -40.0, -20.0, -10.0])
    boxes[2] = torch.tensor([2.0 * w - 3.0, 2.0 * h - 5.0, 2.0 * w + 30.0, 2.0 * h + 9.0])
    batch = torch.randint(0, n, (k, 1), generator=g).double()
    return x, torch.cat([batch, boxes], 1).to(dtype)


def _eager_with_grad(fn, x, rois, grad_seed=0):
    t = x.detach().clone().requires_grad_(True)
    y = fn(t, rois)
    go = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=y.dtype)
    (gx,) = torch.autograd.grad(y, t, go)
    return y.detach(), gx, go


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------------
# opcheck
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(OPS))
def test_opcheck_forward_and_backward_ops(name, dtype):
    x, rois = make_case(10, dtype=dtype)
    x.requires_grad_(True)  # also checks the registered autograd formula and the AOT backward graph
    op, args = _op_args(name, x, rois)
    opcheck(op, args)
    out_shape = op(x.detach(), *args[1:])[0].shape
    grad = torch.randn(out_shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    backward, bargs = _backward_args(name, x, rois, grad)
    opcheck(backward, bargs)


@pytest.fixture
def triton_backend(monkeypatch):
    """Route the ops through roi_triton on CPU tensors (Triton's interpreter): the GPU kernels, checked here."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("MASKRCNN_PLUGIN_ROI_BACKEND", "triton")
    _reload_roi_triton()  # triton reads TRITON_INTERPRET when the kernels are decorated
    yield
    monkeypatch.undo()
    _reload_roi_triton()


def _reload_roi_triton():
    name = "maskrcnn_plugin.layers.roi_triton"
    if name in sys.modules:
        importlib.reload(sys.modules[name])
    elif os.environ.get("TRITON_INTERPRET") == "1":
        importlib.import_module(name)


@pytest.mark.parametrize("name", sorted(OPS))
def test_opcheck_triton_interpreter(triton_backend, name):
    x, rois = make_case(20, c=2, h=6, w=7, k=4)
    x.requires_grad_(True)
    op, args = _op_args(name, x, rois)
    opcheck(op, args)


@pytest.mark.parametrize("name", sorted(OPS))
def test_triton_interpreter_equals_cpu_kernels(triton_backend, name):
    """Through the registered ops: forward bit-identical to the C++ / default kernels, gradients close."""
    x, rois = make_case(30, c=3, h=7, w=9, k=6, dtype=torch.float32)
    y, gx, _ = _eager_with_grad(OPS[name], x, rois)
    os.environ["MASKRCNN_PLUGIN_ROI_BACKEND"] = "auto"
    y_ref, gx_ref, _ = _eager_with_grad(OPS[name], x, rois)
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["pool", "align_avg", "warp_max"])
def test_deterministic_mode_replaces_atomic_gpu_backward(triton_backend, name):
    """Under torch.use_deterministic_algorithms(True) the backward leaves the atomics-based Triton kernels
    for the pure-PyTorch ones: the gradient is the python backend's, bit for bit."""
    x, rois = make_case(31, c=3, h=7, w=9, k=6, dtype=torch.float32)
    y_fast, _, _ = _eager_with_grad(OPS[name], x, rois)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        y, gx, _ = _eager_with_grad(OPS[name], x, rois)
    finally:
        torch.use_deterministic_algorithms(previous)
    os.environ["MASKRCNN_PLUGIN_ROI_BACKEND"] = "python"
    _, gx_python, _ = _eager_with_grad(OPS[name], x, rois)
    assert torch.equal(y, y_fast)  # the forward stays on the Triton kernels
    assert torch.equal(gx, gx_python)


# ------------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True)
# ------------------------------------------------------------------------------------------------------
def _assert_compiled_equals_eager(fn, x, rois, **compile_kwargs):
    y_ref, gx_ref, go = _eager_with_grad(fn, x, rois)
    compiled = torch.compile(fn, fullgraph=True, **compile_kwargs)
    t = x.clone().requires_grad_(True)
    y = compiled(t, rois)
    (gx,) = torch.autograd.grad(y, t, go)
    assert torch.equal(y, y_ref)
    assert torch.equal(gx, gx_ref)


@pytest.mark.parametrize("name", sorted(OPS))
def test_compile_fullgraph_equals_eager(name):
    x, rois = make_case(40, dtype=torch.float32)
    _assert_compiled_equals_eager(OPS[name], x, rois, backend="aot_eager")


def test_compile_inductor_smallest_shape():
    x, rois = make_case(41, n=1, c=2, h=5, w=6, k=3, dtype=torch.float32)
    rois[:, 0] = 0
    _assert_compiled_equals_eager(OPS["align_max"], x, rois)


def test_compile_skips_value_checks_but_eager_keeps_them():
    """Data-dependent box checks run in eager mode only; compiled graphs contain no .item() sync."""
    x, rois = make_case(42)
    bad = rois.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        roi_align(x, bad, 2)
    out_of_batch = rois.clone()
    out_of_batch[3, 0] = 7
    with pytest.raises(ValueError, match="batch indices"):
        roi_align(x, out_of_batch, 2)
    compiled = torch.compile(lambda a, b: roi_align(a, b, 2, 0.5, 2, "max"), fullgraph=True, backend="eager")
    y = compiled(x, bad)
    assert y.shape == (rois.size(0), 3, 2, 2)
    assert torch.equal(y[:3], roi_align(x, rois[:3], 2, 0.5, 2, "max"))


# ------------------------------------------------------------------------------------------------------
# torch.export
# ------------------------------------------------------------------------------------------------------
class _OpModule(torch.nn.Module):
    def __init__(self, name):
        super().__init__()
        self.name = name

    def forward(self, x, rois):
        return OPS[self.name](x, rois)


@pytest.mark.parametrize("name", sorted(OPS))
def test_export_equals_eager_with_dynamic_box_count(name):
    x, rois = make_case(50, dtype=torch.float32)
    ep = torch.export.export(_OpModule(name), (x, rois), dynamic_shapes={"x": None, "rois": {0: Dim("K")}})
    target = "roi_pool" if name == "pool" else ("roi_warp" if name.startswith("warp") else "roi_align")
    assert f"torch.ops.maskrcnn_plugin.{target}.default" in ep.graph_module.code
    assert ".item()" not in ep.graph_module.code and "_local_scalar_dense" not in ep.graph_module.code
    for k in (rois.size(0), 2):
        assert torch.equal(ep.module()(x, rois[:k]), OPS[name](x, rois[:k]))


def test_jit_trace_records_the_op():
    """TorchScript tracing (detectron2's TracingAdapter) records the dispatcher op; the trace generalises."""
    x, rois = make_case(51, dtype=torch.float32)
    traced = torch.jit.trace(RoIAlign(3, 0.5, 2, "max", True), (x, rois))
    assert "maskrcnn_plugin::roi_align" in str(traced.graph)
    other_x, other_rois = make_case(52, dtype=torch.float32, k=9)
    assert torch.equal(traced(other_x, other_rois), roi_align(other_x, other_rois, 3, 0.5, 2, "max", True))


# ------------------------------------------------------------------------------------------------------
# multi-level pooler on FPN-shaped features
# ------------------------------------------------------------------------------------------------------
SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


def _fpn_case(seed):
    """Two 512 x 640 images, FPN levels p2..p5, box sizes from 40 to 600 px so that every level gets some."""
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(2, 4, int(512 * s), int(640 * s), generator=g) for s in SCALES]
    boxes = []
    for _ in range(2):
        side = torch.tensor([40.0, 90.0, 160.0, 300.0, 480.0, 600.0] * 2)[:, None] * (0.9 + 0.2 * torch.rand(12, 2, generator=g))
        xy = torch.rand(12, 2, generator=g) * (torch.tensor([640.0, 512.0]) - side).clamp(min=1.0)
        boxes.append(torch.cat([xy, xy + side], 1))
    return feats, boxes


class _PoolerModule(torch.nn.Module):
    """Tensor-in / tensor-out wrapper (detectron2's Boxes are built inside the traced code)."""

    def __init__(self, method, aggregation):
        super().__init__()
        self.pooler = AblationROIPooler((7, 7), SCALES, method=method, aggregation=aggregation, sampling_ratio=2)

    def forward(self, feats, boxes):
        return self.pooler(list(feats), [Boxes(b) for b in boxes])


POOLERS = [("RoIPool", "max"), ("RoIWarp", "max"), ("RoIAlign", "avg"), ("RoIAlign", "max")]


@pytest.mark.parametrize("method,aggregation", POOLERS)
def test_pooler_export_and_compile_equal_eager(method, aggregation):
    feats, boxes = _fpn_case(60)
    module = _PoolerModule(method, aggregation)
    levels = module.pooler.level_poolers
    assert {type(p) for p in levels} == {{"RoIPool": RoIPool, "RoIWarp": RoIWarp, "RoIAlign": RoIAlign}[method]}
    feats_g = [f.clone().requires_grad_(True) for f in feats]
    ref = module(feats_g, boxes)
    go = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    ref_grads = torch.autograd.grad(ref, feats_g, go)
    assert all(g.abs().sum() > 0 for g in ref_grads)  # every level received boxes

    ep = torch.export.export(module, (feats, boxes))
    assert torch.equal(ep.module()(feats, boxes), ref.detach())

    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    feats_c = [f.clone().requires_grad_(True) for f in feats]
    out = compiled(feats_c, boxes)
    assert torch.equal(out, ref)
    for a, b in zip(torch.autograd.grad(out, feats_c, go), ref_grads):
        assert torch.equal(a, b)
