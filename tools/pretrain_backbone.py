#!/usr/bin/env python
"""Pre-train a ResNet backbone on the generated classification set and cache it: the ImageNet pre-training the
paper's backbones start from (Sec. 3, "Network Architecture", and 3.1, "Implementation Details"), at CPU scale.
`pretrain` trains one recipe of `maskrcnn_plugin.pretrained` and writes its backbone into the cache, from which
configs load it with MODEL.WEIGHTS: "shapes-pretrained://R-18" (configs/ablations/cpu/2a_pretrained/). It is
experiment machinery, so it lives here, beside the package, which holds only what configs need (the recipes,
the cache, the path handler; the generated images).

    python tools/pretrain_backbone.py --depth 18            # ~2 h on 2 CPU cores; a kill resumes on the next run
    python tools/pretrain_backbone.py --depth 34
    python tools/pretrain_backbone.py --depth 18 --print-recipe     # recipe, hash and the file it writes
    python tools/pretrain_backbone.py --depth 18 --benchmark 20     # training images/s here; writes nothing
    python tools/pretrain_backbone.py --depth 18 --max-iter 3 --classes 4 --image-size 32   # a tiny recipe

The network is detectron2's own ResNet (`build_resnet_backbone`: the stem and blocks the detectors build, with
trainable BN, FREEZE_AT 0, output res5) + global average pooling + a linear classifier, on the detection configs'
input normalisation. Training: SGD with momentum, linear warm-up then cosine decay (detectron2's LR schedulers),
cross-entropy without label smoothing (smoothing makes penultimate features transfer worse: Kornblith et al.,
"Do Better ImageNet Models Transfer Better?", 2019).

A run is a function of its recipe: the weights come from ``torch.manual_seed(seed)``, and the images of
iteration ``i`` from ``(data_seed, i)`` alone (per-epoch permutations of the train split; rendering is per
index), whatever the number of loader workers. Every ``checkpoint_period`` iterations the whole state (model
with its classifier, optimizer, scheduler, iteration, recent losses, elapsed time, RNG states) is written
atomically to ``<cache>/R-<depth>-<hash>.resume.pth``; running the same command again after a kill continues
from it and ends with the weights of the run that was never killed (on the same machine and thread count).
At the end the top-1 accuracy on the val split is measured and the backbone file and a json log (recipe, hash,
wall time, images/s, final training loss, the loss curve, top-1, load averages) are written atomically; the
resume state is then removed. If the backbone file exists, nothing is trained. For the recipes the configs use
(no overrides) the log is then copied into results/pretraining/, where the ablation report reads it.
"""
import argparse
import collections
import datetime
import fcntl
import glob
import json
import os
import platform
import shutil
import sys
import time

import numpy as np
import torch
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "results", "pretraining")  # the logs the ablation report reads
if REPO not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, REPO)

from maskrcnn_plugin.checkpoint import RNGStates, atomic_open  # noqa: E402
from maskrcnn_plugin.data.pretrain_classes import GENERATOR_VERSION, PretrainClasses  # noqa: E402
from maskrcnn_plugin.pretrained import (  # noqa: E402
    TRAINER_VERSION,
    backbone_checkpoint,
    build_command,
    checkpoint_path,
    get_cache_dir,
    recipe_for,
    recipe_hash,
    recipe_name,
)

__all__ = ["BackboneClassifier", "pretrain", "evaluate", "benchmark", "main"]

_RECENT = 100  # the final training loss is the mean over the last this many iterations


