"""Pictures of the geometry: anchors, IoU, matching labels, box coding and NMS.

Built in notebooks/01_anchors.ipynb, 02_iou_matching.ipynb and 03_box_coding_nms.ipynb.

Shape glossary
    P      anchors (or predictions) of one image
    G      ground-truth boxes of one image
    N      boxes in general
Boxes are (x1, y1, x2, y2) in image pixels.
"""
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.patches import Rectangle

from minimaskrcnn.boxes import box_iou
from minimaskrcnn.viz.data import _numpy, _place_label, draw_boxes, image_to_numpy, instance_colour

# Matcher labels -> colour, legend text
MATCH_COLOURS = {"positive": "#2ca02c", "ignored": "#ff7f0e", "negative": "#9a9a9a"}


def _background(ax, image=None, image_size=None):
    """Show `image` (Tensor[3, H, W] / array) or an empty white canvas of image_size (H, W)."""
    if image is not None:
        ax.imshow(image_to_numpy(image), interpolation="nearest")
    elif image_size is None:
        raise ValueError("give an image or an image_size (H, W) to draw on")
    else:
        height, width = image_size
        ax.imshow(np.ones((height, width, 3)), interpolation="nearest")


def draw_anchors(ax, anchors, num_per_location: int, image=None, image_size=None, highlight: int | None = None,
                 title: str | None = None):
    """Anchors: Tensor[L*A, 4] of one level (location-major) over an image or an empty canvas of image_size.

    Every location's centre is a dot; the A anchors of location `highlight` (default: the one nearest the image
    centre) are outlined, one colour per anchor shape.
    """
    anchors = _numpy(anchors).reshape(-1, num_per_location, 4)  # (L*A, 4) -> (L, A, 4)
    _background(ax, image, image_size)
    height, width = ax.get_images()[0].get_array().shape[:2]
    centres = (anchors[:, 0, :2] + anchors[:, 0, 2:]) / 2  # (L, 2)
    ax.plot(centres[:, 0], centres[:, 1], ".", ms=2, color="#1f77b4")
    if highlight is None:
        highlight = int(np.argmin(((centres - [width / 2, height / 2]) ** 2).sum(1)))
    draw_boxes(ax, anchors[highlight], [instance_colour(a) for a in range(num_per_location)], lw=1.6)
    ax.set_xlim(min(-0.5, anchors[highlight, :, 0].min()), max(width - 0.5, anchors[highlight, :, 2].max()))
    ax.set_ylim(max(height - 0.5, anchors[highlight, :, 3].max()), min(-0.5, anchors[highlight, :, 1].min()))
    draw_boxes(ax, [-0.5, -0.5, width - 0.5, height - 0.5], "black", lw=1, ls=":")  # the image's frame
    ax.set_title(title or f"{len(anchors)} locations x {num_per_location} anchors", fontsize=9)
    ax.set_axis_off()
    return ax


def plot_anchor_coverage(ax, object_sizes, best_iou, label: str, threshold: float = 0.7, colour=None):
    """Scatter best anchor IoU per ground-truth box against its size sqrt(w * h) (log axis), with the threshold."""
    ax.scatter(_numpy(object_sizes), _numpy(best_iou), s=8, alpha=0.6, label=label, color=colour)
    ax.axhline(threshold, color="black", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("object size sqrt(w h) [px]")
    ax.set_ylabel("best anchor IoU")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="lower right")
    return ax


def draw_iou(ax, box1, box2, title: str | None = None):
    """Two boxes (x1, y1, x2, y2), their intersection filled and their IoU in the title."""
    b1, b2 = torch.as_tensor(box1, dtype=torch.float64), torch.as_tensor(box2, dtype=torch.float64)
    iou = float(box_iou(b1[None], b2[None])[0, 0])
    lo, hi = torch.maximum(b1[:2], b2[:2]), torch.minimum(b1[2:], b2[2:])
    if (hi > lo).all():
        ax.add_patch(Rectangle(lo.tolist(), *(hi - lo).tolist(), color="#d62728", alpha=0.35, lw=0))
    draw_boxes(ax, torch.stack((b1, b2)), ["#1f77b4", "#2ca02c"], lw=2)
    both = torch.stack((b1, b2))
    ax.set_xlim(float(both[:, 0].min()) - 2, float(both[:, 2].max()) + 2)
    ax.set_ylim(float(both[:, 3].max()) + 2, float(both[:, 1].min()) - 2)
    ax.set_aspect("equal")
    ax.set_title(title or f"IoU = {iou:.3f}", fontsize=9)
    return ax


