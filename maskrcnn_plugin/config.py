"""Every config key maskrcnn_plugin adds to detectron2's defaults, each with what it means.

`add_maskrcnn_plugin_config(cfg)` follows detectron2 projects' `add_*_config` convention: it only adds keys;
call it on a fresh `get_cfg()` before merging a yaml file (`get_plugin_cfg()` does both and picks the device).
`check_maskrcnn_plugin_config(cfg)` is the one validation of a whole config: it rejects invalid values with
the key and the valid choices, including component names that are in no detectron2 registry; `train_net.py`
calls it once, right after merging, so a bad config fails before any model or data is built. Components
built straight from a config check only the keys they read (`check_roi_extractor`, the mask head's loss).
"""
import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

# Valid values of the enumerated keys, used by the checks and in error messages.
ROI_EXTRACTOR_METHODS = ("RoIPool", "RoIWarp", "RoIAlign")
ROI_EXTRACTOR_AGGREGATIONS = ("max", "avg")
MASK_LOSSES = ("sigmoid", "softmax")


def add_maskrcnn_plugin_config(cfg):
    """Add the plugin's keys (with defaults) to `cfg` in place and return it. Safe to call twice."""
    if hasattr(cfg.MODEL, "ROI_EXTRACTOR"):
        return cfg
    # ---- RoI feature extraction (paper Section 3, Table 2c/2d, Table 5) ----------------------------------
    # Used by AblationStandardROIHeads / AblationRes5ROIHeads for the box, mask and keypoint branches.
    cfg.MODEL.ROI_EXTRACTOR = CN()
    # "RoIPool": quantize the box and the bin edges, max over integer cells (Fast R-CNN).
    # "RoIWarp": quantize the box, then sample bilinearly (MNC). "RoIAlign": no quantization at all.
    cfg.MODEL.ROI_EXTRACTOR.METHOD = "RoIAlign"
    # How the samples of one bin are combined: "max" or "avg" (RoIPool is always max).
    cfg.MODEL.ROI_EXTRACTOR.AGGREGATION = "avg"
    # Bilinear samples per bin side for RoIWarp/RoIAlign; the paper uses 2 (4 points per bin); 0 = adaptive
    # ceil(roi_size / output_size) as in detectron2/torchvision.
    cfg.MODEL.ROI_EXTRACTOR.SAMPLING_RATIO = 2
    # Half-pixel shift before bilinear sampling: RoIAlign = detectron2's ROIAlignV2 (the paper's is False);
    # RoIWarp samples the snapped cells' own area (False: legacy pixel model, biased by half a cell).
    cfg.MODEL.ROI_EXTRACTOR.ALIGNED = True

    # ---- Mask branch (Section 3 "Mask Representation", L_mask; Table 2b, 2e) ---------------------------
    # "sigmoid": per-pixel sigmoid + binary cross-entropy on the gt class's mask only (the paper's L_mask).
    # "softmax": per-pixel softmax over K classes + background, classes compete (Table 2b's baseline).
    cfg.MODEL.ROI_MASK_HEAD.LOSS = "sigmoid"
    # Hidden fully connected widths of MaskRCNNMLPHead; [1024, 1024, 1024] is Table 2e's 3-fc variant.
    cfg.MODEL.ROI_MASK_HEAD.MLP_DIMS = [1024, 1024]

    # ---- The generated "shapes" dataset (maskrcnn_plugin/data/shapes.py) --------------------------------
    cfg.DATASETS.SHAPES = CN()
    # Where generated images and COCO json are cached; "" = $MASKRCNN_PLUGIN_DATA or ./datasets_cache.
    cfg.DATASETS.SHAPES.ROOT = ""

    # ---- Data loading (maskrcnn_plugin/data/mapper.py) ----------------------------------------------------
    # An image file that cannot be read (missing, truncated, not an image) stops training with an error
    # naming it (False), or is skipped with a warning naming it, training on another image instead (True;
    # needs the loader of `build_checked_train_loader`). Test-time loading always raises: skipping there
    # would silently evaluate on fewer images.
    cfg.DATALOADER.SKIP_UNREADABLE_IMAGES = False

    # ---- Visualisation after evaluation ------------------------------------------------------------------
    # Number of test images whose predictions are drawn (detectron2 Visualizer) into OUTPUT_DIR/vis.
    cfg.TEST.VIS_NUM_IMAGES = 4
    # Score threshold for the drawn predictions.
    cfg.TEST.VIS_SCORE_THRESH = 0.5

    # ---- Speed only (maskrcnn_plugin/inference.py; issue #27) ---------------------------------------------
    # These change how the same function is computed, not what: outputs agree to float32 rounding, so they are
    # left out of the ablation records' config hash (ablations/records.py, SPEED_ONLY_KEYS).
    # --eval-only and demo.py: fold every BN (frozen, or trainable in eval mode) into the convolution before it,
    # one pass over the activations fewer per convolution.
    cfg.TEST.FOLD_BATCHNORM = True
    # --eval-only and demo.py: convolution weights (and so the activations) in channels-last order, oneDNN's
    # faster layout for the 1x1 convolutions of a ResNet on CPUs.
    cfg.TEST.CHANNELS_LAST = True
    # Training in channels-last order (train_net.py's Trainer.build_model). Off: the main job's step took 0.95x
    # the time, but its first iteration's loss differed by 2.3e-4 relative, more than a default may change it
    # (docs/performance.md, bench_compile).
    cfg.SOLVER.CHANNELS_LAST = False
    return cfg


