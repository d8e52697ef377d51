"""Keypoints (paper Section 5; Tables 4 and 5): targets, flip augmentation, evaluation, visualisation, and short
training runs of the CPU-scale keypoint arms with our ROI heads and RoI extractors.

- keypoint targets: detectron2's keypoints_to_heatmap (one-hot index in the m x m heatmap + validity) against
  hand-computed cases, and the loss is the softmax cross-entropy over the m^2 locations;
- flip augmentation: detectron2's DatasetMapper with a horizontal flip and the dataset's keypoint_flip_map swaps
  the left/right keypoints of a shapes_person person (and mirrors x);
- evaluation: our build_evaluator (COCOEvaluator with the dataset's 13 OKS sigmas) on a perfect prediction
  (the ground truth) gives keypoint AP 100; the prediction pictures draw the skeleton;
- training: keypoint-only and keypoint & mask, RoIPool and RoIAlign, a few iterations on tiny images give
  finite losses, and the trained model evaluates with a "keypoints" task.
"""
import json
import math
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode, Boxes, Instances, Keypoints

import maskrcnn_plugin.data as data
from ablations.paths import arm_config_path
from ablations.records import load_arm_cfg
from maskrcnn_plugin.data import builtin as ds
from maskrcnn_plugin.data.person_keypoints import (
    PERSON_KEYPOINT_CONNECTION_RULES, PERSON_KEYPOINT_FLIP_MAP, PERSON_KEYPOINT_NAMES, PERSON_KEYPOINT_OKS_SIGMAS,
)

TRAIN_NAME = "test_keypoints_train"
VAL_NAME = "test_keypoints_val"
PX = 128
PERSON = 0  # contiguous id of "person", the one class of the shapes_person datasets the CPU keypoint arms use


def _unregister(name):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    ds._registered_shapes.pop(name, None)


@pytest.fixture(scope="module")
def kp_data(tmp_path_factory):
    """Two tiny shapes_person datasets (persons with 13 keypoints among unlabelled shapes), generated into a
    temporary root."""
    root = tmp_path_factory.mktemp("kp_data")
    for name, seed, n in ((TRAIN_NAME, 21, 6), (VAL_NAME, 22, 3)):
        _unregister(name)
        data.register_shapes(name, seed=seed, num_images=n, image_size=PX, with_person=True, person_only=True,
                             root=str(root))
        data.prepare_dataset(name)
    yield root
    for name in (TRAIN_NAME, VAL_NAME):
        _unregister(name)


# ------------------------------------------------------------------------------------------------------------
# Keypoint targets
# ------------------------------------------------------------------------------------------------------------
def test_keypoint_targets_hand_computed():
    """Keypoints.to_heatmap: index = floor((y - y0) * m / h) * m + floor((x - x0) * m / w) for labeled (v > 0)
    keypoints inside the RoI; a keypoint on the RoI's right/bottom edge goes to the last cell; unlabeled or
    outside keypoints are invalid (target 0)."""
    rois = torch.tensor([[10.0, 20.0, 50.0, 60.0],   # 40 x 40 box, m = 8: 5 px per heatmap cell
                         [0.0, 0.0, 112.0, 56.0]])   # 112 x 56 box, m = 8: 14 px wide, 7 px high cells
    kps = torch.tensor([
        [[30.0, 40.0, 2.0],    # (20, 20) px into the box -> cell (4, 4) -> 36
         [10.0, 20.0, 1.0],    # top-left corner, occluded but labeled (v=1) -> cell (0, 0) -> 0
         [50.0, 60.0, 2.0],    # exactly on the right/bottom edge -> last cell (7, 7) -> 63
         [12.4, 58.1, 2.0],    # x cell floor(0.48) = 0, y cell floor(7.62) = 7 -> 56
         [35.0, 40.0, 0.0],    # unlabeled -> invalid
         [9.9, 40.0, 2.0],     # 0.1 px left of the box -> invalid
         [50.5, 30.0, 2.0]],   # right of the box -> invalid
        [[13.9, 6.9, 2.0],     # cell (0, 0) -> 0
         [14.0, 7.0, 2.0],     # cell (1, 1) -> 9
         [111.9, 0.1, 2.0],    # cell (7, 0) -> 7
         [56.0, 28.0, 1.0],    # cell (4, 4) -> 36
         [0.0, 56.0, 2.0],     # bottom edge -> row 7, col 0 -> 56
         [-0.1, 3.0, 2.0],     # invalid
         [60.0, 30.0, 0.0]],   # unlabeled -> invalid
    ])
    heatmaps, valid = Keypoints(kps).to_heatmap(rois, 8)
    assert heatmaps.tolist() == [[36, 0, 63, 56, 0, 0, 0], [0, 9, 7, 36, 56, 0, 0]]
    assert valid.tolist() == [[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0]]

    # the paper's m = 56: on a 56 x 56 box at the origin, cell = pixel index
    h56, v56 = Keypoints(torch.tensor([[[13.5, 7.5, 2.0], [55.99, 55.99, 2.0]]])).to_heatmap(
        torch.tensor([[0.0, 0.0, 56.0, 56.0]]), 56)
    assert h56.tolist() == [[7 * 56 + 13, 55 * 56 + 55]] and v56.tolist() == [[1, 1]]


