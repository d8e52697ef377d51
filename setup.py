"""Installs the component library, the `maskrcnn_plugin` package.

The configs, the ablation harness (`ablations/`), train_net.py and the tools stay in the repository: they
are run from a checkout, and nothing in the package looks them up.
"""
from setuptools import find_packages, setup

setup(
    name="maskrcnn_plugin",
    version="0.1.0",
    description="Mask R-CNN (He et al., ICCV 2017) components and ablations as a detectron2 plugin",
    python_requires=">=3.8",
    packages=find_packages(include=("maskrcnn_plugin", "maskrcnn_plugin.*")),
    # detectron2 itself is not declared: it is not on the registry, and a user's own build must be kept.
    install_requires=["pycocotools", "tqdm", "matplotlib", "numpy"],
    include_package_data=True,
)
