#!/usr/bin/env python
"""The README's main job, measured: train + evaluate the default CPU-scale model and record time and AP.

    python tools/main_job.py                      # seed 0: train_net.py on the default config, timed
    python tools/main_job.py --seeds 0 1 2        # several seeds (skips seeds already recorded)
    python tools/main_job.py --report             # only regenerate the README table from the stored results

Each run is ``train_net.py --config-file configs/shapes/mask_rcnn_R18_FPN_shapes.yaml SEED <s> OUTPUT_DIR
output/main_job/seed<s>`` in a subprocess (dataset generation on first use included in its wall time). Its
metrics (eval_results.json), wall time, CPU, torch threads, commit and command go to
``results/main_job/seed<s>.json``; the table between ``<!-- BEGIN main_job -->`` and ``<!-- END main_job -->`` in
README.md is regenerated from all stored results (never edit it by hand).
"""
import argparse
import datetime
import glob
import json
import os
import platform
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ablations.paths import TRAIN_NET  # noqa: E402
from ablations.records import (display_command, git_commit, load_arm_cfg, torch_threads,  # noqa: E402
                               write_json_atomic)
from ablations.runner import run_command  # noqa: E402
from tools.markdown_blocks import write_marked_block  # noqa: E402

DEFAULT_CONFIG = "configs/shapes/mask_rcnn_R18_FPN_shapes.yaml"
RESULTS_DIR = os.path.join(REPO, "results", "main_job")
OUTPUT_ROOT = os.path.join(REPO, "output", "main_job")
README = os.path.join(REPO, "README.md")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_seed(seed, config=DEFAULT_CONFIG):
    out_dir = os.path.join(OUTPUT_ROOT, f"seed{seed}")
    res_file = os.path.join(RESULTS_DIR, f"seed{seed}.json")
    if os.path.isfile(res_file):
        print(f"seed {seed}: recorded already ({os.path.relpath(res_file, REPO)}), skipped")
        return
    run_opts = ["SEED", str(seed), "OUTPUT_DIR", out_dir]
    argv = [sys.executable, TRAIN_NET, "--config-file", os.path.join(REPO, config), *run_opts]
    log_path = os.path.join(out_dir, "main_job.log")
    print(f"seed {seed}: {display_command(argv)} (log: {os.path.relpath(log_path, REPO)})")
    start = time.time()
    rc = run_command(argv, log_path)
    wall = time.time() - start
    if rc != 0:
        raise SystemExit(f"seed {seed}: train_net.py failed (exit {rc}) after {wall / 60:.1f} min; see {log_path}")
    with open(os.path.join(out_dir, "eval_results.json")) as f:
        metrics = json.load(f)
    cfg = load_arm_cfg(os.path.join(REPO, config), run_opts)
    commit, dirty = git_commit()
    record = {
        "seed": seed, "config": config, "max_iter": int(cfg.SOLVER.MAX_ITER),
        "metrics": metrics, "wall_s": wall, "command": display_command(argv),
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch_threads(),
        "commit": commit, "dirty": dirty, "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    write_json_atomic(res_file, record)
    print(f"seed {seed}: {wall / 60:.1f} min, box AP {metrics['bbox']['AP']:.1f}, mask AP {metrics['segm']['AP']:.1f}")


def _mean_std(xs):
    xs = np.asarray(xs, dtype=np.float64)
    return xs.mean(), (xs.std(ddof=1) if len(xs) > 1 else float("nan"))


def _fmt(xs, unit=""):
    m, s = _mean_std(xs)
    return f"{m:.1f}{unit}" if len(xs) == 1 else f"{m:.1f} ± {s:.1f}{unit}"


def report_markdown(records):
    if not records:
        return "No main-job run recorded yet: run `python tools/main_job.py`."
    groups = {}
    for r in records:
        groups.setdefault((r["config"], r["max_iter"]), []).append(r)
    lines = [
        "| config | iterations | seeds | wall time, min | box AP | box AP50 | mask AP | mask AP50 | mask AP75 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (config, _), rs in sorted(groups.items()):
        col = lambda task, k: _fmt([r["metrics"][task][k] for r in rs])  # noqa: E731
        lines.append(
            f"| `{config}` | {rs[0]['max_iter']} | {', '.join(str(r['seed']) for r in rs)} | "
            f"{_fmt([r['wall_s'] / 60 for r in rs])} | {col('bbox', 'AP')} | {col('bbox', 'AP50')} | "
            f"{col('segm', 'AP')} | {col('segm', 'AP50')} | {col('segm', 'AP75')} |"
        )
    cpus = sorted({f"{r['cpu']} ({r['cpu_count']} cores, {r['torch_threads']} torch threads)" for r in records})
    commits = sorted({(r["commit"] or "?")[:10] + ("+dirty" if r.get("dirty") else "") for r in records})
    lines += [
        "",
        f"Mean ± std over seeds; wall time = the whole `train_net.py` process (dataset generation on first use, "
        f"training, evaluation). Machine: {'; '.join(cpus)}. Commit(s): {', '.join(commits)}. "
        f"Generated by `python tools/main_job.py` from `results/main_job/*.json`.",
    ]
    return "\n".join(lines)


def write_readme(records, readme=README):
    write_marked_block(readme, "main_job", report_markdown(records))


def load_records():
    out = []
    for p in sorted(glob.glob(os.path.join(RESULTS_DIR, "seed*.json"))):
        with open(p) as f:
            out.append(json.load(f))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--report", action="store_true", help="only regenerate the README table")
    args = ap.parse_args(argv)
    if not args.report:
        for seed in args.seeds:
            run_seed(seed)
    write_readme(load_records())
    print(report_markdown(load_records()))


if __name__ == "__main__":
    main()
