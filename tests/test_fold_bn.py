"""fold_batchnorm (maskrcnn_plugin/fold_bn.py): the folded convolution computes conv -> frozen BN, against
a float64 reference; on detectron2's ResNet and FPN backbones the folded model's features match the unfolded
model's to float32 rounding, and nothing but frozen BN is folded."""
import copy

import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec

from maskrcnn_plugin.fold_bn import fold_batchnorm


def _random_frozen_bn(channels, generator):
    bn = FrozenBatchNorm2d(channels)
    bn.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
    bn.bias.copy_(torch.randn(channels, generator=generator))
    bn.running_mean.copy_(torch.randn(channels, generator=generator))
    bn.running_var.copy_(torch.rand(channels, generator=generator) + 0.1)
    return bn


def _reference(x, weight, bias, bn, stride, padding):
    """conv, then (y - mean) / sqrt(var + eps) * gamma + beta, written out in float64."""
    y = torch.nn.functional.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), stride, padding)
    view = (1, -1, 1, 1)
    return ((y - bn.running_mean.double().view(view)) / (bn.running_var.double().view(view) + bn.eps).sqrt()
            * bn.weight.double().view(view) + bn.bias.double().view(view))


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("activation", [None, torch.relu])
def test_folded_conv_equals_conv_then_frozen_bn(with_bias, activation):
    g = torch.Generator().manual_seed(0)
    conv = Conv2d(5, 7, 3, stride=2, padding=1, bias=with_bias, norm=_random_frozen_bn(7, g), activation=activation)
    conv = conv.double()
    x = torch.randn(2, 5, 11, 9, generator=g, dtype=torch.float64)
    expected = _reference(x, conv.weight, conv.bias, conv.norm, 2, 1)
    if activation is not None:
        expected = activation(expected)
    assert torch.allclose(conv(x), expected, rtol=0, atol=1e-12)  # the reference is right
    assert fold_batchnorm(conv) == 1
    assert conv.norm is None and conv.bias is not None and conv.activation is activation
    assert torch.allclose(conv(x), expected, rtol=0, atol=1e-12)
    assert fold_batchnorm(conv) == 0  # nothing left to fold


def _backbone(depth, norm, fpn, freeze_at=2):
    from detectron2.modeling import build_backbone

    from maskrcnn_plugin.config import get_plugin_cfg

    cfg = get_plugin_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at  # frozen stages get FrozenBN whatever NORM says
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone" if fpn else "build_resnet_backbone"
    torch.manual_seed(0)
    model = build_backbone(cfg, ShapeSpec(channels=3)).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # statistics unlike the identity, as a trained backbone has
        if isinstance(m, FrozenBatchNorm2d):
            m.load_state_dict(_random_frozen_bn(m.num_features, g).state_dict())
    return model


@pytest.mark.parametrize("fpn", [False, True], ids=["resnet18", "resnet18_fpn"])
def test_folded_backbone_gives_the_same_features(fpn):
    model = _backbone(18, "FrozenBN", fpn)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(x)
    folded = copy.deepcopy(model)
    # stem + 8 blocks x 2 convs + 3 projection shortcuts; FPN's convolutions have no norm
    assert fold_batchnorm(folded) == 20
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())
    assert not any(".norm." in k for k in folded.state_dict())
    with torch.no_grad():
        after = folded(x)
    assert before.keys() == after.keys()
    for k in before:
        scale = before[k].abs().max()
        assert (after[k] - before[k]).abs().max() <= 1e-5 * scale, k


def test_trainable_bn_in_training_mode_is_left_alone():
    model = _backbone(18, "BN", fpn=False, freeze_at=0).train()
    state = copy.deepcopy(model.state_dict())
    assert fold_batchnorm(model) == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("affine", [True, False])
def test_eval_mode_bn_folds_like_its_float64_formula(affine):
    g = torch.Generator().manual_seed(3)
    bn = torch.nn.BatchNorm2d(7, affine=affine)
    bn.running_mean.copy_(torch.randn(7, generator=g))
    bn.running_var.copy_(torch.rand(7, generator=g) + 0.1)
    if affine:
        with torch.no_grad():
            bn.weight.copy_(torch.rand(7, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(7, generator=g))
    conv = Conv2d(5, 7, 3, padding=1, bias=False, norm=bn).double().eval()
    x = torch.randn(2, 5, 9, 8, generator=g, dtype=torch.float64)
    gamma = bn.weight.double() if affine else torch.ones(7, dtype=torch.float64)
    beta = bn.bias.double() if affine else torch.zeros(7, dtype=torch.float64)
    view = (1, -1, 1, 1)
    y = torch.nn.functional.conv2d(x, conv.weight.detach(), None, 1, 1)
    expected = ((y - bn.running_mean.view(view)) / (bn.running_var.view(view) + bn.eps).sqrt() * gamma.view(view)
                + beta.view(view))
    with torch.no_grad():
        assert torch.allclose(conv(x), expected, rtol=0, atol=1e-12)
        assert fold_batchnorm(conv) == 1 and conv.norm is None
        assert torch.allclose(conv(x), expected, rtol=0, atol=1e-12)


def test_trained_bn_backbone_in_eval_mode_gives_the_same_features():
    model = _backbone(18, "BN", fpn=True, freeze_at=0)
    g = torch.Generator().manual_seed(4)
    for m in model.modules():  # as after training: statistics and affine parameters unlike the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.load_state_dict({**m.state_dict(), **{k: v for k, v in _random_frozen_bn(m.num_features, g).state_dict().items()}})
    model.eval()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = model(x)
        folded = copy.deepcopy(model)
        assert fold_batchnorm(folded) == 20
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        after = folded(x)
    for k in before:
        assert (after[k] - before[k]).abs().max() <= 1e-5 * before[k].abs().max(), k