def test_keypoint_loss_is_softmax_cross_entropy_over_m2_locations():
    """detectron2's keypoint_rcnn_loss (our heads use it unchanged): mean over the valid keypoints of the
    cross-entropy of a softmax over the m*m locations, with the one-hot target of test above."""
    from detectron2.modeling.roi_heads.keypoint_head import keypoint_rcnn_loss
    from detectron2.utils.events import EventStorage

    m = 56
    inst = Instances((100, 100))
    inst.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 56.0, 56.0]]))
    inst.gt_keypoints = Keypoints(torch.tensor([[[13.5, 7.5, 2.0], [30.5, 40.5, 1.0], [5.0, 5.0, 0.0]]]))
    with EventStorage(0):
        flat = keypoint_rcnn_loss(torch.zeros(1, 3, m, m), [inst], normalizer=None)
        assert flat.item() == pytest.approx(math.log(m * m), rel=1e-5)  # uniform softmax over m^2 locations
        logits = torch.zeros(1, 3, m, m)
        logits[0, 0, 7, 13] = 20.0  # a peak on the target of keypoint 0 ...
        logits[0, 1, 0, 0] = 20.0  # ... and on a wrong cell for keypoint 1; keypoint 2 is unlabeled
        loss = keypoint_rcnn_loss(logits, [inst], normalizer=None)
    ce0 = -20.0 + math.log(math.exp(20.0) + m * m - 1)
    ce1 = math.log(math.exp(20.0) + m * m - 1)
    assert loss.item() == pytest.approx((ce0 + ce1) / 2, rel=1e-4)


# ------------------------------------------------------------------------------------------------------------
# Flip augmentation
# ------------------------------------------------------------------------------------------------------------
def test_horizontal_flip_swaps_left_and_right_keypoints(kp_data):
    from detectron2.config import get_cfg
    from detectron2.data import DatasetMapper
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import create_keypoint_hflip_indices, read_image

    from maskrcnn_plugin.data.mapper import CheckedDatasetMapper

    names = list(PERSON_KEYPOINT_NAMES)
    flip = create_keypoint_hflip_indices([TRAIN_NAME])
    partner = dict(PERSON_KEYPOINT_FLIP_MAP)
    partner.update({b: a for a, b in PERSON_KEYPOINT_FLIP_MAP})
    assert flip == [names.index(partner.get(n, n)) for n in names]
    assert flip[names.index("head")] == names.index("head")
    assert flip[names.index("left_hand")] == names.index("right_hand")

    # train_net's mapper picks the flip indices up from the training set's metadata
    cfg = get_cfg()
    cfg.MODEL.KEYPOINT_ON = True
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.DATASETS.TRAIN = (TRAIN_NAME,)
    assert list(CheckedDatasetMapper(cfg, is_train=True).keypoint_hflip_indices) == flip

    mapper = DatasetMapper(is_train=True, augmentations=[T.RandomFlip(prob=1.0, horizontal=True, vertical=False)],
                           image_format="BGR", use_keypoint=True, keypoint_hflip_indices=flip)
    records = [r for r in DatasetCatalog.get(TRAIN_NAME) if any(a["category_id"] == PERSON for a in r["annotations"])]
    assert records
    checked_pairs = 0
    for record in records:
        out = mapper(dict(record))
        original = read_image(record["file_name"], format="BGR")
        assert torch.equal(out["image"], torch.as_tensor(np.ascontiguousarray(original[:, ::-1].transpose(2, 0, 1))))
        inst = out["instances"]
        assert len(inst) == len(record["annotations"])
        for k, ann in enumerate(record["annotations"]):
            before = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
            after = inst.gt_keypoints.tensor[k].numpy().astype(np.float64)
            for i, name in enumerate(names):
                j = names.index(partner.get(name, name))  # the keypoint that becomes `name` after the flip
                if before[j, 2] > 0:
                    assert after[i, 2] == before[j, 2], (name, k)
                    assert after[i, 0] == pytest.approx(PX - before[j, 0])
                    assert after[i, 1] == pytest.approx(before[j, 1])
                    if j != i:
                        checked_pairs += 1
                else:
                    assert after[i].tolist() == [0.0, 0.0, 0.0]
            if ann["category_id"] == PERSON and before[:, 2].any():
                # after the flip, the figure's left keypoints are again to the viewer's right of its right ones
                ls, rs = names.index("left_shoulder"), names.index("right_shoulder")
                if before[ls, 2] > 0 and before[rs, 2] > 0:
                    assert (after[ls, 0] - after[rs, 0]) * (before[ls, 0] - before[rs, 0]) > 0
    assert checked_pairs > 0


