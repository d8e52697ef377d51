#!/usr/bin/env python
"""Statistics and pictures of a generated shapes split, printed as markdown for docs/shapes_dataset.md.

    python tools/shapes_stats.py --dataset shapes_train --samples shapes_train:0 shapes_kp_val:0

computes instances per image, instance size (sqrt of the visible mask area), class counts, occlusion and
truncation of a registered shapes dataset (generated first if needed), and writes
docs/images/shapes_sample.png (sample images with their masks, boxes and keypoints drawn) and
docs/images/shapes_size_hist.png (histogram of instance sizes per class).
"""
import argparse
import collections
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

import maskrcnn_plugin.data as shapes_data  # noqa: E402
from tools.markdown_blocks import write_marked_block  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compute_stats(coco):
    anns = coco["annotations"]
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    per_image = collections.Counter(a["image_id"] for a in anns)
    counts = np.array([per_image.get(img["id"], 0) for img in coco["images"]])
    sizes = np.sqrt(np.array([a["area"] for a in anns], dtype=np.float64))
    vis = np.array([a.get("visible_fraction", 1.0) for a in anns])
    trunc = np.array([a.get("truncated", 0) for a in anns], dtype=bool)
    areas = np.array([a["area"] for a in anns])
    st = {
        "num_images": len(coco["images"]),
        "num_instances": len(anns),
        "per_image_mean": float(counts.mean()),
        "per_image_hist": dict(sorted(collections.Counter(counts.tolist()).items())),
        "class_counts": {cats[k]: v for k, v in sorted(collections.Counter(a["category_id"] for a in anns).items())},
        "size_percentiles": {p: float(np.percentile(sizes, p)) for p in (5, 25, 50, 75, 95)},
        "size_min_max": (float(sizes.min()), float(sizes.max())),
        "coco_small_medium_large": (
            float((areas < 32 ** 2).mean()), float(((areas >= 32 ** 2) & (areas < 96 ** 2)).mean()),
            float((areas >= 96 ** 2).mean()),
        ),
        "occluded_fraction": float((vis < 1.0).mean()),
        "mean_visible_fraction_of_occluded": float(vis[vis < 1.0].mean()) if (vis < 1.0).any() else 1.0,
        "truncated_fraction": float(trunc.mean()),
        "sizes": sizes,
        "size_classes": [cats[a["category_id"]] for a in anns],
    }
    kp = [np.array(a["keypoints"]).reshape(-1, 3) for a in anns if a.get("num_keypoints", 0) > 0]
    if kp:
        v = np.concatenate([k[:, 2] for k in kp])
        st["keypoints"] = {
            "persons": len(kp),
            "visible_v2": float((v == 2).mean()),
            "occluded_v1": float((v == 1).mean()),
            "outside_v0": float((v == 0).mean()),
        }
    return st


def markdown(name, st, command):
    lines = [
        f"Statistics of `{name}` (produced by `{command}`):",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| images | {st['num_images']} |",
        f"| instances | {st['num_instances']} |",
        f"| instances per image (mean) | {st['per_image_mean']:.2f} |",
        "| instances per image (histogram) | "
        + ", ".join(f"{k}: {v}" for k, v in st["per_image_hist"].items()) + " |",
        "| instances per class | " + ", ".join(f"{k}: {v}" for k, v in st["class_counts"].items()) + " |",
        "| instance size sqrt(visible area), px: min / p5 / p25 / median / p75 / p95 / max | "
        + " / ".join(f"{x:.1f}" for x in [st["size_min_max"][0], *st["size_percentiles"].values(),
                                          st["size_min_max"][1]]) + " |",
        "| COCO small / medium / large (area < 32², < 96², ≥ 96²) | "
        + " / ".join(f"{100 * x:.1f}%" for x in st["coco_small_medium_large"]) + " |",
        f"| instances partly occluded by later instances | {100 * st['occluded_fraction']:.1f}% "
        f"(visible fraction of those: mean {st['mean_visible_fraction_of_occluded']:.2f}) |",
        f"| instances truncated by the image border | {100 * st['truncated_fraction']:.1f}% |",
    ]
    if "keypoints" in st:
        k = st["keypoints"]
        lines.append(
            f"| person keypoints (over {k['persons']} persons): visible v=2 / occluded v=1 / outside v=0 | "
            f"{100 * k['visible_v2']:.1f}% / {100 * k['occluded_v1']:.1f}% / {100 * k['outside_v0']:.1f}% |"
        )
    return "\n".join(lines)


