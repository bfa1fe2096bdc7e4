"""Box and mask heads: proposal sampling, targets, post-processing, shapes (minimaskrcnn/roi_heads.py)."""
import pytest
import torch

from minimaskrcnn.boxes import box_iou
from minimaskrcnn.matching import BalancedSampler, Matcher
from minimaskrcnn.roi_heads import (
    BoxPredictor,
    MaskHead,
    MaskPredictor,
    TwoMLPHead,
    assign_targets_to_proposals,
    mask_probabilities,
    RoIHeads,
    positive_rois,
    postprocess_detections,
    sample_proposals,
)
from minimaskrcnn.roi_ops import MultiScaleRoIPooler

GT = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 70.0, 60.0]])
PROPOSALS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # IoU 1 with GT 0
        [0.0, 0.0, 10.0, 5.0],  # IoU 0.5 with GT 0 -> positive (>= 0.5)
        [0.0, 0.0, 10.0, 4.0],  # IoU 0.4 -> background (or ignored with a lower low threshold)
        [50.0, 50.0, 70.0, 59.0],  # IoU 0.9 with GT 1
        [100.0, 100.0, 110.0, 110.0],  # no overlap -> background
    ]
)


def test_assign_targets_labels_and_matches():
    matched, labels = assign_targets_to_proposals(PROPOSALS, GT, torch.tensor([3, 1]), Matcher(0.5, 0.5))
    assert labels.tolist() == [3, 3, 0, 1, 0]
    assert matched.tolist()[:2] == [0, 0] and matched[3] == 1 and matched.min() >= 0
    _, labels = assign_targets_to_proposals(PROPOSALS, GT, torch.tensor([3, 1]), Matcher(0.5, 0.3))
    assert labels.tolist() == [3, 3, -1, 1, 0]  # between the thresholds: ignored


def test_assign_targets_without_ground_truth_is_all_background():
    matched, labels = assign_targets_to_proposals(PROPOSALS, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                                                  Matcher(0.5, 0.5))
    assert labels.tolist() == [0] * 5 and matched.tolist() == [0] * 5


def test_sample_proposals_appends_ground_truth_and_encodes_targets():
    torch.manual_seed(0)
    targets = [{"boxes": GT, "labels": torch.tensor([3, 1])}, {"boxes": torch.zeros(0, 4),
                                                               "labels": torch.zeros(0, dtype=torch.int64)}]
    sampled = sample_proposals([PROPOSALS[2:], PROPOSALS], targets, Matcher(0.5, 0.5), BalancedSampler(4, 0.5),
                               (10.0, 10.0, 5.0, 5.0))
    rois, labels = sampled.rois[0], sampled.labels[0]
    # image 0: proposals 2, 3, 4 + the two GT boxes; positives: proposal 3 and both GT boxes, 2 of them sampled
    assert len(rois) == 4 and (labels > 0).sum() == 2 and (labels == 0).sum() == 2
    for roi, lab, m, t in zip(rois, labels, sampled.matched_idxs[0], sampled.regression_targets[0]):
        if lab > 0:
            assert box_iou(roi[None], GT[m][None]) >= 0.5
            if torch.equal(roi, GT[m]):
                assert torch.all(t == 0)  # a GT box used as a RoI needs no refinement
    assert sampled.labels[1].tolist() == [0, 0, 0, 0]  # no GT: 4 backgrounds
    # their regression targets (against a zero box, as the reference) are never read by the loss
    pos_rois, pos_labels, pos_matched = positive_rois(sampled)
    assert [len(r) for r in pos_rois] == [2, 0] and torch.all(pos_labels[0] > 0)


def test_sample_proposals_regression_target_hand_value():
    # a positive RoI shifted right by 1 px from a 10-px GT box: dx = 10 * (0 - 1) / 10 = -1
    targets = [{"boxes": GT[:1], "labels": torch.tensor([2])}]
    sampled = sample_proposals([torch.tensor([[1.0, 0.0, 11.0, 10.0]])], targets, Matcher(0.5, 0.5),
                               BalancedSampler(8, 1.0), (10.0, 10.0, 5.0, 5.0))
    shifted = sampled.regression_targets[0][(sampled.rois[0][:, 0] == 1.0)]
    torch.testing.assert_close(shifted, torch.tensor([[-1.0, 0.0, 0.0, 0.0]]))


def test_head_shapes():
    x = torch.randn(5, 16, 7, 7)
    feats = TwoMLPHead(16 * 49, 32)(x)
    assert feats.shape == (5, 32) and feats.min() >= 0
    scores, deltas = BoxPredictor(32, 4)(feats)
    assert scores.shape == (5, 4) and deltas.shape == (5, 16)
    mask_features = MaskHead(16, (8, 8, 8, 8))(torch.randn(5, 16, 14, 14))
    assert mask_features.shape == (5, 8, 14, 14)
    assert MaskPredictor(8, 8, 4)(mask_features).shape == (5, 4, 28, 28)


