"""AblationStandardROIHeads / AblationRes5ROIHeads: registration, config validation, and equality with stock
detectron2 ROIAlignV2 / ROIPool for the same weights."""
import copy

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import ROI_HEADS_REGISTRY, build_model

import maskrcnn_plugin
from maskrcnn_plugin.poolers import AblationROIPooler


def tiny_cfg(zoo_config="COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", plugin_keys=True):
    cfg = get_cfg()
    if plugin_keys:
        maskrcnn_plugin.add_maskrcnn_plugin_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(zoo_config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    return cfg


def run_inference(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = [
        {"image": torch.randint(0, 255, (3, 96, 128), generator=g).float(), "height": 96, "width": 128}
        for _ in range(2)
    ]
    with torch.no_grad():
        return model.eval()(images)


def test_registered_by_name():
    assert ROI_HEADS_REGISTRY.get("AblationStandardROIHeads") is not None
    assert ROI_HEADS_REGISTRY.get("AblationRes5ROIHeads") is not None


@pytest.mark.parametrize(
    "key,value,valid",
    [("METHOD", "RoIAlignV3", "'RoIPool', 'RoIWarp', 'RoIAlign'"), ("AGGREGATION", "mean", "'max', 'avg'")],
)
def test_invalid_extractor_value_fails_at_build_with_valid_values(key, value, valid):
    cfg = tiny_cfg()
    cfg.MODEL.ROI_HEADS.NAME = "AblationStandardROIHeads"
    cfg.MODEL.ROI_EXTRACTOR[key] = value
    with pytest.raises(ValueError) as e:
        build_model(cfg)
    assert f"MODEL.ROI_EXTRACTOR.{key}" in str(e.value) and valid in str(e.value)


def test_unknown_config_key_names_the_key():
    cfg = tiny_cfg()
    with pytest.raises((KeyError, AssertionError), match="MODEL.ROI_EXTRACTOR.METHOD_TYPO"):
        cfg.merge_from_list(["MODEL.ROI_EXTRACTOR.METHOD_TYPO", "RoIPool"])


def _same_weights_pair(cfg_stock, cfg_ours):
    torch.manual_seed(0)
    stock = build_model(cfg_stock)
    ours = build_model(cfg_ours)
    missing = ours.load_state_dict(copy.deepcopy(stock.state_dict()), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    return stock, ours


def _assert_same_outputs(a_outs, b_outs):
    for a, b in zip(a_outs, b_outs):
        a, b = a["instances"], b["instances"]
        assert len(a) == len(b) > 0
        torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-5, atol=1e-5)
        assert torch.equal(a.pred_classes, b.pred_classes)
        torch.testing.assert_close(a.pred_masks.float(), b.pred_masks.float())


@pytest.mark.parametrize(
    "zoo_config,heads",
    [
        ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "AblationStandardROIHeads"),
        ("COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml", "AblationRes5ROIHeads"),
    ],
)
def test_roialign_avg_aligned_equals_stock_roialignv2(zoo_config, heads):
    cfg_stock = tiny_cfg(zoo_config)
    cfg_stock.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg_stock.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg_ours = cfg_stock.clone()
    cfg_ours.MODEL.ROI_HEADS.NAME = heads
    cfg_ours.MODEL.ROI_EXTRACTOR.METHOD = "RoIAlign"
    cfg_ours.MODEL.ROI_EXTRACTOR.AGGREGATION = "avg"
    cfg_ours.MODEL.ROI_EXTRACTOR.ALIGNED = True
    cfg_ours.MODEL.ROI_EXTRACTOR.SAMPLING_RATIO = cfg_stock.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO
    stock, ours = _same_weights_pair(cfg_stock, cfg_ours)
    _assert_same_outputs(run_inference(stock), run_inference(ours))


def test_roipool_equals_stock_roipool():
    cfg_stock = tiny_cfg()
    cfg_stock.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIPool"
    cfg_stock.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIPool"
    cfg_ours = cfg_stock.clone()
    cfg_ours.MODEL.ROI_HEADS.NAME = "AblationStandardROIHeads"
    cfg_ours.MODEL.ROI_EXTRACTOR.METHOD = "RoIPool"
    cfg_ours.MODEL.ROI_EXTRACTOR.AGGREGATION = "max"
    stock, ours = _same_weights_pair(cfg_stock, cfg_ours)
    _assert_same_outputs(run_inference(stock), run_inference(ours))


def test_stock_zoo_config_uses_our_heads_by_name_only():
    # Another project: stock get_cfg() without our keys, only the head's name; defaults apply.
    cfg = tiny_cfg("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml", plugin_keys=False)
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = (32, 32)  # the 8 x 512 default is slow and irrelevant here
    cfg.MODEL.ROI_HEADS.NAME = "AblationStandardROIHeads"
    model = build_model(cfg)
    heads = model.roi_heads
    for pooler in (heads.box_pooler, heads.mask_pooler, heads.keypoint_pooler):
        assert isinstance(pooler, AblationROIPooler) and len(pooler.level_poolers) == 4
    # Random weights give heatmap logits of ~1e2, where detectron2's own heatmaps_to_keypoints can trip its
    # float-equality assert; flat heatmaps keep the keypoint branch (and its pooler) running without that.
    with torch.no_grad():
        heads.keypoint_head.score_lowres.weight.zero_()
        heads.keypoint_head.score_lowres.bias.zero_()
    out = run_inference(model)
    assert out[0]["instances"].has("pred_keypoints") and out[0]["instances"].has("pred_masks")


def _train_one_step(cfg):
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    model = build_model(cfg).train()
    masks = torch.zeros(2, 96, 128, dtype=torch.bool)
    masks[0, 10:60, 20:90] = True
    masks[1, 40:90, 60:120] = True
    inst = Instances((96, 128), gt_boxes=Boxes(torch.tensor([[20.0, 10, 90, 60], [60, 40, 120, 90]])),
                     gt_classes=torch.tensor([0, 2]), gt_masks=BitMasks(masks))
    with EventStorage(0):
        losses = model([{"image": torch.rand(3, 96, 128) * 255, "instances": inst}])
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total) and losses["loss_mask"] > 0
    return model


