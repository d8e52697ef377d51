"""Faster CPU paste-back of the predicted M x M masks into the image (the last step of Mask R-CNN inference).

The mask head predicts one M x M (28 x 28 on FPN) probability map per detection. At the end of inference
detectron2's `detector_postprocess` resizes each map to its box in the output image and thresholds it at 0.5
(`detectron2.layers.paste_masks_in_image`); the paper (Section 3.1, "Inference") notes that this costs about
15 ms per image on a CPU. This module gives the same result with less work:

* **Same sampling convention.** An image pixel (x, y) (centre x + 0.5, y + 0.5) reads the mask at the
  continuous mask coordinate `(x + 0.5 - x0) / (x1 - x0) * M - 0.5` (and likewise for y), bilinearly,
  with zeros outside the mask (`grid_sample(..., align_corners=False)` in detectron2). Only pixels in
  detectron2's per-box region `[floor(x0) - 1, ceil(x1) + 1) x [floor(y0) - 1, ceil(y1) + 1)`, clipped to the
  image, are written (outside it detectron2 leaves 0 even for `threshold == 0`), so the output is the same
  tensor up to float rounding.
* **One compiled pass** (`layers/csrc/paste_masks.cpp`, in the plugin's C++ extension): each mask's region
  is filled in one loop, masks split across threads, with no per-box tensor operations; detectron2 instead
  builds an (h x w x 2) sampling grid per box, calls `grid_sample` and then thresholds and copies the result,
  one box at a time.
* **Lazily zeroed output.** The (N, H, W) result lives in an anonymous memory mapping (zero pages supplied by
  the kernel on first write) instead of `torch.zeros` (which writes every byte), and only set pixels are
  written, so the cost is proportional to the pasted masks, not to N x H x W. The result is an ordinary
  contiguous CPU tensor.
* **Pure-PyTorch path** beside the kernel (float64 masks, ``MASKRCNN_PLUGIN_ROI_BACKEND=python``, or when the
  extension cannot be built): separable bilinear interpolation, the column pass for all boxes as one
  vectorised gather, then one row gather + lerp + threshold per box.

Agreement with detectron2: the pixel coordinates are computed with detectron2's own float32 operations, the
kernel forms grid_sample's four corner weights and sums them in its order; the interpolated values can still
differ from grid_sample's in the last bit (on CPUs with FMA, PyTorch's vectorised kernel fuses some of its
multiply-adds; the pure-PyTorch path uses lerps), so a pixel can only flip when its value is within a few
1e-7 of the threshold. `tests/test_paste.py` checks per-instance IoU >= 0.999 and counts
exact equality.

Non-CPU tensors and TorchScript fall back to detectron2's implementation (grid_sample over chunks of masks
is the faster choice on a GPU).

Using it in a model: `MODEL.META_ARCHITECTURE: "GeneralizedRCNNFastPaste"` (registered below once this
module is imported) is detectron2's `GeneralizedRCNN` whose final postprocessing pastes masks with
`paste_masks_in_image_fast`; everything else, including the returned fields and their types, is unchanged.
"""
import math
import mmap
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch.nn import functional as F

from detectron2.layers import paste_masks_in_image
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances, ROIMasks

from .layers._registration import _ext_module, _use_cpp

__all__ = [
    "paste_masks_in_image_fast",
    "detector_postprocess_fast",
    "GeneralizedRCNNFastPaste",
]


def _paste_regions(boxes: torch.Tensor, img_h: int, img_w: int):
    """detectron2's per-box pixel region (`_do_paste_mask` with one box per chunk and skip_empty), clipped so
    that boxes wholly outside the image give an empty region instead of an error. int64 (N,) tensors."""
    x0 = (boxes[:, 0].floor() - 1).clamp(min=0)
    y0 = (boxes[:, 1].floor() - 1).clamp(min=0)
    x1 = (boxes[:, 2].ceil() + 1).clamp(max=img_w)
    y1 = (boxes[:, 3].ceil() + 1).clamp(max=img_h)
    # Non-finite coordinates (not produced by a detector) give an empty region rather than a cast overflow.
    x0, y0, x1, y1 = (torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0).to(torch.int64) for t in (x0, y0, x1, y1))
    x0 = x0.clamp(max=img_w)
    y0 = y0.clamp(max=img_h)
    return x0, y0, torch.maximum(x1, x0), torch.maximum(y1, y0)


