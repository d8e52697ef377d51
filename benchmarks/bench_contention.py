"""Training speed of the main job when another process competes for the CPU (issue #27, "Contention").

Runs the training step of configs/shapes/mask_rcnn_R18_FPN_shapes.yaml (train_net.py's Trainer, real data
loader) in a fresh process per setting, first alone and then beside one co-runner that keeps one core busy (a
Python busy loop at the same priority), and reports the median seconds per iteration and the slowdown. A
machine with 2 cores that loses one to another job should train at most ~2x slower; the settings show which
thread / OpenMP / data-loader defaults keep it there. Each setting starts from an environment without OpenMP's
variables: "default" is torch's own behaviour, "train_net.py's defaults" what `python train_net.py` sets before
torch loads (its OPENMP_DEFAULTS). `--rounds N` repeats all settings N times, interleaved.

    .venv/bin/python benchmarks/bench_contention.py                     # all settings, writes the outputs
    .venv/bin/python benchmarks/bench_contention.py --iters 4 --no-write  # a quick look

Outputs: benchmarks/results/<--out-name, default contention>.json and .md. Run it alone: anything else running is a co-runner too.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

TRAIN_NET = "train_net.py's defaults"
OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CONFIG = os.path.join(REPO, "configs", "shapes", "mask_rcnn_R18_FPN_shapes.yaml")
RESULTS = os.path.join(REPO, "benchmarks", "results")

# name -> (environment additions, torch threads or None for torch's default, DATALOADER.NUM_WORKERS or None).
# Every setting starts from an environment without OpenMP's variables; "default" is torch's and libgomp's own.
SETTINGS = {
    "default": ({}, None, None),
    # what `python train_net.py` does: it sets its OpenMP defaults (train_net.OPENMP_DEFAULTS) before torch loads
    TRAIN_NET: ({}, None, None),
    "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, None, None),
    "GOMP_SPINCOUNT=30000": ({"GOMP_SPINCOUNT": "30000"}, None, None),
    "GOMP_SPINCOUNT=10000": ({"GOMP_SPINCOUNT": "10000"}, None, None),
    "GOMP_SPINCOUNT=3000": ({"GOMP_SPINCOUNT": "3000"}, None, None),
    "GOMP_SPINCOUNT=1000": ({"GOMP_SPINCOUNT": "1000"}, None, None),
    "GOMP_SPINCOUNT=100": ({"GOMP_SPINCOUNT": "100"}, None, None),
    "GOMP_SPINCOUNT=0": ({"GOMP_SPINCOUNT": "0"}, None, None),
    "1 torch thread": ({}, 1, None),
    "data loader in the main process (0 workers)": ({}, None, 0),
}


def worker(args):
    """One measurement, in its own process: build the trainer, run warm-up steps, time `iters` steps."""
    sys.path.insert(0, REPO)
    if args.train_net_first:
        import train_net  # noqa: F401  (before torch, as `python train_net.py` runs)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import train_net  # noqa: F811  (already imported above when --train-net-first)
    from detectron2.utils.events import EventStorage

    opts = ["SOLVER.MAX_ITER", "100000", "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", args.output]
    if args.workers is not None:
        opts += ["DATALOADER.NUM_WORKERS", str(args.workers)]
    if args.weights:
        opts += ["MODEL.WEIGHTS", args.weights]
    cfg = train_net.load_cfg(argparse.Namespace(config_file=CONFIG, opts=opts, resume=False, eval_only=False))
    trainer = train_net.Trainer(cfg)
    if args.weights:
        trainer.resume_or_load(resume=False)  # the model's weights only: a late step's work, fresh momentum
    times = []
    with EventStorage(0) as trainer.storage:
        for i in range(args.warmup + args.iters):
            trainer.iter = i
            t0 = time.perf_counter()
            trainer.run_step()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    print("RESULT " + json.dumps({"times": times, "torch_threads": torch.get_num_threads()}))


def measure(name, iters, warmup, co_runners, weights=None):
    env_add, threads, workers = SETTINGS[name]
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_VARIABLES}
    env.update(env_add)
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--output", out, "--iters", str(iters),
               "--warmup", str(warmup)]
        if threads:
            cmd += ["--threads", str(threads)]
        if workers is not None:
            cmd += ["--workers", str(workers)]
        if name == TRAIN_NET:
            cmd.append("--train-net-first")
        if weights:
            cmd += ["--weights", os.path.abspath(weights)]
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(co_runners)]
        load = os.getloadavg()[0]
        try:
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=3600)
        finally:
            for p in busy:
                p.kill()
                p.wait()
    line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
    if res.returncode or line is None:
        raise RuntimeError(f"{name}: the worker failed (rc {res.returncode}):\n{res.stderr[-3000:]}")
    out = json.loads(line[len("RESULT "):])
    return {"median_s": statistics.median(out["times"]), "times": out["times"], "load_1min_before": load,
            "torch_threads": out["torch_threads"]}


def summarise(measurements):
    """One setting's rounds: the median of the per-round medians, the per-round medians, the first load."""
    medians = [m["median_s"] for m in measurements]
    return {"median_s": statistics.median(medians), "round_medians_s": medians,
            "load_1min_before": measurements[0]["load_1min_before"],
            "torch_threads": measurements[0]["torch_threads"]}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def markdown(result):
    lines = [
        f"Generated by `{result['command']}` on {result['cpu']} ({result['cpu_count']} cores), torch "
        f"{result['torch']}; median s/iter of the main job's training step over {result['iters']} steps after "
        f"{result['warmup']} warm-up steps; co-runners: {result.get('co_runners', 1)} Python busy loop(s) at the same "
        "priority. The load average lags: it is a trailing mean, so a value before a run also shows the runs before.",
        "",
        "| setting | torch threads | alone, s/iter | with co-runner(s), s/iter | slowdown | load (1 min) before: alone / beside |",
        "|---|---|---|---|---|---|",
    ]
    if result.get("weights"):
        lines[0] += (f" The model starts from `{os.path.relpath(result['weights'], REPO)}` (a trained model's steps: more "
                     "foreground RoIs reach the mask branch than in a fresh model's).")
    rounds = result.get("rounds", 1)
    if rounds > 1:
        lines[0] += (f" {rounds} rounds, the settings interleaved; each cell is the median of the rounds' medians, "
                     "with the rounds' own values in brackets; the load is the first round's.")
    for name, r in result["settings"].items():
        a, c = r["alone"], r["co_runner"]

        def cell(m):
            own = m.get("round_medians_s", [])
            return f"{m['median_s']:.2f}" + (" (" + ", ".join(f"{x:.2f}" for x in own) + ")" if len(own) > 1 else "")
        slow = r.get("slowdowns", [])
        slow_cell = f"{c['median_s'] / a['median_s']:.1f}x" + (
            " (" + ", ".join(f"{x:.1f}x" for x in slow) + ")" if len(slow) > 1 else "")
        lines.append(f"| {name} | {a['torch_threads']} | {cell(a)} | {cell(c)} | {slow_cell} | "
                     f"{a['load_1min_before']:.2f} / {c['load_1min_before']:.2f} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--co-runners", type=int, default=1, help="busy processes beside the measured training")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every setting this many times, interleaved")
    ap.add_argument("--weights", help="start from this checkpoint (e.g. a main-job run's model_0000399.pth): the "
                    "steps of a trained model pool more foreground RoIs in the mask branch than a fresh one's")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--report", action="store_true", help="only rewrite <out-name>.md from its stored .json")
    ap.add_argument("--out-name", default="contention", help="benchmarks/results/<name>.json / .md")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--train-net-first", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.report:
        with open(os.path.join(RESULTS, f"{args.out_name}.json")) as f:
            result = json.load(f)
        with open(os.path.join(RESULTS, f"{args.out_name}.md"), "w") as f:
            f.write(markdown(result))
        return
    import torch

    result = {"command": "python benchmarks/bench_contention.py " + " ".join(sys.argv[1:]), "iters": args.iters,
              "weights": args.weights,
              "warmup": args.warmup, "co_runners": args.co_runners, "cpu": cpu_name(),
              "cpu_count": os.cpu_count(), "torch": torch.__version__, "settings": {}}
    rounds = {name: [] for name in args.settings}
    # Rounds interleave the settings, so a slow phase of the VM hits all of them rather than one.
    for r in range(args.rounds):
        for name in args.settings:
            alone = measure(name, args.iters, args.warmup, co_runners=0, weights=args.weights)
            beside = measure(name, args.iters, args.warmup, co_runners=args.co_runners, weights=args.weights)
            rounds[name].append({"alone": alone, "co_runner": beside})
            print(f"round {r + 1}/{args.rounds} {name}: alone {alone['median_s']:.2f} s/iter, with co-runner "
                  f"{beside['median_s']:.2f} s/iter ({beside['median_s'] / alone['median_s']:.1f}x)", flush=True)
    result["rounds"] = args.rounds
    for name, rs in rounds.items():
        result["settings"][name] = {
            "alone": summarise([x["alone"] for x in rs]), "co_runner": summarise([x["co_runner"] for x in rs]),
            "slowdowns": [x["co_runner"]["median_s"] / x["alone"]["median_s"] for x in rs], "rounds": rs}
    md = markdown(result)
    print(md)
    if not args.no_write:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, f"{args.out_name}.json"), "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(RESULTS, f"{args.out_name}.md"), "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
