"""Packaging for detectron2 v0.6's Python sources without its compiled ops.

scripts/setup.sh unpacks the registry sdist `pb1-detectron2==0.6` (upstream v0.6's `detectron2/` tree minus
`layers/csrc/`), drops this file and `_C.py` beside it and installs the result as a normal pip distribution
named `detectron2`, so `pip show detectron2` / `pip uninstall detectron2` behave as for a source build.
"""
import glob
import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
zoo = os.path.join(here, "detectron2", "model_zoo")
zoo_configs = [
    os.path.relpath(p, zoo)
    for p in glob.glob(os.path.join(zoo, "configs", "**", "*.*"), recursive=True)
    if p.endswith((".yaml", ".py"))
]

setup(
    name="detectron2",
    version="0.6",
    description="detectron2 v0.6 Python sources without compiled ops (built by maskrcnn_plugin's setup)",
    python_requires=">=3.7",
    packages=find_packages(include=("detectron2", "detectron2.*")),
    package_data={"detectron2.model_zoo": zoo_configs},
    install_requires=[
        # v0.6's own runtime requirements, less black (used only to pretty-print LazyConfig files)
        # and the caffe2-only extras; versions are bounded in requirements/constraints.txt.
        "Pillow>=7.1",
        "matplotlib",
        "pycocotools>=2.0.2",
        "termcolor>=1.1",
        "yacs>=0.1.8",
        "tabulate",
        "cloudpickle",
        "tqdm>4.29.0",
        "tensorboard",
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.10",
        "omegaconf>=2.1",
        "hydra-core>=1.1",
        "scipy>1.5.1",
    ],
)
