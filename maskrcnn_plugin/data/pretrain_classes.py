"""A generated image-classification set for backbone pre-training: the stand-in for ImageNet.

Every model of the paper starts from an ImageNet-pretrained ResNet / ResNeXt backbone (Sec. 3, "Network
Architecture", and 3.1, "Implementation Details"), fine-tuned with frozen BatchNorm as in Detectron, the paper's
code base. No ImageNet weights are reachable offline, so ``tools/pretrain_backbone.py`` pre-trains the CPU
models' ResNets on this set instead (recipes and cache: `maskrcnn_plugin.pretrained`).

Each image (``image_size`` px, e.g. 80: the scale of the detection images' objects, 16-200 px) shows one large
object on clutter; its class is the pair (shape family, fill pattern):

* 12 shape families (`SHAPES`), each with random proportions (ring width, star points, petal count, ...),
  size (36-90% of the image side), position (up to about a quarter outside the image), rotation and squash;
* 10 fill patterns (`PATTERNS`) mixing two random colours at random period, orientation and phase;

so 120 classes at most (``num_classes`` takes the first ones, class ``c`` = shape ``c % 12`` with pattern
``c // 12``). Colours carry no class information. Clutter makes it more than an edge-statistics task: a
background of colour gradients and waves, half the time a faint pattern of its own, thick strokes and small
blobs under the object, and sometimes a stroke over it; pixel noise on top. The families are not the
detection set's classes (`shapes_geometry`): they share primitives (discs, rings, stars, crosses) but none of
its instances, images or backgrounds.

Rendering is numpy-vectorised on the pixel grid (one signed-distance-like function per shape, one function per
pattern), no drawing library: about 1 ms per 80 px image on one core (`benchmark_render`). Image ``index`` of
a split is a function of ``(seed, global index)`` alone (its own ``SeedSequence``), so any worker order and a
resumed run see the same images; the train split is global indices ``[0, size)``, the val split
``[VAL_START, VAL_START + size)``, disjoint by construction. The label of global index ``g`` is
``g % num_classes``: every class is equally frequent in any ``num_classes`` consecutive indices.

Changing what is drawn changes the images: bump `GENERATOR_VERSION` (it is part of the pre-training recipes'
hash, so checkpoints of an older generator are not reused).
"""
import math
import time

import numpy as np
import torch

__all__ = [
    "GENERATOR_VERSION",
    "SHAPES",
    "PATTERNS",
    "MAX_CLASSES",
    "VAL_START",
    "class_name",
    "render_sample",
    "PretrainClasses",
    "benchmark_render",
]

GENERATOR_VERSION = "pretrain-classes-1"

SHAPES = ("disc", "ring", "square", "frame", "triangle", "hexagon", "star", "flower", "cross", "crescent", "arc",
          "capsule")
PATTERNS = ("solid", "stripes", "checker", "dots", "rings", "sectors", "gradient", "grid", "waves", "mottled")
MAX_CLASSES = len(SHAPES) * len(PATTERNS)
VAL_START = 2 ** 31  # first global index of the val split; the train split must stay below it

_MIN_CONTRAST = 60.0  # colour distance between the object's mean colour and the background under it
_TWO_PI = 2.0 * math.pi


def class_name(label):
    """``"<shape>/<pattern>"`` of class ``label``."""
    if not 0 <= label < MAX_CLASSES:
        raise ValueError(f"class label {label} out of range: there are {MAX_CLASSES} classes (0..{MAX_CLASSES - 1})")
    return f"{SHAPES[label % len(SHAPES)]}/{PATTERNS[label // len(SHAPES)]}"


# ------------------------------------------------------------------------------------------------------------
# Shapes: f(u, v) < 0 inside, in units of the object's radius (a signed distance where it is cheap, so that
# clip(0.5 - f * radius) gives a ~1 px anti-aliased edge)
# ------------------------------------------------------------------------------------------------------------
class _Frame:
    """Object-frame coordinates of every pixel: u, v in radius units; r and the angle computed on demand."""

    def __init__(self, u, v):
        self.u, self.v = u, v
        self._r = self._theta = None

    @property
    def r(self):
        if self._r is None:
            self._r = np.sqrt(self.u * self.u + self.v * self.v)
        return self._r

    @property
    def theta(self):
        if self._theta is None:
            self._theta = np.arctan2(self.v, self.u)
        return self._theta


def _polygon(fr, n):
    # regular n-gon of circumradius 1: distance to the edge of the angular sector the pixel is in
    sector = _TWO_PI / n
    return fr.r * np.cos(np.mod(fr.theta, sector) - sector / 2) - math.cos(math.pi / n)


