"""The ablation harness (the ablations package beside train_net.py), its configs and the paper numbers.

Fast: the runner is exercised on a fake 2-arm table with a fake train_net subprocess that writes the files a
real run writes (eval_results.json, coco_instances_results.json, model_final.pth); one test runs a real
train_net.py subprocess for 2 iterations on a tiny generated dataset.
"""
import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
import yaml

from ablations import records
from ablations.cli import add_ablation_arguments, run_ablation_from_args, split_seeds_and_opts
from ablations.metrics import IOU_THRESHOLDS, ap_per_iou, final_train_loss
from ablations.paths import arm_config_path, arm_output_dir
from ablations.records import SHARED_RUN, failure_path, git_commit, load_arm_cfg, load_results, result_path
from ablations.report import write_report
from ablations.runner import CONFIG_STAMP, run_arm, run_table
from ablations.tables import PAPER_GAINS, PAPER_TABLES, TABLES, AblationTable, Arm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_MD = os.path.join(os.path.dirname(REPO), "shared", "reference", "paper_tables.md")
CONFIG_ROOT = os.path.join(REPO, "configs", "ablations")

TINY_DATA = ["DATASETS.TRAIN", "('shapes_abltrain_s5_n8_px128',)", "DATASETS.TEST", "('shapes_ablval_s6_n4_px128',)"]


def tiny_opts(tmp_path, max_iter=2):
    return [
        "DATASETS.SHAPES.ROOT", str(tmp_path / "data"), *TINY_DATA,
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0", "TEST.VIS_NUM_IMAGES", "0",
    ]


# ------------------------------------------------------------------------------------------------------------
# Paper numbers: ablations/tables/*.yaml against the reference md file
# ------------------------------------------------------------------------------------------------------------
def _md_tables(text):
    """{'2a': [ {header: cell} ... ], ...} for the '### 2x.' sections of paper_tables.md."""
    out = {}
    for m in re.finditer(r"^### (2[a-e])\.(.*?)(?=^### |^## )", text, flags=re.S | re.M):
        lines = [ln.strip() for ln in m.group(2).splitlines() if ln.strip().startswith("|")]
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        rows = [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]
        out[m.group(1)] = rows
    return out


_MD_COL = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "box_AP": "AP bb", "box_AP50": "AP50 bb", "box_AP75": "AP75 bb"}


@pytest.mark.skipif(not os.path.isfile(PAPER_MD), reason="shared/reference/paper_tables.md not present")
def test_paper_tables_match_reference_md():
    text = open(PAPER_MD, encoding="utf-8").read()
    md = _md_tables(text)
    assert set(md) == {"2a", "2b", "2c", "2d", "2e"}
    assert set(PAPER_TABLES) == set(md) | {"3", "4", "5"}
    for table, spec in PAPER_TABLES.items():
        if table not in md:  # Table 3 and the keypoint tables 4, 5: the two tests below
            continue
        md_rows = [r for r in md[table] if not next(iter(r.values())).startswith("gain")]
        ours = [(k, v) for k, v in spec["rows"].items() if k != "class-agnostic"]
        assert len(md_rows) == len(ours), table
        for (label, values), row in zip(ours, md_rows):
            first = next(iter(row.values()))
            assert label.split(" ")[0] == first.split(" ")[0], (table, label, first)
            if table == "2c":  # RoIPool / RoIWarp / RoIAlign x max / avg
                assert label == f"{first} ({row['agg']})"
            for metric, value in values.items():
                assert float(row[_MD_COL[metric]]) == value, (table, label, metric)
        gain_rows = [r for r in md[table] if next(iter(r.values())).startswith("gain")]
        if table in PAPER_GAINS:
            assert len(gain_rows) == 1
            for metric, value in PAPER_GAINS[table].items():
                assert float(gain_rows[0][_MD_COL[metric]]) == value
                # ...and the gains derived from the rows agree with the printed ones
                rows = list(spec["rows"].values())
                assert rows[1][metric] - rows[0][metric] == pytest.approx(value, abs=0.051)
    m = re.search(r"class-agnostic masks[^\n]*?reach (\d+\.\d) AP vs (\d+\.\d)", text)
    assert m and float(m.group(1)) == PAPER_TABLES["2b"]["rows"]["class-agnostic"]["AP"]
    assert float(m.group(2)) == PAPER_TABLES["2b"]["rows"]["sigmoid"]["AP"]


