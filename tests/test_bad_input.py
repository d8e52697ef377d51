"""Bad input, one section per kind, each handled with a clear error or a documented, warned-about fallback.

1. unreadable image files      2. zero-area / negative boxes, polygons with < 3 points
3. empty masks                 4. images without annotations
5. boxes outside the image     6. NaN / inf boxes given to the RoI operators
7. unknown registry names, config keys and values

Where another test file already covers a case, a comment names that test instead of repeating it. Training
runs are a few iterations of detectron2's SimpleTrainer (what DefaultTrainer runs, minus hooks) on a tiny
generated dataset at 128 px; SimpleTrainer raises FloatingPointError on a non-finite loss.
"""
import copy
import itertools
import json
import logging
import os
import shutil

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from test_datasets import _coco, _write
from test_train_net import DEFAULT_CONFIG, tiny_opts

import maskrcnn_plugin
from maskrcnn_plugin.config import check_maskrcnn_plugin_config
from maskrcnn_plugin.data import load_coco_json_checked, register_coco_instances_checked
from maskrcnn_plugin.data.mapper import CheckedDatasetMapper
from maskrcnn_plugin.data.train_loader import ResumableTrainLoader, build_checked_train_loader
from maskrcnn_plugin.data.shapes import generate_shapes
from maskrcnn_plugin.layers import RoIAlign, RoIPool, RoIWarp, roi_align, roi_pool, roi_warp

DATASETS_LOGGER = "maskrcnn_plugin.data.coco_json"
MAPPER_LOGGER = "maskrcnn_plugin.data.mapper"


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A tiny generated shapes dataset (4 images, 128 px): (COCO dict, image directory). Do not modify it."""
    out = tmp_path_factory.mktemp("shapes")
    json_file = generate_shapes(str(out / "ds"), seed=5, num_images=4, image_size=128, progress=False)
    with open(json_file) as f:
        return json.load(f), os.path.join(os.path.dirname(json_file), "images")


@pytest.fixture
def register(tmp_path):
    """register(coco_dict, image_root) -> name of a dataset registered with register_coco_instances_checked."""
    names = []

    def _register(coco, image_root):
        name = f"test_bad_input_{len(names)}"
        _unregister(name)
        register_coco_instances_checked(name, {}, _write(tmp_path, coco, f"{name}.json"), image_root)
        names.append(name)
        return name

    yield _register
    for name in names:
        _unregister(name)


def _unregister(name):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _cfg(tmp_path, train_name=None, *opts):
    """The default CPU model (configs/shapes/mask_rcnn_R18_FPN_shapes.yaml) at test_train_net's tiny size."""
    cfg = maskrcnn_plugin.get_plugin_cfg()
    cfg.merge_from_file(DEFAULT_CONFIG)
    cfg.merge_from_list(tiny_opts(tmp_path) + list(opts))
    if train_name:
        cfg.DATASETS.TRAIN = (train_name,)
    return cfg


def _train(cfg, data_loader=None, n_iter=2):
    """Train a few iterations; assert every loss and every parameter stays finite. Returns the EventStorage."""
    torch.manual_seed(0)
    model = build_model(cfg)
    data_loader = data_loader if data_loader is not None else build_checked_train_loader(cfg)
    trainer = SimpleTrainer(model, data_loader, build_optimizer(cfg, model))
    trainer.train(0, n_iter)  # raises FloatingPointError on a NaN/inf loss
    total = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(total) == n_iter and np.isfinite(total).all(), total
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return trainer.storage


