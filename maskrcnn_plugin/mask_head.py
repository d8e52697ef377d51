"""Mask branch of Mask R-CNN: FCN and MLP mask heads with a per-pixel sigmoid or softmax mask loss.

Implements Section 3 of Mask R-CNN (He et al., ICCV 2017), "Mask Representation" and the mask loss L_mask,
plus the two ablations that isolate its design choices:

* Table 2b, sigmoid vs. softmax: L_mask is a per-pixel sigmoid + binary cross-entropy applied only to the
  mask of the RoI's ground-truth class, so the K class masks do not compete ("sigmoid"); the baseline is
  a per-pixel softmax over the K classes plus background with a multinomial cross-entropy ("softmax").
* Table 2e, FCN vs. MLP: the mask is predicted by a fully convolutional head that keeps the m x m spatial
  layout (``MaskRCNNFCNHead``) or by fully connected layers on the flattened RoI feature that collapse it
  (``MaskRCNNMLPHead``).

Both heads are registered in detectron2's ``ROI_MASK_HEAD_REGISTRY`` and work under detectron2's own
``StandardROIHeads`` (FPN) and ``Res5ROIHeads`` (C4) via ``MODEL.ROI_MASK_HEAD.NAME``; the loss is chosen
by ``MODEL.ROI_MASK_HEAD.LOSS`` and ``MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK`` works with every combination.
At inference both losses yield, per detection, the probability map of the predicted class in
``instances.pred_masks`` (N, 1, m, m), exactly the format detectron2's ``mask_rcnn_inference`` produces, so
detectron2's postprocessing pastes it into the image and thresholds it at 0.5.

Channel layout of the logits (R RoIs, K foreground classes, m x m masks):
  sigmoid: (R, K, m, m), or (R, 1, m, m) class-agnostic.
  softmax: (R, K + 1, m, m), or (R, 2, m, m) class-agnostic; the background channel is the last one, as
           in detectron2's box classifier, so channel k is class k for both losses.
"""
from typing import List, Optional, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec, cat, get_norm
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, BaseMaskRCNNHead
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from .config import MASK_LOSSES, with_plugin_defaults

__all__ = [
    "MaskRCNNPluginBaseHead",
    "MaskRCNNFCNHead",
    "MaskRCNNMLPHead",
    "mask_rcnn_sigmoid_loss",
    "mask_rcnn_softmax_loss",
    "mask_rcnn_plugin_loss",
    "mask_rcnn_plugin_inference",
    "num_mask_channels",
]


def _check_loss(loss: str) -> None:
    # Same wording as config.check_maskrcnn_plugin_config, so the message names the key to fix even when a
    # head is built without a config.
    if loss not in MASK_LOSSES:
        raise ValueError(
            f"Invalid config value MODEL.ROI_MASK_HEAD.LOSS={loss!r}; "
            f"valid values: {', '.join(map(repr, MASK_LOSSES))}."
        )


def num_mask_channels(num_classes: int, loss: str) -> int:
    """Channels the mask predictor must output for `num_classes` masks (1 if class-agnostic) under `loss`."""
    _check_loss(loss)
    # The softmax needs an explicit background channel to compete against; the sigmoid models background
    # implicitly as "probability below 0.5".
    return num_classes + 1 if loss == "softmax" else num_classes


# ----------------------------------------------------------------------------------------------------------
# Targets and training statistics
# ----------------------------------------------------------------------------------------------------------
def _mask_targets(instances: List[Instances], mask_side_len: int, device, with_classes: bool):
    """gt masks cropped to each RoI's proposal box and resized to m x m (detectron2's convention).

    Returns (gt_masks bool (R, m, m), gt_classes int64 (R,) or None), or (None, None) if there are no RoIs.
    """
    gt_masks, gt_classes = [], []
    for inst in instances:
        if len(inst) == 0:
            continue
        if with_classes:
            gt_classes.append(inst.gt_classes.to(dtype=torch.int64))
        # Targets are defined on the proposal box (not the gt box): the mask head sees the proposal's
        # features, so its target is the part of the gt mask that falls inside that box.
        gt_masks.append(inst.gt_masks.crop_and_resize(inst.proposal_boxes.tensor, mask_side_len).to(device))
    if not gt_masks:
        return None, None
    masks = cat(gt_masks, dim=0)
    # Polygon/bitmap rasterizers may return floats; binarize at 0.5 like detectron2.
    masks = masks if masks.dtype == torch.bool else masks > 0.5
    classes = cat(gt_classes, dim=0).to(device) if with_classes else None
    return masks, classes


