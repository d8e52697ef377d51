"""The ablation report: per-table statistics (means, paired gains), the markdown report, plots, json summary.

``write_report`` regenerates, from all stored results alone, ``docs/ablations.md`` (paper vs. ours, gains with
standard errors, commands, wall times), ``results/ablations/summary.json`` and, for tables with ``plot_iou``
(2c, 2d, 3), the AP-vs-IoU plots ``docs/images/ablation_<table>[_<scale>]_ap_vs_iou.png``.
"""
import math
import os

import numpy as np

from maskrcnn_plugin.checkpoint import atomic_open

from .metrics import IOU_THRESHOLDS, METRIC_LABELS, METRIC_SOURCES, metric_value
from .paths import CONFIGS_ROOT, DOCS_DIR, RESULTS_ROOT, arm_config_path, arm_output_dir, plot_path, repo_relpath
from .pretraining_report import (
    PRETRAINING_RESULTS,
    load_bn_shift,
    load_pretraining_records,
    pretrained_backbones_markdown,
)
from .records import LOG_NAME, SHARED_RUN, load_arm_cfg, load_failures, load_results, write_json_atomic
from .suite_time import suite_time_line
from .tables import COCO_COMMON_NOTE, CPU_COMMON_NOTE, PAPER_SOURCE, SCALES, TABLES, USUAL_PROTOCOL, paper_value


def mean_std(values):
    """(mean, sample std (ddof=1; 0.0 for one value), n) of the non-None values; (None, None, 0) if none."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, 0
    arr = np.asarray(vals, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0, int(arr.size)


def paired_gain(arm_by_seed, base_by_seed):
    """Gain of an arm over the baseline from the seeds both have: (mean diff, standard error, n).

    Arms trained with the same seed share data order and initialisation of the common parts, so the
    per-seed differences are paired: SE = std(diff, ddof=1) / sqrt(n); None when n < 2.
    """
    seeds = sorted(s for s in arm_by_seed if s in base_by_seed
                   and arm_by_seed[s] is not None and base_by_seed[s] is not None)
    if not seeds:
        return None, None, 0
    d = np.asarray([arm_by_seed[s] - base_by_seed[s] for s in seeds], dtype=float)
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else None
    return float(d.mean()), se, int(d.size)


def summarize_table(tab, scale, arm_results):
    """Statistics of one table at one scale: per arm and metric the paper value, our mean/std, both gains."""
    by_name = {a.name: a for a in tab.arms_for(scale)}
    arms = []
    for arm in tab.arms_for(scale):
        recs = arm_results.get(arm.name, {})
        reference = arm.gain_over or tab.baseline[scale]  # the arm this one's gains are measured against
        base, paper_base_row = arm_results.get(reference, {}), by_name[reference].paper_row
        entry = {"arm": arm.name, "label": arm.label, "paper_row": arm.paper_row, "seeds": sorted(recs),
                 "is_baseline": arm.name == tab.baseline[scale], "metrics": {}}
        if arm.gain_over:
            entry["gain_over"] = arm.gain_over
        for m in tab.metrics:
            by_seed = {s: metric_value(r, m) for s, r in recs.items()}
            base_by_seed = {s: metric_value(r, m) for s, r in base.items()}
            mean, std, n = mean_std(by_seed.values())
            p = paper_value(tab.paper_key, arm.paper_row, m)
            pb = paper_value(tab.paper_key, paper_base_row, m)
            gain, se, n_pairs = (None, None, 0) if entry["is_baseline"] else paired_gain(by_seed, base_by_seed)
            entry["metrics"][m] = {
                "paper": p, "mean": mean, "std": std, "n": n,
                "paper_gain": None if (entry["is_baseline"] or p is None or pb is None) else round(p - pb, 2),
                "gain": gain, "gain_se": se, "gain_n": n_pairs,
                "gain_gt_2se": None if (gain is None or se is None) else bool(gain > 2 * se),
            }
        walls = [r.get("wall_s") for r in recs.values() if r.get("wall_s") is not None]
        entry["wall_min"] = mean_std([w / 60 for w in walls])[:2] if walls else (None, None)
        entry["train_loss"] = mean_std([(r.get("train_loss") or {}).get("total_loss") for r in recs.values()])
        entry["commits"] = sorted({(r.get("commit") or "?")[:10] + ("+dirty" if r.get("dirty") else "")
                                   for r in recs.values()})
        entry["opts"] = sorted({" ".join(r.get("opts") or []) for r in recs.values()})
        entry["config_hashes"] = sorted({r.get("config_hash") or "?" for r in recs.values()})
        entry["shared_runs"] = {s: r[SHARED_RUN] for s, r in sorted(recs.items()) if SHARED_RUN in r}
        entry["max_iter"] = sorted({r.get("max_iter") for r in recs.values() if r.get("max_iter") is not None})
        entry["commands"] = {s: r.get("command") for s, r in sorted(recs.items())}
        entry["suite_commands"] = sorted({r.get("suite_command") for r in recs.values() if r.get("suite_command")})
        per_iou = {}
        for task in ("segm", "bbox"):
            curves = [r["ap_per_iou"][task] for r in recs.values() if task in r.get("ap_per_iou", {})]
            if curves:
                arr = np.asarray(curves, dtype=float)
                per_iou[task] = {"mean": arr.mean(0).tolist(),
                                 "std": (arr.std(0, ddof=1) if len(arr) > 1 else np.zeros(arr.shape[1])).tolist(),
                                 "n": len(arr)}
        entry["ap_per_iou"] = per_iou
        arms.append(entry)
    return {"table": tab.key, "scale": scale, "title": tab.title, "baseline": tab.baseline[scale],
            "metrics": list(tab.metrics), "arms": arms,
            "min_seeds": min((len(a["seeds"]) for a in arms), default=0),
            "max_seeds": max((len(a["seeds"]) for a in arms), default=0)}


def _fmt(v, signed=False, nd=1):
    if v is None:
        return "—"
    return f"{v:+.{nd}f}" if signed else f"{v:.{nd}f}"


def _mean_std_cell(mean, std, n, nd=1):
    """"—" without runs, "m (1 seed)" for one (no spread to show), else "m ± std"."""
    if mean is None:
        return "—"
    return f"{mean:.{nd}f} (1 seed)" if n < 2 else f"{mean:.{nd}f} ± {std:.{nd}f}"


def plot_ap_vs_iou(summary, path):
    """AP against IoU threshold per arm (mean over seeds, ±1 std band); mask and, for 2d, box AP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a task is plotted when the table reports it: mask AP (2a-e), box AP (2d, 3)
    reported = {METRIC_SOURCES[m][0] for m in summary["metrics"]}
    tasks = [t for t in ("segm", "bbox") if t in reported and any(t in a["ap_per_iou"] for a in summary["arms"])]
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    x = np.asarray(IOU_THRESHOLDS)
    for ax, task in zip(axes[0], tasks):
        for a in summary["arms"]:
            c = a["ap_per_iou"].get(task)
            if not c:
                continue
            mean, std = np.asarray(c["mean"]), np.asarray(c["std"])
            line, = ax.plot(x, mean, marker="o", ms=3, label=f"{a['label']} (n={c['n']})")
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("IoU threshold")
        ax.set_ylabel(f"{'mask' if task == 'segm' else 'box'} AP (%)")
        ax.set_xticks(x[::2])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Table {summary['table']} ({summary['scale']} scale): {summary['title']}\n"
                 "mean over seeds, band = ±1 std", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_open(path) as f:  # workers finishing together may each rebuild the report
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path


def _schedule_line(tab, scale, configs_root):
    """Schedule of the table's baseline arm config (the same for all arms of the table)."""
    path = arm_config_path(tab.key, scale, tab.baseline[scale], configs_root)
    if not os.path.isfile(path):
        return None
    try:
        cfg = load_arm_cfg(path)
    except Exception as e:  # a broken config should not stop the report
        return f"(could not read {repo_relpath(path)}: {e})"
    s = cfg.SOLVER
    return (f"{s.MAX_ITER} iterations x {s.IMS_PER_BATCH} images, lr {s.BASE_LR} (x0.1 at {tuple(s.STEPS)}), "
            f"{s.WARMUP_ITERS} warm-up iterations; train on {', '.join(cfg.DATASETS.TRAIN)}, "
            f"test on {', '.join(cfg.DATASETS.TEST)}")


