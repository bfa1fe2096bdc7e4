"""Train widgets: the callbacks behind the prediction browser and the live loss plot."""
import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from matplotlib.figure import Figure

from minimaskrcnn.widgets.train import LiveHistory, prediction_browser, prediction_view

CLASSES = ["background", "square", "circle"]


def sample():
    image = torch.rand(3, 32, 40)
    masks = torch.zeros(2, 32, 40, dtype=torch.uint8)
    masks[0, 2:10, 3:12] = 1
    masks[1, 15:30, 20:38] = 1
    target = {"boxes": torch.tensor([[3.0, 2, 12, 10], [20, 15, 38, 30]]), "labels": torch.tensor([1, 2]),
              "masks": masks}
    pred = {"boxes": torch.tensor([[3.0, 2, 12, 11], [20, 14, 37, 30], [0, 0, 5, 5]]),
            "labels": torch.tensor([1, 2, 1]), "scores": torch.tensor([0.9, 0.6, 0.2]),
            "masks": masks[[0, 1, 0]].float()[:, None] * 0.8}
    return image, pred, target


def test_prediction_view_filters_by_score():
    image, pred, target = sample()
    fig = prediction_view([image], [pred], [target], CLASSES, index=0, score_threshold=0.5, fig=Figure())
    gt_ax, pred_ax = fig.axes
    assert gt_ax.get_title() == "ground truth (2)"
    assert pred_ax.get_title().endswith("(2)") and len(pred_ax.patches) == 2
    fig = prediction_view([image], [pred], [target], CLASSES, index=0, score_threshold=0.1, fig=Figure())
    assert len(fig.axes[1].patches) == 3 and "circle 0.60" in [t.get_text() for t in fig.axes[1].texts]
    with pytest.raises(ValueError, match="index 1"):
        prediction_view([image], [pred], [target], CLASSES, index=1)
    assert prediction_browser([image], [pred], [target], CLASSES).children


def test_live_history_redraws_with_records(monkeypatch):
    live = LiveHistory(every=2)
    draws = []
    monkeypatch.setattr(live, "draw", lambda: draws.append(len(live.records)))
    for step in (1, 2, 3):
        live({"step": step, "lr": 0.01, "loss": 1.0 / step, "loss_mask": 0.5 / step})
    live({"step": 3, "eval": {"segm": {"AP": 0.4}}})
    assert draws == [2, 4] and len(live.records) == 4


def test_history_plot_draws_losses_lr_and_ap():
    from minimaskrcnn.viz.train import plot_history

    records = [{"step": s, "lr": 0.01 * s, "loss": 2.0 / s, "loss_mask": 1.0 / s} for s in (1, 2, 3)]
    for step, ap in ((2, 0.2), (3, 0.4)):  # evaluations during training: a curve per iou type and metric
        records.append({"step": step, "eval": {"bbox": {"AP": ap - 0.1, "AP50": ap + 0.3},
                                               "segm": {"AP": ap, "AP50": ap + 0.4}}})
    loss_ax, lr_ax, ap_ax = plot_history(records, fig=Figure()).axes
    assert [line.get_label() for line in loss_ax.lines] == ["total", "mask"]
    assert list(lr_ax.lines[0].get_ydata()) == pytest.approx([0.01, 0.02, 0.03])
    curves = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ap_ax.lines}
    assert curves == {"box AP": ([2, 3], pytest.approx([0.1, 0.3])), "box AP50": ([2, 3], pytest.approx([0.5, 0.7])),
                      "mask AP": ([2, 3], pytest.approx([0.2, 0.4])), "mask AP50": ([2, 3], pytest.approx([0.6, 0.8]))}
    LiveHistory(every=1).update(records[0])  # a real redraw into the Output widget


def test_precision_recall_curves_from_pycocotools_arrays():
    import numpy as np

    from minimaskrcnn.viz.train import class_mean_precision, plot_precision_recall

    iou_thresholds, recall_thresholds = np.linspace(0.5, 0.95, 10), np.linspace(0, 1, 101)
    precision = np.zeros((10, 101, 3, 4, 3))  # (T, R, K, A, M)
    precision[:, :51, 0] = 1.0  # class 0: precision 1 up to recall 0.5, then nothing found
    precision[:, :, 1] = 0.5  # class 1: precision 0.5 everywhere
    precision[:, :, 2] = -1  # class 2: no ground truth, left out of the mean
    precision[5:, :, 0, 0, -1] = 0.0  # class 0 is never localised at IoU >= 0.75
    curves = class_mean_precision(precision)
    assert curves.shape == (10, 101)
    assert curves[0, 0] == 0.75 and curves[0, 100] == 0.25 and curves[9, 0] == 0.25
    ax = plot_precision_recall(Figure().subplots(), precision, iou_thresholds, recall_thresholds)
    assert len(ax.lines) == 10
    ap50 = (51 * 1.0 + 101 * 0.5) / 101 / 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        f"IoU 0.50: AP {ap50:.3f}", "IoU 0.75: AP 0.250", "IoU 0.95: AP 0.250"]


def test_prediction_browser_starts_at_the_given_threshold():
    image, pred, target = sample()
    browser = prediction_browser([image], [pred], [target], CLASSES, score_threshold=0.15)
    assert browser.children[0].children[1].value == 0.15
