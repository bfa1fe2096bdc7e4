"""Pictures of notebooks 04 and 05 (minimaskrcnn/viz/rpn.py)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

from minimaskrcnn.viz.rpn import draw_anchor_labels, draw_proposals, plot_losses


def test_draw_proposals_draws_every_box_best_on_top():
    image = torch.rand(3, 32, 32)
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 30, 31]])
    scores = torch.tensor([0.2, 0.9, 0.5])
    fig, ax = plt.subplots()
    draw_proposals(ax, image, boxes, scores, gt_boxes=boxes[:1])
    paths = ax.collections[0].get_paths()
    assert len(paths) == 3
    assert paths[-1].vertices[[0, 2]].reshape(-1).tolist() == [5, 5, 20, 20]  # the best-scoring box drawn last
    alphas = ax.collections[0].get_edgecolor()[:, 3]
    assert alphas[0] < alphas[1] < alphas[2]  # drawn lowest score first, more opaque as the score rises
    draw_proposals(ax, image, boxes, scores, max_boxes=2)
    assert len(ax.collections[-1].get_paths()) == 2
    plt.close(fig)


def test_plot_losses_one_curve_per_loss():
    history = [{"loss_objectness": 0.7 / (s + 1), "loss_rpn_box_reg": 0.01} for s in range(5)]
    fig, ax = plt.subplots()
    plot_losses(ax, history)
    assert [line.get_label() for line in ax.get_lines()] == ["loss_objectness", "loss_rpn_box_reg"]
    assert ax.get_yscale() == "log" and list(ax.get_lines()[0].get_ydata()) == [h["loss_objectness"] for h in history]
    plt.close(fig)


def test_draw_anchor_labels_legend_names_every_colour_and_positives_are_on_top():
    anchors = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40], [2, 2, 12, 12]])
    labels = torch.tensor([1, -1, 0, 0])
    fig, ax = plt.subplots()
    draw_anchor_labels(ax, torch.zeros(3, 48, 48), anchors, labels, gt_boxes=anchors[:1], max_negatives=1)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["positive (1)", "ignored (1)", "negative (1 of 2 shown)", "ground truth"]
    assert ax.patches[-1].get_edgecolor()[:3] == matplotlib.colors.to_rgb("#2ca02c")  # the positive, drawn last
    plt.close(fig)
