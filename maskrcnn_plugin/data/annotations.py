"""Checks of COCO annotation fields before any library sees them (engineering, not a paper section).

pycocotools trusts its input: a polygon with a NaN coordinate is rasterised along a path of ~2**31 pixels (the
process grows until the kernel kills it), and a compressed RLE whose run lengths do not add up to the image
overruns the buffer it is decoded into. Each function here says whether one field is well-formed, and why not,
without allocating more than the field itself; `maskrcnn_plugin.data.coco_json.load_coco_json_checked` drops
and counts what fails.
"""
import math

__all__ = ["polygon_problem", "rle_problem", "keypoints_problem"]

# Polygon vertices may lie outside the image (pycocotools clips the mask), but not arbitrarily far: the
# rasteriser walks every edge pixel by pixel.
_POLYGON_MARGIN = 1.0  # in image sizes on each side


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def polygon_problem(polygon, height, width):
    """None if ``polygon`` is a flat ``[x0, y0, x1, y1, ...]`` list of >= 3 finite points within one image
    size of the image, else a short reason."""
    if not isinstance(polygon, list):
        return "not a list"
    if len(polygon) < 6 or len(polygon) % 2:
        return "fewer than 3 points or an odd number of coordinates"
    if not all(_is_number(v) and math.isfinite(v) for v in polygon):
        return "a non-numeric or non-finite coordinate"
    xs, ys = polygon[0::2], polygon[1::2]
    mx, my = _POLYGON_MARGIN * width, _POLYGON_MARGIN * height
    if min(xs) < -mx or max(xs) > width + mx or min(ys) < -my or max(ys) > height + my:
        return "coordinates far outside the image"
    return None


def _compressed_counts(counts):
    """Run lengths of a compressed RLE string (pycocotools' 6-bit, delta-coded format), or None if malformed."""
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            return None
    runs = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(counts) or shift > 60:
                return None
            c = ord(counts[pos]) - 48
            if not 0 <= c < 64:
                return None
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value -= 1 << shift  # sign extension
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def rle_problem(rle, height, width):
    """None if ``rle`` (a dict with ``size`` and ``counts``, compressed or not) describes an ``height x
    width`` mask whose run lengths are non-negative and add up to ``height * width``, else a short reason."""
    size = rle.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        return "size is not [height, width]"
    if list(size) != [height, width]:
        return f"size {list(size)} differs from the image's [{height}, {width}]"
    counts = rle.get("counts")
    if isinstance(counts, list):
        runs = counts
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in runs):
            return "counts are not integers"
    elif isinstance(counts, (str, bytes)):
        runs = _compressed_counts(counts)
        if runs is None:
            return "counts are not a valid compressed RLE string"
    else:
        return "counts are neither a list nor a string"
    if any(v < 0 for v in runs):
        return "a negative run length"
    if sum(runs) != height * width:
        return f"run lengths add up to {sum(runs)}, not height * width = {height * width}"
    return None


def keypoints_problem(keypoints, num_keypoints=None):
    """None if ``keypoints`` is a flat ``[x, y, v] * K`` list (K = ``num_keypoints`` when given) of finite
    numbers with visibility v in {0, 1, 2}, else a short reason."""
    if not isinstance(keypoints, list) or len(keypoints) % 3:
        return "not a flat list of (x, y, v) triples"
    if num_keypoints is not None and len(keypoints) != 3 * num_keypoints:
        return f"{len(keypoints) // 3} keypoints where the category has {num_keypoints}"
    if not all(_is_number(v) and math.isfinite(v) for v in keypoints):
        return "a non-numeric or non-finite value"
    if any(v not in (0, 1, 2) for v in keypoints[2::3]):
        return "a visibility flag other than 0, 1 or 2"
    return None