def test_mask_probabilities_pick_each_detection_class():
    logits = torch.zeros(3, 4, 2, 2)
    logits[0, 2], logits[1, 1], logits[2, 3] = 10.0, -10.0, 10.0
    probs = mask_probabilities(logits, [torch.tensor([2, 1]), torch.tensor([3])])
    assert [p.shape for p in probs] == [(2, 1, 2, 2), (1, 1, 2, 2)]
    assert probs[0][0].min() > 0.99 and probs[0][1].max() < 0.01 and probs[1][0].min() > 0.99


def test_postprocess_hand_case():
    logits = torch.tensor([[0.0, 0.0, 20.0], [20.0, 0.0, 0.0]])  # RoI 0: class 2; RoI 1: background
    deltas = torch.zeros(2, 12)
    boxes, scores, labels = postprocess_detections(logits, deltas, [torch.tensor([[5.0, 5.0, 25.0, 15.0],
                                                                                  [0.0, 0.0, 9.0, 9.0]])], [(32, 32)])
    assert labels[0].tolist() == [2] and scores[0].item() > 0.99
    torch.testing.assert_close(boxes[0], torch.tensor([[5.0, 5.0, 25.0, 15.0]]))


def test_postprocess_limits_sorts_and_clips():
    torch.manual_seed(0)
    num_rois, num_classes, size = [300, 50], 4, [(60, 80), (40, 30)]
    rois = [torch.cat((xy := torch.rand(n, 2) * 60, xy + torch.rand(n, 2) * 40 + 1), dim=1) for n in num_rois]
    logits = torch.randn(sum(num_rois), num_classes + 1) * 3
    deltas = torch.randn(sum(num_rois), (num_classes + 1) * 4)
    boxes, scores, labels = postprocess_detections(logits, deltas, rois, size, detections_per_img=20)
    for b, s, lab, (h, w) in zip(boxes, scores, labels, size):
        assert 0 < len(b) <= 20
        assert torch.all(s[:-1] >= s[1:]) and torch.all(s > 0.05)
        assert torch.all(lab >= 1) and torch.all(lab <= num_classes)
        assert torch.all(b[:, 0::2] >= 0) and torch.all(b[:, 0::2] <= w)
        assert torch.all(b[:, 1::2] >= 0) and torch.all(b[:, 1::2] <= h)


@pytest.mark.reference
def test_postprocess_matches_torchvision():
    detection = pytest.importorskip("torchvision.models.detection")
    from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads

    torch.manual_seed(0)
    rois = [torch.cat((xy := torch.rand(n, 2) * 60, xy + torch.rand(n, 2) * 40 + 1), dim=1) for n in (200, 30)]
    logits, deltas = torch.randn(230, 5) * 3, torch.randn(230, 20)
    tv = TVRoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100)
    expected = tv.postprocess_detections(logits, deltas, rois, [(60, 80), (40, 30)])
    ours = postprocess_detections(logits, deltas, rois, [(60, 80), (40, 30)])
    for e, o in zip(expected, ours):
        for a, b in zip(e, o):
            torch.testing.assert_close(b, a)
    del detection


@pytest.mark.reference
def test_sampling_matches_torchvision():
    pytest.importorskip("torchvision")
    from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads

    rois = [torch.cat((xy := torch.rand(n, 2) * 60, xy + torch.rand(n, 2) * 40 + 1), dim=1) for n in (200, 30)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0], [30.0, 5.0, 60.0, 30.0]]),
                "labels": torch.tensor([1, 3])}, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    tv = TVRoIHeads(None, None, None, 0.5, 0.5, 64, 0.25, None, 0.05, 0.5, 100)
    torch.manual_seed(1)
    e_rois, e_matched, e_labels, e_targets = tv.select_training_samples([r.clone() for r in rois], targets)
    torch.manual_seed(1)
    ours = sample_proposals(rois, targets, Matcher(0.5, 0.5), BalancedSampler(64, 0.25), (10.0, 10.0, 5.0, 5.0))
    for i in range(2):
        torch.testing.assert_close(ours.rois[i], e_rois[i])
        torch.testing.assert_close(ours.labels[i], e_labels[i])
        torch.testing.assert_close(ours.matched_idxs[i], e_matched[i])
        torch.testing.assert_close(ours.regression_targets[i], e_targets[i])


def test_postprocess_without_proposals():
    boxes, scores, labels = postprocess_detections(torch.zeros(0, 4), torch.zeros(0, 16), [torch.zeros(0, 4)] * 2,
                                                   [(32, 32), (20, 20)])
    assert [b.shape for b in boxes] == [(0, 4), (0, 4)] and [len(s) for s in scores] == [0, 0]
    assert mask_probabilities(torch.zeros(0, 4, 28, 28), labels)[1].shape == (0, 1, 28, 28)