def draw_matching(ax, anchors, labels, gt_boxes, image=None, image_size=None, max_negative: int = 400,
                  title: str | None = None):
    """Anchors coloured by Matcher label (>= 0 positive, -1 negative, -2 ignored) with the ground truth on top.

    Positive and ignored anchors are outlined; negatives only as centre dots (at most max_negative of them,
    evenly spread) since there are thousands.
    """
    anchors, labels = _numpy(anchors), _numpy(labels)
    _background(ax, image, image_size)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    negative = np.flatnonzero(labels == -1)
    negative = negative[:: max(1, len(negative) // max_negative)]
    ax.plot(centres[negative, 0], centres[negative, 1], ".", ms=2, color=MATCH_COLOURS["negative"])
    draw_boxes(ax, anchors[labels == -2], MATCH_COLOURS["ignored"], lw=0.6, alpha=0.5)
    draw_boxes(ax, anchors[labels >= 0], "white", lw=3.5)  # a white halo keeps the few positives visible on top
    draw_boxes(ax, anchors[labels >= 0], MATCH_COLOURS["positive"], lw=2)
    draw_boxes(ax, gt_boxes, "black", lw=2, ls="--")
    counts = {"positive": int((labels >= 0).sum()), "ignored": int((labels == -2).sum()),
              "negative": int((labels == -1).sum())}
    for name, colour in MATCH_COLOURS.items():
        ax.plot([], [], "s", color=colour, label=f"{name} {counts[name]}")
    ax.legend(fontsize=7, loc="upper right", framealpha=0.8)
    ax.set_title(title or "anchors by Matcher label (ground truth dashed)", fontsize=9)
    ax.set_axis_off()
    return ax


def draw_box_coding(ax, anchor, target, decoded=None, image_size=None, title: str | None = None):
    """An anchor (dashed), the target box it should become, and optionally the decoded box, with centres."""
    if image_size is not None:
        _background(ax, None, image_size)
    items = [(anchor, "#1f77b4", "--", "anchor"), (target, "#2ca02c", "-", "target")]
    if decoded is not None:
        items.append((decoded, "#d62728", ":", "decoded"))
    for box, colour, ls, name in items:
        draw_boxes(ax, box, colour, lw=2, ls=ls, legend=name)
        x1, y1, x2, y2 = _numpy(box).reshape(4).tolist()
        ax.plot((x1 + x2) / 2, (y1 + y2) / 2, "+", color=colour, ms=8)
    ax.legend(fontsize=7, loc="upper right")
    ax.autoscale_view()
    ax.set_aspect("equal")
    if image_size is None:
        ax.invert_yaxis()
    ax.set_title(title or "", fontsize=9)
    return ax


def draw_nms(ax_before, ax_after, boxes, scores, keep, image=None, image_size=None, threshold=None):
    """Boxes: Tensor[N, 4] before NMS (colour = score) and the kept ones after (with scores)."""
    boxes, scores, keep = _numpy(boxes), _numpy(scores), _numpy(keep)
    cmap = colormaps["viridis"]
    for ax, idx, name in ((ax_before, np.arange(len(boxes)), "before"), (ax_after, keep, "after")):
        _background(ax, image, image_size)
        order = idx[np.argsort(scores[idx])]  # draw the best on top
        draw_boxes(ax, boxes[order], [cmap(float(s)) for s in scores[order]], lw=1.0)
        ax.set_axis_off()
        ax.set_title(f"{name} NMS: {len(idx)} boxes" + (f" (IoU > {threshold:g} suppressed)"
                                                          if threshold is not None and name == "after" else ""),
                     fontsize=9)
    ax_after.apply_aspect()  # the axes' final place, so the labels' extents can be measured
    figure = ax_after.figure
    renderer = RendererAgg(int(figure.bbox.width), int(figure.bbox.height), figure.dpi)
    placed = []  # display-space extents of the score labels drawn so far, best score first
    for j in keep[np.argsort(-scores[keep], kind="stable")]:
        label = ax_after.text(0, 0, f"{scores[j]:.2f}", fontsize=6, color="white",
                              bbox={"facecolor": "black", "alpha": 0.6, "pad": 0.3, "lw": 0})
        placed.append(_place_label(ax_after, label, boxes[j].tolist(), placed, renderer))
    return ax_before, ax_after
