"""Every COCO-scale ablation config (configs/ablations/coco/<table>/<arm>.yaml) builds on the CPU and runs one
training step and one inference pass on a tiny synthetic 64 px image.

Only sizes are overridden (no ImageNet weights, CPU, few proposals/RoIs); backbone depth, heads, RoI
extractor, mask loss and mask resolution stay as configured, and the mask resolution is checked (14x14 for the
C4 models, 28x28 for FPN/C5). The keypoint configs (Tables 4, 5) get 17 synthetic person keypoints per object;
their keypoint branch is checked to use the configured RoI extractor on 14x14 RoI features and to predict
56x56 heatmaps for 17 keypoints.
"""

import pytest
import torch

from ablations.paths import arm_config_path
from ablations.records import load_arm_cfg
from ablations.tables import TABLES

COCO_ARMS = [(t.key, a.name) for t in TABLES.values() if "coco" in t.arms for a in t.arms["coco"]]

TINY = [
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "16",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "16",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "8",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64",
]
SIZE = 64


def _sample(num_classes=80, num_keypoints=0):
    from detectron2.structures import BitMasks, Boxes, Instances, Keypoints

    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, SIZE, SIZE), generator=g).float()
    inst = Instances((SIZE, SIZE))
    boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 20.0, 60.0, 44.0]])
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.tensor([3, 17]) % num_classes
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[0, 6:50, 4:40] = True
    masks[1, 20:44, 30:60] = True
    inst.gt_masks = BitMasks(masks)
    if num_keypoints:  # keypoints spread inside each box, every third one unlabeled (v=0)
        t = (torch.arange(num_keypoints, dtype=torch.float32) + 0.5) / num_keypoints
        kps = torch.zeros(2, num_keypoints, 3)
        for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            kps[i, :, 0] = x0 + (x1 - x0) * t
            kps[i, :, 1] = y0 + (y1 - y0) * t.flip(0)
            kps[i, :, 2] = torch.tensor([0.0 if k % 3 == 2 else 2.0 for k in range(num_keypoints)])
        inst.gt_keypoints = Keypoints(kps)
    return {"image": image, "instances": inst, "height": SIZE, "width": SIZE}


@pytest.mark.parametrize("table,arm", COCO_ARMS, ids=[f"{t}/{a}" for t, a in COCO_ARMS])
def test_coco_config_trains_one_step_and_infers_on_cpu(table, arm):
    from detectron2.modeling import build_model

    cfg = load_arm_cfg(arm_config_path(table, "coco", arm), TINY)
    cfg.freeze()
    torch.manual_seed(0)
    model = build_model(cfg)
    heads = model.roi_heads
    assert type(heads).__name__ == cfg.MODEL.ROI_HEADS.NAME
    expected_op = {"RoIPool": "RoIPool", "RoIWarp": "RoIWarp", "RoIAlign": "RoIAlign"}[cfg.MODEL.ROI_EXTRACTOR.METHOD]
    poolers = [getattr(heads, "pooler", None) or heads.box_pooler]
    mask_on, kp_on = cfg.MODEL.MASK_ON, cfg.MODEL.KEYPOINT_ON
    assert mask_on or kp_on or table == "3", "only Table 3's Faster R-CNN arms are box-only"
    shapes = []
    if mask_on:
        mask_head = heads.mask_head
        assert type(mask_head).__name__ == cfg.MODEL.ROI_MASK_HEAD.NAME
        assert mask_head.loss == cfg.MODEL.ROI_MASK_HEAD.LOSS
        poolers.append(getattr(heads, "pooler", None) or heads.mask_pooler)
        if hasattr(mask_head, "mask_size"):  # MLP head: fixed output side
            mask_side = mask_head.mask_size
        else:
            mask_head.predictor.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
            mask_side = None
    else:
        assert not hasattr(heads, "mask_head")
    num_kp = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS if kp_on else 0
    if kp_on:
        # the paper's keypoint head: 14x14 RoI features (our extractor) -> 8 x conv 512 -> 56x56, 17 keypoints
        assert cfg.MODEL.ROI_HEADS.NAME == "AblationStandardROIHeads" and num_kp == 17
        kp_pooler = heads.keypoint_pooler
        assert tuple(kp_pooler.output_size) == (14, 14)
        poolers.append(kp_pooler)
        kp_head = heads.keypoint_head
        convs = [m for n, m in kp_head.named_children() if n.startswith("conv_fcn") and hasattr(m, "weight")]
        assert [c.out_channels for c in convs] == [512] * 8
        with torch.no_grad():
            heat = kp_head.layers(torch.zeros(1, convs[0].in_channels, 14, 14))
        assert tuple(heat.shape) == (1, 17, 56, 56)
    else:
        assert not hasattr(heads, "keypoint_head")
    for pooler in poolers:
        assert all(type(p).__name__ == expected_op for p in pooler.level_poolers)

    # one training step
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    from detectron2.utils.events import EventStorage

    sample = _sample(cfg.MODEL.ROI_HEADS.NUM_CLASSES, num_kp)
    with EventStorage(0):
        losses = model([sample])
    expected = {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    expected |= ({"loss_mask"} if mask_on else set()) | ({"loss_keypoint"} if kp_on else set())
    assert set(losses) == expected, (table, arm, sorted(losses))
    total = sum(losses.values())
    assert torch.isfinite(total)
    if kp_on:
        assert losses["loss_keypoint"] > 0
    opt.zero_grad()
    total.backward()
    opt.step()
    if mask_on:
        if mask_side is None:
            mask_side = shapes[-1][-1]
        c4 = cfg.MODEL.ROI_HEADS.NAME == "AblationRes5ROIHeads"
        assert mask_side == (14 if c4 else 28), (table, arm, mask_side)

    # one inference pass
    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in sample.items() if k != "instances"}])
    inst = out[0]["instances"]
    assert len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE
    if mask_on:
        assert inst.pred_masks.shape[1:] == (SIZE, SIZE)
    if kp_on:
        assert inst.pred_keypoints.shape[1:] == (17, 3)
        # An ImageNet-less model with frozen BN may detect nothing: run the mask/keypoint branches on given boxes
        # (its heatmap logits are in the hundreds, where detectron2's own keypoint inference would assert).
        from detectron2.structures import Instances

        given = Instances((SIZE, SIZE))
        given.pred_boxes = sample["instances"].gt_boxes.clone()
        given.pred_classes = sample["instances"].gt_classes.clone()
        with torch.no_grad():
            images = model.preprocess_image([sample])
            given = heads.forward_with_given_boxes(model.backbone(images.tensor), [given])[0]
        assert tuple(given.pred_keypoints.shape) == (2, 17, 3)
        boxes = sample["instances"].gt_boxes.tensor
        xy = given.pred_keypoints[:, :, :2]
        assert ((xy >= boxes[:, None, :2] - 1e-4) & (xy <= boxes[:, None, 2:] + 1e-4)).all()
