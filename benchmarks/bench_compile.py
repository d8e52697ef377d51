"""What torch.compile and channels-last buy on this CPU, with the cost of compiling (issue #27).

    .venv/bin/python benchmarks/bench_compile.py            # ~5 min; writes benchmarks/results/compile.{json,md}
    .venv/bin/python benchmarks/bench_compile.py --quick    # smoke run (small sizes), prints only

Run it on an otherwise idle machine (the load average is recorded). In one run, `--threads` torch threads, with
a fresh, empty inductor cache (so the compile times are cold, as on a user's first run):

1. Training: the main job's step (`configs/shapes/mask_rcnn_R18_FPN_shapes.yaml`, forward + backward + SGD step
   on bench_end_to_end.py's generated batches, no data loading) for four variants of the same model, same
   weights, batches and RoI samples, timed round-robin: eager (the default), channels-last
   (`SOLVER.CHANNELS_LAST`), the backbone compiled (`model.backbone.compile()`, inductor's defaults), and both.
   The first step of a compiled variant includes the compile; its cost is that step minus the eager median,
   and "break-even" is how many steps repay it. The first step's losses are compared with eager's.
2. Inference: the R-50-FPN backbone (ResNet-50 + FPN, 800 x 1088) as `train_net.py --eval-only` runs it (BN
   folded, channels-last; `maskrcnn_plugin.inference.prepare_for_inference`), eager and compiled, timed
   round-robin, with the largest relative difference of the features.
"""
import argparse
import copy
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_end_to_end as e2e  # noqa: E402
from bench_roofline import build_r50, write_results  # noqa: E402

from maskrcnn_plugin.config import get_plugin_cfg  # noqa: E402
from maskrcnn_plugin.inference import prepare_for_inference, to_channels_last  # noqa: E402



def training(quick, steps, log):
    s = {"train_size": 128 if quick else 256, "seed": 0}
    cfg, _ = e2e.train_configs(s)
    torch.manual_seed(s["seed"])
    base = e2e.build_model(cfg)
    batch = 2 if quick else cfg.SOLVER.IMS_PER_BATCH
    batches = e2e.make_train_batches(4, batch, s["train_size"], s["seed"] + 1)
    variants = {}
    for name, channels_last, compiled in (("eager", False, False), ("channels-last", True, False),
                                          ("backbone compiled", False, True),
                                          ("backbone compiled + channels-last", True, True)):
        model = copy.deepcopy(base).train()
        if channels_last:
            to_channels_last(model)
        if compiled:
            model.backbone.compile()
        variants[name] = (model, e2e._optimizer(cfg, model))
    first, times, losses = {}, {k: [] for k in variants}, {}
    for it in range(steps + 1):
        for name, (model, opt) in variants.items():
            t, loss = e2e._train_iteration(model, opt, batches[it % len(batches)], s["seed"] + it)
            if it == 0:
                first[name], losses[name] = t["iteration"], loss
            else:
                times[name].append(t["iteration"])
        log(f"training step {it + 1}/{steps + 1}: " + ", ".join(f"{k} {v[-1] if v else first[k]:.2f} s"
                                                                for k, v in times.items()))
    eager = statistics.median(times["eager"])
    out = {"config": e2e.TRAIN_CFG, "batch": batch, "image_size": s["train_size"], "variants": {}}
    for name in variants:
        med = statistics.median(times[name])
        diff = {k: abs(losses[name][k] - losses["eager"][k]) / max(abs(losses["eager"][k]), 1e-12)
                for k in losses["eager"]}
        compile_s = first[name] - first["eager"] if "compiled" in name else 0.0
        saving = eager - med
        out["variants"][name] = {
            "s_per_step": med, "steps_s": times[name], "first_step_s": first[name], "ratio_to_eager": med / eager,
            "compile_s": compile_s, "break_even_steps": compile_s / saving if compile_s and saving > 0 else None,
            "first_step_loss_rel_diff": diff}
    return out


