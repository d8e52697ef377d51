"""CPU benchmark: maskrcnn_plugin RoIAlign / RoIWarp / RoIPool vs torchvision, 1 and 2 threads.

    .venv/bin/python benchmarks/bench_roi_ops.py [--repeats 3] [--no-write] [--quick]

For every workload it times forward and forward+backward (median of --repeats runs after one warm-up),
ours (C++ backend) and torchvision side by side in the same process, and prints the speed-up ratio
torchvision / ours and the max relative difference of the outputs. Peak memory is measured separately in
fresh subprocesses (peak RSS from /proc/self/status VmHWM, reset before the op) for the reference workload.
The result table is written into docs/roi_ops.md between the BENCH markers (unless --no-write).

Comparisons: roi_align avg <-> torchvision.ops.roi_align (same numbers); roi_pool <-> torchvision.ops.roi_pool
(identical); roi_warp avg <-> torchvision.ops.roi_align on RoIPool's snapped boxes (same numbers);
roi_align max has no torchvision counterpart, its time is compared with torchvision's roi_align (avg).
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MASKRCNN_PLUGIN_ROI_BACKEND", "cpp")

from maskrcnn_plugin.layers import roi_align, roi_pool, roi_warp  # noqa: E402
from maskrcnn_plugin.layers import _ext  # noqa: E402
from maskrcnn_plugin.layers.roi_ops import _c_round  # noqa: E402

# name, (N, C, H, W), stride, K, output, box size range in image px, ops
WORKLOADS = [
    ("ref: 2x256x100x136, 512 RoIs, 14x14", (2, 256, 100, 136), 8, 512, 14, (16, 400), ("align_avg", "align_max", "warp_avg", "pool")),
    ("FPN P2 (stride 4, 200x272), 512 RoIs, 7x7", (2, 256, 200, 272), 4, 512, 7, (16, 112), ("align_avg", "align_max", "pool")),
    ("FPN P3 (stride 8, 100x136), 512 RoIs, 7x7", (2, 256, 100, 136), 8, 512, 7, (112, 224), ("align_avg", "pool")),
    ("FPN P4 (stride 16, 50x68), 512 RoIs, 7x7", (2, 256, 50, 68), 16, 512, 7, (224, 448), ("align_avg", "pool")),
    ("FPN P5 (stride 32, 25x34), 512 RoIs, 7x7", (2, 256, 25, 34), 32, 512, 7, (448, 800), ("align_avg", "pool")),
    ("FPN P3 (stride 8), 1000 RoIs, 14x14 (mask head)", (2, 256, 100, 136), 8, 1000, 14, (112, 224), ("align_avg",)),
    ("C5 (stride 32, 2048 ch, 25x34), 512 RoIs, 7x7", (2, 2048, 25, 34), 32, 512, 7, (32, 800), ("align_avg", "pool")),
]
SAMPLING, ALIGNED = 2, True


def make_inputs(shape, stride, k, size_range, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(shape, generator=g)
    img_w, img_h = w * stride, h * stride
    lo, hi = size_range
    wh = lo + torch.rand(k, 2, generator=g) * (hi - lo)
    xy = torch.rand(k, 2, generator=g) * (torch.tensor([img_w, img_h]) - wh).clamp(min=1)
    rois = torch.cat([torch.randint(0, n, (k, 1), generator=g).float(), xy, xy + wh], 1)
    return x, rois


def snapped(rois, scale):
    q = _c_round(rois[:, 1:] * scale)
    x1, y1, x2, y2 = q.unbind(1)
    w = (x2 - x1 + 1).clamp(min=1)
    h = (y2 - y1 + 1).clamp(min=1)
    return torch.stack([rois[:, 0], x1, y1, x1 + w, y1 + h], 1)


def op_pair(op, rois, scale, out):
    """(ours, theirs, comparable): callables x -> Tensor."""
    if op == "align_avg":
        return (lambda x: roi_align(x, rois, out, scale, SAMPLING, "avg", ALIGNED),
                lambda x: torchvision.ops.roi_align(x, rois, out, scale, SAMPLING, ALIGNED), True)
    if op == "align_max":
        return (lambda x: roi_align(x, rois, out, scale, SAMPLING, "max", ALIGNED),
                lambda x: torchvision.ops.roi_align(x, rois, out, scale, SAMPLING, ALIGNED), False)
    if op == "warp_avg":
        sn = snapped(rois, scale)
        return (lambda x: roi_warp(x, rois, out, scale, SAMPLING, "avg", True),
                lambda x: torchvision.ops.roi_align(x, sn, out, 1.0, SAMPLING, True), True)
    if op == "pool":
        return (lambda x: roi_pool(x, rois, out, scale), lambda x: torchvision.ops.roi_pool(x, rois, out, scale), True)
    raise ValueError(op)


def timeit(fn, x, backward, repeats):
    ts = []
    for i in range(repeats + 1):
        xx = x.detach().requires_grad_(backward)
        t0 = time.perf_counter()
        y = fn(xx)
        if backward:
            y.backward(torch.ones_like(y))
        dt = time.perf_counter() - t0
        if i:
            ts.append(dt)
        del y, xx
    return statistics.median(ts)


def rel_diff(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


def machine():
    model = platform.processor() or "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs; torch {torch.__version__}, torchvision {torchvision.__version__}"


def mem_child(op, impl, threads):
    """Runs in a subprocess: peak RSS increase (MiB) of one forward+backward of the reference workload."""
    torch.set_num_threads(threads)
    name, shape, stride, k, out, size_range, _ = WORKLOADS[0]
    x, rois = make_inputs(shape, stride, k, size_range)
    ours, theirs, _ = op_pair(op, rois, 1.0 / stride, out)
    fn = ours if impl == "ours" else theirs
    small = x[:, :, :8, :8].contiguous()
    fn(small.requires_grad_(True)).sum().backward()  # load kernels / extension before measuring
    xx = x.requires_grad_(True)
    before = _reset_peak_rss_kib()
    y = fn(xx)
    y.backward(torch.ones_like(y))
    after = _peak_rss_kib()
    print(json.dumps({"peak_mib": (after - before) / 1024.0}))


def _peak_rss_kib():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak_rss_kib():
    """Reset the peak-RSS mark to the current RSS (Linux: clear_refs 5); ru_maxrss alone would carry the
    parent's peak over fork/exec. Returns the new baseline in KiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _peak_rss_kib()