def get_plugin_cfg():
    """detectron2's default config plus the plugin's keys, with MODEL.DEVICE where this machine can run.

    detectron2 defaults to "cuda"; ours runs where the user is: "cuda" when present, else "cpu" (a yaml file
    or a command-line option still overrides it). The config `train_net.py` and `demo.py` start from.
    """
    cfg = add_maskrcnn_plugin_config(get_cfg())
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    return cfg


def _check_choice(value, key, choices):
    if value not in choices:
        raise ValueError(f"Invalid config value {key}={value!r}; valid values: {', '.join(map(repr, choices))}.")


def _check_registered(name, key, registry, registry_name):
    # fvcore's Registry.get only says "No object named 'Foo' found in 'ROI_HEADS' registry!": name the config
    # key to fix and what would be valid instead.
    if name not in registry:
        valid = ", ".join(repr(n) for n, _ in sorted(registry, key=lambda item: item[0]))
        raise ValueError(
            f"Invalid config value {key}={name!r}: not in detectron2's {registry_name} registry; "
            f"registered names: {valid}. (A custom component must be imported, which registers it, before "
            "the model is built.)"
        )
    return registry.get(name)


def check_registered_names(cfg):
    """Raise ValueError naming the key, the value and the registered names for each component name in `cfg`
    that the model would look up in a detectron2 registry and that is not there.

    Only the names the model would actually use are checked, e.g. MODEL.ROI_BOX_HEAD.NAME only for
    StandardROIHeads-like heads and only when set (not ""), MODEL.ROI_KEYPOINT_HEAD.NAME only with KEYPOINT_ON.
    """
    from detectron2.modeling import (
        BACKBONE_REGISTRY,
        META_ARCH_REGISTRY,
        PROPOSAL_GENERATOR_REGISTRY,
        ROI_BOX_HEAD_REGISTRY,
        ROI_HEADS_REGISTRY,
        ROI_KEYPOINT_HEAD_REGISTRY,
        ROI_MASK_HEAD_REGISTRY,
        GeneralizedRCNN,
        ProposalNetwork,
    )
    from detectron2.modeling.roi_heads import Res5ROIHeads, StandardROIHeads

    m = cfg.MODEL
    arch = _check_registered(m.META_ARCHITECTURE, "MODEL.META_ARCHITECTURE", META_ARCH_REGISTRY, "META_ARCH")
    _check_registered(m.BACKBONE.NAME, "MODEL.BACKBONE.NAME", BACKBONE_REGISTRY, "BACKBONE")
    if not isinstance(arch, type) or not issubclass(arch, (GeneralizedRCNN, ProposalNetwork)):
        return  # e.g. RetinaNet, or a custom architecture whose sub-components we cannot know
    # "PrecomputedProposals" is the builder's own name for "no proposal generator" (proposals from files).
    if m.PROPOSAL_GENERATOR.NAME != "PrecomputedProposals":
        _check_registered(m.PROPOSAL_GENERATOR.NAME, "MODEL.PROPOSAL_GENERATOR.NAME", PROPOSAL_GENERATOR_REGISTRY,
                          "PROPOSAL_GENERATOR")
    if not issubclass(arch, GeneralizedRCNN):
        return
    heads = _check_registered(m.ROI_HEADS.NAME, "MODEL.ROI_HEADS.NAME", ROI_HEADS_REGISTRY, "ROI_HEADS")
    if not isinstance(heads, type) or not issubclass(heads, (StandardROIHeads, Res5ROIHeads)):
        return
    # Res5ROIHeads has its own box head (res5). "" is detectron2's unset default, which partial base configs
    # (e.g. configs/ablations/cpu/Base-Ablation-CPU.yaml) leave for the configs that inherit them to set.
    if issubclass(heads, StandardROIHeads) and m.ROI_BOX_HEAD.NAME:
        _check_registered(m.ROI_BOX_HEAD.NAME, "MODEL.ROI_BOX_HEAD.NAME", ROI_BOX_HEAD_REGISTRY, "ROI_BOX_HEAD")
    if m.MASK_ON:
        mask_head = _check_registered(m.ROI_MASK_HEAD.NAME, "MODEL.ROI_MASK_HEAD.NAME", ROI_MASK_HEAD_REGISTRY,
                                      "ROI_MASK_HEAD")
        _check_mlp_head_input_size(heads, mask_head)
    if m.KEYPOINT_ON:
        _check_registered(m.ROI_KEYPOINT_HEAD.NAME, "MODEL.ROI_KEYPOINT_HEAD.NAME", ROI_KEYPOINT_HEAD_REGISTRY,
                          "ROI_KEYPOINT_HEAD")


