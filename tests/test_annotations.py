"""Annotation fields are checked before pycocotools sees them: malformed polygons, RLEs and keypoints are
dropped and counted, and a json that made pycocotools allocate without bound loads in seconds within 2 GB."""
import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pycocotools.mask as mask_util
import pytest

from maskrcnn_plugin.data import load_coco_json_checked
from maskrcnn_plugin.data.annotations import keypoints_problem, polygon_problem, rle_problem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("polygon, ok", [
    ([1, 2, 11, 2, 11, 7], True),
    ([-20, -20, 50, 0, 0, 40], True),  # outside the 32 x 24 image, but within one image size: clipped later
    ([1, 2, 11, 2], False),  # 2 points
    ([1, 2, 11, 2, 11], False),  # odd length
    ([1, 2, NAN, 2, 11, 7], False),
    ([1, 2, INF, 2, 11, 7], False),
    ([1, 2, "3", 2, 11, 7], False),
    ([1, 2, True, 2, 11, 7], False),
    ([1, 2, 1e9, 2, 11, 7], False),  # far outside: pycocotools would walk a billion-pixel edge
    ((1, 2, 11, 2, 11, 7), False),
])
def test_polygon_problem(polygon, ok):
    assert (polygon_problem(polygon, 24, 32) is None) == ok


def _runs(mask):
    """Run lengths of a mask in pycocotools' column-major order, starting with a run of zeros."""
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0] + runs


@pytest.mark.parametrize("seed", range(20))
def test_compressed_rle_decoding_matches_pycocotools_encoding(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 80, size=2)
    mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
    if seed % 3 == 0:  # long runs too (multi-character and negative deltas)
        mask[:] = 0
        mask[: h // 2] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    assert rle_problem(rle, int(h), int(w)) is None
    assert rle_problem({"size": [int(h), int(w)], "counts": rle["counts"].decode()}, int(h), int(w)) is None
    from maskrcnn_plugin.data.annotations import _compressed_counts

    assert _compressed_counts(rle["counts"]) == _runs(mask)


def test_rle_problem_names_the_fault():
    good = {"size": [4, 5], "counts": [3, 10, 7]}
    assert rle_problem(good, 4, 5) is None
    assert "differs from the image's" in rle_problem(good, 5, 4)
    assert "add up to 19" in rle_problem({"size": [4, 5], "counts": [3, 10, 6]}, 4, 5)
    assert "negative" in rle_problem({"size": [4, 5], "counts": [30, -10]}, 4, 5)
    assert "not [height, width]" in rle_problem({"size": [4.0, 5], "counts": [20]}, 4, 5)
    assert "not integers" in rle_problem({"size": [4, 5], "counts": [20.0]}, 4, 5)
    assert "neither" in rle_problem({"size": [4, 5], "counts": None}, 4, 5)
    enc = mask_util.encode(np.asfortranarray(np.ones((4, 5), np.uint8)))["counts"].decode()
    assert rle_problem({"size": [4, 5], "counts": enc}, 4, 5) is None
    for bad in (enc + "o", "\x7f" + enc, enc[:-1] + "h"):  # overlong, bad character, cut in a multi-char value
        assert rle_problem({"size": [4, 5], "counts": bad}, 4, 5) is not None, bad


@pytest.mark.parametrize("kps, n, ok", [
    ([1, 2, 2, 3, 4, 0], 2, True),
    ([1, 2, 2, 3, 4, 0], None, True),
    ([1, 2, 2, 3, 4, 0], 3, False),
    ([1, 2, 2, 3, 4], None, False),
    ([1, NAN, 2, 3, 4, 0], None, False),
    ([1, 2, 3, 3, 4, 0], None, False),
    ("1 2 2", None, False),
])
def test_keypoints_problem(kps, n, ok):
    assert (keypoints_problem(kps, n) is None) == ok


def _malformed_coco(img_dir):
    from PIL import Image

    Image.new("RGB", (32, 24)).save(img_dir / "0.png")
    ok_rle = mask_util.encode(np.asfortranarray(np.pad(np.ones((4, 4), np.uint8), ((0, 20), (0, 28)))))
    base = {"image_id": 1, "category_id": 1, "iscrowd": 0, "area": 50, "bbox": [1, 2, 10, 5]}
    segms = [
        [[1, 2, 11, 2, 11, 7, 1, 7]],  # kept
        [[1, 2, 11, NAN, 11, 7, 1, 7]],  # the polygon that took a machine down: dropped
        [[1e12, 2, 11, 2, 11, 7]],  # dropped
        [[1, 2, 11, 2, 11, 7, 1, 7], [1, 2, 11, INF, 11, 7]],  # kept, its second polygon removed
        {"size": [24, 32], "counts": ok_rle["counts"].decode()},  # kept
        {"size": [10 ** 9, 10 ** 9], "counts": ok_rle["counts"].decode()},  # dropped: decoding would allocate 1e18
        {"size": [24, 32], "counts": [0, 10 ** 9]},  # dropped: would overrun the mask buffer
        {"size": [24, 32], "counts": "?" * 50},  # dropped
    ]
    anns = [dict(base, id=i + 1, segmentation=s) for i, s in enumerate(segms)]
    anns.append(dict(base, id=100, segmentation=segms[0], keypoints=[1, 2, 2, 5, NAN, 2]))  # dropped
    return {
        "images": [{"id": 1, "file_name": "0.png", "height": 24, "width": 32}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "a", "keypoints": ["p", "q"]}],
    }


def test_malformed_annotations_dropped_and_counted(tmp_path, caplog):
    json_file = tmp_path / "bad.json"
    json_file.write_text(json.dumps(_malformed_coco(tmp_path)))  # json.dumps writes NaN / Infinity
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json_checked(json_file, tmp_path)
    assert len(dicts[0]["annotations"]) == 3
    warnings = [r.getMessage() for r in caplog.records if str(json_file) in r.getMessage()]
    assert len(warnings) == 1
    assert "2 annotation(s) without a valid polygon" in warnings[0]
    assert "3 annotation(s) with a malformed RLE" in warnings[0]
    assert "1 annotation(s) with malformed keypoints" in warnings[0]
    assert "removed 3 malformed polygon(s)" in warnings[0]


def test_nan_polygon_json_loads_in_seconds_within_2gb(tmp_path):
    json_file = tmp_path / "bad.json"
    json_file.write_text(json.dumps(_malformed_coco(tmp_path)))
    script = textwrap.dedent(f"""
        import resource
        from maskrcnn_plugin.data import load_coco_json_checked
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
        limit = vm + (2 << 30)  # 2 GB beyond what the imports mapped: a regression dies with MemoryError here
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        dicts = load_coco_json_checked({str(json_file)!r}, {str(tmp_path)!r})
        print("annotations", len(dicts[0]["annotations"]))
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "annotations 3" in res.stdout


def test_image_size_must_be_positive_integers(tmp_path):
    coco = _malformed_coco(tmp_path)
    coco["images"][0]["height"] = float("nan")
    json_file = tmp_path / "bad.json"
    json_file.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"image id 1 has height nan and width 32; both must be positive integers"):
        load_coco_json_checked(json_file, tmp_path)
