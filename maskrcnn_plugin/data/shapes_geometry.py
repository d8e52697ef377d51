"""Geometry of the generated shapes: the object classes as drawing ops, and their rasterisation.

Part of the synthetic stand-in for COCO (docs/shapes_dataset.md). The default classes have thin parts and
curved boundaries, where a one-pixel misalignment of RoI features costs mask IoU (RoIAlign vs RoIPool, paper
Sec. 3 and Table 2c); the solid classes have no holes, bars or spikes, for the single stride-32 map of
Table 2d. The person figure is in `person_keypoints`; colours and whole images in `shapes_render`.

Every object is a list of drawing ops in coordinates relative to its centre:

* ``("poly", (N, 2) array, fill)``: fill 1 adds, fill 0 cuts a hole;
* ``("line", (N, 2) array, width)``: a thick polyline with round joints and round caps.

Changing what is drawn changes the generated data: bump `shapes.GENERATOR_VERSION`.
"""
import math

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "SHAPE_CLASSES",
    "SOLID_SHAPE_CLASSES",
    "SHAPE_FNS",
    "rotate",
    "ellipse",
    "rect",
    "transform_ops",
    "rasterize",
    "clip_to_image",
]

SHAPE_CLASSES = ("ring", "crescent", "star", "cross", "hook")  # the default classes
SOLID_SHAPE_CLASSES = ("disc", "rectangle", "triangle", "half_disc")


def rotate(pts, theta):
    c, s = math.cos(theta), math.sin(theta)
    return pts @ np.array([[c, s], [-s, c]])


def ellipse(cx, cy, a, b, theta, n=None):
    if n is None:
        n = int(min(128, max(16, 1.2 * math.pi * (a + b))))
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    pts = np.stack([a * np.cos(t), b * np.sin(t)], axis=1)
    return rotate(pts, theta) + (cx, cy)


def rect(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def transform_ops(ops, theta, shift=(0.0, 0.0), scale=1.0):
    out = []
    for kind, pts, arg in ops:
        p = rotate((pts + shift) * scale, theta)
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
        ("poly", ellipse(0, 0, a, b, theta), 1),
        ("poly", ellipse(off[0], off[1], a * t, b * t, theta), 0),
    ]


def _shape_crescent(rng, d):
    r = d / 2
    b = r * rng.uniform(0.8, 1.0)
    r2 = r * rng.uniform(0.75, 1.0)
    delta = r * rng.uniform(0.3, 0.65)
    phi = rng.uniform(0, 2 * math.pi)
    theta = rng.uniform(0, math.pi)
    return [
        ("poly", ellipse(0, 0, r, b, theta), 1),
        ("poly", ellipse(delta * math.cos(phi), delta * math.sin(phi), r2, r2 * rng.uniform(0.85, 1.0), phi), 0),
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
    bar1 = rect(-d / 2, -w1 / 2, d / 2, w1 / 2)
    bar2 = rect(-w2 / 2, -s2 * l2, w2 / 2, (1 - s2) * l2)
    bar2 = rotate(bar2, rng.uniform(-0.4, 0.4)) + (s1, 0)
    ops = [("poly", bar1, 1), ("poly", bar2, 1)]
    return transform_ops(ops, rng.uniform(0, 2 * math.pi))


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
    return transform_ops(ops, rng.uniform(0, 2 * math.pi), shift=-(lo + hi) / 2, scale=scale)


def _shape_disc(rng, d):
    return [("poly", ellipse(0, 0, d / 2, d / 2 * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi)), 1)]


def _shape_rectangle(rng, d):
    h = d / 2 * rng.uniform(0.6, 1.0)
    return [("poly", rotate(rect(-d / 2, -h, d / 2, h), rng.uniform(0, math.pi)), 1)]


def _shape_triangle(rng, d):
    # corners spread round the circle (every angle >= ~40 degrees): no spike
    ang = rng.uniform(0, 2 * math.pi) + np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    ang = ang + rng.uniform(-0.3, 0.3, size=3)
    return [("poly", np.stack([np.cos(ang), np.sin(ang)], axis=1) * (d / 2), 1)]


def _shape_half_disc(rng, d):
    t = np.linspace(0.0, math.pi, 48)
    b = d / 2 * rng.uniform(0.7, 1.0)
    pts = np.stack([d / 2 * np.cos(t), b * (0.5 - np.sin(t))], axis=1)  # flat side at y = b / 2
    return [("poly", rotate(pts, rng.uniform(0, 2 * math.pi)), 1)]


# class name -> function(rng, diameter) returning the drawing ops of one random instance
SHAPE_FNS = {
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


def rasterize(ops, cx, cy):
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


def clip_to_image(x0, y0, h, w, size):
    """Slices of the image and of a local (h, w) canvas at (x0, y0) where they overlap, or None."""
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, size), min(y0 + h, size)
    if ix0 >= ix1 or iy0 >= iy1:
        return None
    return (slice(iy0, iy1), slice(ix0, ix1)), (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