def _failures_markdown(tab, scale, summary, failures):
    """Lines listing the table's failed training runs that no later run replaced."""
    labels = {a["arm"]: a["label"] for a in summary["arms"]}
    done = {a["arm"]: set(a["seeds"]) for a in summary["arms"]}
    rows = [(arm, seed, rec) for arm in labels for seed, rec in sorted(failures.get(arm, {}).items())
            if seed not in done[arm]]
    if not rows:
        return []
    L = ["**Failed runs** (missing from the means above; `--ablation` retries them, resuming from their last "
         "checkpoint):", ""]
    for arm, seed, rec in rows:
        commit = (rec.get("commit") or "?")[:10] + ("+dirty" if rec.get("dirty") else "")
        error = rec.get("error") or f"exit status {rec.get('exit_status')}"
        log_file = repo_relpath(os.path.join(arm_output_dir(tab.key, scale, arm, seed), LOG_NAME))
        L.append(f"- {labels[arm]}, seed {seed}: {error} (after {rec.get('wall_s', 0) / 60:.1f} min, commit "
                 f"{commit}, config hash {rec.get('config_hash')}; log: `{log_file}`)")
    L.append("")
    return L


def _table_markdown(tab, scale, summary, docs_dir, configs_root, report_path, failures=None):
    L = []
    L.append(f"### Table {tab.key} — {tab.title} ({scale} scale)")
    L.append("")
    suite = f"python train_net.py --ablation {tab.key} --scale {scale} --seeds 0 1 2"
    L.append(f"Command (runs the missing arms, then rebuilds this report): `{suite}`  ")
    L.append(f"Arm configs: `configs/ablations/{scale}/{tab.key}/<arm>.yaml`; baseline for the gains: "
             f"`{tab.baseline[scale]}`.  ")
    sched = _schedule_line(tab, scale, configs_root)
    if sched:
        L.append(f"Schedule (same for every arm): {sched}.")
    L.append("")
    if scale in tab.notes:
        L.append(f"Differences from the paper: {tab.notes[scale]}")
        L.append("")
    if summary["max_seeds"] == 0:
        L.append("**No results yet.** Paper numbers:")
        L.append("")
        L.append("| arm | paper row | " + " | ".join(f"paper {METRIC_LABELS[m]}" for m in tab.metrics) + " |")
        L.append("|---|---|" + "---|" * len(tab.metrics))
        for a in summary["arms"]:
            L.append(f"| {a['label']} | {a['paper_row'] or '—'} | "
                     + " | ".join(_fmt(a["metrics"][m]["paper"]) for m in tab.metrics) + " |")
        L.append("")
        L.extend(_failures_markdown(tab, scale, summary, failures or {}))
        return L
    if summary["min_seeds"] < 3:
        L.append(f"**Fewer than 3 seeds:** some arms have fewer (the fewest: {summary['min_seeds']}); means, "
                 "std and standard errors are preliminary (std / SE need >= 2 seeds).")
        L.append("")
    L.append("| arm (paper row) | metric | paper | ours (mean ± std) | n | paper gain | our gain ± SE | "
             "gain > 2·SE |")
    L.append("|---|---|---|---|---|---|---|---|")
    for a in summary["arms"]:
        first = True
        for m in tab.metrics:
            s = a["metrics"][m]
            ours = _mean_std_cell(s["mean"], s["std"], s["n"])
            if a["is_baseline"]:
                gain, sig = "(baseline)", ""
            else:
                gain, sig, _ = _gain_cells(s)
            name = f"**{a['label']}** ({a['paper_row'] or '—'})" if first else ""
            if first and a.get("gain_over"):
                name += f"; gains over `{a['gain_over']}`"
            first = False
            pg = "" if a["is_baseline"] else _fmt(s["paper_gain"], signed=True)
            L.append(f"| {name} | {METRIC_LABELS[m]} | {_fmt(s['paper'])} | {ours} | {s['n']} | {pg} | {gain} | "
                     f"{sig} |")
    L.append("")
    L.append("Gains are our arm minus our baseline arm (or the arm its row names), averaged over the seeds both "
             "have (paired by seed), ± the standard error of that mean; \"gain > 2·SE\" says whether the mean "
             "gain exceeds twice its standard error. Paper gains are the paper's arm minus the paper's row of "
             "that same reference arm.")
    L.append("")
    L.extend(_failures_markdown(tab, scale, summary, failures or {}))
    if tab.plot_iou:
        p = plot_path(tab.key, scale, docs_dir)
        if os.path.isfile(p):
            rel = os.path.relpath(p, os.path.dirname(os.path.abspath(report_path)))
            L.append(f"![AP vs IoU threshold, Table {tab.key}]({rel})")
            L.append("")
    show_loss = any(a["train_loss"][2] for a in summary["arms"])
    loss_header = "final training loss (mean ± std, n) | " if show_loss else ""
    L.append("| arm | seeds | iterations | wall time per seed (min, mean ± std; train + eval) | "
             f"{loss_header}commit(s) | config hash | extra opts |")
    L.append("|---|---|---|---|" + ("---|" if show_loss else "") + "---|---|---|")
    for a in summary["arms"]:
        wall = _mean_std_cell(*a["wall_min"], len(a["seeds"]))
        if a["shared_runs"]:
            sources = sorted({src.rsplit("/", 1)[0] for src in a["shared_runs"].values()})
            wall += (f" (seed {', '.join(map(str, a['shared_runs']))}: the runs of {', '.join(sources)}, same "
                     "config, not retrained)")
        opts = "; ".join(f"`{o}`" for o in a["opts"] if o) or "none"
        differs = " (**differs between seeds**)" if len(a["config_hashes"]) > 1 else ""
        loss = ""
        if show_loss:
            n = a["train_loss"][2]
            loss = _mean_std_cell(*a["train_loss"], nd=3) + (f" ({n})" if n > 1 else "") + " | "
        L.append(f"| {a['label']} | {', '.join(map(str, a['seeds'])) or '—'} | "
                 f"{', '.join(map(str, a['max_iter'])) or '—'} | {wall} | {loss}{', '.join(a['commits']) or '—'} | "
                 f"{', '.join(a['config_hashes']) or '—'}{differs} | {opts} |")
    L.append("")
    L.append("Exact commands (one per arm, the lowest seed; the others differ only in SEED and OUTPUT_DIR):")
    L.append("")
    for a in summary["arms"]:
        cmds = [c for c in a["commands"].values() if c]
        if cmds:
            L.append(f"- `{cmds[0]}`")
    L.append("")
    return L


