"""The RoI operators as custom ops of PyTorch's dispatcher (namespace ``maskrcnn_plugin``), and their backends.

Registered here, and only here (``torch.ops.maskrcnn_plugin.*``)::

    roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width)
        -> (Tensor output, Tensor argmax)
    roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height,
        SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor
    roi_align / roi_warp(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height,
        SymInt pooled_width, int sampling_ratio, str aggregation, bool aligned) -> (Tensor output, Tensor argmax)
    roi_align_backward / roi_warp_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale,
        SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height,
        SymInt width, int sampling_ratio, str aggregation, bool aligned) -> Tensor

``rois`` is ``Tensor[K, 5]`` of ``(batch_index, x1, y1, x2, y2)``; ``argmax`` (int32) is what the backward
needs: the arg-max cell of RoIPool, the arg-max sample of max aggregation, an empty ``[0, C, ph, pw]``
tensor for avg. Each forward op has a fake implementation (shapes without data) and its autograd formula
registered with it (the backward is itself an op, so compiled and exported graphs contain it).

Every implementation computes the per-RoI geometry from ``rois`` (``roi_ops.py``, in the input dtype
exactly like the previous Python wrappers, so CPU numbers are bit-identical) and hands it to a *kernel
module* with four functions (``pool_forward``, ``pool_backward``, ``sample_forward``, ``sample_backward``):

* CPU: the compiled C++ extension (``csrc/roi_ops.cpp``), or the pure-PyTorch ``_python_kernels`` when it
  cannot be built;
* CUDA: torchvision's kernels where they compute our numbers (RoIPool; RoIAlign avg; RoIWarp avg = RoIAlign
  avg of the snapped box), the Triton kernels of ``roi_triton.py`` for max aggregation.

``MASKRCNN_PLUGIN_ROI_BACKEND`` = ``auto`` (default) | ``python`` | ``cpp`` | ``triton`` overrides the choice:
``python`` runs the pure-PyTorch kernels on any device, ``cpp`` raises if the extension is unavailable (CPU),
``triton`` runs every op through ``roi_triton`` (on CPU tensors too when ``TRITON_INTERPRET=1``, which is how
the tests check the GPU kernels without a GPU). float16 / bfloat16 are computed in float32 and returned in
the input dtype.

Determinism: forwards are deterministic everywhere, and so are the CPU backwards (parallel over channels).
The GPU backwards (Triton, torchvision) accumulate with atomics, so their sums may differ in the last bits
from run to run; under ``torch.use_deterministic_algorithms(True)`` the pure-PyTorch kernels compute the
GPU backwards instead (deterministic, slower).
"""
import os
from typing import Callable, Tuple

import torch
from torch import Tensor

from . import _python_kernels
from .roi_ops import _align_params, _check_feature_map, _pool_bin_edges, _snapped_rois, _warp_params

_BACKEND_ENV = "MASKRCNN_PLUGIN_ROI_BACKEND"
_BACKENDS = ("auto", "python", "cpp", "triton")


# ----------------------------------------------------------------------------------------------------------
# backend choice
# ----------------------------------------------------------------------------------------------------------
def _backend() -> str:
    backend = os.environ.get(_BACKEND_ENV, "auto").strip().lower() or "auto"
    if backend not in _BACKENDS:
        raise ValueError(f"{_BACKEND_ENV} must be one of {', '.join(repr(b) for b in _BACKENDS)}, got {backend!r}")
    return backend


def _ext_module():
    from . import _ext

    return _ext.load_extension()


def _use_cpp(input: Tensor) -> bool:
    """Whether the compiled CPU extension serves `input` (also used by the mask paste-back)."""
    backend = _backend()
    if backend == "python" or input.device.type != "cpu" or input.dtype not in (torch.float32, torch.float64):
        return False
    if backend == "cpp":
        from . import _ext

        return _ext.load_extension(strict=True) is not None
    return _ext_module() is not None


