"""Pictures of training: loss and learning-rate curves, evaluation history, precision-recall curves, predictions next
to the ground truth.

Built in notebooks/11_train_on_gpu.ipynb.

Shape glossary
    D      detections (or ground-truth instances) of one image
    H, W   image height and width
    T      IoU thresholds of COCO AP (0.50, 0.55, ..., 0.95);  R recall points (0, 0.01, ..., 1)
    K      object classes;  A area ranges (all, small, medium, large);  M max-detections settings (1, 10, 100)
"""
import matplotlib
import numpy as np
from matplotlib.figure import Figure

from minimaskrcnn.evaluation import IOU_NAMES
from minimaskrcnn.viz.data import draw_instances

LOSS_KEYS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")


def plot_history(records: list[dict], fig=None):
    """Loss curves (total and the five terms, log scale), learning rate, and mask/box AP when evaluated.

    records: the metrics.jsonl records written by engine.train. Draws into `fig` (a new Figure when None).
    """
    fig = fig if fig is not None else Figure(figsize=(10, 3.6))
    fig.clear()
    losses = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    ax_loss, ax_lr, ax_ap = fig.subplots(1, 3)
    steps = [r["step"] for r in losses]
    ax_loss.plot(steps, [r["loss"] for r in losses], color="black", lw=2, label="total")
    for key in LOSS_KEYS:
        if losses and key in losses[0]:
            ax_loss.plot(steps, [r[key] for r in losses], lw=1, label=key.removeprefix("loss_"))
    if losses:
        ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=7)
    ax_loss.set(title="training losses", xlabel="step")
    ax_lr.plot(steps, [r["lr"] for r in losses], color="tab:purple")
    ax_lr.set(title="learning rate", xlabel="step")
    for iou_type, color in (("bbox", "tab:blue"), ("segm", "tab:red")):
        for metric, style in (("AP", "o-"), ("AP50", "s--")):
            pts = [(r["step"], r["eval"][iou_type][metric]) for r in evals if iou_type in r["eval"]]
            if pts:
                ax_ap.plot(*zip(*pts), style, color=color, ms=4, label=f"{IOU_NAMES[iou_type]} {metric}")
    if evals:
        ax_ap.legend(fontsize=7)
    ax_ap.set(title="validation AP (AP@[.5:.95] and AP50)", xlabel="step", ylim=(0, 1))
    fig.tight_layout()
    return fig


def class_mean_precision(precision: np.ndarray) -> np.ndarray:
    """pycocotools' COCOeval.eval["precision"] (T, R, K, A, M), -1 where a class has no ground truth -> the
    precision at each IoU threshold and recall point averaged over the classes that have some: (T, R), for area
    "all" and the largest max-detections setting (the ones COCO's headline AP uses)."""
    p = precision[:, :, :, 0, -1]  # (T, R, K, A, M) -> (T, R, K)
    valid = p > -1
    return np.where(valid, p, 0).sum(-1) / np.maximum(valid.sum(-1), 1)  # (T, R, K) -> (T, R)


def plot_precision_recall(ax, precision: np.ndarray, iou_thresholds, recall_thresholds, title: str | None = None):
    """Precision-recall curves, one per IoU threshold (class-averaged, see class_mean_precision), from pycocotools'
    arrays: precision (T, R, K, A, M) = COCOeval.eval["precision"], iou_thresholds (T,) = params.iouThrs,
    recall_thresholds (R,) = params.recThrs. Each curve's label gives its AP, the mean of its R precision values;
    COCO's AP is the mean of the T curves' APs, AP50 and AP75 those of the curves at IoU 0.5 and 0.75."""
    curves = class_mean_precision(precision)
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(iou_thresholds)))
    for t, (iou, curve) in enumerate(zip(iou_thresholds, curves)):
        named = np.isclose(iou, (0.5, 0.75, 0.95)).any()
        ax.plot(recall_thresholds, curve, color=colours[t], lw=2 if named else 0.8,
                label=f"IoU {iou:.2f}: AP {curve.mean():.3f}" if named else None)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=title or f"precision-recall, IoU {iou_thresholds[0]:.2f} (top) to {iou_thresholds[-1]:.2f} (bottom)")
    ax.legend(fontsize=8, loc="lower left")
    return ax


_STYLE = {"mask_alpha": 0.5, "fontsize": 6}  # predictions pictures: opaque masks, small labels (many per image)


def plot_prediction_vs_truth(image, prediction: dict, target: dict, class_names, score_threshold: float = 0.5,
                             fig=None):
    """Two panels: ground truth (target {boxes, labels, masks uint8[G, H, W]}) and the detections of the model
    (prediction {boxes, labels, scores, masks float[D, 1, H, W]}) scoring at least `score_threshold`."""
    fig = fig if fig is not None else Figure(figsize=(8, 4))
    fig.clear()
    ax_gt, ax_pred = fig.subplots(1, 2)
    draw_instances(ax_gt, image, target["boxes"], target["labels"], masks=target.get("masks"), class_names=class_names,
                   **_STYLE, title=f"ground truth ({len(target['labels'])})")
    keep = prediction["scores"] >= score_threshold
    draw_instances(ax_pred, image, prediction["boxes"][keep], prediction["labels"][keep], prediction["scores"][keep],
                   prediction["masks"][keep] if "masks" in prediction else None, class_names, **_STYLE,
                   title=f"prediction, score >= {score_threshold:.2f} ({int(keep.sum())})")
    fig.tight_layout()
    return fig


def plot_prediction_grid(images, predictions, class_names, score_threshold: float = 0.5, cols: int = 4, titles=None):
    """A grid of images with their detections (the `predict` picture for several images)."""
    rows = max(1, -(-len(images) // cols))
    fig = Figure(figsize=(3 * min(cols, len(images)), 3 * rows))
    axes = np.atleast_1d(fig.subplots(rows, min(cols, len(images)))).ravel()
    for i, (ax, image, pred) in enumerate(zip(axes, images, predictions)):
        keep = pred["scores"] >= score_threshold
        draw_instances(ax, image, pred["boxes"][keep], pred["labels"][keep], pred["scores"][keep],
                       pred["masks"][keep] if "masks" in pred else None, class_names, **_STYLE,
                       title=titles[i] if titles else None)
    for ax in axes[len(images):]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig
