"""The FPN diagram of notebook 04 (minimaskrcnn/viz/backbone.py)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

from minimaskrcnn.backbone import build_backbone
from minimaskrcnn.viz.backbone import draw_fpn


def test_draw_fpn_labels_the_forward_pass_shapes():
    backbone = build_backbone(18, "gn", 5, fpn_channels=8, base_width=8).eval()
    x = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        stages, levels = backbone.body(x), backbone(x)
    stage_shapes = {n: tuple(t.shape[1:]) for n, t in stages.items()}
    level_shapes = {n: tuple(t.shape[1:]) for n, t in levels.items()}
    fig, ax = plt.subplots()
    texts = draw_fpn(ax, stage_shapes, level_shapes)
    assert texts["c2"].get_text() == "c2\n8 × 24 × 16" and texts["c5"].get_text() == "c5\n64 × 3 × 2"
    assert texts["p3"].get_text() == "p3\n8 × 12 × 8" and texts["pool"].get_text() == "pool\n8 × 2 × 1"
    assert texts["up p5"].get_text() == "nearest ↑ 3×2 → 6×4"  # the top-down arrow from p5's level into p4's
    assert set(texts) == {"c2", "c3", "c4", "c5", "p2", "p3", "p4", "p5", "pool", "up p3", "up p4", "up p5"}
    plt.close(fig)


def test_draw_fpn_refuses_mismatched_shapes():
    stages = {"c2": (4, 8, 8), "c3": (8, 4, 4)}
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="plus 'pool'"):
        draw_fpn(ax, stages, {"p2": (2, 8, 8), "p3": (2, 4, 4)})
    with pytest.raises(ValueError, match="p3 is 5 x 5 but its stage c3 is 4 x 4"):
        draw_fpn(ax, stages, {"p2": (2, 8, 8), "p3": (2, 5, 5), "pool": (2, 3, 3)})
    plt.close(fig)
