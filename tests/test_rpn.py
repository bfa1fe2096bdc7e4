"""Region Proposal Network: head, flattening order, targets, losses, proposals, overfitting (minimaskrcnn/rpn.py)."""
import math

import pytest
import torch

from minimaskrcnn.anchors import AnchorGenerator
from minimaskrcnn.backbone import build_backbone
from minimaskrcnn.boxes import encode_boxes
from minimaskrcnn.matching import BalancedSampler, Matcher
from minimaskrcnn.model import MaskRCNNConfig, rpn_settings
from minimaskrcnn.rpn import (
    RegionProposalNetwork,
    RPNHead,
    assign_targets,
    filter_proposals,
    flatten_predictions,
    rpn_losses,
)

SIZES = ((8,), (16,), (32,), (64,), (128,))
RATIOS = ((0.5, 1.0, 2.0),) * 5


def small_rpn(channels=8, **kwargs):
    return RegionProposalNetwork(AnchorGenerator(SIZES, RATIOS), RPNHead(channels, 3), **(rpn_settings(MaskRCNNConfig()) | kwargs))


def random_features(n, batch_shape, channels=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = batch_shape
    return [torch.randn(n, channels, math.ceil(h / s), math.ceil(w / s), generator=g) for s in (4, 8, 16, 32, 64)]


def test_head_shapes_and_init():
    head = RPNHead(16, 3)
    features = [torch.randn(2, 16, s, s + 1) for s in (8, 4, 2)]
    logits, deltas = head(features)
    assert [tuple(x.shape) for x in logits] == [(2, 3, s, s + 1) for s in (8, 4, 2)]
    assert [tuple(x.shape) for x in deltas] == [(2, 12, s, s + 1) for s in (8, 4, 2)]
    for conv in (head.conv[0][0], head.cls_logits, head.bbox_pred):
        assert conv.bias.abs().sum() == 0
        assert 0.005 < conv.weight.std().item() < 0.015


def test_flatten_order_matches_anchors():
    """Row t of the flattened tensors belongs to anchor t: level, then location row-major, then anchor."""
    n, a = 2, 3
    sizes = [(2, 3), (1, 2)]
    logits, deltas, expected = [], [], []
    for level, (h, w) in enumerate(sizes):
        # logit value encodes (image, level, y, x, anchor)
        img, anc, y, x = torch.meshgrid(torch.arange(n), torch.arange(a), torch.arange(h), torch.arange(w), indexing="ij")
        logits.append((img * 10000 + level * 1000 + y * 100 + x * 10 + anc).float())
        deltas.append(torch.stack([logits[-1] + k / 10 for k in range(4)], dim=2).reshape(n, 4 * a, h, w))
        expected.append(torch.tensor([[i * 10000 + level * 1000 + yy * 100 + xx * 10 + aa
                                       for yy in range(h) for xx in range(w) for aa in range(a)] for i in range(n)]))
    objectness, flat_deltas = flatten_predictions(logits, deltas)
    expected = torch.cat(expected, dim=1).float()
    torch.testing.assert_close(objectness, expected)
    torch.testing.assert_close(flat_deltas, expected[..., None] + torch.arange(4) / 10)


def test_assign_targets_labels():
    anchors = torch.tensor([[0., 0, 10, 10], [0, 0, 10, 12], [0, 0, 10, 20], [50, 50, 60, 60], [0, 0, 9, 10]])
    gt = torch.tensor([[0., 0, 10, 10]])
    labels, matched = assign_targets(anchors, gt, Matcher(0.7, 0.3, allow_low_quality_matches=True))
    # IoUs: 1, 0.833, 0.5, 0, 0.9
    assert labels.tolist() == [1, 1, -1, 0, 1]
    torch.testing.assert_close(matched[labels == 1], gt.expand(3, 4))


def test_assign_targets_low_quality_match_is_positive():
    anchors = torch.tensor([[0., 0, 10, 10], [100, 100, 110, 110]])
    gt = torch.tensor([[0., 0, 20, 20]])  # best IoU 0.25 < 0.3: still positive, it is this box's best anchor
    labels, _ = assign_targets(anchors, gt, Matcher(0.7, 0.3, allow_low_quality_matches=True))
    assert labels.tolist() == [1, 0]


def test_assign_targets_without_ground_truth():
    anchors = torch.tensor([[0., 0, 10, 10], [5, 5, 20, 20]])
    labels, matched = assign_targets(anchors, torch.zeros(0, 4), Matcher(0.7, 0.3, True))
    assert labels.tolist() == [0, 0]
    assert matched.abs().sum() == 0 and matched.shape == (2, 4)


@pytest.mark.parametrize("boxes", [[[10.0, 12.0, 40.0, 50.0], [60.0, 5.0, 90.0, 30.0]], []])
def test_loss_finite_and_positive(boxes):
    torch.manual_seed(0)
    rpn = small_rpn(pre_nms_top_n_train=300, post_nms_top_n_train=100).train()
    targets = [{"boxes": torch.tensor(boxes).reshape(-1, 4)}] * 2
    _, losses = rpn(random_features(2, (96, 128)), [(96, 128), (80, 100)], (96, 128), targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"}
    assert torch.isfinite(losses["loss_objectness"]) and losses["loss_objectness"] > 0
    if boxes:
        assert torch.isfinite(losses["loss_rpn_box_reg"]) and losses["loss_rpn_box_reg"] > 0
    else:
        assert losses["loss_rpn_box_reg"] == 0  # no positives: nothing to regress
    sum(losses.values()).backward()
    assert rpn.head.cls_logits.weight.grad.abs().sum() > 0


def test_losses_by_hand():
    """Two images, a handful of anchors: BCE mean over sampled, smooth-L1 summed over positives / sampled."""
    objectness = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -3.0]])
    pred = torch.zeros(2, 3, 4)
    pred[0, 0] = torch.tensor([0.05, -0.5, 0.0, 0.0])
    labels = [torch.tensor([1.0, 0.0, -1.0]), torch.tensor([0.0, -1.0, 0.0])]
    targets = [torch.zeros(3, 4), torch.zeros(3, 4)]
    losses = rpn_losses(objectness, pred, labels, targets, BalancedSampler(256, 0.5))
    logits, y = torch.tensor([2.0, -1.0, 0.0, -3.0]), torch.tensor([1.0, 0.0, 0.0, 0.0])
    bce = -(y * torch.log(torch.sigmoid(logits)) + (1 - y) * torch.log(1 - torch.sigmoid(logits))).mean()
    beta = 1 / 9
    smooth = 0.5 * 0.05**2 / beta + (0.5 - 0.5 * beta)
    torch.testing.assert_close(losses["loss_objectness"], bce)
    torch.testing.assert_close(losses["loss_rpn_box_reg"], torch.tensor(smooth / 4))


