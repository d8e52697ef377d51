"""The generated "shapes" instance-segmentation dataset (deterministic, COCO-format, cached on disk).

The synthetic stand-in for COCO on which the paper's ablations (Sec. 4.2, Table 2) and keypoint experiments
(Sec. 5) are reproduced from scratch on CPUs; docs/shapes_dataset.md describes it. This module holds the
parameters (`shapes_params`, the cache key), the cache layout and the writing of a dataset
(`generate_shapes`: ``images/*.png``, ``annotations.json``, ``params.json``). The pictures are drawn by:

* `shapes_geometry`: the object classes (ring, crescent, star, cross, hook; opt-in ``SOLID_SHAPE_CLASSES``:
  disc, rectangle, triangle, half-disc) as drawing ops, and their rasterisation;
* `person_keypoints`: with ``with_person=True``, an articulated stick-figure class "person" with 13 named
  keypoints; ``person_only=True`` then annotates the persons alone (one category, as COCO's person-keypoint
  task the paper's keypoint models train on): the shapes are drawn exactly as before but unlabelled, so they
  are clutter;
* `shapes_render`: one image (placement, occlusion, clutter, textures, blur, noise).

Every image is drawn from its own random stream ``SeedSequence([seed, image_index])``, so the output only
depends on the parameters (byte-identical json and PNGs for identical parameters and library versions).
"""
import hashlib
import json
import os
import shutil
import uuid

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from .person_keypoints import PERSON_KEYPOINT_NAMES, person_category
from .shapes_geometry import SHAPE_CLASSES, SHAPE_FNS, SOLID_SHAPE_CLASSES
from .shapes_render import render_image  # called as shapes.render_image, so a test can replace it

__all__ = [
    "SHAPE_CLASSES",
    "SOLID_SHAPE_CLASSES",
    "GENERATOR_VERSION",
    "shapes_params",
    "shapes_dir_name",
    "is_complete",
    "annotated_shape_classes",
    "generate_shapes",
    "render_image",
]

# Bump when the drawing code (shapes_geometry, person_keypoints, shapes_render) changes so cached datasets of
# an older generator are not reused.
GENERATOR_VERSION = 2


# ------------------------------------------------------------------------------------------------------------
# Parameters and cache layout
# ------------------------------------------------------------------------------------------------------------
def shapes_params(
    seed,
    num_images,
    image_size=256,
    classes=SHAPE_CLASSES,
    with_person=False,
    min_size=12,
    max_size_frac=0.6,
    min_instances=2,
    max_instances=8,
    max_distractors=11,
    class_hue_spread=0.1,
    person_only=False,
):
    """Validate and normalise the generation parameters into a json-able dict (the cache key)."""
    classes = tuple(classes)
    unknown = [c for c in classes if c not in SHAPE_FNS]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {tuple(SHAPE_FNS)}, got {classes!r}")
    ints = dict(seed=seed, num_images=num_images, image_size=image_size, min_size=min_size,
                min_instances=min_instances, max_instances=max_instances, max_distractors=max_distractors)
    for k, v in ints.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{k} must be an int >= 0, got {v!r}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if not 1 <= min_instances <= max_instances:
        raise ValueError(f"need 1 <= min_instances <= max_instances, got {min_instances}, {max_instances}")
    if not 0 < max_size_frac <= 1 or min_size < 4 or min_size >= max_size_frac * image_size:
        raise ValueError(
            f"need 4 <= min_size < max_size_frac * image_size and 0 < max_size_frac <= 1, got "
            f"min_size={min_size}, max_size_frac={max_size_frac}, image_size={image_size}"
        )
    if class_hue_spread is not None and not (isinstance(class_hue_spread, (int, float)) and 0 <= class_hue_spread <= 1):
        raise ValueError(f"class_hue_spread must be None or a number in [0, 1], got {class_hue_spread!r}")
    if person_only and not with_person:
        raise ValueError("person_only=True needs with_person=True (it annotates the persons alone)")
    params = {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "num_images": int(num_images),
        "image_size": int(image_size),
        "classes": list(classes),
        "with_person": bool(with_person),
        "min_size": int(min_size),
        "max_size_frac": float(max_size_frac),
        "min_instances": int(min_instances),
        "max_instances": int(max_instances),
        "max_distractors": int(max_distractors),
        "class_hue_spread": None if class_hue_spread is None else float(class_hue_spread),
    }
    if person_only:  # only when set, so the cache keys of the other datasets stay what they were
        params["person_only"] = True
    return params


def _params_hash(params):
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]


def shapes_dir_name(params):
    """Cache directory name, readable and unique per parameter set, e.g. ``shapes_s0_n1000_px256_1a2b3c4d``."""
    kp = ("_person" if params.get("person_only") else "_kp") if params["with_person"] else ""
    return "shapes{}_s{}_n{}_px{}_{}".format(
        kp, params["seed"], params["num_images"], params["image_size"], _params_hash(params)
    )


def is_complete(out_dir, params=None):
    """True if ``out_dir`` holds a finished dataset (optionally: generated with exactly ``params``)."""
    pfile = os.path.join(out_dir, "params.json")
    if not (os.path.isfile(os.path.join(out_dir, "annotations.json")) and os.path.isfile(pfile)):
        return False
    if params is None:
        return True
    with open(pfile) as f:
        return json.load(f) == params


