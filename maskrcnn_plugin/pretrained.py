"""Pre-trained backbones: the frozen recipes, their cache, and ``shapes-pretrained://`` weights for configs.

The paper initialises every backbone from ImageNet-pretrained weights (Sec. 3, "Network Architecture", and 3.1,
"Implementation Details"), fine-tuned with frozen BatchNorm as in Detectron, its code base. Offline, our
stand-in is a ResNet pre-trained on the generated classification set of `maskrcnn_plugin.data.pretrain_classes`
by ``python tools/pretrain_backbone.py --depth 18``. This module holds
what names and finds the result:

* `RECIPES`: one frozen recipe per depth (data, image size, schedule, seed, input normalisation). A recipe's
  content hash (`recipe_hash`: the recipe, the generator's and the trainer's version strings) names its file
  ``<cache>/R-<depth>-<hash12>.pth`` (+ a ``.json`` log beside it), so any change of a recipe, of the images
  or of the training code makes a new file rather than reusing a stale one;
* the cache directory (`get_cache_dir`): ``$MASKRCNN_PLUGIN_PRETRAINED``, else ``./pretrained_cache`` in the
  working directory (as the datasets' ``$MASKRCNN_PLUGIN_DATA`` / ``./datasets_cache``);
* `ShapesPretrainedHandler`, an iopath path handler (registered with detectron2's ``PathManager`` by
  ``import maskrcnn_plugin``) for ``MODEL.WEIGHTS: "shapes-pretrained://R-18"`` (the current R-18 recipe's file)
  or ``"shapes-pretrained://R-18-<hash12>"`` (one exact recipe's file). A missing file is a FileNotFoundError
  that names the command building it;
* ``shapes-pretrained://R-18@shapes_train``: the same backbone with its BatchNorm statistics re-estimated on the
  detection images of the registered dataset ``shapes_train`` (`BN_REESTIMATION`; built from the cached backbone
  by ``python tools/reestimate_bn.py --depth 18 --dataset shapes_train``). Fine-tuning with frozen BN assumes the
  pre-training images' statistics hold on the detection images, as ImageNet's roughly hold on COCO; ours do not
  (``tools/frozen_bn_shift.py``), so this variant gives the frozen layers the detection images' statistics and
  keeps every learnt weight.

The file holds the bare ResNet (``stem.*``, ``res2.*`` .. ``res5.*``, BN statistics included, no classifier) in
detectron2's checkpoint format with ``matching_heuristics`` set, so `DetectionCheckpointer` matches its keys by
suffix into ``backbone.bottom_up.*`` (FPN) as well as ``backbone.*`` (one feature map) models; detectron2
applies that matching to ``.pth`` files only when the file asks for it.
"""
import hashlib
import json
import os
import re

from iopath.common.file_io import PathHandler

from .data.pretrain_classes import GENERATOR_VERSION, MAX_CLASSES

__all__ = [
    "RECIPES",
    "ENV_CACHE_DIR",
    "PREFIX",
    "TRAINER_VERSION",
    "get_cache_dir",
    "recipe_for",
    "recipe_hash",
    "recipe_name",
    "checkpoint_path",
    "build_command",
    "resolve",
    "pinned",
    "BN_REESTIMATION",
    "reestimated_checkpoint_path",
    "reestimate_command",
    "ShapesPretrainedHandler",
    "register_path_handler",
    "backbone_checkpoint",
]

ENV_CACHE_DIR = "MASKRCNN_PLUGIN_PRETRAINED"
PREFIX = "shapes-pretrained://"
# Bump when tools/pretrain_backbone.py changes what a recipe trains to (it is part of every recipe's hash).
TRAINER_VERSION = "pretraining-1"  # bump when the training code changes what it learns

# The detection configs' input normalisation (configs/Base-Shapes-RCNN.yaml, BGR; tests/test_pretrain.py checks
# that they agree): the backbone must see its inputs scaled as it will in the detector.
_PIXEL_MEAN = [103.530, 116.280, 123.675]
_PIXEL_STD = [57.375, 57.120, 58.395]