# ------------------------------------------------------------------------------------------------------------
# Evaluation and visualisation
# ------------------------------------------------------------------------------------------------------------
def _perfect_prediction(record):
    anns = record["annotations"]
    inst = Instances((record["height"], record["width"]))
    inst.pred_boxes = Boxes(torch.tensor(
        [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns], dtype=torch.float32))
    inst.scores = torch.ones(len(anns))
    inst.pred_classes = torch.tensor([a["category_id"] for a in anns])
    inst.pred_masks = torch.from_numpy(np.stack([mask_util.decode(a["segmentation"]) for a in anns])).bool()
    kp = torch.tensor(np.array([a["keypoints"] for a in anns]), dtype=torch.float32).reshape(len(anns), -1, 3)
    kp[:, :, 2] = (kp[:, :, 2] > 0).float()  # (x, y, score): labeled keypoints with score 1
    inst.pred_keypoints = kp
    return inst


def _kp_cfg(config, tmp_path, opts=()):
    return load_arm_cfg(config, [
        "DATASETS.TRAIN", f"('{TRAIN_NAME}',)", "DATASETS.TEST", f"('{VAL_NAME}',)", "OUTPUT_DIR", str(tmp_path),
        "MODEL.DEVICE", "cpu", *opts,
    ])


def test_perfect_keypoint_prediction_gives_ap_100(kp_data, tmp_path):
    """build_evaluator (train_net's evaluator) with a keypoint arm's config: COCOEvaluator runs bbox, segm and
    keypoints with the dataset's 13 OKS sigmas; the ground truth as prediction scores AP 100 for each."""
    from maskrcnn_plugin.evaluation import build_evaluator

    cfg = _kp_cfg(arm_config_path("4", "cpu", "r18_fpn_kp_mask"), tmp_path, ["TEST.VIS_NUM_IMAGES", "1"])
    assert list(cfg.TEST.KEYPOINT_OKS_SIGMAS) == pytest.approx(PERSON_KEYPOINT_OKS_SIGMAS)
    evaluator = build_evaluator(cfg, VAL_NAME)
    # the pictures are drawn before COCOEvaluator shifts pred_keypoints in place
    assert [type(e).__name__ for e in evaluator._evaluators] == ["PredictionVisualizer", "COCOEvaluator"]
    evaluator.reset()
    records = DatasetCatalog.get(VAL_NAME)
    assert any(a["category_id"] == PERSON for r in records for a in r["annotations"])
    for r in records:
        evaluator.process([{"image_id": r["image_id"], "file_name": r["file_name"]}],
                          [{"instances": _perfect_prediction(r)}])
    res = evaluator.evaluate()
    assert res["keypoints"]["AP"] == pytest.approx(100.0)
    assert res["keypoints"]["AP50"] == pytest.approx(100.0) and res["keypoints"]["AP75"] == pytest.approx(100.0)
    assert res["bbox"]["AP"] == pytest.approx(100.0) and res["segm"]["AP"] == pytest.approx(100.0)
    # the prediction pictures are written (the skeleton itself is checked below)
    assert os.listdir(os.path.join(str(tmp_path), "vis", VAL_NAME))

    # keypoint-only arm: no segm task
    cfg = _kp_cfg(arm_config_path("5", "cpu", "roialign"), tmp_path / "kp_only", ["TEST.VIS_NUM_IMAGES", "0"])
    evaluator = build_evaluator(cfg, VAL_NAME)
    evaluator.reset()
    for r in records:
        inst = _perfect_prediction(r)
        inst.remove("pred_masks")
        evaluator.process([{"image_id": r["image_id"], "file_name": r["file_name"]}], [{"instances": inst}])
    res = evaluator.evaluate()
    assert set(res) == {"bbox", "keypoints"} and res["keypoints"]["AP"] == pytest.approx(100.0)


