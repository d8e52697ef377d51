"""Dataset registration: the generated shapes datasets and checked loading of COCO-format json.

Importing this module registers in detectron2's DatasetCatalog / MetadataCatalog:

=========================  =====  ======  ====  ===========================
name                       seed   images  px    classes
=========================  =====  ======  ====  ===========================
shapes_train               0      1000    256   ring crescent star cross hook
shapes_val                 1      200     256   same
shapes_test                2      200     256   same
shapes_kp_train            0      1000    256   same + person (13 keypoints)
shapes_kp_val              1      200     256   same + person
shapes_person_train        0      1000    256   the shapes_kp_train images, persons alone annotated (1 class)
shapes_person_val          1      200     256   the shapes_kp_val images, persons alone annotated
shapes_solid_train         0      1000    256   disc rectangle triangle half_disc; objects 32 px .. 0.8 x side,
                                                2-4 instances, no distractors
shapes_solid_val           1      200     256   as shapes_solid_train
=========================  =====  ======  ====  ===========================

The ``shapes_solid_*`` pair serves the single stride-32 map of Table 2d, whose 32 px cells are wider than the
default classes' bars, spikes and holes and than most default-size objects; the distractors (discs and
polygons) would look like the solid classes, hence none. Table 2d's note has the measurements.

The ``shapes_person_*`` pair is the paper's keypoint task (one class, person; Sec. 5): the same images as
``shapes_kp_*``, whose shapes stay in the pictures as unlabelled clutter.

Other variants are named ``shapes_<split>_s<seed>_n<num>_px<size>`` (``shapes_kp_...`` with persons,
``shapes_person_...`` with persons alone annotated) and are
registered on demand by `ensure_registered` / `register_datasets_from_cfg`, or explicitly by `register_shapes`.
The images are generated into the cache directory (`get_data_root`) the first time a dataset is loaded
(or by `prepare_dataset`). A user's own COCO-format dataset is registered with
`register_coco_instances_checked`, which validates the json with clear error messages.
"""
import copy
import json
import logging
import os
import re

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from . import shapes as _shapes
from .annotations import keypoints_problem, polygon_problem, rle_problem

__all__ = [
    "BUILTIN_SHAPES",
    "SHAPES_NAME_PATTERN",
    "get_data_root",
    "set_data_root",
    "register_shapes",
    "ensure_registered",
    "register_datasets_from_cfg",
    "check_num_classes",
    "prepare_dataset",
    "shapes_metadata",
    "load_coco_json_checked",
    "register_coco_instances_checked",
]

logger = logging.getLogger(__name__)

ENV_DATA_ROOT = "MASKRCNN_PLUGIN_DATA"

_SOLID = dict(classes=_shapes.SOLID_SHAPE_CLASSES, min_size=32, max_size_frac=0.8, max_instances=4, max_distractors=0)
BUILTIN_SHAPES = {
    "shapes_train": dict(seed=0, num_images=1000, image_size=256),
    "shapes_val": dict(seed=1, num_images=200, image_size=256),
    "shapes_test": dict(seed=2, num_images=200, image_size=256),
    "shapes_kp_train": dict(seed=0, num_images=1000, image_size=256, with_person=True),
    "shapes_kp_val": dict(seed=1, num_images=200, image_size=256, with_person=True),
    "shapes_person_train": dict(seed=0, num_images=1000, image_size=256, with_person=True, person_only=True),
    "shapes_person_val": dict(seed=1, num_images=200, image_size=256, with_person=True, person_only=True),
    "shapes_solid_train": dict(seed=0, num_images=1000, image_size=256, **_SOLID),
    "shapes_solid_val": dict(seed=1, num_images=200, image_size=256, **_SOLID),
}

# shapes[_kp|_person]_<split>_s<seed>_n<num>_px<size>
SHAPES_NAME_PATTERN = re.compile(
    r"^shapes(?P<kp>_kp|_person)?_(?P<split>[A-Za-z0-9]+)_s(?P<seed>\d+)_n(?P<num>\d+)_px(?P<size>\d+)$"
)

