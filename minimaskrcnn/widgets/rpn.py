"""Explorers for the backbone's feature maps and for the RPN's proposal filtering.

Built in notebooks/04_backbone_fpn.ipynb (feature_explorer) and notebooks/05_rpn.ipynb (proposal_explorer).
The callbacks `feature_view` and `proposals_view` are plain functions the tests call.
"""
import ipywidgets as widgets

from minimaskrcnn.rpn import filter_proposals
from minimaskrcnn.viz.data import image_to_numpy
from minimaskrcnn.viz.rpn import draw_proposals, plot_feature_map
from minimaskrcnn.widgets.common import figure, show


def feature_view(image, features: dict, level: str, channel: int, fig=None):
    """Callback of the feature explorer: the image next to channel `channel` of level `level` of
    features {name: Tensor[1, C, H_l, W_l]}. Returns the figure."""
    if level not in features:
        raise ValueError(f"feature_view: level {level!r} not in {list(features)}")
    fig = figure(fig, (8, 3.8))
    left, right = fig.subplots(1, 2)
    left.imshow(image_to_numpy(image))
    left.set_axis_off()
    left.set_title("input", fontsize=9)
    plot_feature_map(right, features[level], channel, f"{level}, channel {channel}")
    return fig


def feature_explorer(image, features: dict):
    """Dropdown over the levels and a slider over the channels of features {name: Tensor[1, C, H_l, W_l]}."""
    level = widgets.Dropdown(options=list(features), description="level")
    channel = widgets.IntSlider(0, 0, next(iter(features.values())).shape[1] - 1, description="channel")
    out = widgets.Output()

    def redraw(_=None):
        show(out, lambda: feature_view(image, features, level.value, channel.value))

    for control in (level, channel):
        control.observe(redraw, "value")
    redraw()
    return widgets.VBox([widgets.HBox([level, channel]), out])


def proposals_view(image, proposals, objectness, level_sizes, image_size, pre_nms_top_n: int, post_nms_top_n: int,
                   nms_thresh: float, gt_boxes=None, fig=None):
    """Callback of the proposal explorer, for one image; every box it counts is drawn.

    proposals: Tensor[T, 4] decoded anchors, objectness: Tensor[T] logits, level_sizes: [H_l*W_l*A],
    image_size (h, w), gt_boxes: Tensor[G, 4], all in one frame (the image's). Left: the boxes the per-level top-n
    keeps, before NMS; right: what NMS and the post-NMS top-n keep. Returns (fig, boxes drawn left Tensor[B, 4],
    boxes drawn right Tensor[P, 4]).
    """
    before, before_scores = filter_proposals(proposals[None], objectness[None], level_sizes, [image_size],
                                             pre_nms_top_n, post_nms_top_n=len(proposals), nms_thresh=1.0)
    after, after_scores = filter_proposals(proposals[None], objectness[None], level_sizes, [image_size],
                                           pre_nms_top_n, post_nms_top_n, nms_thresh)
    fig = figure(fig, (9, 4.5))
    left, right = fig.subplots(1, 2)
    draw_proposals(left, image, before[0], before_scores[0], gt_boxes,
                   title=f"before NMS: {len(before[0])} boxes (best {pre_nms_top_n} per level)")
    draw_proposals(right, image, after[0], after_scores[0], gt_boxes,
                   title=f"after NMS at IoU {nms_thresh:.2f}, best {post_nms_top_n}: {len(after[0])} proposals")
    return fig, before[0], after[0]


def proposal_explorer(image, proposals, objectness, level_sizes, image_size, gt_boxes=None, pre_nms_top_n: int = 300,
                      post_nms_top_n: int = 100, nms_thresh: float = 0.7):
    """Sliders for the pre-NMS top-n (per level), the post-NMS top-n and the NMS IoU threshold, starting at the given
    values (arguments as proposals_view's)."""
    pre = widgets.IntSlider(pre_nms_top_n, 1, max(level_sizes), step=1, description="pre-NMS n")
    post = widgets.IntSlider(post_nms_top_n, 1, 1000, step=1, description="post-NMS n")
    thresh = widgets.FloatSlider(nms_thresh, min=0.1, max=1.0, step=0.05, description="NMS IoU")
    out = widgets.Output()

    def redraw(_=None):
        show(out, lambda: proposals_view(image, proposals, objectness, level_sizes, image_size, pre.value, post.value,
                                         thresh.value, gt_boxes))

    for control in (pre, post, thresh):
        control.observe(redraw, "value")
    redraw()
    return widgets.VBox([widgets.HBox([pre, post, thresh]), out])