def _check_mlp_head_input_size(heads, mask_head):
    from detectron2.modeling.roi_heads import Res5ROIHeads

    from .mask_head import MaskRCNNMLPHead
    from .roi_heads import AblationRes5ROIHeads

    # detectron2's Res5ROIHeads tells its mask head the pooler size (14), but res5 halves the features to 7x7
    # first: an MLP head, whose first fc layer is sized by the input, would be built for the wrong size.
    if (isinstance(mask_head, type) and issubclass(mask_head, MaskRCNNMLPHead) and issubclass(heads, Res5ROIHeads)
            and not issubclass(heads, AblationRes5ROIHeads)):
        raise ValueError(
            f"MODEL.ROI_MASK_HEAD.NAME={mask_head.__name__!r} needs ROI heads that report the size of the RoI "
            f"features it receives; MODEL.ROI_HEADS.NAME={heads.__name__!r} reports the pooler's, not res5's "
            "output. Use MODEL.ROI_HEADS.NAME='AblationRes5ROIHeads' (the same C4 heads; it reports res5's size)."
        )


def check_roi_extractor(ex):
    """Raise ValueError naming the key and its valid values for an invalid `MODEL.ROI_EXTRACTOR` node."""
    _check_choice(ex.METHOD, "MODEL.ROI_EXTRACTOR.METHOD", ROI_EXTRACTOR_METHODS)
    _check_choice(ex.AGGREGATION, "MODEL.ROI_EXTRACTOR.AGGREGATION", ROI_EXTRACTOR_AGGREGATIONS)
    if ex.METHOD == "RoIPool" and ex.AGGREGATION != "max":
        raise ValueError("MODEL.ROI_EXTRACTOR.AGGREGATION must be 'max' when METHOD='RoIPool' (RoIPool max-pools).")
    if not isinstance(ex.SAMPLING_RATIO, int) or ex.SAMPLING_RATIO < 0:
        raise ValueError(f"MODEL.ROI_EXTRACTOR.SAMPLING_RATIO must be an int >= 0, got {ex.SAMPLING_RATIO!r}.")
    _check_choice(ex.ALIGNED, "MODEL.ROI_EXTRACTOR.ALIGNED", (True, False))


def check_maskrcnn_plugin_config(cfg):
    """Raise ValueError naming the key and its valid values for any invalid plugin setting, and for component
    names that are in no detectron2 registry (`check_registered_names`).

    A config without the plugin's keys (a stock detectron2 config that only names our components) is valid:
    the components then use their defaults, which are the keys' defaults.
    """
    check_registered_names(cfg)
    if hasattr(cfg.MODEL, "ROI_EXTRACTOR"):
        check_roi_extractor(cfg.MODEL.ROI_EXTRACTOR)
    mask_head = cfg.MODEL.ROI_MASK_HEAD
    _check_choice(mask_head.get("LOSS", "sigmoid"), "MODEL.ROI_MASK_HEAD.LOSS", MASK_LOSSES)
    dims = mask_head.get("MLP_DIMS", [1])
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise ValueError(f"MODEL.ROI_MASK_HEAD.MLP_DIMS must be a list of positive ints, got {dims!r}.")
    skip = cfg.DATALOADER.get("SKIP_UNREADABLE_IMAGES", False)
    _check_choice(skip, "DATALOADER.SKIP_UNREADABLE_IMAGES", (True, False))
