"""Explorers for the second stage: pick a RoI (07), follow one instance's mask (08), smooth-L1's beta (09), step
through every stage of the model on one image (10).

Built in notebooks/07_box_head.ipynb (roi_explorer), 08_mask_head.ipynb (mask_explorer), 09_losses.ipynb
(smooth_l1_explorer) and 10_full_model.ipynb (stage_explorer). The callbacks `roi_view`, `mask_view`,
`smooth_l1_view` and `stage_view` are plain functions the tests call.

Shape glossary
    P      proposals (RoIs) of one image;  K + 1 classes with the background
    G      ground-truth instances;  M mask resolution (28);  H', W' the resized image
"""
import ipywidgets as widgets
import torch

from minimaskrcnn.masks import mask_targets, paste_masks_in_image
from minimaskrcnn.viz.heads import STAGES, draw_roi_prediction, draw_stage, plot_mask_pipeline, plot_smooth_l1
from minimaskrcnn.widgets.common import figure, show


# ------------------------------------------------------------------------------------------------- 07: one RoI
def roi_view(image, proposals, class_probs, refined_boxes, class_names, index: int, gt_boxes=None, fig=None):
    """Callback of the RoI explorer: proposal `index`, its refined box and its class probabilities.

    proposals: Tensor[P, 4]; class_probs: Tensor[P, K+1]; refined_boxes: Tensor[P, K+1, 4]. Returns the figure."""
    if not 0 <= index < len(proposals):
        raise ValueError(f"roi_view: index {index} outside 0..{len(proposals) - 1}")
    fig = figure(fig, (9, 3.8))
    ax_image, ax_bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    draw_roi_prediction(ax_image, ax_bars, image, proposals[index], class_probs[index], refined_boxes[index],
                        class_names, gt_boxes)
    return fig


def rois_by_confidence(class_probs) -> list[int]:
    """Indices of the RoIs, most confident first by their best object-class probability; class_probs: Tensor[P, K+1]."""
    return class_probs[:, 1:].max(dim=1).values.argsort(descending=True).tolist()


def roi_explorer(image, proposals, class_probs, refined_boxes, class_names, gt_boxes=None):
    """Slider over the proposals in rois_by_confidence order: rank 0 is roi_view(..., rois_by_confidence(...)[0])."""
    order = rois_by_confidence(class_probs)
    rank = widgets.IntSlider(0, 0, len(order) - 1, description="RoI rank")
    out = widgets.Output()

    def redraw(_=None):
        show(out, lambda: roi_view(image, proposals, class_probs, refined_boxes, class_names, order[rank.value],
                                    gt_boxes))

    rank.observe(redraw, "value")
    redraw()
    return widgets.VBox([rank, out])


# ------------------------------------------------------------------------------------- 08: one instance's mask
@torch.no_grad()
def mask_instances(model, image, target) -> dict:
    """Every stage of the mask branch for each ground-truth instance of one image, using its GT box as the RoI.

    image: Tensor[3, H, W] 0..1; target {boxes, labels, masks} -> {image Tensor[3, H', W'] (resized), boxes
    Tensor[G, 4], labels Tensor[G], gt_masks Tensor[G, H', W'], targets Tensor[G, M, M] (training targets),
    predictions Tensor[G, M, M] (sigmoid of the GT class channel), pasted Tensor[G, H', W']}.
    The image, its target and its features come from model.inspect; the masks from the heads' predict_masks, the
    step of their inference path that turns boxes and classes into masks."""
    stages = model.inspect(image, target)
    size, resized = stages["image_size"], stages["target"]
    boxes, labels, gt_masks = resized["boxes"], resized["labels"], resized["masks"]
    predictions = model.roi_heads.predict_masks(stages["features"], [boxes], [labels], [size])[0][:, 0]  # (G, M, M)
    return {
        "image": stages["image"], "boxes": boxes, "labels": labels, "gt_masks": gt_masks,
        "targets": mask_targets(gt_masks, boxes, torch.arange(len(boxes)), predictions.shape[-1]),
        "predictions": predictions,
        "pasted": paste_masks_in_image(predictions[:, None], boxes, size)[:, 0],
    }