def _log_mask_statistics(fg_prob: torch.Tensor, gt_masks: torch.Tensor, vis_period: int) -> None:
    """Log accuracy / false positive / false negative rates of the gt class's mask at threshold 0.5."""
    try:
        storage = get_event_storage()
    except AssertionError:
        # No EventStorage outside a detectron2 trainer: the loss functions stay callable on their own
        # (tests, benchmarks, notebooks) and simply skip logging.
        return
    with torch.no_grad():
        incorrect = (fg_prob > 0.5) != gt_masks
        num_pos = gt_masks.sum().item()
        storage.put_scalar("mask_rcnn/accuracy", 1.0 - incorrect.sum().item() / max(incorrect.numel(), 1))
        storage.put_scalar(
            "mask_rcnn/false_positive",
            (incorrect & ~gt_masks).sum().item() / max(gt_masks.numel() - num_pos, 1),
        )
        storage.put_scalar("mask_rcnn/false_negative", (incorrect & gt_masks).sum().item() / max(num_pos, 1))
        if vis_period > 0 and storage.iter % vis_period == 0:
            side_by_side = torch.cat([fg_prob, gt_masks.to(fg_prob.dtype)], dim=2)
            for idx, vis in enumerate(side_by_side):
                storage.put_image(f"Left: mask prediction;   Right: mask GT ({idx})", vis[None].repeat(3, 1, 1))


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------
def mask_rcnn_sigmoid_loss(pred_mask_logits: torch.Tensor, instances: List[Instances], vis_period: int = 0):
    """The paper's L_mask: mean per-pixel binary cross-entropy of the sigmoid of the gt class's mask.

    Args:
        pred_mask_logits: (R, K, m, m) class-specific or (R, 1, m, m) class-agnostic logits, R = total number
            of foreground RoIs over `instances`, in the same order.
        instances: per image, the foreground RoIs with fields proposal_boxes, gt_classes, gt_masks.
        vis_period: period (iterations) at which prediction/gt images are written to the event storage.

    Only the gt class's channel enters the loss, so the other K-1 channels receive exactly zero gradient:
    masks of different classes do not compete, which decouples mask and class prediction (Table 2b).
    """
    assert pred_mask_logits.size(2) == pred_mask_logits.size(3), "Mask prediction must be square!"
    agnostic = pred_mask_logits.size(1) == 1
    gt_masks, gt_classes = _mask_targets(
        instances, pred_mask_logits.size(2), pred_mask_logits.device, with_classes=not agnostic
    )
    if gt_masks is None:
        # Keeps the graph connected (DDP needs every parameter to receive a gradient) with a zero loss.
        return pred_mask_logits.sum() * 0
    if agnostic:
        logits = pred_mask_logits[:, 0]
    else:
        logits = pred_mask_logits[torch.arange(gt_classes.numel(), device=gt_classes.device), gt_classes]
    _log_mask_statistics(logits.detach().sigmoid(), gt_masks, vis_period)
    return F.binary_cross_entropy_with_logits(logits, gt_masks.to(logits.dtype), reduction="mean")


