"""Where the main job's training step spends its time, against this machine's attainable rate (issue #27).

    .venv/bin/python benchmarks/bench_train_profile.py          # ~2 min; writes benchmarks/results/train_profile.{json,md}
    .venv/bin/python benchmarks/bench_train_profile.py --quick  # smoke run (small batch), prints only

Run it on an otherwise idle machine (the load average is recorded). In one run, with `--threads` torch threads:
the attainable float32 rate (bench_roofline.attainable), then `--steps` training steps of the plugin model of
`configs/shapes/mask_rcnn_R18_FPN_shapes.yaml` (forward + backward + SGD step on bench_end_to_end.py's generated
batches, no data loading) after two warm-up steps, under torch's profiler (self time per operator, grouped into
kinds) and one more under FlopCounterMode (FLOPs of the convolutions and matmuls, forward and backward). Each
FLOP-bearing kind is reported with its achieved rate and fraction of the attainable one; the rest of the step is
work with no FLOPs in the count (BN, elementwise, RoI pooling, losses, sampling, the optimizer).
"""
import argparse
import collections
import datetime
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_end_to_end as e2e  # noqa: E402
from bench_roofline import attainable, write_results  # noqa: E402

# profiler operator name -> kind; the first matching substring wins, the rest is "other"
KINDS = (("convolution_backward", "convolution backward"), ("convolution", "convolution forward"),
         ("batch_norm", "batch norm (forward and backward)"), ("addmm", "matmul (linear layers)"),
         ("aten::mm", "matmul (linear layers)"), ("aten::bmm", "matmul (linear layers)"),
         ("roi_", "RoI pooling (forward and backward)"), ("_foreach", "optimizer step"),
         ("sgd", "optimizer step"), ("max_pool", "max pool"), ("nms", "NMS"), ("sort", "sort / top-k"),
         ("topk", "sort / top-k"))
# FlopCounterMode's aten op -> the same kinds
FLOP_KINDS = {"convolution": "convolution forward", "convolution_backward": "convolution backward",
              "addmm": "matmul (linear layers)", "mm": "matmul (linear layers)", "bmm": "matmul (linear layers)"}


def kind_of(name):
    return next((k for sub, k in KINDS if sub in name), "other")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="profiled steps (after 2 warm-up steps)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    load_before = [round(x, 2) for x in os.getloadavg()]
    rate = attainable(args.quick, repeats=3)
    best = max(v["gflops"] for v in rate.values())
    s = {"train_size": 128 if args.quick else 256, "seed": 0}
    cfg, _ = e2e.train_configs(s)
    torch.manual_seed(0)
    model = e2e.build_model(cfg).train()
    opt = e2e._optimizer(cfg, model)
    batch = 2 if args.quick else cfg.SOLVER.IMS_PER_BATCH
    batches = e2e.make_train_batches(2, batch, s["train_size"], 1)
    for it in range(2):
        e2e._train_iteration(model, opt, batches[it % 2], it)
    walls = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for it in range(args.steps):
            t0 = time.perf_counter()
            e2e._train_iteration(model, opt, batches[it % 2], 2 + it)
            walls.append(time.perf_counter() - t0)
    ms = collections.Counter()
    for ev in prof.key_averages():
        ms[kind_of(ev.key)] += ev.self_cpu_time_total / 1e3 / args.steps
    counter = FlopCounterMode(display=False)
    with counter:
        e2e._train_iteration(model, opt, batches[0], 2)
    gflop = collections.Counter()
    for op, n in counter.get_flop_counts()["Global"].items():
        gflop[FLOP_KINDS.get(str(op).split(".")[-1], "other (counted)")] += n / 1e9
    step_ms = 1e3 * sum(walls) / len(walls)
    res = {"command": "python benchmarks/bench_train_profile.py " + " ".join(sys.argv[1:]),
           "date": datetime.datetime.now().strftime("%Y-%m-%dT%H:%M"), "cpus": os.cpu_count(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "config": e2e.TRAIN_CFG,
           "batch": batch, "image_size": s["train_size"], "attainable": rate, "attainable_gflops": best,
           "step_ms": step_ms, "ms_per_step": dict(ms), "gflop_per_step": dict(gflop),
           "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()]}
    md = markdown(res)
    print(md)
    if not (args.quick or args.no_write):
        write_results("train_profile", res, md)


def markdown(res):
    best, ms, gf = res["attainable_gflops"], res["ms_per_step"], res["gflop_per_step"]
    total_self = sum(ms.values())
    rates = ", ".join(f"{k} {v['gflops']:.0f}" for k, v in res["attainable"].items())
    lines = [
        f"Command: `{res['command']}`; {res['date']}; {res['cpus']} logical CPUs, torch {res['torch']}, torch threads "
        f"{res['threads']}; load average before / after: {res['load_before']} / {res['load_after']}.",
        "",
        f"Training step of `{res['config']}` (plugin model, batch {res['batch']} x {res['image_size']} px, no data "
        f"loading): {res['step_ms']:.0f} ms wall per step under the profiler. Attainable: {best:.0f} GFLOP/s (the "
        f"better of {rates}).",
        "",
        "| kind | ms / step | share of the profiled time | GFLOP / step | GFLOP/s | fraction of attainable |",
        "|---|---|---|---|---|---|",
    ]
    for kind, t in sorted(ms.items(), key=lambda kv: -kv[1]):
        g = gf.get(kind)
        flop_cells = (f"{g:.1f} | {g / (t / 1e3):.0f} | {100 * g / (t / 1e3) / best:.0f}%" if g else "- | - | -")
        lines.append(f"| {kind} | {t:.0f} | {100 * t / total_self:.0f}% | {flop_cells} |")
    counted = sum(gf.values())
    lines += [
        f"| all | {total_self:.0f} | 100% | {counted:.1f} | {counted / (total_self / 1e3):.0f} | "
        f"{100 * counted / (total_self / 1e3) / best:.0f}% |",
        "",
        f"The step's counted arithmetic at the attainable rate would take {1e3 * counted / best:.0f} ms: "
        f"{100 * counted / best / (res['step_ms'] / 1e3):.0f}% of the step's wall time. Kinds without FLOPs in the "
        "count are memory-bound or bookkeeping work that a faster kernel for the convolutions would not touch.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