def _polygon(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _empty_rle(height, width):
    rle = mask_util.encode(np.zeros((height, width), np.uint8, order="F"))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


# ------------------------------------------------------------------------------------------------------------
# 1. Unreadable image files
# ------------------------------------------------------------------------------------------------------------
# The error naming the file (and image_id) for empty, non-image and missing files:
# test_train_net.py::test_corrupt_or_missing_image_error_names_the_file. A file missing when the dataset is
# loaded: test_datasets.py::test_missing_image_file_names_path.
def _bad_image_dict(tmp_path, content):
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    return str(path), {"file_name": str(path), "image_id": 7, "height": 64, "width": 64, "annotations": []}


@pytest.mark.parametrize("content", [b"not a png at all", None])
def test_unreadable_image_raises_by_default_and_names_the_opt_in(tmp_path, content):
    cfg = _cfg(tmp_path)
    assert cfg.DATALOADER.SKIP_UNREADABLE_IMAGES is False
    path, d = _bad_image_dict(tmp_path, content)
    with pytest.raises(OSError) as e:
        CheckedDatasetMapper(cfg, is_train=True)(d)
    assert path in str(e.value) and "DATALOADER.SKIP_UNREADABLE_IMAGES" in str(e.value)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n truncated", None])
def test_unreadable_image_skipped_with_one_warning_when_enabled(tmp_path, caplog, content):
    cfg = _cfg(tmp_path, None, "DATALOADER.SKIP_UNREADABLE_IMAGES", "True")
    path, d = _bad_image_dict(tmp_path, content)
    mapper = CheckedDatasetMapper(cfg, is_train=True)
    with caplog.at_level(logging.WARNING, logger=MAPPER_LOGGER):
        assert mapper(copy.deepcopy(d)) is None
        assert mapper(copy.deepcopy(d)) is None  # an infinite sampler meets it again: warned once
    warnings = [r.getMessage() for r in caplog.records if r.name == MAPPER_LOGGER]
    assert len(warnings) == 1 and path in warnings[0] and "image_id=7" in warnings[0]


def test_test_time_mapper_never_skips(tmp_path):
    # Skipping at test time would silently evaluate on fewer images.
    cfg = _cfg(tmp_path, None, "DATALOADER.SKIP_UNREADABLE_IMAGES", "True")
    path, d = _bad_image_dict(tmp_path, b"junk")
    with pytest.raises(OSError, match="broken.png"):
        CheckedDatasetMapper(cfg, is_train=False)(d)


def test_training_skips_unreadable_images(tmp_path, shapes, register, caplog):
    coco, image_root = shapes
    images = tmp_path / "images"
    shutil.copytree(image_root, images)
    name = register(coco, str(images))
    dicts = DatasetCatalog.get(name)  # checked while all files exist
    # (A file missing when the dataset is loaded is an error there; missing later: see the mapper tests above.)
    truncated, junk = dicts[0]["file_name"], dicts[1]["file_name"]
    with open(truncated, "r+b") as f:
        f.truncate(200)
    with open(junk, "wb") as f:
        f.write(b"not an image")
    cfg = _cfg(tmp_path, name, "DATALOADER.SKIP_UNREADABLE_IMAGES", "True")

    with caplog.at_level(logging.WARNING, logger=MAPPER_LOGGER):
        # 4 same-size images, batch 2: the first 2 batches are one shuffled pass over all 4 images.
        loader = iter(build_checked_train_loader(cfg))
        seen = [d["file_name"] for _ in range(2) for d in next(loader)]
    assert len(seen) == 4 and truncated not in seen and junk not in seen
    text = caplog.text
    assert truncated in text and junk in text and "SKIP_UNREADABLE_IMAGES" in text
    _train(cfg)


def _stream(mapper, n=3, batch_size=2):
    dicts = [{"i": i, "width": 4, "height": 4} for i in range(n)]
    return ResumableTrainLoader(dicts, mapper, lambda seed: TrainingSampler(n, seed=seed), batch_size, seed=3)


def test_skipped_images_are_replaced_deterministically():
    def mapper(d):  # image 0 is unreadable
        return None if d["i"] == 0 else d["i"]

    first = list(itertools.islice(iter(_stream(mapper)), 6))
    assert all(x in (1, 2) for batch in first for x in batch)
    assert first == list(itertools.islice(iter(_stream(mapper)), 6))
    with pytest.raises(RuntimeError, match="returned None for all 3 images"):
        next(iter(_stream(lambda d: None)))


def test_training_on_grayscale_rgba_palette_16bit_and_1x1_images(tmp_path, shapes, register):
    # PIL opens each in its own mode; detectron2's read_image converts to 3-channel BGR, 16-bit values saturate
    from PIL import Image

    coco, image_root = copy.deepcopy(shapes[0]), tmp_path / "images"
    shutil.copytree(shapes[1], image_root)
    files = [image_root / img["file_name"] for img in coco["images"]]
    Image.open(files[0]).convert("L").save(files[0])
    Image.open(files[1]).convert("RGBA").save(files[1])
    Image.open(files[2]).convert("P").save(files[2])
    Image.fromarray(np.asarray(Image.open(files[3]).convert("L"), np.uint16) * 257).save(files[3])  # I;16
    assert [Image.open(f).mode for f in files][:3] == ["L", "RGBA", "P"] and Image.open(files[3]).mode in ("I", "I;16")
    tiny = dict(coco["images"][0], id=99, file_name="tiny.png", height=1, width=1)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(image_root / "tiny.png")
    coco["images"].append(tiny)
    coco["annotations"].append({"id": 10 ** 6, "image_id": 99, "category_id": coco["categories"][0]["id"],
                                "bbox": [0, 0, 1, 1], "segmentation": _polygon(0, 0, 1, 1), "area": 1, "iscrowd": 0})
    name = register(coco, str(image_root))
    cfg = _cfg(tmp_path, name)
    for is_train in (True, False):
        mapper = CheckedDatasetMapper(cfg, is_train=is_train)
        for d in DatasetCatalog.get(name):
            image = mapper(d)["image"]
            assert image.dtype == torch.uint8 and image.shape == (3, 128, 128), (d["file_name"], image.shape)
    _train(cfg)


# ------------------------------------------------------------------------------------------------------------
# 2. Zero-area / negative boxes, polygons with < 3 points  (and 3. empty masks, in the same training run)
# ------------------------------------------------------------------------------------------------------------
# That the loader drops / removes them with one warning: test_datasets.py::test_bad_polygons_and_boxes_dropped_
# with_warning. Here: training on such a dataset works.
def _add_degenerate_annotations(coco):
    coco = copy.deepcopy(coco)
    next_id = max(a["id"] for a in coco["annotations"]) + 1
    for img in coco["images"]:
        h, w = img["height"], img["width"]
        base = {"image_id": img["id"], "category_id": 1, "iscrowd": 0, "area": 1}
        for extra in (
            {"bbox": [10, 10, 0, 5], "segmentation": _polygon(10, 10, 5, 5)},  # zero width
            {"bbox": [10, 10, 5, -3], "segmentation": _polygon(10, 10, 5, 5)},  # negative height
            {"bbox": [10, 10, 5, 5], "segmentation": [[10, 10, 15, 15]]},  # a 2-point polygon
            {"bbox": [10, 10, 5, 5], "segmentation": [[10, 10, 15, 15], *_polygon(10, 10, 5, 5)]},  # kept
            {"bbox": [10, 10, 5, 5], "segmentation": _empty_rle(h, w)},  # empty mask (3.)
            {"bbox": [10, 10, 5, 5], "segmentation": [[10, 10, 12, 10, 15, 10]]},  # zero-area polygon (3.)
        ):
            coco["annotations"].append(dict(base, id=next_id, **extra))
            next_id += 1
    return coco


def test_training_on_degenerate_boxes_polygons_and_empty_masks(tmp_path, shapes, register, caplog):
    coco, image_root = shapes
    name = register(_add_degenerate_annotations(coco), image_root)
    with caplog.at_level(logging.WARNING, logger=DATASETS_LOGGER):
        dicts = DatasetCatalog.get(name)
    n = len(coco["images"])
    assert sum(len(d["annotations"]) for d in dicts) == len(coco["annotations"]) + n
    assert (
        f"dropped {2 * n} annotation(s) with a missing, zero-area or negative bbox, {n} annotation(s) without a "
        f"valid polygon, {2 * n} annotation(s) with an empty mask" in caplog.text
    )
    _train(_cfg(tmp_path, name))


# ------------------------------------------------------------------------------------------------------------
# 3. Empty masks: dropped like degenerate boxes (a non-empty box with an all-zero mask target would teach the
#    mask head to predict nothing inside a box)
# ------------------------------------------------------------------------------------------------------------
def test_empty_masks_dropped_with_warning(tmp_path, caplog):
    coco, img_dir = _coco(tmp_path)  # 32 x 24 images; annotation 1 is a polygon, 2 a compressed RLE
    base = dict(coco["annotations"][0], bbox=[1, 1, 5, 5])
    coco["annotations"] += [
        dict(base, id=10, segmentation=_empty_rle(24, 32)),  # compressed RLE, no pixel
        dict(base, id=11, segmentation={"size": [24, 32], "counts": [24 * 32]}),  # uncompressed RLE, no pixel
        dict(base, id=12, segmentation=[[1, 1, 3, 1, 6, 1]]),  # collinear points: zero area
        dict(base, id=13, segmentation=_polygon(40, 30, 5, 5)),  # polygon outside the image (bbox is inside)
        dict(base, id=14, segmentation=[[1, 1, 3, 1, 6, 1], *_polygon(1, 1, 5, 5)]),  # one non-empty: kept
    ]
    with caplog.at_level(logging.WARNING, logger=DATASETS_LOGGER):
        dicts = load_coco_json_checked(_write(tmp_path, coco), img_dir)
    assert [len(d["annotations"]) for d in dicts] == [2, 1]
    assert len(dicts[0]["annotations"][1]["segmentation"]) == 2
    assert "dropped 4 annotation(s) with an empty mask (no pixel in the image)" in caplog.text


# ------------------------------------------------------------------------------------------------------------
# 4. Images without annotations: with DATALOADER.FILTER_EMPTY_ANNOTATIONS False they are trained on as
#    background (the default True drops them, as in detectron2)
# ------------------------------------------------------------------------------------------------------------
def test_training_with_images_without_annotations(tmp_path, shapes, register):
    coco, image_root = copy.deepcopy(shapes[0]), shapes[1]
    empty_ids = {img["id"] for img in coco["images"][2:]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] not in empty_ids]
    name = register(coco, image_root)
    assert len(get_detection_dataset_dicts([name], filter_empty=True)) == 2
    dicts = get_detection_dataset_dicts([name], filter_empty=False)
    assert len(dicts) == 4

    cfg = _cfg(tmp_path, name, "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False")
    mapper = CheckedDatasetMapper(cfg, is_train=True)
    empty = [mapper(d) for d in dicts if d["image_id"] in empty_ids]
    annotated = [mapper(d) for d in dicts if d["image_id"] not in empty_ids]
    assert [len(d["instances"]) for d in empty] == [0, 0]
    # Deterministic batches: one of background-only images, then a mixed one.
    storage = _train(cfg, [empty, [annotated[0], empty[0]]], n_iter=2)
    first = {k: storage.history(k).values()[0][0] for k in ("loss_cls", "loss_box_reg", "loss_mask")}
    assert first["loss_box_reg"] == 0 and first["loss_mask"] == 0 and first["loss_cls"] > 0