def mask_rcnn_softmax_loss(pred_mask_logits: torch.Tensor, instances: List[Instances], vis_period: int = 0):
    """Multinomial mask loss (Table 2b's softmax baseline): per-pixel softmax over K classes + background.

    Args:
        pred_mask_logits: (R, K + 1, m, m) class-specific or (R, 2, m, m) class-agnostic logits; the last
            channel is background.
        instances, vis_period: as in :func:`mask_rcnn_sigmoid_loss`.

    Each pixel's target is the RoI's gt class inside the gt mask and background outside, and the loss is
    the mean cross-entropy over all pixels of all RoIs. Every channel enters the normalisation, so all
    classes receive gradient and compete for each pixel. With class-agnostic masks this reduces to a
    two-way foreground/background softmax.
    """
    assert pred_mask_logits.size(2) == pred_mask_logits.size(3), "Mask prediction must be square!"
    num_channels = pred_mask_logits.size(1)
    assert num_channels >= 2, "The softmax mask loss needs at least one class channel plus background."
    agnostic = num_channels == 2
    background = num_channels - 1
    gt_masks, gt_classes = _mask_targets(
        instances, pred_mask_logits.size(2), pred_mask_logits.device, with_classes=not agnostic
    )
    if gt_masks is None:
        return pred_mask_logits.sum() * 0
    if agnostic:
        # With one foreground channel, every RoI's "class" is channel 0 (also correct when K == 1).
        gt_classes = torch.zeros(gt_masks.size(0), dtype=torch.int64, device=gt_masks.device)
    target = torch.where(gt_masks, gt_classes[:, None, None], background)
    with torch.no_grad():
        rois = torch.arange(gt_masks.size(0), device=gt_masks.device)
        fg_prob = pred_mask_logits.softmax(dim=1)[rois, gt_classes]
    _log_mask_statistics(fg_prob, gt_masks, vis_period)
    return F.cross_entropy(pred_mask_logits, target, reduction="mean")


def mask_rcnn_plugin_loss(
    pred_mask_logits: torch.Tensor, instances: List[Instances], loss: str = "sigmoid", vis_period: int = 0
):
    """Mask loss selected by name ("sigmoid" or "softmax", MODEL.ROI_MASK_HEAD.LOSS)."""
    _check_loss(loss)
    fn = mask_rcnn_sigmoid_loss if loss == "sigmoid" else mask_rcnn_softmax_loss
    return fn(pred_mask_logits, instances, vis_period)


# ----------------------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------------------
def mask_rcnn_plugin_inference(
    pred_mask_logits: torch.Tensor, pred_instances: List[Instances], loss: str = "sigmoid"
):
    """Attach to each instance the probability mask of its predicted class as `pred_masks` (n, 1, m, m).

    For "sigmoid" it is the sigmoid of that class's logits; for "softmax" the softmax probability of that
    class's channel (background and other classes included in the normalisation). Class-agnostic heads use
    their single foreground channel. The masks stay soft: pasting into the image and thresholding at 0.5 is
    done by detectron2's detector_postprocess, as for its own heads.
    """
    _check_loss(loss)
    num_fg = pred_mask_logits.size(1) - (1 if loss == "softmax" else 0)
    if loss == "sigmoid":
        probs = pred_mask_logits.sigmoid()
    else:
        probs = pred_mask_logits.softmax(dim=1)
    if num_fg == 1:
        mask_probs = probs[:, 0:1]
    else:
        class_pred = cat([i.pred_classes for i in pred_instances]).to(probs.device)
        mask_probs = probs[torch.arange(probs.size(0), device=probs.device), class_pred][:, None]
    for prob, inst in zip(mask_probs.split([len(i) for i in pred_instances], dim=0), pred_instances):
        inst.pred_masks = prob