def _gain_cells(s):
    """(ours ± SE, > 2·SE, ours − paper) of one arm's metric entry of a summary."""
    if s is None or s["gain"] is None:
        return "—", "—", "—"
    ours = _fmt(s["gain"], signed=True) + (f" ± {s['gain_se']:.1f}" if s["gain_se"] is not None else "")
    sig = "—" if s["gain_gt_2se"] is None else ("yes" if s["gain_gt_2se"] else "no")
    return ours, sig, _fmt(None if s["paper_gain"] is None else s["gain"] - s["paper_gain"], signed=True)


def protocols_markdown(scale, usual, variants):
    """The gains of table `usual` (a summary) beside those of its arms under other protocols (`variants`:
    (table, summary) pairs): per non-baseline arm and metric, the paper's gain and, per protocol, ours ± SE,
    whether it exceeds 2 SE, and how far it is from the paper's."""
    protocols = [(usual["table"], USUAL_PROTOCOL[scale], usual)] + [(t.key, t.protocol, s) for t, s in variants]
    L = [f"### Table {usual['table']} under each training protocol ({scale} scale)", "",
         "The same arms, seeds and schedule under each protocol; each gain is measured against the reference arm "
         "of its row (paired by seed, ± SE), and \"− paper\" is our gain minus the paper's: how far each "
         "effect's size is from the paper's.", ""]
    head = " | ".join(f"{key} ({name}): gain ± SE | > 2·SE | − paper" for key, name, _ in protocols)
    L.append(f"| arm (gain over) | metric | paper gain | {head} |")
    L.append("|---|---|---|" + "---|---|---|" * len(protocols))
    entries = [{a["arm"]: a for a in s["arms"]} for _, _, s in protocols]
    for arm in usual["arms"]:
        if arm["is_baseline"]:
            continue
        reference = arm.get("gain_over") or usual["baseline"]
        for i, m in enumerate(usual["metrics"]):
            cells = []
            for e in entries:
                cells.extend(_gain_cells(e.get(arm["arm"], {}).get("metrics", {}).get(m)))
            name = f"**{arm['label']}** (`{reference}`)" if i == 0 else ""
            L.append(f"| {name} | {METRIC_LABELS[m]} | {_fmt(arm['metrics'][m]['paper_gain'], signed=True)} | "
                     + " | ".join(cells) + " |")
    L.append("")
    return L