_root_override = None
_registered_shapes = {}  # name -> kwargs of register_shapes (to re-register on a root change)


# ------------------------------------------------------------------------------------------------------------
# Cache directory
# ------------------------------------------------------------------------------------------------------------
def get_data_root():
    """Where generated datasets are cached.

    `set_data_root` (cfg.DATASETS.SHAPES.ROOT) wins, then $MASKRCNN_PLUGIN_DATA, then ``<repo>/datasets_cache``
    when the package runs from a source checkout, else ``~/.cache/maskrcnn_plugin``.
    """
    if _root_override:
        return _root_override
    env = os.environ.get(ENV_DATA_ROOT)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.exists(os.path.join(repo, "setup.py")) or os.path.exists(os.path.join(repo, ".git")):
        return os.path.join(repo, "datasets_cache")
    return os.path.join(os.path.expanduser("~"), ".cache", "maskrcnn_plugin")


def set_data_root(root):
    """Set the cache directory (None or "" restores the default) and re-register the shapes datasets so their
    metadata (json_file, image_root) points there."""
    global _root_override
    new = os.path.abspath(os.path.expanduser(os.fspath(root))) if root else None
    if new == _root_override:
        return
    _root_override = new
    for name, kwargs in list(_registered_shapes.items()):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
        del _registered_shapes[name]
        register_shapes(name, **kwargs)


# ------------------------------------------------------------------------------------------------------------
# Shapes datasets
# ------------------------------------------------------------------------------------------------------------
def shapes_metadata(params):
    """detectron2 metadata of a shapes dataset with the given `shapes.shapes_params` (without paths)."""
    classes = _shapes.annotated_shape_classes(params) + (["person"] if params["with_person"] else [])
    palette = [(220, 20, 60), (0, 130, 200), (255, 200, 0), (60, 180, 75), (145, 30, 180), (245, 130, 48)]
    meta = {
        "thing_classes": classes,
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(classes))},
        "thing_colors": [palette[i % len(palette)] for i in range(len(classes))],
        "evaluator_type": "coco",
        "shapes_params": params,
    }
    if params["with_person"]:
        meta.update(
            keypoint_names=list(_shapes.PERSON_KEYPOINT_NAMES),
            keypoint_flip_map=[list(p) for p in _shapes.PERSON_KEYPOINT_FLIP_MAP],
            keypoint_connection_rules=[(a, b, c) for a, b, c in _shapes.PERSON_KEYPOINT_CONNECTION_RULES],
            # detectron2's COCOEvaluator reads cfg.TEST.KEYPOINT_OKS_SIGMAS, not this key: copy it there.
            keypoint_oks_sigmas=list(_shapes.PERSON_KEYPOINT_OKS_SIGMAS),
        )
    return meta


def _dataset_dir(params, root=None):
    return os.path.join(root or get_data_root(), _shapes.shapes_dir_name(params))


def register_shapes(name, seed, num_images, image_size=256, with_person=False, root=None, **kwargs):
    """Register a shapes dataset under ``name``; it is generated on first load. Returns ``name``.

    ``root`` overrides the cache directory for this dataset; extra keyword arguments (classes, min_size, ...)
    go to `shapes.generate_shapes`. Registering the same name again with the same parameters is a no-op.
    """
    params = _shapes.shapes_params(seed, num_images, image_size, with_person=with_person, **kwargs)
    reg_kwargs = dict(seed=seed, num_images=num_images, image_size=image_size, with_person=with_person,
                      root=root, **kwargs)
    if name in _registered_shapes:
        if _registered_shapes[name] == reg_kwargs:
            return name
        raise ValueError(
            f"Dataset '{name}' is already registered with {_registered_shapes[name]}, not {reg_kwargs}"
        )
    out_dir = _dataset_dir(params, root)
    json_file = os.path.join(out_dir, "annotations.json")
    image_root = os.path.join(out_dir, "images")
    gen_kwargs = {k: v for k, v in params.items() if k not in ("generator_version",)}

    def load():
        _shapes.generate_shapes(out_dir, **gen_kwargs)
        return load_coco_json_checked(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, **shapes_metadata(params))
    _registered_shapes[name] = reg_kwargs
    return name


