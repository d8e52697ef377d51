#!/usr/bin/env bash
# One-command set-up for a new machine: a virtual environment in .venv with torch, detectron2 and
# maskrcnn_plugin (editable). Re-running it is cheap: what is already there is kept.
#
#   bash scripts/setup.sh              # creates/updates ./.venv
#   VENV=/path/to/env bash scripts/setup.sh   # install into an existing environment instead
#
# A detectron2 that the environment already has (e.g. built from source, any version 0.6 -> main) is kept
# untouched, together with its torch; otherwise detectron2 0.6 is installed from the registry sdist pinned
# in requirements/detectron2.txt, as a Python-only build (see scripts/detectron2_pyonly/).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
py="$VENV/bin/python"
pip=("$py" -m pip --disable-pip-version-check)

if "$py" -c "import detectron2" 2>/dev/null; then
  echo "[setup] keeping the detectron2 already installed: $("$py" -c 'import detectron2,os;print(detectron2.__version__, os.path.dirname(detectron2.__file__))')"
  "${pip[@]}" install -r requirements/dev.txt
  # detectron2's model_zoo (0.6 to current main) imports pkg_resources, which setuptools >= 81 (pulled in by
  # current torch) no longer has; an older setuptools brings it back without touching detectron2 or torch.
  if ! "$py" -c "import pkg_resources" 2>/dev/null; then
    echo "[setup] pkg_resources is missing (detectron2.model_zoo needs it): installing setuptools<81"
    "${pip[@]}" install "setuptools<81"
  fi
else
  "${pip[@]}" install -r requirements/torch.txt
  "${pip[@]}" install -c requirements/constraints.txt "setuptools<81" wheel -r requirements/dev.txt
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "[setup] fetching the detectron2 0.6 sources (hash-pinned) into $work"
  # Its setup.py imports torch, hence --no-build-isolation; --require-hashes checks the sha256.
  "${pip[@]}" download --no-deps --no-binary :all: --no-build-isolation --require-hashes \
      -r requirements/detectron2.txt -d "$work"
  tar -xzf "$work"/pb1-detectron2-0.6.tar.gz -C "$work"
  src="$work/pb1-detectron2-0.6"
  rm -rf "$src/setup.py" "$src/setup.cfg" "$src/pyproject.toml" "$src"/*.egg-info
  cp scripts/detectron2_pyonly/setup.py "$src/setup.py"
  cp scripts/detectron2_pyonly/_C.py "$src/detectron2/_C.py"
  echo "[setup] installing detectron2 0.6 (Python-only) as the distribution 'detectron2'"
  "${pip[@]}" install -c requirements/constraints.txt --no-build-isolation "$src"
fi

# detectron2's Visualizer needs OpenCV, which detectron2 leaves to the user; keep any cv2 already present.
if ! "$py" -c "import cv2" 2>/dev/null; then
  "${pip[@]}" install "opencv-python-headless>=4.10,<5"
fi

echo "[setup] installing maskrcnn_plugin (editable)"
"${pip[@]}" install --no-build-isolation --no-deps -e .
# Compile the C++ RoI kernels now (torch.utils.cpp_extension + ninja) rather than on first use; if that
# fails the operators fall back to their pure-PyTorch path, so a warning is enough here.
"${pip[@]}" install ninja
"$py" -m maskrcnn_plugin.layers._ext || echo "[setup] WARNING: C++ RoI kernels not built; the pure-PyTorch path will be used"
"$py" -W ignore -c "import detectron2.modeling, detectron2.model_zoo, maskrcnn_plugin; print('[setup] ok: detectron2', detectron2.__version__)"
