"""Installs maskrcnn_plugin and its configs (as package data under maskrcnn_plugin/model_zoo/configs)."""
import glob
import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))


def config_files():
    # The repo's configs/ tree ships inside the package so an installed plugin can find them by name.
    return [os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "configs", "**", "*.yaml"), recursive=True)]


setup(
    name="maskrcnn_plugin",
    version="0.1.0",
    description="Mask R-CNN (He et al., ICCV 2017) components and ablations as a detectron2 plugin",
    python_requires=">=3.8",
    packages=find_packages(include=("maskrcnn_plugin", "maskrcnn_plugin.*")),
    # detectron2 itself is not declared: it is not on the registry, and a user's own build must be kept.
    install_requires=["pycocotools", "tqdm", "matplotlib", "numpy"],
    data_files=[("share/maskrcnn_plugin/" + os.path.dirname(f), [f]) for f in config_files()],
    include_package_data=True,
)
