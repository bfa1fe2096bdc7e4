"""The RoI widget's callback draws RoIPool's bins and RoIAlign's sample points."""
import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from minimaskrcnn.roi_ops import roi_align_sample_points, roi_pool_bins  # noqa: E402
from minimaskrcnn.widgets.roi import roi_explorer, roi_view  # noqa: E402


def test_roi_view_draws_bins_and_samples():
    fig = roi_view(1.3, 0.8, 6.1, 5.4, aligned=False, sampling_ratio=2, output_size=2)
    pool_ax, align_ax = fig.axes
    assert len(pool_ax.patches) == 4  # 2 x 2 bins
    assert len(align_ax.lines) == 16  # (2 bins x 2 samples) per axis -> 4 x 4 points


def test_roi_view_rejects_flipped_box():
    with pytest.raises(ValueError, match="x2 < x1"):
        roi_view(5, 1, 2, 3)


def test_geometry_helpers():
    rows, cols = roi_pool_bins(torch.tensor([0.0, 0.0, 4.0, 4.0]), 2)
    assert rows.tolist() == [[0, 3], [2, 5]] and cols.tolist() == [[0, 3], [2, 5]]
    ys, xs, vy, vx = roi_align_sample_points(torch.tensor([0.0, 0.0, 4.0, 4.0]), 1, sampling_ratio=2)
    assert ys.flatten().tolist() == [1.0, 3.0] and bool(vy.all())


def test_explorer_builds():
    assert roi_explorer() is not None


def test_ablation_pictures():
    import matplotlib.pyplot as plt

    from minimaskrcnn.viz.roi import plot_ablation, plot_mask_crops

    fig, ax = plt.subplots()
    plot_ablation(ax, {"RoIPool": {"AP": 0.3, "AP50": 0.9, "AP75": 0.2}, "RoIAlign": {"AP": 0.4, "AP50": 0.9, "AP75": 0.3}})
    assert len(ax.patches) == 6  # 2 variants x 3 metrics
    fig = plot_mask_crops(plt.figure(), {"truth": torch.rand(8, 28, 28), "pred": torch.rand(8, 28, 28)}, max_cols=5)
    assert len(fig.axes) == 10
    plt.close("all")
