"""What a supported detectron2 version lacks, in one place (engineering, not a paper section).

Each function says which detectron2 versions need it; `tests/test_compat.py` runs each on the installed one.
"""
import importlib
import os
import sys
import types

__all__ = ["tracing_adapter_class"]


def tracing_adapter_class():
    """detectron2's ``TracingAdapter`` (flattens a model's dict / Instances inputs and outputs for
    ``torch.jit.trace``).

    detectron2 <= 0.6: ``detectron2/export/__init__.py`` imports caffe2, which current torch no longer ships,
    so ``from detectron2.export import TracingAdapter`` fails although the adapter itself needs no caffe2.
    There its module ``detectron2/export/flatten.py`` is imported under a bare package entry that runs no
    ``__init__``; the entry is removed again, so a later ``import detectron2.export`` behaves as before.
    """
    try:
        from detectron2.export import TracingAdapter

        return TracingAdapter
    except ImportError:
        pass
    import detectron2

    name = "detectron2.export"
    bare = types.ModuleType(name)
    bare.__path__ = [os.path.join(os.path.dirname(detectron2.__file__), "export")]
    sys.modules[name] = bare
    try:
        return importlib.import_module(f"{name}.flatten").TracingAdapter
    finally:
        del sys.modules[name]
