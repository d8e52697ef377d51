"""ONNX export of the RoI operators (Mask R-CNN Section 3) with ``torch.onnx.export(..., dynamo=True)``.

Pass :func:`onnx_translation_table` as ``custom_translation_table`` (opset >= 16)::

    torch.onnx.export(model, args, dynamo=True, opset_version=18,
                      custom_translation_table=onnx_translation_table())

* ``roi_align`` with ``aggregation="avg"`` becomes ONNX's standard ``RoiAlign`` (mode ``avg``), which every
  ONNX runtime implements: ``coordinate_transformation_mode`` is ``half_pixel`` for ``aligned=True`` and
  ``output_half_pixel`` otherwise, ``sampling_ratio <= 0`` becomes ONNX's adaptive 0. (ONNX's ``max`` mode
  is not our max aggregation: onnxruntime takes the max over the weighted corner values of each sample,
  not over the bilinearly interpolated samples.)
* Everything else becomes an op of the custom domain ``maskrcnn_plugin`` (version 1) that a runtime must
  provide (e.g. an onnxruntime custom-op library wrapping ``torch.ops.maskrcnn_plugin.*``):

  - ``RoIPool(X, rois) -> Y`` with float attributes ``spatial_scale`` and int ``pooled_height``,
    ``pooled_width``;
  - ``RoIAlign(X, rois) -> Y`` and ``RoIWarp(X, rois) -> Y`` with ``spatial_scale``, ``pooled_height``,
    ``pooled_width``, ``sampling_ratio`` (<= 0: adaptive), ``aligned`` (0 | 1) and the string
    ``aggregation`` (``"max"`` | ``"avg"``).

  ``X`` is the float feature map ``[N, C, H, W]``, ``rois`` the ``[K, 5]`` boxes ``(batch_index, x1, y1, x2,
  y2)`` in X's dtype and ``Y`` the ``[K, C, pooled_height, pooled_width]`` result, computed exactly as
  ``torch.ops.maskrcnn_plugin.<op>`` computes its first output (see ``roi_pool.py``, ``roi_warp.py``,
  ``roi_align.py``).
"""
import onnx
import onnxscript
import torch
from onnxscript import opset18 as op

from . import _registration  # noqa: F401  (registers torch.ops.maskrcnn_plugin.*)

DOMAIN = "maskrcnn_plugin"
_NO_ARGMAX = onnx.helper.make_tensor("no_argmax", onnx.TensorProto.INT32, [0], [])


def _register_schema(name: str, sampling: bool) -> None:
    """Declare ``maskrcnn_plugin.<name>`` (version 1) to onnx, so graphs using it can be built and checked."""
    if onnx.defs.has(name, DOMAIN):
        return
    schema = onnx.defs.OpSchema
    attributes = [
        schema.Attribute("spatial_scale", schema.AttrType.FLOAT, "image to feature-map scale (1 / stride)"),
        schema.Attribute("pooled_height", schema.AttrType.INT, "output bins along y"),
        schema.Attribute("pooled_width", schema.AttrType.INT, "output bins along x"),
    ]
    if sampling:
        attributes += [
            schema.Attribute("sampling_ratio", schema.AttrType.INT, "samples per bin side; <= 0: adaptive"),
            schema.Attribute("aggregation", schema.AttrType.STRING, "'max' or 'avg' over the samples of a bin"),
            schema.Attribute("aligned", schema.AttrType.INT, "1: half-pixel shift (cell centres), 0: legacy"),
        ]
    onnx.defs.register_schema(schema(
        name, DOMAIN, 1,
        doc=f"torch.ops.maskrcnn_plugin.{name.lower().replace('roi', 'roi_')} (first output), see maskrcnn_plugin.layers",
        inputs=[schema.FormalParameter("X", "T", "feature map [N, C, H, W]"),
                schema.FormalParameter("rois", "T", "[K, 5] boxes (batch_index, x1, y1, x2, y2)")],
        outputs=[schema.FormalParameter("Y", "T", "[K, C, pooled_height, pooled_width]")],
        type_constraints=[("T", ["tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)"],
                           "floating-point features")],
        attributes=attributes,
    ))


_register_schema("RoIPool", sampling=False)
_register_schema("RoIWarp", sampling=True)
_register_schema("RoIAlign", sampling=True)
_custom = onnxscript.values.Opset(DOMAIN, 1)
def _argmax_placeholder():
    """Our ops' second output (the arg-max the backward needs) has no use in an inference graph."""
    return op.Constant(value=_NO_ARGMAX)


def _roi_pool(input, rois, spatial_scale, pooled_height, pooled_width):
    out = _custom.RoIPool(input, rois, spatial_scale=spatial_scale, pooled_height=pooled_height,
                          pooled_width=pooled_width)
    return out, _argmax_placeholder()


def _sampling_attributes(spatial_scale, pooled_height, pooled_width, sampling_ratio, aggregation, aligned):
    return dict(spatial_scale=spatial_scale, pooled_height=pooled_height, pooled_width=pooled_width,
                sampling_ratio=sampling_ratio, aggregation=aggregation, aligned=int(aligned))


def _roi_warp(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aggregation, aligned):
    attributes = _sampling_attributes(spatial_scale, pooled_height, pooled_width, sampling_ratio, aggregation, aligned)
    return _custom.RoIWarp(input, rois, **attributes), _argmax_placeholder()


def _roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aggregation, aligned):
    if aggregation != "avg":
        attributes = _sampling_attributes(spatial_scale, pooled_height, pooled_width, sampling_ratio, aggregation,
                                          aligned)
        return _custom.RoIAlign(input, rois, **attributes), _argmax_placeholder()
    batch_index = op.Cast(op.Squeeze(op.Slice(rois, [0], [1], [1]), [1]), to=onnx.TensorProto.INT64)
    boxes = op.Slice(rois, [1], [5], [1])
    out = op.RoiAlign(
        input, boxes, batch_index,
        spatial_scale=spatial_scale,
        output_height=pooled_height,
        output_width=pooled_width,
        sampling_ratio=max(sampling_ratio, 0),
        mode="avg",
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
    )
    return out, _argmax_placeholder()


def onnx_translation_table():
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)`` (see the module docstring)."""
    ops = torch.ops.maskrcnn_plugin
    return {
        ops.roi_pool.default: _roi_pool,
        ops.roi_warp.default: _roi_warp,
        ops.roi_align.default: _roi_align,
    }
