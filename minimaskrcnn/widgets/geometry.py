"""Explorers for the geometry: anchors (size/ratio/level/stride), the Matcher's thresholds, the NMS threshold.

Built in notebooks/01_anchors.ipynb, 02_iou_matching.ipynb and 03_box_coding_nms.ipynb. Each explorer's callback
(`anchor_view`, `matching_view`, `nms_view`) is a plain function the tests call; the widgets only wire sliders to it.
"""
import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from minimaskrcnn.anchors import cell_anchors, grid_anchors
from minimaskrcnn.boxes import box_iou, nms
from minimaskrcnn.matching import Matcher
from minimaskrcnn.viz.geometry import draw_anchors, draw_matching, draw_nms


def _figure(fig, size):
    fig = fig if fig is not None else plt.figure(figsize=size)
    fig.clear()
    return fig


def anchor_view(image, size: float, ratios: tuple[float, ...], stride: int, fig=None):
    """Callback of the anchor explorer: the anchors of one level (one size, the given ratios h / w, a stride).

    image: Tensor[3, H, W]. The feature map of that level has (H // stride, W // stride) locations.
    Returns (figure, anchors Tensor[H//stride * W//stride * A, 4]).
    """
    if stride < 1 or size <= 0 or not ratios:
        raise ValueError(f"anchor_view: need stride >= 1, size > 0 and some ratios, got {stride}, {size}, {ratios}")
    height, width = image.shape[-2:]
    feature_size = (max(1, height // stride), max(1, width // stride))
    anchors = grid_anchors(cell_anchors((size,), tuple(ratios)), feature_size, (stride, stride))
    fig = _figure(fig, (4.5, 4.5))
    draw_anchors(fig.add_subplot(), anchors, len(ratios), image=image,
                 title=f"size {size:g}, stride {stride}: {feature_size[0]}x{feature_size[1]} locations "
                       f"x {len(ratios)} = {len(anchors)} anchors")
    return fig, anchors


def anchor_explorer(image, level_sizes=(8, 16, 32, 64, 128), level_strides=(4, 8, 16, 32, 64)):
    """Sliders for size, ratio and stride; picking a level sets size and stride to that level's configuration."""
    level = widgets.Dropdown(options=[(f"level {i} (P{i + 2})", i) for i in range(len(level_sizes))],
                             description="level")
    size = widgets.FloatLogSlider(value=level_sizes[0], base=2, min=1, max=9, step=0.25, description="size")
    ratio = widgets.FloatLogSlider(value=1.0, base=2, min=-2, max=2, step=0.25, description="ratio h/w")
    three = widgets.Checkbox(True, description="ratios (r/2, r, 2r)", indent=False)
    stride = widgets.IntSlider(level_strides[0], 2, 128, description="stride")
    out = widgets.Output()

    def redraw(_=None):
        ratios = (ratio.value / 2, ratio.value, ratio.value * 2) if three.value else (ratio.value,)
        with out:
            out.clear_output(wait=True)
            fig, _ = anchor_view(image, size.value, ratios, stride.value)
            plt.show()

    def set_level(_=None):
        size.value, stride.value = level_sizes[level.value], level_strides[level.value]

    level.observe(set_level, "value")
    for w in (size, ratio, three, stride):
        w.observe(redraw, "value")
    redraw()
    return widgets.VBox([widgets.HBox([level, three]), widgets.HBox([size, ratio, stride]), out])


def matching_view(image, gt_boxes, anchors, high: float, low: float, allow_low_quality: bool, fig=None):
    """Callback of the matching explorer: label anchors: Tensor[P, 4] against gt_boxes: Tensor[G, 4] and draw them.

    Returns (figure, labels Tensor[P] from the Matcher: >= 0 matched index, -1 negative, -2 ignored).
    """
    if not 0 <= low <= high <= 1:
        raise ValueError(f"matching_view: need 0 <= low <= high <= 1, got low={low}, high={high}")
    labels = Matcher(high, low, allow_low_quality)(box_iou(gt_boxes, anchors))
    fig = _figure(fig, (5, 5))
    draw_matching(fig.add_subplot(), anchors, labels, gt_boxes, image=image,
                  title=f"high {high:.2f}, low {low:.2f}, low-quality matches {'on' if allow_low_quality else 'off'}")
    return fig, labels


def matching_explorer(image, gt_boxes, anchors):
    """Sliders for the Matcher's two thresholds and a low-quality-matches toggle."""
    high = widgets.FloatSlider(0.7, min=0, max=1, step=0.05, description="high")
    low = widgets.FloatSlider(0.3, min=0, max=1, step=0.05, description="low")
    allow = widgets.Checkbox(True, description="low-quality matches", indent=False)
    out = widgets.Output()

    def redraw(_=None):
        low.value = min(low.value, high.value)
        with out:
            out.clear_output(wait=True)
            fig, _ = matching_view(image, gt_boxes, anchors, high.value, low.value, allow.value)
            plt.show()

    for w in (high, low, allow):
        w.observe(redraw, "value")
    redraw()
    return widgets.VBox([widgets.HBox([high, low, allow]), out])


def nms_view(boxes, scores, threshold: float, image=None, image_size=None, fig=None):
    """Callback of the NMS explorer: boxes: Tensor[N, 4] with scores: Tensor[N] before and after nms(threshold).

    Returns (figure, keep Tensor[K] int64).
    """
    keep = nms(boxes, scores, threshold)
    fig = _figure(fig, (9, 4.5))
    ax_before, ax_after = fig.subplots(1, 2)
    draw_nms(ax_before, ax_after, boxes, scores, keep, image=image, image_size=image_size, threshold=threshold)
    return fig, keep


def nms_explorer(boxes, scores, image=None, image_size=None):
    """A slider for the NMS IoU threshold."""
    threshold = widgets.FloatSlider(0.5, min=0, max=1, step=0.05, description="IoU thr")
    out = widgets.Output()

    def redraw(_=None):
        with out:
            out.clear_output(wait=True)
            fig, _ = nms_view(boxes, scores, threshold.value, image=image, image_size=image_size)
            plt.show()

    threshold.observe(redraw, "value")
    redraw()
    return widgets.VBox([threshold, out])


def cluster_detections(gt_boxes: torch.Tensor, per_box: int, jitter: float = 0.1, seed: int = 0):
    """Fake raw detections: per_box jittered copies of each gt box (std = jitter * its size), random scores.

    Returns (boxes Tensor[G*per_box, 4], scores Tensor[G*per_box]); the copies closest to the truth score highest.
    """
    g = torch.Generator().manual_seed(seed)
    gt = gt_boxes.float().repeat_interleave(per_box, dim=0)  # (G, 4) -> (G*per_box, 4)
    wh = (gt[:, 2:] - gt[:, :2]).repeat(1, 2)
    noise = torch.randn(gt.shape, generator=g) * jitter
    boxes = gt + noise * wh
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = torch.exp(-4 * noise.abs().mean(dim=1)) * (0.5 + 0.5 * torch.rand(len(gt), generator=g))
    return boxes, scores
