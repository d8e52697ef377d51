"""float16 / bfloat16 RoI operators (issues 23 and 28) and the empty-feature-map error.

Half-precision inputs are computed in float32 and returned in their dtype (as torchvision does). So the half
result must be exactly the float32 result on the same (half-rounded) values, rounded once to the half dtype,
forward and backward; and it must stay within half-precision tolerance of float32 on the original data.
"""
import pytest
import torch

from maskrcnn_plugin.layers import roi_align, roi_pool, roi_warp

OPS = {
    "pool": lambda x, r: roi_pool(x, r, (3, 4), 0.25),
    "warp_avg": lambda x, r: roi_warp(x, r, (4, 3), 0.25, 2, "avg", True),
    "warp_max": lambda x, r: roi_warp(x, r, (4, 3), 0.25, -1, "max", False),
    "align_avg": lambda x, r: roi_align(x, r, (3, 4), 0.25, -1, "avg", True),
    "align_max": lambda x, r: roi_align(x, r, (3, 4), 0.25, 2, "max", False),
}
HALF = [torch.float16, torch.bfloat16]


def make_case(seed, n=2, c=4, h=12, w=15, k=10):
    """float32 features and rois (scale 0.25) incl. empty, out-of-image and partly outside boxes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    xy = torch.rand(k, 2, generator=g) * torch.tensor([4.4 * w, 4.4 * h]) - 4.0
    wh = torch.rand(k, 2, generator=g) * torch.tensor([3.0 * w, 3.0 * h])
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[0] = torch.tensor([8.0, 8.0, 8.0, 8.0])
    boxes[1] = torch.tensor([-90.0, -60.0, -30.0, -20.0])
    boxes[2] = torch.tensor([4.0 * w - 9.0, 4.0 * h - 7.0, 4.0 * w + 40.0, 4.0 * h + 30.0])
    batch = torch.randint(0, n, (k, 1), generator=g).float()
    return x, torch.cat([batch, boxes], 1)


def _forward_backward(fn, x, rois, grad):
    t = x.detach().clone().requires_grad_(True)
    y = fn(t, rois)
    (gx,) = torch.autograd.grad(y, t, grad.to(y.dtype))
    return y.detach(), gx


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", sorted(OPS))
def test_half_is_float32_rounded_once(name, dtype):
    x, rois = make_case(1)
    x_h, rois_h = x.to(dtype), rois.to(dtype)
    go = torch.randn(rois.size(0), 4, *((4, 3) if name.startswith("warp") else (3, 4)),
                     generator=torch.Generator().manual_seed(2))
    y, gx = _forward_backward(OPS[name], x_h, rois_h, go)
    assert y.dtype == dtype and gx.dtype == dtype
    y32, gx32 = _forward_backward(OPS[name], x_h.float(), rois_h.float(), go.to(dtype).float())
    assert torch.equal(y, y32.to(dtype))
    assert torch.equal(gx, gx32.to(dtype))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", sorted(OPS))
def test_half_close_to_float32(name, dtype):
    """Within half-precision tolerance of float32 on the unrounded data (boxes on the 1/4-cell grid, which
    both dtypes hold exactly, so that the geometry is the same and only the feature values are rounded)."""
    x, rois = make_case(3)
    rois[:, 1:] = torch.round(rois[:, 1:])
    go = torch.randn(rois.size(0), 4, *((4, 3) if name.startswith("warp") else (3, 4)),
                     generator=torch.Generator().manual_seed(4))
    y32, gx32 = _forward_backward(OPS[name], x, rois, go)
    y, gx = _forward_backward(OPS[name], x.to(dtype), rois.to(dtype), go)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(y.float(), y32, rtol=2 * eps, atol=4 * eps)
    if name.endswith("avg"):
        torch.testing.assert_close(gx.float(), gx32, rtol=4 * eps, atol=8 * eps)
    else:
        # max / RoIPool: rounding may change which sample (cell) is the maximum where two are within
        # half-precision of each other; elsewhere the gradient equals float32's within tolerance
        touched = (gx32 != 0) | (gx != 0)
        close = torch.isclose(gx.float(), gx32, rtol=4 * eps, atol=8 * eps)
        assert touched.sum() > 50 and close[touched].float().mean() >= 0.9


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("shape", [(2, 4, 0, 15), (2, 4, 12, 0)])
def test_empty_feature_map_raises(name, shape):
    _, rois = make_case(5)
    x = torch.zeros(shape)
    with pytest.raises(ValueError, match=rf"empty feature map of shape \({shape[0]}, {shape[1]}, {shape[2]}, {shape[3]}\)"):
        OPS[name](x, rois)
    op = {"pool": "roi_pool", "warp": "roi_warp", "align": "roi_align"}[name.split("_")[0]]
    args = (x, rois, 0.25, 2, 2) if op == "roi_pool" else (x, rois, 0.25, 2, 2, 2, "avg", True)
    with pytest.raises(ValueError, match="empty feature map"):
        getattr(torch.ops.maskrcnn_plugin, op)(*args)
    # no box: nothing to read, an empty result
    assert OPS[name](x, rois[:0]).shape[0] == 0
