"""The inference speedups (maskrcnn_plugin/inference.py) and SOLVER.CHANNELS_LAST in training: a prepared model
gives the unprepared model's detections to float32 rounding; the keys are off the ablation records' hash."""
import argparse
import copy

import pytest
import torch
from detectron2.layers import Conv2d
from detectron2.modeling import build_model

from maskrcnn_plugin.config import get_plugin_cfg
from maskrcnn_plugin.inference import prepare_for_inference, to_channels_last

SHAPES_R18_FPN = "configs/shapes/mask_rcnn_R18_FPN_shapes.yaml"


def _plain_cfg():
    cfg = get_plugin_cfg()
    cfg.merge_from_file(SHAPES_R18_FPN)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _trained_looking_model():
    """The main job's model (trainable BN) with random weights and BN statistics unlike the identity."""
    cfg = _plain_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return cfg, model.eval()


@pytest.mark.parametrize("fold,channels_last", [(True, False), (False, True), (True, True)])
def test_prepared_model_gives_the_same_detections(fold, channels_last):
    cfg, model = _trained_looking_model()
    cfg.TEST.FOLD_BATCHNORM, cfg.TEST.CHANNELS_LAST = fold, channels_last
    prepared = prepare_for_inference(copy.deepcopy(model).train(), cfg)  # it puts the model in eval mode itself
    assert not prepared.training
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.modules())
    assert has_bn is not fold
    convs = [m for m in prepared.modules() if isinstance(m, Conv2d)]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert convs and all(m.weight.is_contiguous(memory_format=layout) for m in convs)
    if channels_last:  # 1x1 kernels are contiguous in both layouts: the 3x3 ones tell
        assert not all(m.weight.is_contiguous() for m in convs)
    g = torch.Generator().manual_seed(2)
    inputs = [{"image": torch.randint(0, 255, (3, 256, 256), generator=g).float()} for _ in range(2)]
    with torch.no_grad():
        raw_a = model.inference(inputs, do_postprocess=False)
        raw_b = prepared.inference(inputs, do_postprocess=False)
    for a, b in zip(raw_a, raw_b):
        assert len(a) == len(b) > 0
        assert torch.equal(a.pred_classes, b.pred_classes)
        assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=0, atol=1e-3)
        assert torch.allclose(a.scores, b.scores, rtol=0, atol=1e-5)
        # mask probabilities before paste-back: a pasted pixel can only flip where a probability is this close
        # to the threshold
        assert torch.allclose(a.pred_masks, b.pred_masks, rtol=0, atol=1e-5)


def test_channels_last_training_model_and_checkpoint_layout():
    import train_net

    cfg = train_net.load_cfg(argparse.Namespace(config_file=SHAPES_R18_FPN, resume=False, eval_only=False,
                                                opts=["SOLVER.CHANNELS_LAST", "True", "MODEL.DEVICE", "cpu"]))
    model = train_net.Trainer.build_model(cfg)
    convs = [m for m in model.modules() if isinstance(m, Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    # the state_dict loads into a default-layout model unchanged: the layout is a stride order only
    plain = build_model(_plain_cfg())
    plain.load_state_dict(model.state_dict())
    for (k, v), w in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(v, w), k


def test_to_channels_last_keeps_values():
    conv = Conv2d(3, 4, 3)
    before = conv.weight.detach().clone()
    to_channels_last(conv)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and torch.equal(conv.weight, before)


def test_speed_only_keys_leave_the_config_hash_alone():
    from ablations import records

    cfg = _plain_cfg()
    before = records.config_hash(cfg)
    cfg.SOLVER.CHANNELS_LAST, cfg.TEST.CHANNELS_LAST, cfg.TEST.FOLD_BATCHNORM = True, False, False
    assert records.config_hash(cfg) == before
    cfg.MODEL.RESNETS.DEPTH = 34  # anything else still changes it
    assert records.config_hash(cfg) != before
