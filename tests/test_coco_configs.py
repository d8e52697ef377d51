"""Every COCO-scale ablation config (configs/ablations/coco/<table>/<arm>.yaml) builds on the CPU and runs one
training step and one inference pass on a tiny synthetic 64 px image.

Only sizes are overridden (no ImageNet weights, CPU, few proposals/RoIs); backbone depth, heads, RoI
extractor, mask loss and mask resolution stay as configured, and the mask resolution is checked (14x14 for the
C4 models, 28x28 for FPN/C5).
"""

import pytest
import torch

from maskrcnn_plugin.ablations import TABLES, arm_config_path, load_arm_cfg

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


def _sample():
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, SIZE, SIZE), generator=g).float()
    inst = Instances((SIZE, SIZE))
    inst.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 20.0, 60.0, 44.0]]))
    inst.gt_classes = torch.tensor([3, 17])
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[0, 6:50, 4:40] = True
    masks[1, 20:44, 30:60] = True
    inst.gt_masks = BitMasks(masks)
    return {"image": image, "instances": inst, "height": SIZE, "width": SIZE}


@pytest.mark.parametrize("table,arm", COCO_ARMS, ids=[f"{t}/{a}" for t, a in COCO_ARMS])
def test_coco_config_trains_one_step_and_infers_on_cpu(table, arm):
    from detectron2.modeling import build_model

    cfg = load_arm_cfg(arm_config_path(table, "coco", arm), TINY)
    cfg.freeze()
    torch.manual_seed(0)
    model = build_model(cfg)
    assert type(model.roi_heads).__name__ == cfg.MODEL.ROI_HEADS.NAME
    mask_head = model.roi_heads.mask_head
    assert type(mask_head).__name__ == cfg.MODEL.ROI_MASK_HEAD.NAME
    assert mask_head.loss == cfg.MODEL.ROI_MASK_HEAD.LOSS
    pooler = getattr(model.roi_heads, "pooler", None) or model.roi_heads.mask_pooler
    expected_op = {"RoIPool": "RoIPool", "RoIWarp": "RoIWarp", "RoIAlign": "RoIAlign"}[cfg.MODEL.ROI_EXTRACTOR.METHOD]
    assert all(type(p).__name__ == expected_op for p in pooler.level_poolers)

    shapes = []
    if hasattr(mask_head, "mask_size"):  # MLP head: fixed output side
        mask_side = mask_head.mask_size
    else:
        mask_head.predictor.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
        mask_side = None

    # one training step
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    from detectron2.utils.events import EventStorage

    with EventStorage(0):
        losses = model([_sample()])
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    opt.zero_grad()
    total.backward()
    opt.step()
    if mask_side is None:
        mask_side = shapes[-1][-1]
    c4 = cfg.MODEL.ROI_HEADS.NAME == "AblationRes5ROIHeads"
    assert mask_side == (14 if c4 else 28), (table, arm, mask_side)

    # one inference pass
    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in _sample().items() if k != "instances"}])
    inst = out[0]["instances"]
    assert len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE
    assert inst.pred_masks.shape[1:] == (SIZE, SIZE)