# ------------------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------------------
def backbone_cfg(depth):
    """detectron2 config of the ResNet that is pre-trained (the detectors' keys; res5 out, trainable BN)."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return cfg


class BackboneClassifier(nn.Module):
    """detectron2 ResNet -> global average pool -> linear; takes uint8 (N, 3, S, S) BGR images."""

    def __init__(self, recipe):
        super().__init__()
        from detectron2.layers import CNNBlockBase, ShapeSpec
        from detectron2.modeling import build_resnet_backbone

        self.backbone = build_resnet_backbone(backbone_cfg(recipe["depth"]), ShapeSpec(channels=3))
        channels = self.backbone.output_shape()["res5"].channels
        self.fc = nn.Linear(channels, recipe["num_classes"])
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        if recipe["zero_init_residual"]:
            for block in self.backbone.modules():
                last = getattr(block, "conv3", None) or getattr(block, "conv2", None)
                if isinstance(block, CNNBlockBase) and last is not None:
                    nn.init.zeros_(last.norm.weight)
        # not persistent: they come from the recipe, not from training
        self.register_buffer("pixel_mean", torch.tensor(recipe["pixel_mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(recipe["pixel_std"]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images):
        x = (images.float() - self.pixel_mean) / self.pixel_std
        return self.fc(self.backbone(x)["res5"].mean(dim=(2, 3)))


def _optimizer(model, recipe):
    decay, no_decay = [], []
    for p in model.parameters():
        # BN scales/shifts and biases: weight decay would only shrink them towards 0 (the usual exemption)
        (no_decay if p.ndim == 1 else decay).append(p)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": recipe["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe["base_lr"], momentum=recipe["momentum"],
    )


def _scheduler(optimizer, recipe):
    from detectron2.solver import LRMultiplier, WarmupParamScheduler
    from fvcore.common.param_scheduler import ConstantParamScheduler, CosineParamScheduler

    main = CosineParamScheduler(1.0, 0.0) if recipe["lr_schedule"] == "cosine" else ConstantParamScheduler(1.0)
    warmup = min(recipe["warmup_iters"] / recipe["max_iter"], 1.0)
    return LRMultiplier(optimizer, WarmupParamScheduler(main, recipe["warmup_factor"], warmup, "linear"),
                        recipe["max_iter"])


# ------------------------------------------------------------------------------------------------------------
# Data order: a function of (data_seed, iteration)
# ------------------------------------------------------------------------------------------------------------
class _BatchOrder(torch.utils.data.Sampler):
    """Index batches of iterations ``start, start + 1, ..., max_iter - 1``: epoch ``e`` visits the train split in
    the order of ``default_rng([data_seed, e]).permutation``; iteration ``i`` takes positions ``[i * B, (i + 1) * B)``
    of the concatenated epochs."""

    def __init__(self, n, batch_size, data_seed, start, max_iter):
        self.n, self.batch, self.seed, self.start, self.max_iter = n, batch_size, data_seed, start, max_iter
        self._epoch, self._perm = None, None

    def _index(self, pos):
        epoch = pos // self.n
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return int(self._perm[pos % self.n])

    def __iter__(self):
        for it in range(self.start, self.max_iter):
            yield [self._index(pos) for pos in range(it * self.batch, (it + 1) * self.batch)]

    def __len__(self):
        return self.max_iter - self.start


def _loader(dataset, sampler, workers):
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                       persistent_workers=False, prefetch_factor=4 if workers else None)


# ------------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, recipe, *, batch_size=200, workers=0, progress=False):
    """Top-1 accuracy (%) on the recipe's val split."""
    from tqdm import tqdm

    ds = PretrainClasses("val", seed=recipe["data_seed"], size=recipe["val_size"],
                         num_classes=recipe["num_classes"], image_size=recipe["image_size"])
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)
    was_training = model.training
    model.eval()
    correct = 0
    for images, labels in tqdm(loader, desc="val top-1", disable=not progress, unit="batch"):
        correct += int((model(images).argmax(1) == labels).sum())
    model.train(was_training)
    return 100.0 * correct / len(ds)


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not on every platform
        return None


