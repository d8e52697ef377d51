"""A whole plugin Mask R-CNN (our ROI heads, every RoI extractor) exports to TorchScript with detectron2's
TracingAdapter on the CPU and gives the eager outputs, also on an image of another size and after a reload."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from test_train_net import DEFAULT_CONFIG

import maskrcnn_plugin
from maskrcnn_plugin.compat import tracing_adapter_class


def _inference(model, inputs):
    # detectron2's export recipe: the model's own inference without the paste-back post-processing, which
    # stays in Python (detectron2_postprocess) for traced models
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


def _fields(instances):
    return {k: (v.tensor if hasattr(v, "tensor") else v) for k, v in instances.get_fields().items()}


def _assert_same(eager, traced):
    a, b = _fields(eager[0]["instances"]), _fields(traced[0]["instances"])
    assert a.keys() == b.keys() == {"pred_boxes", "scores", "pred_classes", "pred_masks"}
    assert len(a["scores"]) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("method, aggregation", [
    ("RoIPool", "max"), ("RoIWarp", "max"), ("RoIWarp", "avg"), ("RoIAlign", "max"), ("RoIAlign", "avg"),
])
def test_tracing_adapter_export_equals_eager(tmp_path, method, aggregation):
    cfg = get_cfg()
    maskrcnn_plugin.add_maskrcnn_plugin_config(cfg)
    cfg.merge_from_file(DEFAULT_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_EXTRACTOR.METHOD = method
    cfg.MODEL.ROI_EXTRACTOR.AGGREGATION = aggregation
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random weights: keep detections to compare
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 128, 160), generator=g, dtype=torch.uint8)
    other = torch.randint(0, 256, (3, 96, 128), generator=g, dtype=torch.uint8)

    adapter = tracing_adapter_class()(model, [{"image": image}], _inference)
    with torch.no_grad():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
        path = tmp_path / "model.ts"
        traced.save(str(path))
        reloaded = torch.jit.load(str(path))
        for img in (image, other):
            eager = _inference(model, [{"image": img}])
            _assert_same(eager, adapter.outputs_schema(traced(img)))
            _assert_same(eager, adapter.outputs_schema(reloaded(img)))
    assert "maskrcnn_plugin::" in str(traced.inlined_graph)  # our registered op, not a Python call
