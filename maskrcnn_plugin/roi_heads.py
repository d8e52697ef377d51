"""ROI heads whose box, mask and keypoint branches extract RoI features with `AblationROIPooler`.

`AblationStandardROIHeads` (FPN, or one feature map such as C5 at stride 32) and `AblationRes5ROIHeads` (C4,
the res5 stage run per RoI) are detectron2's StandardROIHeads / Res5ROIHeads with the pooler swapped, so any
detectron2 config selects them by name: `MODEL.ROI_HEADS.NAME: AblationStandardROIHeads`.

Keypoints (paper Section 5, Tables 4 and 5): with `MODEL.KEYPOINT_ON`, alone or with `MODEL.MASK_ON`,
`AblationStandardROIHeads` extracts the keypoint branch's RoI features (`ROI_KEYPOINT_HEAD.POOLER_RESOLUTION`,
14 in the paper) with the same `MODEL.ROI_EXTRACTOR` operator as the box and mask branches; the keypoint head is
any registered one (`MaskRCNNKeypointHead` in our configs, see keypoint_head.py). detectron2's Res5ROIHeads has
no keypoint branch, so neither has `AblationRes5ROIHeads`.
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads, StandardROIHeads, build_mask_head

from .poolers import AblationROIPooler


def _pooler_for(cfg, input_shape, in_features, resolution):
    scales = tuple(1.0 / input_shape[f].stride for f in in_features)
    return AblationROIPooler.from_config(cfg, resolution, scales)


def _swap_pooler(cfg, input_shape, ret, branch, resolution):
    """Replace the stock pooler of `branch` ("box", "mask", "keypoint") in a from_config dict, if it has one."""
    if ret.get(f"{branch}_pooler") is not None:
        ret[f"{branch}_pooler"] = _pooler_for(cfg, input_shape, ret[f"{branch}_in_features"], resolution)
    return ret


@ROI_HEADS_REGISTRY.register()
class AblationStandardROIHeads(StandardROIHeads):
    """StandardROIHeads with `MODEL.ROI_EXTRACTOR` feature extraction for every branch."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        _swap_pooler(cfg, input_shape, ret, "box", cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION)
        _swap_pooler(cfg, input_shape, ret, "mask", cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION)
        _swap_pooler(cfg, input_shape, ret, "keypoint", cfg.MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION)
        return ret


@ROI_HEADS_REGISTRY.register()
class AblationRes5ROIHeads(Res5ROIHeads):
    """Res5ROIHeads (C4) with `MODEL.ROI_EXTRACTOR` feature extraction; box and mask share the pooler.

    Its mask head is told the size of the features it receives, res5's output (7x7 for the 14x14 pooling:
    res5's first block has stride 2), where detectron2's Res5ROIHeads reports the pooler's size; a head that
    depends on it (MaskRCNNMLPHead) needs these heads on C4.
    """

    @classmethod
    def from_config(cls, cfg, input_shape):
        stock_cfg = cfg
        if cfg.MODEL.MASK_ON:  # the mask head is built below, for the right input size
            stock_cfg = cfg.clone()
            stock_cfg.defrost()
            stock_cfg.MODEL.MASK_ON = False
        ret = super().from_config(stock_cfg, input_shape)
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        ret["pooler"] = _pooler_for(cfg, input_shape, ret["in_features"], resolution)
        if cfg.MODEL.MASK_ON:
            # built last, as detectron2 does, so the random initialisation of every module is unchanged
            side = (resolution + 1) // 2
            channels = ret["res5"][-1].out_channels
            ret["mask_head"] = build_mask_head(cfg, ShapeSpec(channels=channels, height=side, width=side))
        return ret