_COMMON = dict(
    num_classes=MAX_CLASSES,  # 120 = 12 shape families x 10 fill patterns
    # 80 px: the detection images' object scale (objects of 16-200 px on 256 px images; here 29-72 px); res5 is
    # 3 x 3 cells. R-18 fwd+bwd: 64 / 43 / 35 images/s at 64 / 80 / 96 px in one session (see RECIPES).
    image_size=80,
    train_size=1_000_000,  # distinct images (global indices 0..999,999): a recipe sees each at most once
    val_size=6000,  # 50 per class
    data_seed=0,
    seed=0,  # weight init (torch.manual_seed)
    batch_size=64,
    # Probes (R-18, seed 0): the loss sits at chance (ln 120 = 4.79) for the first few hundred iterations while
    # the net finds the object without colour cues. At lr 0.05 it stayed there past 150 iterations after
    # 40 warm-up iterations; at 0.02 with 250 warm-up iterations it fell below it from iteration ~230 (4.59 over
    # iterations 300-320). On 10 patterns alone, batch 32: lr 0.02 stayed at chance for 400 iterations, 0.005
    # reached 2.01 (chance 2.30) by 300.
    base_lr=0.02,
    # Each residual block's last BN scale starts at 0, so every block starts as the identity (Goyal et al. 2017,
    # torchvision's zero_init_residual): without it, R-34 at this lr stayed at chance for 980 iterations (loss
    # 4.795 at iteration 980, R-18 left it at ~230) and was stopped.
    zero_init_residual=True,
    momentum=0.9,
    weight_decay=5e-5,  # not on BN parameters or biases
    warmup_iters=250,
    warmup_factor=0.01,
    lr_schedule="cosine",
    pixel_mean=_PIXEL_MEAN,
    pixel_std=_PIXEL_STD,
)

# One frozen recipe per depth. Changing a value changes the hash, i.e. the file a config's "shapes-pretrained://R-18"
# means; a run with --recipe-override writes under another hash and never replaces these. share
# everything but the depth (the same images in the same order), as the paper's share ImageNet.
RECIPES = {
    # Cost, measured with `tools/pretrain_backbone.py --depth D --benchmark 20` (80 px, batch 64, fwd+bwd+step, no
    # data; rendering is ~900 images/s on one core) on this project's 2-core machine, nice'd, while another
    # training used both cores (load average 2.6-4.9), two sessions: R-18 42.5 / 52.0 images/s (1.50 / 1.23
    # s/iteration), R-34 28.7 / 30.1 images/s (2.23 / 2.13 s/iteration); a 320-iteration R-18 run with its data
    # (1 loader worker) ran at 1.3 s/iteration. 5000 iterations (320k images, a quarter of one ImageNet epoch)
    # then take ~1.7-2.1 h for R-18 and ~3.0-3.1 h for R-34 on such a shared machine, less on an idle one;
    # evaluation (6000 val images, forward only) adds about a minute.
    # Measured whole runs: R-34 97.3 min (~15 min of it beside niced test runs); R-18 65.9 min as recorded, over
    # two sessions with ~7 min of it paused and ~4 min beside a test run (~1.6 it/s quiet: ~52 min); the first
    # recipe's R-18 53.8 min. Logs in results/pretraining/.
    18: dict(depth=18, max_iter=5000, **_COMMON),
    34: dict(depth=34, max_iter=5000, **_COMMON),
}


# How `tools/reestimate_bn.py` re-estimates a backbone's BN statistics for ``@<dataset>`` (part of the file's name:
# changing a value makes a new file). The first `images` images of the dataset in its stored order, at their stored
# size (the configs' input size) with the recipe's pixel mean and std, in batches of `batch_size`; the population
# mean and variance of every BN layer's input over them (fvcore's precise BN), in one pass.
BN_REESTIMATION = dict(images=512, batch_size=16, version="bn-reestimation-1")


