"""Draw the RoIPool / RoIWarp / RoIAlign worked example (Mask R-CNN Figure 3 style).

800 x 800 image, stride 32 -> 25 x 25 feature map, box (0, 0, 665, 665) -> 20.78 x 20.78 cells, 7 x 7 bins.
The bins and sample points come from maskrcnn_plugin.layers' own helpers (the ones the tests check the
operators against), so the picture shows what the code computes.

Drawing convention: feature cell i is the unit square [i, i + 1) (image pixels 32 i .. 32 i + 32), the box
is drawn at x / 32. RoIAlign's points are drawn in the same frame, i.e. as read by aligned=True (cell
values at cell centres); the paper's aligned=False reads the same points half a cell further up-left.

    python tools/draw_roi_example.py [--out docs/images/roi_article_example.png]
"""
import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from maskrcnn_plugin.layers import roi_align_sample_points, roi_pool_bins, roi_warp_sample_points  # noqa: E402

FEAT, STRIDE, OUT = 25, 32, 7
BOX = (0.0, 0.0, 665.0, 665.0)
SCALE = 1.0 / STRIDE
BIN_COLORS = ["#1f77b4", "#ff7f0e"]


def grid(ax, title):
    for i in range(FEAT + 1):
        ax.plot([0, FEAT], [i, i], color="#d0d0d0", lw=0.6, zorder=0)
        ax.plot([i, i], [0, FEAT], color="#d0d0d0", lw=0.6, zorder=0)
    ax.set_xlim(-0.5, FEAT + 0.5)
    ax.set_ylim(FEAT + 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xticks(range(0, FEAT + 1, 5))
    ax.set_yticks(range(0, FEAT + 1, 5))
    ax.tick_params(labelsize=8)
    ax.set_title(title, fontsize=10)


def box(ax):
    x1, y1, x2, y2 = (v * SCALE for v in BOX)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="red", lw=2.2, zorder=5, label="box 665 px = 20.78 cells"))


def draw_pool(ax):
    grid(ax, "RoIPool: box snapped to cells 0..21 (22 cells),\nbins snapped to floor/ceil: 4 x 4 whole cells each")
    rows, cols = roi_pool_bins(BOX, SCALE, OUT, (FEAT, FEAT))
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            # alternate colours; neighbouring bins share a row / column of cells, which shows darker
            ax.add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, color=BIN_COLORS[(i + j) % 2], alpha=0.22, lw=0, zorder=1))
            ax.add_patch(Rectangle((c0 + 0.08, r0 + 0.08), c1 - c0 - 0.16, r1 - r0 - 0.16, fill=False, ec=BIN_COLORS[(i + j) % 2], lw=0.8, zorder=2))
    q0, q1 = rows[0][0], rows[-1][1]
    ax.add_patch(Rectangle((q0, q0), q1 - q0, q1 - q0, fill=False, ec="#2ca02c", lw=2.0, ls="--", zorder=4, label="snapped RoI [0, 22)"))
    ax.annotate("bin (0,0) = cells 0-3 x 0-3, bin (0,1) = cells 0-3 x 3-6:\nneighbouring bins share a cell row/column (darker strips)", xy=(2, 2), xytext=(6.5, 23.6), fontsize=7,
                arrowprops=dict(arrowstyle="->", lw=0.8), bbox=dict(fc="white", ec="#888", lw=0.5), zorder=7)
    box(ax)
    ax.legend(loc="lower right", fontsize=7, framealpha=0.9)


def draw_sampled(ax, title, ys, xs, x0, x1, snapped=None):
    grid(ax, title)
    step = (x1 - x0) / OUT
    for i in range(OUT + 1):
        v = x0 + i * step
        ax.plot([x0, x1], [v, v], color="#1f77b4", lw=1.0, zorder=2)
        ax.plot([v, v], [x0, x1], color="#1f77b4", lw=1.0, zorder=2)
    px = [x for row in xs for x in row]
    py = [y for row in ys for y in row]
    ax.scatter([x for x in px for _ in py], [y for _ in px for y in py], s=5, color="black", zorder=6, label="bilinear sample points (2 x 2 per bin)")
    if snapped is not None:
        ax.add_patch(Rectangle((snapped[0], snapped[0]), snapped[1] - snapped[0], snapped[1] - snapped[0], fill=False, ec="#2ca02c", lw=2.0, ls="--", zorder=4, label="snapped RoI [0, 22)"))
    box(ax)
    ax.legend(loc="lower right", fontsize=7, framealpha=0.9)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "images" / "roi_article_example.png"))
    args = ap.parse_args()

    fig, axes = plt.subplots(1, 3, figsize=(18, 6.6))
    draw_pool(axes[0])
    # RoIWarp: 22 snapped cells, unsnapped bins of 22/7 = 3.14 cells; helper coordinates are in the
    # cell-centre frame (value of cell i at i), +0.5 puts them in the drawing frame (cell i = [i, i+1))
    ys, xs = roi_warp_sample_points(BOX, SCALE, OUT, sampling_ratio=2, aligned=True)
    draw_sampled(axes[1], "RoIWarp: box snapped to 22 cells,\nbins of 22/7 = 3.14 cells sampled bilinearly",
                 [[v + 0.5 for v in r] for r in ys], [[v + 0.5 for v in r] for r in xs], 0.0, 22.0, snapped=(0.0, 22.0))
    ys, xs = roi_align_sample_points(BOX, SCALE, OUT, sampling_ratio=2, aligned=True)
    draw_sampled(axes[2], "RoIAlign: no snapping, bins of 20.78/7 = 2.97 cells,\n2 x 2 bilinear samples per bin",
                 [[v + 0.5 for v in r] for r in ys], [[v + 0.5 for v in r] for r in xs], 0.0, 665 / 32)
    fig.suptitle("800 x 800 image, stride 32 -> 25 x 25 feature map; box (0, 0, 665, 665); 7 x 7 output", fontsize=12)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
