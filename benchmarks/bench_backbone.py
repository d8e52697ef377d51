"""Where ResNet-50's CPU inference time goes, and what folding its frozen BN into the convolutions saves (#27).

    .venv/bin/python benchmarks/bench_backbone.py           # ~3 min; writes benchmarks/results/backbone.{json,md}
    .venv/bin/python benchmarks/bench_backbone.py --quick   # smoke run (small sizes), prints only

bench_roofline.py puts the ResNet-50 bottom-up at about half of the machine's attainable float32 rate. This
breaks it down, in one run with `--threads` torch threads, on an otherwise idle machine (load average recorded):

1. The attainable rate (bench_roofline.py's GEMM and 3x3 convolution).
2. The ResNet-50 of the plugin's R-50-FPN (`configs/ablations/coco/2a/r50_fpn.yaml`, random weights, frozen BN
   with mildly random statistics as a trained net has) on an 800 x 1088 image: the profiler's self time per
   operator kind (convolution, batch norm, ReLU, residual add, max pool, other), per forward.
3. Its convolutions alone by kernel (1x1, 3x3, 7x7 and stride), timed by module hooks on the folded net (so no
   BN inside them), with their FLOPs (multiply-add = 2) and fraction of the attainable rate.
4. The ResNet-50 default, with its frozen BN folded (`maskrcnn_plugin.fold_bn`), and folded + channels-last,
   timed round-robin, with the largest relative output difference.
5. Whole-model inference (bench_end_to_end.py's plugin R-50-FPN, images and settings), default vs folded,
   timed round-robin, with the differences of the outputs (boxes, scores, classes, mask pixels after
   thresholding).
"""
import collections
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_roofline import (attainable, build_r50, inference_round_robin, inference_setup,  # noqa: E402
                            parse_args, run_record, timed, write_outputs)

from maskrcnn_plugin.fold_bn import fold_batchnorm  # noqa: E402

# profiler operator names -> the kind reported; the first matching substring wins, the rest is "other"
_KINDS = (("conv", "convolution"), ("batch_norm", "batch norm"), ("relu", "ReLU"), ("clamp_min", "ReLU"),
          ("add", "residual add"), ("max_pool", "max pool"))


def randomize_frozen_bn(model, seed):
    """Frozen BN statistics near, not at, the identity (a random-weight net's are exactly it)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.num_features
            m.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=g))
            m.bias.copy_(0.1 * torch.randn(n, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.8 + 0.4 * torch.rand(n, generator=g))


def by_operator(net, image, repeats):
    """{kind: ms per forward} of the profiler's self CPU time, and the total."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        net(image)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                net(image)
    ms = collections.Counter()
    for ev in prof.key_averages():
        kind = next((k for sub, k in _KINDS if sub in ev.key), "other")
        ms[kind] += ev.self_cpu_time_total / 1e3 / repeats
    return dict(ms), sum(ms.values())