def _md_section_rows(text, table):
    """The rows ({header: cell}) of the '## Table <table> —' section of paper_tables.md."""
    m = re.search(rf"^## Table {table} —(.*?)(?=^## )", text, flags=re.S | re.M)
    assert m, table
    lines = [ln.strip() for ln in m.group(1).splitlines() if ln.strip().startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


_BOX_MD_COL = {"box_AP": "AP bb", "box_AP50": "AP50", "box_AP75": "AP75", "box_APs": "APS", "box_APm": "APM",
               "box_APl": "APL"}


@pytest.mark.skipif(not os.path.isfile(PAPER_MD), reason="shared/reference/paper_tables.md not present")
def test_detection_paper_table_matches_reference_md():
    """Table 3 (box AP, APS/APM/APL) against the md file row by row; a method named twice (Mask R-CNN on
    ResNet-101-FPN and on ResNeXt-101-FPN) is told apart by its backbone, and the rows our arms reproduce are
    the paper's ResNet-101-FPN ones."""
    md_rows = _md_section_rows(open(PAPER_MD, encoding="utf-8").read(), "3")
    ours = PAPER_TABLES["3"]["rows"]
    assert len(md_rows) == len(ours)
    for (label, values), row in zip(ours.items(), md_rows):
        assert label in (row["method"], f"{row['method']}, {row['backbone']}"), (label, row)
        assert set(values) == set(_BOX_MD_COL), label
        for metric, value in values.items():
            assert float(row[_BOX_MD_COL[metric]]) == value, (label, metric)
    backbone = {r["method"]: r["backbone"] for r in reversed(md_rows)}  # the first row of a repeated method
    for scale in ("cpu", "coco"):
        assert {backbone[a.paper_row] for a in TABLES["3"].arms[scale]} == {"ResNet-101-FPN"}


_KP_MD_COL = {"kp_AP": "AP kp", "kp_AP50": "AP50", "kp_AP75": "AP75", "kp_APm": "APM", "kp_APl": "APL"}


@pytest.mark.skipif(not os.path.isfile(PAPER_MD), reason="shared/reference/paper_tables.md not present")
def test_keypoint_paper_tables_match_reference_md():
    """Tables 4 and 5 (keypoint AP, APM, APL) of ablations/tables/ against the md file, row by row."""
    text = open(PAPER_MD, encoding="utf-8").read()
    for table in ("4", "5"):
        md_rows = _md_section_rows(text, table)
        ours = PAPER_TABLES[table]["rows"]
        assert [r["method"] for r in md_rows] == list(ours), table
        for row in md_rows:
            values = ours[row["method"]]
            assert set(values) == set(_KP_MD_COL), (table, row["method"])
            for metric, value in values.items():
                assert float(row[_KP_MD_COL[metric]]) == value, (table, row["method"], metric)
    # the keypoint head the configs implement is the one the md file describes
    assert "8 × (3×3, 512) convs" in text and "56×56" in text and "17 keypoints" in text


def test_every_paper_row_named_by_an_arm_exists():
    for tab in TABLES.values():
        for scale, arms in tab.arms.items():
            for arm in arms:
                if arm.paper_row is None:  # an arm the paper has no number for (Table 4's ResNet-101-FPN)
                    assert tab.key == "4" and arm.name.startswith("r101"), (tab.key, scale, arm)
                    continue
                assert arm.paper_row in PAPER_TABLES[tab.paper_key]["rows"], (tab.key, scale, arm)


def test_table_data_files():
    """ablations/tables/<key>.yaml: `same_as: cpu` gives the COCO scale the CPU arms, baseline and ablated keys
    (not the note), with the labels the data overrides; every note file is used; a typo in a field fails."""
    from ablations.tables import NOTES_DIR

    for key in ("2b", "2c", "2e"):
        tab = TABLES[key]
        assert [a.name for a in tab.arms["coco"]] == [a.name for a in tab.arms["cpu"]]
        assert tab.baseline["coco"] == tab.baseline["cpu"] and tab.ablated_keys["coco"] == tab.ablated_keys["cpu"]
        assert "coco" not in tab.notes
    labels = {s: {a.name: a.label for a in TABLES["2e"].arms[s]} for s in ("cpu", "coco")}
    assert labels["cpu"]["fcn"] == "FCN, 4 conv 128" and labels["coco"]["fcn"] == "FCN, 4 conv 256"
    assert {k: v for k, v in labels["coco"].items() if k != "fcn"} == {k: v for k, v in labels["cpu"].items()
                                                                       if k != "fcn"}
    assert TABLES["4"].notes["cpu"].startswith("R-18-FPN (FPN width 128") and "\n" not in TABLES["4"].notes["cpu"]
    used = {"cpu_common.md", "coco_common.md", "README.md"}
    tables_dir = os.path.join(REPO, "ablations", "tables")
    for name in os.listdir(tables_dir):
        if name.endswith(".yaml"):
            for spec in yaml.safe_load(open(os.path.join(tables_dir, name)))["scales"].values():
                used.update(spec.get("note", []))
    assert set(os.listdir(NOTES_DIR)) == used


def test_the_plugin_never_imports_the_harness():
    """The dependency runs one way: ablations/ uses maskrcnn_plugin, no component imports ablations/."""
    import ast

    offenders = []
    for path in glob.glob(os.path.join(REPO, "maskrcnn_plugin", "**", "*.py"), recursive=True):
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [(os.path.relpath(path, REPO), n) for n in names if n.split(".")[0] == "ablations"]
    assert not offenders

def test_a_typo_in_a_table_file_is_an_error(tmp_path):
    from ablations.tables import load_table

    (tmp_path / "x.yaml").write_text("title: t\nscales:\n  cpu:\n    baselin: a\n    arms: []\n")
    with pytest.raises(ValueError, match="unknown fields.*baselin"):
        load_table(str(tmp_path / "x.yaml"))
    (tmp_path / "y.yaml").write_text("title: t\nscales:\n  cpu:\n    baseline: b\n    ablated_keys: []\n"
                                     "    arms: [{name: a, label: A, paper_row: null}]\n")
    with pytest.raises(ValueError, match="baseline 'b' is not an arm"):
        load_table(str(tmp_path / "y.yaml"))


# ------------------------------------------------------------------------------------------------------------
# Per-IoU-threshold AP
# ------------------------------------------------------------------------------------------------------------
def _rle(mask):
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def _box_mask(h, w, x, y, bw, bh):
    m = np.zeros((h, w), dtype=bool)
    m[y:y + bh, x:x + bw] = True
    return m


def _write_gt(tmp_path, objects, size=256):
    """objects: [(image_id, category_id, x, y, w, h)] -> COCO json of rectangular masks."""
    images = [{"id": i, "file_name": f"{i}.png", "height": size, "width": size} for i in sorted({o[0] for o in objects})]
    anns = []
    for k, (img, cat, x, y, w, h) in enumerate(objects):
        anns.append({"id": k + 1, "image_id": img, "category_id": cat, "bbox": [x, y, w, h], "area": w * h,
                     "iscrowd": 0, "segmentation": _rle(_box_mask(size, size, x, y, w, h))})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return str(path)


def _predictions(objects, dx=0, size=256):
    return [{"image_id": img, "category_id": cat, "bbox": [x + dx, y, w, h], "score": 0.9,
             "segmentation": _rle(_box_mask(size, size, x + dx, y, w, h))} for img, cat, x, y, w, h in objects]


def test_ap_per_iou_perfect_prediction_is_100_at_every_threshold(tmp_path):
    objects = [(1, 1, 10, 20, 50, 40), (1, 2, 100, 100, 80, 60), (2, 1, 30, 30, 20, 90)]
    gt = _write_gt(tmp_path, objects)
    for task in ("bbox", "segm"):
        assert ap_per_iou(gt, _predictions(objects), task) == pytest.approx([100.0] * 10)
    pred_file = tmp_path / "pred.json"
    pred_file.write_text(json.dumps(_predictions(objects)))
    assert ap_per_iou(gt, str(pred_file), "segm") == pytest.approx([100.0] * 10)
    assert ap_per_iou(gt, [], "segm") == [0.0] * 10


def test_ap_per_iou_shifted_prediction(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    # 100x100 box shifted by 20 px: IoU = 80*100 / (2*100*100 - 80*100) = 2/3, so the detection is a true
    # positive at IoU thresholds 0.50..0.65 and a false positive from 0.70 on.
    objects = [(1, 1, 50, 50, 100, 100)]
    gt = _write_gt(tmp_path, objects)
    preds = _predictions(objects, dx=20)
    expected = [100.0 if t < 2 / 3 else 0.0 for t in IOU_THRESHOLDS]
    assert expected[:4] == [100.0] * 4 and expected[4:] == [0.0] * 6
    for task in ("bbox", "segm"):
        per_iou = ap_per_iou(gt, preds, task)
        assert per_iou == pytest.approx(expected)
        # the mean over thresholds is COCOeval's AP
        coco = COCO(gt)
        ev = COCOeval(coco, coco.loadRes(preds), task)
        ev.evaluate(), ev.accumulate(), ev.summarize()
        assert np.mean(per_iou) == pytest.approx(ev.stats[0] * 100)


# ------------------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------------------
ALL_CONFIGS = sorted(glob.glob(os.path.join(CONFIG_ROOT, "**", "*.yaml"), recursive=True))
ARMS = [(t.key, scale, a.name) for t in TABLES.values() for scale in ("cpu", "coco") if scale in t.arms
        for a in t.arms[scale]]


def _flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        if hasattr(v, "items"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _diff(a, b):
    fa, fb = _flat(a), _flat(b)
    return {k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k)} - {"OUTPUT_DIR"}


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=[os.path.relpath(p, CONFIG_ROOT) for p in ALL_CONFIGS])
def test_every_ablation_config_parses(path):
    from maskrcnn_plugin.config import check_maskrcnn_plugin_config

    cfg = load_arm_cfg(path)
    check_maskrcnn_plugin_config(cfg)


def test_config_files_and_table_arms_match():
    on_disk = set()
    for p in ALL_CONFIGS:
        parts = os.path.relpath(p, CONFIG_ROOT).split(os.sep)
        if len(parts) == 3 and not parts[2].startswith("Base-"):
            scale, table, name = parts
            on_disk.add((table, scale, name[:-len(".yaml")]))
    assert on_disk == set(ARMS)


def _pretrained(depth):
    """What a "pretrained" protocol arm sets besides its from-scratch arm: the pre-trained backbone, frozen BN,
    stem + res2 frozen."""
    return {"MODEL.WEIGHTS": f"shapes-pretrained://R-{depth}", "MODEL.RESNETS.NORM": "FrozenBN",
            "MODEL.BACKBONE.FREEZE_AT": 2}


# What each arm must set (besides inheriting everything else from its table's bases).
EXPECTED_ARM_KEYS = {
    ("2b", "softmax"): {"MODEL.ROI_MASK_HEAD.LOSS": "softmax", "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": False},
    ("2b", "sigmoid"): {"MODEL.ROI_MASK_HEAD.LOSS": "sigmoid", "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": False},
    ("2b", "sigmoid_agnostic"): {"MODEL.ROI_MASK_HEAD.LOSS": "sigmoid", "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": True},
    ("2c", "roipool"): {"MODEL.ROI_EXTRACTOR.METHOD": "RoIPool", "MODEL.ROI_EXTRACTOR.AGGREGATION": "max"},
    ("2c", "roiwarp_max"): {"MODEL.ROI_EXTRACTOR.METHOD": "RoIWarp", "MODEL.ROI_EXTRACTOR.AGGREGATION": "max"},
    ("2c", "roiwarp_avg"): {"MODEL.ROI_EXTRACTOR.METHOD": "RoIWarp", "MODEL.ROI_EXTRACTOR.AGGREGATION": "avg"},
    ("2c", "roialign_max"): {"MODEL.ROI_EXTRACTOR.METHOD": "RoIAlign", "MODEL.ROI_EXTRACTOR.AGGREGATION": "max"},
    ("2c", "roialign_avg"): {"MODEL.ROI_EXTRACTOR.METHOD": "RoIAlign", "MODEL.ROI_EXTRACTOR.AGGREGATION": "avg"},
    ("2d", "roipool"): {"MODEL.ROI_EXTRACTOR.METHOD": "RoIPool", "MODEL.ROI_EXTRACTOR.AGGREGATION": "max"},
    ("2d", "roialign"): {"MODEL.ROI_EXTRACTOR.METHOD": "RoIAlign", "MODEL.ROI_EXTRACTOR.AGGREGATION": "avg"},
    ("2e", "mlp_2fc"): {"MODEL.ROI_MASK_HEAD.NAME": "MaskRCNNMLPHead", "MODEL.ROI_MASK_HEAD.MLP_DIMS": [1024, 1024]},
    ("2e", "mlp_3fc"): {"MODEL.ROI_MASK_HEAD.NAME": "MaskRCNNMLPHead",
                        "MODEL.ROI_MASK_HEAD.MLP_DIMS": [1024, 1024, 1024]},
    ("2e", "fcn"): {"MODEL.ROI_MASK_HEAD.NAME": "MaskRCNNFCNHead"},
    ("2a", "r18_s16"): {"MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.OUT_FEATURES": ["res4"]},
    ("2a", "r34_s16"): {"MODEL.RESNETS.DEPTH": 34, "MODEL.RESNETS.OUT_FEATURES": ["res4"]},
    ("2a", "r18_fpn"): {"MODEL.RESNETS.DEPTH": 18, "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone"},
    ("2a", "r34_fpn"): {"MODEL.RESNETS.DEPTH": 34, "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone"},
    ("2a_2x", "r18_s16"): {"MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.OUT_FEATURES": ["res4"], "SOLVER.MAX_ITER": 1000},
    ("2a_2x", "r34_s16"): {"MODEL.RESNETS.DEPTH": 34, "MODEL.RESNETS.OUT_FEATURES": ["res4"], "SOLVER.MAX_ITER": 1000},
    ("2a", "r50_c4"): {"MODEL.RESNETS.DEPTH": 50, "MODEL.ROI_HEADS.NAME": "AblationRes5ROIHeads"},
    ("2a", "r101_c4"): {"MODEL.RESNETS.DEPTH": 101, "MODEL.ROI_HEADS.NAME": "AblationRes5ROIHeads",
                        "MODEL.WEIGHTS": "detectron2://ImageNetPretrained/MSRA/R-101.pkl"},
    ("2a", "r50_fpn"): {"MODEL.RESNETS.DEPTH": 50, "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone"},
    ("2a", "r101_fpn"): {"MODEL.RESNETS.DEPTH": 101, "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone"},
    ("2a", "x101_fpn"): {"MODEL.RESNETS.DEPTH": 101, "MODEL.RESNETS.NUM_GROUPS": 32,
                         "MODEL.RESNETS.WIDTH_PER_GROUP": 8, "SOLVER.IMS_PER_BATCH": 8, "SOLVER.BASE_LR": 0.01},
    ("4", "r18_fpn_kp"): {"MODEL.KEYPOINT_ON": True, "MODEL.MASK_ON": False, "MODEL.RESNETS.DEPTH": 18},
    ("4", "r18_fpn_kp_mask"): {"MODEL.KEYPOINT_ON": True, "MODEL.MASK_ON": True, "MODEL.RESNETS.DEPTH": 18},
    ("4", "r50_fpn_kp"): {"MODEL.KEYPOINT_ON": True, "MODEL.MASK_ON": False, "MODEL.RESNETS.DEPTH": 50},
    ("4", "r50_fpn_kp_mask"): {"MODEL.KEYPOINT_ON": True, "MODEL.MASK_ON": True, "MODEL.RESNETS.DEPTH": 50},
    ("4", "r101_fpn_kp"): {"MODEL.KEYPOINT_ON": True, "MODEL.MASK_ON": False, "MODEL.RESNETS.DEPTH": 101,
                           "MODEL.WEIGHTS": "detectron2://ImageNetPretrained/MSRA/R-101.pkl"},
    ("4", "r101_fpn_kp_mask"): {"MODEL.KEYPOINT_ON": True, "MODEL.MASK_ON": True, "MODEL.RESNETS.DEPTH": 101,
                                "MODEL.WEIGHTS": "detectron2://ImageNetPretrained/MSRA/R-101.pkl"},
    ("3", "faster_roipool"): {"MODEL.MASK_ON": False, "MODEL.ROI_EXTRACTOR.METHOD": "RoIPool",
                              "MODEL.ROI_EXTRACTOR.AGGREGATION": "max"},
    ("3", "faster_roialign"): {"MODEL.MASK_ON": False, "MODEL.ROI_EXTRACTOR.METHOD": "RoIAlign",
                               "MODEL.ROI_EXTRACTOR.AGGREGATION": "avg"},
    ("3", "mask_roialign"): {"MODEL.MASK_ON": True, "MODEL.ROI_EXTRACTOR.METHOD": "RoIAlign",
                             "MODEL.ROI_EXTRACTOR.AGGREGATION": "avg", "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone"},
    ("5", "roipool"): {"MODEL.KEYPOINT_ON": True, "MODEL.MASK_ON": False, "MODEL.ROI_EXTRACTOR.METHOD": "RoIPool",
                       "MODEL.ROI_EXTRACTOR.AGGREGATION": "max"},
    ("5", "roialign"): {"MODEL.KEYPOINT_ON": True, "MODEL.MASK_ON": False, "MODEL.ROI_EXTRACTOR.METHOD": "RoIAlign",
                        "MODEL.ROI_EXTRACTOR.AGGREGATION": "avg"},
}

# the "pretrained" protocol's arms: their from-scratch table's arm (all R-18 but 2a's R-34 arms) + the protocol
EXPECTED_ARM_KEYS.update({
    (f"{t}_pretrained", a.name): {**EXPECTED_ARM_KEYS[(t, a.name)],
                                  **_pretrained(EXPECTED_ARM_KEYS[(t, a.name)].get("MODEL.RESNETS.DEPTH", 18))}
    for t in ("2a", "2c", "2d", "2e") for a in TABLES[f"{t}_pretrained"].arms["cpu"]})
# 2a_pretrained_bn: 2a_pretrained's arms from the backbones with BN statistics re-estimated on shapes_train
EXPECTED_ARM_KEYS.update({
    ("2a_pretrained_bn", a.name): {**EXPECTED_ARM_KEYS[("2a_pretrained", a.name)],
                                   "MODEL.WEIGHTS": EXPECTED_ARM_KEYS[("2a_pretrained", a.name)]["MODEL.WEIGHTS"]
                                   + "@shapes_train"}
    for a in TABLES["2a_pretrained_bn"].arms["cpu"]})
# 2a_pretrained_init: 2a's arms (from-scratch protocol) with the pre-trained backbone as initialisation only
EXPECTED_ARM_KEYS.update({
    ("2a_pretrained_init", a.name): {**EXPECTED_ARM_KEYS[("2a", a.name)],
                                     "MODEL.WEIGHTS": EXPECTED_ARM_KEYS[("2a_pretrained", a.name)]["MODEL.WEIGHTS"]}
    for a in TABLES["2a_pretrained_init"].arms["cpu"]})


@pytest.mark.parametrize("table,scale", sorted({(t, s) for t, s, _ in ARMS}))
def test_arms_differ_only_in_the_ablated_component(table, scale):
    tab = TABLES[table]
    cfgs = {a.name: load_arm_cfg(arm_config_path(table, scale, a.name)) for a in tab.arms[scale]}
    base = cfgs[tab.baseline[scale]]
    allowed = tab.ablated_keys[scale]
    for name, cfg in cfgs.items():
        flat = _flat(cfg)
        for key, value in EXPECTED_ARM_KEYS[(table, name)].items():
            assert flat[key] == value, (table, scale, name, key)
        assert flat["OUTPUT_DIR"] == f"./output/ablations/{scale}/{table}/{name}/seed0"
        if name == tab.baseline[scale]:
            continue
        diff = _diff(cfg, base)
        assert diff, f"{table}/{name} is identical to the baseline"
        stray = {k for k in diff if not any(k == p or (p.endswith(".") and k.startswith(p)) for p in allowed)}
        assert not stray, f"{scale} {table}/{name} differs from the baseline outside the ablated keys: {stray}"
    # the component names are unique: no two arms with the same config
    names = list(cfgs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert _diff(cfgs[a], cfgs[b]), (a, b)
    union = set().union(*(_diff(cfgs[n], base) for n in names))
    assert union == EXACT_DIFF[(table, scale)], sorted(union)


_MASK = "MODEL.ROI_MASK_HEAD."
_EXTR = {"MODEL.ROI_EXTRACTOR.METHOD", "MODEL.ROI_EXTRACTOR.AGGREGATION"}
_BACKBONE_CPU = {"MODEL.RESNETS.DEPTH", "MODEL.BACKBONE.NAME", "MODEL.RESNETS.OUT_FEATURES", "MODEL.FPN.IN_FEATURES",
                 "MODEL.FPN.OUT_CHANNELS", "MODEL.ANCHOR_GENERATOR.SIZES", "MODEL.RPN.IN_FEATURES",
                 "MODEL.ROI_HEADS.IN_FEATURES"}
# Union over a table's arms of the keys in which an arm differs from the baseline arm: exactly the component.
EXACT_DIFF = {
    **{(t, s): {_MASK + "LOSS", _MASK + "CLS_AGNOSTIC_MASK"} for t, s in [("2b", "cpu"), ("2b", "coco")]},
    **{(t, s): _EXTR for t in ("2c", "2d", "5") for s in ("cpu", "coco")},
    ("4", "cpu"): {"MODEL.MASK_ON"},
    **{("3", s): _EXTR | {"MODEL.MASK_ON"} for s in ("cpu", "coco")},
    ("4", "coco"): {"MODEL.MASK_ON", "MODEL.RESNETS.DEPTH", "MODEL.WEIGHTS"},
    **{(t, s): {_MASK + "NAME", _MASK + "MLP_DIMS"} for t, s in [("2e", "cpu"), ("2e", "coco")]},
    ("2a", "cpu"): _BACKBONE_CPU,
    ("2a_2x", "cpu"): {"MODEL.RESNETS.DEPTH"},
    ("2a_pretrained", "cpu"): _BACKBONE_CPU | {"MODEL.WEIGHTS"},  # R-34's arms load the pre-trained R-34
    ("2a_pretrained_bn", "cpu"): _BACKBONE_CPU | {"MODEL.WEIGHTS"},
    ("2a_pretrained_init", "cpu"): _BACKBONE_CPU | {"MODEL.WEIGHTS"},
    ("2c_pretrained", "cpu"): _EXTR,
    ("2d_pretrained", "cpu"): _EXTR,
    ("2e_pretrained", "cpu"): {_MASK + "NAME", _MASK + "MLP_DIMS"},
    # C4 vs FPN also switches the RoI heads (res5 head, 64 RoIs, 300 proposals vs 2fc/4conv, 512, 1000), and
    # ResNeXt its weights, input normalisation and batch/lr.
    ("2a", "coco"): (_BACKBONE_CPU - {"MODEL.FPN.OUT_CHANNELS"}) | {
        "MODEL.PIXEL_STD", "MODEL.RESNETS.NUM_GROUPS", "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.RESNETS.WIDTH_PER_GROUP",
        "MODEL.ROI_BOX_HEAD.NAME", "MODEL.ROI_BOX_HEAD.NUM_FC", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "MODEL.ROI_HEADS.NAME", "MODEL.ROI_MASK_HEAD.NUM_CONV",
        "MODEL.RPN.POST_NMS_TOPK_TEST", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "MODEL.RPN.PRE_NMS_TOPK_TEST",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "MODEL.WEIGHTS", "SOLVER.BASE_LR", "SOLVER.IMS_PER_BATCH"},
}


@pytest.mark.parametrize("table", sorted(TABLES))
def test_cpu_arms_predict_their_datasets_classes(table):
    from maskrcnn_plugin.data import check_num_classes, register_datasets_from_cfg

    for a in TABLES[table].arms["cpu"]:
        cfg = load_arm_cfg(arm_config_path(table, "cpu", a.name))
        register_datasets_from_cfg(cfg)
        check_num_classes(cfg)


@pytest.mark.parametrize("table", sorted(TABLES))
def test_cpu_arms_share_data_schedule_and_seed(table):
    keys = ["DATASETS.TRAIN", "DATASETS.TEST", "SOLVER.MAX_ITER", "SOLVER.STEPS", "SOLVER.BASE_LR",
            "SOLVER.IMS_PER_BATCH", "SOLVER.WARMUP_ITERS", "SEED", "INPUT.MIN_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST",
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "MODEL.WEIGHTS"]
    cfgs = {a.name: _flat(load_arm_cfg(arm_config_path(table, "cpu", a.name))) for a in TABLES[table].arms["cpu"]}
    if TABLES[table].protocol:  # the weights follow the depth (2a_pretrained_bn: re-estimated on the train set)
        suffix = "@shapes_train" if table == "2a_pretrained_bn" else ""
        for flat in cfgs.values():
            assert flat["MODEL.WEIGHTS"] == f"shapes-pretrained://R-{flat['MODEL.RESNETS.DEPTH']}{suffix}"
            flat["MODEL.WEIGHTS"] = ""
    vals = {name: {k: flat[k] for k in keys} for name, flat in cfgs.items()}
    first = next(iter(vals.values()))
    assert all(v == first for v in vals.values()), vals
    if table in KEYPOINT_TABLES:
        assert first["DATASETS.TRAIN"] == ("shapes_person_train",) and first["DATASETS.TEST"] == ("shapes_person_val",)
    elif TABLES[table].paper_key == "2d":  # stride 32: large solid shapes, no distractors (see the table's note)
        assert first["DATASETS.TRAIN"] == ("shapes_solid_train",)
        assert first["DATASETS.TEST"] == ("shapes_solid_val",)
    else:
        assert first["DATASETS.TRAIN"] == ("shapes_train",) and first["DATASETS.TEST"] == ("shapes_val",)
    assert first["MODEL.WEIGHTS"] == ""


def test_table3_mask_rcnn_arm_is_table_2as_fpn_arm():
    """Table 3's Mask R-CNN arm has the config hash of Table 2a's FPN arm of the same backbone, so the runner
    shares 2a's runs instead of retraining; the detectors are that arm without the mask branch."""
    for scale, arm in (("cpu", "r18_fpn"), ("coco", "r101_fpn")):
        ours = load_arm_cfg(arm_config_path("3", scale, "mask_roialign"))
        theirs = load_arm_cfg(arm_config_path("2a", scale, arm))
        assert records.config_hash(ours) == records.config_hash(theirs), scale
        detector = load_arm_cfg(arm_config_path("3", scale, "faster_roialign"))
        assert _diff(detector, theirs) == {"MODEL.MASK_ON"}, scale


def test_gains_over_another_arm(tmp_path):
    """An arm with `gain_over` (Table 3's Mask R-CNN) is compared with that arm, paper gain and ours, paired
    by seed; the others with the baseline. A gain_over naming no other arm is an error."""
    from ablations.report import summarize_table
    from ablations.tables import load_table

    boxes = {"faster_roipool": 20.0, "faster_roialign": 22.0, "mask_roialign": 23.0}
    results = {arm: {s: {"metrics": {"bbox": {"AP": ap + s * (0.1 if arm == "mask_roialign" else 0.0)}}}
                     for s in (0, 1, 2)} for arm, ap in boxes.items()}
    summary = summarize_table(TABLES["3"], "cpu", results)
    box = {a["arm"]: a["metrics"]["box_AP"] for a in summary["arms"]}
    assert box["faster_roialign"]["gain"] == pytest.approx(2.0) and box["faster_roialign"]["paper_gain"] == 1.1
    assert box["mask_roialign"]["gain"] == pytest.approx(1.1) and box["mask_roialign"]["paper_gain"] == 0.9
    assert box["mask_roialign"]["gain_se"] == pytest.approx(0.1 / np.sqrt(3))
    assert [a.get("gain_over") for a in summary["arms"]] == [None, None, "faster_roialign"]
    (tmp_path / "x.yaml").write_text("title: t\nscales:\n  cpu:\n    baseline: a\n    ablated_keys: []\n"
                                     "    arms: [{name: a, label: A, paper_row: null},\n"
                                     "           {name: b, label: B, paper_row: null, gain_over: c}]\n")
    with pytest.raises(ValueError, match="arm b: gain_over 'c' is not another arm"):
        load_table(str(tmp_path / "x.yaml"))
    (tmp_path / "y.yaml").write_text("title: t\nscales:\n  cpu:\n    baseline: a\n    ablated_keys: []\n"
                                     "    arms: [{name: a, label: A, paper_row: null, gains_over: a}]\n")
    with pytest.raises(ValueError, match=r"arm 'a': unknown fields \['gains_over'\]"):
        load_table(str(tmp_path / "y.yaml"))


def test_2a_2x_arms_are_2as_stride16_arms_at_twice_the_schedule():
    for arm in ("r18_s16", "r34_s16"):
        ours = load_arm_cfg(arm_config_path("2a_2x", "cpu", arm))
        theirs = load_arm_cfg(arm_config_path("2a", "cpu", arm))
        assert _diff(ours, theirs) == {"SOLVER.MAX_ITER", "SOLVER.STEPS"}, arm
        assert ours.SOLVER.MAX_ITER == 2 * theirs.SOLVER.MAX_ITER
        assert tuple(ours.SOLVER.STEPS) == tuple(2 * s for s in theirs.SOLVER.STEPS)


def test_final_train_loss_reads_the_last_logged_iteration(tmp_path):
    assert final_train_loss(str(tmp_path)) is None  # no metrics.json (e.g. evaluated elsewhere)
    lines = [{"iteration": 19, "total_loss": 2.0, "loss_cls": 1.0, "lr": 0.01},
             {"iteration": 39, "total_loss": 1.2, "loss_cls": 0.5, "loss_mask": 0.7, "time": 1.0},
             {"iteration": 39, "bbox/AP": 10.0}]  # evaluation lines carry no loss
    text = "".join(json.dumps(x) + "\n" for x in lines) + '{"iteration": 59, "total_lo'  # cut short by a kill
    (tmp_path / "metrics.json").write_text(text)
    assert final_train_loss(str(tmp_path)) == {
        "iteration": 39, "total_loss": 1.2, "loss_cls": 0.5, "loss_mask": 0.7}


KEYPOINT_TABLES = ("4", "5")


def test_cpu_keypoint_arms_match_the_dataset_and_each_other():
    """CPU keypoint arms: the shapes_person metadata (13 keypoints, their OKS sigmas, 1 class), the paper's head
    structure (8 convs, 14x14 RoI features -> 56x56 heatmaps), and one schedule for Tables 4 and 5 (Table 4's
    keypoint-only arm is Table 5's RoIAlign arm)."""
    from detectron2.data import MetadataCatalog

    from maskrcnn_plugin.data import PERSON_KEYPOINT_NAMES, PERSON_KEYPOINT_OKS_SIGMAS

    meta = MetadataCatalog.get("shapes_person_train")
    cfgs = {(t, a.name): load_arm_cfg(arm_config_path(t, "cpu", a.name))
            for t in KEYPOINT_TABLES for a in TABLES[t].arms["cpu"]}
    for (t, name), c in cfgs.items():
        assert c.MODEL.KEYPOINT_ON and c.MODEL.ROI_HEADS.NAME == "AblationStandardROIHeads"
        assert c.MODEL.ROI_HEADS.NUM_CLASSES == len(meta.thing_classes) == 1 and meta.thing_classes == ["person"]
        kp = c.MODEL.ROI_KEYPOINT_HEAD
        assert kp.NUM_KEYPOINTS == len(PERSON_KEYPOINT_NAMES) == 13
        assert tuple(c.TEST.KEYPOINT_OKS_SIGMAS) == pytest.approx(PERSON_KEYPOINT_OKS_SIGMAS)
        assert kp.NAME == "MaskRCNNKeypointHead" and len(kp.CONV_DIMS) == 8 and kp.POOLER_RESOLUTION == 14
        assert c.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone" and c.MODEL.RESNETS.DEPTH == 18
    schedule = {k: (c.SOLVER.MAX_ITER, tuple(c.SOLVER.STEPS), c.SOLVER.IMS_PER_BATCH, c.SOLVER.BASE_LR)
                for k, c in cfgs.items()}
    assert len(set(schedule.values())) == 1, schedule
    assert not _diff(cfgs[("4", "r18_fpn_kp")], cfgs[("5", "roialign")])


def test_coco_keypoint_arms_follow_the_papers_settings():
    """Section 5: R-FPN person keypoints, scales 640-800, 90k iterations (lr 0.02, /10 at 60k and 80k), keypoint
    head 8 x conv 512 on 14x14 RoI features -> 56x56 (checked on the built model in test_coco_configs.py)."""
    for table in KEYPOINT_TABLES:
        for arm in TABLES[table].arms["coco"]:
            c = load_arm_cfg(arm_config_path(table, "coco", arm.name))
            assert c.DATASETS.TRAIN == ("keypoints_coco_2017_train",)
            assert c.DATASETS.TEST == ("keypoints_coco_2017_val",)
            assert c.MODEL.KEYPOINT_ON and c.MODEL.ROI_HEADS.NUM_CLASSES == 1
            assert c.MODEL.MASK_ON == arm.name.endswith("_mask")
            assert c.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
            assert c.MODEL.ROI_HEADS.NAME == "AblationStandardROIHeads"
            assert c.MODEL.RESNETS.DEPTH == (101 if arm.name.startswith("r101") else 50)
            assert c.MODEL.WEIGHTS == f"detectron2://ImageNetPretrained/MSRA/R-{c.MODEL.RESNETS.DEPTH}.pkl"
            assert tuple(c.INPUT.MIN_SIZE_TRAIN) == tuple(range(640, 801, 32))
            assert c.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice" and c.INPUT.MIN_SIZE_TEST == 800
            assert c.SOLVER.MAX_ITER == 90000 and tuple(c.SOLVER.STEPS) == (60000, 80000)
            assert (c.SOLVER.IMS_PER_BATCH, c.SOLVER.BASE_LR) == (16, 0.02)
            assert c.MODEL.ROI_HEADS.NMS_THRESH_TEST == 0.5
            kp = c.MODEL.ROI_KEYPOINT_HEAD
            assert tuple(kp.CONV_DIMS) == (512,) * 8 and kp.POOLER_RESOLUTION == 14 and kp.NUM_KEYPOINTS == 17
            assert kp.NAME == "MaskRCNNKeypointHead"
            assert list(c.TEST.KEYPOINT_OKS_SIGMAS) == []  # COCOeval's own 17 COCO sigmas
            assert c.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 512 and c.MODEL.RPN.POST_NMS_TOPK_TEST == 1000
            if c.MODEL.MASK_ON:
                assert c.MODEL.ROI_MASK_HEAD.NUM_CONV == 4 and c.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION == 14


def test_coco_arms_follow_the_papers_settings():
    for table, scale, arm in ARMS:
        if scale != "coco" or table in KEYPOINT_TABLES:  # Section 5 settings: the test above
            continue
        c = load_arm_cfg(arm_config_path(table, scale, arm))
        assert c.DATASETS.TRAIN == ("coco_2017_train",) and c.DATASETS.TEST == ("coco_2017_val",)
        assert c.INPUT.MIN_SIZE_TRAIN == (800,) and c.INPUT.MIN_SIZE_TEST == 800
        assert c.SOLVER.MAX_ITER == 160000 and tuple(c.SOLVER.STEPS) == (120000,)
        assert (c.SOLVER.IMS_PER_BATCH, c.SOLVER.BASE_LR) == ((8, 0.01) if arm == "x101_fpn" else (16, 0.02))
        assert c.MODEL.WEIGHTS.startswith("detectron2://ImageNetPretrained/")
        if c.MODEL.RESNETS.DEPTH == 50:
            assert c.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
        c4 = c.MODEL.ROI_HEADS.NAME == "AblationRes5ROIHeads"
        assert c4 == (table in ("2b", "2c") or arm.endswith("_c4")), (table, arm)
        assert c.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == (64 if c4 else 512)
        assert c.MODEL.RPN.POST_NMS_TOPK_TEST == (300 if c4 else 1000)
        if c4:  # 14x14 RoI features -> res5 (stride 2) -> 7x7 -> deconv -> 14x14 masks
            assert c.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION == 14 and c.MODEL.ROI_MASK_HEAD.NUM_CONV == 0
        else:  # 14x14 RoI features -> 4 convs -> deconv -> 28x28 masks
            assert c.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION == 14 and c.MODEL.ROI_MASK_HEAD.NUM_CONV == 4
        stride = {"res4": 16, "res5": 32}.get(c.MODEL.ROI_HEADS.IN_FEATURES[0])
        if table in ("2b", "2c"):
            assert stride == 16
        if table == "2d":
            assert stride == 32


# ------------------------------------------------------------------------------------------------------------
# The runner, with a fake train_net subprocess
# ------------------------------------------------------------------------------------------------------------
def _opt(argv, key):
    return argv[len(argv) - 1 - argv[::-1].index(key) + 1]


class FakeTrainNet:
    """Stands in for `train_net.py`: writes what a finished run writes. Arm "a" predicts the gt shifted by
    (3 + seed) px, arm "b" predicts it exactly; returns `fail_on` (arm, seed) with exit status 1."""

    def __init__(self, fail_on=None):
        self.calls = []
        self.fail_on = fail_on

    def __call__(self, argv, log_path):
        from pycocotools.coco import COCO

        from maskrcnn_plugin.data import prepare_dataset, register_datasets_from_cfg

        self.calls.append(list(argv))
        out = _opt(argv, "OUTPUT_DIR")
        seed = int(_opt(argv, "SEED"))
        arm = os.path.basename(os.path.dirname(out))
        os.makedirs(out, exist_ok=True)
        open(log_path, "a").write("fake\n")
        if self.fail_on == (arm, seed):
            open(log_path, "a").write("Traceback (most recent call last):\n"
                                      "FloatingPointError: Loss became infinite or NaN at iteration=3!\n")
            return 1
        config = _opt(argv, "--config-file")
        opts = argv[argv.index(config) + 1:]
        opts = [o for o in opts if o not in ("--eval-only", "--resume")]
        cfg = load_arm_cfg(config, opts)
        register_datasets_from_cfg(cfg)
        ds = cfg.DATASETS.TEST[0]
        gt_json = prepare_dataset(ds)
        coco = COCO(gt_json)
        dx = 0 if arm == "b" else 3 + seed
        preds = []
        for ann in coco.dataset["annotations"]:
            m = np.roll(coco.annToMask(ann), dx, axis=1)
            x, y, w, h = ann["bbox"]
            preds.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 0.9,
                          "bbox": [x + dx, y, w, h], "segmentation": _rle(m)})
        os.makedirs(os.path.join(out, "inference", ds), exist_ok=True)
        with open(os.path.join(out, "inference", ds, "coco_instances_results.json"), "w") as f:
            json.dump(preds, f)
        results = {}
        for task in ("bbox", "segm"):
            ap = ap_per_iou(gt_json, preds, task)
            results[task] = {"AP": float(np.mean(ap)), "AP50": ap[0], "AP75": ap[5]}
        with open(os.path.join(out, "eval_results.json"), "w") as f:
            json.dump(results, f)
        if "--eval-only" not in argv:
            # detectron2's metrics.json: one json line per logged iteration (arm a ends at the higher loss)
            with open(os.path.join(out, "metrics.json"), "a") as f:
                for it, loss in ((19, 3.0), (39, (1.5 if arm == "a" else 1.0) + 0.1 * seed)):
                    rec = {"iteration": it, "total_loss": loss, "loss_mask": loss / 2, "lr": 0.02}
                    f.write(json.dumps(rec) + "\n")
            for name in ("model_0000000.pth", "model_final.pth"):
                open(os.path.join(out, name), "wb").write(b"x")
            open(os.path.join(out, "last_checkpoint"), "w").write("model_final.pth")
        return 0


