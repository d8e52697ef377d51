"""Tests of dataset registration (maskrcnn_plugin/data/builtin.py) and checked COCO json loading (coco_json.py)."""
import json
import logging
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

import maskrcnn_plugin.data as data
from maskrcnn_plugin.data import builtin as ds
from maskrcnn_plugin.data.person_keypoints import PERSON_KEYPOINT_NAMES
from maskrcnn_plugin.data.shapes import SHAPE_CLASSES, SOLID_SHAPE_CLASSES


@pytest.fixture
def data_root(tmp_path):
    data.set_data_root(tmp_path / "cache")
    yield tmp_path / "cache"
    data.set_data_root(None)


def _unregister(name):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    ds._registered_shapes.pop(name, None)


def test_builtin_names_registered_with_metadata():
    for name in ("shapes_train", "shapes_val", "shapes_test", "shapes_kp_train", "shapes_kp_val",
                 "shapes_solid_train", "shapes_solid_val"):
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "coco"
        assert meta.json_file.endswith("annotations.json") and meta.image_root.endswith("images")
        classes = SOLID_SHAPE_CLASSES if "solid" in name else SHAPE_CLASSES
        assert meta.thing_classes[: len(classes)] == list(classes)
    assert MetadataCatalog.get("shapes_train").shapes_params["seed"] == 0
    assert MetadataCatalog.get("shapes_val").shapes_params["seed"] == 1
    assert MetadataCatalog.get("shapes_train").shapes_params["num_images"] == 1000
    assert not MetadataCatalog.get("shapes_train").get("keypoint_names")
    solid = MetadataCatalog.get("shapes_solid_train").shapes_params
    default = MetadataCatalog.get("shapes_train").shapes_params
    changed = {"classes": list(SOLID_SHAPE_CLASSES), "min_size": 32, "max_size_frac": 0.8, "max_instances": 4,
               "max_distractors": 0}
    assert solid == {**default, **changed}
    kp = MetadataCatalog.get("shapes_kp_train")
    assert kp.thing_classes[-1] == "person"
    assert kp.keypoint_names == list(PERSON_KEYPOINT_NAMES)
    assert len(kp.keypoint_oks_sigmas) == len(PERSON_KEYPOINT_NAMES)
    assert all(a.startswith("left_") and b == "right_" + a[5:] for a, b in kp.keypoint_flip_map)
    names = set(PERSON_KEYPOINT_NAMES)
    assert all(a in names and b in names and len(c) == 3 for a, b, c in kp.keypoint_connection_rules)
    # detectron2's flip-index computation accepts the metadata
    from detectron2.data.detection_utils import create_keypoint_hflip_indices

    flip = create_keypoint_hflip_indices(["shapes_kp_train"])
    assert sorted(flip) == list(range(len(PERSON_KEYPOINT_NAMES))) and flip[0] == 0


def test_register_shapes_and_load_detectron2_dicts(tmp_path):
    name = "test_shapes_tiny"
    _unregister(name)
    data.register_shapes(name, seed=5, num_images=4, image_size=128, root=str(tmp_path))
    assert data.register_shapes(name, seed=5, num_images=4, image_size=128, root=str(tmp_path)) == name
    with pytest.raises(ValueError, match="already registered"):
        data.register_shapes(name, seed=6, num_images=4, image_size=128, root=str(tmp_path))
    dicts = DatasetCatalog.get(name)  # generates on first use
    meta = MetadataCatalog.get(name)
    assert os.path.isfile(meta.json_file) and meta.json_file.startswith(str(tmp_path))
    assert len(dicts) == 4
    for d in dicts:
        assert os.path.isfile(d["file_name"]) and d["height"] == d["width"] == 128
        assert d["annotations"]
        for a in d["annotations"]:
            assert a["bbox_mode"] == BoxMode.XYWH_ABS
            assert a["category_id"] in range(len(SHAPE_CLASSES))
            assert isinstance(a["segmentation"], dict)
            m = mask_util.decode(a["segmentation"])
            assert m.shape == (128, 128) and m.sum() > 0
    assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(len(SHAPE_CLASSES))}
    _unregister(name)


