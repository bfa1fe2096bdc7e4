"""The five losses on hand-computed cases (minimaskrcnn/losses.py)."""
import math

import pytest
import torch

from minimaskrcnn.losses import (
    box_regression_loss,
    classifier_loss,
    mask_loss,
    rpn_box_loss,
    rpn_objectness_loss,
    smooth_l1,
)


def test_smooth_l1_quadratic_below_beta_linear_above():
    x = torch.tensor([0.0, 0.05, -1.0])
    # 0 + 0.5 * 0.05**2 / 0.1 + (1 - 0.5 * 0.1)
    assert smooth_l1(x, torch.zeros(3), beta=0.1).item() == pytest.approx(0.0125 + 0.95)
    assert smooth_l1(x, torch.zeros(3), beta=0.0).item() == pytest.approx(1.05)  # beta 0: plain L1


def test_rpn_objectness_loss_is_mean_bce():
    logits = torch.tensor([0.0, math.log(3.0)])  # probabilities 0.5 and 0.75
    labels = torch.tensor([1, 0])
    expected = (-math.log(0.5) - math.log(0.25)) / 2
    assert rpn_objectness_loss(logits, labels).item() == pytest.approx(expected)


def test_rpn_box_loss_divides_by_number_sampled():
    pred = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    target = torch.zeros(2, 4)
    # |1| >= beta = 1/9: 1 - 0.5 / 9, summed over positives, divided by the 8 sampled anchors
    assert rpn_box_loss(pred, target, num_sampled=8).item() == pytest.approx((1 - 0.5 / 9) / 8)
    assert rpn_box_loss(pred, target, num_sampled=0).item() == pytest.approx(1 - 0.5 / 9)  # no division by zero


def test_classifier_loss_uniform_logits_is_log_num_classes():
    assert classifier_loss(torch.zeros(2, 3), torch.tensor([0, 2])).item() == pytest.approx(math.log(3))


def test_box_regression_loss_uses_only_positive_rois_own_class():
    deltas = torch.zeros(3, 3 * 4)  # R = 3 RoIs, K + 1 = 3 classes
    deltas[0] = 100.0  # a background RoI: ignored whatever it predicts
    deltas[1, 2 * 4] = 0.5  # positive of class 2: dx = 0.5 on its own class's deltas
    deltas[1, 1 * 4 : 2 * 4] = 50.0  # ... and garbage on class 1, ignored
    labels = torch.tensor([0, 2, 1])
    targets = torch.zeros(3, 4)
    targets[0] = -math.inf  # a background's target when its image has no ground truth: never read
    targets[2] = torch.tensor([0.0, 0.0, 0.0, 0.05])  # class 1 positive predicts 0, target 0.05 (< beta)
    expected = ((0.5 - 0.5 / 9) + 0.5 * 0.05**2 * 9) / 3  # summed over positives, divided by all R = 3
    assert box_regression_loss(deltas, labels, targets).item() == pytest.approx(expected)


def test_mask_loss_reads_only_the_ground_truth_class_channel():
    logits = torch.full((1, 3, 1, 2), 30.0)  # confident garbage on every channel ...
    logits[0, 2] = torch.tensor([[0.0, math.log(3.0)]])  # ... except the GT class 2
    targets = torch.tensor([[[1.0, 0.0]]])
    expected = (-math.log(0.5) - math.log(0.25)) / 2  # mean over P * M * M pixels
    assert mask_loss(logits, torch.tensor([2]), targets).item() == pytest.approx(expected)


def test_mask_loss_without_positives_is_zero_and_differentiable():
    logits = torch.randn(0, 3, 4, 4, requires_grad=True)
    loss = mask_loss(logits, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4, 4))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_masks_select_without_host_syncs_and_ignore_what_they_hide():
    """The masked forms (used by the RPN and the box head) equal selecting the rows; hidden targets may be inf."""
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(10, 4, generator=g, requires_grad=True)
    target = torch.randn(10, 4, generator=g)
    chosen = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0, 0, 1], dtype=torch.bool)
    target[~chosen] = -math.inf  # a background's target against a missing box
    masked = rpn_box_loss(pred, target, torch.tensor(8), positive=chosen)
    masked.backward()
    assert masked.item() == pytest.approx(rpn_box_loss(pred[chosen], target[chosen], 8).item(), rel=1e-6)
    assert torch.isfinite(pred.grad).all() and (pred.grad[~chosen] == 0).all()
    logits, labels = torch.randn(10, generator=g), torch.tensor([1, 0, -1, 1, 0, 0, -1, 1, 0, 0])
    sampled = labels >= 0
    assert rpn_objectness_loss(logits, labels, sampled).item() == pytest.approx(
        rpn_objectness_loss(logits[sampled], labels[sampled]).item(), rel=1e-6)
