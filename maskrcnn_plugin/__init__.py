"""maskrcnn_plugin: Mask R-CNN (He et al., ICCV 2017) components for detectron2.

Importing the package registers every component in detectron2's registries (this is the one place where
that happens):
- ROI_HEADS_REGISTRY: AblationStandardROIHeads, AblationRes5ROIHeads (RoIPool / RoIWarp / RoIAlign, Sec. 3)
- ROI_MASK_HEAD_REGISTRY: MaskRCNNFCNHead, MaskRCNNMLPHead with sigmoid / softmax mask loss (Sec. 3)
- ROI_KEYPOINT_HEAD_REGISTRY: MaskRCNNKeypointHead (the paper's keypoint head, Sec. 5; stable inference)
- META_ARCH_REGISTRY: GeneralizedRCNNFastPaste (GeneralizedRCNN with a faster CPU mask paste-back)
- DatasetCatalog: the generated `shapes_*` datasets
- detectron2's PathManager: the `shapes-pretrained://R-<depth>` weights (`pretrained`: ResNets pre-trained on
  the generated classification set, the stand-in for the paper's ImageNet initialisation, Sec. 3)
Call `add_maskrcnn_plugin_config(cfg)` (or start from `get_plugin_cfg()`) before merging one of our configs.
"""
from . import data, keypoint_head, mask_head, paste, pretrained, roi_heads  # noqa: F401  (imported for registration)
from .config import add_maskrcnn_plugin_config, check_maskrcnn_plugin_config, get_plugin_cfg

pretrained.register_path_handler()

__all__ = ["add_maskrcnn_plugin_config", "check_maskrcnn_plugin_config", "get_plugin_cfg"]
