"""The generated "shapes" instance-segmentation dataset (deterministic, COCO-format, cached on disk).

Every image is drawn from its own random stream ``SeedSequence([seed, image_index])``, so the output only
depends on the parameters (byte-identical json and PNGs for identical parameters and library versions).

Difficulty, by design (see docs/shapes_dataset.md):

* classes with thin parts and curved boundaries (ring, crescent, star, cross, hook), where a one-pixel
  misalignment of RoI features costs mask IoU; a second, opt-in set of solid classes (disc, rectangle,
  triangle, half-disc: ``SOLID_SHAPE_CLASSES``) has no holes, bars or spikes, for coarse (stride-32) feature
  maps whose cells are wider than such thin parts;
* a wide, log-uniform scale range (default 12 px .. 60% of the image side) and random rotations;
* occlusion: later instances are drawn over earlier ones; an instance's mask is what stays visible, and
  instances with < 20 visible pixels or < 30% of their area visible are dropped *before* drawing (so no
  unlabelled object fragment is left in the image);
* cluttered backgrounds: smooth colour gradients + low-frequency colour noise + distractor blobs, polygons
  and lines that are not instances; global blur and pixel noise;
* textured instances (solid, gradient, stripes, mottled) whose hue is only a weak hint of the class: by default
  each class owns a hue band (``class_hue_spread``) that overlaps background clutter and distractors of every
  hue, so colour helps a from-scratch CPU model get started but never separates an object from the clutter
  nor gives its mask; ``class_hue_spread=None`` draws colours independent of the class.

Optionally (``with_person=True``) an articulated stick-figure class "person" with 13 named keypoints is added;
``person_only=True`` then annotates the persons alone (one category, as COCO's person-keypoint task the paper's
keypoint models train on): the shapes are drawn exactly as before but unlabelled, so they are clutter.
"""
import colorsys
import hashlib
import json
import math
import os
import shutil
import uuid

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "SHAPE_CLASSES",
    "SOLID_SHAPE_CLASSES",
    "PERSON_KEYPOINT_NAMES",
    "PERSON_KEYPOINT_FLIP_MAP",
    "PERSON_SKELETON",
    "PERSON_KEYPOINT_OKS_SIGMAS",
    "PERSON_KEYPOINT_CONNECTION_RULES",
    "GENERATOR_VERSION",
    "shapes_params",
    "shapes_dir_name",
    "is_complete",
    "generate_shapes",
    "render_image",
]

# Bump when the drawing code changes so cached datasets of an older generator are not reused.
GENERATOR_VERSION = 2

SHAPE_CLASSES = ("ring", "crescent", "star", "cross", "hook")  # the default classes
SOLID_SHAPE_CLASSES = ("disc", "rectangle", "triangle", "half_disc")

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

_MIN_VISIBLE_PIXELS = 20
_MIN_VISIBLE_FRACTION = 0.3
_MIN_CONTRAST = 70.0  # RGB distance between an instance's colour and the background under it
_P_NEAR = 0.4  # probability that an instance is placed next to an earlier one


# ------------------------------------------------------------------------------------------------------------
# Parameters and cache layout
# ------------------------------------------------------------------------------------------------------------
def shapes_params(
    seed,
    num_images,
    image_size=256,
    classes=SHAPE_CLASSES,
    with_person=False,
    min_size=12,
    max_size_frac=0.6,
    min_instances=2,
    max_instances=8,
    max_distractors=11,
    class_hue_spread=0.1,
    person_only=False,
):
    """Validate and normalise the generation parameters into a json-able dict (the cache key)."""
    classes = tuple(classes)
    unknown = [c for c in classes if c not in _SHAPE_FNS]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {tuple(_SHAPE_FNS)}, got {classes!r}")
    ints = dict(seed=seed, num_images=num_images, image_size=image_size, min_size=min_size,
                min_instances=min_instances, max_instances=max_instances, max_distractors=max_distractors)
    for k, v in ints.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{k} must be an int >= 0, got {v!r}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if not 1 <= min_instances <= max_instances:
        raise ValueError(f"need 1 <= min_instances <= max_instances, got {min_instances}, {max_instances}")
    if not 0 < max_size_frac <= 1 or min_size < 4 or min_size >= max_size_frac * image_size:
        raise ValueError(
            f"need 4 <= min_size < max_size_frac * image_size and 0 < max_size_frac <= 1, got "
            f"min_size={min_size}, max_size_frac={max_size_frac}, image_size={image_size}"
        )
    if class_hue_spread is not None and not (isinstance(class_hue_spread, (int, float)) and 0 <= class_hue_spread <= 1):
        raise ValueError(f"class_hue_spread must be None or a number in [0, 1], got {class_hue_spread!r}")
    if person_only and not with_person:
        raise ValueError("person_only=True needs with_person=True (it annotates the persons alone)")
    params = {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "num_images": int(num_images),
        "image_size": int(image_size),
        "classes": list(classes),
        "with_person": bool(with_person),
        "min_size": int(min_size),
        "max_size_frac": float(max_size_frac),
        "min_instances": int(min_instances),
        "max_instances": int(max_instances),
        "max_distractors": int(max_distractors),
        "class_hue_spread": None if class_hue_spread is None else float(class_hue_spread),
    }
    if person_only:  # only when set, so the cache keys of the other datasets stay what they were
        params["person_only"] = True
    return params