def _shape_disc(rng, fr):
    return fr.r - 1.0


def _shape_ring(rng, fr):
    w = rng.uniform(0.14, 0.3)
    return np.abs(fr.r - (1.0 - w)) - w


def _shape_square(rng, fr):
    return np.maximum(np.abs(fr.u), np.abs(fr.v)) - 0.78


def _shape_frame(rng, fr):
    w = rng.uniform(0.12, 0.25)
    return np.abs(np.maximum(np.abs(fr.u), np.abs(fr.v)) - (0.78 - w)) - w


def _shape_triangle(rng, fr):
    return _polygon(fr, 3)


def _shape_hexagon(rng, fr):
    return _polygon(fr, 6)


def _shape_star(rng, fr):
    k = int(rng.integers(5, 8))
    inner = rng.uniform(0.35, 0.55)
    tip = np.abs(2.0 * np.mod(fr.theta * (k / _TWO_PI), 1.0) - 1.0)  # 1 at the points, 0 between them
    return fr.r - (inner + (1.0 - inner) * tip)


def _shape_flower(rng, fr):
    k = int(rng.integers(4, 8))
    inner = rng.uniform(0.35, 0.6)
    return fr.r - (inner + (1.0 - inner) * np.abs(np.cos(fr.theta * (k / 2.0))))  # rounded petals


def _shape_cross(rng, fr):
    w = rng.uniform(0.18, 0.33)
    au, av = np.abs(fr.u), np.abs(fr.v)
    return np.minimum(np.maximum(au - w, av - 0.95), np.maximum(av - w, au - 0.95))


def _shape_crescent(rng, fr):
    d = rng.uniform(0.35, 0.6)
    rho = rng.uniform(0.75, 0.95)
    du = fr.u - d
    return np.maximum(fr.r - 1.0, rho - np.sqrt(du * du + fr.v * fr.v))


def _shape_arc(rng, fr):
    w = rng.uniform(0.14, 0.28)
    gap = rng.uniform(0.45, 1.0)  # half-angle of the opening, around +u
    return np.maximum(np.abs(fr.r - (1.0 - w)) - w, (gap - np.abs(fr.theta)) * fr.r)


def _shape_capsule(rng, fr):
    w = rng.uniform(0.22, 0.4)
    du = np.maximum(np.abs(fr.u) - (1.0 - w), 0.0)
    return np.sqrt(du * du + fr.v * fr.v) - w


_SHAPE_FNS = {name: globals()[f"_shape_{name}"] for name in SHAPES}


# ------------------------------------------------------------------------------------------------------------
# Patterns: t(pu, pv) in [0, 1], the mix between the two colours, in object-frame pixel coordinates
# ------------------------------------------------------------------------------------------------------------
def _soft(x, gain=1.5):
    # a square wave with ~1 px soft edges from a sine (cheaper than a threshold + blur)
    return np.clip(0.5 + gain * x, 0.0, 1.0)


def _along(rng, pu, pv):
    phi = rng.uniform(0, _TWO_PI)
    return pu * math.cos(phi) + pv * math.sin(phi), pv * math.cos(phi) - pu * math.sin(phi)


def _pattern_solid(rng, pu, pv, fr, radius):
    return None


def _pattern_stripes(rng, pu, pv, fr, radius):
    s, _ = _along(rng, pu, pv)
    return _soft(np.sin(s * (_TWO_PI / rng.uniform(5.0, 10.0)) + rng.uniform(0, _TWO_PI)))


def _pattern_checker(rng, pu, pv, fr, radius):
    s, q = _along(rng, pu, pv)
    k = _TWO_PI / rng.uniform(8.0, 14.0)
    return _soft(np.sin(s * k) * np.sin(q * k), 3.0)


def _pattern_dots(rng, pu, pv, fr, radius):
    s, q = _along(rng, pu, pv)
    k = _TWO_PI / rng.uniform(6.0, 11.0)
    return np.clip((np.sin(s * k) * np.sin(q * k) - 0.55) * 8.0, 0.0, 1.0)


def _pattern_rings(rng, pu, pv, fr, radius):
    return _soft(np.sin(fr.r * (radius * _TWO_PI / rng.uniform(5.0, 10.0)) + rng.uniform(0, _TWO_PI)))


def _pattern_sectors(rng, pu, pv, fr, radius):
    return _soft(np.sin(fr.theta * int(rng.integers(3, 7)) + rng.uniform(0, _TWO_PI)), 3.0)


