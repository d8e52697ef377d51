"""The person class of the shapes datasets: its 13 keypoints (names, flip map, skeleton, OKS sigmas, the
detectron2 metadata and COCO category built from them) and the random stick figure that is drawn.

This is the keypoint task of the paper (Mask R-CNN for human pose estimation, Sec. 5): one keypoint per
person per heatmap, on COCO's conventions, so detectron2's keypoint head, flip augmentation, Visualizer and
COCO keypoint evaluation work unchanged. Changing the figure changes the generated data: bump
`shapes.GENERATOR_VERSION`.
"""
import math

import numpy as np

from .shapes_geometry import ellipse, rotate, transform_ops

__all__ = [
    "PERSON_KEYPOINT_NAMES",
    "PERSON_KEYPOINT_FLIP_MAP",
    "PERSON_KEYPOINT_OKS_SIGMAS",
    "PERSON_SKELETON",
    "PERSON_KEYPOINT_CONNECTION_RULES",
    "person_category",
    "person_keypoint_metadata",
    "person_figure",
]

# Person keypoints. "left" is the figure's own left, i.e. the viewer's right for an upright figure that
# faces the viewer (COCO's convention); horizontal flipping swaps the pairs in PERSON_KEYPOINT_FLIP_MAP.
PERSON_KEYPOINT_NAMES = (
    "head",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_hand",
    "right_hand",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_foot",
    "right_foot",
)
PERSON_KEYPOINT_FLIP_MAP = tuple(
    (n, "right_" + n[len("left_"):]) for n in PERSON_KEYPOINT_NAMES if n.startswith("left_")
)
# COCO's per-keypoint OKS sigmas of the analogous body parts (nose for the head, wrists for the hands,
# ankles for the feet). COCOEvaluator reads cfg.TEST.KEYPOINT_OKS_SIGMAS, so set it to this list.
PERSON_KEYPOINT_OKS_SIGMAS = (
    0.026,
    0.079, 0.079,
    0.072, 0.072,
    0.062, 0.062,
    0.107, 0.107,
    0.087, 0.087,
    0.089, 0.089,
)
_SKELETON_NAMES = (
    ("head", "left_shoulder"),
    ("head", "right_shoulder"),
    ("left_shoulder", "right_shoulder"),
    ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_hand"),
    ("right_shoulder", "right_elbow"),
    ("right_elbow", "right_hand"),
    ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"),
    ("left_hip", "right_hip"),
    ("left_hip", "left_knee"),
    ("left_knee", "left_foot"),
    ("right_hip", "right_knee"),
    ("right_knee", "right_foot"),
)
# COCO json "skeleton": 1-based keypoint indices.
PERSON_SKELETON = tuple(
    (PERSON_KEYPOINT_NAMES.index(a) + 1, PERSON_KEYPOINT_NAMES.index(b) + 1) for a, b in _SKELETON_NAMES
)


def _side_color(a, b):
    if a.startswith("left") or b.startswith("left"):
        return (0, 200, 255)
    if a.startswith("right") or b.startswith("right"):
        return (255, 120, 0)
    return (255, 255, 0)


# detectron2's Visualizer format: (keypoint name 0, keypoint name 1, RGB colour).
PERSON_KEYPOINT_CONNECTION_RULES = tuple((a, b, _side_color(a, b)) for a, b in _SKELETON_NAMES)


def person_category(category_id):
    """The COCO json category of the person (with its ``keypoints`` and 1-based ``skeleton``)."""
    return {
        "id": category_id,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(PERSON_KEYPOINT_NAMES),
        "skeleton": [list(e) for e in PERSON_SKELETON],
    }


def person_keypoint_metadata():
    """The keypoint entries of a detectron2 dataset's metadata with persons."""
    return dict(
        keypoint_names=list(PERSON_KEYPOINT_NAMES),
        keypoint_flip_map=[list(p) for p in PERSON_KEYPOINT_FLIP_MAP],
        keypoint_connection_rules=[(a, b, c) for a, b, c in PERSON_KEYPOINT_CONNECTION_RULES],
        # detectron2's COCOEvaluator reads cfg.TEST.KEYPOINT_OKS_SIGMAS, not this key: copy it there.
        keypoint_oks_sigmas=list(PERSON_KEYPOINT_OKS_SIGMAS),
    )


def person_figure(rng, height):
    """An upright stick figure about ``height`` px tall (local coords, y down), randomly posed and rotated.

    Returns (drawing ops as in `shapes_geometry`, (13, 2) keypoints in `PERSON_KEYPOINT_NAMES` order).
    """
    H = height
    T = 0.32 * H
    sw = 0.24 * H * rng.uniform(0.85, 1.15)
    hw = 0.16 * H * rng.uniform(0.85, 1.15)
    limb = max(3.0, 0.07 * H * rng.uniform(0.8, 1.2))
    head_r = max(2.5, 0.075 * H * rng.uniform(0.9, 1.15))
    kp = {"head": (0.0, -T - 0.1 * H)}
    for side, s in (("left", 1.0), ("right", -1.0)):  # the figure's left is the viewer's right (+x)
        sh = np.array([s * sw / 2, -T])
        a = rng.uniform(math.radians(-15), math.radians(165))  # 0: arm hanging down, 180: raised
        b = a + rng.uniform(math.radians(-110), math.radians(60))
        el = sh + 0.16 * H * np.array([s * math.sin(a), math.cos(a)])
        ha = el + 0.15 * H * np.array([s * math.sin(b), math.cos(b)])
        hip = np.array([s * hw / 2, 0.0])
        a = rng.uniform(math.radians(-8), math.radians(40))
        b = a + rng.uniform(math.radians(-45), math.radians(45))
        kn = hip + 0.23 * H * np.array([s * math.sin(a), math.cos(a)])
        ft = kn + 0.22 * H * np.array([s * math.sin(b), math.cos(b)])
        kp.update({f"{side}_shoulder": sh, f"{side}_elbow": el, f"{side}_hand": ha,
                   f"{side}_hip": hip, f"{side}_knee": kn, f"{side}_foot": ft})
    P = {k: np.asarray(v, dtype=np.float64) for k, v in kp.items()}
    torso = np.array([P["left_shoulder"] + (limb / 2, 0), P["right_shoulder"] - (limb / 2, 0),
                      P["right_hip"] - (limb / 4, 0), P["left_hip"] + (limb / 4, 0)])
    neck = np.array([[0.0, -T], P["head"]])
    ops = [("poly", torso, 1), ("line", neck, limb * 0.9), ("poly", ellipse(*P["head"], head_r, head_r * 1.1, 0), 1)]
    for side in ("left", "right"):
        ops.append(("line", np.stack([P[f"{side}_shoulder"], P[f"{side}_elbow"], P[f"{side}_hand"]]), limb))
        ops.append(("line", np.stack([P[f"{side}_hip"], P[f"{side}_knee"], P[f"{side}_foot"]]), limb * 1.15))
    kps = np.stack([P[n] for n in PERSON_KEYPOINT_NAMES])
    allpts = np.concatenate([o[1] for o in ops] + [kps])
    center = (allpts.min(0) + allpts.max(0)) / 2
    theta = rng.uniform(math.radians(-30), math.radians(30))
    ops = transform_ops(ops, theta, shift=-center)
    kps = rotate(kps - center, theta)
    return ops, kps