# ----------------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------------
class MaskRCNNPluginBaseHead(BaseMaskRCNNHead):
    """Shared loss/inference logic: `forward` dispatches on the configured loss; subclasses define layers().

    Subclasses must produce `self.num_mask_channels` output channels (see :func:`num_mask_channels`).
    """

    @configurable
    def __init__(self, *, num_classes: int, loss: str = "sigmoid", loss_weight: float = 1.0, vis_period: int = 0):
        """
        Args:
            num_classes: number of foreground classes, or 1 for class-agnostic masks.
            loss: "sigmoid" (the paper's L_mask) or "softmax" (multinomial, adds a background channel).
            loss_weight: multiplier of the mask loss.
            vis_period: visualization period of predicted vs. gt masks (0 = off).
        """
        super().__init__(loss_weight=loss_weight, vis_period=vis_period)
        _check_loss(loss)
        self.num_classes = num_classes
        self.loss = loss
        self.num_mask_channels = num_mask_channels(num_classes, loss)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        cfg = with_plugin_defaults(cfg)  # a stock detectron2 config that only names our head
        ret.update(
            num_classes=1 if cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            loss=cfg.MODEL.ROI_MASK_HEAD.LOSS,
        )
        return ret

    def forward(self, x, instances: List[Instances]):
        x = self.layers(x)
        if self.training:
            return {"loss_mask": mask_rcnn_plugin_loss(x, instances, self.loss, self.vis_period) * self.loss_weight}
        mask_rcnn_plugin_inference(x, instances, self.loss)
        return instances

    def _init_predictor(self, predictor: nn.Module) -> None:
        # Tiny weights and zero bias start every mask at probability 0.5 (sigmoid) or uniform over the
        # channels (softmax), so the first iterations do not produce huge mask losses (detectron2's choice).
        nn.init.normal_(predictor.weight, std=0.001)
        if predictor.bias is not None:
            nn.init.constant_(predictor.bias, 0)


@ROI_MASK_HEAD_REGISTRY.register()
class MaskRCNNFCNHead(MaskRCNNPluginBaseHead):
    """The paper's fully convolutional mask head (Figure 4, Table 2e "FCN").

    FPN: 4 x (3x3 conv, 256, ReLU) -> 2x2 deconv stride 2 (ReLU) -> 1x1 conv to the mask channels, turning a
    14x14 RoI feature into 28x28 masks. C4: NUM_CONV = 0, the res5 output (7x7, 2048 ch) goes straight to the
    deconv, giving 14x14 masks. The conv stack preserves the spatial layout, which is the point of the FCN
    design: every output pixel is predicted from its own neighbourhood with shared weights.
    """

    @configurable
    def __init__(
        self, input_shape: ShapeSpec, *, num_classes: int, conv_dims: Sequence[int], conv_norm="", **kwargs
    ):
        """
        Args:
            input_shape: channels of the RoI feature (spatial size is free: output = 2x input).
            num_classes: foreground classes, or 1 for class-agnostic masks.
            conv_dims: widths of the N-1 3x3 convs followed by the width of the deconv (N >= 1).
            conv_norm: normalization of the 3x3 convs (see detectron2.layers.get_norm), "" for none.
            **kwargs: loss, loss_weight, vis_period (see MaskRCNNPluginBaseHead).
        """
        super().__init__(num_classes=num_classes, **kwargs)
        assert len(conv_dims) >= 1, "conv_dims needs at least the deconv width"
        channels = input_shape.channels
        self.convs = nn.ModuleList()
        for dim in conv_dims[:-1]:
            self.convs.append(
                Conv2d(
                    channels,
                    dim,
                    kernel_size=3,
                    padding=1,
                    # A bias before a normalization layer would be cancelled by its mean subtraction.
                    bias=not conv_norm,
                    norm=get_norm(conv_norm, dim),
                    activation=nn.ReLU(),
                )
            )
            channels = dim
        self.deconv = ConvTranspose2d(channels, conv_dims[-1], kernel_size=2, stride=2)
        self.predictor = Conv2d(conv_dims[-1], self.num_mask_channels, kernel_size=1)
        for layer in list(self.convs) + [self.deconv]:
            weight_init.c2_msra_fill(layer)
        self._init_predictor(self.predictor)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        cfg_head = cfg.MODEL.ROI_MASK_HEAD
        ret.update(
            input_shape=input_shape,
            conv_dims=[cfg_head.CONV_DIM] * (cfg_head.NUM_CONV + 1),  # + 1: the deconv
            conv_norm=cfg_head.NORM,
        )
        return ret

    def layers(self, x):
        for conv in self.convs:
            x = conv(x)
        return self.predictor(F.relu(self.deconv(x)))