def _claim(cache_dir, name):
    """Hold ``<cache>/.<name>.lock`` (a POSIX record lock, released when the process dies): a second process
    training the same recipe would overwrite this one's resume state. Then remove the temporary files that a
    kill during a save of this recipe left. Returns the open lock file; keep it while training."""
    lock = open(os.path.join(cache_dir, f".{name}.lock"), "a+")
    try:
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise RuntimeError(f"{name} is being pre-trained into {cache_dir} by {holder}; wait for it (its result is "
                           "cached for every later run), or use another --cache-dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}")
    lock.flush()
    for tmp in glob.glob(os.path.join(glob.escape(cache_dir), f".{name}.*.tmp-*")):
        os.remove(tmp)
    return lock


class _Progress:
    """What a resume state carries besides the model, optimizer and scheduler: the iteration, the recent losses,
    time spent so far (all sessions) and the load average when the first session started."""

    def __init__(self):
        self.iteration, self.images, self.train_s, self.elapsed_s = 0, 0, 0.0, 0.0
        self.recent_losses = collections.deque(maxlen=_RECENT)
        self.loss_curve = []  # [iteration, mean training loss of the _RECENT iterations up to it], every _RECENT
        self.loadavg_start = _loadavg()

    def record(self, loss):
        self.recent_losses.append(loss)
        self.iteration += 1
        if self.iteration % _RECENT == 0:
            self.loss_curve.append([self.iteration, round(float(np.mean(self.recent_losses)), 4)])

    def state_dict(self):
        return {"iteration": self.iteration, "images": self.images, "train_s": self.train_s,
                "elapsed_s": self.elapsed_s, "recent_losses": list(self.recent_losses),
                "loss_curve": self.loss_curve, "loadavg_start": self.loadavg_start}

    def load_state_dict(self, state):
        self.iteration, self.images = state["iteration"], state["images"]
        self.train_s, self.elapsed_s = state["train_s"], state["elapsed_s"]
        self.recent_losses.extend(state["recent_losses"])
        self.loss_curve = [list(point) for point in state["loss_curve"]]
        self.loadavg_start = state["loadavg_start"]