def _params_hash(params):
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]


def shapes_dir_name(params):
    """Cache directory name, readable and unique per parameter set, e.g. ``shapes_s0_n1000_px256_1a2b3c4d``."""
    kp = ("_person" if params.get("person_only") else "_kp") if params["with_person"] else ""
    return "shapes{}_s{}_n{}_px{}_{}".format(
        kp, params["seed"], params["num_images"], params["image_size"], _params_hash(params)
    )


def is_complete(out_dir, params=None):
    """True if ``out_dir`` holds a finished dataset (optionally: generated with exactly ``params``)."""
    pfile = os.path.join(out_dir, "params.json")
    if not (os.path.isfile(os.path.join(out_dir, "annotations.json")) and os.path.isfile(pfile)):
        return False
    if params is None:
        return True
    with open(pfile) as f:
        return json.load(f) == params


# ------------------------------------------------------------------------------------------------------------
# Geometry: every object is a list of drawing ops in coordinates relative to its centre
#   ("poly", (N, 2) array, fill)   fill 1 adds, fill 0 cuts a hole
#   ("line", (N, 2) array, width)  a thick polyline with round joints and round caps
# ------------------------------------------------------------------------------------------------------------
def _rot(pts, theta):
    c, s = math.cos(theta), math.sin(theta)
    return pts @ np.array([[c, s], [-s, c]])


def _ellipse(cx, cy, a, b, theta, n=None):
    if n is None:
        n = int(min(128, max(16, 1.2 * math.pi * (a + b))))
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    pts = np.stack([a * np.cos(t), b * np.sin(t)], axis=1)
    return _rot(pts, theta) + (cx, cy)


