"""Explorers for the geometry: anchors (level, sizes, ratios, stride), the Matcher's thresholds, the NMS threshold.

Built in notebooks/01_anchors.ipynb, 02_iou_matching.ipynb and 03_box_coding_nms.ipynb. Each explorer's callback
(`anchor_view`, `matching_view`, `nms_view`) is a plain function the tests call; the widgets only wire sliders to it.
"""
import ipywidgets as widgets
import torch

from minimaskrcnn.anchors import cell_anchors, grid_anchors
from minimaskrcnn.boxes import box_iou, nms
from minimaskrcnn.matching import Matcher
from minimaskrcnn.viz.geometry import draw_anchors, draw_matching, draw_nms
from minimaskrcnn.widgets.common import figure, show


def anchor_view(image, sizes: tuple[float, ...], ratios: tuple[float, ...], stride: int, fig=None):
    """Callback of the anchor explorer: the anchors of one level (every size x every ratio h / w, one stride).

    image: Tensor[3, H, W], in the frame the anchors are for (the model's resized image). The feature map of that
    level has (H // stride, W // stride) locations, each with A = len(sizes) * len(ratios) anchors.
    Returns (figure, anchors Tensor[H//stride * W//stride * A, 4]).
    """
    if stride < 1 or not sizes or not ratios or min(sizes) <= 0 or min(ratios) <= 0:
        raise ValueError(f"anchor_view: need stride >= 1 and at least one size and one ratio, all > 0; got stride "
                         f"{stride}, sizes {tuple(sizes)}, ratios {tuple(ratios)}")
    height, width = image.shape[-2:]
    feature_size = (max(1, height // stride), max(1, width // stride))
    anchors = grid_anchors(cell_anchors(tuple(sizes), tuple(ratios)), feature_size, (stride, stride))
    per_location = len(sizes) * len(ratios)
    fig = figure(fig, (4.5, 4.5))
    draw_anchors(fig.add_subplot(), anchors, per_location, image=image,
                 title=f"sizes {'/'.join(f'{s:g}' for s in sizes)}, ratios {'/'.join(f'{r:g}' for r in ratios)}, "
                       f"stride {stride}:\n{feature_size[0]}x{feature_size[1]} locations x {per_location} "
                       f"= {len(anchors)} anchors")
    return fig, anchors


def anchor_explorer(image, anchor_sizes, aspect_ratios, strides):
    """Pick a level of a model's anchor configuration, then change its sizes, ratios and stride.

    anchor_sizes / aspect_ratios: per level, as in a MaskRCNNConfig (e.g. PRESETS["tiny"]); strides: per level,
    image size // feature size of the model's FPN maps; image: Tensor[3, H, W] in the frame of those strides.
    Sizes and ratios are chosen from lists that hold the configuration's exact values (a browser snaps a slider's
    value to its steps, which would round them); the "extra size" slider, in steps of 1 px (0 = none), adds one
    free size. Picking a level restores that level's sizes, ratios and stride.
    """
    if not len(anchor_sizes) == len(aspect_ratios) == len(strides):
        raise ValueError(f"anchor_explorer: one entry per level, got {len(anchor_sizes)} sizes, "
                         f"{len(aspect_ratios)} ratios and {len(strides)} strides")
    all_sizes = sorted({float(s) for level in anchor_sizes for s in level})
    all_ratios = sorted({0.25, 0.5, 1.0, 2.0, 4.0} | {float(r) for level in aspect_ratios for r in level})
    level = widgets.Dropdown(description="level", options=[
        (f"P{i + 2}: stride {stride}, sizes {'/'.join(f'{s:g}' for s in sizes)}", i)
        for i, (sizes, stride) in enumerate(zip(anchor_sizes, strides))])
    sizes = widgets.SelectMultiple(options=[(f"{s:g}", s) for s in all_sizes], rows=5, description="sizes")
    ratios = widgets.SelectMultiple(options=[(f"{r:g}", r) for r in all_ratios], rows=5, description="ratios h/w")
    extra = widgets.FloatSlider(0, min=0, max=2 * all_sizes[-1], step=1, description="extra size")
    stride = widgets.IntSlider(strides[0], min=1, max=max(128, 2 * max(strides)), description="stride")
    out = widgets.Output()
    picking = [False]  # True while a level sets several controls: redraw once at the end

    def draw():
        chosen = tuple(sizes.value) + ((extra.value,) if extra.value > 0 else ())
        try:
            anchor_view(image, chosen, tuple(ratios.value), stride.value)
        except ValueError as error:  # nothing to draw: say why instead of a traceback or a stale picture
            print(error)

    def redraw(_=None):
        if not picking[0]:
            show(out, draw)

    def set_level(_=None):
        picking[0] = True
        i = level.value
        sizes.value = tuple(float(s) for s in anchor_sizes[i])
        ratios.value = tuple(float(r) for r in aspect_ratios[i])
        stride.value, extra.value = strides[i], 0
        picking[0] = False
        redraw()

    level.observe(set_level, "value")
    for control in (sizes, ratios, extra, stride):
        control.observe(redraw, "value")
    set_level()
    return widgets.VBox([widgets.HBox([level, stride]), widgets.HBox([sizes, ratios, extra]), out])


def matching_view(image, gt_boxes, anchors, high: float, low: float, allow_low_quality: bool, fig=None):
    """Callback of the matching explorer: label anchors: Tensor[P, 4] against gt_boxes: Tensor[G, 4] and draw them.

    Returns (figure, labels Tensor[P] from the Matcher: >= 0 matched index, -1 negative, -2 ignored).
    """
    if not 0 <= low <= high <= 1:
        raise ValueError(f"matching_view: need 0 <= low <= high <= 1, got low={low}, high={high}")
    labels = Matcher(high, low, allow_low_quality)(box_iou(gt_boxes, anchors))
    fig = figure(fig, (5, 5))
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
        show(out, lambda: matching_view(image, gt_boxes, anchors, high.value, low.value, allow.value))

    for w in (high, low, allow):
        w.observe(redraw, "value")
    redraw()
    return widgets.VBox([widgets.HBox([high, low, allow]), out])


def nms_view(boxes, scores, threshold: float, image=None, image_size=None, fig=None):
    """Callback of the NMS explorer: boxes: Tensor[N, 4] with scores: Tensor[N] before and after nms(threshold).

    Returns (figure, keep Tensor[K] int64).
    """
    keep = nms(boxes, scores, threshold)
    fig = figure(fig, (9, 4.5))
    ax_before, ax_after = fig.subplots(1, 2)
    draw_nms(ax_before, ax_after, boxes, scores, keep, image=image, image_size=image_size, threshold=threshold)
    return fig, keep


def nms_explorer(boxes, scores, image=None, image_size=None):
    """A slider for the NMS IoU threshold."""
    threshold = widgets.FloatSlider(0.5, min=0, max=1, step=0.05, description="IoU thr")
    out = widgets.Output()

    def redraw(_=None):
        show(out, lambda: nms_view(boxes, scores, threshold.value, image=image, image_size=image_size))

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