# ------------------------------------------------------------------------------------------------------------
# 5. Boxes partly outside the image are clipped to it by the loader; boxes wholly outside are dropped
# ------------------------------------------------------------------------------------------------------------
def test_boxes_outside_the_image_clipped_or_dropped(tmp_path, caplog):
    coco, img_dir = _coco(tmp_path)  # 32 x 24 images
    base = coco["annotations"][0]
    coco["annotations"] += [
        dict(base, id=10, bbox=[-5, -4, 20, 10], segmentation=_polygon(0, 0, 15, 6)),  # over the top-left
        dict(base, id=11, bbox=[25, 20, 20, 10], segmentation=_polygon(25, 20, 7, 4)),  # over the bottom-right
        dict(base, id=12, bbox=[40, 0, 5, 5]),  # right of the image
        dict(base, id=13, bbox=[-10, -10, 5, 5]),  # above-left
        dict(base, id=14, bbox=[0, 24, 5, 5]),  # starts at the bottom edge: nothing inside
    ]
    with caplog.at_level(logging.INFO, logger=DATASETS_LOGGER):
        dicts = load_coco_json_checked(_write(tmp_path, coco), img_dir)
    assert [a["bbox"] for a in dicts[0]["annotations"]] == [[1, 2, 10, 5], [0, 0, 15, 6], [25, 20, 7, 4]]
    assert "dropped 3 annotation(s) with a bbox wholly outside the image" in caplog.text
    assert "clipped 2 bbox(es)" in caplog.text