def _axis_samples(lo: torch.Tensor, hi: torch.Tensor, b0: torch.Tensor, b1: torch.Tensor, side: int, dtype):
    """Bilinear sample table along one axis for all boxes at once.

    Box i covers pixels lo[i] .. hi[i] - 1 and spans [b0[i], b1[i]] in image coordinates. Returns the
    per-box pixel counts and, flattened over all boxes' pixels: the owning box, the two padded mask indices
    (index 0 and side + 1 are zero padding) and the weight of the second one (the first one's is 1 - it).
    """
    counts = hi - lo
    total = int(counts.sum())
    n = counts.numel()
    owner = torch.repeat_interleave(torch.arange(n), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    pix = (lo[owner] + (torch.arange(total) - first[owner])).to(torch.float32) + 0.5
    # detectron2's grid coordinate, op by op (same dtypes, so bit-identical), then grid_sample's
    # unnormalisation for align_corners=False: ((g + 1) * side - 1) / 2.
    g = (pix - b0[owner]) / (b1[owner] - b0[owner]) * 2 - 1
    g = g.to(dtype)
    pos = (g + 1) * (side / 2.0) - 0.5
    # Anything below -1 or above `side` reads only zeros; clamping keeps the index arithmetic finite.
    # A zero-width box gives inf / nan here; grid_sample then returns nan (never >= threshold), and so do
    # we: its weight stays nan.
    finite = torch.isfinite(pos)
    pos = torch.nan_to_num(pos, nan=-2.0, posinf=side + 1.0, neginf=-2.0).clamp(-2.0, side + 1.0)
    fl = pos.floor()
    w1 = torch.where(finite, pos - fl, float("nan"))
    i0 = fl.to(torch.int64) + 1  # + 1: index into the zero-padded mask
    i1 = (i0 + 1).clamp(0, side + 1)
    i0 = i0.clamp(0, side + 1)
    return counts, owner, i0, i1, w1


def _lazy_zeros(shape, dtype: torch.dtype) -> torch.Tensor:
    """A zero (N, H, W) bool / uint8 CPU tensor whose pages are only materialised when written.

    It lives in an anonymous private mapping: the kernel supplies zero pages on first write, 4 KiB at a
    time, so the cost follows the pasted pixels, not N x H x W (`torch.zeros` writes every byte, ~40 ms for
    100 masks at 800 x 1066). `numpy.zeros` (calloc) would be lazy too, but numpy requests transparent huge
    pages for large arrays, and faulting 2 MiB pages cost anywhere from 15 to 120 ms per image here,
    depending on the allocator's state (see docs/performance.md). The tensor keeps the mapping alive."""
    nbytes = math.prod(shape)
    flags = getattr(mmap, "MAP_PRIVATE", None), getattr(mmap, "MAP_ANONYMOUS", None)
    if nbytes == 0 or None in flags:  # (no anonymous mmap flags on Windows)
        return torch.zeros(shape, dtype=dtype)
    buf = mmap.mmap(-1, nbytes, flags=flags[0] | flags[1])
    return torch.frombuffer(buf, dtype=dtype, count=nbytes).view(shape)


def paste_masks_in_image_fast(
    masks: torch.Tensor, boxes: Union[Boxes, torch.Tensor], image_shape: Tuple[int, int], threshold: float = 0.5
) -> torch.Tensor:
    """Drop-in replacement for `detectron2.layers.paste_masks_in_image` (same arguments and result).

    Args:
        masks: (N, M, M) soft masks in [0, 1] (any float dtype; other dtypes are converted to float32).
        boxes: `Boxes` or (N, 4) tensor of x0, y0, x1, y1 in image pixels; boxes[i] belongs to masks[i].
        image_shape: (height, width) of the output image.
        threshold: pixels with value >= threshold are True (bool result); threshold < 0 returns the values
            scaled to uint8 (value * 255, truncated) for visualisation, as detectron2 does.

    Returns:
        (N, height, width) bool tensor (uint8 if threshold < 0, or when N == 0 as in detectron2).
    """
    assert masks.shape[-1] == masks.shape[-2], "Only square mask predictions are supported"
    n = len(masks)
    img_h, img_w = int(image_shape[0]), int(image_shape[1])
    if n == 0:
        return masks.new_empty((0, img_h, img_w), dtype=torch.uint8)
    if not isinstance(boxes, torch.Tensor):
        boxes = boxes.tensor
    assert len(boxes) == n, boxes.shape
    if masks.device.type != "cpu" or boxes.device.type != "cpu" or torch.jit.is_scripting():
        return paste_masks_in_image(masks, boxes, (img_h, img_w), threshold=threshold)

    side = masks.shape[-1]
    if not masks.dtype.is_floating_point:
        masks = masks.float()
    dtype = masks.dtype
    out = _lazy_zeros((n, img_h, img_w), torch.bool if threshold >= 0 else torch.uint8)
    if dtype == torch.float32 and boxes.dtype == torch.float32 and _use_cpp(masks):
        _ext_module().paste_masks(masks.reshape(n, side, side).contiguous(), boxes.contiguous(), out, float(threshold))
        return out

    x_lo, y_lo, x_hi, y_hi = _paste_regions(boxes, img_h, img_w)
    wc, x_owner, xi0, xi1, xw1 = _axis_samples(x_lo, x_hi, boxes[:, 0], boxes[:, 2], side, dtype)
    hc, _, yi0, yi1, yw1 = _axis_samples(y_lo, y_hi, boxes[:, 1], boxes[:, 3], side, dtype)
    if int(wc.sum()) == 0 or int(hc.sum()) == 0:
        return out

    # Column pass for every box at once: cols[c, r] = value of padded mask row r of column c's box,
    # interpolated at column c's x position.
    padded = F.pad(masks.reshape(n, side, side), (1, 1, 1, 1))
    by_column = padded.transpose(1, 2).reshape(n * (side + 2), side + 2)
    base = x_owner * (side + 2)
    cols = torch.lerp(by_column[base + xi0], by_column[base + xi1], xw1[:, None])
    rows_by_col = cols.t().contiguous()  # (side + 2, total width): one box's columns are a contiguous slice
    # Both source rows of every output row, interleaved, so that each box needs a single row gather.
    row_pairs = torch.stack([yi0, yi1], 1).view(-1)
    yw1 = yw1[:, None]

    x_start = (torch.cumsum(wc, 0) - wc).tolist()
    y_start = (torch.cumsum(hc, 0) - hc).tolist()
    for i, (w, h, c0, r0, x0, y0) in enumerate(
        zip(wc.tolist(), hc.tolist(), x_start, y_start, x_lo.tolist(), y_lo.tolist())
    ):
        if w == 0 or h == 0:
            continue
        pairs = rows_by_col[:, c0 : c0 + w].index_select(0, row_pairs[2 * r0 : 2 * (r0 + h)]).view(h, 2, w)
        value = torch.lerp(pairs[:, 0], pairs[:, 1], yw1[r0 : r0 + h])
        target = out[i, y0 : y0 + h, x0 : x0 + w]
        if threshold >= 0:
            torch.ge(value, threshold, out=target)
        else:
            target.copy_((value * 255).to(torch.uint8))
    return out


def detector_postprocess_fast(results: Instances, output_height: int, output_width: int, mask_threshold: float = 0.5):
    """detectron2's `detector_postprocess` (rescale and clip boxes, drop empty boxes, rescale keypoints) with
    the masks pasted by :func:`paste_masks_in_image_fast`. Same output fields and types.

    Like detectron2's, it may modify `results` in place (its boxes are rescaled and clipped)."""
    if not results.has("pred_masks"):
        return detector_postprocess(results, output_height, output_width, mask_threshold)
    masks = results.pred_masks
    masks = masks.tensor if isinstance(masks, ROIMasks) else masks[:, 0, :, :]
    names = list(results.get_fields())
    fields = {k: v for k, v in results.get_fields().items() if k != "pred_masks"}  # get_fields() is live
    # detectron2 does the box rescaling, clipping and empty-box filtering; an index field tells which masks
    # survived. (The field name cannot clash: Instances fields are the model's own prediction names.)
    stripped = Instances(results.image_size, **fields)
    stripped.set("_paste_index", torch.arange(len(results), device=masks.device))
    out = detector_postprocess(stripped, output_height, output_width, mask_threshold)
    keep = out.get("_paste_index")
    out.remove("_paste_index")
    out.pred_masks = paste_masks_in_image_fast(
        masks[keep], out.pred_boxes, (output_height, output_width), threshold=mask_threshold
    )
    # Keep detectron2's field order (pred_masks where it was) for printing / iteration.
    ordered = Instances(out.image_size)
    for name in names:
        if out.has(name):
            ordered.set(name, out.get(name))
    return ordered


@META_ARCH_REGISTRY.register()
class GeneralizedRCNNFastPaste(GeneralizedRCNN):
    """`GeneralizedRCNN` whose inference pastes masks with :func:`paste_masks_in_image_fast`.

    Select it with `MODEL.META_ARCHITECTURE: "GeneralizedRCNNFastPaste"`. Parameters, state-dict keys,
    training and the raw (`do_postprocess=False`) outputs are those of `GeneralizedRCNN`, so checkpoints load
    into either. (detectron2 calls its postprocessing as a static method of `GeneralizedRCNN`, not through
    `self`, so `inference` is what has to be overridden.)
    """

    def inference(
        self,
        batched_inputs: List[Dict[str, torch.Tensor]],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        results = super().inference(batched_inputs, detected_instances, do_postprocess=False)
        if not do_postprocess:
            return results
        return self.postprocess_fast(results, batched_inputs)

    @staticmethod
    def postprocess_fast(instances: List[Instances], batched_inputs: List[Dict[str, torch.Tensor]]):
        """detectron2's postprocessing of `GeneralizedRCNN` with :func:`detector_postprocess_fast`. The raw results' image_size
        is the network input size of each image (what detectron2 passes as image_sizes)."""
        processed = []
        for results, inputs in zip(instances, batched_inputs):
            height = inputs.get("height", results.image_size[0])
            width = inputs.get("width", results.image_size[1])
            processed.append({"instances": detector_postprocess_fast(results, height, width)})
        return processed