# what protocol_levels_markdown shows per arm: (label, task, COCO metric)
_LEVELS = (("mask AP", "segm", "AP"), ("mask AP75", "segm", "AP75"), ("mask APl", "segm", "APl"),
           ("box AP", "bbox", "AP"))


def protocol_levels_markdown(scale, tables, results):
    """Each arm's own APs (mean ± std over its seeds) under each protocol: `tables` is the usual table then its
    protocol variants, `results` {table: {arm: {seed: record}}}. The gains above compare arms within a protocol;
    this compares a protocol with another on the same arm, mask and box AP side by side."""
    usual = tables[0]
    L = [f"### Table {usual.key}'s arms under each training protocol: their own APs ({scale} scale)", "",
         "Mean ± std over each arm's seeds (n = number of seeds); box AP beside mask AP shows where a protocol "
         "helps finding the objects but not their masks.", "",
         "| arm | metric | " + " | ".join(f"{t.key} ({t.protocol or USUAL_PROTOCOL[scale]})" for t in tables) + " |",
         "|---|---|" + "---|" * len(tables)]
    for arm in usual.arms_for(scale):
        for i, (label, task, metric) in enumerate(_LEVELS):
            cells = []
            for t in tables:
                values = [r["metrics"][task][metric] for r in results.get(t.key, {}).get(arm.name, {}).values()
                          if metric in r.get("metrics", {}).get(task, {})]
                mean = float(np.mean(values)) if values else None
                std = float(np.std(values, ddof=1)) if len(values) > 1 else None
                cells.append(_mean_std_cell(mean, std, len(values)) + (f" (n={len(values)})" if len(values) > 1
                                                                         else ""))
            L.append(f"| {f'**{arm.name}**' if i == 0 else ''} | {label} | " + " | ".join(cells) + " |")
    L.append("")
    return L