def _pattern_gradient(rng, pu, pv, fr, radius):
    s, _ = _along(rng, pu, pv)
    return np.clip(0.5 + s * (0.6 / radius), 0.0, 1.0)


def _pattern_grid(rng, pu, pv, fr, radius):
    s, q = _along(rng, pu, pv)
    k = _TWO_PI / rng.uniform(7.0, 12.0)
    return np.clip((np.maximum(np.cos(s * k), np.cos(q * k)) - 0.75) * 8.0, 0.0, 1.0)


def _pattern_waves(rng, pu, pv, fr, radius):
    s, q = _along(rng, pu, pv)
    p = rng.uniform(5.0, 9.0)
    wobble = (0.6 * p) * np.sin(q * (_TWO_PI / rng.uniform(2.5 * p, 4.0 * p)))
    return _soft(np.sin((s + wobble) * (_TWO_PI / p)))


def _pattern_mottled(rng, pu, pv, fr, radius):
    acc = 0.0
    for _ in range(3):  # three random plane waves: irregular blobs, no dominant orientation
        s, _ = _along(rng, pu, pv)
        acc = acc + np.sin(s * (_TWO_PI / rng.uniform(6.0, 14.0)) + rng.uniform(0, _TWO_PI))
    return _soft(acc, 1.0)


_PATTERN_FNS = {name: globals()[f"_pattern_{name}"] for name in PATTERNS}


# ------------------------------------------------------------------------------------------------------------
# One image
# ------------------------------------------------------------------------------------------------------------
_GRIDS = {}


def _grid(size):
    """Pixel-centre coordinates (x, y), each (size, size) float32, cached per size."""
    if size not in _GRIDS:
        c = np.arange(size, dtype=np.float32) + 0.5
        _GRIDS[size] = (np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size)))
    return _GRIDS[size]


def _colour(rng):
    return rng.uniform(0.0, 255.0, size=3).astype(np.float32)


def _far_colour(rng, ref, dist):
    c = _colour(rng)
    for _ in range(8):  # a few redraws: almost always far enough after one or two
        if float(np.linalg.norm(c - ref)) >= dist:
            break
        c = _colour(rng)
    return c


def _paint(img, alpha, colour):
    """img (3, S, S) <- img * (1 - alpha) + colour * alpha, colour (3,) or (3, S, S)."""
    col = colour[:, None, None] if colour.ndim == 1 else colour
    img += (col - img) * alpha


def _segment_alpha(rng, xx, yy, size, width):
    """Coverage of a thick segment between two random points (round caps)."""
    p0 = rng.uniform(-0.1 * size, 1.1 * size, size=2)
    d = rng.normal(0.0, 0.35 * size, size=2)
    dx, dy = xx - p0[0], yy - p0[1]
    t = np.clip((dx * d[0] + dy * d[1]) / max(float(d @ d), 1e-6), 0.0, 1.0)
    ex, ey = dx - t * d[0], dy - t * d[1]
    return np.clip(width / 2 + 0.5 - np.sqrt(ex * ex + ey * ey), 0.0, 1.0)


def _background(rng, xx, yy, size):
    c0, c1 = _colour(rng), _colour(rng)
    phi = rng.uniform(0, _TWO_PI)
    ramp = (xx * math.cos(phi) + yy * math.sin(phi)) * (1.0 / size)
    img = c0[:, None, None] + (c1 - c0)[:, None, None] * ramp[None]
    phi = rng.uniform(0, _TWO_PI)
    wave = np.sin((xx * math.cos(phi) + yy * math.sin(phi)) * (_TWO_PI / (size * rng.uniform(0.4, 1.5)))
                  + rng.uniform(0, _TWO_PI))
    img += rng.uniform(-35.0, 35.0, size=(3, 1, 1)).astype(np.float32) * wave[None]
    if rng.random() < 0.5:  # a faint pattern of its own: the object's pattern must be told from the background's
        pattern = PATTERNS[1 + int(rng.integers(len(PATTERNS) - 1))]
        cx, cy = rng.uniform(0, size, size=2)
        fr = _Frame((xx - cx) * (1.0 / size), (yy - cy) * (1.0 / size))
        t = _PATTERN_FNS[pattern](rng, xx - cx, yy - cy, fr, float(size))
        img += rng.uniform(-30.0, 30.0, size=(3, 1, 1)).astype(np.float32) * (t[None] - 0.5)
    for _ in range(int(rng.integers(1, 4))):  # strokes and small blobs that are not the object
        if rng.random() < 0.6:
            alpha = _segment_alpha(rng, xx, yy, size, rng.uniform(1.5, 7.0))
        else:
            cx, cy = rng.uniform(0, size, size=2)
            rad = size * rng.uniform(0.04, 0.14)
            alpha = np.clip(rad + 0.5 - np.sqrt((xx - cx) ** 2 + ((yy - cy) * rng.uniform(0.6, 1.6)) ** 2), 0, 1)
        _paint(img, alpha[None], _colour(rng))
    return img