def get_cache_dir():
    """Where pre-trained backbones are cached: $MASKRCNN_PLUGIN_PRETRAINED, else ``./pretrained_cache`` in the
    working directory (read at each call, as the datasets' root)."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.abspath("pretrained_cache")


def recipe_for(depth, overrides=None):
    """A copy of the frozen recipe of ``depth`` with ``overrides`` ({key: value}) applied and checked."""
    if depth not in RECIPES:
        raise ValueError(f"no pre-training recipe for ResNet depth {depth!r}; recipes exist for depths "
                         f"{sorted(RECIPES)}")
    recipe = json.loads(json.dumps(RECIPES[depth]))  # a deep copy of plain values
    for key, value in (overrides or {}).items():
        if key not in recipe:
            raise ValueError(f"unknown recipe key {key!r}; the keys are {sorted(recipe)}")
        if key == "depth":
            raise ValueError("the depth is chosen with --depth, not as a recipe override")
        default = recipe[key]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise ValueError(f"recipe key {key!r} takes a {type(default).__name__} (like {default!r}), got {value!r}")
        recipe[key] = value
    _check(recipe)
    return recipe


def _check(r):
    def need(ok, what):
        if not ok:
            raise ValueError(f"invalid pre-training recipe: {what}")

    need(1 <= r["num_classes"] <= MAX_CLASSES, f"num_classes must be in 1..{MAX_CLASSES}, got {r['num_classes']}")
    need(r["image_size"] >= 16, f"image_size must be >= 16 px, got {r['image_size']}")
    for key in ("train_size", "val_size", "batch_size", "max_iter"):
        need(r[key] >= 1, f"{key} must be >= 1, got {r[key]}")
    need(r["warmup_iters"] >= 0, f"warmup_iters must be >= 0, got {r['warmup_iters']}")
    need(r["lr_schedule"] in ("cosine", "constant"), f"lr_schedule must be 'cosine' or 'constant', got "
                                                     f"{r['lr_schedule']!r}")
    need(len(r["pixel_mean"]) == 3 and len(r["pixel_std"]) == 3, "pixel_mean and pixel_std need 3 values (BGR)")


def recipe_hash(recipe):
    """12 hex digits of sha256 over the recipe and the generator's and trainer's versions."""
    blob = json.dumps({"recipe": recipe, "generator": GENERATOR_VERSION, "trainer": TRAINER_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def recipe_name(recipe):
    """``R-<depth>-<hash12>``: the file stem of the recipe's backbone in the cache."""
    return f"R-{recipe['depth']}-{recipe_hash(recipe)}"


def checkpoint_path(recipe, cache_dir=None):
    return os.path.join(cache_dir or get_cache_dir(), recipe_name(recipe) + ".pth")


def _reestimated_stem(name, dataset):
    blob = json.dumps({"dataset": dataset, **BN_REESTIMATION}, sort_keys=True)
    return f"{name}@{dataset}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def reestimated_checkpoint_path(recipe, dataset, cache_dir=None):
    """The cache file of `recipe`'s backbone with BN statistics re-estimated on `dataset`:
    ``R-<depth>-<hash12>@<dataset>-<hash8>.pth`` (hash8: the dataset and `BN_REESTIMATION`)."""
    return os.path.join(cache_dir or get_cache_dir(), _reestimated_stem(recipe_name(recipe), dataset) + ".pth")


def reestimate_command(depth, dataset):
    """The command line that builds ``shapes-pretrained://R-<depth>@<dataset>`` from the cached R-<depth>."""
    return f"python tools/reestimate_bn.py --depth {depth} --dataset {dataset}"


def build_command(depth, overrides=None):
    """The command line that builds the backbone of ``recipe_for(depth, overrides)``."""
    cmd = f"python tools/pretrain_backbone.py --depth {depth}"
    for key, value in (overrides or {}).items():
        cmd += f" --recipe-override {key}={json.dumps(value, separators=(',', ':'))}"  # no spaces: one shell word
    return cmd


# R-<depth>[-<hash12>][@<dataset>[-<hash8>]]: hash12 pins the recipe, hash8 the BN re-estimation (`pinned`)
_NAME = re.compile(r"^R-(?P<depth>\d+)(-(?P<hash>[0-9a-f]{12}))?"
                   r"(@(?P<dataset>[A-Za-z0-9_.]+)(-(?P<bn_hash>[0-9a-f]{8}))?)?$")