def test_training_with_boxes_outside_the_image(tmp_path, shapes, register):
    coco, image_root = copy.deepcopy(shapes[0]), shapes[1]
    next_id = max(a["id"] for a in coco["annotations"]) + 1
    for a in list(coco["annotations"]):
        x, y, w, h = a["bbox"]
        a["bbox"] = [x - 30, y - 30, w + 60, h + 60]  # every box extends beyond the image
        coco["annotations"].append(dict(a, id=next_id, bbox=[500, 500, w, h]))  # wholly outside
        next_id += 1
    name = register(coco, image_root)
    for d in DatasetCatalog.get(name):
        for a in d["annotations"]:
            x, y, w, h = a["bbox"]
            assert x >= 0 and y >= 0 and x + w <= d["width"] and y + h <= d["height"]
    assert sum(len(d["annotations"]) for d in DatasetCatalog.get(name)) == len(coco["annotations"]) // 2
    _train(_cfg(tmp_path, name))


# ------------------------------------------------------------------------------------------------------------
# 6. NaN / inf coordinates given to the RoI operators: ValueError
# ------------------------------------------------------------------------------------------------------------
# test_roi_ops.py::test_non_finite_boxes_raise covers the functions (both backends, both box forms) with the
# bad value in x2; here: the modules, and every column (x1, y1, x2, y2 and the batch index).
OPS = {
    "pool": (lambda x, b: roi_pool(x, b, 2, 0.5), RoIPool(2, 0.5)),
    "warp": (lambda x, b: roi_warp(x, b, 2, 0.5, 2, "avg"), RoIWarp(2, 0.5, 2)),
    "align": (lambda x, b: roi_align(x, b, 2, 0.5, 2, "avg", True), RoIAlign(2, 0.5, 2, aligned=True)),
}


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_boxes_raise_in_functions_and_modules(op, bad):
    x = torch.randn(2, 3, 8, 8)
    good = torch.tensor([[0, 1.0, 1.0, 6.0, 6.0], [1, 0.0, 2.0, 5.0, 7.0]])
    for fn in OPS[op]:
        assert torch.isfinite(fn(x, good)).all()
        for col in range(5):
            boxes = good.clone()
            boxes[1, col] = bad
            with pytest.raises(ValueError, match="NaN or infinite"):
                fn(x, boxes)
            if col > 0:  # list of per-image Tensor[L, 4]
                with pytest.raises(ValueError, match="NaN or infinite"):
                    fn(x, [boxes[:1, 1:], boxes[1:, 1:]])