@pytest.fixture
def fake_table(tmp_path, monkeypatch):
    """Table "fake": arms a (RoIPool, baseline) and b (RoIAlign avg) = the 2c configs with tiny data."""
    configs = tmp_path / "configs"
    for arm, src in (("a", "roipool"), ("b", "roialign_avg")):
        d = configs / "cpu" / "fake"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{arm}.yaml").write_text(
            f'_BASE_: "{arm_config_path("2c", "cpu", src)}"\n'
            f'DATASETS:\n  TRAIN: {TINY_DATA[1]}\n  TEST: {TINY_DATA[3]}\n'
            f'  SHAPES:\n    ROOT: "{tmp_path / "data"}"\n'
        )
    tab = AblationTable(
        key="fake", title="fake 2c", paper_table="2c",
        arms={"cpu": [Arm("a", "RoIPool", "RoIPool (max)"), Arm("b", "RoIAlign", "RoIAlign (avg)")]},
        baseline={"cpu": "a"}, ablated_keys={"cpu": ("MODEL.ROI_EXTRACTOR.",)}, plot_iou=True,
        notes={"cpu": "A fake table for the tests."},
    )
    monkeypatch.setitem(TABLES, "fake", tab)
    return dict(configs_root=str(configs), results_root=str(tmp_path / "results"),
                output_root=str(tmp_path / "output"), docs_dir=str(tmp_path / "docs"))


