"""The geometry explorers' callbacks (anchor_view, matching_view, nms_view) and the viz functions behind them."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from minimaskrcnn import build_model  # noqa: E402
from minimaskrcnn.anchors import best_anchor_iou, grid_anchors, cell_anchors  # noqa: E402
from minimaskrcnn.boxes import box_iou, nms  # noqa: E402
from minimaskrcnn.model import PRESETS  # noqa: E402
from minimaskrcnn.viz.geometry import draw_box_coding, draw_iou, plot_anchor_coverage  # noqa: E402
from minimaskrcnn.widgets.geometry import (  # noqa: E402
    anchor_explorer,
    anchor_view,
    cluster_detections,
    matching_explorer,
    matching_view,
    nms_explorer,
    nms_view,
)

IMAGE = torch.rand(3, 64, 96)
GT = torch.tensor([[10.0, 10, 40, 30], [50, 20, 90, 60]])


def test_anchor_view_counts_and_draws():
    fig, anchors = anchor_view(IMAGE, (16,), (0.5, 1.0, 2.0), 8)
    assert anchors.shape == (8 * 12 * 3, 4)
    ax = fig.axes[0]
    assert len(ax.patches) == 3 + 1  # the highlighted location's 3 anchors + the image frame
    assert "8x12 locations" in ax.get_title()
    plt.close(fig)
    fig, anchors = anchor_view(IMAGE, (12, 15, 19), (1.0,), 32, fig=plt.figure())
    assert anchors.shape == (2 * 3 * 3, 4) and len(fig.axes) == 1
    cell = cell_anchors((12, 15, 19), (1.0,))  # the first location sits at (0, 0), the next one stride px right
    assert torch.equal(anchors[:3], cell) and torch.equal(anchors[3:6], cell + torch.tensor([32.0, 0, 32, 0]))
    assert fig.axes[0].get_title().startswith("sizes 12/15/19, ratios 1, stride 32")
    plt.close(fig)
    with pytest.raises(ValueError, match="stride"):
        anchor_view(IMAGE, (16,), (1.0,), 0)
    with pytest.raises(ValueError, match="at least one size"):
        anchor_view(IMAGE, (), (1.0,), 8)


def _on_grid(slider, value):
    steps = (value - slider.min) / slider.step
    return slider.min <= value <= slider.max and steps == round(steps)


def test_anchor_explorer_levels_give_the_presets_exact_sizes(capsys):
    """Picking a level holds exactly the tiny preset's sizes (no rounding by a slider's steps), its ratio and the
    stride of the model's FPN map; the free size slider's grid contains every preset size."""
    cfg = PRESETS["tiny"]
    model = build_model("tiny", num_classes=2)
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, cfg.min_size, cfg.min_size))
    strides = [cfg.min_size // f.shape[-1] for f in features.values()]
    image = torch.rand(3, cfg.min_size, cfg.min_size)
    plt.close("all")
    explorer = anchor_explorer(image, cfg.anchor_sizes, cfg.aspect_ratios, strides)
    level, stride = explorer.children[0].children
    sizes, ratios, extra = explorer.children[1].children
    assert level.value == 0 and sizes.value == (12, 15, 19) and ratios.value == (1.0,) and stride.value == 4
    assert "48x48 locations x 3 = 6912 anchors" in plt.gcf().axes[0].get_title()  # the default picture
    for i in (3, 1, 4, 2, 0):
        level.value = i
        assert sizes.value == tuple(cfg.anchor_sizes[i]) and ratios.value == tuple(cfg.aspect_ratios[i])
        assert stride.value == strides[i] and extra.value == 0
        assert all(_on_grid(extra, size) for size in sizes.value)
        title = plt.gcf().axes[0].get_title()
        assert title.startswith(f"sizes {'/'.join(str(s) for s in cfg.anchor_sizes[i])}, ratios 1, stride {strides[i]}")
    extra.value = 24
    assert plt.gcf().axes[0].get_title().startswith("sizes 12/15/19/24,")
    ratios.value = ()  # nothing to draw: a message instead of a traceback or a stale picture
    assert "at least one size and one ratio" in capsys.readouterr().out
    plt.close("all")


def test_matching_view_labels_follow_the_thresholds():
    anchors = grid_anchors(cell_anchors((16, 32), (0.5, 1.0, 2.0)), (8, 12), (8, 8))
    _, strict = matching_view(IMAGE, GT, anchors, 0.7, 0.3, False)
    fig, loose = matching_view(IMAGE, GT, anchors, 0.5, 0.3, False)
    assert (loose >= 0).sum() > (strict >= 0).sum()
    best = box_iou(GT, anchors).max(dim=0).values
    assert torch.equal(loose >= 0, best >= 0.5)
    assert "positive" in fig.axes[0].get_legend().get_texts()[0].get_text()
    _, low_quality = matching_view(IMAGE, GT, anchors, 0.99, 0.3, True)
    assert set(low_quality[low_quality >= 0].tolist()) == {0, 1}  # every gt box gets its best anchor
    plt.close("all")
    with pytest.raises(ValueError, match="low"):
        matching_view(IMAGE, GT, anchors, 0.3, 0.7, False)


def test_nms_view_and_fake_detections():
    boxes, scores = cluster_detections(GT, 10, seed=0)
    assert boxes.shape == (20, 4) and scores.shape == (20,)
    fig, keep = nms_view(boxes, scores, 0.5, image=IMAGE)
    assert keep.tolist() == nms(boxes, scores, 0.5).tolist()
    assert len(fig.axes) == 2 and "after NMS" in fig.axes[1].get_title()
    assert len(fig.axes[1].patches) == len(keep) and len(fig.axes[0].patches) == 20
    _, keep_all = nms_view(boxes, scores, 1.0, image_size=(64, 96))
    assert len(keep_all) == 20
    plt.close("all")


def test_nms_score_labels_do_not_overlap_and_stay_inside():
    """Kept boxes with nearly the same corner (and one at the top edge) get score labels that neither overlap nor
    leave the axes."""
    boxes = torch.tensor([[0.0, 0, 30, 20], [40, 30, 60, 50], [41, 29, 58, 52], [39, 31, 70, 46], [60, 0, 90, 15]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    fig, keep = nms_view(boxes, scores, 1.0, image=IMAGE)  # threshold 1: all kept
    ax = fig.axes[1]
    fig.canvas.draw()  # lays out the label backgrounds
    renderer = fig.canvas.get_renderer()
    extents = [t.get_bbox_patch().get_window_extent(renderer) for t in ax.texts]
    frame = ax.get_window_extent(renderer)
    assert len(keep) == 5 and sorted(t.get_text() for t in ax.texts) == ["0.50", "0.60", "0.70", "0.80", "0.90"]
    assert all(frame.x0 <= e.x0 and e.x1 <= frame.x1 + 1 and frame.y0 <= e.y0 and e.y1 <= frame.y1 + 1 for e in extents)
    assert not any(a.overlaps(b) for i, a in enumerate(extents) for b in extents[i + 1:])
    plt.close(fig)


def test_explorers_build_and_viz_helpers():
    level_anchors = grid_anchors(cell_anchors((16,), (1.0,)), (8, 12), (8, 8))
    for widget in (anchor_explorer(IMAGE, ((16,), (32,)), ((1.0,), (0.5, 1.0)), (8, 16)),
                   matching_explorer(IMAGE, GT, level_anchors),
                   nms_explorer(*cluster_detections(GT, 5), image_size=(64, 96))):
        assert widget.children
    fig, axes = plt.subplots(1, 3)
    draw_iou(axes[0], [0, 0, 10, 10], [5, 5, 15, 15])
    assert axes[0].get_title() == "IoU = 0.143"
    best = best_anchor_iou(GT, grid_anchors(cell_anchors((16, 32), (1.0,)), (8, 12), (8, 8)), chunk=7)
    assert best.shape == (2,) and ((best > 0) & (best <= 1)).all()
    plot_anchor_coverage(axes[1], (GT[:, 2:] - GT[:, :2]).prod(1).sqrt(), best, "test")
    draw_box_coding(axes[2], GT[0], GT[1], GT[1])
    plt.close("all")


def test_best_anchor_iou_by_hand():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 20, 20], [100, 100, 110, 110]])
    best = best_anchor_iou(torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20], [50, 50, 60, 60]]), anchors, chunk=2)
    assert best.tolist() == [1.0, 0.5, 0.0]
    assert best_anchor_iou(torch.zeros(0, 4), anchors).shape == (0,)