def pretrain(recipe, cache_dir=None, *, checkpoint_period=200, stop_after=None, workers=0, progress=True,
             log=print):
    """Train ``recipe`` and write its backbone into ``cache_dir`` (default `get_cache_dir`). Returns the backbone
    file's path; with ``stop_after`` (an iteration count), stops there after saving the resume state and returns
    None (what a kill does, minus the lost iterations). A cached file is returned without training."""
    from tqdm import tqdm

    cache_dir = cache_dir or get_cache_dir()
    final = checkpoint_path(recipe, cache_dir)
    name = recipe_name(recipe)
    if os.path.isfile(final):
        log(f"{name}: already built, nothing to do: {final}")
        return final
    os.makedirs(cache_dir, exist_ok=True)
    lock = _claim(cache_dir, name)  # noqa: F841  (held until this function returns)
    resume_path = os.path.join(cache_dir, name + ".resume.pth")
    t_session = time.perf_counter()

    torch.manual_seed(recipe["seed"])
    model = BackboneClassifier(recipe)
    optimizer = _optimizer(model, recipe)
    scheduler = _scheduler(optimizer, recipe)
    state = _Progress()
    checkpointables = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "progress": state,
                       "rng_states": RNGStates()}
    if os.path.isfile(resume_path):
        # weights_only: tensors and plain values only (RNGStates keeps numpy's state as tensors)
        saved = torch.load(resume_path, map_location="cpu", weights_only=True)
        if saved["recipe"] != recipe:
            raise RuntimeError(f"{resume_path} was written by another recipe than {name}'s; delete it to start over")
        for key, obj in checkpointables.items():
            obj.load_state_dict(saved[key])
        log(f"{name}: resuming at iteration {state.iteration} of {recipe['max_iter']} from {resume_path}")
    else:
        log(f"{name}: pre-training ResNet-{recipe['depth']} for {recipe['max_iter']} iterations x "
            f"{recipe['batch_size']} images of {recipe['image_size']} px, {recipe['num_classes']} classes")
    elapsed_before = state.elapsed_s

    def save():
        state.elapsed_s = elapsed_before + time.perf_counter() - t_session
        with atomic_open(resume_path, "wb") as f:
            torch.save({"recipe": recipe, **{k: obj.state_dict() for k, obj in checkpointables.items()}}, f)

    end = recipe["max_iter"] if stop_after is None else min(stop_after, recipe["max_iter"])
    dataset = PretrainClasses("train", seed=recipe["data_seed"], size=recipe["train_size"],
                              num_classes=recipe["num_classes"], image_size=recipe["image_size"])
    order = _BatchOrder(len(dataset), recipe["batch_size"], recipe["data_seed"], state.iteration, end)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    bar = tqdm(total=recipe["max_iter"], initial=state.iteration, desc=name, disable=not progress, unit="it",
               dynamic_ncols=True)
    t_batch = time.perf_counter()
    for images, labels in _loader(dataset, order, workers):
        loss = loss_fn(model(images), labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name}: the training loss became {loss.item()} at iteration "
                                     f"{state.iteration}; lower base_lr (--recipe-override base_lr=...) and start over")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        state.record(loss.item())
        state.images += len(labels)
        now = time.perf_counter()
        state.train_s += now - t_batch  # data waiting included: the rate a run gets
        t_batch = now
        bar.update(1)
        if state.iteration % 20 == 0 or state.iteration == end:
            bar.set_postfix(loss=f"{np.mean(state.recent_losses):.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4f}")
        if state.iteration % checkpoint_period == 0 or state.iteration == end:
            save()
            t_batch = time.perf_counter()  # the save is not training time
    bar.close()
    if state.iteration < recipe["max_iter"]:
        log(f"{name}: stopped after iteration {state.iteration}; run the same command again to continue from "
            f"{resume_path}")
        return None

    t_eval = time.perf_counter()
    top1 = evaluate(model, recipe, workers=workers, progress=progress)
    eval_s = time.perf_counter() - t_eval
    overrides = {k: v for k, v in recipe.items() if v != recipe_for(recipe["depth"])[k]}
    record = {
        "name": name, "hash": recipe_hash(recipe), "recipe": recipe, "generator_version": GENERATOR_VERSION,
        "trainer_version": TRAINER_VERSION, "file": os.path.basename(final),
        "command": build_command(recipe["depth"], overrides),
        "val_top1": round(top1, 2), "final_train_loss": round(float(np.mean(state.recent_losses)), 4),
        "final_train_loss_iterations": len(state.recent_losses),
        "loss_curve": state.loss_curve,
        "wall_s": round(elapsed_before + time.perf_counter() - t_session, 1),
        "train_images_per_s": round(state.images / max(state.train_s, 1e-9), 1), "eval_s": round(eval_s, 1),
        "loadavg_start": state.loadavg_start, "loadavg_end": _loadavg(), "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    # the log first: a backbone file in the cache always has its log beside it
    with atomic_open(os.path.splitext(final)[0] + ".json", "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    with atomic_open(final, "wb") as f:
        torch.save(backbone_checkpoint(model.backbone.state_dict(), recipe), f)
    os.remove(resume_path)
    log(f"{name}: val top-1 {top1:.1f}%, final training loss {record['final_train_loss']:.3f}, "
        f"{record['wall_s'] / 60:.1f} min; wrote {final}")
    return final


def benchmark(recipe, iterations=20, warmup=3):
    """Training images/s of the recipe's fwd+bwd+step on random batches (no data rendering), and the load average."""
    torch.manual_seed(0)
    model = BackboneClassifier(recipe)
    optimizer = _optimizer(model, recipe)
    b, s = recipe["batch_size"], recipe["image_size"]
    images = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8)
    labels = torch.randint(0, recipe["num_classes"], (b,))
    load_start = _loadavg()
    for i in range(warmup + iterations):
        if i == warmup:
            t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    dt = time.perf_counter() - t0
    return {"images_per_s": round(iterations * b / dt, 1), "s_per_iter": round(dt / iterations, 3),
            "loadavg_start": load_start, "loadavg_end": _loadavg(), "torch_threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------------------------
# Command line (tools/pretrain_backbone.py)
# ------------------------------------------------------------------------------------------------------------
def _parse_override(text):
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--recipe-override {text!r}: expected KEY=VALUE, e.g. max_iter=100")
    return key.strip(), yaml.safe_load(value)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="tools/pretrain_backbone.py",
        description="Pre-train a ResNet on the generated classification set and cache its backbone for "
                    "MODEL.WEIGHTS: shapes-pretrained://R-<depth> (maskrcnn_plugin/pretrained.py).")
    parser.add_argument("--depth", type=int, required=True, help="ResNet depth (a recipe exists for 18 and 34)")
    parser.add_argument("--recipe-override", type=_parse_override, action="append", default=[], metavar="KEY=VALUE",
                        help="change a recipe value (yaml syntax); the result is cached under another hash")
    parser.add_argument("--max-iter", type=int, help="shorthand for --recipe-override max_iter=N")
    parser.add_argument("--classes", type=int, help="shorthand for --recipe-override num_classes=N")
    parser.add_argument("--image-size", type=int, help="shorthand for --recipe-override image_size=N")
    parser.add_argument("--cache-dir", help="default: $MASKRCNN_PLUGIN_PRETRAINED, else ./pretrained_cache")
    parser.add_argument("--checkpoint-period", type=int, default=200, help="iterations between resume states")
    parser.add_argument("--stop-after", type=int, help="save and stop after this many iterations (continue later "
                                                       "with the same command); the recipe is unchanged")
    parser.add_argument("--workers", type=int, default=1, help="data-loader processes rendering images (0: in "
                                                               "the training process)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--results-dir", default=RESULTS_DIR,
                        help="where the log of a recipe the configs use (no overrides) is copied for the ablation "
                             "report (default results/pretraining/ of this repository; '' for nowhere)")
    parser.add_argument("--print-recipe", action="store_true", help="print the recipe, its name and file; exit")
    parser.add_argument("--benchmark", type=int, metavar="N", help="time N training iterations on random "
                                                                   "batches, print images/s; writes nothing")
    args = parser.parse_args(argv)

    overrides = dict(args.recipe_override)
    for key, value in (("max_iter", args.max_iter), ("num_classes", args.classes), ("image_size", args.image_size)):
        if value is not None:
            overrides[key] = value
    try:
        recipe = recipe_for(args.depth, overrides)
    except ValueError as e:
        parser.error(str(e))
    if args.checkpoint_period < 1:
        parser.error(f"--checkpoint-period must be >= 1, got {args.checkpoint_period}")
    if args.print_recipe:
        print(json.dumps({"name": recipe_name(recipe), "file": checkpoint_path(recipe, args.cache_dir),
                          "command": build_command(args.depth, overrides), "recipe": recipe}, indent=2))
        return 0
    if args.benchmark:
        res = benchmark(recipe, args.benchmark)
        est_h = recipe["max_iter"] * res["s_per_iter"] / 3600
        print(json.dumps({"depth": args.depth, "image_size": recipe["image_size"],
                          "batch_size": recipe["batch_size"], **res,
                          "estimated_training_h_for_max_iter": round(est_h, 2)}, indent=2))
        return 0
    final = pretrain(recipe, args.cache_dir, checkpoint_period=args.checkpoint_period, stop_after=args.stop_after,
                     workers=args.workers, progress=not args.no_progress)
    if final and not overrides and args.results_dir:  # a backbone the configs use: its log is the report's record
        os.makedirs(args.results_dir, exist_ok=True)
        log_path = os.path.splitext(final)[0] + ".json"
        shutil.copyfile(log_path, os.path.join(args.results_dir, os.path.basename(log_path)))
        print(f"{recipe_name(recipe)}: its log is in {os.path.join(args.results_dir, os.path.basename(log_path))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
