"""The RoI widget's callback draws RoIPool's bins and RoIAlign's sample points; an empty box gives a message."""
import matplotlib
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from minimaskrcnn.roi_ops import roi_align_sample_points, roi_pool_bins  # noqa: E402
from minimaskrcnn.widgets.roi import START, box_problem, roi_explorer, roi_view  # noqa: E402


def test_roi_view_draws_bins_and_samples():
    fig = roi_view(1.3, 0.8, 6.1, 5.4, aligned=False, sampling_ratio=2, output_size=2)
    pool_ax, align_ax = fig.axes
    assert len(pool_ax.patches) == 4  # 2 x 2 bins
    assert len(align_ax.lines) == 16  # (2 bins x 2 samples) per axis -> 4 x 4 points


def test_empty_box_gives_a_message_and_a_crossed_out_picture():
    assert box_problem(1, 1, 2, 2) == ""
    assert box_problem(5, 1, 2, 3) == "empty box: x2 = 2 is not right of / below x1 = 5"
    assert "y2 = 1 " in box_problem(1, 1, 2, 1) and "x2" not in box_problem(1, 1, 2, 1)  # zero height
    fig = roi_view(5, 1, 2, 3)
    assert fig._suptitle.get_text() == box_problem(5, 1, 2, 3)
    for ax in fig.axes:
        assert not ax.patches and ax.get_title().endswith("nothing to pool")  # no bins, no samples: a cleared picture
    plt.close("all")


def test_geometry_helpers():
    rows, cols = roi_pool_bins(torch.tensor([0.0, 0.0, 4.0, 4.0]), 2)
    assert rows.tolist() == [[0, 3], [2, 5]] and cols.tolist() == [[0, 3], [2, 5]]
    ys, xs, vy, vx = roi_align_sample_points(torch.tensor([0.0, 0.0, 4.0, 4.0]), 1, sampling_ratio=2)
    assert ys.flatten().tolist() == [1.0, 3.0] and bool(vy.all())


def test_explorer_labels_its_sliders_and_reports_an_empty_box():
    explorer = roi_explorer()
    corners = {c.description: c for row in explorer.children[:2] for c in row.children}
    assert set(corners) == {"x1 (left)", "y1 (top)", "x2 (right)", "y2 (bottom)"}
    assert corners["x1 (left)"].value == START["x1"] and corners["y2 (bottom)"].value == START["y2"]
    message = explorer.children[3]
    assert message.value == ""
    corners["x1 (left)"].value = 7.0  # past x2 = 6.1
    assert "empty box: x2 = 6.1 is not right of / below x1 = 7" in message.value
    corners["x2 (right)"].value = 7.5
    assert message.value == ""
    plt.close("all")


def test_start_picture():
    fig = roi_view(**START)
    pool_ax, align_ax = fig.axes
    assert len(pool_ax.patches) == START["output_size"] ** 2
    plt.close("all")


def test_ablation_pictures():
    from minimaskrcnn.viz.roi import plot_ablation, plot_mask_crops

    fig, ax = plt.subplots()
    plot_ablation(ax, {"RoIPool": {"AP": 0.3, "AP50": 0.9, "AP75": 0.2}, "RoIAlign": {"AP": 0.4, "AP50": 0.9, "AP75": 0.3}})
    assert len(ax.patches) == 6  # 2 variants x 3 metrics
    fig = plot_mask_crops(plt.figure(), {"truth": torch.rand(8, 28, 28), "pred": torch.rand(8, 28, 28)}, max_cols=5)
    assert len(fig.axes) == 10
    plt.close("all")
