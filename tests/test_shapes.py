"""Tests of the shapes generator (maskrcnn_plugin/data/shapes.py, shapes_geometry.py, shapes_render.py,
person_keypoints.py): determinism, atomic writes, COCO validity, mask/box consistency, scale/count sanity
and person keypoints."""
import contextlib
import io
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnn_plugin.data import person_keypoints, shapes, shapes_geometry
from maskrcnn_plugin.data.person_keypoints import PERSON_KEYPOINT_NAMES
from maskrcnn_plugin.data.shapes import SHAPE_CLASSES, SOLID_SHAPE_CLASSES, generate_shapes

SIZE = 256


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "plain"
    json_file = generate_shapes(out, seed=3, num_images=30, image_size=SIZE, progress=False)
    with open(json_file) as f:
        return json_file, json.load(f)


@pytest.fixture(scope="module")
def with_person(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "kp"
    json_file = generate_shapes(out, seed=4, num_images=20, image_size=SIZE, with_person=True, progress=False)
    with open(json_file) as f:
        return json_file, json.load(f)


def _read_dir(d):
    files = {}
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                files[os.path.relpath(p, d)] = f.read()
    return files


def test_deterministic_and_seed_dependent(tmp_path):
    a = _read_dir(os.path.dirname(generate_shapes(tmp_path / "a", 7, 5, 128, progress=False)))
    b = _read_dir(os.path.dirname(generate_shapes(tmp_path / "b", 7, 5, 128, progress=False)))
    c = _read_dir(os.path.dirname(generate_shapes(tmp_path / "c", 8, 5, 128, progress=False)))
    assert sorted(a) == sorted(["annotations.json", "params.json"] + [f"images/{i:06d}.png" for i in range(5)])
    assert a == b  # byte-identical json and images
    assert a["annotations.json"] != c["annotations.json"]
    assert all(a[f] != c[f] for f in a if f.endswith(".png"))


def test_first_images_do_not_depend_on_num_images(tmp_path):
    a = _read_dir(os.path.dirname(generate_shapes(tmp_path / "a", 7, 2, 128, progress=False)))
    b = _read_dir(os.path.dirname(generate_shapes(tmp_path / "b", 7, 4, 128, progress=False)))
    assert a["images/000001.png"] == b["images/000001.png"]


def test_reuse_mismatch_and_overwrite(tmp_path):
    out = tmp_path / "ds"
    j = generate_shapes(out, 1, 2, 64, progress=False)
    mtime = os.path.getmtime(j)
    assert generate_shapes(out, 1, 2, 64, progress=False) == j  # complete + same params: reused
    assert os.path.getmtime(j) == mtime
    with pytest.raises(ValueError, match="other parameters"):
        generate_shapes(out, 2, 2, 64, progress=False)
    generate_shapes(out, 2, 2, 64, progress=False, overwrite=True)
    assert json.load(open(os.path.join(out, "params.json")))["seed"] == 2
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_killed_run_leaves_no_dataset(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = shapes.render_image

    def dying(rng, params):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(rng, params)

    monkeypatch.setattr(shapes, "render_image", dying)
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        generate_shapes(out, 0, 5, 64, progress=False)
    assert not out.exists()
    assert os.listdir(tmp_path) == []  # the temporary directory is cleaned up too
    # A temp dir left by a hard kill (dead pid) is never taken for a dataset, and is cleaned up later.
    stale = tmp_path / ".ds.tmp-999999999-deadbeef"
    (stale / "images").mkdir(parents=True)
    (stale / "annotations.json").write_text("{}")
    monkeypatch.setattr(shapes, "render_image", real)
    assert not shapes.is_complete(out)
    generate_shapes(out, 0, 2, 64, progress=False)
    assert shapes.is_complete(out) and not stale.exists()


def test_invalid_params():
    with pytest.raises(ValueError, match="classes"):
        shapes.shapes_params(0, 1, classes=("ring", "square"))
    with pytest.raises(ValueError, match="min_size"):
        shapes.shapes_params(0, 1, image_size=32, min_size=30)


def _runs_contiguous(mask):
    """True if the pixels of every row and every column form one run (as for a convex shape)."""
    for m in (mask, mask.T):
        for row in m[m.any(1)]:
            idx = np.flatnonzero(row)
            if idx[-1] - idx[0] + 1 != len(idx):
                return False
    return True


def test_solid_classes_are_convex_and_default_ones_are_not():
    rng = np.random.default_rng(0)
    for cat in SOLID_SHAPE_CLASSES:
        for _ in range(20):
            mask, _, _ = shapes_geometry.rasterize(shapes_geometry.SHAPE_FNS[cat](rng, rng.uniform(32, 200)), 0.0, 0.0)
            assert mask.sum() > 0.3 * mask.size and _runs_contiguous(mask), cat
    for cat in ("ring", "crescent", "star", "cross"):  # holes, horns, spikes, bars
        masks = [shapes_geometry.rasterize(shapes_geometry.SHAPE_FNS[cat](rng, 120.0), 0.0, 0.0)[0] for _ in range(20)]
        assert not all(_runs_contiguous(m) for m in masks), cat
    params = shapes.shapes_params(0, 1, classes=SOLID_SHAPE_CLASSES, max_distractors=0)
    _, instances = shapes.render_image(np.random.default_rng(0), params)
    assert instances and {i["category"] for i in instances} <= set(SOLID_SHAPE_CLASSES)


def test_coco_json_structure(plain):
    _, coco = plain
    assert [c["name"] for c in coco["categories"]] == list(SHAPE_CLASSES)
    assert [c["id"] for c in coco["categories"]] == list(range(1, len(SHAPE_CLASSES) + 1))
    assert all("keypoints" not in c for c in coco["categories"])
    assert len(coco["images"]) == 30
    ann = coco["annotations"][0]
    assert set(ann) >= {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"}
    assert "keypoints" not in ann
    assert isinstance(ann["segmentation"]["counts"], str) and ann["segmentation"]["size"] == [SIZE, SIZE]
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    assert min(a["id"] for a in coco["annotations"]) >= 1  # COCOeval treats id 0 as "unmatched"


@pytest.mark.parametrize("fixture", ["plain", "with_person"])
@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_gt_as_predictions_gives_ap_1(fixture, iou_type, request):
    json_file, coco = request.getfixturevalue(fixture)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        dets = [
            {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
             "bbox": a["bbox"], "segmentation": a["segmentation"]}
            for a in coco["annotations"]
        ]
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)  # AP@[.5:.95]
    assert ev.stats[2] == pytest.approx(1.0)  # AP@.75


def _decode(a):
    return mask_util.decode(a["segmentation"]).astype(bool)


def test_masks_boxes_areas_consistent(plain):
    _, coco = plain
    by_image = {}
    for a in coco["annotations"]:
        m = _decode(a)
        assert m.shape == (SIZE, SIZE)
        assert a["area"] == int(m.sum())
        assert a["area"] >= 20
        ys, xs = np.nonzero(m)
        tight = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert a["bbox"] == [float(v) for v in tight]
        assert a["iscrowd"] == 0
        assert 0 < a["visible_fraction"] <= 1.0
        by_image.setdefault(a["image_id"], []).append(m)
    # visible masks of one image never overlap (each pixel shows at most one instance)
    for masks in by_image.values():
        assert np.stack(masks).sum(0).max() <= 1


def test_instance_counts_scales_classes(plain):
    _, coco = plain
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=31)[1:]
    assert per_image.max() <= 8 and per_image.mean() >= 2.5
    assert (per_image >= 1).mean() >= 0.9
    sizes = np.sqrt([a["area"] for a in coco["annotations"]])
    assert sizes.min() < 12  # small objects
    assert sizes.max() > 0.25 * SIZE  # large objects
    extents = np.array([max(a["bbox"][2:]) for a in coco["annotations"]])
    assert extents.max() > 0.4 * SIZE
    assert len({a["category_id"] for a in coco["annotations"]}) == len(SHAPE_CLASSES)
    assert np.mean([a["visible_fraction"] < 1 for a in coco["annotations"]]) > 0.1  # occlusion happens


def test_person_keypoints(with_person):
    _, coco = with_person
    person = [c for c in coco["categories"] if c["name"] == "person"]
    assert len(person) == 1 and person[0]["keypoints"] == list(PERSON_KEYPOINT_NAMES)
    assert len(PERSON_KEYPOINT_NAMES) == 13
    sk = np.array(person[0]["skeleton"])
    assert sk.min() >= 1 and sk.max() <= 13
    pid = person[0]["id"]
    n_persons = n_visible = n_occluded = 0
    for a in coco["annotations"]:
        kp = np.array(a["keypoints"]).reshape(-1, 3)
        assert kp.shape == (13, 3)
        assert a["num_keypoints"] == int((kp[:, 2] > 0).sum())
        if a["category_id"] != pid:
            assert not kp.any()
            continue
        n_persons += 1
        m = _decode(a)
        x, y, w, h = a["bbox"]
        for kx, ky, v in kp:
            if v == 0:
                assert kx == 0 and ky == 0
                continue
            assert 0 <= kx < SIZE and 0 <= ky < SIZE
            if v == 2:
                n_visible += 1
                assert m[ky, kx]
                assert x <= kx < x + w and y <= ky < y + h
            else:
                n_occluded += 1
                assert not m[ky, kx]
    assert n_persons >= 10 and n_visible > 0 and n_occluded >= 0
    assert any(c["name"] == "ring" for c in coco["categories"])


def test_left_is_viewer_right_for_upright_persons():
    """'left_*' keypoints sit to the image right of 'right_*' ones (figure faces the viewer, |rotation| <= 30 deg)."""
    rng = np.random.default_rng(0)
    li, ri = PERSON_KEYPOINT_NAMES.index("left_shoulder"), PERSON_KEYPOINT_NAMES.index("right_shoulder")
    hl, hr = PERSON_KEYPOINT_NAMES.index("left_hip"), PERSON_KEYPOINT_NAMES.index("right_hip")
    for _ in range(50):
        _, kps = person_keypoints.person_figure(rng, 100.0)
        assert kps[li, 0] > kps[ri, 0] and kps[hl, 0] > kps[hr, 0]
