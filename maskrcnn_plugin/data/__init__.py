"""Datasets of maskrcnn_plugin. Importing this package registers the generated shapes datasets
(shapes_train, shapes_val, shapes_test, shapes_kp_*, shapes_person_*, shapes_solid_*) in detectron2's catalogs.

Modules:

* `shapes`: the generated shapes dataset (parameters, cache layout, writing it to disk: `generate_shapes`),
  drawn by `shapes_geometry` (the object classes), `person_keypoints` (the person class and its 13
  keypoints) and `shapes_render` (one image);
* `builtin`: the catalogue of ``shapes_*`` names, the cache directory, and `prepare_dataset`, the one
  function that generates a registered dataset;
* `coco_json`: checked loading of COCO-format json (`load_coco_json_checked`), with the field checks in
  `annotations`;
* `mapper` and `train_loader`: detectron2's mapper and train loader with unreadable images named or skipped;
* `pretrain_classes`: the generated classification set the backbones are pre-trained on (the ImageNet
  stand-in; ``tools/pretrain_backbone.py``), a torch Dataset rendered on the fly, not registered.
"""
from .builtin import (  # noqa: F401  (registration happens on import)
    BUILTIN_SHAPES,
    SHAPES_NAME_PATTERN,
    check_num_classes,
    ensure_registered,
    get_data_root,
    prepare_dataset,
    register_datasets_from_cfg,
    register_shapes,
    set_data_root,
    shapes_metadata,
)
from .coco_json import load_coco_json_checked, register_coco_instances_checked  # noqa: F401
from .person_keypoints import (  # noqa: F401
    PERSON_KEYPOINT_CONNECTION_RULES,
    PERSON_KEYPOINT_FLIP_MAP,
    PERSON_KEYPOINT_NAMES,
    PERSON_KEYPOINT_OKS_SIGMAS,
    PERSON_SKELETON,
)
from .shapes import SHAPE_CLASSES, SOLID_SHAPE_CLASSES, generate_shapes  # noqa: F401
from .train_loader import ResumableTrainLoader, build_checked_train_loader  # noqa: F401
