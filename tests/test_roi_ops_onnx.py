"""ONNX export of the RoI operators (issue 23): RoIAlign avg as ONNX's standard RoiAlign, checked against eager
with onnxruntime; max aggregation, RoIPool and RoIWarp as ops of the custom domain ``maskrcnn_plugin``, checked
by running the exported graph in ONNX's reference evaluator with those ops provided from our kernels.
"""
import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from onnx.reference import ReferenceEvaluator  # noqa: E402
from onnx.reference.op_run import OpRun  # noqa: E402

from maskrcnn_plugin.layers import roi_align, roi_pool, roi_warp  # noqa: E402
from maskrcnn_plugin.layers._onnx import DOMAIN, onnx_translation_table  # noqa: E402


def make_case(seed, n=2, c=3, h=10, w=13, k=8, scale=0.5):
    """Features and rois incl. empty, out-of-image, partly outside and inverted boxes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    xy = torch.rand(k, 2, generator=g) * torch.tensor([1.2 * w / scale, 1.2 * h / scale]) - 2.0
    wh = torch.rand(k, 2, generator=g) * torch.tensor([0.9 * w / scale, 0.9 * h / scale])
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[0] = torch.tensor([3.0, 4.0, 3.0, 4.0])
    boxes[1] = torch.tensor([-50.0, -40.0, -20.0, -10.0])
    boxes[2] = torch.tensor([w / scale - 3.0, h / scale - 5.0, w / scale + 30.0, h / scale + 9.0])
    boxes[3] = torch.tensor([9.0, 8.0, 2.0, 3.0])
    batch = torch.randint(0, n, (k, 1), generator=g).float()
    return x, torch.cat([batch, boxes], 1)


class _Op(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, rois):
        return self.fn(x, rois)


def _export(fn, x, rois, dynamic_k=False):
    dynamic = {"x": None, "rois": {0: torch.export.Dim("K")}} if dynamic_k else None
    program = torch.onnx.export(_Op(fn).eval(), (x, rois), dynamo=True, opset_version=18, dynamic_shapes=dynamic,
                                custom_translation_table=onnx_translation_table(), verbose=False)
    return program.model_proto


@pytest.mark.parametrize("sr", [-1, 0, 2])
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_avg_exports_to_standard_roialign(sr, aligned):
    x, rois = make_case(10 + sr * 2 + aligned)
    fn = lambda a, b: roi_align(a, b, (3, 4), 0.5, sr, "avg", aligned)  # noqa: E731
    model = _export(fn, x, rois, dynamic_k=True)
    onnx.checker.check_model(model)
    nodes = [(nd.domain, nd.op_type) for nd in model.graph.node]
    assert ("", "RoiAlign") in nodes and all(d == "" for d, _ in nodes)
    mode = next(a.s.decode() for nd in model.graph.node if nd.op_type == "RoiAlign" for a in nd.attribute
                if a.name == "coordinate_transformation_mode")
    assert mode == ("half_pixel" if aligned else "output_half_pixel")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for k in (rois.size(0), 3):  # the box count is dynamic
        (y,) = session.run(None, dict(zip(names, (x.numpy(), rois[:k].numpy()))))
        np.testing.assert_allclose(y, fn(x, rois[:k]).numpy(), rtol=1e-5, atol=1e-6)


def _reference_op(name, torch_op):
    """An ONNX reference-evaluator implementation of the custom-domain op `name` (what a runtime provides)."""

    def run(self, x, rois, spatial_scale=None, pooled_height=None, pooled_width=None, sampling_ratio=None,
            aggregation=None, aligned=None):
        args = [torch.from_numpy(x), torch.from_numpy(rois), spatial_scale, pooled_height, pooled_width]
        if name != "RoIPool":
            args += [sampling_ratio, aggregation, bool(aligned)]
        return (torch_op(*args)[0].numpy(),)

    return type(name, (OpRun,), {"op_domain": DOMAIN, "_run": run})


CUSTOM_OPS = [
    _reference_op("RoIPool", torch.ops.maskrcnn_plugin.roi_pool),
    _reference_op("RoIWarp", torch.ops.maskrcnn_plugin.roi_warp),
    _reference_op("RoIAlign", torch.ops.maskrcnn_plugin.roi_align),
]

CUSTOM_CASES = {
    "pool": ("RoIPool", lambda a, b: roi_pool(a, b, (3, 2), 0.5)),
    "warp_avg": ("RoIWarp", lambda a, b: roi_warp(a, b, (2, 3), 0.5, 2, "avg", True)),
    "warp_max": ("RoIWarp", lambda a, b: roi_warp(a, b, (2, 3), 0.5, -1, "max", False)),
    "align_max": ("RoIAlign", lambda a, b: roi_align(a, b, (3, 2), 0.5, 2, "max", True)),
    "align_max_legacy": ("RoIAlign", lambda a, b: roi_align(a, b, (3, 2), 0.5, -1, "max", False)),
}


@pytest.mark.parametrize("case", sorted(CUSTOM_CASES))
def test_custom_domain_ops_export_and_run(case):
    op_type, fn = CUSTOM_CASES[case]
    x, rois = make_case(30)
    model = _export(fn, x, rois)
    onnx.checker.check_model(model)
    assert [(nd.domain, nd.op_type) for nd in model.graph.node] == [(DOMAIN, op_type)]
    assert {o.domain: o.version for o in model.opset_import}[DOMAIN] == 1
    (y,) = ReferenceEvaluator(model, new_ops=CUSTOM_OPS).run(None, {"x": x.numpy(), "rois": rois.numpy()})
    assert np.array_equal(y, fn(x, rois).numpy())
