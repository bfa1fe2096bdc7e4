"""Pictures of the second stage: sampled RoIs, per-RoI class probabilities and refined boxes, the detection
post-processing chain, the mask pipeline (target, prediction, pasting), smooth-L1 and the model's stages.

Built in notebooks/07_box_head.ipynb, 08_mask_head.ipynb, 09_losses.ipynb and 10_full_model.ipynb.

Shape glossary
    R      RoIs of one image
    K      object classes; K + 1 with the background (class 0)
    G      ground-truth instances;  D detections
    M      mask resolution of the head (28)
Boxes are absolute (x1, y1, x2, y2) floats.
"""
import numpy as np
import torch

from minimaskrcnn.viz.data import _numpy, draw_boxes, draw_instances, image_to_numpy, instance_colour


def draw_sampled_rois(ax, image, rois, labels, gt_boxes=None, max_negatives: int = 40, title: str | None = None):
    """The RoIs sampled for the box head: positives coloured by their class, a few negatives dashed grey.

    rois: Tensor[R, 4]; labels: Tensor[R] (0 = background); gt_boxes: Tensor[G, 4] drawn thick white.
    """
    ax.imshow(image_to_numpy(image), interpolation="nearest")
    labels = _numpy(labels).astype(int)
    rois = _numpy(rois)
    for j in np.flatnonzero(labels == 0)[:max_negatives]:
        draw_boxes(ax, rois[j], "0.6", lw=0.6, ls="--", alpha=0.8)
    for j in np.flatnonzero(labels > 0):
        draw_boxes(ax, rois[j], instance_colour(labels[j]), lw=0.9)
    for box in _numpy(gt_boxes) if gt_boxes is not None else []:
        draw_boxes(ax, box, "white", lw=2.0)
    ax.set_axis_off()
    ax.set_title(title or f"{int((labels > 0).sum())} positive, {int((labels == 0).sum())} negative RoIs",
                 fontsize=9)
    return ax


def draw_roi_prediction(ax_image, ax_bars, image, roi, probs, refined, class_names, gt_boxes=None):
    """One RoI: the proposal (dashed), its box refined for the most probable object class (solid), and a bar
    chart of its class probabilities. probs: Tensor[K+1]; refined: Tensor[K+1, 4] (one box per class)."""
    probs = _numpy(probs)
    best = int(np.argmax(probs[1:])) + 1
    ax_image.imshow(image_to_numpy(image), interpolation="nearest")
    for box in _numpy(gt_boxes) if gt_boxes is not None else []:
        draw_boxes(ax_image, box, "white", lw=0.8, alpha=0.7)
    draw_boxes(ax_image, _numpy(roi), "yellow", lw=1.5, ls="--")
    draw_boxes(ax_image, _numpy(refined)[best], instance_colour(best), lw=2.0)
    ax_image.set_axis_off()
    ax_image.set_title(f"proposal (dashed) -> refined as '{class_names[best]}'", fontsize=9)
    colours = ["0.5"] + [instance_colour(k) for k in range(1, len(probs))]
    ax_bars.bar(range(len(probs)), probs, color=colours)
    ax_bars.set_xticks(range(len(probs)), class_names, rotation=30, fontsize=8)
    ax_bars.set_ylim(0, 1)
    ax_bars.set_title("softmax over K + 1 classes", fontsize=9)
    return ax_image, ax_bars


def plot_chain(fig, image, steps, class_names=None, cols: int = 4):
    """Small multiples of the post-processing chain. steps: list of (title, boxes Tensor[n, 4], labels Tensor[n]
    or None, scores Tensor[n] or None); every box is drawn (no score threshold)."""
    rows = (len(steps) + cols - 1) // cols
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (title, boxes, labels, scores) in zip(axes, steps):
        ax.imshow(image_to_numpy(image), interpolation="nearest")
        labels_np = _numpy(labels).astype(int) if labels is not None else None
        boxes_np = _numpy(boxes)
        alpha = 1.0 if len(boxes_np) < 60 else 0.35
        for j, box in enumerate(boxes_np[:600]):
            colour = instance_colour(labels_np[j]) if labels_np is not None else "yellow"
            draw_boxes(ax, box, colour, lw=0.8, alpha=alpha)
        ax.set_title(f"{title}\n{len(boxes_np)} boxes", fontsize=8)
        ax.set_axis_off()
    for ax in axes[len(steps):]:
        ax.set_axis_off()
    return fig