@pytest.mark.parametrize("method,agg", [("RoIPool", "max"), ("RoIWarp", "max"), ("RoIWarp", "avg"), ("RoIAlign", "max")])
def test_every_method_trains_a_step_on_c5(method, agg):
    cfg = tiny_cfg("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    cfg.merge_from_file("configs/shapes/mask_rcnn_R18_C5_shapes.yaml")
    cfg.MODEL.ROI_EXTRACTOR.METHOD = method
    cfg.MODEL.ROI_EXTRACTOR.AGGREGATION = agg
    model = _train_one_step(cfg)
    grads = [p.grad for p in model.roi_heads.box_head.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("head", ["MaskRCNNFCNHead", "MaskRCNNMLPHead"])
@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
@pytest.mark.parametrize("heads", ["AblationStandardROIHeads", "AblationRes5ROIHeads"])
def test_our_mask_heads_and_losses_train_under_our_roi_heads(head, loss, heads):
    if heads == "AblationStandardROIHeads":
        cfg = tiny_cfg()
    else:
        cfg = tiny_cfg("COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml")
        cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
        cfg.MODEL.ROI_MASK_HEAD.MLP_DIMS = [64]
    cfg.MODEL.ROI_HEADS.NAME = heads
    cfg.MODEL.ROI_MASK_HEAD.NAME = head
    cfg.MODEL.ROI_MASK_HEAD.LOSS = loss
    cfg.MODEL.ROI_EXTRACTOR.METHOD = "RoIPool"
    cfg.MODEL.ROI_EXTRACTOR.AGGREGATION = "max"
    model = _train_one_step(cfg)
    assert type(model.roi_heads.mask_head).__name__ == head

@pytest.mark.parametrize("head", ["MaskRCNNFCNHead", "MaskRCNNMLPHead"])
def test_stock_config_builds_our_mask_heads_by_name_only(head):
    cfg = tiny_cfg(plugin_keys=False)
    cfg.MODEL.ROI_MASK_HEAD.NAME = head
    model = build_model(cfg)
    assert type(model.roi_heads.mask_head).__name__ == head
    assert model.roi_heads.mask_head.loss == "sigmoid"


def test_component_defaults_are_the_config_defaults():
    # A stock detectron2 config that only names our components gets the constructors' defaults, which must
    # be what add_maskrcnn_plugin_config would have set.
    import inspect

    from maskrcnn_plugin.mask_head import MaskRCNNMLPHead, MaskRCNNPluginBaseHead

    cfg = maskrcnn_plugin.get_plugin_cfg()
    pooler = inspect.signature(AblationROIPooler.__init__).parameters
    ex = cfg.MODEL.ROI_EXTRACTOR
    assert (pooler["method"].default, pooler["aggregation"].default, pooler["sampling_ratio"].default,
            pooler["aligned"].default) == (ex.METHOD, ex.AGGREGATION, ex.SAMPLING_RATIO, ex.ALIGNED)
    assert inspect.signature(MaskRCNNPluginBaseHead.__init__).parameters["loss"].default == cfg.MODEL.ROI_MASK_HEAD.LOSS
    fc_dims = inspect.signature(MaskRCNNMLPHead.__init__).parameters["fc_dims"].default
    assert list(fc_dims) == cfg.MODEL.ROI_MASK_HEAD.MLP_DIMS
