"""Each function of maskrcnn_plugin.compat runs on the installed detectron2."""
import importlib
import sys

from maskrcnn_plugin.compat import tracing_adapter_class


def test_tracing_adapter_class_loads_and_leaves_detectron2_export_alone():
    try:
        importlib.import_module("detectron2.export")
        importable = True
    except ImportError:  # detectron2 <= 0.6 on current torch (no caffe2)
        importable = False
    cls = tracing_adapter_class()
    assert cls.__name__ == "TracingAdapter" and hasattr(cls, "outputs_schema")
    assert ("detectron2.export" in sys.modules) == importable
