"""Pictures of the backbone's features and of the RPN: feature maps, anchor labels, proposals, losses, recall curves.

Built in notebooks/04_backbone_fpn.ipynb and notebooks/05_rpn.ipynb. Model code never imports this module.

Shape glossary
    C, H_l, W_l   channels and size of one feature level
    T             anchors of one image;  P proposals;  G ground-truth boxes
"""
import torch
from matplotlib import colormaps
from matplotlib.collections import PolyCollection
from matplotlib.lines import Line2D

from minimaskrcnn.viz.data import draw_boxes, image_to_numpy

POSITIVE, NEGATIVE, IGNORED, GT = "#2ca02c", "#d62728", "#ffbf00", "white"


def plot_feature_map(ax, feature, channel: int, title: str | None = None):
    """One channel of a feature map. feature: Tensor[C, H_l, W_l] (or [1, C, H_l, W_l]). Returns the AxesImage."""
    feature = feature[0] if feature.dim() == 4 else feature
    if not 0 <= channel < feature.shape[0]:
        raise ValueError(f"plot_feature_map: channel {channel} outside 0..{feature.shape[0] - 1}")
    shown = ax.imshow(feature[channel].detach().cpu().numpy(), cmap="viridis", interpolation="nearest")
    ax.set_title(title or f"channel {channel}  ({feature.shape[1]} x {feature.shape[2]})", fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
    return shown


def plot_levels(fig, image, features: dict, channel: int = 0):
    """The image and one channel of every level of features {name: Tensor[1, C, H_l, W_l]}, side by side."""
    axes = fig.subplots(1, len(features) + 1)
    axes[0].imshow(image_to_numpy(image))
    axes[0].set_title("input", fontsize=9)
    axes[0].set_axis_off()
    for ax, (name, feature) in zip(axes[1:], features.items()):
        plot_feature_map(ax, feature, channel % feature.shape[1], f"{name} {tuple(feature.shape[-2:])}")
    return axes


def draw_anchor_labels(ax, image, anchors, labels, gt_boxes=None, max_negatives: int = 40, seed: int = 0):
    """Image with its anchors coloured by training label: positives (green boxes), ignored (amber boxes),
    and a random subset of max_negatives negatives (red, dashed). anchors: Tensor[T, 4], labels: Tensor[T]
    (1 / 0 / -1); gt_boxes: Tensor[G, 4] drawn thick white, under the positives. A legend below the image names
    the colours."""
    ax.imshow(image_to_numpy(image))
    labels = torch.as_tensor(labels)
    negatives = torch.where(labels == 0)[0]
    pick = torch.randperm(len(negatives), generator=torch.Generator().manual_seed(seed))[:max_negatives]
    draw_boxes(ax, anchors[negatives[pick]], NEGATIVE, lw=0.6, alpha=0.6, ls="--")
    draw_boxes(ax, anchors[labels == -1], IGNORED, lw=0.6, alpha=0.6)
    if gt_boxes is not None:
        draw_boxes(ax, gt_boxes, GT, lw=3.0)
    draw_boxes(ax, anchors[labels == 1], POSITIVE, lw=1.6)  # on top: the few positives must stay visible
    counts = [(labels == v).sum().item() for v in (1, 0, -1)]
    handles = [Line2D([], [], color=POSITIVE, lw=1.6, label=f"positive ({counts[0]})"),
               Line2D([], [], color=IGNORED, lw=1.2, label=f"ignored ({counts[2]})"),
               Line2D([], [], color=NEGATIVE, lw=1.0, ls="--", label=f"negative ({len(pick)} of {counts[1]} shown)")]
    if gt_boxes is not None:
        handles.append(Line2D([], [], color=GT, lw=3.0, label="ground truth"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=7,
              facecolor="0.55", framealpha=1.0)  # grey, so that the white ground-truth line shows
    ax.set_title(f"{counts[0]} positive, {counts[1]} negative, {counts[2]} ignored anchors", fontsize=9)
    ax.set_axis_off()
    return ax


def draw_proposals(ax, image, boxes, scores=None, gt_boxes=None, max_boxes: int | None = None,
                   title: str | None = None):
    """Image with the proposals boxes: Tensor[P, 4] (the first max_boxes of them; all when None), coloured by score
    (bright and opaque = high; the best drawn on top), and gt_boxes: Tensor[G, 4] dotted white. The proposals are one
    PolyCollection (thousands draw fast), ax.collections[0], with one path per box drawn."""
    ax.imshow(image_to_numpy(image))
    boxes = torch.as_tensor(boxes)[:max_boxes].detach().cpu()
    scores = torch.ones(len(boxes)) if scores is None else torch.as_tensor(scores)[:max_boxes].detach().cpu().float()
    order = torch.argsort(scores)  # lowest first, so the best boxes end on top
    boxes, scores = boxes[order], scores[order]
    x1, y1, x2, y2 = boxes.unbind(-1)
    corners = torch.stack((x1, y1, x2, y1, x2, y2, x1, y2), dim=-1).reshape(-1, 4, 2)  # (P, 4) -> (P, 4 corners, 2)
    colours = colormaps["plasma"](scores.numpy())
    colours[:, 3] = 0.1 + 0.9 * scores.numpy()  # low scores nearly transparent
    ax.add_collection(PolyCollection(corners.numpy(), facecolors="none", edgecolors=colours, linewidths=0.9))
    if gt_boxes is not None:
        draw_boxes(ax, gt_boxes, GT, lw=2.0, ls=":")
    ax.set_title(title or f"{len(boxes)} proposals", fontsize=9)
    ax.set_axis_off()
    return ax


def plot_recall_curve(ax, counts, recalls: dict):
    """Recall against the number of proposals per image. recalls: {label: [recall for each of counts]}."""
    for label, values in recalls.items():
        ax.plot(counts, values, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("proposals per image")
    ax.set_ylabel("recall of ground-truth boxes")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def plot_losses(ax, history: list[dict]):
    """Training curves, log scale: history is one {loss name: value} per step."""
    for key in history[0]:
        ax.plot([h[key] for h in history], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax
