"""Stand-in for detectron2's compiled extension in a Python-only build.

detectron2 imports `_C` at module level in a few places (deformable conv, rotated boxes, the C++ COCO
evaluator) but Mask R-CNN never calls those ops. Importing this module succeeds; *using* any op raises an
ImportError that names the op and says how to get a full build. The build-information queries that
`detectron2.utils.collect_env` makes (at every `default_setup`) answer that nothing was compiled.
"""

_NOT_COMPILED = "none (Python-only detectron2 build, no compiled ops)"


def get_compiler_version():
    return _NOT_COMPILED


def get_cuda_version():
    return _NOT_COMPILED


def has_cuda():
    return False


def __getattr__(name):
    # Dunder look-ups (torch.jit / inspect / pickle probing a module) must see a normal missing attribute.
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    raise ImportError(
        f"detectron2._C.{name} is a compiled op, and this detectron2 is the Python-only 0.6 build installed by "
        "maskrcnn_plugin's scripts/setup.sh (no C++/CUDA ops). Mask R-CNN does not need it; for deformable "
        "conv, rotated boxes or the C++ COCO evaluator, build detectron2 from source "
        "(https://detectron2.readthedocs.io/en/latest/tutorials/install.html) and re-run scripts/setup.sh, "
        "which keeps an existing detectron2."
    )
