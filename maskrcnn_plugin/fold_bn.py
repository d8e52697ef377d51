"""Folding BatchNorm into the convolution before it, for inference.

At inference every BN is a fixed per-channel affine map, y = x * s + t: the paper's frozen BN (Sec. 3.1, as
Detectron) always, a trainable BN once it is in eval mode. As a separate module it is one more pass over every
activation of the ResNet. Folding it into the preceding convolution's weight and bias (w' = w * s,
b' = b * s + t) computes the same function in exact arithmetic with one pass fewer per convolution; in float32
the outputs differ by rounding only. It rewrites the modules in place, so it is for inference after the weights
are loaded: the folded model's state_dict has no BN entries, and trainable convolutions would train another
parametrisation.
"""
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d

__all__ = ["fold_batchnorm"]


def _fixed_affine(bn):
    """(scale, shift) in float64 when `bn` is a fixed affine map now, else None (BN that normalises by the
    batch's statistics: a trainable one in training mode, or one that keeps no running statistics)."""
    if isinstance(bn, FrozenBatchNorm2d):
        weight, bias = bn.weight, bn.bias
    elif isinstance(bn, torch.nn.BatchNorm2d) and not bn.training and bn.running_mean is not None:
        weight = bn.weight if bn.affine else torch.ones_like(bn.running_mean)
        bias = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    else:
        return None
    scale = weight.double() * (bn.running_var.double() + bn.eps).rsqrt()
    return scale, bias.double() - bn.running_mean.double() * scale


def fold_batchnorm(model):
    """Fold every BN that is the ``norm`` of a detectron2 ``Conv2d`` in `model` and is a fixed affine map now
    (``FrozenBatchNorm2d``, or ``torch.nn.BatchNorm2d`` and its subclasses in eval mode) into that convolution,
    in place; return how many were folded.

    Call ``model.eval()`` first to fold trainable BN: BN in training mode normalises by the batch and is left
    alone. Each folded convolution gets a bias and ``norm = None``; its activation, if any, is kept. The folding
    is done in float64 and rounded once to the weight's dtype.
    """
    folded = 0
    for conv in model.modules():
        if not isinstance(conv, Conv2d) or conv.norm is None:
            continue
        with torch.no_grad():
            affine = _fixed_affine(conv.norm)
            if affine is None:
                continue
            scale, shift = affine
            bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
            weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
            conv.weight.copy_(weight.to(conv.weight.dtype))
            new_bias = (bias * scale + shift).to(conv.weight.dtype)
            if conv.bias is not None:
                conv.bias.copy_(new_bias)
        if conv.bias is None:
            conv.bias = torch.nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
        conv.norm = None
        folded += 1
    return folded