def _roi_feature_resolution(cfg, input_shape: ShapeSpec) -> int:
    """Spatial size of the RoI feature the mask head actually receives.

    detectron2's Res5ROIHeads reports the pooler resolution in the ShapeSpec, but its pooled features go
    through res5 (first block has stride 2) before reaching the mask head: 14x14 pooling -> 7x7 features.
    The FCN head does not care; the MLP head must know it to size its first fully connected layer.
    """
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads

    size = input_shape.height or cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
    try:
        heads_cls = ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME)
    except KeyError:
        return size
    if isinstance(heads_cls, type) and issubclass(heads_cls, Res5ROIHeads):
        size = (size + 1) // 2  # ceil: output size of the stride-2 res5 block
    return size


@ROI_MASK_HEAD_REGISTRY.register()
class MaskRCNNMLPHead(MaskRCNNPluginBaseHead):
    """Fully connected mask head (Table 2e "MLP"): flatten -> fc layers (ReLU) -> fc to C x m x m -> reshape.

    With MLP_DIMS = [1024, 1024] it is the paper's 2-fc variant, [1024, 1024, 1024] the 3-fc one (the
    paper's MLP baselines). The output side is m = 2 x the RoI feature's side, matching the FCN head (28 on
    FPN's 14x14 features, 14 on C4's 7x7). Flattening discards the spatial layout, so every output pixel
    depends on all input positions through a separate weight; the paper attributes the FCN's gain to
    keeping that layout.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        fc_dims: Sequence[int],
        mask_size: Optional[int] = None,
        **kwargs,
    ):
        """
        Args:
            input_shape: channels, height and width of the RoI feature the head receives (flattened size
                fixes the first fc layer).
            num_classes: foreground classes, or 1 for class-agnostic masks.
            fc_dims: widths of the hidden fully connected layers (may be empty: a single linear predictor).
            mask_size: side m of the predicted masks; default 2 x input height.
            **kwargs: loss, loss_weight, vis_period (see MaskRCNNPluginBaseHead).
        """
        super().__init__(num_classes=num_classes, **kwargs)
        assert input_shape.height and input_shape.width, "MaskRCNNMLPHead needs the input's height and width"
        self.input_numel = input_shape.channels * input_shape.height * input_shape.width
        self.mask_size = mask_size or 2 * input_shape.height
        self.fcs = nn.ModuleList()
        dim_in = self.input_numel
        for dim in fc_dims:
            self.fcs.append(nn.Linear(dim_in, dim))
            dim_in = dim
        self.predictor = nn.Linear(dim_in, self.num_mask_channels * self.mask_size ** 2)
        for fc in self.fcs:
            weight_init.c2_xavier_fill(fc)
        self._init_predictor(self.predictor)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        side = _roi_feature_resolution(cfg, input_shape)
        ret.update(
            input_shape=ShapeSpec(channels=input_shape.channels, height=side, width=side),
            fc_dims=list(with_plugin_defaults(cfg).MODEL.ROI_MASK_HEAD.MLP_DIMS),
            mask_size=2 * side,
        )
        return ret

    def layers(self, x):
        x = x.flatten(1)
        if x.size(1) != self.input_numel:
            raise ValueError(
                f"MaskRCNNMLPHead was built for RoI features of {self.input_numel} values per RoI "
                f"but received {x.size(1)}; check the input ShapeSpec (channels x height x width)."
            )
        for fc in self.fcs:
            x = F.relu(fc(x))
        return self.predictor(x).view(x.size(0), self.num_mask_channels, self.mask_size, self.mask_size)
