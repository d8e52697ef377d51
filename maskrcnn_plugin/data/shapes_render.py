"""One image of the shapes dataset: placement, occlusion, clutter and appearance (`render_image`).

The generated data stands in for COCO in the paper's ablations (Sec. 4.2, Table 2); what makes it hard, by
design (docs/shapes_dataset.md):

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

The objects' outlines come from `shapes_geometry` and `person_keypoints`; `shapes` writes whole datasets.
Every random draw here is part of the data: changing their order or number changes every image after it
(bump `shapes.GENERATOR_VERSION`).
"""
import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .person_keypoints import PERSON_KEYPOINT_NAMES, person_figure
from .shapes_geometry import SHAPE_FNS, clip_to_image, ellipse, rasterize, rect, rotate

__all__ = ["render_image"]

_MIN_VISIBLE_PIXELS = 20
_MIN_VISIBLE_FRACTION = 0.3
_MIN_CONTRAST = 70.0  # RGB distance between an instance's colour and the background under it
_P_NEAR = 0.4  # probability that an instance is placed next to an earlier one


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
            pts = ellipse(cx, cy, d / 2, d / 2 * rng.uniform(0.3, 1.0), rng.uniform(0, math.pi))
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
            pts = rotate(rect(-d / 2, -d / 3, d / 2, d / 3), rng.uniform(0, math.pi)) + (cx, cy)
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
            ops, kps = person_figure(rng, d)
        else:
            d = math.exp(lo * (1 - u) + hi * u)
            ops = SHAPE_FNS[cat](rng, d)
        if cands and rng.random() < _P_NEAR:  # next to an earlier instance: more occlusion
            prev = cands[int(rng.integers(len(cands)))]
            cx, cy = np.array(prev["center"]) + rng.normal(0, 0.3 * (d + prev["d"]), size=2)
            cx, cy = float(np.clip(cx, 0, S)), float(np.clip(cy, 0, S))
        else:  # anywhere, at most ~half outside the image
            cx, cy = rng.uniform(0.2 * d, S - 0.2 * d, size=2)
        mask, x0, y0 = rasterize(ops, cx, cy)
        full = int(mask.sum())
        sl = clip_to_image(x0, y0, mask.shape[0], mask.shape[1], S)
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