@pytest.mark.parametrize("image_sizes, batch_shape", [
    ([(128, 128)], (128, 128)),
    ([(96, 128), (128, 64)], (128, 128)),
    ([(40, 70), (64, 64), (33, 90)], (64, 96)),
])
@pytest.mark.parametrize("training", [True, False])
def test_proposals_inside_sorted_bounded(image_sizes, batch_shape, training):
    torch.manual_seed(0)
    n = len(image_sizes)
    rpn = small_rpn(pre_nms_top_n_train=300, post_nms_top_n_train=120, pre_nms_top_n_test=200,
                    post_nms_top_n_test=50).train(training)
    proposals, losses = rpn(random_features(n, batch_shape), image_sizes, batch_shape, None)
    assert losses == {}
    assert len(proposals) == n
    for boxes, (h, w) in zip(proposals, image_sizes):
        assert 0 < len(boxes) <= (120 if training else 50)
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_filter_proposals_sorted_per_level_top_n_and_nms():
    torch.manual_seed(0)
    n, level_sizes = 2, [40, 12]
    centres = torch.rand(n, sum(level_sizes), 2) * 80
    proposals = torch.cat([centres - 6, centres + 6], dim=2)
    objectness = torch.randn(n, sum(level_sizes))
    boxes, scores = filter_proposals(proposals, objectness, level_sizes, [(100, 100)] * n, pre_nms_top_n=5,
                                     post_nms_top_n=8, nms_thresh=0.5)
    for i in range(n):
        assert len(boxes[i]) <= 8
        assert (scores[i][1:] <= scores[i][:-1]).all()
        # every kept box is among the top 5 logits of its level
        allowed = torch.cat([objectness[i, :40].topk(5).indices, 40 + objectness[i, 40:].topk(5).indices])
        # (sigmoid's vectorised and scalar paths may differ in the last bit: compare within 1e-6)
        allowed_scores = torch.sigmoid(objectness[i, allowed])
        assert ((scores[i][:, None] - allowed_scores[None]).abs().amin(dim=1) < 1e-6).all()


def test_filter_proposals_score_threshold_and_min_size():
    proposals = torch.tensor([[[0.0, 0, 10, 10], [20, 20, 20.0005, 30], [40, 40, 50, 50]]])
    objectness = torch.tensor([[3.0, 2.0, -3.0]])  # probabilities 0.95, 0.88, 0.047
    boxes, scores = filter_proposals(proposals, objectness, [3], [(64, 64)], 10, 10, 0.7, min_size=1e-3,
                                     score_thresh=0.5)
    torch.testing.assert_close(boxes[0], torch.tensor([[0.0, 0, 10, 10]]))


