"""The model map (viz.model_map): shapes recorded from a real forward pass, written on the figure."""
import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402

from minimaskrcnn import build_model  # noqa: E402
from minimaskrcnn.viz.model_map import draw_model_map, map_stages, shape_text, trace_shapes  # noqa: E402


@pytest.fixture(scope="module")
def traced():
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=3, fpn_channels=16, detections_per_img=7)
    model.train()
    return model, trace_shapes(model, torch.rand(3, 64, 96))


def test_trace_shapes_follow_the_model(traced):
    model, shapes = traced
    assert model.training, "trace_shapes restores the training mode"
    assert shapes["image"] == (3, 64, 96)
    assert shapes["batch"] == (1, 3, 192, 288)  # short side 64 -> 192 (tiny min_size), 96 -> 288
    assert shapes["features"]["p2"] == (1, 16, 48, 72) and shapes["features"]["pool"] == (1, 16, 3, 5)
    assert [a[0] for a in shapes["anchors"]] == [48 * 72 * 3, 24 * 36 * 3, 12 * 18 * 3, 6 * 9 * 3, 3 * 5 * 3]
    assert shapes["objectness"][0] == (1, 3, 48, 72)
    num_proposals, num_detections = shapes["proposals"][0], shapes["boxes"][0]
    assert shapes["box_rois"] == (num_proposals, 16, 7, 7) and shapes["class_logits"] == (num_proposals, 3)
    assert shapes["box_regression"] == (num_proposals, 12) and num_detections <= 7
    assert shapes["detections"] == (num_detections, 4) and shapes["mask_logits"] == (num_detections, 3, 28, 28)
    assert shapes["masks"] == (num_detections, 1, 64, 96)  # pasted back into the original image


def test_trace_shapes_agree_with_inspect(traced):
    model, _ = traced
    image = torch.rand(3, 64, 96)
    shapes, stages = trace_shapes(model, image), model.inspect(image)
    assert shapes["features"] == {name: tuple(f.shape) for name, f in stages["features"].items()}
    assert shapes["proposals"] == tuple(stages["proposals"].shape)
    assert shapes["class_logits"] == tuple(stages["class_probs"].shape)
    assert shapes["masks"] == tuple(stages["result"]["masks"].shape)


def test_map_writes_every_shape_and_notebook(traced):
    _, shapes = traced
    fig = draw_model_map(shapes)
    texts = "\n".join(t.get_text() for t in fig.axes[0].texts)
    for name, notebook, lines in map_stages(shapes):
        assert name in texts and notebook in texts and all(line in texts for line in lines)
    for key in ("image", "batch", "proposals", "box_rois", "mask_logits", "masks"):
        assert shape_text(shapes[key]) in texts
    assert all(shape_text(shape) in texts for shape in shapes["features"].values())
    assert f"anchors ({sum(a[0] for a in shapes['anchors'])}, 4)" in texts
    assert [nb for _, nb, _ in map_stages(shapes)][2:] == ["notebook 04", "notebooks 01-03, 05", "notebook 06",
                                                           "notebooks 07 (03)", "notebook 08", "notebook 10"]
