"""Drawing images with their instances (boxes, labels, scores, translucent masks), and RLE pictures.

Built in notebooks/00_data.ipynb; `draw_instances` is reused by every notebook that shows boxes or masks, and
`draw_boxes` (box outlines) by every picture of the package that draws a box.

Shape glossary
    N      number of instances (ground truth or detections) in one image
    H, W   image height and width
"""
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def _numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def image_to_numpy(image) -> np.ndarray:
    """Tensor[3, H, W] (torch, channel first) or array[H, W, 3] (NumPy, channel last), float 0..1 or uint8
    -> float array[H, W, 3] in 0..1 for imshow. One channel is repeated three times."""
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
        array = array.transpose(1, 2, 0) if array.ndim == 3 else array  # (3, H, W) -> (H, W, 3)
    else:
        array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = array.astype(np.float64) / 255 if array.dtype == np.uint8 else array.astype(np.float64)
    return array.clip(0, 1)


def instance_colour(k: int) -> np.ndarray:
    """RGB in 0..1 for class (or instance) number k, from the tab10 palette."""
    return np.array(colormaps["tab10"](int(k) % 10)[:3])


def draw_boxes(ax, boxes, colours=None, labels=None, lw: float = 1.2, ls: str = "-", alpha: float = 1.0,
               legend: str | None = None):
    """Outline boxes: Tensor[N, 4] (or one box Tensor[4]; x1, y1, x2, y2) on ax, the one way the package draws a box.

    colours: a list of N colours, one colour (a name, an RGB tuple or array) for all, or None (tab10 by index);
    labels: N strings written at the top-left corners, or None; legend: the name the first box takes in ax.legend().
    """
    boxes = _numpy(boxes).reshape(-1, 4)
    for j, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        colour = colours[j] if isinstance(colours, list) else (instance_colour(j) if colours is None else colours)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=lw, ls=ls, edgecolor=colour, alpha=alpha,
                               label=legend if j == 0 else None))
        if labels is not None:
            ax.text(x1, y1, labels[j], fontsize=7, color="white", va="bottom",
                    bbox={"facecolor": colour, "alpha": 0.8, "pad": 0.5, "lw": 0})
    return ax


def draw_instances(ax, image, boxes=None, labels=None, scores=None, masks=None, class_names=None, *,
                   show_boxes: bool = True, show_masks: bool = True, show_labels: bool = True,
                   score_threshold: float | None = None, mask_alpha: float = 0.45, mask_threshold: float = 0.5,
                   colour_by: str = "label", title: str | None = None, fontsize: float = 7):
    """Draw an image and its instances on a matplotlib Axes.

    image: Tensor[3, H, W] (0..1 or uint8) or array[H, W, 3]; boxes: Tensor[N, 4] (x1, y1, x2, y2);
    labels: Tensor[N] (contiguous 1..K); scores: Tensor[N] or None; masks: Tensor[N, H, W] or Tensor[N, 1, H, W],
    0/1 or probabilities (filled translucently where > mask_threshold); class_names: list, index = label.
    score_threshold: draw only instances scoring at least this. colour_by: "label" (one colour per class) or
    "instance". Any of boxes/labels/scores/masks may be None. Returns the Axes.
    """
    canvas = image_to_numpy(image).copy()
    n = next((len(x) for x in (boxes, labels, masks, scores) if x is not None), 0)
    keep = np.ones(n, dtype=bool)
    if score_threshold is not None and scores is not None:
        keep = _numpy(scores) >= score_threshold
    label_list = _numpy(labels).astype(int).tolist() if labels is not None else [None] * n
    colours = [instance_colour(label if colour_by == "label" and label is not None else j)
               for j, label in enumerate(label_list)]
    if masks is not None and show_masks:
        mask_array = _numpy(masks).astype(np.float32)
        if mask_array.ndim == 4:
            mask_array = mask_array[:, 0]  # (N, 1, H, W) -> (N, H, W)
        for j in np.flatnonzero(keep):
            on = mask_array[j] > mask_threshold
            canvas[on] = (1 - mask_alpha) * canvas[on] + mask_alpha * colours[j]
    ax.imshow(canvas, interpolation="nearest")
    box_list = _numpy(boxes).tolist() if boxes is not None else [None] * n
    score_list = _numpy(scores).tolist() if scores is not None else [None] * n
    ax.apply_aspect()  # the axes' final place in the figure, so label extents can be measured
    renderer = RendererAgg(int(ax.figure.bbox.width), int(ax.figure.bbox.height), ax.figure.dpi)
    placed = []  # display-space extents of the labels drawn so far
    for j in np.flatnonzero(keep):
        box, label, score = box_list[j], label_list[j], score_list[j]
        if box is not None and show_boxes:
            draw_boxes(ax, box, colours[j], lw=1.3)
        if show_labels and (label is not None or score is not None):
            text = "" if label is None else (class_names[label] if class_names and label < len(class_names)
                                             else str(label))
            text += "" if score is None else f" {score:.2f}"
            if box is None:
                x, y = _mask_corner(masks, j)
                box = (x, y, x, y)  # a mask without a box: its label goes at the mask's top-left pixel
            label = ax.text(0, 0, text.strip(), fontsize=fontsize, color="white",
                            bbox={"facecolor": colours[j], "alpha": 0.8, "pad": 0.6, "lw": 0})
            placed.append(_place_label(ax, label, box, placed, renderer))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def _place_label(ax, label, box, placed: list, renderer):
    """Move `label` (a Text) to the first spot by `box` (x1, y1, x2, y2) that stays inside the axes and overlaps no
    extent in `placed`: above the top-left corner, just inside it, below the box, inside its bottom, then stepping
    down from the top inside the box. Falls back to the first spot inside the axes. Returns the label's extent."""
    x1, y1, x2, y2 = box
    label.set_position((x1, y1))
    label.set_verticalalignment("top")
    extent = label.get_window_extent(renderer)
    to_data = ax.transData.inverted()
    step = abs(to_data.transform((0, extent.height))[1] - to_data.transform((0, 0))[1])  # label height, data units
    spots = [(y1, "bottom"), (y1, "top"), (y2, "top"), (y2, "bottom")]
    spots += [(y1 + k * step, "top") for k in range(1, int((y2 - y1) / step) + 1)]
    frame = ax.get_window_extent(renderer)
    fallback = None
    for x, ha in ((x1, "left"), (x2, "right")):
        for y, va in spots:
            label.set_position((x, y))
            label.set_horizontalalignment(ha)
            label.set_verticalalignment(va)
            extent = label.get_window_extent(renderer).padded(1.5)  # with the coloured background
            inside = (frame.x0 <= extent.x0 and extent.x1 <= frame.x1
                      and frame.y0 <= extent.y0 and extent.y1 <= frame.y1)
            if inside and not any(extent.overlaps(other) for other in placed):
                return extent
            fallback = fallback or (inside and (x, y, ha, va, extent))
    x, y, ha, va, extent = fallback or (x1, y1, "left", "top", extent)
    label.set_position((x, y))
    label.set_horizontalalignment(ha)
    label.set_verticalalignment(va)
    return extent