def test_visualizer_draws_the_skeleton(kp_data):
    """detectron2's Visualizer with the dataset metadata connects the keypoints by the skeleton rules: pixels
    around the midpoint of every drawn bone change when the keypoints are drawn."""
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import ColorMode, Visualizer

    meta = MetadataCatalog.get(VAL_NAME)
    assert [tuple(r[:2]) for r in meta.keypoint_connection_rules] == [r[:2] for r in PERSON_KEYPOINT_CONNECTION_RULES]
    names = list(meta.keypoint_names)
    bones = 0
    for r in DatasetCatalog.get(VAL_NAME):
        persons = [a for a in r["annotations"] if a["category_id"] == PERSON]
        if not persons:
            continue
        image = read_image(r["file_name"], format="RGB")
        inst = _perfect_prediction(dict(r, annotations=persons))
        inst.remove("pred_masks")
        with_kp = Visualizer(image, meta, instance_mode=ColorMode.IMAGE).draw_instance_predictions(inst).get_image()
        inst.remove("pred_keypoints")
        without = Visualizer(image, meta, instance_mode=ColorMode.IMAGE).draw_instance_predictions(inst).get_image()
        changed = np.abs(with_kp.astype(int) - without.astype(int)).sum(-1) > 30
        for a in persons:
            kp = np.asarray(a["keypoints"]).reshape(-1, 3)
            for n0, n1, _ in meta.keypoint_connection_rules:
                p0, p1 = kp[names.index(n0)], kp[names.index(n1)]
                if p0[2] > 0 and p1[2] > 0 and np.hypot(*(p0[:2] - p1[:2])) > 6:
                    x, y = ((p0[:2] + p1[:2]) / 2).astype(int)
                    assert changed[max(0, y - 1):y + 2, max(0, x - 1):x + 2].any(), (r["file_name"], n0, n1)
                    bones += 1
    assert bones > 0


