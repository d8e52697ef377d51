"""The Mask R-CNN paper's ablation numbers (He, Gkioxari, Dollár, Girshick, ICCV 2017, Tables 2a-e, 4, 5).

Transcribed from ``shared/reference/paper_tables.md`` (beside the repository: ``../shared/reference/``), the
project's only source for paper figures; ``tests/test_ablations.py`` parses that file and checks every number
below against it. All values are AP in percent: mask AP unless the metric is prefixed ``box_`` (Table 2d's
"AP bb" columns) or ``kp_`` (keypoint AP, Tables 4 and 5: "AP kp", AP50, AP75, APM, APL). Table 2 and Table 5
are COCO minival, Table 4 is COCO test-dev. A missing metric means the paper does not report it (e.g. the
class-agnostic mask result of Table 2b is given in the text as AP only; Table 4 has keypoint AP only).

Layout: ``PAPER_TABLES[table]["rows"][row] = {metric: value}``, where ``row`` is the row label of the md file
(first column) and ``metric`` one of AP, AP50, AP75, box_AP, box_AP50, box_AP75, kp_AP, kp_AP50, kp_AP75,
kp_APm, kp_APl.
"""

PAPER_SOURCE = "shared/reference/paper_tables.md (Mask R-CNN, arXiv 1703.06870, Tables 2, 4, 5)"

PAPER_TABLES = {
    "2a": {
        "title": "Backbone architecture (mask AP)",
        "rows": {
            "ResNet-50-C4": {"AP": 30.3, "AP50": 51.2, "AP75": 31.5},
            "ResNet-101-C4": {"AP": 32.7, "AP50": 54.2, "AP75": 34.3},
            "ResNet-50-FPN": {"AP": 33.6, "AP50": 55.2, "AP75": 35.3},
            "ResNet-101-FPN": {"AP": 35.4, "AP50": 57.3, "AP75": 37.5},
            "ResNeXt-101-FPN": {"AP": 36.7, "AP50": 59.5, "AP75": 38.9},
        },
    },
    "2b": {
        "title": "Multinomial vs. independent masks (ResNet-50-C4)",
        "rows": {
            "softmax": {"AP": 24.8, "AP50": 44.1, "AP75": 25.1},
            "sigmoid": {"AP": 30.3, "AP50": 51.2, "AP75": 31.5},
            # Section 4.2 text: "class-agnostic masks ... 29.7 mask AP vs. 30.3 for the class-specific".
            "class-agnostic": {"AP": 29.7},
        },
    },
    "2c": {
        "title": "RoI feature extraction (ResNet-50-C4, stride 16)",
        "rows": {
            "RoIPool (max)": {"AP": 26.9, "AP50": 48.8, "AP75": 26.4},
            "RoIWarp (max)": {"AP": 27.2, "AP50": 49.2, "AP75": 27.1},
            "RoIWarp (avg)": {"AP": 27.1, "AP50": 48.9, "AP75": 27.1},
            "RoIAlign (max)": {"AP": 30.2, "AP50": 51.0, "AP75": 31.8},
            "RoIAlign (avg)": {"AP": 30.3, "AP50": 51.2, "AP75": 31.5},
        },
    },
    "2d": {
        "title": "RoIAlign with a large stride (ResNet-50-C5, stride 32), mask and box AP",
        "rows": {
            "RoIPool": {"AP": 23.6, "AP50": 46.5, "AP75": 21.6, "box_AP": 28.2, "box_AP50": 52.7, "box_AP75": 26.9},
            "RoIAlign": {"AP": 30.9, "AP50": 51.8, "AP75": 32.1, "box_AP": 34.0, "box_AP50": 55.3, "box_AP75": 36.4},
        },
    },
    "2e": {
        "title": "Mask branch (ResNet-50-FPN)",
        "rows": {
            "MLP (fc 1024-1024)": {"AP": 31.5, "AP50": 53.7, "AP75": 32.8},
            "MLP (fc 1024-1024-1024)": {"AP": 31.5, "AP50": 54.0, "AP75": 32.6},
            "FCN (4 conv 256)": {"AP": 33.6, "AP50": 55.2, "AP75": 35.3},
        },
    },
    "4": {
        "title": "Keypoint detection (person), COCO test-dev",
        "rows": {
            "CMU-Pose+++": {"kp_AP": 61.8, "kp_AP50": 84.9, "kp_AP75": 67.5, "kp_APm": 57.1, "kp_APl": 68.2},
            "G-RMI": {"kp_AP": 62.4, "kp_AP50": 84.0, "kp_AP75": 68.5, "kp_APm": 59.1, "kp_APl": 68.1},
            "Mask R-CNN, keypoint-only": {"kp_AP": 62.7, "kp_AP50": 87.0, "kp_AP75": 68.4, "kp_APm": 57.4,
                                          "kp_APl": 71.1},
            "Mask R-CNN, keypoint & mask": {"kp_AP": 63.1, "kp_AP50": 87.3, "kp_AP75": 68.7, "kp_APm": 57.8,
                                            "kp_APl": 71.4},
        },
    },
    "5": {
        "title": "RoIAlign vs. RoIPool for keypoint detection (ResNet-50-FPN), COCO minival",
        "rows": {
            "RoIPool": {"kp_AP": 59.8, "kp_AP50": 86.2, "kp_AP75": 66.7, "kp_APm": 55.1, "kp_APl": 67.4},
            "RoIAlign": {"kp_AP": 64.2, "kp_AP50": 86.6, "kp_AP75": 69.7, "kp_APm": 58.7, "kp_APl": 73.0},
        },
    },
}

# The gain rows the paper prints (Table 2b: sigmoid - softmax; Table 2d: RoIAlign - RoIPool), for checking
# that the gains derived from PAPER_TABLES agree with the paper's own.
PAPER_GAINS = {
    "2b": {"AP": 5.5, "AP50": 7.1, "AP75": 6.4},
    "2d": {"AP": 7.3, "AP50": 5.3, "AP75": 10.5, "box_AP": 5.8, "box_AP50": 2.6, "box_AP75": 9.5},
}


def paper_value(table, row, metric):
    """The paper's value of `metric` for `row` of `table`, or None when the paper does not report it."""
    if row is None:
        return None
    return PAPER_TABLES[table]["rows"].get(row, {}).get(metric)
