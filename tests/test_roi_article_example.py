"""The worked example used to explain RoIAlign (an 800 x 800 image, stride 32, a 665 x 665 box, 7 x 7 output).

The 800 x 800 image gives a 25 x 25 feature map at stride 32; the box (0, 0, 665, 665) spans
665 / 32 = 20.78125 cells.

* RoIPool (torchvision's rule, which the explanatory article simplifies to "round down to 20 cells"):
  each corner is rounded, round(0) = 0 and round(20.78) = 21, and the end cell is inclusive, so the RoI
  covers cells 0..21 = **22 cells**. The 7 bins are 22 / 7 = 3.14 cells wide and their edges are snapped
  to floor(i * 22/7) .. ceil((i + 1) * 22/7): [0, 4), [3, 7), [6, 10), [9, 13), [12, 16), [15, 19),
  [18, 22) -- every bin maxes over 4 x 4 whole cells and neighbouring bins share a row / column.
* RoIAlign (paper, aligned=False, sampling_ratio=2): bins are 20.78125 / 7 = 2.96875 cells wide, with
  2 x 2 samples at 1/4 and 3/4 of each bin: y (and x) = 2.96875 * i + 0.7421875 and 2.96875 * i + 2.2265625.
* RoIWarp: RoIPool's 22 snapped cells [0, 22) cut into 7 unsnapped bins of 22 / 7 cells, sampled at 1/4
  and 3/4 of each bin, read with cell centres at i + 0.5 (coordinate p - 0.5).
"""
import pytest
import torch
import torchvision

from maskrcnn_plugin.layers import (
    roi_align,
    roi_align_sample_points,
    roi_pool,
    roi_pool_bins,
    roi_warp,
    roi_warp_sample_points,
)
from maskrcnn_plugin.layers import _ext

IMAGE = 800
STRIDE = 32
FEAT = IMAGE // STRIDE  # 25
BOX = (0.0, 0.0, 665.0, 665.0)
OUT = 7
SCALE = 1.0 / STRIDE


@pytest.fixture(params=["python", "cpp"])
def backend(request, monkeypatch):
    if request.param == "cpp" and _ext.load_extension() is None:
        pytest.skip("C++ RoI extension could not be built here")
    monkeypatch.setenv("MASKRCNN_PLUGIN_ROI_BACKEND", request.param)
    return request.param


def index_map(dtype=torch.float64):
    """Feature map whose value identifies the cell: value(y, x) = y * 25 + x (linear, so also samples)."""
    r = torch.arange(FEAT, dtype=dtype)
    return (r[:, None] * FEAT + r[None, :]).reshape(1, 1, FEAT, FEAT)


def rois(dtype=torch.float64):
    return torch.tensor([[0.0, *BOX]], dtype=dtype)


def test_geometry_numbers():
    assert FEAT == 25
    assert 665 / 32 == 20.78125
    assert 665 / 32 / 7 == 2.96875