def write_report(results_root=RESULTS_ROOT, docs_dir=DOCS_DIR, configs_root=CONFIGS_ROOT, report_name="ablations.md",
                 summary_path=None, log=print, pretraining_dir=PRETRAINING_RESULTS):
    """Regenerate the markdown report, the json summary and the AP-vs-IoU plots from the stored results (and the
    pre-training logs in `pretraining_dir`)."""
    results = load_results(results_root)
    failures = load_failures(results_root)
    report_path = os.path.join(docs_dir, report_name)
    summary_path = summary_path or os.path.join(results_root, "summary.json")
    summaries = []
    L = [
        "# Mask R-CNN ablations (Table 2a–e, detection: Table 3, keypoints: Tables 4 and 5)",
        "",
        "<!-- GENERATED by ablations/report.py from results/ablations/**/seed*.json; do not edit by "
        "hand: rerun `python train_net.py --ablation report` (or any --ablation run) to rebuild. -->",
        "",
        f"Paper numbers: {PAPER_SOURCE}, transcribed in `ablations/tables/<table>.yaml`. All APs are COCO-style AP "
        "in percent (mask AP unless marked box or keypoint; keypoint AP is COCOeval's OKS-based AP, APM / APL "
        "its medium / large person areas), evaluated with pycocotools on the arm's test set; the AP-vs-IoU "
        "curves are recomputed from each arm's `coco_instances_results.json` with pycocotools' COCOeval precision "
        "array.",
        "",
        f"How to run: `python train_net.py --ablation <{'|'.join(TABLES)}|all> [--scale cpu|coco] "
        "[--seeds 0 1 2] [--eval-only] [config overrides]`. Each arm+seed trains in its own subprocess into "
        "`output/ablations/<scale>/<table>/<arm>/seed<s>/` (checkpoints, not committed) and writes "
        "`results/ablations/<scale>/<table>/<arm>/seed<s>.json`; arm+seeds with a results file are skipped (an "
        "arm whose config and seed equal another table's stored run shares that run instead of training), a "
        "killed arm resumes from its last checkpoint (checkpoints trained with another config -- the arm's yaml "
        "or dataset changed since -- are moved to `seed<s>.stale-<n>/` and the arm starts afresh), and "
        "`--eval-only` re-evaluates the existing "
        "`model_final.pth` checkpoints and rebuilds this report without training. COCO-scale instructions: "
        "[ablations_coco.md](ablations_coco.md).",
        "",
    ]
    for scale in SCALES:
        scale_tables = [t for t in TABLES.values() if scale in t.arms]
        have = results.get(scale, {})
        if scale != "cpu" and not have:
            continue
        L.append(f"## {scale.upper()} scale")
        L.append("")
        L.append(CPU_COMMON_NOTE if scale == "cpu" else COCO_COMMON_NOTE)
        L.append("")
        L.append(suite_time_line(scale, scale_tables, have))
        L.append("")
        by_key = {}
        for tab in scale_tables:
            s = by_key[tab.key] = summarize_table(tab, scale, have.get(tab.key, {}))
            summaries.append(s)
            if tab.plot_iou and s["max_seeds"] > 0:
                plot_ap_vs_iou(s, plot_path(tab.key, scale, docs_dir))
            L.extend(_table_markdown(tab, scale, s, docs_dir, configs_root, report_path,
                                     failures.get(scale, {}).get(tab.key, {})))
        for tab in scale_tables:  # a table trained under other protocols too: their gains side by side
            variants = [(t, by_key[t.key]) for t in scale_tables if t.protocol and t.paper_table == tab.key]
            if not tab.protocol and any(s["max_seeds"] for _, s in variants):
                L.extend(protocols_markdown(scale, by_key[tab.key], variants))
                L.extend(protocol_levels_markdown(scale, [tab] + [t for t, _ in variants], have))
        if any(t.protocol == "pretrained" for t in scale_tables):
            L.extend(pretrained_backbones_markdown(load_pretraining_records(pretraining_dir),
                                                   os.path.join(docs_dir, "images", "pretraining_loss.png"), docs_dir,
                                                   load_bn_shift(pretraining_dir)))
    unknown = sorted(f"{sc}/{t}" for sc, ts in results.items() for t in ts
                     if t not in TABLES or sc not in TABLES[t].arms)
    if unknown:
        L.append(f"Results of tables not defined in ablations/tables/ were ignored: {', '.join(unknown)}.")
        L.append("")
    os.makedirs(docs_dir, exist_ok=True)
    with atomic_open(report_path, "w") as f:
        f.write("\n".join(L).rstrip() + "\n")
    write_json_atomic(summary_path, {"generated_by": "ablations/report.py", "paper_source": PAPER_SOURCE,
                                     "iou_thresholds": list(IOU_THRESHOLDS), "tables": summaries})
    log(f"report: {repo_relpath(report_path)}; summary: {repo_relpath(summary_path)}")
    return report_path

