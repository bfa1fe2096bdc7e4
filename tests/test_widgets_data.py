"""The dataset browser's callback (widgets.data.sample_view) draws what the toggles ask for."""
import matplotlib.pyplot as plt
import pytest
from matplotlib.patches import Rectangle

from minimaskrcnn.data import CocoDataset, make_shapes
from minimaskrcnn.widgets.data import dataset_browser, sample_view


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    return CocoDataset(out / "images", make_shapes(out, 3, image_size=64, seed=1))


def _boxes(fig):
    return [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]


def test_sample_view_draws_every_instance(dataset):
    _, target = dataset[1]
    n = len(target["labels"])
    fig = sample_view(dataset, 1)
    ax = fig.axes[0]
    assert ax.get_title() == f"index 1 (image id {target['image_id']}): {n} instance(s)"
    assert len(_boxes(fig)) == n
    names = {dataset.class_names[label] for label in target["labels"].tolist()}
    assert {t.get_text() for t in ax.texts} == names
    plt.close(fig)


def test_sample_view_toggles(dataset):
    fig = sample_view(dataset, 0, show_boxes=False, show_masks=True, show_labels=False)
    assert _boxes(fig) == [] and len(fig.axes[0].texts) == 0
    with_masks = fig.axes[0].images[0].get_array().copy()
    sample_view(dataset, 0, show_boxes=True, show_masks=False, show_labels=True, fig=fig)  # redraw into the same figure
    assert len(fig.axes) == 1 and len(_boxes(fig)) == len(dataset[0][1]["labels"])
    without_masks = fig.axes[0].images[0].get_array()
    assert (with_masks != without_masks).any()  # the translucent masks changed the pixels
    plt.close(fig)


def test_sample_view_rejects_bad_index(dataset):
    with pytest.raises(ValueError, match="index 3 outside 0..2"):
        sample_view(dataset, 3)


def test_browser_slider_and_title_agree(dataset):
    """The slider holds a dataset index; the picture it draws names that index and the image id of that item."""
    plt.close("all")
    browser = dataset_browser(dataset)
    slider = browser.children[0].children[0]
    assert (slider.min, slider.max, slider.description) == (0, 2, "index")
    for index in (2, 1):
        slider.value = index  # what moving the slider in a browser does: the callback redraws
        image_id = dataset[index][1]["image_id"]
        assert image_id != index  # ids start at 1 here, so a title showing only the id would disagree
        assert plt.gcf().axes[0].get_title().startswith(f"index {index} (image id {image_id}):")
    plt.close("all")


def test_draw_instances_accepts_predictions_without_boxes():
    """draw_instances (shared by every notebook) takes (N, 1, H, W) probabilities, scores and a threshold."""
    import torch

    from minimaskrcnn.viz.data import draw_instances

    masks = torch.zeros(2, 1, 10, 12)
    masks[0, 0, 2:5, 3:7] = 0.9
    masks[1, 0, 6:9, 1:4] = 0.8
    fig, ax = plt.subplots()
    draw_instances(ax, torch.zeros(3, 10, 12), labels=torch.tensor([1, 2]), scores=torch.tensor([0.9, 0.3]),
                   masks=masks, class_names=["background", "a", "b"], score_threshold=0.5)
    assert [t.get_text() for t in ax.texts] == ["a 0.90"] and ax.texts[0].get_position() == (3, 2)
    drawn = ax.images[0].get_array()
    assert drawn[3, 4].sum() > 0 and drawn[7, 2].sum() == 0  # only the instance above the threshold is filled
    plt.close(fig)


def test_draw_instances_labels_do_not_overlap_and_stay_inside():
    """Detections crowded on one spot (and one at the top edge) get labels that neither overlap nor leave the axes."""
    import torch

    from minimaskrcnn.viz.data import draw_instances

    boxes = torch.tensor([[0.0, 0.0, 60, 50], [40, 40, 90, 90], [42, 41, 88, 92], [45, 43, 95, 95], [41, 45, 80, 99]])
    fig, ax = plt.subplots(figsize=(4, 4))
    draw_instances(ax, torch.zeros(3, 128, 128), boxes, torch.tensor([1, 2, 2, 3, 1]), torch.rand(5),
                   class_names=["background", "circle", "triangle", "square"])
    fig.canvas.draw()  # lays out the label backgrounds
    renderer = fig.canvas.get_renderer()
    extents = [t.get_bbox_patch().get_window_extent(renderer) for t in ax.texts]
    frame = ax.get_window_extent(renderer)
    assert len(extents) == 5
    assert all(frame.x0 <= e.x0 and e.x1 <= frame.x1 + 1 and frame.y0 <= e.y0 and e.y1 <= frame.y1 + 1 for e in extents)
    assert not any(a.overlaps(b) for i, a in enumerate(extents) for b in extents[i + 1:])
    plt.close(fig)