def _rect(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _transform_ops(ops, theta, shift=(0.0, 0.0), scale=1.0):
    out = []
    for kind, pts, arg in ops:
        p = _rot((pts + shift) * scale, theta)
        out.append((kind, p, arg * scale if kind == "line" else arg))
    return out


def _shape_ring(rng, d):
    a = d / 2
    b = a * rng.uniform(0.55, 1.0)
    t = rng.uniform(0.45, 0.82)  # inner/outer radius: up to thin rings
    slack = (1 - t) * 0.45
    off = rng.uniform(-slack, slack, size=2) * (a, b)
    theta = rng.uniform(0, math.pi)
    return [
        ("poly", _ellipse(0, 0, a, b, theta), 1),
        ("poly", _ellipse(off[0], off[1], a * t, b * t, theta), 0),
    ]


def _shape_crescent(rng, d):
    r = d / 2
    b = r * rng.uniform(0.8, 1.0)
    r2 = r * rng.uniform(0.75, 1.0)
    delta = r * rng.uniform(0.3, 0.65)
    phi = rng.uniform(0, 2 * math.pi)
    theta = rng.uniform(0, math.pi)
    return [
        ("poly", _ellipse(0, 0, r, b, theta), 1),
        ("poly", _ellipse(delta * math.cos(phi), delta * math.sin(phi), r2, r2 * rng.uniform(0.85, 1.0), phi), 0),
    ]


def _shape_star(rng, d):
    k = int(rng.integers(4, 8))
    R = d / 2
    inner = rng.uniform(0.22, 0.5)
    ang = np.arange(2 * k) * (math.pi / k) + rng.uniform(0, 2 * math.pi)
    radii = np.where(np.arange(2 * k) % 2 == 0, R * rng.uniform(0.75, 1.0, size=2 * k), R * inner)
    pts = np.stack([radii * np.cos(ang), radii * np.sin(ang)], axis=1)
    return [("poly", pts, 1)]


def _shape_cross(rng, d):
    w1 = max(2.0, d * rng.uniform(0.1, 0.22))
    w2 = max(2.0, w1 * rng.uniform(0.8, 1.25))
    l2 = d * rng.uniform(0.55, 1.0)
    s1 = rng.uniform(0.2, 0.8) * d - d / 2  # crossing point along bar 1: plus, T-like or off-centre crosses
    s2 = rng.uniform(0.25, 0.75)
    bar1 = _rect(-d / 2, -w1 / 2, d / 2, w1 / 2)
    bar2 = _rect(-w2 / 2, -s2 * l2, w2 / 2, (1 - s2) * l2)
    bar2 = _rot(bar2, rng.uniform(-0.4, 0.4)) + (s1, 0)
    ops = [("poly", bar1, 1), ("poly", bar2, 1)]
    return _transform_ops(ops, rng.uniform(0, 2 * math.pi))


def _shape_hook(rng, d):
    stem = rng.uniform(0.35, 0.7)
    rho = rng.uniform(0.16, 0.3)
    sweep = rng.uniform(math.radians(150), math.radians(270))
    n = max(8, int(sweep * rho * d / 3))
    t = math.pi - np.linspace(0, sweep, n)  # arc around (rho, 0) starting at (0, 0)
    arc = np.stack([rho + rho * np.cos(t), -rho * np.sin(t)], axis=1)
    pts = np.concatenate([[[0.0, stem]], arc], axis=0)
    if rng.random() < 0.5:
        pts[:, 0] *= -1
    lo, hi = pts.min(0), pts.max(0)
    scale = d / max(1e-6, float((hi - lo).max()))
    width = max(2.0, d * rng.uniform(0.08, 0.16)) / scale
    ops = [("line", pts, width)]
    return _transform_ops(ops, rng.uniform(0, 2 * math.pi), shift=-(lo + hi) / 2, scale=scale)


def _shape_disc(rng, d):
    return [("poly", _ellipse(0, 0, d / 2, d / 2 * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi)), 1)]


def _shape_rectangle(rng, d):
    h = d / 2 * rng.uniform(0.6, 1.0)
    return [("poly", _rot(_rect(-d / 2, -h, d / 2, h), rng.uniform(0, math.pi)), 1)]


def _shape_triangle(rng, d):
    # corners spread round the circle (every angle >= ~40 degrees): no spike
    ang = rng.uniform(0, 2 * math.pi) + np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    ang = ang + rng.uniform(-0.3, 0.3, size=3)
    return [("poly", np.stack([np.cos(ang), np.sin(ang)], axis=1) * (d / 2), 1)]


def _shape_half_disc(rng, d):
    t = np.linspace(0.0, math.pi, 48)
    b = d / 2 * rng.uniform(0.7, 1.0)
    pts = np.stack([d / 2 * np.cos(t), b * (0.5 - np.sin(t))], axis=1)  # flat side at y = b / 2
    return [("poly", _rot(pts, rng.uniform(0, 2 * math.pi)), 1)]


_SHAPE_FNS = {
    "ring": _shape_ring,
    "crescent": _shape_crescent,
    "star": _shape_star,
    "cross": _shape_cross,
    "hook": _shape_hook,
    "disc": _shape_disc,
    "rectangle": _shape_rectangle,
    "triangle": _shape_triangle,
    "half_disc": _shape_half_disc,
}