def _mask_corner(masks, j: int):
    """(x, y) of the top-left pixel of mask j, where a label goes when there is no box."""
    if masks is None:
        return 0, 0
    mask = _numpy(masks[j])
    rows, cols = np.nonzero(mask.reshape(mask.shape[-2:]) > 0.5)  # (1, H, W) or (H, W) -> (H, W)
    return (int(cols.min()), int(rows.min())) if len(rows) else (0, 0)


def plot_samples(dataset, indices, cols: int = 4, fig=None, **draw_kwargs):
    """A grid of dataset items (image, target) with their instances; draw_kwargs go to `draw_instances`."""
    indices = list(indices)
    rows = max(1, -(-len(indices) // cols))
    fig = fig if fig is not None else Figure(figsize=(3 * cols, 3 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, i in zip(axes, indices):
        image, target = dataset[i]
        draw_instances(ax, image, target["boxes"], target["labels"], masks=target["masks"],
                       class_names=getattr(dataset, "class_names", None),
                       title=f"image id {target['image_id']}", **draw_kwargs)
    for ax in axes[len(indices):]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_rle(mask, counts, fig=None, max_runs: int = 12):
    """Explain run-length encoding: a small mask, its pixels read column by column, and the runs.

    mask: array[H, W] 0/1 (keep it tiny, e.g. 8 x 8); counts: its uncompressed RLE counts (alternating
    background/foreground run lengths, column-major, starting with background).
    """
    mask = _numpy(mask).astype(np.uint8)
    fig = fig if fig is not None else Figure(figsize=(9, 3.2))
    ax_mask, ax_flat = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2.6]})
    ax_mask.imshow(mask, cmap="gray_r", vmin=0, vmax=1.6)
    height, width = mask.shape
    for c in range(width):  # the column-major reading order
        ax_mask.annotate("", xy=(c, height - 0.6), xytext=(c, -0.4),
                         arrowprops={"arrowstyle": "->", "color": "tab:red", "alpha": 0.5})
    ax_mask.set(title=f"mask {height} x {width}, read by columns", xticks=[], yticks=[])
    flat = mask.flatten(order="F")  # column-major, as COCO
    ax_flat.imshow(flat[None], cmap="gray_r", vmin=0, vmax=1.6, aspect="auto", extent=(0, len(flat), 0, 1))
    start = 0
    for k, run in enumerate(counts[:max_runs]):
        if run:
            ax_flat.text(start + run / 2, 0.5, str(run), ha="center", va="center", fontsize=8,
                         color="tab:blue" if k % 2 == 0 else "white")
            ax_flat.axvline(start, color="tab:red", lw=0.8)
        start += run
    ax_flat.set(title=f"the {len(flat)} pixels in a row; runs = {list(counts[:max_runs])}", yticks=[],
                xlabel="pixel index (column-major)")
    fig.tight_layout()
    return fig