def run_and_report(table, scale, seeds, *, configs_root, results_root, output_root, docs_dir, log=print, **kw):
    """What `train_net.py --ablation` does (cli.run_ablation_from_args): run the table's arms, then rebuild the
    report from all stored results (run_table itself writes no report)."""
    outcomes = run_table(table, scale, seeds, configs_root=configs_root, results_root=results_root,
                         output_root=output_root, log=log, **kw)
    write_report(results_root=results_root, docs_dir=docs_dir, configs_root=configs_root, log=log)
    return outcomes


def test_run_table_writes_no_report(fake_table):
    """The runner only runs and records the arms; the report is the command line's second step."""
    outcomes = run_table("fake", "cpu", [0], arms=["b"], runner=FakeTrainNet(), log=lambda *a: None,
                         configs_root=fake_table["configs_root"], results_root=fake_table["results_root"],
                         output_root=fake_table["output_root"])
    assert [o.status for o in outcomes] == ["done"]
    assert os.path.isfile(result_path("fake", "cpu", "b", 0, fake_table["results_root"]))
    assert not os.path.exists(fake_table["docs_dir"])
    assert not os.path.exists(os.path.join(fake_table["results_root"], "summary.json"))


def test_runner_trains_skips_resumes_and_evaluates(fake_table, tmp_path):
    fake = FakeTrainNet()
    logs = []
    outcomes = run_and_report("fake", "cpu", [0, 1], runner=fake, log=logs.append, **fake_table)
    assert [o.status for o in outcomes] == ["done"] * 4
    assert len(fake.calls) == 4
    files = sorted(glob.glob(os.path.join(fake_table["results_root"], "cpu", "fake", "*", "seed*.json")))
    assert [os.path.relpath(f, fake_table["results_root"]) for f in files] == [
        "cpu/fake/a/seed0.json", "cpu/fake/a/seed1.json", "cpu/fake/b/seed0.json", "cpu/fake/b/seed1.json"]
    rec = json.load(open(files[0]))
    for key in ("metrics", "ap_per_iou", "iou_thresholds", "wall_s", "commit", "command", "seed", "config"):
        assert key in rec
    assert rec["seed"] == 0 and set(rec["ap_per_iou"]) == {"bbox", "segm"} and len(rec["ap_per_iou"]["segm"]) == 10
    assert "--config-file" in rec["command"] and "SEED 0" in rec["command"] and "--resume" in rec["command"]
    assert rec["train_loss"] == {"iteration": 39, "total_loss": 1.5, "loss_mask": 0.75}  # the last logged losses
    b = json.load(open(files[2]))
    assert b["ap_per_iou"]["segm"] == pytest.approx([100.0] * 10)  # arm b predicts the gt exactly
    assert b["metrics"]["segm"]["AP"] == pytest.approx(100.0)
    # intermediate checkpoints removed, the final one kept
    out_a0 = arm_output_dir("fake", "cpu", "a", 0, fake_table["output_root"])
    assert os.path.exists(os.path.join(out_a0, "model_final.pth"))
    assert not os.path.exists(os.path.join(out_a0, "model_0000000.pth"))

    # report: paper and ours columns with mean ± std, gains, fewer-than-3-seeds notice, plot, json summary
    report = open(os.path.join(fake_table["docs_dir"], "ablations.md")).read()
    assert "### Table fake" in report and "| paper | ours (mean ± std) |" in report
    assert "paper gain" in report and "our gain ± SE" in report and "gain > 2·SE" in report
    assert re.search(r"\| \*\*RoIAlign\*\* \(RoIAlign \(avg\)\) \| mask AP \| 30\.3 \| 100\.0 ± 0\.0 \| 2 \| \+3\.4 \| "
                     r"\+\d+\.\d ± \d+\.\d \| (yes|no) \|", report), report
    assert "Fewer than 3 seeds" in report and "A fake table for the tests." in report
    assert "| final training loss (mean ± std, n) |" in report
    assert "| 1.550 ± 0.071 (2) |" in report and "| 1.050 ± 0.071 (2) |" in report
    assert "ablation_fake_ap_vs_iou.png" in report
    assert os.path.getsize(os.path.join(fake_table["docs_dir"], "images", "ablation_fake_ap_vs_iou.png")) > 1000
    summary = json.load(open(os.path.join(fake_table["results_root"], "summary.json")))
    fake_sum = [t for t in summary["tables"] if t["table"] == "fake"][0]
    arm_b = fake_sum["arms"][1]["metrics"]["AP"]
    assert arm_b["paper"] == 30.3 and arm_b["paper_gain"] == pytest.approx(3.4) and arm_b["n"] == 2
    assert arm_b["gain"] > 0 and arm_b["gain_se"] is not None

    # completed arms are skipped; a removed result is redone alone
    fake.calls.clear()
    outcomes = run_and_report("fake", "cpu", [0, 1], runner=fake, log=logs.append, **fake_table)
    assert [o.status for o in outcomes] == ["skipped"] * 4 and fake.calls == []
    os.remove(result_path("fake", "cpu", "b", 1, fake_table["results_root"]))
    outcomes = run_and_report("fake", "cpu", [0, 1], runner=fake, log=logs.append, **fake_table)
    assert [o.status for o in outcomes] == ["skipped", "skipped", "skipped", "done"] and len(fake.calls) == 1

    # --eval-only: every checkpoint re-evaluated without training, training wall time kept, table rebuilt
    os.remove(os.path.join(fake_table["docs_dir"], "ablations.md"))
    fake.calls.clear()
    before = json.load(open(files[0]))
    outcomes = run_and_report("fake", "cpu", [0, 1], eval_only=True, runner=fake, log=logs.append, **fake_table)
    assert [o.status for o in outcomes] == ["done"] * 4
    assert all("--eval-only" in c and "--resume" not in c for c in fake.calls)
    assert all(_opt(c, "MODEL.WEIGHTS").endswith(os.path.join(f"seed{_opt(c, 'SEED')}", "model_final.pth"))
               for c in fake.calls)
    after = json.load(open(files[0]))
    assert after["wall_s"] == before["wall_s"] and after["command"] == before["command"]
    assert "eval_wall_s" in after and "--eval-only" in after["eval_command"]
    assert after["metrics"] == before["metrics"]
    assert os.path.isfile(os.path.join(fake_table["docs_dir"], "ablations.md"))

    # --eval-only for a seed with neither checkpoint nor results: reported missing, nothing run
    fake.calls.clear()
    outcomes = run_and_report("fake", "cpu", [5], eval_only=True, runner=fake, log=logs.append, **fake_table)
    assert [o.status for o in outcomes] == ["missing", "missing"] and fake.calls == []


