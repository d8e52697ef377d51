"""Checked loading of COCO-format instance json (boxes, masks, keypoints) into detectron2 dataset dicts.

The paper trains and evaluates on COCO (Sec. 4, 5); here a user's own COCO-format dataset, and the generated
shapes datasets, are read by `load_coco_json_checked`, which validates the json with clear error messages
and drops what would break training (the field checks are in `annotations`). `register_coco_instances_checked`
registers such a dataset, like detectron2's ``register_coco_instances``.

Why not detectron2's ``load_coco_json`` with checks around it: the checks need the raw json (annotation ids,
category ids, image sizes, the polygons detectron2 silently filters) before pycocotools sees it, so the file
would be parsed twice, or the cleaned json written out again for detectron2 to re-read; and detectron2
orders images by id (here: as in the file), leaves ``iscrowd`` unset when absent (here: 0) and asserts on
duplicate annotation ids and "ignore". What it does on valid input is reproduced below: contiguous
category ids, ``thing_classes`` in the metadata, compressed RLE, keypoints +0.5.
"""
import collections
import copy
import json
import logging
import os

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .annotations import keypoints_problem, polygon_problem, rle_problem

__all__ = ["load_coco_json_checked", "register_coco_instances_checked"]

logger = logging.getLogger(__name__)

# Reasons an annotation is dropped, in the order of the warning.
_DROPPED = {
    "bad_box": "with a missing, zero-area or negative bbox",
    "outside": "with a bbox wholly outside the image",
    "bad_poly_ann": "without a valid polygon",
    "bad_rle": "with a malformed RLE (size not the image's, bad or mis-summed run lengths)",
    "bad_kps": "with malformed keypoints (count, non-finite values or visibility flags)",
    "empty_mask": "with an empty mask (no pixel in the image)",
}


def _read_coco_json(json_file):
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file not found: {json_file}")
    with open(json_file, "rb") as f:
        raw = f.read()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{json_file} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno} (char {e.pos})"
        ) from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{json_file} is not valid JSON (not UTF-8 text): {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{json_file}: top level must be a JSON object with images/annotations/categories")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(
            f"{json_file} is not a COCO instances file: missing key(s) {missing} (has {sorted(data)})"
        )
    for k in ("images", "annotations", "categories"):
        if not isinstance(data[k], list):
            raise ValueError(f"{json_file}: '{k}' must be a list, got {type(data[k]).__name__}")
    return data


def _valid_bbox(bbox):
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return False
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return False
    return all(np.isfinite([x, y, w, h])) and w > 0 and h > 0


def _clip_bbox(bbox, width, height):
    """(XYWH bbox clipped to the image as floats, whether it changed), or (None, True) if nothing is left."""
    x, y, w, h = (float(v) for v in bbox)
    if x >= 0 and y >= 0 and x + w <= width and y + h <= height:
        return [x, y, w, h], False
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        return None, True
    return [x0, y0, x1 - x0, y1 - y0], True


def _categories(json_file, cats):
    """(sorted category ids, id -> name, id -> number of keypoints) of the json's "categories"."""
    try:
        cat_ids = sorted(int(c["id"]) for c in cats)
        id_to_name = {int(c["id"]): c["name"] for c in cats}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{json_file}: every category needs an integer 'id' and a 'name' ({e!r})") from None
    if len(set(cat_ids)) != len(cat_ids):
        raise ValueError(f"{json_file}: duplicate category ids in 'categories': {cat_ids}")
    num_keypoints = {int(c["id"]): len(c["keypoints"]) for c in cats if isinstance(c.get("keypoints"), list)}
    return cat_ids, id_to_name, num_keypoints


