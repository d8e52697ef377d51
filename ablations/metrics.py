"""The metrics of a finished arm: COCOEvaluator's results, AP per IoU threshold (pycocotools), final training loss."""
import contextlib
import io
import json
import math
import os

import numpy as np

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
# metric name -> (COCOEvaluator task, key in its results)
METRIC_SOURCES = {
    "AP": ("segm", "AP"), "AP50": ("segm", "AP50"), "AP75": ("segm", "AP75"),
    "box_AP": ("bbox", "AP"), "box_AP50": ("bbox", "AP50"), "box_AP75": ("bbox", "AP75"),
    "box_APs": ("bbox", "APs"), "box_APm": ("bbox", "APm"), "box_APl": ("bbox", "APl"),
    "kp_AP": ("keypoints", "AP"), "kp_AP50": ("keypoints", "AP50"), "kp_AP75": ("keypoints", "AP75"),
    "kp_APm": ("keypoints", "APm"), "kp_APl": ("keypoints", "APl"),
}
METRIC_LABELS = {"AP": "mask AP", "AP50": "mask AP50", "AP75": "mask AP75",
                 "box_AP": "box AP", "box_AP50": "box AP50", "box_AP75": "box AP75",
                 "box_APs": "box APS", "box_APm": "box APM", "box_APl": "box APL",
                 "kp_AP": "keypoint AP", "kp_AP50": "keypoint AP50", "kp_AP75": "keypoint AP75",
                 "kp_APm": "keypoint APM", "kp_APl": "keypoint APL"}


def ap_per_iou(gt_json, predictions, iou_type="segm"):
    """AP (percent, like detectron2) at each IoU threshold 0.50:0.05:0.95, from COCOeval's precision array.

    Args:
        gt_json: path of a COCO instances json (or a pycocotools COCO object).
        predictions: path of a COCO results json (detectron2's coco_instances_results.json) or its list.
        iou_type: "segm" or "bbox".
    Returns:
        list of 10 floats; AP averages precision over the 101 recall points and the categories present
        (area "all", 100 detections), exactly as COCOeval.summarize(), so their mean equals COCOeval's AP.
        No predictions -> all zeros.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if isinstance(predictions, (str, os.PathLike)):
        with open(predictions) as f:
            predictions = json.load(f)
    if not predictions:
        return [0.0] * len(IOU_THRESHOLDS)
    if iou_type == "bbox":  # loadRes derives boxes from masks when both exist; keep boxes as predicted
        predictions = [{k: v for k, v in p.items() if k != "segmentation"} for p in predictions]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = gt_json if hasattr(gt_json, "loadRes") else COCO(gt_json)
        coco_dt = coco_gt.loadRes(predictions)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
    if not np.allclose(ev.params.iouThrs, IOU_THRESHOLDS):
        raise RuntimeError(f"COCOeval's IoU thresholds {list(ev.params.iouThrs)} are not the expected "
                           f"{list(IOU_THRESHOLDS)}; the per-IoU APs would be labelled wrongly")
    precision = ev.eval["precision"]  # (T iou, R recall, K class, A area, M maxdets)
    area_all = list(ev.params.areaRngLbl).index("all")
    out = []
    for t in range(precision.shape[0]):
        p = precision[t, :, :, area_all, -1]
        p = p[p > -1]
        out.append(float(np.mean(p)) * 100 if p.size else float("nan"))
    return out


def collect_metrics(cfg, output_dir):
    """Final metrics of a finished run: eval_results.json + per-IoU AP per task for the first test dataset."""
    from detectron2.data import MetadataCatalog

    from maskrcnn_plugin.data import prepare_dataset, register_datasets_from_cfg

    with open(os.path.join(output_dir, "eval_results.json")) as f:
        results = json.load(f)
    dataset = cfg.DATASETS.TEST[0]
    register_datasets_from_cfg(cfg)
    gt_json = prepare_dataset(dataset) or MetadataCatalog.get(dataset).json_file
    pred_json = os.path.join(output_dir, "inference", dataset, "coco_instances_results.json")
    per_iou = {}
    if os.path.isfile(pred_json):
        for task in ("bbox", "segm"):
            if task in results:
                per_iou[task] = ap_per_iou(gt_json, pred_json, task)
    return {"dataset": dataset, "metrics": results, "iou_thresholds": list(IOU_THRESHOLDS), "ap_per_iou": per_iou,
            "train_loss": final_train_loss(output_dir)}


def final_train_loss(output_dir):
    """The losses of the last logged training iteration in `output_dir`/metrics.json, or None.

    detectron2 logs each loss as its median over the last 20 iterations, so this is the training loss at the
    end of the schedule: with AP it tells an arm that underfits (loss high) from one that overfits (loss low).
    """
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    last = None
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut short by a kill
                continue
            if isinstance(rec, dict) and "total_loss" in rec:
                last = rec
    if last is None:
        return None
    return {"iteration": last.get("iteration"),
            **{k: v for k, v in sorted(last.items()) if k == "total_loss" or k.startswith("loss_")}}


def metric_value(record, metric):
    """`metric` (a key of METRIC_SOURCES) of a results record; None when missing or NaN."""
    task, key = METRIC_SOURCES[metric]
    v = record.get("metrics", {}).get(task, {}).get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