def test_checkpoints_of_another_config_are_set_aside_not_resumed(fake_table):
    """An output dir whose checkpoints came from another config (e.g. the arm's dataset changed) is moved to
    <dir>.stale-N and the arm trains from scratch; --eval-only refuses to evaluate it."""
    fake = FakeTrainNet()
    out = arm_output_dir("fake", "cpu", "a", 0, fake_table["output_root"])
    os.makedirs(out)
    open(os.path.join(out, "last_checkpoint"), "w").write("model_0000099.pth")
    open(os.path.join(out, "model_0000099.pth"), "wb").write(b"old")
    logs = []
    # eval-only on an unstamped (legacy) checkpoint evaluates it: it may come from elsewhere
    open(os.path.join(out, "model_final.pth"), "wb").write(b"old")
    outcomes = run_and_report("fake", "cpu", [0], arms=["a"], eval_only=True, runner=fake, log=logs.append,
                                   **fake_table)
    assert [o.status for o in outcomes] == ["done"]
    os.remove(result_path("fake", "cpu", "a", 0, fake_table["results_root"]))
    # training: the unstamped output is set aside, the new one is stamped with the config hash
    fake.calls.clear()
    outcomes = run_and_report("fake", "cpu", [0], arms=["a"], runner=fake, log=logs.append, **fake_table)
    assert [o.status for o in outcomes] == ["done"] and len(fake.calls) == 1
    assert open(os.path.join(out + ".stale-0", "model_0000099.pth"), "rb").read() == b"old"
    assert any("stale-0" in line and "another config" in line for line in logs)
    rec = json.load(open(result_path("fake", "cpu", "a", 0, fake_table["results_root"])))
    assert open(os.path.join(out, CONFIG_STAMP)).read().strip() == rec["config_hash"]
    assert rec["resumed"] is False
    # same config again (result removed): the stamped output is resumed, not set aside
    os.remove(result_path("fake", "cpu", "a", 0, fake_table["results_root"]))
    outcomes = run_and_report("fake", "cpu", [0], arms=["a"], runner=fake, log=logs.append, **fake_table)
    assert not os.path.exists(out + ".stale-1")
    assert json.load(open(result_path("fake", "cpu", "a", 0, fake_table["results_root"])))["resumed"] is True
    # a stamp of another config: --eval-only does not evaluate the old checkpoint
    open(os.path.join(out, CONFIG_STAMP), "w").write("0123abcd\n")
    fake.calls.clear()
    logs.clear()
    outcomes = run_and_report("fake", "cpu", [0], arms=["a"], eval_only=True, runner=fake, log=logs.append,
                                   **fake_table)
    assert fake.calls == [] and any("another config" in line for line in logs)


