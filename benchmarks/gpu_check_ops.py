"""GPU check of the registered RoI operators (torch.ops.maskrcnn_plugin.*) as users call them: CUDA tensors
through the public functions, against the same functions on the CPU; then torch.compile and opcheck on
CUDA; then speed against torchvision.

    python3 benchmarks/gpu_check_ops.py            # on a CUDA machine, from the repository root
    python3 benchmarks/gpu_check_ops.py --dry-run  # on the CPU: Triton interpreter, tiny shapes, no timing

Needs torch, triton, torchvision; not detectron2: ``maskrcnn_plugin.layers`` is imported without the
package's ``__init__`` (which registers the detectron2 components). The CPU reference runs the pure-PyTorch
kernels (``MASKRCNN_PLUGIN_ROI_BACKEND=python`` for that call only), which the CPU test suite shows equal to
the C++ kernels, so no compiler is needed here.

Checks, per op (RoIPool; RoIWarp and RoIAlign, avg and max, aligned or not, fixed or adaptive sampling) and
dtype (float32, float16, bfloat16): forward CUDA vs CPU (max relative difference, and whether bit-identical),
input gradient CUDA vs CPU, torch.compile(fullgraph=True) on CUDA equal to eager, torch.library.opcheck on
CUDA. Prints markdown; writes $OUT/gpu_check_ops.json and .md when $OUT is set; exits 1 on a failed check.
"""
import argparse
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--dry-run", action="store_true", help="CPU only: Triton interpreter, tiny shapes, no timing")
p.add_argument("--repeats", type=int, default=25)
ARGS = p.parse_args()
if ARGS.dry_run:
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["MASKRCNN_PLUGIN_ROI_BACKEND"] = "triton"

import torch  # noqa: E402
import torchvision  # noqa: E402

if "maskrcnn_plugin" not in sys.modules:  # the layers alone, without the detectron2 components
    package = types.ModuleType("maskrcnn_plugin")
    package.__path__ = [str(ROOT / "maskrcnn_plugin")]
    sys.modules["maskrcnn_plugin"] = package
from maskrcnn_plugin.layers import roi_align, roi_pool, roi_warp  # noqa: E402

DEVICE = torch.device("cpu" if ARGS.dry_run else "cuda")
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
OPS = [
    ("pool", lambda x, r, o, s, sr, al: roi_pool(x, r, o, s)),
    ("warp avg", lambda x, r, o, s, sr, al: roi_warp(x, r, o, s, sr, "avg", al)),
    ("warp max", lambda x, r, o, s, sr, al: roi_warp(x, r, o, s, sr, "max", al)),
    ("align avg", lambda x, r, o, s, sr, al: roi_align(x, r, o, s, sr, "avg", al)),
    ("align max", lambda x, r, o, s, sr, al: roi_align(x, r, o, s, sr, "max", al)),
]