def _deterministic_backward() -> bool:
    """torch's deterministic mode: the GPU backward kernels (Triton, torchvision) sum with atomics in an
    arbitrary order, so the pure-PyTorch kernels (index_add_, deterministic in that mode) replace them."""
    return torch.are_deterministic_algorithms_enabled()


def _kernels(device: torch.device, backward: bool = False):
    """The kernel module that computes the ops for tensors on `device` (see the module docstring)."""
    backend = _backend()
    if backend == "triton" or (device.type == "cuda" and backend != "python"):
        if backward and _deterministic_backward():
            return _python_kernels
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                f"{_BACKEND_ENV}=triton on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
                "before maskrcnn_plugin.layers.roi_triton is imported"
            )
        from . import roi_triton

        return roi_triton
    if backend == "python" or device.type != "cpu":
        return _python_kernels
    if backend == "cpp":
        from . import _ext

        return _ext.load_extension(strict=True)
    ext = _ext_module()
    return ext if ext is not None else _python_kernels


def _torchvision_ops():
    import torchvision  # noqa: F401  (loading it registers torch.ops.torchvision)

    return torch.ops.torchvision


def _use_torchvision(backward: bool = False) -> bool:
    """CUDA only: torchvision's kernels serve the ops they compute exactly, unless a backend is forced (or,
    for a backward, deterministic mode is on)."""
    return _backend() in ("auto", "cpp") and not (backward and _deterministic_backward())


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _compute_args(input: Tensor, rois: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Input and rois in the compute dtype, and the int64 batch index of every RoI."""
    x = input.to(_compute_dtype(input.dtype))
    # The C++ and pure-PyTorch kernels read the features as N x H x W x C (they permute them themselves): a
    # channels-last input, as a model prepared with TEST.CHANNELS_LAST gives, goes to them without a copy.
    if not (x.device.type == "cpu" and _backend() != "triton" and x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    r = rois.to(x.dtype).contiguous()
    return x, r, r[:, 0].to(torch.int64).contiguous()


def _no_argmax(input: Tensor, ph: int, pw: int) -> Tensor:
    return input.new_empty((0, input.size(1), ph, pw), dtype=torch.int32)


# ----------------------------------------------------------------------------------------------------------
# RoIPool
# ----------------------------------------------------------------------------------------------------------
def _roi_pool(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> Tuple[Tensor, Tensor]:
    _check_feature_map(input, rois.size(0))
    x, r, batch = _compute_args(input, rois)
    edges = _pool_bin_edges(r, spatial_scale, pooled_height, pooled_width, x.size(2), x.size(3))
    out, argmax = _kernels(x.device).pool_forward(x, batch, *edges)
    return out.to(input.dtype), argmax


def _roi_pool_cuda(input, rois, spatial_scale, pooled_height, pooled_width):
    if not _use_torchvision():
        return _roi_pool(input, rois, spatial_scale, pooled_height, pooled_width)
    _check_feature_map(input, rois.size(0))
    x, r, _ = _compute_args(input, rois)
    out, argmax = _torchvision_ops().roi_pool(x, r, spatial_scale, pooled_height, pooled_width)
    return out.to(input.dtype), argmax


def _roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    _check_feature_map(input, rois.size(0))
    shape = (rois.size(0), input.size(1), pooled_height, pooled_width)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


def _roi_pool_backward(
    grad: Tensor, rois: Tensor, argmax: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int,
    batch_size: int, channels: int, height: int, width: int,
) -> Tensor:
    g = grad.to(_compute_dtype(grad.dtype)).contiguous()
    batch = rois[:, 0].to(torch.int64).contiguous()
    gi = _kernels(g.device, backward=True).pool_backward(g, batch, argmax.contiguous(), batch_size, channels, height, width)
    return gi.to(grad.dtype)


def _roi_pool_backward_cuda(grad, rois, argmax, *args):
    if not _use_torchvision(backward=True):
        return _roi_pool_backward(grad, rois, argmax, *args)
    g = grad.to(_compute_dtype(grad.dtype)).contiguous()
    gi = _torchvision_ops()._roi_pool_backward(g, rois.to(g.dtype), argmax, *args)
    return gi.to(grad.dtype)


def _roi_pool_backward_fake(grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                            height, width):
    return grad.new_empty((batch_size, channels, height, width))


def _roi_pool_setup(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width = inputs
    # argmax (int32) has no gradient: materialising one would zero-fill a tensor of the output's size on
    # every backward (measured: +35% RoIPool backward time, +98 MiB peak on the benchmark's workload)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(rois, output[1])
    ctx.args = (spatial_scale, pooled_height, pooled_width, *input.shape)


def _roi_pool_grad(ctx, grad, _grad_argmax):
    if grad is None:
        return None, None, None, None, None
    rois, argmax = ctx.saved_tensors
    gi = torch.ops.maskrcnn_plugin.roi_pool_backward(grad, rois, argmax, *ctx.args)
    return gi, None, None, None, None


roi_pool_op = torch.library.custom_op("maskrcnn_plugin::roi_pool", _roi_pool, mutates_args=(), device_types="cpu")
roi_pool_backward_op = torch.library.custom_op(
    "maskrcnn_plugin::roi_pool_backward", _roi_pool_backward, mutates_args=(), device_types="cpu"
)
roi_pool_op.register_kernel("cuda")(_roi_pool_cuda)
roi_pool_backward_op.register_kernel("cuda")(_roi_pool_backward_cuda)
roi_pool_op.register_fake(_roi_pool_fake)
roi_pool_backward_op.register_fake(_roi_pool_backward_fake)
roi_pool_op.register_autograd(_roi_pool_grad, setup_context=_roi_pool_setup)


# ----------------------------------------------------------------------------------------------------------
# RoIAlign and RoIWarp (bilinear sampling; they differ only in the geometry)
# ----------------------------------------------------------------------------------------------------------
def _sample_forward(geometry: Callable, input, rois, spatial_scale, ph, pw, sampling_ratio, aggregation, aligned):
    _check_feature_map(input, rois.size(0))
    x, r, batch = _compute_args(input, rois)
    params = [t.contiguous() for t in geometry(r, spatial_scale, ph, pw, sampling_ratio, aligned)]
    out, argmax = _kernels(x.device).sample_forward(x, batch, *params, ph, pw, aggregation == "max")
    return out.to(input.dtype), argmax


def _sample_backward(geometry: Callable, grad, rois, argmax, spatial_scale, ph, pw, n, c, h, w, sampling_ratio,
                     aggregation, aligned):
    g = grad.to(_compute_dtype(grad.dtype)).contiguous()
    r = rois.to(g.dtype).contiguous()
    batch = r[:, 0].to(torch.int64).contiguous()
    params = [t.contiguous() for t in geometry(r, spatial_scale, ph, pw, sampling_ratio, aligned)]
    gi = _kernels(g.device, backward=True).sample_backward(
        g, batch, *params, argmax.contiguous(), n, c, h, w, ph, pw, aggregation == "max"
    )
    return gi.to(grad.dtype)


def _torchvision_align_rois(geometry: Callable, rois: Tensor, spatial_scale: float) -> Tuple[Tensor, float]:
    """The rois and scale for which torchvision's RoIAlign computes our avg op."""
    if geometry is _warp_params:
        return _snapped_rois(rois, spatial_scale), 1.0
    return rois, spatial_scale


def _sample_forward_cuda(geometry, input, rois, spatial_scale, ph, pw, sampling_ratio, aggregation, aligned):
    if aggregation == "max" or not _use_torchvision():
        return _sample_forward(geometry, input, rois, spatial_scale, ph, pw, sampling_ratio, aggregation, aligned)
    _check_feature_map(input, rois.size(0))
    x, r, _ = _compute_args(input, rois)
    tv_rois, tv_scale = _torchvision_align_rois(geometry, r, spatial_scale)
    out = _torchvision_ops().roi_align(x, tv_rois, tv_scale, ph, pw, sampling_ratio, aligned)
    return out.to(input.dtype), _no_argmax(x, ph, pw)


def _sample_backward_cuda(geometry, grad, rois, argmax, spatial_scale, ph, pw, n, c, h, w, sampling_ratio,
                          aggregation, aligned):
    if aggregation == "max" or not _use_torchvision(backward=True):
        return _sample_backward(geometry, grad, rois, argmax, spatial_scale, ph, pw, n, c, h, w, sampling_ratio,
                                aggregation, aligned)
    g = grad.to(_compute_dtype(grad.dtype)).contiguous()
    tv_rois, tv_scale = _torchvision_align_rois(geometry, rois.to(g.dtype), spatial_scale)
    gi = _torchvision_ops()._roi_align_backward(g, tv_rois, tv_scale, ph, pw, n, c, h, w, sampling_ratio, aligned)
    return gi.to(grad.dtype)


def _sample_fake(input, rois, spatial_scale, ph, pw, sampling_ratio, aggregation, aligned):
    _check_feature_map(input, rois.size(0))
    k, c = rois.size(0), input.size(1)
    argmax_rois = k if aggregation == "max" else 0
    return input.new_empty((k, c, ph, pw)), input.new_empty((argmax_rois, c, ph, pw), dtype=torch.int32)


def _sample_backward_fake(grad, rois, argmax, spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aggregation,
                          aligned):
    return grad.new_empty((n, c, h, w))


def _register_sampling_op(name: str, geometry: Callable):
    """Define ``maskrcnn_plugin::<name>`` and ``<name>_backward`` for a bilinear-sampling geometry."""

    def forward(
        input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int,
        sampling_ratio: int, aggregation: str, aligned: bool,
    ) -> Tuple[Tensor, Tensor]:
        return _sample_forward(geometry, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                               aggregation, aligned)

    def backward(
        grad: Tensor, rois: Tensor, argmax: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int,
        batch_size: int, channels: int, height: int, width: int, sampling_ratio: int, aggregation: str,
        aligned: bool,
    ) -> Tensor:
        return _sample_backward(geometry, grad, rois, argmax, spatial_scale, pooled_height, pooled_width,
                                batch_size, channels, height, width, sampling_ratio, aggregation, aligned)

    fwd = torch.library.custom_op(f"maskrcnn_plugin::{name}", forward, mutates_args=(), device_types="cpu")
    bwd = torch.library.custom_op(f"maskrcnn_plugin::{name}_backward", backward, mutates_args=(),
                                  device_types="cpu")
    fwd.register_kernel("cuda")(lambda *args: _sample_forward_cuda(geometry, *args))
    bwd.register_kernel("cuda")(lambda *args: _sample_backward_cuda(geometry, *args))
    fwd.register_fake(_sample_fake)
    bwd.register_fake(_sample_backward_fake)
    backward_op = getattr(torch.ops.maskrcnn_plugin, f"{name}_backward")

    def setup_context(ctx, inputs, output):
        input, rois, spatial_scale, ph, pw, sampling_ratio, aggregation, aligned = inputs
        ctx.set_materialize_grads(False)  # as _roi_pool_setup
        ctx.save_for_backward(rois, output[1])
        ctx.args = (spatial_scale, ph, pw, *input.shape, sampling_ratio, aggregation, aligned)

    def grad_fn(ctx, grad, _grad_argmax):
        if grad is None:
            return (None,) * 8
        rois, argmax = ctx.saved_tensors
        return (backward_op(grad, rois, argmax, *ctx.args),) + (None,) * 7

    fwd.register_autograd(grad_fn, setup_context=setup_context)
    return fwd, bwd


roi_align_op, roi_align_backward_op = _register_sampling_op("roi_align", _align_params)
roi_warp_op, roi_warp_backward_op = _register_sampling_op("roi_warp", _warp_params)