def test_an_arm_with_another_tables_config_shares_its_run(fake_table, monkeypatch):
    """Same config hash and seed as a stored run of another table (Table 4's keypoint-only arm = Table 5's
    RoIAlign arm): no second training; the report reads that run's metrics and says so; once the shared run is
    gone the arm trains."""
    d = os.path.join(fake_table["configs_root"], "cpu", "twin")
    os.makedirs(d)
    with open(os.path.join(d, "a2.yaml"), "w") as f:  # fake/a's config under another name
        f.write(f'_BASE_: "{os.path.join(fake_table["configs_root"], "cpu", "fake", "a.yaml")}"\n')
    monkeypatch.setitem(TABLES, "twin", AblationTable(
        key="twin", title="twin of fake", paper_table="2c", arms={"cpu": [Arm("a2", "RoIPool again", "RoIPool (max)")]},
        baseline={"cpu": "a2"}, ablated_keys={"cpu": ()}))
    fake = FakeTrainNet()
    run_and_report("fake", "cpu", [0, 1], arms=["a"], runner=fake, log=lambda *a: None, **fake_table)
    fake.calls.clear()
    logs = []
    outcomes = run_and_report("twin", "cpu", [0, 1, 2], runner=fake, log=logs.append, **fake_table)
    # seeds 0 and 1 share fake/a's runs; seed 2 has none to share and trains
    assert [o.status for o in outcomes] == ["shared", "shared", "done"]
    assert [_opt(c, "SEED") for c in fake.calls] == ["2"]
    shared = json.load(open(result_path("twin", "cpu", "a2", 0, fake_table["results_root"])))
    assert shared[SHARED_RUN] == "fake/a/seed0.json" and "metrics" not in shared
    results = load_results(fake_table["results_root"])["cpu"]
    assert results["twin"]["a2"][1]["metrics"] == results["fake"]["a"][1]["metrics"]
    assert results["twin"]["a2"][1]["wall_s"] == results["fake"]["a"][1]["wall_s"]
    assert results["twin"]["a2"][1]["arm"] == "a2"
    report = open(os.path.join(fake_table["docs_dir"], "ablations.md")).read()
    assert "(seed 0, 1: the runs of fake/a, same config, not retrained)" in report
    # the suite's time counts the 3 trained runs once (fake a: 2 seeds, twin a2 seed 2), not the shared ones
    assert "Whole CPU suite so far: 3 trained arm+seed runs" in report
    # the run it shared is removed (e.g. to be retrained): the arm trains its own
    os.remove(result_path("fake", "cpu", "a", 1, fake_table["results_root"]))
    assert 1 not in load_results(fake_table["results_root"])["cpu"]["twin"]["a2"]
    fake.calls.clear()
    logs.clear()
    outcomes = run_and_report("twin", "cpu", [0, 1], runner=fake, log=logs.append, **fake_table)
    assert [o.status for o in outcomes] == ["skipped", "done"] and [_opt(c, "SEED") for c in fake.calls] == ["1"]
    assert any("fake/a/seed1.json" in line and "gone" in line for line in logs)
    assert SHARED_RUN not in json.load(open(result_path("twin", "cpu", "a2", 1, fake_table["results_root"])))


