"""Roofline of CPU inference: each stage of Mask R-CNN R-50-FPN against this machine's attainable float32 rate.

    .venv/bin/python benchmarks/bench_roofline.py                 # ~3 min; writes benchmarks/results/roofline.{json,md}
    .venv/bin/python benchmarks/bench_roofline.py --quick         # smoke run (small sizes), prints only

Run it on an otherwise idle machine (the load average is recorded). In one run, with `--threads` torch threads:

1. Attainable rate: the best GFLOP/s (shortest of 2 x `--repeats` runs) of a large float32 GEMM (torch.mm, BLAS) and of a large 3x3 convolution
   (torch's CPU convolution, oneDNN where built with it), the work every model stage is made of. A stage's
   "fraction" is its achieved rate over the better of the two.
2. The stages of the plugin's R-50-FPN model (`configs/ablations/coco/2a/r50_fpn.yaml`, random weights, eval
   mode) on an 800 x 1066 image padded to 800 x 1088 (as the model pads it): ResNet-50 (bottom-up), FPN, RPN
   head, box head on 1000 RoIs, mask head on 100 RoIs. FLOPs are fvcore's count (one multiply-add = 2 FLOPs;
   convolutions, linear layers, matmuls), time the median of `--repeats` runs after a warm-up.
   The stages' non-FLOP work (RoI pooling, NMS, paste-back) is not in this table: see docs/performance.md.
3. The same ResNet-50 in channels-last memory format (a candidate faster default), timed round-robin with the
   default layout, with the largest relative difference of its outputs.
4. Channels-last for the whole model, the candidate default, against the default layout (timed round-robin):
   inference of the plugin R-50-FPN (bench_end_to_end.py's model, images and settings: zeroed box regression,
   100 detections, fast paste) with the differences of its outputs (boxes, scores, classes, mask pixels after
   thresholding), and the training iteration (forward + backward + SGD step) of
   `configs/shapes/mask_rcnn_R18_FPN_shapes.yaml` on the same batches and RoI samples, with the relative
   difference of the first iteration's losses.
5. Beside it, the per-stage ratios to stock detectron2 and torchvision of the last committed end-to-end run
   (results/performance/end_to_end.json, produced by benchmarks/bench_end_to_end.py), with its date.
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detectron2.modeling import build_model  # noqa: E402
from fvcore.nn import FlopCountAnalysis  # noqa: E402

from maskrcnn_plugin import get_plugin_cfg  # noqa: E402

PLUGIN_R50 = "configs/ablations/coco/2a/r50_fpn.yaml"
END_TO_END = ROOT / "results" / "performance" / "end_to_end.json"
OUT_DIR = ROOT / "benchmarks" / "results"


def write_results(name, result, markdown_text):
    """benchmarks/results/<name>.json and .md: a benchmark's record and its tables."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (OUT_DIR / f"{name}.md").write_text(markdown_text)


