#!/usr/bin/env python
"""Run a trained model on images and draw its boxes, masks and keypoints with detectron2's Visualizer.

    python demo.py --config-file configs/shapes/mask_rcnn_R18_FPN_shapes.yaml \
        --input 'photos/*.jpg' img.png --output output/demo \
        --opts MODEL.WEIGHTS output/mask_rcnn_R18_FPN_shapes/model_final.pth
    python demo.py --config-file ... --dataset shapes_test --num-images 4 --output output/demo --opts MODEL.WEIGHTS ...

Writes one PNG per input image, ``<output>/<image name>.png``.
"""
import argparse
import glob
import os
import sys

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

import maskrcnn_plugin
from maskrcnn_plugin.data import ensure_registered, register_datasets_from_cfg
from maskrcnn_plugin.inference import prepare_for_inference


def get_parser():
    p = argparse.ArgumentParser(description="maskrcnn_plugin demo: draw a model's predictions on images")
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--input", nargs="+", default=[], help="image files or glob patterns ('dir/*.png')")
    p.add_argument("--dataset", help="instead of --input: draw the first --num-images images of this dataset")
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--output", required=True, help="directory for the drawn PNGs")
    p.add_argument("--confidence-threshold", type=float, default=0.5, help="minimum score of drawn instances")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p


def setup_cfg(args):
    cfg = maskrcnn_plugin.get_plugin_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    # Instances below the threshold are not drawn, so there is no point in the heads producing them.
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.freeze()
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        raise SystemExit("demo.py needs trained weights: add --opts MODEL.WEIGHTS <OUTPUT_DIR>/model_final.pth")
    if "://" not in weights and not os.path.isfile(weights):
        raise SystemExit(f"MODEL.WEIGHTS file {weights!r} does not exist")
    return cfg


def input_files(args):
    if args.dataset:
        ensure_registered(args.dataset)
        return [r["file_name"] for r in DatasetCatalog.get(args.dataset)[: args.num_images]]
    if not args.input:
        raise SystemExit("give --input FILE/GLOB ... or --dataset NAME")
    files = []
    for pattern in args.input:
        matched = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matched:
            raise SystemExit(f"--input {pattern!r}: no such file (or no file matches the pattern)")
        files += matched
    return files


def draw_predictions(predictor, metadata, path, input_format):
    try:
        image = read_image(path, format=input_format)
    except Exception as e:
        raise SystemExit(f"cannot read image {path!r}: {e}") from e
    instances = predictor(image)["instances"].to("cpu")
    rgb = image[:, :, ::-1] if input_format == "BGR" else image
    vis = Visualizer(np.ascontiguousarray(rgb), metadata, instance_mode=ColorMode.IMAGE)
    return vis.draw_instance_predictions(instances).get_image(), len(instances)


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="maskrcnn_plugin")
    cfg = setup_cfg(args)
    register_datasets_from_cfg(cfg)
    metadata_name = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    metadata = MetadataCatalog.get(metadata_name)
    files = input_files(args)
    predictor = DefaultPredictor(cfg)
    prepare_for_inference(predictor.model, cfg)  # TEST.FOLD_BATCHNORM, TEST.CHANNELS_LAST
    os.makedirs(args.output, exist_ok=True)
    written = []
    for path in files:
        drawn, n = draw_predictions(predictor, metadata, path, cfg.INPUT.FORMAT)
        out = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png")
        Image.fromarray(drawn).save(out)
        written.append(out)
        print(f"{path}: {n} instances -> {out}")
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