def make_inputs(shape, stride, k, sides, seed):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(shape, generator=g)
    lo, hi = sides
    wh = lo + torch.rand(k, 2, generator=g) * (hi - lo)
    xy = torch.rand(k, 2, generator=g) * torch.tensor([w * stride, h * stride]) - wh / 4  # some leave the image
    rois = torch.cat([torch.randint(0, n, (k, 1), generator=g).float(), xy, xy + wh], 1)
    rois[: k // 8, 3:] = rois[: k // 8, 1:3]  # degenerate (zero-size) boxes
    return x, rois


def cpu_reference(fn, x, rois, *args):
    saved = os.environ.get("MASKRCNN_PLUGIN_ROI_BACKEND")
    os.environ["MASKRCNN_PLUGIN_ROI_BACKEND"] = "python"
    try:
        x = x.detach().requires_grad_(True)
        out = fn(x, rois, *args)
        weight = torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(out.dtype)
        (out * weight).sum().backward()
        return out.detach(), x.grad
    finally:
        if saved is None:
            del os.environ["MASKRCNN_PLUGIN_ROI_BACKEND"]
        else:
            os.environ["MASKRCNN_PLUGIN_ROI_BACKEND"] = saved


def on_device(fn, x, rois, *args):
    x = x.detach().to(DEVICE).requires_grad_(True)
    out = fn(x, rois.to(DEVICE), *args)
    weight = torch.linspace(-1, 1, out.numel(), device=DEVICE).reshape(out.shape).to(out.dtype)
    (out * weight).sum().backward()
    return out.detach().cpu(), x.grad.cpu()


def rel(a, b):
    scale = b.abs().max().clamp(min=1e-12)
    return float((a.float() - b.float()).abs().max() / scale) if a.numel() else 0.0


def check_numbers(rows):
    spec = ((2, 16, 40, 56), 8, 96, (2, 200)) if not ARGS.dry_run else ((2, 3, 12, 16), 8, 8, (2, 150))
    ok = True
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for name, fn in OPS:
            settings = [(7, 2, True)] if name == "pool" else [(7, 2, True), (7, 0, True), (5, 2, False)]
            for out_size, sampling, aligned in settings:
                x, rois = make_inputs(*spec, seed=len(rows))
                x = x.to(dtype)
                args = (out_size, 1 / spec[1], sampling, aligned)
                ref_out, ref_grad = cpu_reference(fn, x, rois, *args)
                dev_out, dev_grad = on_device(fn, x, rois, *args)
                fwd, bwd = rel(dev_out, ref_out), rel(dev_grad, ref_grad)
                passed = fwd <= TOL[dtype] and bwd <= TOL[dtype] and dev_out.dtype == dtype
                ok &= passed
                rows.append({"op": name, "dtype": str(dtype).split(".")[1], "output": out_size,
                             "sampling": sampling, "aligned": aligned, "fwd_rel": fwd,
                             "fwd_bit_identical": bool(torch.equal(dev_out, ref_out)), "bwd_rel": bwd, "ok": passed})
    return ok


def check_compile_and_opcheck(rows):
    x, rois = make_inputs((2, 8, 20, 24), 8, 16, (4, 120), seed=5)
    x, rois = x.to(DEVICE), rois.to(DEVICE)
    ok = True
    for name, fn in OPS:
        def call(x, rois, fn=fn):
            return fn(x, rois, 7, 1 / 8, 2, True)
        eager = call(x, rois)
        compiled = torch.compile(call, fullgraph=True, backend="eager" if ARGS.dry_run else "inductor")(x, rois)
        same = bool(torch.equal(compiled, eager))
        ok &= same
        rows.append({"op": name, "check": "torch.compile(fullgraph=True) == eager", "ok": same})
    for op_name in ("roi_pool", "roi_warp", "roi_align"):
        op = getattr(torch.ops.maskrcnn_plugin, op_name)
        arg_sets = [(x, rois, 1 / 8, 7, 7)] if op_name == "roi_pool" else [
            (x, rois, 1 / 8, 7, 7, 2, agg, True) for agg in ("avg", "max")]
        for args in arg_sets:
            try:
                torch.library.opcheck(op, (args[0].clone().requires_grad_(True),) + args[1:])
                passed, detail = True, ""
            except Exception as e:  # report, then fail the run
                passed, detail = False, f"{type(e).__name__}: {str(e)[:300]}"
            ok &= passed
            rows.append({"op": op_name + ("" if len(args) == 5 else f" {args[6]}"), "check": "opcheck",
                         "ok": passed, "detail": detail})
    return ok


def median_ms(fn):
    for _ in range(3):
        fn()
    times = []
    for _ in range(ARGS.repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench(rows):
    workloads = [
        ("P2 2x256x200x272 s4, 512 RoIs 7x7", (2, 256, 200, 272), 4, 512, 7, (16, 112)),
        ("2x256x100x136 s8, 512 RoIs 14x14", (2, 256, 100, 136), 8, 512, 14, (16, 400)),
    ]
    for label, shape, stride, k, out, sides in workloads:
        x, rois = make_inputs(shape, stride, k, sides, seed=0)
        x, rois = x.to(DEVICE).requires_grad_(True), rois.to(DEVICE)
        tv_align = lambda: torchvision.ops.roi_align(x, rois, out, 1 / stride, 2, True)  # noqa: E731
        tv_pool = lambda: torchvision.ops.roi_pool(x, rois, out, 1 / stride)  # noqa: E731
        for name, fn in OPS:
            ours = lambda fn=fn: fn(x, rois, out, 1 / stride, 2, True)  # noqa: E731
            peer = tv_pool if name == "pool" else tv_align
            grad = torch.ones(k, shape[1], out, out, device=DEVICE)
            row = {"workload": label, "op": name, "peer": "torchvision " + ("roi_pool" if name == "pool" else "roi_align avg")}
            row["ours_fwd_ms"] = median_ms(lambda: ours())
            row["peer_fwd_ms"] = median_ms(lambda: peer())
            row["ours_fwdbwd_ms"] = median_ms(lambda: torch.autograd.grad(ours(), x, grad))
            row["peer_fwdbwd_ms"] = median_ms(lambda: torch.autograd.grad(peer(), x, grad))
            rows.append(row)


def markdown(result):
    lines = [f"Device: {result['device']}; torch {result['torch']}, torchvision {result['torchvision']}, "
             f"triton {result['triton']}. Command: `python3 benchmarks/gpu_check_ops.py`.", "",
             "| op | dtype | out | sampling | aligned | fwd rel. diff vs CPU | bit-identical | grad rel. diff | ok |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["numbers"]:
        lines.append(f"| {r['op']} | {r['dtype']} | {r['output']} | {r['sampling']} | {r['aligned']} | "
                     f"{r['fwd_rel']:.1e} | {'yes' if r['fwd_bit_identical'] else 'no'} | {r['bwd_rel']:.1e} | "
                     f"{'ok' if r['ok'] else 'FAIL'} |")
    lines += ["", "| op | check | ok |", "|---|---|---|"]
    lines += [f"| {r['op']} | {r['check']} | {'ok' if r['ok'] else 'FAIL ' + r.get('detail', '')} |" for r in result["graph"]]
    if result["speed"]:
        lines += ["", "| workload | op | ours fwd ms | peer fwd ms | ours fwd+bwd ms | peer fwd+bwd ms | peer |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['workload']} | {r['op']} | {r['ours_fwd_ms']:.3f} | {r['peer_fwd_ms']:.3f} | "
                  f"{r['ours_fwdbwd_ms']:.3f} | {r['peer_fwdbwd_ms']:.3f} | {r['peer']} |" for r in result["speed"]]
    return "\n".join(lines) + "\n"


def write(result):
    text = markdown(result)
    if os.environ.get("OUT"):  # after every stage, so a run cut short still reports what it did
        Path(os.environ["OUT"], "gpu_check_ops.json").write_text(json.dumps(result, indent=1))
        Path(os.environ["OUT"], "gpu_check_ops.md").write_text(text)
    return text


def main():
    import triton

    t0 = time.time()
    result = {"device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu (dry run)",
              "torch": torch.__version__, "torchvision": torchvision.__version__, "triton": triton.__version__,
              "numbers": [], "graph": [], "speed": []}
    ok = check_numbers(result["numbers"])
    write(result)
    if DEVICE.type == "cuda":
        bench(result["speed"])
        write(result)
    ok &= check_compile_and_opcheck(result["graph"])
    result["seconds"] = round(time.time() - t0, 1)
    result["ok"] = bool(ok)
    print(write(result))
    print(f"{'all checks passed' if ok else 'CHECKS FAILED'}; {result['seconds']} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