def timed(fn, repeats, warmup=1, best=False):
    """Median (or with `best` the shortest) wall seconds of `fn()` over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return min(samples) if best else statistics.median(samples)


def flops(module, inputs):
    """FLOPs of `module(*inputs)` by fvcore (which counts a multiply-add as one: doubled here)."""
    counter = FlopCountAnalysis(module, inputs)
    counter.unsupported_ops_warnings(False)
    counter.uncalled_modules_warnings(False)
    return 2 * counter.total()


def attainable(quick, repeats):
    """{kernel: (GFLOP, seconds, GFLOP/s)} of a large GEMM and a large 3x3 convolution."""
    n = 1024 if quick else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm_flop = 2 * n ** 3
    c, (h, w) = (128, (50, 68)) if quick else (256, (100, 136))  # res4-sized FPN-level work
    conv = nn.Conv2d(c, c, 3, padding=1, bias=False).eval()
    x = torch.randn(1, c, h, w)
    conv_flop = 2 * c * c * 9 * h * w
    out = {}
    with torch.no_grad():
        for name, fn, fl in (("GEMM", lambda: torch.mm(a, b), gemm_flop), ("conv3x3", lambda: conv(x), conv_flop)):
            t = timed(fn, 2 * repeats, warmup=2, best=True)  # attainable: the best this machine did
            out[name] = {"gflop": fl / 1e9, "s": t, "gflops": fl / t / 1e9}
    return out


def build_r50():
    cfg = get_plugin_cfg()
    cfg.merge_from_file(str(ROOT / PLUGIN_R50))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    return build_model(cfg).eval()


def stages(model, quick, size=None, rois=None):
    """[(name, module to time, its inputs)] of the FLOP-bound stages, on the padded test image (`size` (h, w),
    default 800 x 1088) with `rois` (box RoIs, mask RoIs, default 1000 and 100)."""
    h, w = size or ((416, 544) if quick else (800, 1088))
    image = torch.randn(1, 3, h, w)
    backbone = model.backbone
    with torch.no_grad():
        bottom = backbone.bottom_up(image)
        feats = backbone(image)
    rpn_in = [feats[f] for f in model.proposal_generator.in_features]
    box_rois, mask_rois = rois or ((250, 25) if quick else (1000, 100))
    box_in = torch.randn(box_rois, backbone.output_shape()["p2"].channels, 7, 7)
    mask_in = torch.randn(mask_rois, backbone.output_shape()["p2"].channels, 14, 14)

    class BoxBranch(nn.Module):  # head + predictor: all the box branch's FLOPs after pooling
        def __init__(self, heads):
            super().__init__()
            self.head, self.predictor = heads.box_head, heads.box_predictor

        def forward(self, x):
            return self.predictor(self.head(x))

    class MaskBranch(nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, x):
            return self.head.layers(x)

    class RPNHead(nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, *features):
            return self.head(list(features))

    return image, bottom, [
        ("ResNet-50 (bottom-up)", backbone.bottom_up, (image,)),
        ("ResNet-50 + FPN", backbone, (image,)),
        ("RPN head (5 levels)", RPNHead(model.proposal_generator.rpn_head), tuple(rpn_in)),
        (f"box head + predictor ({box_rois} RoIs)", BoxBranch(model.roi_heads), (box_in,)),
        (f"mask head ({mask_rois} RoIs)", MaskBranch(model.roi_heads.mask_head), (mask_in,)),
    ]


def channels_last_check(model, image, bottom, repeats):
    """(default s, channels-last s, max relative output difference) of the ResNet-50, timed round-robin."""
    import copy

    cl = copy.deepcopy(model.backbone.bottom_up).to(memory_format=torch.channels_last)
    image_cl = image.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = cl(image_cl)
        diff = max(((out[k] - bottom[k]).abs().max() / bottom[k].abs().max().clamp_min(1e-12)).item() for k in bottom)
        default, last = [], []
        for _ in range(repeats + 1):
            default.append(timed(lambda: model.backbone.bottom_up(image), 1, warmup=0))
            last.append(timed(lambda: cl(image_cl), 1, warmup=0))
    return statistics.median(default[1:]), statistics.median(last[1:]), diff


def _e2e():
    """benchmarks/bench_end_to_end.py as a module: its models, inputs and checks, so that both measure the same."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_end_to_end

    return bench_end_to_end


def canonical_order(instances):
    """Detections sorted by score, class and box: with random weights many scores tie, and tied detections
    may come out of NMS / top-k in either order, which is not a difference of the outputs."""
    if len(instances) == 0:
        return instances
    key = torch.cat([-instances.scores[:, None].double(), instances.pred_classes[:, None].double(),
                     instances.pred_boxes.tensor.double()], 1).numpy()
    order = np.lexsort(key.T[::-1])
    return instances[torch.as_tensor(order)]


def inference_setup(quick):
    """(bench_end_to_end module, its settings, its plugin R-50-FPN in eval mode, its inputs): the model, images
    and settings of the end-to-end inference benchmark (zeroed box regression, 100 detections, fast paste)."""
    e2e = _e2e()
    s = dict(size=(160, 213) if quick else (800, 1066), images=1 if quick else 2, detections=100,
             proposals=100 if quick else 1000, sampling_ratio=2, seed=0)
    cfg_plugin, cfg_stock = e2e.r50_configs(s, fast_paste=True)
    default = e2e.build_pair(cfg_plugin, cfg_stock, s["seed"], inference=True)[0].eval()
    return e2e, s, default, e2e.d2_inputs(e2e.make_images(s["images"], s["size"], s["seed"]))


