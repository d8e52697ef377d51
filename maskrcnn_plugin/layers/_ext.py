"""Build / load the compiled CPU kernels: the RoI operators (``csrc/roi_ops.cpp``) and the mask paste-back
(``csrc/paste_masks.cpp``, used by :mod:`maskrcnn_plugin.paste`).

The extension is compiled with ``torch.utils.cpp_extension.load`` (ninja required) into ``build/roi_ext``
under the repository root (override with ``MASKRCNN_PLUGIN_ROI_BUILD_DIR``) the first time it is needed;
``python -m maskrcnn_plugin.layers._ext`` prebuilds it. If compilation fails the operators fall back to the
pure-PyTorch path with a warning (``MASKRCNN_PLUGIN_ROI_BACKEND=cpp`` turns that into an error).
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_SOURCES = [_HERE / "csrc" / "roi_ops.cpp", _HERE / "csrc" / "paste_masks.cpp"]
_lock = threading.Lock()
_module = None
_error: Exception | None = None


def build_dir() -> Path:
    env = os.environ.get("MASKRCNN_PLUGIN_ROI_BUILD_DIR")
    if env:
        return Path(env)
    return _HERE.parents[1] / "build" / "roi_ext"


def load_extension(strict: bool = False, verbose: bool = False):
    """Return the compiled module, or None (after one warning) if it cannot be built; raise if strict."""
    global _module, _error
    if _module is not None:
        return _module
    with _lock:
        if _module is None and _error is None:
            try:
                from torch.utils.cpp_extension import load

                d = build_dir()
                d.mkdir(parents=True, exist_ok=True)
                _module = load(
                    name="maskrcnn_plugin_roi_ext",
                    sources=[str(s) for s in _SOURCES],
                    build_directory=str(d),
                    extra_cflags=["-O3", "-fopenmp"],
                    extra_ldflags=["-fopenmp"],
                    verbose=verbose,
                )
            except Exception as e:  # compiler / ninja missing, build error, ...
                _error = e
                warnings.warn(
                    f"maskrcnn_plugin: could not build the C++ RoI kernels ({type(e).__name__}: {e}); "
                    "using the slower pure-PyTorch path.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    if _module is None and strict:
        raise RuntimeError(f"the compiled RoI extension is unavailable: {_error}") from _error
    return _module


if __name__ == "__main__":
    mod = load_extension(strict=True, verbose=True)
    print(f"built {mod.__name__} in {build_dir()}")
