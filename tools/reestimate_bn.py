#!/usr/bin/env python
"""Re-estimate a pre-trained backbone's BatchNorm statistics on detection images: ``shapes-pretrained://R-<d>@<set>``.

The "pretrained" protocol fine-tunes with frozen BN (the paper's Detectron setting), which takes the pre-training
images' BN statistics to hold on the detection images. ImageNet's roughly hold on COCO; our generated
classification set's do not on the shapes images (``tools/frozen_bn_shift.py``: the layer inputs have 0.16-0.54 of
the frozen variance). This writes a copy of the cached backbone whose running mean and variance are the
population statistics of each BN layer's input over detection training images (fvcore's precise BN, one pass,
the weights and BN affine parameters unchanged), which a config selects with
``MODEL.WEIGHTS: "shapes-pretrained://R-18@shapes_train"``. The procedure is `BN_REESTIMATION` in
``maskrcnn_plugin/pretrained.py``: the first 512 images of the dataset at their stored size (the detection
configs' input size), normalised with the recipe's pixel mean and std (the configs' too), batches of 16.

    python tools/reestimate_bn.py --depth 18 --dataset shapes_train      # seconds to a minute on 2 cores

Deterministic: the same backbone file and dataset give the same statistics. Writes the file atomically into the
cache beside the backbone, with a ``.json`` log (source, images, time, per-stage median statistics before and
after); a second call with the file present does nothing.
"""
import argparse
import datetime
import json
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, REPO)

from maskrcnn_plugin.checkpoint import atomic_open  # noqa: E402
from maskrcnn_plugin.pretrained import (  # noqa: E402
    BN_REESTIMATION,
    PREFIX,
    RECIPES,
    backbone_checkpoint,
    recipe_for,
    recipe_name,
    reestimated_checkpoint_path,
    resolve,
)

__all__ = ["reestimate_bn_statistics", "reestimate", "main"]


def reestimate_bn_statistics(backbone, batches):
    """Replace the running statistics of every BatchNorm2d of `backbone` with the population mean and variance of
    its input over `batches` (a list of normalised float (N, C, H, W) tensors); nothing else changes."""
    from fvcore.nn.precise_bn import update_bn_stats

    backbone.train()  # precise BN updates the layers that are in training mode
    try:
        update_bn_stats(backbone, batches, num_iters=len(batches))
    finally:
        backbone.eval()
    return backbone


def _stage_stats(state):
    """{stage: (median running mean, median running var)} over the stage's BN layers' channels."""
    stages = {}
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var")):
            stages.setdefault(key.split(".")[0], {}).setdefault(key.rsplit(".", 1)[1], []).append(value.flatten())
    return {stage: [float(torch.cat(s["running_mean"]).median()), float(torch.cat(s["running_var"]).median())]
            for stage, s in stages.items()}


def reestimate(depth, dataset, cache_dir=None):
    """Build (or find) the R-`depth` backbone of the current recipe with BN statistics re-estimated on `dataset`;
    returns its file."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_resnet_backbone

    from tools.frozen_bn_shift import detection_images
    from tools.pretrain_backbone import backbone_cfg  # the pre-trained network, with trainable BN

    recipe = recipe_for(depth)
    target = reestimated_checkpoint_path(recipe, dataset, cache_dir)
    if os.path.isfile(target):
        print(f"{target} exists; nothing to do")
        return target
    source = resolve(f"{PREFIX}R-{depth}", cache_dir)  # FileNotFoundError naming the pre-training command
    started = time.time()
    backbone = build_resnet_backbone(backbone_cfg(depth), ShapeSpec(channels=3))
    state = torch.load(source, map_location="cpu", weights_only=False)["model"]
    missing, unexpected = backbone.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise RuntimeError(f"{source}: not a R-{depth} backbone (missing {missing}, unexpected {unexpected})")
    images = detection_images(dataset, BN_REESTIMATION["images"])
    if len(images) < BN_REESTIMATION["images"]:
        raise ValueError(f"dataset {dataset!r} has {len(images)} images; re-estimating BN statistics takes the first "
                         f"{BN_REESTIMATION['images']} (BN_REESTIMATION in maskrcnn_plugin/pretrained.py)")
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) != 1:
        raise ValueError(f"dataset {dataset!r} has images of {len(sizes)} sizes ({sorted(sizes)[:3]}...); batches "
                         f"for BN statistics need one size")
    mean = torch.tensor(recipe["pixel_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(recipe["pixel_std"]).view(1, 3, 1, 1)
    n = BN_REESTIMATION["batch_size"]
    batches = [(torch.stack(images[i:i + n]).float() - mean) / std for i in range(0, len(images), n)]
    before = _stage_stats(backbone.state_dict())
    with torch.no_grad():
        reestimate_bn_statistics(backbone, batches)
    after = backbone.state_dict()
    checkpoint = backbone_checkpoint(after, recipe)
    checkpoint["__author__"] += f", BN statistics re-estimated on {dataset}"
    with atomic_open(target, "wb") as f:
        torch.save(checkpoint, f)
    log = {"generated_by": "tools/reestimate_bn.py", "name": os.path.basename(target)[:-len(".pth")],
           "source": recipe_name(recipe), "dataset": dataset, "procedure": BN_REESTIMATION,
           "image_size": list(sizes.pop()), "wall_s": round(time.time() - started, 1),
           "load_average": [round(v, 2) for v in os.getloadavg()],
           "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "stage_median_running_mean_var": {"before": before, "after": _stage_stats(after)}}
    with atomic_open(os.path.splitext(target)[0] + ".json", "w") as f:
        json.dump(log, f, indent=2)
    print(f"wrote {target} in {log['wall_s']} s")
    for stage, (m, v) in log["stage_median_running_mean_var"]["after"].items():
        b = before[stage]
        print(f"  {stage}: median running mean {b[0]:.3f} -> {m:.3f}, running var {b[1]:.3f} -> {v:.3f}")
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, nargs="+", default=sorted(RECIPES), choices=sorted(RECIPES))
    parser.add_argument("--dataset", default="shapes_train", help="registered detection dataset (default shapes_train)")
    parser.add_argument("--cache-dir", help="default: $MASKRCNN_PLUGIN_PRETRAINED, else ./pretrained_cache")
    args = parser.parse_args(argv)
    import maskrcnn_plugin  # noqa: F401  (registers the datasets and shapes-pretrained://)

    return [reestimate(depth, args.dataset, args.cache_dir) for depth in args.depth]


if __name__ == "__main__":
    main()