def test_empty_images_in_a_batch_train():
    torch.manual_seed(0)
    rpn = small_rpn().train()
    targets = [{"boxes": torch.zeros(0, 4)}, {"boxes": torch.tensor([[5.0, 5, 30, 40]])}]
    proposals, losses = rpn(random_features(2, (64, 64)), [(64, 64), (50, 60)], (64, 64), targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert len(proposals) == 2


def test_gradients_do_not_flow_through_proposals():
    rpn = small_rpn().train()
    proposals, _ = rpn(random_features(1, (64, 64)), [(64, 64)], (64, 64), None)
    assert not proposals[0].requires_grad


def test_mismatched_image_sizes():
    with pytest.raises(ValueError, match="image_sizes"):
        small_rpn()(random_features(2, (64, 64)), [(64, 64)], (64, 64), None)


def test_overfits_two_images():
    """The RPN (with a small trainable backbone) drives its loss down >= 5x on 2 images within 100 steps."""
    torch.manual_seed(0)
    backbone = build_backbone(18, "gn", trainable_layers=5, fpn_channels=16, base_width=8)
    rpn = small_rpn(channels=16, batch_size_per_image=64)
    images = torch.zeros(2, 3, 64, 64)
    gt = [torch.tensor([[8.0, 10.0, 30.0, 40.0], [36.0, 36.0, 60.0, 56.0]]), torch.tensor([[16.0, 4.0, 48.0, 28.0]])]
    for image, boxes in zip(images, gt):
        for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            image[k % 3, y1:y2, x1:x2] = 1.0
    targets = [{"boxes": b} for b in gt]
    params = list(backbone.parameters()) + list(rpn.parameters())
    optimizer = torch.optim.Adam(params, lr=3e-3)
    history = []
    for _ in range(100):
        features = list(backbone(images).values())
        _, losses = rpn(features, [(64, 64), (64, 64)], (64, 64), targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        if len(history) >= 10 and sum(history[-5:]) / 5 <= history[0] / 5:
            break
    final = sum(history[-5:]) / 5
    print(f"overfit: loss {history[0]:.4f} -> {final:.4f} in {len(history)} steps")
    assert final <= history[0] / 5, f"loss {history[0]:.4f} -> {final:.4f} in {len(history)} steps"


def test_regression_targets_round_trip():
    """A positive anchor's target deltas decode back to its ground-truth box (RPN coder weights 1, 1, 1, 1)."""
    from minimaskrcnn.boxes import decode_boxes

    anchors = torch.tensor([[0.0, 0, 16, 16], [4, 4, 20, 24]])
    gt = torch.tensor([[2.0, 1, 18, 17]])
    labels, matched = assign_targets(anchors, gt, Matcher(0.7, 0.3, True))
    deltas = encode_boxes(matched, anchors, (1.0, 1.0, 1.0, 1.0))
    torch.testing.assert_close(decode_boxes(deltas, anchors, (1.0, 1.0, 1.0, 1.0)), gt.expand(2, 4))


@pytest.mark.reference
def test_matches_torchvision_rpn_train_and_eval():
    """Same head weights, features and sampler seed: torchvision's RPN gives the same losses and proposals."""
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.detection import rpn as tv_rpn
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    torch.manual_seed(0)
    image_sizes, batch_shape = [(96, 128), (70, 100)], (96, 128)
    features = random_features(2, batch_shape, channels=8, seed=1)
    kwargs = dict(pre_nms_top_n=dict(training=300, testing=200), post_nms_top_n=dict(training=150, testing=100))
    ours = small_rpn(pre_nms_top_n_train=300, pre_nms_top_n_test=200, post_nms_top_n_train=150,
                     post_nms_top_n_test=100)
    theirs = tv_rpn.RegionProposalNetwork(TVAnchorGenerator(SIZES, RATIOS), tv_rpn.RPNHead(8, 3), 0.7, 0.3, 256, 0.5,
                                          nms_thresh=0.7, **kwargs)
    theirs.head.load_state_dict(ours.head.state_dict())
    with torch.no_grad():  # make the objectness spread out so top-n and NMS matter
        for head in (ours.head, theirs.head):
            head.cls_logits.weight.mul_(100)
            head.bbox_pred.weight.mul_(10)
    targets = [{"boxes": torch.tensor([[10.0, 12, 50, 60], [60, 5, 120, 40]])}, {"boxes": torch.zeros(0, 4)}]
    image_list = ImageList(torch.zeros(2, 3, *batch_shape), image_sizes)
    for training in (True, False):
        ours.train(training), theirs.train(training)
        torch.manual_seed(5)
        our_props, our_losses = ours(features, image_sizes, batch_shape, targets if training else None)
        torch.manual_seed(5)
        their_props, their_losses = theirs(image_list, {str(i): f for i, f in enumerate(features)},
                                           targets if training else None)
        for p, q in zip(our_props, their_props):
            assert len(p) == len(q)
            torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4)
        assert set(our_losses) == set(their_losses)
        for k in our_losses:
            torch.testing.assert_close(our_losses[k], their_losses[k], atol=1e-5, rtol=1e-4)