def convs_by_kernel(folded, image, repeats):
    """{"KxK stride S": {"gflop", "s"}} per forward, timed by hooks around each convolution of the folded net."""
    stats = collections.defaultdict(lambda: {"gflop": 0.0, "s": 0.0})
    starts = {}

    def pre(mod, inputs):
        starts[mod] = time.perf_counter()

    def post(mod, inputs, out):
        dt = time.perf_counter() - starts.pop(mod)
        kh, kw = mod.kernel_size
        key = f"{kh}x{kw} stride {mod.stride[0]}"
        stats[key]["s"] += dt / repeats
        stats[key]["gflop"] += 2 * out.numel() * mod.in_channels // mod.groups * kh * kw / 1e9 / repeats

    hooks = [h for m in folded.modules() if isinstance(m, Conv2d)
             for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    with torch.no_grad():
        folded(image)  # warm-up, not counted
        stats.clear()
        for _ in range(repeats):
            folded(image)
    for h in hooks:
        h.remove()
    return dict(sorted(stats.items()))


def variants_round_robin(variants, repeats):
    """{name: median s} of each (name, net, input) timed in turn, and the largest relative output difference of
    each against the first."""
    times = {name: [] for name, _, _ in variants}
    with torch.no_grad():
        ref = variants[0][1](variants[0][2])
        diffs = {}
        for name, net, x in variants:
            out = net(x)
            diffs[name] = max(((out[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-12)).item()
                              for k in ref)
        for _ in range(repeats):
            for name, net, x in variants:
                times[name].append(timed(lambda: net(x), 1, warmup=0))
    return {name: statistics.median(v) for name, v in times.items()}, diffs


def whole_model(quick, repeats):
    """bench_end_to_end's plugin R-50-FPN inference, default vs folded: s / image and output differences."""
    e2e, s, default, inputs = inference_setup(quick)
    randomize_frozen_bn(default, s["seed"])
    folded = copy.deepcopy(default)
    n_folded = fold_batchnorm(folded)
    times, outs = inference_round_robin((("default", default), ("folded", folded)), inputs, repeats)
    return {"s_per_image": times, "bn_folded": n_folded,
            "output_differences": e2e.compare_d2_outputs(outs["default"], outs["folded"]),
            "size": list(s["size"]), "images": s["images"]}


def markdown(r):
    best = max(v["gflops"] for v in r["attainable"].values())
    L = [f"Command: `{r['command']}`; {r['date']}; {r['machine']}; torch threads {r['threads']}; load average "
         f"before / after: {r['load_before']} / {r['load_after']}.", "",
         f"Attainable: {best:.1f} GFLOP/s (" + ", ".join(f"{k} {v['gflops']:.1f}" for k, v in r["attainable"].items())
         + f"). ResNet-50 on {r['image'][0]} x {r['image'][1]}, random weights, frozen BN "
         f"({r['bn_layers']} layers) with random statistics.", "",
         "Where a forward's time goes (profiler self time, per forward):", "",
         "| operator kind | ms | share |", "|---|---|---|"]
    ops, total = r["by_operator"], r["by_operator_total_ms"]
    for kind, ms in sorted(ops.items(), key=lambda kv: -kv[1]):
        L.append(f"| {kind} | {ms:.0f} | {ms / total:.0%} |")
    L += [f"| total | {total:.0f} | |", "",
          "Its convolutions by kernel (the folded net, so no BN inside; module hooks, per forward):", "",
          "| kernel | GFLOP | ms | GFLOP/s | fraction of attainable |", "|---|---|---|---|---|"]
    conv_flop = conv_s = 0.0
    for k, v in r["convs_by_kernel"].items():
        conv_flop, conv_s = conv_flop + v["gflop"], conv_s + v["s"]
        L.append(f"| {k} | {v['gflop']:.1f} | {1e3 * v['s']:.0f} | {v['gflop'] / v['s']:.1f} | "
                 f"{v['gflop'] / v['s'] / best:.0%} |")
    L += [f"| all | {conv_flop:.1f} | {1e3 * conv_s:.0f} | {conv_flop / conv_s:.1f} | {conv_flop / conv_s / best:.0%} |",
          "", "ResNet-50 forward, timed round-robin:", "",
          "| variant | ms | ratio to default | GFLOP/s | fraction of attainable | largest relative output difference |",
          "|---|---|---|---|---|---|"]
    rr, base = r["resnet"], r["resnet"]["s"]["default"]
    for name, s in rr["s"].items():
        rate = r["resnet_gflop"] / s
        L.append(f"| {name} | {1e3 * s:.0f} | {s / base:.2f}x | {rate:.1f} | {rate / best:.0%} | "
                 f"{rr['max_rel_diff'][name]:.1e} |")
    w = r["whole_model"]
    d, t = w["output_differences"], w["s_per_image"]
    L += ["", f"Whole-model inference (bench_end_to_end.py's plugin R-50-FPN, {w['images']} image(s) of "
          f"{w['size'][0]} x {w['size'][1]}, {w['bn_folded']} frozen BN folded): default {t['default']:.2f} s / "
          f"image, folded {t['folded']:.2f} s / image ({t['folded'] / t['default']:.2f}x). Outputs: same detection "
          f"count {d['same_count']}, classes equal {d['classes_equal']}, largest box difference "
          f"{d['box_max_abs']:.1e} px, score {d['score_max_abs']:.1e}, mask pixels differing after thresholding "
          f"{d['mask_pixels_differing']}."]
    return "\n".join(L) + "\n"


def main(argv=None):
    args = parse_args(argv, __doc__, "backbone")
    load_before = [round(x, 2) for x in os.getloadavg()]
    t0 = time.time()
    att = attainable(args.quick, args.repeats)
    resnet = build_r50().backbone.bottom_up
    randomize_frozen_bn(resnet, 0)
    bn_layers = sum(isinstance(m, FrozenBatchNorm2d) for m in resnet.modules())
    folded = copy.deepcopy(resnet)
    fold_batchnorm(folded)
    h, w = (416, 544) if args.quick else (800, 1088)
    image = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    ops, total = by_operator(resnet, image, args.repeats)
    kernels = convs_by_kernel(folded, image, args.repeats)
    folded_cl = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    times, diffs = variants_round_robin(
        [("default", resnet, image), ("frozen BN folded", folded, image),
         ("folded + channels-last", folded_cl, image.contiguous(memory_format=torch.channels_last))],
        args.repeats)
    result = {
        **run_record("bench_backbone.py", argv, args.threads, load_before),
        "attainable": att, "image": [h, w], "bn_layers": bn_layers,
        "by_operator": ops, "by_operator_total_ms": total, "convs_by_kernel": kernels,
        "resnet_gflop": sum(v["gflop"] for v in kernels.values()),
        "resnet": {"s": times, "max_rel_diff": diffs},
        "whole_model": whole_model(args.quick, args.repeats),
    }
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = time.time() - t0
    write_outputs(result, markdown(result), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
