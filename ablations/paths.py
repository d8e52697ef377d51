"""Where the harness finds and puts things in the repository: train_net.py, the arm configs, results, outputs, docs.

This is why the harness is a top-level package beside train_net.py rather than part of maskrcnn_plugin: it
knows the repository's layout, which an installed plugin does not have.
"""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO_ROOT, "train_net.py")
CONFIGS_ROOT = os.path.join(REPO_ROOT, "configs", "ablations")
RESULTS_ROOT = os.path.join(REPO_ROOT, "results", "ablations")
OUTPUT_ROOT = os.path.join(REPO_ROOT, "output", "ablations")
DOCS_DIR = os.path.join(REPO_ROOT, "docs")


def arm_config_path(table, scale, arm, configs_root=CONFIGS_ROOT):
    return os.path.join(configs_root, scale, table, f"{arm}.yaml")


def arm_output_dir(table, scale, arm, seed, output_root=OUTPUT_ROOT):
    return os.path.join(output_root, scale, table, arm, f"seed{seed}")


def plot_path(table, scale, docs_dir=DOCS_DIR):
    suffix = "" if scale == "cpu" else f"_{scale}"
    return os.path.join(docs_dir, "images", f"ablation_{table}{suffix}_ap_vs_iou.png")


def repo_relpath(path):
    """`path` relative to the repository when it lies inside it (for commands recorded in results)."""
    path = os.path.abspath(path)
    try:
        rel = os.path.relpath(path, REPO_ROOT)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel
