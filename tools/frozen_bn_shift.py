#!/usr/bin/env python
"""How far the detection images' activations sit from a pre-trained backbone's frozen BatchNorm statistics.

The "pretrained" protocol fine-tunes with frozen BN, as Detectron (the paper's code base) fine-tunes ImageNet
models: every BN layer normalises with the mean and variance it saw on the pre-training images. Where the
detection images give another mean or variance, the layers after it see inputs at a scale they were not
trained on, and frozen BN cannot adapt (trainable BN, as in the from-scratch tables, re-estimates them). This
measures that shift, per BN layer, for the backbones `shapes-pretrained://R-<depth>` of the current recipes, on
detection training images beside the pre-training set's val images (the control: about 0 and 1):

* |Δmean|/σ: the median over channels of |mean of the layer's input − running mean| / sqrt(running var + eps);
* var ratio: the median over channels of the input's variance / (running var + eps);

both over all pixels of all the images (images of different sizes are fine). The detection images go in as the
detection configs feed them: BGR, at their stored size (256 px, the configs' input size), with the recipe's
pixel mean and std, which are the configs' too.

    python tools/frozen_bn_shift.py                        # R-18 and R-34, 64 images of each set
    python tools/frozen_bn_shift.py --depth 18 --images 16

Writes results/pretraining/bn_shift.{json,md}; the ablation report shows the per-stage medians beside the
backbones' pre-training records. It only reads the backbones (about 10 s per backbone on 2 cores).
"""
import argparse
import datetime
import os
import sys

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, REPO)

from ablations.pretraining_report import BN_SHIFT_FILE, bn_shift_markdown  # noqa: E402
from ablations.records import write_json_atomic  # noqa: E402
from maskrcnn_plugin.checkpoint import atomic_open  # noqa: E402
from maskrcnn_plugin.pretrained import RECIPES, recipe_for, recipe_name, resolve  # noqa: E402

__all__ = ["bn_input_shift", "stage_medians", "detection_images", "main"]


def bn_input_shift(model, batches):
    """{name: (|Δmean|/σ, var ratio)} for each FrozenBatchNorm2d of `model`, its input pooled over `batches`
    (an iterable of normalised float (N, C, H, W) tensors, one forward each); medians over channels."""
    from detectron2.layers import FrozenBatchNorm2d

    sums, handles = {}, []

    def record(name):
        def hook(module, inputs, output):
            x = inputs[0].detach().double()
            n, s, ss = sums.get(name, (0, 0.0, 0.0))
            sums[name] = (n + x.numel() // x.shape[1], s + x.sum((0, 2, 3)), ss + (x * x).sum((0, 2, 3)))
        return hook

    layers = {name: m for name, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)}
    handles = [m.register_forward_hook(record(name)) for name, m in layers.items()]
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    shifts = {}
    for name, (n, s, ss) in sums.items():
        m = layers[name]
        mean = s / n
        var = (ss / n - mean * mean).clamp_min(0) * n / max(n - 1, 1)
        frozen_var = m.running_var.double() + m.eps
        z = (mean - m.running_mean.double()).abs() / frozen_var.sqrt()
        shifts[name] = (z.median().item(), (var / frozen_var).median().item())
    return shifts


def stage_medians(shifts):
    """{stage: (median |Δmean|/σ, median var ratio)} over each stage's layers (stem, res2, ...)."""
    stages = {}
    for name, value in shifts.items():
        stages.setdefault(name.split(".")[0], []).append(value)
    return {stage: tuple(float(np.median(col)) for col in zip(*values)) for stage, values in stages.items()}


def _frozen_backbone(depth, weights):
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_resnet_backbone

    from tools.pretrain_backbone import backbone_cfg  # the pre-trained network, here with frozen BN

    cfg = backbone_cfg(depth)
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    state = torch.load(weights, map_location="cpu", weights_only=False)["model"]
    missing, unexpected = backbone.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{weights}: not a R-{depth} backbone (missing {missing}, unexpected {unexpected})")
    return backbone


def detection_images(dataset, n):
    """The first `n` images of the registered detection dataset, uint8 BGR (3, H, W), at their stored size."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import read_image

    from maskrcnn_plugin.data import ensure_registered  # a shapes_<split>_s<seed>_n<num>_px<size> name, or KeyError

    dicts = DatasetCatalog.get(ensure_registered(dataset))[:n]
    return [torch.from_numpy(np.ascontiguousarray(read_image(d["file_name"], format="BGR"))).permute(2, 0, 1)
            for d in dicts]


def _pretraining_images(recipe, n):
    from maskrcnn_plugin.data.pretrain_classes import PretrainClasses

    val = PretrainClasses("val", seed=recipe["data_seed"], size=recipe["val_size"],
                          num_classes=recipe["num_classes"], image_size=recipe["image_size"])
    return [val[i][0] for i in range(min(n, len(val)))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, nargs="+", default=sorted(RECIPES), choices=sorted(RECIPES))
    parser.add_argument("--images", type=int, default=64, help="images of each set (default 64)")
    parser.add_argument("--dataset", default="shapes_train", help="the detection images (default shapes_train)")
    parser.add_argument("--out-dir", default=os.path.join(REPO, "results", "pretraining"))
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be at least 1, got {args.images}")
    import maskrcnn_plugin  # noqa: F401  (registers the datasets and shapes-pretrained://)

    weights = {depth: resolve(f"shapes-pretrained://R-{depth}") for depth in args.depth}  # all built, or say so
    detection = detection_images(args.dataset, args.images)
    backbones = []
    for depth in args.depth:
        recipe = recipe_for(depth)
        model = _frozen_backbone(depth, weights[depth])
        mean = torch.tensor(recipe["pixel_mean"]).view(1, 3, 1, 1)
        std = torch.tensor(recipe["pixel_std"]).view(1, 3, 1, 1)

        def normalised(images, batch=16):
            for i in range(0, len(images), batch):
                chunk = images[i:i + batch]
                sizes = {tuple(im.shape) for im in chunk}
                group = [torch.stack(chunk)] if len(sizes) == 1 else [im[None] for im in chunk]
                for x in group:
                    yield (x.float() - mean) / std

        sets = {"pretraining val": _pretraining_images(recipe, args.images), args.dataset: detection}
        layers = {key: bn_input_shift(model, normalised(images)) for key, images in sets.items()}
        backbones.append({"name": recipe_name(recipe), "depth": depth,
                          "stages": {key: stage_medians(v) for key, v in layers.items()}, "layers": layers})
    record = {"generated_by": "tools/frozen_bn_shift.py",
              "command": "python tools/frozen_bn_shift.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "images_per_set": args.images, "sets": ["pretraining val", args.dataset],
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "backbones": backbones}
    os.makedirs(args.out_dir, exist_ok=True)
    json_path = os.path.join(args.out_dir, BN_SHIFT_FILE)
    write_json_atomic(json_path, record)
    text = "\n".join(bn_shift_markdown(record)) + "\n"
    with atomic_open(os.path.splitext(json_path)[0] + ".md", "w") as f:
        f.write(text)
    print(text, end="")
    print(f"wrote {json_path} and its .md")
    return record


if __name__ == "__main__":
    main()