def render_sample(seed, index, num_classes=MAX_CLASSES, image_size=80):
    """Image ``index`` (a global index: train ``[0, VAL_START)``, val from ``VAL_START``) of the set with this
    seed. Returns (uint8 array (3, S, S), BGR channel order as detectron2 reads images; int label)."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES} (shapes x patterns), got {num_classes}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 px, got {image_size}")
    label = int(index % num_classes)
    shape, pattern = SHAPES[label % len(SHAPES)], PATTERNS[label // len(SHAPES)]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    size = int(image_size)
    xx, yy = _grid(size)
    img = _background(rng, xx, yy, size)

    # the object: log-uniform diameter 36-90% of the side, centre anywhere that keeps most of it inside
    radius = size * math.exp(rng.uniform(math.log(0.18), math.log(0.45)))
    margin = 0.6 * radius
    cx, cy = rng.uniform(min(margin, size / 2), max(size - margin, size / 2), size=2)
    rot = rng.uniform(0, _TWO_PI)
    squash = rng.uniform(0.75, 1.0)
    dx, dy = xx - cx, yy - cy
    pu = dx * math.cos(rot) + dy * math.sin(rot)  # object frame, px
    pv = dy * math.cos(rot) - dx * math.sin(rot)
    fr = _Frame(pu * (1.0 / radius), pv * (1.0 / (radius * squash)))
    alpha = np.clip(0.5 - _SHAPE_FNS[shape](rng, fr) * radius, 0.0, 1.0)
    t = _PATTERN_FNS[pattern](rng, pu, pv, fr, radius)

    inside = alpha > 0.5
    under = img[:, inside].mean(axis=1) if inside.any() else img.mean(axis=(1, 2))
    c1 = _far_colour(rng, under, _MIN_CONTRAST)
    if t is None:
        fill = c1 + rng.normal(0.0, 4.0, size=3).astype(np.float32)
    else:
        c2 = _far_colour(rng, c1, 90.0)
        fill = c1[:, None, None] + (c2 - c1)[:, None, None] * t[None]
    _paint(img, alpha[None], fill)

    if rng.random() < 0.3:  # a stroke over the object: partial occlusion
        _paint(img, _segment_alpha(rng, xx, yy, size, rng.uniform(1.5, 5.0))[None], _colour(rng))
    img += rng.standard_normal(size=img.shape, dtype=np.float32) * rng.uniform(2.0, 10.0)
    return np.clip(img, 0.0, 255.0).round().astype(np.uint8), label


class PretrainClasses(torch.utils.data.Dataset):
    """The generated classification set as a torch ``Dataset``: ``ds[i]`` -> (uint8 tensor (3, S, S) BGR, label).

    ``split`` "train" holds global indices ``[0, size)``, "val" ``[VAL_START, VAL_START + size)``; nothing is
    stored, every item is rendered when asked for.
    """

    def __init__(self, split="train", *, seed=0, size=1_000_000, num_classes=MAX_CLASSES, image_size=80):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 1 <= size <= VAL_START:
            raise ValueError(f"size must be in 1..{VAL_START} (the val split starts at global index {VAL_START}), "
                             f"got {size}")
        render_sample(seed, 0, num_classes, image_size)  # checks num_classes and image_size once, here
        self.split, self.seed, self.size = split, int(seed), int(size)
        self.num_classes, self.image_size = int(num_classes), int(image_size)
        self.start = 0 if split == "train" else VAL_START

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for the {self.split} split of {self.size} images")
        img, label = render_sample(self.seed, self.start + i, self.num_classes, self.image_size)
        return torch.from_numpy(img), label


def benchmark_render(image_size=80, n=500, seed=0):
    """Images per second of `render_sample` in this thread (a single core's rate)."""
    render_sample(seed, 0, MAX_CLASSES, image_size)
    t0 = time.perf_counter()
    for i in range(n):
        render_sample(seed, i, MAX_CLASSES, image_size)
    return n / (time.perf_counter() - t0)