def _heads_pair():
    """Our RoIHeads and torchvision's with the same weights, on 16-channel features, 5 classes + background."""
    from torchvision.models.detection import roi_heads as tv
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead as TVTwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign as TVPool

    from minimaskrcnn.roi_heads import RoIHeads
    from minimaskrcnn.roi_ops import MultiScaleRoIPooler

    names = ["p2", "p3", "p4", "p5"]
    ours = RoIHeads(MultiScaleRoIPooler(names, 7, 2), TwoMLPHead(16 * 49, 32), BoxPredictor(32, 6),
                    MultiScaleRoIPooler(names, 14, 2), MaskHead(16, (16,) * 4), MaskPredictor(16, 16, 6),
                    fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=64, positive_fraction=0.25,
                    box_coder_weights=(10.0, 10.0, 5.0, 5.0), score_thresh=0.0, nms_thresh=0.5, detections_per_img=100)
    theirs = tv.RoIHeads(TVPool(names, 7, 2), TVTwoMLPHead(16 * 49, 32), FastRCNNPredictor(32, 6), 0.5, 0.5, 64,
                         0.25, None, 0.0, 0.5, 100, TVPool(names, 14, 2), MaskRCNNHeads(16, [16] * 4, 1),
                         MaskRCNNPredictor(16, 16, 6))
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.reference
def test_roi_heads_match_torchvision_end_to_end():
    pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ours, theirs = _heads_pair()
    features = {f"p{i}": torch.randn(2, 16, 128 // 2**i, 160 // 2**i) for i in range(2, 6)}
    sizes = [(128, 160), (100, 120)]
    rois = [torch.cat((xy := torch.rand(n, 2) * 90, xy + torch.rand(n, 2) * 60 + 2), dim=1) for n in (80, 40)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0], [70.0, 20.0, 140.0, 60.0]]),
                "labels": torch.tensor([1, 4]), "masks": (torch.rand(2, 128, 160) > 0.5).to(torch.uint8)},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, 100, 120, dtype=torch.uint8)}]
    torch.manual_seed(3)
    _, expected = theirs.train()(features, [r.clone() for r in rois], sizes, targets)
    torch.manual_seed(3)
    _, got = ours.train()(features, rois, sizes, targets)
    assert set(got) == set(expected)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k])
    with torch.no_grad():
        expected, _ = theirs.eval()(features, rois, sizes)
        got, _ = ours.eval()(features, rois, sizes)
    for e, g in zip(expected, got):
        assert set(g) == set(e) and len(g["boxes"]) > 0
        for k in e:
            torch.testing.assert_close(g[k], e[k])


def test_detect_returns_its_intermediates_and_the_detections_follow_from_them():
    torch.manual_seed(0)
    names = ["p2", "p3", "p4", "p5"]
    heads = RoIHeads(MultiScaleRoIPooler(names, 7, 2), TwoMLPHead(8 * 49, 16), BoxPredictor(16, 4),
                     MultiScaleRoIPooler(names, 14, 2), MaskHead(8, (8, 8)), MaskPredictor(8, 8, 4),
                     fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=16, positive_fraction=0.25,
                     box_coder_weights=(10.0, 10.0, 5.0, 5.0), score_thresh=0.05, nms_thresh=0.5,
                     detections_per_img=10).eval()
    features = {f"p{i}": torch.randn(2, 8, 64 // 2**i, 80 // 2**i) for i in range(2, 6)}
    sizes = [(64, 80), (50, 60)]
    rois = [torch.cat((xy := torch.rand(n, 2) * 40, xy + torch.rand(n, 2) * 20 + 2), dim=1) for n in (30, 12)]
    with torch.no_grad():
        out = heads.detect(features, rois, sizes)
        detections, _ = heads(features, rois, sizes)
    for probs, refined, det, r, (h, w) in zip(out["class_probs"], out["refined_boxes"], out["detections"], rois, sizes):
        assert probs.shape == (len(r), 4) and refined.shape == (len(r), 4, 4)
        torch.testing.assert_close(probs.sum(1), torch.ones(len(r)))
        assert (refined[..., 0::2] <= w).all() and (refined[..., 1::2] <= h).all() and (refined >= 0).all()
        assert 0 < len(det["boxes"]) <= 10 and det["masks"].shape == (len(det["boxes"]), 1, 28, 28)
        for box, label, score in zip(det["boxes"], det["labels"], det["scores"]):
            pairs = (refined[:, label] == box).all(1) & (probs[:, label] == score)  # a (RoI, class) of the chain
            assert pairs.any()
    for a, b in zip(detections, out["detections"]):  # forward in eval is detect's detections
        assert all(torch.equal(a[k], b[k]) for k in ("boxes", "labels", "scores", "masks"))