def plot_mask_pipeline(fig, image, gt_mask, box, target, prediction, pasted, title: str | None = None):
    """Four panels for one instance: the ground-truth mask with the RoI, the M x M target cropped from it, the
    head's M x M prediction (a probability for the instance's class), and the prediction pasted into the image.

    gt_mask / pasted: Tensor[H, W]; box: Tensor[4]; target / prediction: Tensor[M, M]."""
    axes = fig.subplots(1, 4)
    axes[0].imshow(image_to_numpy(image), interpolation="nearest")
    axes[0].imshow(_numpy(gt_mask), alpha=0.45, cmap="Reds", vmin=0, vmax=1, interpolation="nearest")
    draw_boxes(axes[0], _numpy(box), "yellow", lw=1.5)
    axes[0].set_title("GT mask + RoI", fontsize=9)
    for ax, data, name in ((axes[1], target, "target"), (axes[2], prediction, "prediction")):
        array = _numpy(data)
        ax.imshow(array, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{name} {array.shape[0]}x{array.shape[1]}", fontsize=9)
    draw_instances(axes[3], image, masks=_numpy(pasted)[None], labels=None, show_labels=False,
                   title="pasted (> 0.5)")
    draw_boxes(axes[3], _numpy(box), "yellow", lw=1.0, ls="--")
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_smooth_l1(ax, betas=(0.0, 1 / 9, 0.5, 1.0), span: float = 2.0):
    """smooth-L1(x) for several beta (beta = 0 is plain L1), and the squared error for comparison."""
    x = torch.linspace(-span, span, 401)
    for beta in betas:
        y = torch.where(x.abs() < beta, 0.5 * x**2 / max(beta, 1e-12), x.abs() - 0.5 * beta)
        ax.plot(x, y, label=f"beta = {beta:.3g}")
    ax.plot(x, 0.5 * x**2, "k:", label="0.5 x² (L2)")
    ax.set_ylim(0, span)
    ax.set_xlabel("prediction - target (a box delta)")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    return ax


def plot_loss_bars(ax, columns: dict):
    """Grouped bars: columns {column name: {loss name: value}} (e.g. "at init", "after 40 steps")."""
    names = list(next(iter(columns.values())))
    width = 0.8 / len(columns)
    for i, (column, values) in enumerate(columns.items()):
        ax.bar(np.arange(len(names)) + i * width, [values[n] for n in names], width, label=column)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, [n.removeprefix("loss_") for n in names], fontsize=8)
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    return ax


STAGES = ("anchors", "rpn targets", "proposals", "sampled rois", "class probabilities", "detections", "masks")


def draw_stage(ax, stages: dict, stage: str, class_names, original_image=None, max_boxes: int = 60, level: int = 0):
    """One stage of MaskRCNN.inspect(image, target) on an Axes (stage one of STAGES; level picks the FPN level
    of the anchors; original_image: the image given to inspect, under the final masks)."""
    if stage not in STAGES:
        raise ValueError(f"draw_stage: unknown stage {stage!r}; choose one of {STAGES}")
    image = stages["image"]
    ax.imshow(image_to_numpy(image), interpolation="nearest")
    if stage == "anchors":
        anchors = stages["anchors"][level]
        cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
        xs, ys = cx.unique(), cy.unique()
        xs, ys = xs[len(xs) // 8::max(len(xs) // 4, 1)], ys[len(ys) // 8::max(len(ys) // 4, 1)]  # ~4 x 4 locations
        shown = anchors[torch.isin(cx, xs) & torch.isin(cy, ys)]
        for box in _numpy(shown):
            draw_boxes(ax, box, "cyan", lw=0.7, alpha=0.8)
        title = f"anchors, level {level}: {len(anchors)} ({len(shown)} at {len(xs) * len(ys)} locations drawn)"
    elif stage == "rpn targets":
        anchors, labels = torch.cat(stages["anchors"]), stages["anchor_labels"]
        for box in _numpy(anchors[labels == 1]):
            draw_boxes(ax, box, "lime", lw=0.8)
        title = f"RPN targets: {int((labels == 1).sum())} positive, {int((labels == 0).sum())} negative anchors"
    elif stage == "proposals":
        for box in _numpy(stages["proposals"][:max_boxes]):
            draw_boxes(ax, box, "yellow", lw=0.6, alpha=0.7)
        title = f"proposals: {len(stages['proposals'])} (best {min(max_boxes, len(stages['proposals']))} drawn)"
    elif stage == "sampled rois":
        draw_sampled_rois(ax, image, stages["sampled_rois"], stages["sampled_labels"], max_negatives=max_boxes // 2)
        return ax
    elif stage == "class probabilities":
        probs = stages["class_probs"]
        score, label = probs[:, 1:].max(dim=1)
        order = score.argsort(descending=True)[:max_boxes // 3]
        for j in order.tolist():
            draw_boxes(ax, stages["proposals"][j], instance_colour(int(label[j]) + 1), lw=0.4 + 2 * float(score[j]),
                 alpha=float(score[j]) ** 0.5)
        title = "proposals coloured by best class, width = probability"
    elif stage == "detections":
        det = stages["detections"]
        draw_instances(ax, image, det["boxes"], det["labels"], det["scores"], class_names=class_names,
                       score_threshold=0.5)
        title = f"detections: {len(det['boxes'])} (score >= 0.5 drawn)"
    else:
        result = stages["result"]
        draw_instances(ax, original_image if original_image is not None else image, result["boxes"],
                       result["labels"], result["scores"], result["masks"], class_names, score_threshold=0.5)
        title = "masks pasted in the original image (score >= 0.5)"
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    return ax