def inference_round_robin(models, inputs, repeats):
    """({name: median s / image}, {name: outputs in canonical order}) of (name, model) pairs timed in turn."""
    times = {name: [] for name, _ in models}
    with torch.no_grad():
        outs = {name: [canonical_order(m([x])[0]["instances"]) for x in inputs] for name, m in models}
        for _ in range(repeats):
            for name, m in models:
                t0 = time.perf_counter()
                for x in inputs:
                    m([x])
                times[name].append((time.perf_counter() - t0) / len(inputs))
    return {k: statistics.median(v) for k, v in times.items()}, outs


def channels_last_model(quick, repeats):
    """Whole-model channels-last vs default: inference and training, times and output differences."""
    import copy

    e2e, s, default, inputs = inference_setup(quick)
    last = copy.deepcopy(default).to(memory_format=torch.channels_last)
    inference, outs = inference_round_robin((("default", default), ("channels_last", last)), inputs, repeats)
    inference["output_differences"] = e2e.compare_d2_outputs(outs["default"], outs["channels_last"])

    cfg, _ = e2e.train_configs({}, e2e.TRAIN_CFG)
    torch.manual_seed(s["seed"])
    model = build_model(cfg).train()
    models = {"default": model, "channels_last": copy.deepcopy(model).to(memory_format=torch.channels_last)}
    opts = {k: e2e._optimizer(cfg, m) for k, m in models.items()}
    batch, size = (2, 128) if quick else (cfg.SOLVER.IMS_PER_BATCH, cfg.INPUT.MIN_SIZE_TRAIN[0])
    batches = e2e.make_train_batches(2, batch, size, s["seed"] + 1)
    times, first = {k: [] for k in models}, {}
    for it in range(repeats + 1):  # the first is a warm-up
        for name, m in models.items():
            t, losses = e2e._train_iteration(m, opts[name], batches[it % len(batches)], s["seed"] + it)
            if it == 0:
                first[name] = losses
            else:
                times[name].append(t["iteration"])
    training = {k: statistics.median(v) for k, v in times.items()}
    training["first_iteration_loss_rel_diff"] = {
        k: abs(first["channels_last"][k] - v) / max(abs(v), 1e-12) for k, v in first["default"].items()}
    training["config"] = e2e.TRAIN_CFG
    return {"inference_s_per_image": inference, "training_s_per_iter": training,
            "inference_size": list(s["size"]), "training_batch": [batch, size]}


def end_to_end_ratios():
    """Per stage: (ms plugin, ms detectron2, ms torchvision) of the last committed end-to-end run, and its date."""
    if not END_TO_END.is_file():
        return None, {}
    data = json.loads(END_TO_END.read_text())
    ms = data["inference"]["ms_per_image"]
    rows = {st: (ms["plugin_fast_paste"][st], ms["detectron2"][st], ms["torchvision"][st])
            for st in ("backbone", "rpn", "box", "mask", "total")}
    return data.get("date"), rows