def inference(quick, repeats, log):
    cfg_size = (416, 544) if quick else (800, 1088)
    model = build_r50()
    eager = prepare_for_inference(model, get_plugin_cfg()).backbone  # the --eval-only defaults
    compiled = copy.deepcopy(eager)
    compiled.compile()
    x = torch.randn(1, 3, *cfg_size, generator=torch.Generator().manual_seed(0))
    times = {"eager": [], "compiled": []}
    with torch.no_grad():
        t0 = time.perf_counter()
        ref = eager(x)
        eager_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = compiled(x)
        compiled_first = time.perf_counter() - t0
        diff = max(((out[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-12)).item() for k in ref)
        for r in range(repeats):
            for name, m in (("eager", eager), ("compiled", compiled)):
                t0 = time.perf_counter()
                m(x)
                times[name].append(time.perf_counter() - t0)
            log(f"inference repeat {r + 1}/{repeats}: eager {times['eager'][-1]:.2f} s, compiled {times['compiled'][-1]:.2f} s")
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    compile_s = compiled_first - eager_first
    return {"input": list(cfg_size), "eager_s": e, "compiled_s": c, "ratio": c / e, "compile_s": compile_s,
            "break_even_calls": compile_s / (e - c) if e > c else None, "max_rel_diff": diff, "samples_s": times}


def markdown(res):
    tr, inf = res["training"], res["inference"]
    lines = [
        f"Command: `{res['command']}`; {res['date']}; {res['cpus']} logical CPUs, torch {res['torch']}, torch threads "
        f"{res['threads']}; inductor cache: fresh (cold compiles); load average before / after: "
        f"{res['load_before']} / {res['load_after']}.",
        "",
        f"Training step of `{tr['config']}` (batch {tr['batch']} x {tr['image_size']} px, no data loading), median of "
        f"{len(tr['variants']['eager']['steps_s'])} steps after the first, variants timed round-robin:",
        "",
        "| variant | s / step | ratio to eager | first step, s | compile, s | break-even, steps | first-step losses, "
        "largest relative difference to eager |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in tr["variants"].items():
        be = "-" if not v["compile_s"] else ("never" if v["break_even_steps"] is None else f"{v['break_even_steps']:.0f}")
        worst = max(v["first_step_loss_rel_diff"].items(), key=lambda kv: kv[1])
        lines.append(f"| {name} | {v['s_per_step']:.3f} | {v['ratio_to_eager']:.2f}x | {v['first_step_s']:.1f} | "
                     f"{v['compile_s']:.1f} | {be} | {worst[1]:.1e} ({worst[0]}) |")
    be = "never" if inf["break_even_calls"] is None else f"{inf['break_even_calls']:.0f} calls"
    lines += [
        "",
        f"Inference, R-50-FPN backbone prepared as `--eval-only` runs it (BN folded, channels-last), input "
        f"{inf['input'][0]} x {inf['input'][1]}, median of {len(inf['samples_s']['eager'])} round-robin calls:",
        "",
        "| | eager | compiled | ratio | compile, s | break-even |",
        "|---|---|---|---|---|---|",
        f"| s / call | {inf['eager_s']:.3f} | {inf['compiled_s']:.3f} | {inf['ratio']:.2f}x | {inf['compile_s']:.1f} | {be} |",
        "",
        f"Compiled vs eager features: largest relative difference {inf['max_rel_diff']:.1e}.",
    ]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, few steps; prints only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, help="timed training steps per variant (default 8; quick 1)")
    ap.add_argument("--repeats", type=int, help="timed inference calls per variant (default 5; quick 1)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.steps or (1 if args.quick else 8)
    repeats = args.repeats or (1 if args.quick else 5)
    t_start = time.time()

    def log(msg):
        print(f"[{time.time() - t_start:5.0f} s] {msg}", file=sys.stderr, flush=True)

    res = {"command": "python benchmarks/bench_compile.py " + " ".join(sys.argv[1:]),
           "date": datetime.datetime.now().strftime("%Y-%m-%dT%H:%M"), "cpus": os.cpu_count(),
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "load_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # cold compiles, as on a first run
        res["training"] = training(args.quick, steps, log)
        res["inference"] = inference(args.quick, repeats, log)
    res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    md = markdown(res)
    print(md)
    if not (args.quick or args.no_write):
        write_results("compile", res, md)


if __name__ == "__main__":
    main()