# ------------------------------------------------------------------------------------------------------------
# Short training runs of the CPU-scale arms
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arm", [("4", "r18_fpn_kp"), ("4", "r18_fpn_kp_mask")], ids=["keypoint", "keypoint+mask"])
@pytest.mark.parametrize("method", ["RoIPool", "RoIAlign"])
def test_short_train_finite_losses_and_keypoint_evaluation(kp_data, tmp_path, arm, method):
    from detectron2.data import build_detection_test_loader, build_detection_train_loader
    from detectron2.evaluation import inference_on_dataset
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from maskrcnn_plugin.data.mapper import CheckedDatasetMapper
    from maskrcnn_plugin.evaluation import build_evaluator

    table, name = arm
    cfg = _kp_cfg(arm_config_path(table, "cpu", name), tmp_path, [
        "MODEL.ROI_EXTRACTOR.METHOD", method,
        "MODEL.ROI_EXTRACTOR.AGGREGATION", "max" if method == "RoIPool" else "avg",
        "INPUT.MIN_SIZE_TRAIN", f"({PX},)", "INPUT.MAX_SIZE_TRAIN", str(PX),
        "INPUT.MIN_SIZE_TEST", str(PX), "INPUT.MAX_SIZE_TEST", str(PX),
        "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "TEST.VIS_NUM_IMAGES", "0",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "TEST.DETECTIONS_PER_IMAGE", "10", "SEED", "0",
    ])
    cfg.freeze()
    torch.manual_seed(0)
    model = build_model(cfg)
    heads = model.roi_heads
    assert type(heads).__name__ == "AblationStandardROIHeads"
    branches = ["box", "keypoint"] + (["mask"] if cfg.MODEL.MASK_ON else [])
    assert hasattr(heads, "mask_pooler") == cfg.MODEL.MASK_ON
    for branch in branches:  # MODEL.ROI_EXTRACTOR applies to every branch, the keypoint branch included
        pooler = getattr(heads, f"{branch}_pooler")
        assert [type(p).__name__ for p in pooler.level_poolers] == [method] * 4, branch

    loader = build_detection_train_loader(cfg, mapper=CheckedDatasetMapper(cfg, is_train=True))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
    expected = {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc", "loss_keypoint"}
    if cfg.MODEL.MASK_ON:
        expected.add("loss_mask")
    model.train()
    kp_losses = []
    with EventStorage(0):
        for _, batch in zip(range(3), loader):
            assert all(b["instances"].has("gt_keypoints") for b in batch)
            losses = model(batch)
            assert set(losses) == expected
            assert all(torch.isfinite(v) for v in losses.values()), losses
            kp_losses.append(losses["loss_keypoint"].item())
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
    # at initialisation the keypoint loss is about log(56^2) = 8.04 per visible keypoint
    assert all(0 < v < 3 * math.log(56 * 56) for v in kp_losses), kp_losses

    model.eval()
    test_loader = build_detection_test_loader(cfg, VAL_NAME, mapper=CheckedDatasetMapper(cfg, is_train=False))
    res = inference_on_dataset(model, test_loader, build_evaluator(cfg, VAL_NAME))
    assert set(res) == {"bbox", "keypoints"} | ({"segm"} if cfg.MODEL.MASK_ON else set())
    assert set(res["keypoints"]) >= {"AP", "AP50", "AP75", "APm", "APl"}


# ------------------------------------------------------------------------------------------------------------
# MaskRCNNKeypointHead: detectron2's head, inference without the score underflow
# ------------------------------------------------------------------------------------------------------------
def _rois(n, g):
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.cat([torch.tensor([[0.4, 0.7], [1.0, 1.0], [3.3, 80.2]]), 1 + torch.rand(n - 3, 2, generator=g) * 120])
    return torch.cat([xy, xy + wh], dim=1)


def test_stable_heatmaps_to_keypoints_equals_detectron2_on_ordinary_logits():
    from detectron2.structures.keypoints import heatmaps_to_keypoints

    from maskrcnn_plugin.keypoint_head import heatmaps_to_keypoints_stable

    g = torch.Generator().manual_seed(0)
    maps = torch.randn(12, 13, 56, 56, generator=g) * 6
    rois = _rois(12, g)
    ours, ref = heatmaps_to_keypoints_stable(maps, rois), heatmaps_to_keypoints(maps, rois)
    torch.testing.assert_close(ours[..., :3], ref[..., :3], rtol=0, atol=1e-4)
    torch.testing.assert_close(ours[..., 3], ref[..., 3], rtol=1e-4, atol=1e-12)
    assert heatmaps_to_keypoints_stable(maps[:0], rois[:0]).shape == (0, 13, 4)


def test_stable_heatmaps_to_keypoints_survives_bicubic_overshoot():
    """Logits spanning hundreds: the bicubic maximum overshoots every heatmap value by > 88, detectron2's
    normaliser underflows to 0 (score inf/nan, its assert fires); ours gives the argmax and a finite score."""
    from detectron2.structures.keypoints import heatmaps_to_keypoints

    from maskrcnn_plugin.keypoint_head import heatmaps_to_keypoints_stable

    maps = torch.full((1, 1, 56, 56), -600.0)
    maps[0, 0, 20, 30] = 0.0  # an isolated peak: bicubic upsampling rings around it ...
    maps[0, 0, 20, 31] = 0.0
    maps[0, 0, 21, 30] = 0.0
    maps[0, 0, 21, 31] = 0.0
    rois = torch.tensor([[10.0, 10.0, 10.0 + 200.0, 10.0 + 200.0]])  # ... when enlarged ~3.6x
    resized = torch.nn.functional.interpolate(maps, size=(200, 200), mode="bicubic", align_corners=False)
    assert resized.max() - maps.max() > 88  # the overshoot that underflows detectron2's normaliser
    with pytest.raises(AssertionError):
        heatmaps_to_keypoints(maps, rois)
    out = heatmaps_to_keypoints_stable(maps, rois)
    assert torch.isfinite(out).all()
    assert out[0, 0, 3].item() == pytest.approx(math.exp(20.0), rel=1e-5)  # exp(233 - 0) capped at e^20
    pos = int(resized.flatten().argmax())
    assert out[0, 0, 0].item() == pytest.approx(10 + pos % 200 + 0.5)
    assert out[0, 0, 1].item() == pytest.approx(10 + pos // 200 + 0.5)
    assert out[0, 0, 2].item() == pytest.approx(resized.max().item())


def test_keypoint_head_is_detectron2s_with_stable_inference():
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads.keypoint_head import build_keypoint_head

    cfg = get_cfg()
    cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = (16, 16)
    cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = 13
    shape = ShapeSpec(channels=8, height=14, width=14)
    torch.manual_seed(0)
    stock = build_keypoint_head(cfg, shape)
    cfg.MODEL.ROI_KEYPOINT_HEAD.NAME = "MaskRCNNKeypointHead"
    ours = build_keypoint_head(cfg, shape)
    assert type(ours).__name__ == "MaskRCNNKeypointHead"
    ours.load_state_dict(stock.state_dict(), strict=True)  # same parameters: checkpoints interchange
    x = torch.randn(3, 8, 14, 14)

    def boxes():
        inst = Instances((200, 200))
        inst.pred_boxes = Boxes(torch.tensor([[10.0, 20.0, 60.0, 90.0], [0.0, 0.0, 30.5, 20.2],
                                              [5.0, 5.0, 150.0, 180.0]]))
        return inst

    with torch.no_grad():
        a = stock.eval()(x, [boxes()])[0]
        b = ours.eval()(x, [boxes()])[0]
    torch.testing.assert_close(b.pred_keypoints[..., :2], a.pred_keypoints[..., :2], rtol=0, atol=1e-4)
    torch.testing.assert_close(b.pred_keypoints[..., 2], a.pred_keypoints[..., 2], rtol=1e-4, atol=1e-12)
    assert torch.equal(a.pred_keypoint_heatmaps, b.pred_keypoint_heatmaps)
    # training: the same loss
    from detectron2.utils.events import EventStorage

    inst = Instances((200, 200))
    inst.proposal_boxes = Boxes(torch.tensor([[10.0, 20.0, 60.0, 90.0]]))
    inst.gt_keypoints = Keypoints(torch.tensor([[[30.0 + k, 40.0 + 2 * k, 2.0] for k in range(13)]]))
    with EventStorage(0):
        la = stock.train()(x[:1], [inst])["loss_keypoint"]
        lb = ours.train()(x[:1], [inst])["loss_keypoint"]
    assert la.item() == pytest.approx(lb.item())


def test_ablation_runner_trains_and_evaluates_a_keypoint_arm(tmp_path):
    """`train_net.py --ablation 5` path for one arm: the real train_net.py subprocess (2 iterations, tiny
    shapes_person data), COCOEvaluator's keypoints task in the stored results, which the report reads as kp_AP."""
    from ablations.metrics import metric_value
    from ablations.runner import run_arm

    opts = [
        "DATASETS.SHAPES.ROOT", str(tmp_path / "data"),
        "DATASETS.TRAIN", "('shapes_person_kpabltrain_s5_n8_px128',)",
        "DATASETS.TEST", "('shapes_person_kpablval_s6_n3_px128',)",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128",
        "INPUT.MAX_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0", "TEST.VIS_NUM_IMAGES", "1",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "10",
    ]
    logs = []
    out = run_arm("5", "cpu", "roialign", 0, opts=opts, log=logs.append,
                  results_root=str(tmp_path / "results"), output_root=str(tmp_path / "output"))
    assert out.status == "done", "\n".join(logs) + open(out.log or os.devnull).read()[-3000:]
    rec = json.load(open(out.result_file))
    assert set(rec["metrics"]) == {"bbox", "keypoints"}
    assert set(rec["metrics"]["keypoints"]) >= {"AP", "AP50", "AP75", "APm", "APl"}
    assert rec["config"] == "configs/ablations/cpu/5/roialign.yaml" and rec["max_iter"] == 2
    kp_ap = metric_value(rec, "kp_AP")
    assert kp_ap is None or 0.0 <= kp_ap <= 100.0
    assert any("keypoint AP" in line for line in logs), logs
    pictures = os.listdir(os.path.join(str(tmp_path / "output"), "cpu", "5", "roialign", "seed0", "vis",
                                       "shapes_person_kpablval_s6_n3_px128"))
    assert pictures