# ------------------------------------------------------------------------------------------------------------
# The dataset
# ------------------------------------------------------------------------------------------------------------
def annotated_shape_classes(params):
    """The shape classes that get annotations (none with ``person_only``; "person" comes after them)."""
    return [] if params.get("person_only") else list(params["classes"])


def _categories(params):
    shapes = annotated_shape_classes(params)
    cats = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(shapes)]
    if params["with_person"]:
        cats.append(person_category(len(cats) + 1))
    return cats


def _generate_into(tmp, params, progress, desc):
    from tqdm import tqdm

    S = params["image_size"]
    os.makedirs(os.path.join(tmp, "images"))
    cats = _categories(params)
    cat_id = {c["name"]: c["id"] for c in cats}
    nkp = len(PERSON_KEYPOINT_NAMES)
    images, annotations = [], []
    for idx in tqdm(range(params["num_images"]), desc=desc, disable=not progress, unit="img"):
        rng = np.random.default_rng(np.random.SeedSequence([params["seed"], idx]))
        img, instances = render_image(rng, params)
        file_name = f"{idx:06d}.png"
        Image.fromarray(img).save(os.path.join(tmp, "images", file_name), compress_level=1)
        images.append({"id": idx + 1, "file_name": file_name, "height": S, "width": S})
        for inst in instances:
            if inst["category"] not in cat_id:  # person_only: an unlabelled shape
                continue
            rle = mask_util.encode(np.asfortranarray(inst["mask"].astype(np.uint8)))
            ann = {
                "id": len(annotations) + 1,
                "image_id": idx + 1,
                "category_id": cat_id[inst["category"]],
                "segmentation": {"size": [S, S], "counts": rle["counts"].decode("ascii")},
                "area": int(mask_util.area(rle)),
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "iscrowd": 0,
                "visible_fraction": round(inst["visible_fraction"], 4),
                "truncated": int(inst["truncated"]),
            }
            if params["with_person"]:
                kp = inst.get("keypoints")
                kp = np.zeros((nkp, 3), dtype=np.int64) if kp is None else kp
                ann["keypoints"] = [int(v) for v in kp.ravel()]
                ann["num_keypoints"] = int((kp[:, 2] > 0).sum())
            annotations.append(ann)
    coco = {
        "info": {
            "description": "maskrcnn_plugin generated shapes dataset",
            "generator": "maskrcnn_plugin.data.shapes",
            "params": params,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": cats,
    }
    with open(os.path.join(tmp, "annotations.json"), "w") as f:
        json.dump(coco, f, separators=(",", ":"))
    # params.json last: its presence (with annotations.json) marks a complete dataset.
    with open(os.path.join(tmp, "params.json"), "w") as f:
        json.dump(params, f, sort_keys=True, indent=1)


def _remove_stale_tmp(parent, base):
    prefix = f".{base}.tmp-"
    for entry in os.listdir(parent):
        if not entry.startswith(prefix):
            continue
        try:
            pid = int(entry[len(prefix):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            pass


def generate_shapes(
    out_dir,
    seed,
    num_images,
    image_size=256,
    classes=SHAPE_CLASSES,
    with_person=False,
    overwrite=False,
    progress=True,
    **kwargs,
):
    """Generate the dataset into ``out_dir`` (``images/*.png``, ``annotations.json``, ``params.json``).

    Deterministic: identical parameters give byte-identical files. Atomic: files are written to a hidden
    temporary sibling directory that is renamed to ``out_dir`` only when complete, so a killed run never
    leaves a partial dataset at ``out_dir``. If ``out_dir`` already holds a complete dataset with the same
    parameters it is reused (unless ``overwrite``); with different parameters a ValueError is raised.
    Extra keyword arguments (min_size, max_size_frac, min_instances, max_instances, max_distractors,
    class_hue_spread) go to
    `shapes_params`.

    Returns the path of the COCO-format ``annotations.json``.
    """
    params = shapes_params(seed, num_images, image_size, classes, with_person, **kwargs)
    out_dir = os.path.abspath(os.fspath(out_dir))
    json_file = os.path.join(out_dir, "annotations.json")
    if os.path.exists(out_dir) and not overwrite:
        if is_complete(out_dir, params):
            return json_file
        if is_complete(out_dir):
            raise ValueError(
                f"{out_dir} holds a shapes dataset generated with other parameters "
                f"(see {os.path.join(out_dir, 'params.json')}); remove it or pass overwrite=True"
            )
        if os.listdir(out_dir):
            raise ValueError(f"{out_dir} exists, is not empty and is not a complete shapes dataset")
    parent, base = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_tmp(parent, base)
    tmp = os.path.join(parent, f".{base}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        _generate_into(tmp, params, progress, desc=f"Generating {base}")
        old = None
        if os.path.exists(out_dir):
            if is_complete(out_dir, params) and not overwrite:  # another process finished first
                shutil.rmtree(tmp)
                return json_file
            old = os.path.join(parent, f".{base}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if is_complete(out_dir, params):  # lost a race against a concurrent generator: same content
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return json_file