# ------------------------------------------------------------------------------------------------------------
# 7. Unknown registry names, config keys and values: the error names the key, the value and the valid ones
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key,valid",
    [
        ("MODEL.META_ARCHITECTURE", "'GeneralizedRCNN'"),
        ("MODEL.BACKBONE.NAME", "'build_resnet_fpn_backbone'"),
        ("MODEL.PROPOSAL_GENERATOR.NAME", "'RPN'"),
        ("MODEL.ROI_HEADS.NAME", "'AblationStandardROIHeads'"),
        ("MODEL.ROI_BOX_HEAD.NAME", "'FastRCNNConvFCHead'"),
        ("MODEL.ROI_MASK_HEAD.NAME", "'MaskRCNNMLPHead'"),
        ("MODEL.ROI_KEYPOINT_HEAD.NAME", "'KRCNNConvDeconvUpsampleHead'"),
    ],
)
def test_unknown_registry_name_lists_registered_names(tmp_path, key, valid):
    cfg = _cfg(tmp_path, None, key, "Foo", "MODEL.KEYPOINT_ON", "True")
    with pytest.raises(ValueError) as e:
        check_maskrcnn_plugin_config(cfg)
    msg = str(e.value)
    assert f"{key}='Foo'" in msg and "registered names:" in msg and valid in msg


