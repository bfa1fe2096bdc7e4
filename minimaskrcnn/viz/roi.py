"""Pictures of RoIPool and RoIAlign: a box on a feature grid, RoIPool's quantised bins, RoIAlign's sample points;
and of ablations of the mask branch (bars, paired differences beside the paper's, predicted mask crops).

Built in notebooks/06_roialign_vs_roipool.ipynb and notebooks/12_paper_ablations.ipynb.
"""
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from minimaskrcnn.roi_ops import roi_align_sample_points, roi_pool_bins


def _feature_grid(ax, feature_size) -> None:
    """Axes over a feature map of feature_size (H, W): one grid cell per feature pixel, y pointing down."""
    h, w = feature_size
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks(range(w + 1))
    ax.set_yticks(range(h + 1))
    ax.grid(True, color="0.8")
    ax.set_aspect("equal")
    ax.tick_params(labelsize=6)


def draw_roi_sampling(box, feature_size, output_size=2, spatial_scale=1.0, sampling_ratio=2, aligned=False, fig=None):
    """Two panels over the same feature grid (pixel k covers [k, k+1) in RoIPool's view, centre k in RoIAlign's):
    left RoIPool's bins (rounded to whole pixels), right RoIAlign's exact box, bins and sample points.
    box: Tensor[4] (x1, y1, x2, y2) in image coordinates; feature_size: (H, W). Returns the figure."""
    fig = fig or plt.figure(figsize=(9, 4.5))
    ax_pool, ax_align = fig.subplots(1, 2)
    rows, cols = roi_pool_bins(box, output_size, spatial_scale, feature_size)
    for (r0, r1) in rows.tolist():
        for (c0, c1) in cols.tolist():
            ax_pool.add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, fill=True, alpha=0.25, ec="tab:red", lw=2))
    ys, xs, vy, vx = roi_align_sample_points(box, output_size, spatial_scale, sampling_ratio, aligned, feature_size)
    shift = 0.5  # draw RoIAlign in the same picture: value of pixel k sits at its centre k + 0.5
    x1, y1, x2, y2 = (float(v) * spatial_scale - (0.5 if aligned else 0.0) for v in box)
    ax_align.add_patch(Rectangle((x1 + shift, y1 + shift), x2 - x1, y2 - y1, fill=False, ec="tab:blue", lw=2))
    yy, xx = ys.flatten(), xs.flatten()
    for y, ok_y in zip(yy.tolist(), vy.flatten().tolist()):
        for x, ok_x in zip(xx.tolist(), vx.flatten().tolist()):
            ax_align.plot(x + shift, y + shift, "o", color="tab:blue" if ok_y and ok_x else "lightgray", ms=4)
    ax_pool.set_title(f"RoIPool: {len(rows)}x{len(cols)} quantised bins")
    ax_align.set_title(f"RoIAlign: samples (aligned={aligned}, sampling={sampling_ratio})"
                       + ("" if aligned else "\nthe box is read half a pixel right and down"))
    for ax in (ax_pool, ax_align):
        _feature_grid(ax, feature_size)
    return fig


def draw_empty_box(feature_size, message: str, fig=None):
    """The two panels of draw_roi_sampling with no box in them, each crossed out and captioned with `message`
    (why there is nothing to pool). Returns the figure."""
    fig = fig or plt.figure(figsize=(9, 4.5))
    h, w = feature_size
    for ax, name in zip(fig.subplots(1, 2), ("RoIPool", "RoIAlign")):
        _feature_grid(ax, feature_size)
        ax.plot([0, w], [0, h], [0, w], [h, 0], color="tab:red", lw=1, alpha=0.4)
        ax.set_title(f"{name}: nothing to pool", color="tab:red")
    fig.suptitle(message, color="tab:red")
    return fig


def plot_ablation(ax, results: dict, metrics=("AP", "AP50", "AP75"), scale: float = 1.0):
    """Grouped bars of an ablation: results {variant name: {metric: value or (mean, spread)}} -> one group per
    metric, one bar per variant, labelled with its value; a (mean, spread) pair draws the spread as an error bar.
    scale: the top of the y axis (1 for AP in 0..1, 100 for AP points). Returns ax."""
    width = 0.8 / max(len(results), 1)
    for k, (name, values) in enumerate(results.items()):
        xs = [m + (k - (len(results) - 1) / 2) * width for m in range(len(metrics))]
        pairs = [values[m] if isinstance(values[m], (tuple, list)) else (values[m], None) for m in metrics]
        errors = [e for _, e in pairs] if all(e is not None for _, e in pairs) else None
        bars = ax.bar(xs, [v for v, _ in pairs], width, yerr=errors, capsize=3, label=name)
        ax.bar_label(bars, fmt="%.3f" if scale <= 1 else "%.1f", fontsize=7, label_type="center")
    ax.set_xticks(range(len(metrics)), [f"mask {m}" for m in metrics])
    ax.set_ylim(0, 1.05 * scale)
    ax.legend(loc="upper left", fontsize=8)
    return ax


def plot_mask_crops(fig, rows: dict, max_cols: int = 6):
    """A grid of masks in the RoI's frame: rows {name: Tensor[P, M, M] in 0..1}, one row per name, one column per
    RoI (at most max_cols). Returns the figure."""
    cols = min(max_cols, min(len(v) for v in rows.values()))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (name, masks) in enumerate(rows.items()):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(masks[c].detach().cpu().float().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        # the row's name, horizontal and left of the row, one line per comma-separated part
        axes[r][0].set_ylabel(name.replace(", ", "\n"), fontsize=8, rotation=0, ha="right", va="center")
    fig.subplots_adjust(left=0.14)  # room for the names
    return fig


def plot_paired_differences(ax, ours: dict, paper: dict, metric: str = "AP", notes: dict | None = None):
    """Horizontal bars, one pair of bars per comparison: ours {label: (mean, spread)} of the paired difference
    choice - alternative (spread drawn as an error bar) and the paper's {label: value} (absent or None: no bar, and
    the note "paper: not given" in its place). notes {label: text}: a short note written beside that comparison's
    paper bar (e.g. which of the paper's rows it is). In points; a bar right of 0 means the paper's choice did
    better. Returns ax."""
    notes = notes or {}
    labels = list(ours)
    ys = range(len(labels))
    ax.barh([y - 0.2 for y in ys], [ours[k][0] for k in labels], 0.4, xerr=[ours[k][1] for k in labels], capsize=3,
            label="ours (mean ± std over seeds)")
    known = [(y, paper[k]) for y, k in zip(ys, labels) if paper.get(k) is not None]
    ax.barh([y + 0.2 for y, _ in known], [v for _, v in known], 0.4, label="paper (COCO)", color="tab:gray")
    x0, x1 = ax.get_xlim()
    pad = 0.01 * (x1 - x0)
    for y, k in zip(ys, labels):  # the notes, just right of the paper's bar (or of 0 where it has none)
        text = notes.get(k) if paper.get(k) is not None else "paper: not given"
        if text:
            ax.text(max(paper.get(k) or 0, 0) + pad, y + 0.2, text, fontsize=7, va="center", color="dimgray")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(list(ys), labels, fontsize=8)
    if not ax.yaxis_inverted():  # (axes sharing y share the inversion: invert it once)
        ax.invert_yaxis()  # first comparison on top
    ax.set_xlabel(f"mask {metric}: choice - alternative (points)")
    ax.legend(fontsize=8, loc="center right")
    return ax