def size_histogram(st, path, name):
    sizes, cls = st["sizes"], np.array(st["size_classes"])
    names = list(dict.fromkeys(sorted(set(cls), key=list(st["class_counts"]).index)))
    bins = np.logspace(np.log10(max(1.0, sizes.min())), np.log10(sizes.max() + 1), 30)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    ax.hist([sizes[cls == n] for n in names], bins=bins, stacked=True, label=names)
    for edge, lab in ((32, "COCO small|medium"), (96, "medium|large")):
        ax.axvline(edge, color="k", ls="--", lw=0.8)
        ax.text(edge * 1.03, ax.get_ylim()[1] * 0.92, lab, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("instance size: sqrt(visible mask area) [px]")
    ax.set_ylabel("instances")
    ax.set_title(f"{name}: instance sizes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def draw_record(record, meta, scale=2):
    from detectron2.utils.visualizer import Visualizer

    img = np.asarray(Image.open(record["file_name"]).convert("RGB"))
    return Visualizer(img, meta, scale=scale).draw_dataset_dict(record).get_image()


def sample_figure(samples, path, scale=2):
    """One row per (dataset, index): the image and the same image with its annotations drawn."""
    tiles = []
    np.random.seed(0)  # detectron2's Visualizer picks random instance colours: the same picture on every run
    for dataset, i in samples:
        records = DatasetCatalog.get(dataset)
        meta = MetadataCatalog.get(dataset)
        raw = np.asarray(Image.open(records[i]["file_name"]).convert("RGB"))
        raw = np.asarray(Image.fromarray(raw).resize((raw.shape[1] * scale, raw.shape[0] * scale), Image.NEAREST))
        drawn = draw_record(records[i], meta, scale)
        gap = np.full((raw.shape[0], 6, 3), 255, np.uint8)
        tiles.append(np.concatenate([raw, gap, drawn], axis=1))
    rows = []
    for t in tiles:
        rows += [t, np.full((6, t.shape[1], 3), 255, np.uint8)]
    Image.fromarray(np.concatenate(rows[:-1], axis=0)).save(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="shapes_train", help="registered or shapes_<split>_s<seed>_n<num>_px<size>")
    ap.add_argument("--samples", nargs="+", default=["shapes_train:0", "shapes_kp_val:0"],
                    help="DATASET:INDEX images drawn into shapes_sample.png, one row each")
    ap.add_argument("--out-dir", default=os.path.join(REPO, "docs", "images"))
    ap.add_argument("--no-images", action="store_true", help="only print the statistics")
    ap.add_argument("--write-doc", metavar="MD", help="also write the table into this markdown file, between "
                    "'<!-- BEGIN stats:DATASET -->' and '<!-- END stats:DATASET -->'")
    args = ap.parse_args(argv)

    samples = [(s.rsplit(":", 1)[0], int(s.rsplit(":", 1)[1])) for s in args.samples]
    for name in [args.dataset] + [n for n, _ in samples]:
        shapes_data.ensure_registered(name)
    t0 = time.time()
    json_file = shapes_data.prepare_dataset(args.dataset)
    elapsed = time.time() - t0
    with open(json_file) as f:
        coco = json.load(f)
    st = compute_stats(coco)
    command = "python tools/shapes_stats.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(args.dataset, st, command.strip())
    print(table)
    if args.write_doc:
        write_marked_block(args.write_doc, f"stats:{args.dataset}", table)
    print(f"\n(dataset ready after {elapsed:.1f} s; json: {json_file})")
    if not args.no_images:
        os.makedirs(args.out_dir, exist_ok=True)
        hist = os.path.join(args.out_dir, "shapes_size_hist.png")
        size_histogram(st, hist, args.dataset)
        for name in dict(samples):
            shapes_data.prepare_dataset(name)
        sample = os.path.join(args.out_dir, "shapes_sample.png")
        sample_figure(samples, sample)
        print(f"wrote {hist}\nwrote {sample} ({' '.join(args.samples)})")


if __name__ == "__main__":
    main()