def test_commit_is_dirty_for_changed_code_not_for_the_generated_report(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    for rel in ("train_net.py", "docs/ablations.md", "results/ablations/summary.json"):
        os.makedirs(os.path.dirname(str(tmp_path / rel)) or str(tmp_path), exist_ok=True)
        (tmp_path / rel).write_text("v1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "init")
    monkeypatch.setattr(records, "REPO_ROOT", str(tmp_path))
    assert git_commit()[1] is False
    (tmp_path / "docs" / "ablations.md").write_text("v2\n")  # what every finished arm rewrites
    (tmp_path / "results" / "ablations" / "summary.json").write_text("v2\n")
    (tmp_path / "results" / "ablations" / "new.json").write_text("{}\n")
    assert git_commit()[1] is False
    (tmp_path / "train_net.py").write_text("v2\n")
    sha, dirty = git_commit()
    assert dirty is True and len(sha) == 40


def test_a_failing_arm_does_not_stop_the_suite(fake_table):
    fake = FakeTrainNet(fail_on=("a", 0))
    outcomes = run_and_report("fake", "cpu", [0], runner=fake, log=lambda *a: None, **fake_table)
    assert [(o.arm, o.status) for o in outcomes] == [("a", "failed"), ("b", "done")]
    assert not os.path.exists(result_path("fake", "cpu", "a", 0, fake_table["results_root"]))
    assert os.path.exists(result_path("fake", "cpu", "b", 0, fake_table["results_root"]))
    report = open(os.path.join(fake_table["docs_dir"], "ablations.md")).read()
    assert "| **RoIPool** (RoIPool (max)) | mask AP | 26.9 | — | 0 |" in report
    # the failure is recorded beside the results and named in the report, until a rerun replaces it
    fail_file = failure_path("fake", "cpu", "a", 0, fake_table["results_root"])
    assert json.load(open(fail_file))["error"] == "FloatingPointError: Loss became infinite or NaN at iteration=3!"
    assert "- RoIPool, seed 0: FloatingPointError: Loss became infinite or NaN at iteration=3!" in report
    outcomes = run_and_report("fake", "cpu", [0], runner=FakeTrainNet(), log=lambda *a: None, **fake_table)
    assert [(o.arm, o.status) for o in outcomes] == [("a", "done"), ("b", "skipped")]
    assert not os.path.exists(fail_file)
    assert "- RoIPool, seed 0:" not in open(os.path.join(fake_table["docs_dir"], "ablations.md")).read()


def test_a_table_whose_only_run_failed_still_lists_the_failure(fake_table):
    outcomes = run_and_report("fake", "cpu", [0], arms=["a"], runner=FakeTrainNet(fail_on=("a", 0)),
                                   log=lambda *a: None, **fake_table)
    assert [o.status for o in outcomes] == ["failed"]
    report = open(os.path.join(fake_table["docs_dir"], "ablations.md")).read()
    fake_section = report[report.index("### Table fake"):]
    assert "**No results yet.**" in fake_section
    assert "- RoIPool, seed 0: FloatingPointError: Loss became infinite or NaN at iteration=3!" in fake_section


def test_command_line_flags_and_exit_status(fake_table, monkeypatch):
    from detectron2.engine import default_argument_parser

    parser = add_ablation_arguments(default_argument_parser())
    args = parser.parse_args([
        "--ablation", "fake", "--results-dir", fake_table["results_root"], "--ablation-output",
        fake_table["output_root"], "--docs-dir", fake_table["docs_dir"], "--ablation-configs",
        fake_table["configs_root"], "--seeds", "0", "1", "SOLVER.BASE_LR", "0.01",
    ])
    assert split_seeds_and_opts(args.seeds, args.opts) == ([0, 1], ["SOLVER.BASE_LR", "0.01"])
    assert split_seeds_and_opts(None, []) == ([0, 1, 2], [])
    fake = FakeTrainNet(fail_on=("b", 1))
    rc = run_ablation_from_args(args, runner=fake, log=lambda *a: None)
    assert rc == 1 and len(fake.calls) == 4
    assert all(c[c.index("SOLVER.BASE_LR") + 1] == "0.01" for c in fake.calls)
    rec = json.load(open(result_path("fake", "cpu", "a", 0, fake_table["results_root"])))
    assert rec["opts"] == ["SOLVER.BASE_LR", "0.01"]
    assert rec["suite_command"] == "python train_net.py --ablation fake --scale cpu --seeds 0 1 SOLVER.BASE_LR 0.01"


def test_arms_flag_runs_only_the_named_arms(fake_table):
    from detectron2.engine import default_argument_parser

    parser = add_ablation_arguments(default_argument_parser())
    common = ["--ablation", "fake", "--results-dir", fake_table["results_root"], "--ablation-output",
              fake_table["output_root"], "--docs-dir", fake_table["docs_dir"], "--ablation-configs",
              fake_table["configs_root"], "--seeds", "0", "1"]
    fake = FakeTrainNet()
    assert run_ablation_from_args(parser.parse_args(common + ["--arms", "b"]), runner=fake,
                                            log=lambda *a: None) == 0
    assert [(_opt(c, "SEED"), "b.yaml" in " ".join(c)) for c in fake.calls] == [("0", True), ("1", True)]
    rec = json.load(open(result_path("fake", "cpu", "b", 1, fake_table["results_root"])))
    assert "--arms b" in rec["suite_command"]
    with pytest.raises(ValueError, match="its arms are a, b"):
        run_ablation_from_args(parser.parse_args(common + ["--arms", "c"]), runner=fake, log=lambda *a: None)


def test_train_net_dispatches_ablation_report(tmp_path):
    """train_net.py --ablation report: the flags reach the runner through detectron2's argument parser."""
    res = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), "--ablation", "report", "--results-dir",
         str(tmp_path / "results"), "--docs-dir", str(tmp_path / "docs")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    report = (tmp_path / "docs" / "ablations.md").read_text()
    assert "GENERATED" in report and "### Table 2c" in report and "No results yet" in report
    assert "30.3" in report  # paper numbers shown even without results


def test_real_train_net_subprocess_then_eval_only(tmp_path):
    """One arm, one seed, 2 iterations through the real train_net.py, then --eval-only from its checkpoint."""
    kw = dict(results_root=str(tmp_path / "results"), output_root=str(tmp_path / "output"))
    opts = tiny_opts(tmp_path)
    logs = []
    out = run_arm("2c", "cpu", "roialign_avg", 0, opts=opts, log=logs.append, **kw)
    assert out.status == "done", "\n".join(logs) + open(out.log or os.devnull).read()[-3000:]
    rec = json.load(open(out.result_file))
    assert set(rec["metrics"]) == {"bbox", "segm"} and rec["max_iter"] == 2 and rec["wall_s"] > 0
    assert rec["config"] == "configs/ablations/cpu/2c/roialign_avg.yaml"
    assert rec["command"].startswith("python train_net.py --config-file configs/ablations/cpu/2c/roialign_avg.yaml")
    for task in ("bbox", "segm"):
        per_iou = rec["ap_per_iou"][task]
        assert len(per_iou) == 10
        # the recomputed per-IoU APs average to detectron2's own AP (both pycocotools)
        if not np.isnan(rec["metrics"][task]["AP"]):
            assert np.mean(per_iou) == pytest.approx(rec["metrics"][task]["AP"], abs=1e-6)
    out2 = run_arm("2c", "cpu", "roialign_avg", 0, opts=opts, eval_only=True, log=logs.append, **kw)
    assert out2.status == "done", "\n".join(logs)
    rec2 = json.load(open(out2.result_file))
    assert rec2["metrics"] == rec["metrics"] and rec2["wall_s"] == rec["wall_s"]


def test_report_shows_keypoint_metrics_beside_the_papers(tmp_path):
    """Tables 4/5 read COCOEvaluator's "keypoints" task: keypoint AP/AP50/AP75/APM/APL (mean ± std over seeds,
    paired gains) next to the paper's; an undefined APL (NaN: no large persons) shows as —."""
    results_root, docs = tmp_path / "results", tmp_path / "docs"
    for arm, base_ap in (("roipool", 40.0), ("roialign", 45.0)):
        for seed in (0, 1, 2):
            rec = {"table": "5", "scale": "cpu", "arm": arm, "seed": seed, "max_iter": 600, "wall_s": 600.0 + seed,
                   "metrics": {"bbox": {"AP": 50.0 + seed},
                               "keypoints": {"AP": base_ap + seed, "AP50": 80.0, "AP75": base_ap,
                                             "APm": base_ap - 1, "APl": float("nan")}}}
            path = result_path("5", "cpu", arm, seed, str(results_root))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(rec, f)
    write_report(results_root=str(results_root), docs_dir=str(docs), log=lambda *a: None)
    report = (docs / "ablations.md").read_text()
    section = report[report.index("### Table 5 — "):]
    section = section[:section.index("\n### ")] if "\n### " in section else section
    assert "| **RoIPool** (RoIPool) | keypoint AP | 59.8 | 41.0 ± 1.0 | 3 |  | (baseline) |  |" in section
    assert re.search(r"\| \*\*RoIAlign\*\* \(RoIAlign\) \| keypoint AP \| 64\.2 \| 46\.0 ± 1\.0 \| 3 \| \+4\.4 \| "
                     r"\+5\.0 ± 0\.0 \| (yes|no) \|", section), section
    assert "| keypoint APM | 58.7 | 44.0 ± 0.0 | 3 |" in section
    assert "| keypoint APL | 73.0 | — | 0 |" in section
    assert "| box AP | — | 51.0 ± 1.0 | 3 |" in section
    assert "shapes_person_train" in section  # schedule line / notes name the keypoint dataset
    summary = json.load(open(results_root / "summary.json"))
    t5 = [t for t in summary["tables"] if t["table"] == "5" and t["scale"] == "cpu"][0]
    assert t5["metrics"] == ["kp_AP", "kp_AP50", "kp_AP75", "kp_APm", "kp_APl", "box_AP"]
    # Table 4 without results: the paper's keypoint numbers, and "—" for its ResNet-101 arms (COCO scale is only
    # listed once it has results, so check the CPU section)
    t4 = report[report.index("### Table 4 — "):]
    assert ("| R-18-FPN, keypoint & mask | Mask R-CNN, keypoint & mask | 63.1 | 87.3 | 68.7 | 57.8 | 71.4 | — | — |"
            in t4)


def test_shard_flags_run_a_share_and_name_bad_combinations(fake_table):
    """--shard k/n through the command line (the workers themselves: tests/test_shards.py): worker 1 of 2 with
    --shard-only runs its share (a of seeds 0 and 1, every 2nd of the grid a0 b0 a1 b1) and records itself."""
    import signal

    from detectron2.engine import default_argument_parser

    parser = add_ablation_arguments(default_argument_parser())
    common = ["--ablation", "fake", "--results-dir", fake_table["results_root"], "--ablation-output",
              fake_table["output_root"], "--docs-dir", fake_table["docs_dir"], "--ablation-configs",
              fake_table["configs_root"], "--seeds", "0", "1"]
    for extra, message in ((["--shard", "3/2"], "k must be in 1..n"), (["--shard-only"], "--shard-only needs --shard"),
                           (["--shard", "1/2", "--eval-only"], "drop one of them"),
                           (["--shard", "1/2", "--claim-timeout", "0"], "--claim-timeout 0.0: must be a positive")):
        with pytest.raises(SystemExit, match=re.escape(message)):
            run_ablation_from_args(parser.parse_args(common + extra), runner=FakeTrainNet(), log=lambda *a: None)
    handler = signal.getsignal(signal.SIGTERM)
    fake, logs = FakeTrainNet(), []
    rc = run_ablation_from_args(parser.parse_args(common + ["--shard", "1/2", "--shard-only"]), runner=fake,
                                log=logs.append)
    assert rc == 0 and signal.getsignal(signal.SIGTERM) is handler
    assert [(os.path.basename(os.path.dirname(_opt(c, "OUTPUT_DIR"))), _opt(c, "SEED")) for c in fake.calls] == [
        ("a", "0"), ("a", "1")]
    rec = json.load(open(result_path("fake", "cpu", "a", 1, fake_table["results_root"])))
    assert rec["worker"]["shard"] == "1/2" and rec["suite_command"].endswith("--shard 1/2 --shard-only")
    assert "ablation summary: 2 done, 0 shared, 0 skipped, 0 failed, 0 missing, 0 claimed" in logs
    assert not glob.glob(os.path.join(fake_table["results_root"], "**", "*.claim.*"), recursive=True)


def test_report_sets_protocols_side_by_side():
    """A table with `protocol` (Table 2a's arms under another training protocol) gets its gains beside the
    usual protocol's: per arm, each protocol's gain ± SE over the row's reference arm (R-34-FPN over R-18-FPN:
    the depth gain), whether it exceeds 2 SE, and its distance from the paper's gain."""
    from ablations.report import protocols_markdown, summarize_table

    usual_tab = TABLES["2a"]
    variant = AblationTable(key="2a_pt", title="t", arms=usual_tab.arms, baseline=usual_tab.baseline,
                            ablated_keys=usual_tab.ablated_keys, paper_table="2a", protocol="pretrained")
    mask_ap = {"r18_s16": 10.0, "r34_s16": 9.0, "r18_fpn": 12.0, "r34_fpn": 11.0}

    def results(shift):
        return {arm: {s: {"metrics": {"segm": {"AP": ap + (shift + 0.1 * s if arm.startswith("r34") else 0.0)}}}
                      for s in (0, 1, 2)} for arm, ap in mask_ap.items()}

    usual = summarize_table(usual_tab, "cpu", results(0.0))
    pretrained = summarize_table(variant, "cpu", results(4.0))
    lines = protocols_markdown("cpu", usual, [(variant, pretrained)])
    text = "\n".join(lines)
    assert lines[0] == "### Table 2a under each training protocol (cpu scale)"
    assert "2a (from scratch): gain ± SE | > 2·SE | − paper | 2a_pt (pretrained): gain ± SE" in text
    # R-34-FPN over R-18-FPN: paper +1.8 (35.4 - 33.6); ours -1.0 + 0.1 s from scratch, +3.0 + 0.1 s pretrained
    row = next(ln for ln in lines if ln.startswith("| **R-34-FPN** (`r18_fpn`) | mask AP |"))
    assert row == "| **R-34-FPN** (`r18_fpn`) | mask AP | +1.8 | -0.9 ± 0.1 | no | -2.7 | +3.1 ± 0.1 | yes | +1.3 |"
    assert "| **R-34, stride-16 map (C4 stand-in)** (`r18_s16`) | mask AP | +2.4 |" in text
    assert not any(ln.startswith("| **R-18, stride-16") for ln in lines)  # the baseline has no gain row


def test_report_shows_each_arms_own_aps_under_each_protocol():
    """Beside the gains: per arm, mask AP, AP75, APl and box AP as mean ± std over its seeds, one column per
    protocol; an arm with one seed says so, one without runs is "—"."""
    from ablations.report import protocol_levels_markdown

    usual_tab = TABLES["2a"]
    variant = AblationTable(key="2a_pt", title="t", arms=usual_tab.arms, baseline=usual_tab.baseline,
                            ablated_keys=usual_tab.ablated_keys, paper_table="2a", protocol="pretrained")

    def rec(mask, box):
        return {"metrics": {"segm": {"AP": mask, "AP75": mask / 2, "APl": mask * 2}, "bbox": {"AP": box}}}

    results = {"2a": {"r18_fpn": {0: rec(10.0, 15.0), 1: rec(12.0, 17.0)}},
               "2a_pt": {"r18_fpn": {0: rec(5.0, 22.0)}}}
    lines = protocol_levels_markdown("cpu", [usual_tab, variant], results)
    assert "| arm | metric | 2a (from scratch) | 2a_pt (pretrained) |" in lines
    assert "| **r18_fpn** | mask AP | 11.0 ± 1.4 (n=2) | 5.0 (1 seed) |" in lines
    assert "|  | mask AP75 | 5.5 ± 0.7 (n=2) | 2.5 (1 seed) |" in lines
    assert "|  | box AP | 16.0 ± 1.4 (n=2) | 22.0 (1 seed) |" in lines
    assert "| **r34_fpn** | mask AP | — | — |" in lines


def test_a_protocol_table_is_its_paper_tables_arms(tmp_path):
    """A table with `protocol` trains the arms of its paper_table (same names, labels aside, same gain
    references) under that protocol; `protocol` without `paper_table` is an error."""
    from ablations.tables import load_table

    variants = [t for t in TABLES.values() if t.protocol]
    assert [t.key for t in variants] == ["2a_pretrained", "2a_pretrained_bn", "2a_pretrained_init", "2c_pretrained",
                                         "2d_pretrained", "2e_pretrained"]
    for tab in variants:
        usual = TABLES[tab.paper_table]
        for scale, arms in tab.arms.items():
            assert [(a.name, a.paper_row, a.gain_over) for a in arms] == [
                (a.name, a.paper_row, a.gain_over) for a in usual.arms[scale]]
            assert tab.baseline[scale] == usual.baseline[scale]
    (tmp_path / "x.yaml").write_text("title: t\nprotocol: pretrained\nscales:\n  cpu:\n    baseline: a\n"
                                     "    ablated_keys: []\n    arms: [{name: a, label: A, paper_row: null}]\n")
    with pytest.raises(ValueError, match="protocol 'pretrained' needs paper_table"):
        load_table(str(tmp_path / "x.yaml"))


def test_pretrained_weights_pin_the_config_hash_and_a_missing_backbone_is_not_trained(tmp_path, monkeypatch):
    """An arm's config hash holds the recipe that "shapes-pretrained://R-18" names now (a new recipe makes its
    results stale), and an arm whose backbone is not built is reported missing, naming the build command,
    without starting a subprocess or writing a failure."""
    from maskrcnn_plugin import pretrained

    monkeypatch.setenv(pretrained.ENV_CACHE_DIR, str(tmp_path / "cache"))
    cfg = load_arm_cfg(arm_config_path("2a_pretrained", "cpu", "r18_fpn"))
    before = records.config_hash(cfg)
    monkeypatch.setitem(pretrained.RECIPES, 18, {**pretrained.RECIPES[18], "max_iter": 7})
    assert records.config_hash(cfg) != before
    assert pretrained.pinned("shapes-pretrained://R-18") == "shapes-pretrained://" + pretrained.recipe_name(
        pretrained.recipe_for(18))
    calls, logs = [], []
    out = run_arm("2a_pretrained", "cpu", "r18_fpn", 0, results_root=str(tmp_path / "results"),
                  output_root=str(tmp_path / "out"), runner=lambda argv, log: calls.append(argv) or 0,
                  log=logs.append)
    assert out.status == "missing" and not calls
    assert "python tools/pretrain_backbone.py --depth 18" in "\n".join(logs)
    assert not glob.glob(str(tmp_path / "results" / "**" / "*.json"), recursive=True)


def test_report_lists_the_pretrained_backbones_with_their_curves(tmp_path):
    """The pre-training logs in results/pretraining/ become the report's backbone table (current recipes marked,
    missing ones named with their command) and a loss-curve plot; an old recipe's log stays as a row."""
    from ablations.pretraining_report import load_pretraining_records, pretrained_backbones_markdown
    from maskrcnn_plugin.pretrained import recipe_for, recipe_name

    def record(recipe, name, top1, curve, finished):
        return {"name": name, "recipe": recipe, "val_top1": top1, "final_train_loss": 0.9, "wall_s": 600.0,
                "train_images_per_s": 100.0, "loadavg_start": [1.5, 1, 1], "loadavg_end": [1.75, 1, 1],
                "finished": finished, **({"loss_curve": curve} if curve else {})}

    recs = tmp_path / "pretraining"
    recs.mkdir()
    r18 = recipe_for(18)
    current = record(r18, recipe_name(r18), 71.25, [[100, 4.7], [200, 3.1]], "2026-12-07T10:00:00")
    old = record({**r18, "zero_init_residual": False}, "R-18-0123456789ab", 70.77, None, "2026-12-07T08:50:40")
    for r in (current, old):
        (recs / f"{r['name']}.json").write_text(json.dumps(r))
    assert load_pretraining_records(str(tmp_path / "none")) == []
    records = load_pretraining_records(str(recs))
    assert [r["name"] for r in records] == ["R-18-0123456789ab", current["name"]]  # by depth, then time
    plot = tmp_path / "docs" / "images" / "pretraining_loss.png"
    text = "\n".join(pretrained_backbones_markdown(records, str(plot), str(tmp_path / "docs")))
    assert f"| `{current['name']}` | yes | 71.2 | 0.900 | 4.787 | 10.0 | 100.0 | 1.50 → 1.75 |" in text
    assert "| `R-18-0123456789ab` | no (older recipe) | 70.8 |" in text
    assert "No record yet for the current recipe of: R-34 (`python tools/pretrain_backbone.py --depth 34`)." in text
    assert plot.is_file() and "![pre-training loss curves](images/pretraining_loss.png)" in text
    text = "\n".join(pretrained_backbones_markdown([old], str(tmp_path / "p2.png"), str(tmp_path)))
    assert "loss curves" not in text and not (tmp_path / "p2.png").exists()  # no run logged a curve
