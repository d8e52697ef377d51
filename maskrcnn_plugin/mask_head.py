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
``StandardROIHeads`` (FPN) via ``MODEL.ROI_MASK_HEAD.NAME``, and on C4 under ``AblationRes5ROIHeads`` (the FCN
head also under detectron2's ``Res5ROIHeads``, which reports the pooler's 14x14, not res5's 7x7 output that the
MLP head's first fc layer must be sized for); the loss is chosen
by ``MODEL.ROI_MASK_HEAD.LOSS`` and ``MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK`` works with every combination.
At inference both losses yield, per detection, the probability map of the predicted class in
``instances.pred_masks`` (N, 1, m, m), exactly the format detectron2's ``mask_rcnn_inference`` produces, so
detectron2's postprocessing pastes it into the image and thresholds it at 0.5.

The losses and the inference are plain functions in mask_loss.py.
"""
from typing import List, Optional, Sequence

import fvcore.nn.weight_init as weight_init
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec, get_norm
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, BaseMaskRCNNHead
from detectron2.structures import Instances

from .mask_loss import (  # noqa: F401  (the loss functions are part of this module's API too)
    check_mask_loss,
    mask_rcnn_plugin_inference,
    mask_rcnn_plugin_loss,
    mask_rcnn_sigmoid_loss,
    mask_rcnn_softmax_loss,
    num_mask_channels,
)

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
        check_mask_loss(loss)
        self.num_classes = num_classes
        self.loss = loss
        self.num_mask_channels = num_mask_channels(num_classes, loss)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["num_classes"] = 1 if cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES
        loss = cfg.MODEL.ROI_MASK_HEAD.get("LOSS")  # absent in a stock detectron2 config: the default, sigmoid
        if loss is not None:
            ret["loss"] = loss
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
        fc_dims: Sequence[int] = (1024, 1024),
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
        if not (input_shape.height and input_shape.width):
            raise ValueError(f"MaskRCNNMLPHead needs the input's height and width, got {input_shape}.")
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
        # The ROI heads report the size of the features this head receives: AblationRes5ROIHeads reports
        # res5's output (7x7 for 14x14 pooling), where detectron2's Res5ROIHeads reports the pooler's.
        side = input_shape.height or cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
        ret.update(
            input_shape=ShapeSpec(channels=input_shape.channels, height=side, width=side),
            mask_size=2 * side,
        )
        dims = cfg.MODEL.ROI_MASK_HEAD.get("MLP_DIMS")  # absent in a stock detectron2 config: the default
        if dims is not None:
            ret["fc_dims"] = list(dims)
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
