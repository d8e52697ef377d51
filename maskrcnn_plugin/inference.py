"""Inference-only speedups of a loaded model, chosen by config (issue #27; docs/performance.md has the figures).

Neither changes what the model computes beyond float32 rounding: ``TEST.FOLD_BATCHNORM`` folds every BN into the
convolution before it (`maskrcnn_plugin.fold_bn`), ``TEST.CHANNELS_LAST`` stores the convolution weights in
channels-last order, which makes oneDNN run every convolution (and its output) in that layout: its faster path
for the 1x1 convolutions that dominate a ResNet's shortfall on CPUs. `train_net.py --eval-only` and `demo.py`
apply them after loading the weights; a training run's own evaluations do not (folding would change the model
being trained; ``SOLVER.CHANNELS_LAST`` is the layout for training).
"""
import torch

from .fold_bn import fold_batchnorm

__all__ = ["prepare_for_inference", "to_channels_last"]


def to_channels_last(model):
    """Store `model`'s 4-d parameters and buffers in channels-last order (in place) and return it. Convolutions
    follow their weight's layout, so the backbone's activations become channels-last without touching the
    inputs; the layout is a stride order only: values, shapes and the state_dict's keys are unchanged."""
    return model.to(memory_format=torch.channels_last)


def prepare_for_inference(model, cfg):
    """Put `model` (weights loaded) in eval mode and apply the inference speedups `cfg` asks for; returns `model`,
    changed in place. After folding it is for inference only: its state_dict has no BN entries."""
    model.eval()
    if cfg.TEST.FOLD_BATCHNORM:
        fold_batchnorm(model)
    if cfg.TEST.CHANNELS_LAST:
        to_channels_last(model)
    return model
