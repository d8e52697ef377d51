"""Datasets of maskrcnn_plugin. Importing this package registers the generated shapes datasets
(shapes_train, shapes_val, shapes_test, shapes_kp_train, shapes_kp_val) in detectron2's catalogs."""
from .datasets import (  # noqa: F401  (registration happens on import)
    BUILTIN_SHAPES,
    SHAPES_NAME_PATTERN,
    check_num_classes,
    ensure_registered,
    get_data_root,
    load_coco_json_checked,
    prepare_dataset,
    register_coco_instances_checked,
    register_datasets_from_cfg,
    register_shapes,
    set_data_root,
    shapes_metadata,
)
from .train_loader import ResumableTrainLoader, build_checked_train_loader  # noqa: F401
from .shapes import (  # noqa: F401
    PERSON_KEYPOINT_CONNECTION_RULES,
    PERSON_KEYPOINT_FLIP_MAP,
    PERSON_KEYPOINT_NAMES,
    PERSON_KEYPOINT_OKS_SIGMAS,
    PERSON_SKELETON,
    SHAPE_CLASSES,
    SOLID_SHAPE_CLASSES,
    generate_shapes,
)