def resolve(path, cache_dir=None):
    """The local file of ``shapes-pretrained://R-<depth>[-<hash12>][@<dataset>[-<hash8>]]``; FileNotFoundError
    (naming the command that builds it) when it is not in the cache."""
    if not path.startswith(PREFIX):
        raise ValueError(f"{path!r} is not a {PREFIX} path")
    name = path[len(PREFIX):].strip("/")
    m = _NAME.match(name)
    if not m or int(m["depth"]) not in RECIPES:
        raise ValueError(f"{path!r}: expected {PREFIX}R-<depth> or {PREFIX}R-<depth>-<hash12>, optionally followed "
                         f"by @<detection dataset>, with a depth in {sorted(RECIPES)}, e.g. {PREFIX}R-18 or "
                         f"{PREFIX}R-18@shapes_train")
    depth = int(m["depth"])
    cache_dir = cache_dir or get_cache_dir()
    current = recipe_for(depth)
    base = f"R-{depth}-{m['hash']}" if m["hash"] else recipe_name(current)
    where = (f"(cache directory {cache_dir}: ${ENV_CACHE_DIR}, else ./pretrained_cache in the working "
             "directory; the command writes into the same one)")
    if m["dataset"]:
        stem = _reestimated_stem(base, m["dataset"])
        if m["bn_hash"] and not stem.endswith("-" + m["bn_hash"]):
            raise FileNotFoundError(f"{path}: re-estimated by another BN_REESTIMATION than the current one ({stem}); "
                                    f"use {PREFIX}R-{depth}@{m['dataset']}")
        local = os.path.join(cache_dir, stem + ".pth")
        if os.path.isfile(local):
            return local
        if m["hash"] and m["hash"] != recipe_hash(current):
            raise FileNotFoundError(f"{path}: no file {local} {where}; {reestimate_command(depth, m['dataset'])} "
                                    f"builds it from the current R-{depth} recipe only ({recipe_name(current)}).")
        raise FileNotFoundError(
            f"{path}: the R-{depth} backbone with BN statistics re-estimated on {m['dataset']}, {local}, is not built "
            f"yet {where}. Build it (under a minute, once the pre-trained R-{depth} is built) with: "
            f"{reestimate_command(depth, m['dataset'])}")
    local = os.path.join(cache_dir, base + ".pth")
    if os.path.isfile(local):
        return local
    if m["hash"] and m["hash"] != recipe_hash(current):
        raise FileNotFoundError(
            f"{path}: no file {local} {where}. {name} is not the current R-{depth} recipe (that is "
            f"{recipe_name(current)}); build it with the --recipe-override values that made it, or use "
            f"{PREFIX}R-{depth}.")
    raise FileNotFoundError(
        f"{path}: the pre-trained R-{depth} backbone {local} is not built yet {where}. Build it (about 2 h for R-18, "
        f"3 h for R-34 on 2 CPU cores) with: {build_command(depth)}")


def pinned(path):
    """``shapes-pretrained://R-<depth>`` as the exact recipe it means now, ``shapes-pretrained://R-<depth>-<hash12>``,
    and ``...R-<depth>@<dataset>`` as ``...R-<depth>-<hash12>@<dataset>-<hash8>`` (no file needed); any other path
    unchanged. A results record keyed by the pinned name goes stale when the recipe (or the BN re-estimation)
    changes, as it should: "R-18" then names another backbone."""
    if not isinstance(path, str) or not path.startswith(PREFIX):
        return path
    m = _NAME.match(path[len(PREFIX):].strip("/"))
    if not m or int(m["depth"]) not in RECIPES or (m["hash"] and (m["bn_hash"] or not m["dataset"])):
        return path  # already exact, or invalid (resolve names the problem when it is used)
    base = f"R-{m['depth']}-{m['hash']}" if m["hash"] else recipe_name(recipe_for(int(m["depth"])))
    return PREFIX + (_reestimated_stem(base, m["dataset"]) if m["dataset"] else base)


class ShapesPretrainedHandler(PathHandler):
    """iopath handler of ``shapes-pretrained://``: resolves to the cached backbone file (`resolve`)."""

    def _get_supported_prefixes(self):
        return [PREFIX]

    def _get_local_path(self, path, force=False, **kwargs):
        self._check_kwargs(kwargs)
        return resolve(path)

    def _open(self, path, mode="r", buffering=-1, **kwargs):
        self._check_kwargs(kwargs)
        if any(c in mode for c in "wax+"):
            raise ValueError(f"{path}: {PREFIX} paths are read-only (mode {mode!r}); the cache is written by "
                             "tools/pretrain_backbone.py")
        return open(resolve(path), mode, buffering=buffering)

    def _exists(self, path, **kwargs):
        try:
            resolve(path)
            return True
        except FileNotFoundError:
            return False

    def _isfile(self, path, **kwargs):
        return self._exists(path, **kwargs)


def register_path_handler():
    """Register `ShapesPretrainedHandler` with detectron2's PathManager (``import maskrcnn_plugin`` does)."""
    from detectron2.utils.file_io import PathManager

    PathManager.register_handler(ShapesPretrainedHandler(), allow_override=True)


def backbone_checkpoint(backbone_state, recipe):
    """The dict saved as the cache file: the ResNet's weights and BN statistics (``num_batches_tracked`` left out:
    FrozenBatchNorm2d has none and fine-tuning BN restarts it), with detectron2's suffix matching switched on."""
    model = {k: v.detach().clone() for k, v in backbone_state.items() if not k.endswith("num_batches_tracked")}
    return {"model": model, "__author__": f"maskrcnn_plugin pretraining {recipe_name(recipe)}",
            "matching_heuristics": True}