def _images(json_file, images):
    """image id -> image entry, checking the fields detectron2 needs."""
    out = {}
    for img in images:
        for k in ("id", "file_name", "height", "width"):
            if k not in img:
                raise ValueError(f"{json_file}: image entry {img.get('id', '?')} has no '{k}'")
        if img["id"] in out:
            raise ValueError(f"{json_file}: duplicate image id {img['id']}")
        if not all(isinstance(img[k], int) and not isinstance(img[k], bool) and img[k] > 0 for k in ("height", "width")):
            raise ValueError(
                f"{json_file}: image id {img['id']} has height {img['height']!r} and width {img['width']!r}; "
                "both must be positive integers"
            )
        out[img["id"]] = img
    return out


def _annotation_to_obj(json_file, ann, img, id_map, num_keypoints, counts):
    """detectron2's dict of one annotation of image ``img``, or None (counted in ``counts``) if it is dropped."""
    aid, cid = ann.get("id"), ann.get("category_id")
    if ann.get("ignore", 0):
        raise ValueError(f"{json_file}: annotation id {aid} has 'ignore' set, which detectron2 does not support")
    if not _valid_bbox(ann.get("bbox")):
        counts["bad_box"] += 1
        return None
    height, width = img["height"], img["width"]
    bbox, clipped = _clip_bbox(ann["bbox"], width, height)
    if bbox is None:
        counts["outside"] += 1
        return None
    counts["clipped"] += clipped
    segm = ann.get("segmentation")
    if isinstance(segm, list):
        good = [p for p in segm if polygon_problem(p, height, width) is None]
        counts["bad_poly"] += len(segm) - len(good)
        if not good:
            counts["bad_poly_ann"] += 1
            return None
        segm = good
        rles = mask_util.frPyObjects(segm, height, width)  # clipped to the image
    elif isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise ValueError(f"{json_file}: annotation id {aid} has an RLE segmentation without counts/size")
        if rle_problem(segm, height, width) is not None:
            counts["bad_rle"] += 1
            return None
        if isinstance(segm["counts"], list):  # uncompressed RLE -> compressed, as detectron2 does
            segm = mask_util.frPyObjects(segm, *segm["size"])
        rles = [segm]
    elif segm is not None:
        raise ValueError(f"{json_file}: annotation id {aid} has a segmentation of type {type(segm).__name__}")
    if segm is not None and not mask_util.area(rles).any():
        counts["empty_mask"] += 1
        return None

    obj = {
        "iscrowd": ann.get("iscrowd", 0),
        "bbox": bbox,
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": id_map[cid],
    }
    if segm:
        obj["segmentation"] = segm
    kps = ann.get("keypoints")
    if kps is not None and keypoints_problem(kps, num_keypoints.get(cid)) is not None:
        counts["bad_kps"] += 1
        return None
    if kps:
        # COCO keypoints are pixel indices; detectron2 uses continuous coordinates (+0.5), as load_coco_json.
        obj["keypoints"] = [v + 0.5 if i % 3 != 2 else v for i, v in enumerate(kps)]
    return obj


def _log_counts(json_file, counts):
    dropped = [(counts[k], why) for k, why in _DROPPED.items()]
    if any(n for n, _ in dropped) or counts["bad_poly"]:
        logger.warning(
            f"{json_file}: dropped " + (", ".join(f"{n} annotation(s) {why}" for n, why in dropped if n) or "0")
            + f"; removed {counts['bad_poly']} malformed polygon(s) (< 3 points, odd length, non-finite or "
            "far-outside coordinates)."
        )
    if counts["clipped"]:
        logger.info(f"{json_file}: clipped {counts['clipped']} bbox(es) that extend beyond their image to the image.")
    if counts["orphan"]:
        logger.warning(f"{json_file}: {counts['orphan']} annotation(s) refer to image ids not in 'images'; ignored.")


