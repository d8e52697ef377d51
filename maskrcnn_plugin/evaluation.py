"""Evaluation for train_net: detectron2's COCOEvaluator (bbox, segm, keypoints) plus prediction pictures (boxes,
masks, and keypoints joined by the dataset's skeleton, `keypoint_connection_rules`).

COCOEvaluator runs on pycocotools (`use_fast_impl=False`) unless detectron2's compiled evaluator is
present, so the Python-only detectron2 build evaluates too.
"""
import os

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

from .compat import has_fast_coco_eval
from .data import prepare_dataset


class PredictionVisualizer(DatasetEvaluator):
    """Draws the predictions on the first `num_images` test images into `output_dir` as PNG."""

    def __init__(self, dataset_name, output_dir, num_images=4, score_thresh=0.5):
        self._metadata = MetadataCatalog.get(dataset_name)
        self._output_dir = output_dir
        self._num_images = num_images
        self._score_thresh = score_thresh
        self._done = 0

    def reset(self):
        self._done = 0

    def process(self, inputs, outputs):
        # Only the main process draws, so the picture set does not depend on the number of workers.
        if not comm.is_main_process():
            return
        for inp, out in zip(inputs, outputs):
            if self._done >= self._num_images or "instances" not in out:
                return
            image = read_image(inp["file_name"], format="RGB")
            instances = out["instances"].to("cpu")
            instances = instances[instances.scores >= self._score_thresh]
            vis = Visualizer(image, self._metadata, instance_mode=ColorMode.IMAGE).draw_instance_predictions(instances)
            os.makedirs(self._output_dir, exist_ok=True)
            name = os.path.splitext(os.path.basename(inp["file_name"]))[0]
            Image.fromarray(np.asarray(vis.get_image())).save(os.path.join(self._output_dir, f"{name}_pred.png"))
            self._done += 1

    def evaluate(self):
        return {}


def build_evaluator(cfg, dataset_name, output_folder=None):
    """COCOEvaluator for the tasks the model has, plus `PredictionVisualizer` writing to OUTPUT_DIR/vis."""
    prepare_dataset(dataset_name)  # COCOEvaluator reads the json at construction; generate it first if needed
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    tasks = ["bbox"] + (["segm"] if cfg.MODEL.MASK_ON else []) + (["keypoints"] if cfg.MODEL.KEYPOINT_ON else [])
    coco = COCOEvaluator(
        dataset_name,
        tasks=tasks,
        distributed=True,
        output_dir=output_folder,
        use_fast_impl=has_fast_coco_eval(),
        kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS,
    )
    evaluators = [coco]
    if cfg.TEST.VIS_NUM_IMAGES > 0:
        vis = PredictionVisualizer(
            dataset_name,
            os.path.join(cfg.OUTPUT_DIR, "vis", dataset_name),
            num_images=cfg.TEST.VIS_NUM_IMAGES,
            score_thresh=cfg.TEST.VIS_SCORE_THRESH,
        )
        # Before COCOEvaluator: its instances_to_coco_json shifts pred_keypoints by -0.5 px in place (continuous ->
        # COCO pixel-index coordinates), which would put the drawn keypoints and skeleton half a pixel off.
        evaluators.insert(0, vis)
    return DatasetEvaluators(evaluators)
