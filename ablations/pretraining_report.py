"""The report's block on the backbones of the "pretrained" protocol: one row per pre-training run and their
training-loss curves, read from ``results/pretraining/*.json``.

``tools/pretrain_backbone.py`` writes each backbone's log beside its weights in the cache; the weights are not
committed, the log is copied into ``results/pretraining/``. The issue asks for the time and top-1 of each
backbone, and, where the depth gain does not reproduce, the evidence why: these are that evidence.
"""
import json
import math
import os

from maskrcnn_plugin.pretrained import RECIPES, build_command, recipe_for, recipe_name

from .paths import REPO_ROOT

PRETRAINING_RESULTS = os.path.join(REPO_ROOT, "results", "pretraining")
BN_SHIFT_FILE = "bn_shift.json"  # tools/frozen_bn_shift.py's output in the same directory (not a run log)


def load_pretraining_records(records_dir=PRETRAINING_RESULTS):
    """The run logs in `records_dir`, by depth then finishing time; [] when there is none."""
    if not os.path.isdir(records_dir):
        return []
    records = []
    for name in sorted(os.listdir(records_dir)):
        if name.endswith(".json") and name != BN_SHIFT_FILE:
            path = os.path.join(records_dir, name)
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
            missing = {"name", "recipe", "finished", "val_top1"} - set(record if isinstance(record, dict) else ())
            if missing:
                raise ValueError(f"{path}: not a pre-training log of tools/pretrain_backbone.py (no "
                                 f"{', '.join(sorted(missing))}); every other .json in {records_dir} is read as one, "
                                 f"so move it elsewhere")
            records.append(record)
    return sorted(records, key=lambda r: (r["recipe"]["depth"], r["finished"]))


def load_bn_shift(records_dir=PRETRAINING_RESULTS):
    """tools/frozen_bn_shift.py's record in `records_dir`, or None."""
    path = os.path.join(records_dir, BN_SHIFT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def bn_shift_markdown(record):
    """Per backbone and stage, the median |Δmean|/σ and variance ratio of the frozen BN layers' inputs on each
    image set of `record` (tools/frozen_bn_shift.py's): how far each set is from the statistics BN froze."""
    sets = record["sets"]
    L = ["How far the detection images are from the statistics frozen BN keeps (`tools/frozen_bn_shift.py`, "
         f"{record['images_per_set']} images of each set): per stage, the median over its BN layers of "
         "|Δmean|/σ (the layer input's channel mean minus the running mean, in running standard deviations; "
         "median over channels) and of the variance ratio (input variance / running variance). The pre-training "
         "val images are the control (about 0 and 1); a variance ratio far from 1 on the detection images means "
         "the layers after it see inputs at a scale they were not trained on, which frozen BN cannot correct.", "",
         "| backbone | stage | " + " | ".join(f"{s}: \\|Δmean\\|/σ | {s}: var ratio" for s in sets) + " |",
         "|---|---|" + "---|---|" * len(sets)]
    for b in record["backbones"]:
        for i, stage in enumerate(b["stages"][sets[0]]):
            cells = " | ".join(f"{b['stages'][s][stage][0]:.2f} | {b['stages'][s][stage][1]:.2f}" for s in sets)
            name = f"`{b['name']}`" if i == 0 else ""
            L.append(f"| {name} | {stage} | {cells} |")
    L.append("")
    return L


def plot_loss_curves(records, path):
    """Training loss against iteration, one line per run that logged its curve, with chance (ln classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [r for r in records if r.get("loss_curve")]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in curves:
        it, loss = zip(*r["loss_curve"])
        ax.plot(it, loss, label=f"{r['name']} (val top-1 {r['val_top1']:.1f}%)")
    for n in sorted({r["recipe"]["num_classes"] for r in curves}):
        ax.axhline(math.log(n), color="grey", ls="--", lw=1, label=f"chance, {n} classes (ln {n})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (mean of the last 100 iterations)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("Pre-training of the \"pretrained\" protocol's backbones", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pretrained_backbones_markdown(records, plot_file, docs_dir, bn_shift=None):
    """The report's lines: a table of the runs (those the configs use now marked), the missing backbones with
    their commands, the loss-curve plot (written to `plot_file`) when a run logged its curve, and the frozen-BN
    shift table when `bn_shift` (tools/frozen_bn_shift.py's record) is given."""
    current = {recipe_name(recipe_for(d)): d for d in RECIPES}
    L = ["### Pre-trained backbones of the \"pretrained\" protocol", "",
         "Each run's log, written by `python tools/pretrain_backbone.py --depth <D>` beside the backbone in the "
         "cache and copied to `results/pretraining/` (the weights are not committed). `shapes-pretrained://R-<D>` "
         "in a config means the backbone of the current recipe of depth D; rows of older recipes are kept as "
         "their record. Top-1 is on the generated set's val split (chance: 1 / classes).", ""]
    if records:
        L += ["| backbone | used by the configs | val top-1 (%) | final training loss | chance loss | wall time (min) "
              "| training images/s | load average start → end | finished |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in records:
            load = f"{r['loadavg_start'][0]:.2f} → {r['loadavg_end'][0]:.2f}"
            L.append(f"| `{r['name']}` | {'yes' if r['name'] in current else 'no (older recipe)'} "
                     f"| {r['val_top1']:.1f} | {r['final_train_loss']:.3f} | {math.log(r['recipe']['num_classes']):.3f} "
                     f"| {r['wall_s'] / 60:.1f} | {r['train_images_per_s']:.1f} | {load} | {r['finished']} |")
        L.append("")
    built = {r["name"] for r in records}
    missing = [f"R-{d} (`{build_command(d)}`)" for name, d in sorted(current.items(), key=lambda kv: kv[1])
               if name not in built]
    if missing:
        L += [f"No record yet for the current recipe of: {', '.join(missing)}.", ""]
    if plot_loss_curves(records, plot_file):
        L += [f"![pre-training loss curves]({os.path.relpath(plot_file, docs_dir)})", ""]
    if bn_shift:
        L += bn_shift_markdown(bn_shift)
    return L
