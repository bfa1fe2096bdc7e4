"""The heads explorers' callbacks (minimaskrcnn/widgets/heads.py) and pictures (minimaskrcnn/viz/heads.py)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from minimaskrcnn.model import build_model  # noqa: E402
from minimaskrcnn.viz.heads import STAGES, draw_sampled_rois, plot_chain, plot_loss_bars  # noqa: E402
from minimaskrcnn.widgets.heads import (mask_instances, mask_view, rois_by_confidence, roi_view,  # noqa: E402
                                        smooth_l1_view, stage_explorer, stage_view)

NAMES = ["background", "square", "circle"]


def scene():
    image = torch.full((3, 64, 64), 0.1)
    masks = torch.zeros((2, 64, 64), dtype=torch.uint8)
    masks[0, 8:28, 6:30] = 1
    masks[1, 34:58, 36:60] = 1
    image[:, masks.sum(0) > 0] = 0.8
    target = {"boxes": torch.tensor([[6.0, 8.0, 30.0, 28.0], [36.0, 34.0, 60.0, 58.0]]),
              "labels": torch.tensor([1, 2]), "masks": masks}
    return image, target


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny", len(NAMES), min_size=64, max_size=96).eval()


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_roi_view_draws_roi_and_probabilities():
    image, _ = scene()
    proposals = torch.tensor([[5.0, 5.0, 30.0, 30.0], [30.0, 30.0, 60.0, 60.0]])
    probs = torch.tensor([[0.1, 0.7, 0.2], [0.2, 0.2, 0.6]])
    refined = proposals[:, None].expand(2, 3, 4).clone()
    fig = roi_view(image, proposals, probs, refined, NAMES, 1)
    image_ax, bars_ax = fig.axes
    assert len(bars_ax.patches) == 3 and bars_ax.patches[2].get_height() == pytest.approx(0.6)
    assert "circle" in image_ax.get_title()  # refined for the most probable object class
    assert len(image_ax.patches) == 2  # proposal + refined box
    with pytest.raises(ValueError, match="index 2"):
        roi_view(image, proposals, probs, refined, NAMES, 2)


def test_mask_instances_and_view(model):
    image, target = scene()
    data = mask_instances(model, image, target)
    assert data["targets"].shape == (2, 28, 28) and data["predictions"].shape == (2, 28, 28)
    assert data["pasted"].shape == (2, 64, 64)
    # the target of a box that fits its rectangle mask exactly is (almost) all ones
    assert data["targets"][0].mean() > 0.95
    assert ((data["predictions"] >= 0) & (data["predictions"] <= 1)).all()
    assert model.training is False
    fig = mask_view(data, 1, NAMES)
    assert len(fig.axes) == 4 and "circle" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="outside"):
        mask_view(data, 5, NAMES)


def test_smooth_l1_view_gradient_capped():
    fig = smooth_l1_view(0.25)
    grad = fig.axes[1].lines[0].get_ydata()
    assert abs(grad).max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="beta"):
        smooth_l1_view(-1.0)


def test_stage_view_every_stage(model):
    image, target = scene()
    stages = model.inspect(image, target)
    for stage in STAGES:
        fig = stage_view(stages, stage, NAMES, original_image=image, level=1)
        assert fig.axes[0].get_title()
    with pytest.raises(ValueError, match="unknown stage"):
        stage_view(stages, "nope", NAMES)
    box = stage_explorer(stages, NAMES, image)
    assert list(box.children[0].options) == list(STAGES)


def test_static_pictures():
    image, target = scene()
    fig, ax = plt.subplots()
    draw_sampled_rois(ax, image, target["boxes"], torch.tensor([1, 0]), target["boxes"])
    assert ax.get_title() == "1 positive, 1 negative RoIs"
    fig = plt.figure()
    plot_chain(fig, image, [("a", target["boxes"], target["labels"], None), ("b", target["boxes"][:1], None, None)])
    assert [a.get_title() for a in fig.axes[:2]] == ["a\n2 boxes", "b\n1 boxes"]
    fig, ax = plt.subplots()
    plot_loss_bars(ax, {"x": {"loss_a": 1.0, "loss_b": 2.0}, "y": {"loss_a": 0.5, "loss_b": 0.1}})
    assert len(ax.patches) == 4


def test_rois_by_confidence_ignores_the_background():
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.0, 0.1, 0.9]])
    assert rois_by_confidence(probs) == [3, 1, 2, 0]  # RoI 0 is confident, but about the background