def mask_view(data: dict, index: int, class_names, fig=None):
    """Callback of the mask explorer: GT -> target -> prediction -> pasted for instance `index` of
    mask_instances(...). Returns the figure."""
    if not 0 <= index < len(data["boxes"]):
        raise ValueError(f"mask_view: index {index} outside 0..{len(data['boxes']) - 1}")
    fig = figure(fig, (11, 3.2))
    name = class_names[int(data["labels"][index])]
    plot_mask_pipeline(fig, data["image"], data["gt_masks"][index], data["boxes"][index], data["targets"][index],
                       data["predictions"][index], data["pasted"][index], title=f"instance {index}: {name}")
    return fig


def mask_explorer(data: dict, class_names):
    """Slider over the instances of mask_instances(...)."""
    index = widgets.IntSlider(0, 0, len(data["boxes"]) - 1, description="instance")
    out = widgets.Output()

    def redraw(_=None):
        show(out, lambda: mask_view(data, index.value, class_names))

    index.observe(redraw, "value")
    redraw()
    return widgets.VBox([index, out])


# --------------------------------------------------------------------------------------------- 09: smooth-L1
def smooth_l1_view(beta: float, fig=None):
    """Callback of the smooth-L1 explorer: the loss and its gradient for one beta. Returns the figure."""
    if beta < 0:
        raise ValueError(f"smooth_l1_view: beta must be >= 0, got {beta}")
    fig = figure(fig, (9, 3.2))
    ax_loss, ax_grad = fig.subplots(1, 2)
    plot_smooth_l1(ax_loss, betas=(beta,))
    x = torch.linspace(-2, 2, 401, requires_grad=True)
    y = torch.nn.functional.smooth_l1_loss(x, torch.zeros_like(x), beta=beta, reduction="sum")
    (grad,) = torch.autograd.grad(y, x)
    ax_grad.plot(x.detach(), grad)
    ax_grad.set_title("gradient: capped at ±1, linear inside ±beta", fontsize=9)
    ax_grad.set_xlabel("prediction - target")
    return fig


def smooth_l1_explorer():
    """Slider over beta."""
    beta = widgets.FloatSlider(1 / 9, min=0.0, max=1.0, step=0.01, description="beta")
    out = widgets.Output()

    def redraw(_=None):
        show(out, lambda: smooth_l1_view(beta.value))

    beta.observe(redraw, "value")
    redraw()
    return widgets.VBox([beta, out])


# --------------------------------------------------------------------------------------------- 10: all stages
def stage_view(stages: dict, stage: str, class_names, original_image=None, level: int = 0, fig=None):
    """Callback of the stage explorer: one stage (one of viz.heads.STAGES) of MaskRCNN.inspect(image, target).
    Returns the figure."""
    fig = figure(fig, (5.5, 5.5))
    draw_stage(fig.subplots(), stages, stage, class_names, original_image=original_image, level=level)
    return fig


def stage_explorer(stages: dict, class_names, original_image=None):
    """Buttons over the stages (anchors -> ... -> masks) and a level slider for the anchors."""
    available = [s for s in STAGES if s not in ("rpn targets", "sampled rois") or "anchor_labels" in stages]
    stage = widgets.ToggleButtons(options=available, description="stage")
    level = widgets.IntSlider(0, 0, len(stages["anchors"]) - 1, description="anchor level")
    out = widgets.Output()

    def redraw(_=None):
        show(out, lambda: stage_view(stages, stage.value, class_names, original_image, level.value))

    stage.observe(redraw, "value")
    level.observe(redraw, "value")
    redraw()
    return widgets.VBox([stage, level, out])