def measure_memory(threads=2):
    rows = []
    for op in WORKLOADS[0][6]:
        r = {}
        for impl in ("ours", "torchvision"):
            p = subprocess.run([sys.executable, __file__, "--mem-child", op, impl, str(threads)],
                               capture_output=True, text=True, cwd=ROOT)
            try:
                r[impl] = json.loads(p.stdout.strip().splitlines()[-1])["peak_mib"]
            except (IndexError, ValueError, KeyError):
                r[impl] = float("nan")
        rows.append((op, r["ours"], r["torchvision"]))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--quick", action="store_true", help="reference workload only")
    ap.add_argument("--mem-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mem_child:
        mem_child(args.mem_child[0], args.mem_child[1], int(args.mem_child[2]))
        return
    assert _ext.load_extension() is not None, "the C++ extension is needed for the benchmark"
    t_start = time.time()
    lines = []
    header = "| workload | op | threads | fwd ours (s) | fwd tv (s) | fwd ratio | fwd+bwd ours (s) | fwd+bwd tv (s) | fwd+bwd ratio | max rel diff |"
    lines += [header, "|" + "---|" * 10]
    print(header)
    workloads = WORKLOADS[:1] if args.quick else WORKLOADS
    for name, shape, stride, k, out, size_range, ops in workloads:
        x, rois = make_inputs(shape, stride, k, size_range)
        scale = 1.0 / stride
        for op in ops:
            ours, theirs, comparable = op_pair(op, rois, scale, out)
            diff = rel_diff(ours(x), theirs(x)) if comparable else float("nan")
            for threads in (1, 2):
                torch.set_num_threads(threads)
                r = [timeit(f, x, bwd, args.repeats) for bwd in (False, True) for f in (ours, theirs)]
                tv_name = "tv roi_align avg (time only)" if not comparable else ""
                row = (f"| {name} | {op}{' vs ' + tv_name if tv_name else ''} | {threads} | {r[0]:.3f} | {r[1]:.3f} | "
                       f"**{r[1] / r[0]:.1f}x** | {r[2]:.3f} | {r[3]:.3f} | **{r[3] / r[2]:.1f}x** | "
                       f"{'n/a' if not comparable else f'{diff:.1e}'} |")
                print(row, flush=True)
                lines.append(row)
        torch.set_num_threads(2)
    mem = measure_memory()
    mem_lines = ["| op (reference workload, fwd+bwd, 2 threads) | peak RSS increase ours (MiB) | torchvision (MiB) |", "|---|---|---|"]
    mem_lines += [f"| {op} | {a:.0f} | {b:.0f} |" for op, a, b in mem]
    print("\n".join(mem_lines))
    total = time.time() - t_start
    cmd = "MASKRCNN_PLUGIN_ROI_BACKEND=cpp .venv/bin/python benchmarks/bench_roi_ops.py" + (" --quick" if args.quick else "")
    block = "\n".join(
        [
            "<!-- BENCH:START (generated by benchmarks/bench_roi_ops.py) -->",
            f"Command: `{cmd}` (repeats={args.repeats}, median after one warm-up; sampling_ratio={SAMPLING}, aligned={ALIGNED}).",
            f"Machine: {machine()}. Run on {time.strftime('%Y-%m-%d %H:%M')}, {total:.0f} s in total.",
            "Ratio = torchvision time / ours (higher is better for ours). Float32 inputs.",
            "",
            *lines,
            "",
            *mem_lines,
            "<!-- BENCH:END -->",
        ]
    )
    print(f"total {total:.0f} s")
    if not args.no_write:
        doc = ROOT / "docs" / "roi_ops.md"
        text = doc.read_text() if doc.exists() else ""
        a, b = text.find("<!-- BENCH:START"), text.find("<!-- BENCH:END -->")
        if a >= 0 and b >= 0:
            text = text[:a] + block + text[b + len("<!-- BENCH:END -->"):]
        else:
            text = text + "\n" + block + "\n"
        doc.write_text(text)
        print(f"wrote {doc}")


if __name__ == "__main__":
    main()