def load_coco_json_checked(json_file, image_root, dataset_name=None):
    """Load a COCO instances json into detectron2 dataset dicts, validating it first.

    Like detectron2's ``load_coco_json`` (contiguous category ids, thing_classes put into the metadata of
    ``dataset_name``, RLE/polygon segmentation, keypoints shifted by +0.5 to continuous coordinates), plus:

    * invalid json -> ValueError naming the file and the error position;
    * missing "images"/"annotations"/"categories" -> ValueError naming the file;
    * an annotation whose category_id is not in "categories" -> ValueError naming the file, the annotation id
      and the valid ids; duplicate image or annotation ids -> ValueError;
    * an image whose file does not exist under ``image_root`` -> FileNotFoundError naming the path; an image
      whose height or width is not a positive integer -> ValueError naming its id;
    * every field is checked before pycocotools sees it (`maskrcnn_plugin.data.annotations`): annotations with
      a missing/non-finite/zero-area/negative bbox, a bbox wholly outside the image, no well-formed polygon
      (>= 3 finite points within an image size of the image), a malformed RLE (size not the image's, run
      lengths that are negative or do not add up to the image), malformed keypoints, or a mask with no pixel
      in the image are dropped (malformed polygons are removed from otherwise valid annotations) and counted
      in one warning per file: detectron2 would otherwise train the mask head towards an empty target inside
      a non-empty box, and pycocotools would allocate without bound or overrun its buffers;
    * bboxes partly outside the image are clipped to it (detectron2's mapper clips them too, but the dataset
      dicts, e.g. for visualisation or repeat-factor sampling, should agree with what is trained on).
    """
    json_file = os.fspath(json_file)
    image_root = os.fspath(image_root)
    data = _read_coco_json(json_file)

    cats = data["categories"]
    cat_ids, id_to_name, num_keypoints = _categories(json_file, cats)
    id_map = {cid: i for i, cid in enumerate(cat_ids)}
    images = _images(json_file, data["images"])

    anns_per_image = {i: [] for i in images}
    seen_ann_ids = set()
    counts = collections.Counter()
    for ann in data["annotations"]:
        aid = ann.get("id")
        if aid in seen_ann_ids:
            raise ValueError(f"{json_file}: duplicate annotation id {aid}")
        seen_ann_ids.add(aid)
        cid = ann.get("category_id")
        if cid not in id_map:
            raise ValueError(
                f"{json_file}: annotation id {aid} (image_id {ann.get('image_id')}) has category_id {cid!r}, "
                f"which is not in 'categories'; valid category ids: {cat_ids}"
            )
        if ann.get("image_id") not in anns_per_image:
            counts["orphan"] += 1
            continue
        obj = _annotation_to_obj(json_file, ann, images[ann["image_id"]], id_map, num_keypoints, counts)
        if obj is not None:
            anns_per_image[ann["image_id"]].append(obj)
    _log_counts(json_file, counts)

    dataset_dicts = []
    missing = []
    for img_id, img in images.items():
        path = os.path.join(image_root, img["file_name"])
        if not os.path.exists(path):
            missing.append(path)
            continue
        dataset_dicts.append({
            "file_name": path,
            "height": img["height"],
            "width": img["width"],
            "image_id": img_id,
            "annotations": anns_per_image[img_id],
        })
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image file(s) listed in {json_file} do not exist, e.g. {missing[0]}"
            + (f" (also {missing[1:4]})" if len(missing) > 1 else "")
        )

    if dataset_name is not None:
        meta = MetadataCatalog.get(dataset_name)
        meta.thing_classes = [id_to_name[c] for c in cat_ids]
        meta.thing_dataset_id_to_contiguous_id = dict(id_map)
        kp_cats = [c for c in cats if c.get("keypoints")]
        if kp_cats and not meta.get("keypoint_names"):
            meta.keypoint_names = list(kp_cats[0]["keypoints"])
    logger.info(f"Loaded {len(dataset_dicts)} images, {sum(len(v) for v in anns_per_image.values())} "
                f"annotations from {json_file}")
    return dataset_dicts


def register_coco_instances_checked(name, metadata, json_file, image_root):
    """Register a COCO-format instances dataset (like detectron2's register_coco_instances), loaded with
    `load_coco_json_checked`. ``metadata`` may add e.g. keypoint_names/keypoint_flip_map for keypoints."""
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    DatasetCatalog.register(name, lambda: load_coco_json_checked(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco",
                                  **copy.deepcopy(metadata or {}))
    return name