def _person(rng, height):
    """An upright stick figure (local coords, y down), randomly posed and rotated; returns ops, keypoints."""
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
    ops = [("poly", torso, 1), ("line", neck, limb * 0.9), ("poly", _ellipse(*P["head"], head_r, head_r * 1.1, 0), 1)]
    for side in ("left", "right"):
        ops.append(("line", np.stack([P[f"{side}_shoulder"], P[f"{side}_elbow"], P[f"{side}_hand"]]), limb))
        ops.append(("line", np.stack([P[f"{side}_hip"], P[f"{side}_knee"], P[f"{side}_foot"]]), limb * 1.15))
    kps = np.stack([P[n] for n in PERSON_KEYPOINT_NAMES])
    allpts = np.concatenate([o[1] for o in ops] + [kps])
    center = (allpts.min(0) + allpts.max(0)) / 2
    theta = rng.uniform(math.radians(-30), math.radians(30))
    ops = _transform_ops(ops, theta, shift=-center)
    kps = _rot(kps - center, theta)
    return ops, kps


def _rasterize(ops, cx, cy):
    """Draw ops centred at (cx, cy) on a tight local canvas. Returns (bool mask, x0, y0)."""
    margin = 2 + max([o[2] / 2 for o in ops if o[0] == "line"] + [0])
    allpts = np.concatenate([o[1] for o in ops])
    x0 = int(math.floor(cx + allpts[:, 0].min() - margin))
    y0 = int(math.floor(cy + allpts[:, 1].min() - margin))
    x1 = int(math.ceil(cx + allpts[:, 0].max() + margin)) + 1
    y1 = int(math.ceil(cy + allpts[:, 1].max() + margin)) + 1
    canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(canvas)
    off = np.array([cx - x0, cy - y0])
    for kind, pts, arg in ops:
        p = pts + off
        if kind == "poly":
            draw.polygon(p.ravel().tolist(), fill=255 if arg else 0)
        else:
            w = max(1, int(round(arg)))
            draw.line(p.ravel().tolist(), fill=255, width=w, joint="curve")
            r = w / 2.0
            for q in (p[0], p[-1]):  # round caps
                draw.ellipse([q[0] - r, q[1] - r, q[0] + r, q[1] + r], fill=255)
    return np.asarray(canvas) > 0, x0, y0


def _clip(x0, y0, h, w, size):
    """Slices of the image and of a local (h, w) canvas at (x0, y0) where they overlap, or None."""
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, size), min(y0 + h, size)
    if ix0 >= ix1 or iy0 >= iy1:
        return None
    return (slice(iy0, iy1), slice(ix0, ix1)), (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))


# ------------------------------------------------------------------------------------------------------------
# Appearance
# ------------------------------------------------------------------------------------------------------------
def _random_color(rng, sat=(0.25, 1.0), val=(0.2, 1.0)):
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return np.array([r, g, b]) * 255.0


def _instance_color(rng, category, params):
    """Base colour of one instance: any colour, or (``class_hue_spread`` set) a hue from its class's band."""
    spread = params.get("class_hue_spread")
    if spread is None:
        return _random_color(rng)
    names = list(params["classes"]) + (["person"] if params["with_person"] else [])
    hue = (names.index(category) / len(names) + rng.uniform(-spread / 2, spread / 2)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
    return np.array([r, g, b]) * 255.0


def _smooth_noise(rng, size, cells, amp):
    small = rng.normal(128, amp, size=(cells, cells, 3)).clip(0, 255).astype(np.uint8)
    big = Image.fromarray(small).resize((size, size), Image.BICUBIC)
    return np.asarray(big, dtype=np.float32) - 128.0


def _background(rng, size, max_distractors):
    corners = rng.uniform(0, 255, size=(2, 2, 3))
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    top = corners[0, 0] * (1 - t)[:, None] + corners[0, 1] * t[:, None]  # (W, 3)
    bot = corners[1, 0] * (1 - t)[:, None] + corners[1, 1] * t[:, None]
    bg = top[None] * (1 - t)[:, None, None] + bot[None] * t[:, None, None]
    bg = bg + _smooth_noise(rng, size, int(rng.integers(3, 9)), rng.uniform(15, 45))
    img = Image.fromarray(bg.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(min(3, max_distractors), max_distractors + 1))):  # not instances
        col = tuple(int(c) for c in _random_color(rng))
        d = math.exp(rng.uniform(math.log(6), math.log(0.45 * size)))
        cx, cy = rng.uniform(0, size, size=2)
        kind = rng.integers(4)
        if kind == 0:  # filled ellipse / disc
            pts = _ellipse(cx, cy, d / 2, d / 2 * rng.uniform(0.3, 1.0), rng.uniform(0, math.pi))
            draw.polygon(pts.ravel().tolist(), fill=col)
        elif kind == 1:  # irregular convex-ish blob / triangle / quad
            n = int(rng.integers(3, 8))
            ang = np.sort(rng.uniform(0, 2 * math.pi, n))
            rad = d / 2 * rng.uniform(0.5, 1.0, n)
            pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)
            draw.polygon(pts.ravel().tolist(), fill=col)
        elif kind == 2:  # line / polyline
            n = int(rng.integers(2, 5))
            pts = np.array([cx, cy]) + np.cumsum(rng.normal(0, d / 2, size=(n, 2)), axis=0)
            draw.line(pts.ravel().tolist(), fill=col, width=int(rng.integers(1, 5)), joint="curve")
        else:  # rectangle outline (not too small: a tiny one would look like a ring)
            d = max(d, 28.0)
            pts = _rot(_rect(-d / 2, -d / 3, d / 2, d / 3), rng.uniform(0, math.pi)) + (cx, cy)
            draw.line(np.concatenate([pts, pts[:1]]).ravel().tolist(), fill=col, width=int(rng.integers(1, 4)))
    return np.asarray(img, dtype=np.float32).copy()