def prepare_dataset(name):
    """Make sure a registered shapes dataset exists on disk (generating it if needed); returns its json path.

    detectron2's COCOEvaluator opens metadata.json_file when it is constructed, so call this before building
    an evaluator for a shapes dataset that may not have been loaded yet. No-op for other datasets.
    """
    ensure_registered(name)
    if name not in _registered_shapes:
        return MetadataCatalog.get(name).get("json_file")
    meta = MetadataCatalog.get(name)
    params = dict(meta.shapes_params)
    params.pop("generator_version")
    return _shapes.generate_shapes(os.path.dirname(meta.json_file), progress=True, **params)


def ensure_registered(name):
    """Register ``name`` if it follows ``shapes[_kp|_person]_<split>_s<seed>_n<num>_px<size>``; returns ``name``.

    Raises KeyError for names that are neither registered nor follow the pattern.
    """
    if name in DatasetCatalog.list():
        return name
    m = SHAPES_NAME_PATTERN.match(name)
    if m is None:
        raise KeyError(
            f"Dataset '{name}' is not registered and is not a shapes dataset name "
            f"(shapes[_kp|_person]_<split>_s<seed>_n<num>_px<size>, e.g. shapes_train_s3_n500_px256). "
            f"Registered shapes datasets: {sorted(_registered_shapes)}"
        )
    return register_shapes(
        name, seed=int(m["seed"]), num_images=int(m["num"]), image_size=int(m["size"]), with_person=bool(m["kp"]),
        person_only=m["kp"] == "_person",
    )


def register_datasets_from_cfg(cfg):
    """Apply cfg.DATASETS.SHAPES.ROOT (if set) and register every shapes name in cfg.DATASETS.TRAIN/TEST.

    Names that are neither registered nor shapes names raise KeyError (naming them) before training starts.
    """
    shapes_cfg = cfg.DATASETS.get("SHAPES", None)
    if shapes_cfg is not None and shapes_cfg.get("ROOT", ""):
        set_data_root(shapes_cfg.ROOT)
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        ensure_registered(name)


def check_num_classes(cfg):
    """Raise ValueError unless every dataset in cfg.DATASETS.TRAIN/TEST whose classes are known (registered
    metadata ``thing_classes``) has cfg.MODEL.ROI_HEADS.NUM_CLASSES of them.

    Without it a mismatch trains to the end and only fails in COCO evaluation (a predicted class id outside the
    dataset's), or, with fewer model classes than the dataset's, fails at the first ground-truth class id.
    """
    num = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != num:
            raise ValueError(
                f"MODEL.ROI_HEADS.NUM_CLASSES is {num} but dataset {name!r} has {len(classes)} classes "
                f"{list(classes)}; set MODEL.ROI_HEADS.NUM_CLASSES {len(classes)}"
            )


