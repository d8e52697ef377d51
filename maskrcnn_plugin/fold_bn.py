"""Folding frozen BatchNorm into the convolution before it, for inference.

The paper's backbones are fine-tuned with frozen BN (Sec. 3.1, as Detectron): each BN is then a fixed per-channel
affine map, y = x * s + t, applied by a separate pass over every activation of the ResNet. Folding it into the
preceding convolution's weight and bias (w' = w * s, b' = b * s + t) computes the same function in exact
arithmetic with one pass fewer per convolution; in float32 the outputs differ by rounding only. It rewrites the
modules in place, so it is for inference after the weights are loaded: the folded model's state_dict has no BN
entries, and trainable convolutions would train another parametrisation.
"""
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d

__all__ = ["fold_frozen_batchnorm"]


def fold_frozen_batchnorm(model):
    """Fold every ``FrozenBatchNorm2d`` that is the ``norm`` of a detectron2 ``Conv2d`` in `model` into that
    convolution (in place) and return how many were folded.

    Each folded convolution gets a bias and ``norm = None``; its activation, if any, is kept. The folding is done
    in float64 and rounded once to the weight's dtype. Other modules, trainable BN included, are left alone.
    """
    folded = 0
    for conv in model.modules():
        if not (isinstance(conv, Conv2d) and isinstance(conv.norm, FrozenBatchNorm2d)):
            continue
        bn = conv.norm
        with torch.no_grad():
            scale = bn.weight.double() * (bn.running_var.double() + bn.eps).rsqrt()
            shift = bn.bias.double() - bn.running_mean.double() * scale
            bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
            weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
            conv.weight.copy_(weight.to(conv.weight.dtype))
            new_bias = (bias * scale + shift).to(conv.weight.dtype)
        if conv.bias is not None:
            with torch.no_grad():
                conv.bias.copy_(new_bias)
        else:
            conv.bias = torch.nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
        conv.norm = None
        folded += 1
    return folded