def test_roipool_cells():
    rows, cols = roi_pool_bins(BOX, SCALE, OUT, (FEAT, FEAT))
    expected = [(0, 4), (3, 7), (6, 10), (9, 13), (12, 16), (15, 19), (18, 22)]
    assert rows == expected and cols == expected
    # 22 cells: 0 .. 21 inclusive (round(665/32) = 21, end cell inclusive), not the article's 20
    assert rows[0][0] == 0 and rows[-1][1] - 1 == 21
    # bins are 22 / 7 = 3.14 cells wide before snapping; each snapped bin has 4 cells
    assert all(e - s == 4 for s, e in rows)
    # same without clipping and in float64 arithmetic
    assert roi_pool_bins(BOX, SCALE, OUT) == (expected, expected)
    assert roi_pool_bins(BOX, SCALE, OUT, (FEAT, FEAT), dtype=torch.float64) == (expected, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roipool_output_picks_those_cells(backend, dtype):
    x = index_map(dtype).requires_grad_(True)
    out = roi_pool(x, rois(dtype), OUT, SCALE)
    assert torch.equal(out, torchvision.ops.roi_pool(x, rois(dtype), OUT, SCALE))
    rows, cols = roi_pool_bins(BOX, SCALE, OUT, (FEAT, FEAT))
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            # the map increases along y and x, so the max of the bin is its bottom-right cell
            assert out[0, 0, i, j].item() == (r1 - 1) * FEAT + (c1 - 1)
    # the gradient of one bin lands on exactly that cell
    out[0, 0, 2, 5].backward()
    g = x.grad[0, 0]
    assert g.sum().item() == 1.0 and g[rows[2][1] - 1, cols[5][1] - 1].item() == 1.0
    # the snapped RoI reaches cell 21 although the box ends at 20.78: features of cell 21 (beyond the box)
    # are used, which is the misalignment RoIAlign removes
    assert out[0, 0, 6, 6].item() == 21 * FEAT + 21


def test_roialign_sample_points():
    ys, xs = roi_align_sample_points(BOX, SCALE, OUT, sampling_ratio=2, aligned=False)
    assert ys == xs
    b = 665 / 32 / 7  # 2.96875 cells per bin
    for i in range(OUT):
        assert ys[i] == [i * b + 0.25 * b, i * b + 0.75 * b]
    assert ys[0] == [0.7421875, 2.2265625]
    assert ys[6] == [18.5546875, 20.0390625]
    # aligned=True (ROIAlignV2) shifts every point by half a cell
    ys2, _ = roi_align_sample_points(BOX, SCALE, OUT, sampling_ratio=2, aligned=True)
    assert ys2 == [[v - 0.5 for v in row] for row in ys]
    # adaptive sampling: ceil(20.78 / 7) = 3 points per bin side
    ys3, _ = roi_align_sample_points(BOX, SCALE, OUT, sampling_ratio=0)
    assert all(len(r) == 3 for r in ys3)


@pytest.mark.parametrize("agg", ["avg", "max"])
def test_roialign_output_reads_those_points(backend, agg):
    x = index_map().requires_grad_(True)
    out = roi_align(x, rois(), OUT, SCALE, 2, agg, False)
    ys, xs = roi_align_sample_points(BOX, SCALE, OUT, sampling_ratio=2, aligned=False)
    for i in range(OUT):
        for j in range(OUT):
            # bilinear interpolation of a linear map is exact: a sample at (y, x) reads y * 25 + x
            if agg == "avg":
                expect = sum(ys[i]) / 2 * FEAT + sum(xs[j]) / 2
            else:
                expect = max(ys[i]) * FEAT + max(xs[j])
            assert out[0, 0, i, j].item() == pytest.approx(expect, rel=1e-12)
    if agg == "avg":
        assert torch.allclose(out, torchvision.ops.roi_align(x, rois(), OUT, SCALE, 2, False))
    # the gradient of bin (3, 1) is the bilinear weights of its 4 samples (avg) or of the arg-max one (max)
    out[0, 0, 3, 1].backward()
    expect = torch.zeros(FEAT, FEAT, dtype=torch.float64)
    pts = [(y, x_) for y in ys[3] for x_ in xs[1]] if agg == "avg" else [(max(ys[3]), max(xs[1]))]
    for y, x_ in pts:
        y0, x0 = int(y), int(x_)
        ly, lx = y - y0, x_ - x0
        w = 1.0 / len(pts)
        expect[y0, x0] += w * (1 - ly) * (1 - lx)
        expect[y0, x0 + 1] += w * (1 - ly) * lx
        expect[y0 + 1, x0] += w * ly * (1 - lx)
        expect[y0 + 1, x0 + 1] += w * ly * lx
    assert torch.allclose(x.grad[0, 0], expect, atol=1e-12)


def test_roiwarp_sample_points_and_output(backend):
    ys, xs = roi_warp_sample_points(BOX, SCALE, OUT, sampling_ratio=2)
    b = 22 / 7  # the snapped 22 cells [0, 22) in 7 unsnapped bins
    for i in range(OUT):
        assert ys[i] == pytest.approx([i * b + 0.25 * b - 0.5, i * b + 0.75 * b - 0.5], abs=1e-12)
    x = index_map()
    out = roi_warp(x, rois(), OUT, SCALE, 2, "avg")
    for i in range(OUT):
        for j in range(OUT):
            # the first sample (-0.5 + 0.786 = 0.29) lies inside the map, so the linear map is read exactly
            assert out[0, 0, i, j].item() == pytest.approx(sum(ys[i]) / 2 * FEAT + sum(xs[j]) / 2, rel=1e-12)
    # RoIWarp's samples stay within the 22 snapped cells (centres 0 .. 21) like RoIPool's bins
    assert min(min(r) for r in ys) > 0 and max(max(r) for r in ys) < 21