def test_loading_generates_through_prepare_dataset(tmp_path, monkeypatch):
    """Loading a shapes dataset generates it with prepare_dataset, the one generator (evaluators call it too)."""
    name = "test_shapes_prepare"
    _unregister(name)
    calls = []
    real = ds.prepare_dataset

    def recording(n):
        calls.append(n)
        return real(n)

    monkeypatch.setattr(ds, "prepare_dataset", recording)
    data.register_shapes(name, seed=5, num_images=2, image_size=64, root=str(tmp_path))
    json_file = MetadataCatalog.get(name).json_file
    assert not os.path.exists(json_file)
    try:
        assert len(DatasetCatalog.get(name)) == 2
        assert calls == [name] and os.path.isfile(json_file)
        assert data.prepare_dataset(name) == json_file  # already there: reused
    finally:
        _unregister(name)


def test_dataset_mapper_bitmask(tmp_path):
    """The dicts go through detectron2's DatasetMapper (INPUT.MASK_FORMAT must be 'bitmask' for RLE)."""
    from detectron2.config import get_cfg
    from detectron2.data import DatasetMapper

    name = "test_shapes_mapper"
    _unregister(name)
    data.register_shapes(name, seed=5, num_images=2, image_size=128, with_person=True, root=str(tmp_path))
    d = DatasetCatalog.get(name)[0]
    cfg = get_cfg()
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.KEYPOINT_ON = True
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.MIN_SIZE_TRAIN = (128,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    out = DatasetMapper(cfg, is_train=True)(d)
    inst = out["instances"]
    assert len(inst) == len(d["annotations"])
    assert inst.gt_masks.tensor.shape[1:] == (128, 128)
    assert inst.gt_keypoints.tensor.shape[1:] == (len(PERSON_KEYPOINT_NAMES), 3)
    _unregister(name)


def test_keypoints_loaded_as_continuous_coordinates(tmp_path):
    name = "test_shapes_kp_tiny"
    _unregister(name)
    data.register_shapes(name, seed=2, num_images=3, image_size=128, with_person=True, root=str(tmp_path))
    dicts = DatasetCatalog.get(name)
    coco = json.load(open(MetadataCatalog.get(name).json_file))
    raw = {a["id"]: a for a in coco["annotations"]}
    person = len(SHAPE_CLASSES)
    persons = [a for d in dicts for a in d["annotations"] if a["category_id"] == person]
    assert persons
    raw_persons = [a for a in raw.values() if a["category_id"] == person + 1]
    k = np.array(persons[0]["keypoints"]).reshape(-1, 3)
    r = np.array(raw_persons[0]["keypoints"]).reshape(-1, 3)
    assert np.allclose(k[:, :2], r[:, :2] + 0.5) and (k[:, 2] == r[:, 2]).all()
    _unregister(name)


def test_ensure_registered_pattern(data_root):
    name = "shapes_mini_s11_n3_px96"
    _unregister(name)
    assert data.ensure_registered(name) == name
    meta = MetadataCatalog.get(name)
    assert meta.shapes_params["seed"] == 11 and meta.shapes_params["image_size"] == 96
    assert meta.json_file.startswith(str(data_root))
    assert len(DatasetCatalog.get(name)) == 3
    kp = "shapes_kp_mini_s11_n2_px96"
    _unregister(kp)
    data.ensure_registered(kp)
    assert MetadataCatalog.get(kp).thing_classes[-1] == "person"
    assert data.ensure_registered("shapes_train") == "shapes_train"
    with pytest.raises(KeyError, match="<split>_s<seed>_n<num>_px<size>"):
        data.ensure_registered("no_such_dataset")
    _unregister(name)
    _unregister(kp)


def test_set_data_root_moves_builtin_metadata(data_root):
    assert MetadataCatalog.get("shapes_val").json_file.startswith(str(data_root))
    assert "shapes_val" in DatasetCatalog.list()


def test_register_datasets_from_cfg(tmp_path):
    from detectron2.config import get_cfg

    from maskrcnn_plugin.config import add_maskrcnn_plugin_config

    cfg = add_maskrcnn_plugin_config(get_cfg())
    cfg.DATASETS.TRAIN = ("shapes_cfgtest_s3_n2_px64",)
    cfg.DATASETS.TEST = ("shapes_val",)
    cfg.DATASETS.SHAPES.ROOT = str(tmp_path / "root")
    try:
        data.register_datasets_from_cfg(cfg)
        assert MetadataCatalog.get("shapes_cfgtest_s3_n2_px64").json_file.startswith(str(tmp_path / "root"))
        json_file = data.prepare_dataset("shapes_cfgtest_s3_n2_px64")
        assert os.path.isfile(json_file)
    finally:
        data.set_data_root(None)
        _unregister("shapes_cfgtest_s3_n2_px64")


def test_check_num_classes_names_key_dataset_and_count():
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("shapes_solid_train",), ("shapes_solid_val",)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    with pytest.raises(ValueError, match=r"NUM_CLASSES is 5 but dataset 'shapes_solid_train' has 4 classes"):
        data.check_num_classes(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    data.check_num_classes(cfg)
    cfg.DATASETS.TEST = ("shapes_val",)
    with pytest.raises(ValueError, match=r"dataset 'shapes_val' has 5 classes"):
        data.check_num_classes(cfg)


# ---------------------------------------------------------------------------------------------------------
# Checked COCO loading
# ---------------------------------------------------------------------------------------------------------
def _coco(tmp_path, n_images=2):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir(exist_ok=True)
    from PIL import Image

    images = []
    for i in range(n_images):
        Image.new("RGB", (32, 24)).save(img_dir / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 24, "width": 32})
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 5], "iscrowd": 0, "area": 50,
         "segmentation": [[1, 2, 11, 2, 11, 7, 1, 7]]},
        {"id": 2, "image_id": 2, "category_id": 7, "bbox": [0, 0, 4, 4], "iscrowd": 0, "area": 16,
         "segmentation": {"size": [24, 32], "counts": mask_util.encode(
             np.asfortranarray(np.pad(np.ones((4, 4), np.uint8), ((0, 20), (0, 28)))))["counts"].decode()}},
    ]
    cats = [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    return {"images": images, "annotations": anns, "categories": cats}, img_dir


def _write(tmp_path, obj, name="ann.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(p)


def test_checked_loading_valid(tmp_path):
    coco, img_dir = _coco(tmp_path)
    jf = _write(tmp_path, coco)
    dicts = data.load_coco_json_checked(jf, img_dir)
    assert [len(d["annotations"]) for d in dicts] == [1, 1]
    assert dicts[0]["annotations"][0]["category_id"] == 0 and dicts[1]["annotations"][0]["category_id"] == 1
    assert dicts[0]["file_name"] == os.path.join(str(img_dir), "0.png")


def test_invalid_json_names_file_and_position(tmp_path):
    jf = _write(tmp_path, '{"images": [], "annotations": [,]}', "broken.json")
    with pytest.raises(ValueError) as e:
        data.load_coco_json_checked(jf, tmp_path)
    msg = str(e.value)
    assert jf in msg and "line 1 column" in msg


def test_missing_keys_names_file(tmp_path):
    jf = _write(tmp_path, {"images": []}, "nokeys.json")
    with pytest.raises(ValueError) as e:
        data.load_coco_json_checked(jf, tmp_path)
    assert jf in str(e.value) and "annotations" in str(e.value)


def test_unknown_category_names_file_annotation_and_valid_ids(tmp_path):
    coco, img_dir = _coco(tmp_path)
    coco["annotations"][1]["category_id"] = 99
    coco["annotations"][1]["id"] = 4242
    jf = _write(tmp_path, coco, "badcat.json")
    with pytest.raises(ValueError) as e:
        data.load_coco_json_checked(jf, img_dir)
    msg = str(e.value)
    assert jf in msg and "4242" in msg and "99" in msg and "[3, 7]" in msg


def test_missing_image_file_names_path(tmp_path):
    coco, img_dir = _coco(tmp_path)
    os.remove(img_dir / "1.png")
    jf = _write(tmp_path, coco)
    with pytest.raises(FileNotFoundError) as e:
        data.load_coco_json_checked(jf, img_dir)
    assert os.path.join(str(img_dir), "1.png") in str(e.value)


def test_bad_polygons_and_boxes_dropped_with_warning(tmp_path, caplog):
    coco, img_dir = _coco(tmp_path)
    base = coco["annotations"][0]
    coco["annotations"] += [
        dict(base, id=10, segmentation=[[1, 2, 3, 4]]),  # polygon with 2 points only
        dict(base, id=11, bbox=[1, 1, 0, 5]),  # zero width
        dict(base, id=12, bbox=[1, 1, 4, -2]),  # negative height
        dict(base, id=13, segmentation=[[1, 2, 3, 4], [1, 2, 11, 2, 11, 7]]),  # one good polygon kept
    ]
    jf = _write(tmp_path, coco)
    with caplog.at_level(logging.WARNING, logger="maskrcnn_plugin.data.coco_json"):
        dicts = data.load_coco_json_checked(jf, img_dir)
    assert [len(d["annotations"]) for d in dicts] == [2, 1]
    assert dicts[0]["annotations"][1]["segmentation"] == [[1, 2, 11, 2, 11, 7]]
    text = caplog.text
    assert "dropped 2 annotation(s)" in text and "1 annotation(s) without a valid polygon" in text
    assert "removed 2 malformed polygon(s)" in text


def test_register_coco_instances_checked(tmp_path):
    coco, img_dir = _coco(tmp_path)
    jf = _write(tmp_path, coco)
    name = "test_user_coco"
    _unregister(name)
    data.register_coco_instances_checked(name, {}, jf, str(img_dir))
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "coco" and meta.json_file == jf
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 2 and meta.thing_classes == ["a", "b"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    _unregister(name)
    # the errors surface when the dataset is loaded, naming the file
    os.remove(img_dir / "0.png")
    data.register_coco_instances_checked(name, {}, jf, str(img_dir))
    with pytest.raises(FileNotFoundError, match="0.png"):
        DatasetCatalog.get(name)
    _unregister(name)


def test_coco_evaluator_gt_as_predictions(tmp_path):
    """detectron2's COCOEvaluator finds json_file in the metadata; GT as predictions gives AP 100 for bbox, segm
    and keypoints (shape instances carry all-zero keypoints, which COCOeval ignores)."""
    import torch
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, Instances

    name = "test_shapes_eval"
    _unregister(name)
    data.register_shapes(name, seed=9, num_images=4, image_size=128, with_person=True, root=str(tmp_path))
    dicts = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    # use_fast_impl=False: the Python-only detectron2 build has no C++ COCOeval
    ev = COCOEvaluator(name, output_dir=str(tmp_path / "eval"), kpt_oks_sigmas=meta.keypoint_oks_sigmas,
                       use_fast_impl=False)
    ev.reset()
    for d in dicts:
        anns = d["annotations"]
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = Boxes(torch.tensor(
            [BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in anns], dtype=torch.float32))
        inst.scores = torch.ones(len(anns))
        inst.pred_classes = torch.tensor([a["category_id"] for a in anns])
        inst.pred_masks = torch.from_numpy(np.stack([mask_util.decode(a["segmentation"]) for a in anns])).bool()
        kp = torch.tensor(np.array([a["keypoints"] for a in anns]), dtype=torch.float32).reshape(len(anns), -1, 3)
        kp[:, :, 2] = 1.0
        inst.pred_keypoints = kp
        ev.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    res = ev.evaluate()
    assert res["bbox"]["AP"] == pytest.approx(100.0)
    assert res["segm"]["AP"] == pytest.approx(100.0)
    assert res["keypoints"]["AP"] == pytest.approx(100.0)
    _unregister(name)


def test_person_only_annotates_the_persons_of_the_same_images(data_root):
    """shapes_person_*: the shapes_kp_* pictures, byte for byte, with the persons alone annotated (1 class)."""
    person, kp = "shapes_person_mini_s3_n4_px128", "shapes_kp_mini_s3_n4_px128"
    for n in (person, kp):
        _unregister(n)
        data.ensure_registered(n)
    only, full = DatasetCatalog.get(person), DatasetCatalog.get(kp)
    assert MetadataCatalog.get(person).thing_classes == ["person"]
    assert MetadataCatalog.get(person).keypoint_names == list(PERSON_KEYPOINT_NAMES)
    coco = json.load(open(MetadataCatalog.get(person).json_file))
    assert [c["name"] for c in coco["categories"]] == ["person"]
    n_persons = 0
    for a, b in zip(only, full):
        with open(a["file_name"], "rb") as fa, open(b["file_name"], "rb") as fb:
            assert fa.read() == fb.read()
        want = [o for o in b["annotations"] if o["category_id"] == len(SHAPE_CLASSES)]
        assert len(a["annotations"]) == len(want)
        for o, w in zip(a["annotations"], want):
            assert o["category_id"] == 0 and o["keypoints"] == w["keypoints"] and o["bbox"] == w["bbox"]
        n_persons += len(want)
    assert n_persons > 0
    assert "person_only" not in MetadataCatalog.get("shapes_kp_train").shapes_params  # other cache keys unchanged
    assert MetadataCatalog.get("shapes_person_train").shapes_params["person_only"] is True
    with pytest.raises(ValueError, match="person_only=True needs with_person=True"):
        data.register_shapes("bad_person_only", seed=0, num_images=1, person_only=True)
    for n in (person, kp):
        _unregister(n)
