"""The builtin catalogue of generated shapes datasets (the `shapes_*` names) in detectron2's catalogs.

The shapes datasets stand in for COCO in the reproduction of the paper's instance-segmentation ablations
(Sec. 4.2, Table 2) and keypoint experiments (Sec. 5); `shapes` generates them. Importing this module
registers in detectron2's DatasetCatalog / MetadataCatalog:

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
The images are generated into the cache directory (`get_data_root`) by `prepare_dataset`, the one function
that generates a registered dataset: loading a dataset (``DatasetCatalog.get``) calls it first, and so do
evaluators, whose COCOEvaluator reads the json when it is built. The json is then read by
`coco_json.load_coco_json_checked`.
"""
import os
import re

from detectron2.data import DatasetCatalog, MetadataCatalog

from . import shapes as _shapes
from .coco_json import load_coco_json_checked
from .person_keypoints import person_keypoint_metadata

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
]

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

    `set_data_root` (cfg.DATASETS.SHAPES.ROOT) wins, then $MASKRCNN_PLUGIN_DATA, then ``./datasets_cache`` in the
    working directory (as detectron2's builtin datasets default to ``./datasets``).
    """
    if _root_override:
        return _root_override
    env = os.environ.get(ENV_DATA_ROOT)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.abspath("datasets_cache")


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
        meta.update(person_keypoint_metadata())
    return meta


def _dataset_dir(params, root=None):
    return os.path.join(root or get_data_root(), _shapes.shapes_dir_name(params))


def register_shapes(name, seed, num_images, image_size=256, with_person=False, root=None, **kwargs):
    """Register a shapes dataset under ``name``; it is generated (`prepare_dataset`) on first load. Returns ``name``.

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

    def load():
        prepare_dataset(name)
        return load_coco_json_checked(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, **shapes_metadata(params))
    _registered_shapes[name] = reg_kwargs
    return name


def prepare_dataset(name):
    """Make sure a registered shapes dataset exists on disk (generating it if needed); returns its json path.

    The one place that generates a registered shapes dataset, from its metadata (``shapes_params``, and
    ``json_file``'s directory): loading the dataset calls it, and detectron2's COCOEvaluator opens
    metadata.json_file when it is constructed, so call it before building an evaluator for a shapes dataset
    that may not have been loaded yet (`maskrcnn_plugin.evaluation.build_evaluator` does). Registers ``name``
    if it is a shapes name (`ensure_registered`); for other registered datasets it only returns their
    metadata's json_file (None if they have none).
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


def _register_builtin():
    for name, kwargs in BUILTIN_SHAPES.items():
        if name not in DatasetCatalog.list():
            register_shapes(name, **kwargs)


_register_builtin()
