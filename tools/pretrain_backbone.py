#!/usr/bin/env python
"""Pre-train a ResNet backbone on the generated classification set and cache it (the stand-in for the paper's
ImageNet pre-training, Sec. 3; maskrcnn_plugin/pretraining.py, recipes in maskrcnn_plugin/pretrained.py).

    python tools/pretrain_backbone.py --depth 18            # ~2 h on 2 CPU cores; a kill resumes on the next run
    python tools/pretrain_backbone.py --depth 34
    python tools/pretrain_backbone.py --depth 18 --print-recipe     # recipe, hash and the file it writes
    python tools/pretrain_backbone.py --depth 18 --benchmark 20     # training images/s here; writes nothing
    python tools/pretrain_backbone.py --depth 18 --max-iter 3 --classes 4 --image-size 32   # a tiny recipe

Configs then load the result with MODEL.WEIGHTS: "shapes-pretrained://R-18" (configs/ablations/cpu/2a_pretrained/).
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from maskrcnn_plugin.pretraining import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