def _texture(rng, h, w, base):
    """An (h, w, 3) float texture around colour ``base``: solid, gradient, stripes or mottled."""
    other = base * (1 - (m := rng.uniform(0.3, 0.7))) + _random_color(rng) * m
    kind = rng.integers(4)
    if kind == 0:
        return np.broadcast_to(base.astype(np.float32), (h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phi = rng.uniform(0, 2 * math.pi)
    proj = xx * math.cos(phi) + yy * math.sin(phi)
    if kind == 1:
        alpha = (proj - proj.min()) / max(1.0, float(np.ptp(proj)))
    elif kind == 2:
        alpha = (np.sin(proj * (2 * math.pi / rng.uniform(3, 10))) > 0).astype(np.float32)
    else:
        cells = (max(2, h // 5), max(2, w // 5))
        small = (rng.random(cells) * 255).astype(np.uint8)
        alpha = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
    alpha = alpha[..., None]
    return (base * (1 - alpha) + other * alpha).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------
# One image
# ------------------------------------------------------------------------------------------------------------
def render_image(rng, params):
    """Draw one image. Returns (uint8 HxWx3 image, list of instance dicts).

    Each instance dict has: "category" (name), "mask" (HxW bool visible mask), "visible_fraction"
    (visible / in-image area), "truncated" (bool), and for persons "keypoints" ((13, 3) array x, y, v in
    pixel-index coordinates, v=2 visible, 1 occluded, 0 outside the image with x=y=0).
    """
    S = params["image_size"]
    classes = params["classes"]
    lo, hi = math.log(params["min_size"]), math.log(params["max_size_frac"] * S)

    if params["with_person"]:
        n_person = int(rng.choice([1, 1, 2, 3]))
        n_shapes = int(rng.integers(max(1, params["min_instances"] - 1), max(2, params["max_instances"] - 2) + 1))
        cats = ["person"] * n_person + [classes[int(i)] for i in rng.integers(len(classes), size=n_shapes)]
        cats = [cats[int(i)] for i in rng.permutation(len(cats))]
    else:
        n = int(rng.integers(params["min_instances"], params["max_instances"] + 1))
        cats = [classes[int(i)] for i in rng.integers(len(classes), size=n)]

    # 1. geometry of every candidate
    cands = []
    for cat in cats:
        kps = None
        # log-scale sizes biased towards the large end (u ** 0.7): median diameter ~ 0.22 * image side
        u = rng.random() ** 0.7
        if cat == "person":
            d = math.exp(math.log(max(30, params["min_size"])) * (1 - u) + math.log(0.75 * S) * u)
            ops, kps = _person(rng, d)
        else:
            d = math.exp(lo * (1 - u) + hi * u)
            ops = _SHAPE_FNS[cat](rng, d)
        if cands and rng.random() < _P_NEAR:  # next to an earlier instance: more occlusion
            prev = cands[int(rng.integers(len(cands)))]
            cx, cy = np.array(prev["center"]) + rng.normal(0, 0.3 * (d + prev["d"]), size=2)
            cx, cy = float(np.clip(cx, 0, S)), float(np.clip(cy, 0, S))
        else:  # anywhere, at most ~half outside the image
            cx, cy = rng.uniform(0.2 * d, S - 0.2 * d, size=2)
        mask, x0, y0 = _rasterize(ops, cx, cy)
        full = int(mask.sum())
        sl = _clip(x0, y0, mask.shape[0], mask.shape[1], S)
        if full == 0 or sl is None:
            continue
        inside = int(mask[sl[1]].sum())
        if kps is not None:
            kps = kps + (cx, cy)
        cands.append(dict(category=cat, mask=mask, sl=sl, full=full, inside=inside, kps=kps, center=(cx, cy), d=d))

    # 2. occlusion: paint ids in drawing order; drop instances that stay too hidden. Removing an occluder only
    # uncovers pixels, so one filtering pass keeps every survivor above the thresholds.
    def paint(items):
        label = np.full((S, S), -1, dtype=np.int32)
        for i, c in enumerate(items):
            img_sl, loc_sl = c["sl"]
            label[img_sl][c["mask"][loc_sl]] = i
        return label

    label = paint(cands)
    vis = np.bincount(label.ravel() + 1, minlength=len(cands) + 1)[1:]
    keep = [c for c, v in zip(cands, vis)
            if v >= _MIN_VISIBLE_PIXELS and v >= _MIN_VISIBLE_FRACTION * c["full"]]
    label = paint(keep)

    # 3. appearance: background + distractors, instances in order, blur, noise
    img = _background(rng, S, params["max_distractors"])
    for c in keep:
        img_sl, loc_sl = c["sl"]
        m = c["mask"][loc_sl]
        region = img[img_sl]
        bg_mean = region[m].mean(0)
        for _ in range(8):
            base = _instance_color(rng, c["category"], params)
            if np.linalg.norm(base - bg_mean) >= _MIN_CONTRAST:
                break
        tex = _texture(rng, m.shape[0], m.shape[1], base)
        tex = tex + rng.normal(0, rng.uniform(0, 10), size=3).astype(np.float32)  # per-instance shading
        region[m] = tex[m]
    if rng.random() < 0.5:
        pil = Image.fromarray(img.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
        img = np.asarray(pil, dtype=np.float32)
    img = img + rng.normal(0, rng.uniform(2, 12), size=img.shape).astype(np.float32)
    img = img.clip(0, 255).round().astype(np.uint8)

    instances = []
    for i, c in enumerate(keep):
        m = label == i
        inst = dict(category=c["category"], mask=m, visible_fraction=float(m.sum()) / c["inside"],
                    truncated=c["inside"] < c["full"])
        if c["kps"] is not None:
            kp = np.zeros((len(PERSON_KEYPOINT_NAMES), 3), dtype=np.int64)
            for k, (x, y) in enumerate(c["kps"]):
                xi, yi = int(round(x)), int(round(y))
                if 0 <= xi < S and 0 <= yi < S:
                    kp[k] = (xi, yi, 2 if label[yi, xi] == i else 1)
            inst["keypoints"] = kp
        instances.append(inst)
    return img, instances


# ------------------------------------------------------------------------------------------------------------
# The dataset
# ------------------------------------------------------------------------------------------------------------
def annotated_shape_classes(params):
    """The shape classes that get annotations (none with ``person_only``; "person" comes after them)."""
    return [] if params.get("person_only") else list(params["classes"])


def _categories(params):
    shapes = annotated_shape_classes(params)
    cats = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(shapes)]
    if params["with_person"]:
        cats.append({
            "id": len(cats) + 1,
            "name": "person",
            "supercategory": "person",
            "keypoints": list(PERSON_KEYPOINT_NAMES),
            "skeleton": [list(e) for e in PERSON_SKELETON],
        })
    return cats


def _generate_into(tmp, params, progress, desc):
    from tqdm import tqdm

    S = params["image_size"]
    os.makedirs(os.path.join(tmp, "images"))
    cats = _categories(params)
    cat_id = {c["name"]: c["id"] for c in cats}
    nkp = len(PERSON_KEYPOINT_NAMES)
    images, annotations = [], []
    for idx in tqdm(range(params["num_images"]), desc=desc, disable=not progress, unit="img"):
        rng = np.random.default_rng(np.random.SeedSequence([params["seed"], idx]))
        img, instances = render_image(rng, params)
        file_name = f"{idx:06d}.png"
        Image.fromarray(img).save(os.path.join(tmp, "images", file_name), compress_level=1)
        images.append({"id": idx + 1, "file_name": file_name, "height": S, "width": S})
        for inst in instances:
            if inst["category"] not in cat_id:  # person_only: an unlabelled shape
                continue
            rle = mask_util.encode(np.asfortranarray(inst["mask"].astype(np.uint8)))
            ann = {
                "id": len(annotations) + 1,
                "image_id": idx + 1,
                "category_id": cat_id[inst["category"]],
                "segmentation": {"size": [S, S], "counts": rle["counts"].decode("ascii")},
                "area": int(mask_util.area(rle)),
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "iscrowd": 0,
                "visible_fraction": round(inst["visible_fraction"], 4),
                "truncated": int(inst["truncated"]),
            }
            if params["with_person"]:
                kp = inst.get("keypoints")
                kp = np.zeros((nkp, 3), dtype=np.int64) if kp is None else kp
                ann["keypoints"] = [int(v) for v in kp.ravel()]
                ann["num_keypoints"] = int((kp[:, 2] > 0).sum())
            annotations.append(ann)
    coco = {
        "info": {
            "description": "maskrcnn_plugin generated shapes dataset",
            "generator": "maskrcnn_plugin.data.shapes",
            "params": params,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": cats,
    }
    with open(os.path.join(tmp, "annotations.json"), "w") as f:
        json.dump(coco, f, separators=(",", ":"))
    # params.json last: its presence (with annotations.json) marks a complete dataset.
    with open(os.path.join(tmp, "params.json"), "w") as f:
        json.dump(params, f, sort_keys=True, indent=1)


def _remove_stale_tmp(parent, base):
    prefix = f".{base}.tmp-"
    for entry in os.listdir(parent):
        if not entry.startswith(prefix):
            continue
        try:
            pid = int(entry[len(prefix):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            pass


def generate_shapes(
    out_dir,
    seed,
    num_images,
    image_size=256,
    classes=SHAPE_CLASSES,
    with_person=False,
    overwrite=False,
    progress=True,
    **kwargs,
):
    """Generate the dataset into ``out_dir`` (``images/*.png``, ``annotations.json``, ``params.json``).

    Deterministic: identical parameters give byte-identical files. Atomic: files are written to a hidden
    temporary sibling directory that is renamed to ``out_dir`` only when complete, so a killed run never
    leaves a partial dataset at ``out_dir``. If ``out_dir`` already holds a complete dataset with the same
    parameters it is reused (unless ``overwrite``); with different parameters a ValueError is raised.
    Extra keyword arguments (min_size, max_size_frac, min_instances, max_instances, max_distractors,
    class_hue_spread) go to
    `shapes_params`.

    Returns the path of the COCO-format ``annotations.json``.
    """
    params = shapes_params(seed, num_images, image_size, classes, with_person, **kwargs)
    out_dir = os.path.abspath(os.fspath(out_dir))
    json_file = os.path.join(out_dir, "annotations.json")
    if os.path.exists(out_dir) and not overwrite:
        if is_complete(out_dir, params):
            return json_file
        if is_complete(out_dir):
            raise ValueError(
                f"{out_dir} holds a shapes dataset generated with other parameters "
                f"(see {os.path.join(out_dir, 'params.json')}); remove it or pass overwrite=True"
            )
        if os.listdir(out_dir):
            raise ValueError(f"{out_dir} exists, is not empty and is not a complete shapes dataset")
    parent, base = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_tmp(parent, base)
    tmp = os.path.join(parent, f".{base}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        _generate_into(tmp, params, progress, desc=f"Generating {base}")
        old = None
        if os.path.exists(out_dir):
            if is_complete(out_dir, params) and not overwrite:  # another process finished first
                shutil.rmtree(tmp)
                return json_file
            old = os.path.join(parent, f".{base}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if is_complete(out_dir, params):  # lost a race against a concurrent generator: same content
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return json_file