def test_registry_check_only_checks_names_the_model_uses(tmp_path):
    cfg = _cfg(tmp_path)
    check_maskrcnn_plugin_config(cfg)  # the default config
    for opts in (
        ["MODEL.KEYPOINT_ON", "False", "MODEL.ROI_KEYPOINT_HEAD.NAME", "Foo"],
        ["MODEL.MASK_ON", "False", "MODEL.ROI_MASK_HEAD.NAME", "Foo"],
        ["MODEL.PROPOSAL_GENERATOR.NAME", "PrecomputedProposals"],  # detectron2's "no proposal generator"
        ["MODEL.ROI_HEADS.NAME", "AblationRes5ROIHeads", "MODEL.ROI_BOX_HEAD.NAME", "Foo"],  # C4: no box head
        ["MODEL.ROI_BOX_HEAD.NAME", ""],  # detectron2's unset default, left in partial base configs
        ["MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.ROI_HEADS.NAME", "Foo"],  # one-stage: no RoI heads
    ):
        check_maskrcnn_plugin_config(_cfg(tmp_path, None, *opts))


def test_unknown_registry_name_fails_in_train_net_setup_before_anything_is_built(tmp_path):
    # train_net.py validates the merged config once (check_maskrcnn_plugin_config), before the model is built.
    import argparse
    import sys

    from test_train_net import REPO

    sys.path.insert(0, REPO)
    import train_net

    args = argparse.Namespace(config_file=DEFAULT_CONFIG, resume=False, eval_only=False,
                              opts=tiny_opts(tmp_path) + ["MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNFCNHeed"])
    with pytest.raises(ValueError, match="MODEL.ROI_MASK_HEAD.NAME='MaskRCNNFCNHeed'.*'MaskRCNNFCNHead'"):
        train_net.load_cfg(args)
    assert not (tmp_path / "out").exists()


# Unknown keys from the command line: test_roi_heads.py::test_unknown_config_key_names_the_key. From a file:
def test_unknown_config_key_in_yaml_names_the_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(f'_BASE_: "{DEFAULT_CONFIG}"\nMODEL:\n  ROI_EXTRACTOR:\n    SAMPLNG_RATIO: 2\n')
    cfg = maskrcnn_plugin.get_plugin_cfg()
    with pytest.raises(KeyError, match="MODEL.ROI_EXTRACTOR.SAMPLNG_RATIO"):
        cfg.merge_from_file(str(path))


# The plugin's value checks. METHOD and AGGREGATION (at model build): test_roi_heads.py::
# test_invalid_extractor_value_fails_at_build_with_valid_values; MODEL.ROI_MASK_HEAD.LOSS: test_mask_head.py::
# test_invalid_loss_raises_value_error_naming_the_key. The others (set in Python: from a file or the command
# line, yacs already rejects a value of another type, see below):
@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("MODEL.ROI_EXTRACTOR.SAMPLING_RATIO", -1, ["MODEL.ROI_EXTRACTOR.SAMPLING_RATIO", "int >= 0", "-1"]),
        ("MODEL.ROI_EXTRACTOR.SAMPLING_RATIO", 1.5, ["MODEL.ROI_EXTRACTOR.SAMPLING_RATIO", "int >= 0", "1.5"]),
        ("MODEL.ROI_EXTRACTOR.ALIGNED", "yes", ["MODEL.ROI_EXTRACTOR.ALIGNED='yes'", "True, False"]),
        ("MODEL.ROI_EXTRACTOR.METHOD", "RoIPool", ["MODEL.ROI_EXTRACTOR.AGGREGATION", "'max'", "RoIPool"]),
        ("MODEL.ROI_MASK_HEAD.MLP_DIMS", [1024, 0], ["MODEL.ROI_MASK_HEAD.MLP_DIMS", "positive ints"]),
        ("DATALOADER.SKIP_UNREADABLE_IMAGES", "yes", ["DATALOADER.SKIP_UNREADABLE_IMAGES='yes'", "True, False"]),
    ],
)
def test_invalid_plugin_value_names_key_and_valid_values(tmp_path, key, value, expected):
    cfg = _cfg(tmp_path)
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError) as e:
        check_maskrcnn_plugin_config(cfg)
    assert all(s in str(e.value) for s in expected), str(e.value)


def test_value_of_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="Type mismatch.*DATALOADER.SKIP_UNREADABLE_IMAGES"):
        _cfg(tmp_path, None, "DATALOADER.SKIP_UNREADABLE_IMAGES", "'yes'")