# ------------------------------------------------------------------------------------------------------------
# Checked COCO json loading
# ------------------------------------------------------------------------------------------------------------
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
    try:
        cat_ids = sorted(int(c["id"]) for c in cats)
        id_to_name = {int(c["id"]): c["name"] for c in cats}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{json_file}: every category needs an integer 'id' and a 'name' ({e!r})") from None
    if len(set(cat_ids)) != len(cat_ids):
        raise ValueError(f"{json_file}: duplicate category ids in 'categories': {cat_ids}")
    id_map = {cid: i for i, cid in enumerate(cat_ids)}
    num_keypoints = {int(c["id"]): len(c["keypoints"]) for c in cats if isinstance(c.get("keypoints"), list)}

    images = {}
    for img in data["images"]:
        for k in ("id", "file_name", "height", "width"):
            if k not in img:
                raise ValueError(f"{json_file}: image entry {img.get('id', '?')} has no '{k}'")
        if img["id"] in images:
            raise ValueError(f"{json_file}: duplicate image id {img['id']}")
        if not all(isinstance(img[k], int) and not isinstance(img[k], bool) and img[k] > 0 for k in ("height", "width")):
            raise ValueError(
                f"{json_file}: image id {img['id']} has height {img['height']!r} and width {img['width']!r}; "
                "both must be positive integers"
            )
        images[img["id"]] = img

    anns_per_image = {i: [] for i in images}
    seen_ann_ids = set()
    n_bad_box = n_outside = n_bad_poly_ann = n_bad_poly = n_bad_rle = n_bad_kps = n_empty_mask = n_clipped = n_orphan = 0
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
            n_orphan += 1
            continue
        if ann.get("ignore", 0):
            raise ValueError(f"{json_file}: annotation id {aid} has 'ignore' set, which detectron2 does not support")
        if not _valid_bbox(ann.get("bbox")):
            n_bad_box += 1
            continue
        img = images[ann["image_id"]]
        bbox, clipped = _clip_bbox(ann["bbox"], img["width"], img["height"])
        if bbox is None:
            n_outside += 1
            continue
        n_clipped += clipped
        segm = ann.get("segmentation")
        height, width = img["height"], img["width"]
        if isinstance(segm, list):
            good = [p for p in segm if polygon_problem(p, height, width) is None]
            n_bad_poly += len(segm) - len(good)
            if not good:
                n_bad_poly_ann += 1
                continue
            segm = good
            rles = mask_util.frPyObjects(segm, height, width)  # clipped to the image
        elif isinstance(segm, dict):
            if "counts" not in segm or "size" not in segm:
                raise ValueError(f"{json_file}: annotation id {aid} has an RLE segmentation without counts/size")
            if rle_problem(segm, height, width) is not None:
                n_bad_rle += 1
                continue
            if isinstance(segm["counts"], list):  # uncompressed RLE -> compressed, as detectron2 does
                segm = mask_util.frPyObjects(segm, *segm["size"])
            rles = [segm]
        elif segm is not None:
            raise ValueError(f"{json_file}: annotation id {aid} has a segmentation of type {type(segm).__name__}")
        if segm is not None and not mask_util.area(rles).any():
            n_empty_mask += 1
            continue

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
            n_bad_kps += 1
            continue
        if kps:
            # COCO keypoints are pixel indices; detectron2 uses continuous coordinates (+0.5), as load_coco_json.
            obj["keypoints"] = [v + 0.5 if i % 3 != 2 else v for i, v in enumerate(kps)]
        anns_per_image[ann["image_id"]].append(obj)

    dropped = [
        (n_bad_box, "with a missing, zero-area or negative bbox"),
        (n_outside, "with a bbox wholly outside the image"),
        (n_bad_poly_ann, "without a valid polygon"),
        (n_bad_rle, "with a malformed RLE (size not the image's, bad or mis-summed run lengths)"),
        (n_bad_kps, "with malformed keypoints (count, non-finite values or visibility flags)"),
        (n_empty_mask, "with an empty mask (no pixel in the image)"),
    ]
    if any(n for n, _ in dropped) or n_bad_poly:
        logger.warning(
            f"{json_file}: dropped " + (", ".join(f"{n} annotation(s) {why}" for n, why in dropped if n) or "0")
            + f"; removed {n_bad_poly} malformed polygon(s) (< 3 points, odd length, non-finite or far-outside "
            "coordinates)."
        )
    if n_clipped:
        logger.info(f"{json_file}: clipped {n_clipped} bbox(es) that extend beyond their image to the image.")
    if n_orphan:
        logger.warning(f"{json_file}: {n_orphan} annotation(s) refer to image ids not in 'images'; ignored.")

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


def _register_builtin():
    for name, kwargs in BUILTIN_SHAPES.items():
        if name not in DatasetCatalog.list():
            register_shapes(name, **kwargs)


_register_builtin()