def markdown(result):
    att = result["attainable"]
    best = max(v["gflops"] for v in att.values())
    L = [f"Command: `{result['command']}`; {result['date']}; {result['machine']}; torch threads "
         f"{result['threads']}; load average before / after: {result['load_before']} / {result['load_after']}.", "",
         "| attainable float32 kernel | GFLOP | ms | GFLOP/s |", "|---|---|---|---|"]
    for k, v in att.items():
        L.append(f"| {k} | {v['gflop']:.1f} | {1e3 * v['s']:.0f} | {v['gflops']:.1f} |")
    L += ["", f"Attainable: {best:.1f} GFLOP/s (the better of the two).", "",
          "| stage (plugin R-50-FPN, random weights) | GFLOP | ms | GFLOP/s | fraction of attainable |",
          "|---|---|---|---|---|"]
    for s in result["stages"]:
        L.append(f"| {s['name']} | {s['gflop']:.1f} | {1e3 * s['s']:.0f} | {s['gflops']:.1f} | "
                 f"{s['gflops'] / best:.0%} |")
    cl = result["channels_last"]
    L += ["", f"ResNet-50 channels-last: {1e3 * cl['channels_last_s']:.0f} ms vs {1e3 * cl['default_s']:.0f} ms "
          f"default ({cl['channels_last_s'] / cl['default_s']:.2f}x); largest relative output difference "
          f"{cl['max_rel_diff']:.1e}."]
    whole = result["channels_last_model"]
    inf, tr = whole["inference_s_per_image"], whole["training_s_per_iter"]
    d = inf["output_differences"]
    L += ["", "Whole model in channels-last (round-robin with the default layout):", "",
          "| | default | channels-last | ratio |", "|---|---|---|---|",
          f"| inference R-50-FPN, s / image ({whole['inference_size'][0]} x {whole['inference_size'][1]}) | "
          f"{inf['default']:.2f} | {inf['channels_last']:.2f} | {inf['channels_last'] / inf['default']:.2f}x |",
          f"| training `{tr['config']}`, s / iteration (batch {whole['training_batch'][0]} x "
          f"{whole['training_batch'][1]} px) | {tr['default']:.2f} | {tr['channels_last']:.2f} | "
          f"{tr['channels_last'] / tr['default']:.2f}x |", "",
          f"Inference outputs: same detection count {d['same_count']}, classes equal {d['classes_equal']}, largest "
          f"box difference {d['box_max_abs']:.1e} px, score {d['score_max_abs']:.1e}, mask pixels differing after "
          f"thresholding {d['mask_pixels_differing']}. First training iteration's losses, largest relative "
          f"difference: {max(tr['first_iteration_loss_rel_diff'].values()):.1e} ("""
          + ", ".join(f"{k} {v:.1e}" for k, v in tr["first_iteration_loss_rel_diff"].items()) + ")."]
    date, rows = result["end_to_end_date"], result["end_to_end"]
    if rows:
        L += ["", f"Last committed end-to-end run ({date}, results/performance/end_to_end.json; ms per image at "
              "800 x 1066, ours with the fast paste):", "",
              "| stage | ours ms | / detectron2 | / torchvision |", "|---|---|---|---|"]
        for st, (ours, d2, tv) in rows.items():
            L.append(f"| {st} | {ours:.0f} | {ours / d2:.2f}x | {ours / tv:.2f}x |")
    return "\n".join(L) + "\n"


def parse_args(argv, doc, out_name):
    """The options every roofline-style benchmark takes."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="small sizes, prints only")
    p.add_argument("--out-name", default=out_name, help="benchmarks/results/<name>.{json,md}")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


def run_record(script, argv, threads, load_before):
    """How a result was produced: the command, date, machine, threads and the load average before it."""
    return {
        "command": f"python benchmarks/{script}" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
        "date": datetime.datetime.now().isoformat(timespec="minutes"), "threads": threads,
        "machine": f"{os.cpu_count()} logical CPUs, torch {torch.__version__}, "
                   f"mkldnn {torch.backends.mkldnn.is_available()}",
        "load_before": load_before,
    }


def write_outputs(result, text, args):
    """Print the markdown; unless --quick, write benchmarks/results/<out-name>.{json,md}."""
    print(text)
    if not args.quick:
        write_results(args.out_name, result, text)


def main(argv=None):
    args = parse_args(argv, __doc__, "roofline")
    load_before = [round(x, 2) for x in os.getloadavg()]
    t0 = time.time()
    att = attainable(args.quick, args.repeats)
    model = build_r50()
    image, bottom, todo = stages(model, args.quick)
    measured = []
    with torch.no_grad():
        for name, module, inputs in todo:
            fl = flops(module, inputs)
            t = timed(lambda: module(*inputs), args.repeats)
            measured.append({"name": name, "gflop": fl / 1e9, "s": t, "gflops": fl / t / 1e9})
    default_s, last_s, diff = channels_last_check(model, image, bottom, args.repeats)
    whole = channels_last_model(args.quick, args.repeats)
    date, rows = end_to_end_ratios()
    result = {
        **run_record("bench_roofline.py", argv, args.threads, load_before),
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "wall_s": time.time() - t0, "attainable": att, "stages": measured,
        "channels_last": {"default_s": default_s, "channels_last_s": last_s, "max_rel_diff": diff},
        "channels_last_model": whole,
        "end_to_end_date": date, "end_to_end": rows,
    }
    write_outputs(result, markdown(result), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
