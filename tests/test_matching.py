"""Tests for minimaskrcnn.matching: Matcher thresholds, no ground truth, ties, low-quality matches; sampler balance."""
import pytest
import torch

from minimaskrcnn.matching import BalancedSampler, Matcher


def test_thresholds():
    iou = torch.tensor([[0.9, 0.5, 0.2, 0.7, 0.3], [0.1, 0.6, 0.1, 0.0, 0.0]])
    # best per column: 0.9 (gt 0), 0.6 (gt 1), 0.2, 0.7 (gt 0, exactly high), 0.3 (exactly low)
    assert Matcher(0.7, 0.3)(iou).tolist() == [0, -2, -1, 0, -2]
    assert Matcher(0.5, 0.5)(iou).tolist() == [0, 1, -1, 0, -1]


def test_no_ground_truth_all_negative():
    labels = Matcher(0.7, 0.3, allow_low_quality_matches=True)(torch.zeros(0, 6))
    assert labels.tolist() == [-1] * 6 and labels.dtype == torch.int64
    # and the sampler then draws only negatives, no NaN anywhere
    pos, neg = BalancedSampler(4, 0.5)([(labels >= 0).long()])
    assert pos[0].sum() == 0 and neg[0].sum() == 4


def test_low_quality_matches_give_each_gt_its_best_prediction():
    iou = torch.tensor([[0.4, 0.2, 0.1, 0.0], [0.0, 0.5, 0.55, 0.1]])
    assert Matcher(0.7, 0.3)(iou).tolist() == [-2, -2, -2, -1]
    # gt 0's best is prediction 0 (0.4); gt 1's best is prediction 2 (0.55); prediction 1 stays ignored
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).tolist() == [0, -2, 1, -1]


def test_low_quality_ties_and_best_gt_wins():
    # gt 0 has its best IoU 0.2 on predictions 0 and 2 (a tie): both get matched
    iou = torch.tensor([[0.2, 0.1, 0.2, 0.0], [0.1, 0.0, 0.25, 0.0]])
    out = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    # prediction 2 is gt 1's best too; it keeps its own best ground truth (gt 1, 0.25), as the reference does
    assert out.tolist() == [0, -1, 1, -1]


def test_ties_between_ground_truths_pick_the_first():
    iou = torch.tensor([[0.8, 0.1], [0.8, 0.1]])
    assert Matcher(0.7, 0.3)(iou).tolist() == [0, -1]


def test_bad_thresholds():
    with pytest.raises(ValueError, match="low_threshold"):
        Matcher(0.3, 0.7)


def test_sampler_balance():
    torch.manual_seed(0)
    labels = torch.zeros(1000, dtype=torch.int64)
    labels[:300] = 1
    labels[300:400] = -1
    pos, neg = BalancedSampler(256, 0.25)([labels, torch.cat((labels[:300], labels[-50:]))])
    assert pos[0].sum() == 64 and neg[0].sum() == 192
    assert (labels[pos[0]] >= 1).all() and (labels[neg[0]] == 0).all() and not (pos[0] & neg[0]).any()
    # second image: 300 positives but only 50 negatives -> 64 positives, 50 negatives
    assert pos[1].sum() == 64 and neg[1].sum() == 50
    # too few positives: negatives fill the batch
    few = torch.zeros(500, dtype=torch.int64)
    few[:10] = 3
    pos, neg = BalancedSampler(256, 0.5)([few])
    assert pos[0].sum() == 10 and neg[0].sum() == 246


def test_sampler_is_random_but_seeded():
    labels = torch.zeros(1000, dtype=torch.int64)
    labels[::3] = 1
    sampler = BalancedSampler(64, 0.5)
    torch.manual_seed(1)
    a = sampler([labels])
    torch.manual_seed(1)
    b = sampler([labels])
    c = sampler([labels])
    assert torch.equal(a[0][0], b[0][0]) and not torch.equal(a[0][0], c[0][0])


def test_sampler_draws_what_torchvision_draws():
    """The same seed picks the same predictions as torchvision's sampler (indices of the candidates, randperm)."""
    g = torch.Generator().manual_seed(2)
    labels = [torch.randint(-1, 3, (n,), generator=g) for n in (500, 40, 7)]
    labels.append(torch.full((9,), -1))  # nothing to sample
    sampler = BalancedSampler(64, 0.25)
    torch.manual_seed(4)
    pos, neg = sampler(labels)
    torch.manual_seed(4)
    for lab, p, n in zip(labels, pos, neg):
        positive, negative = torch.where(lab >= 1)[0], torch.where(lab == 0)[0]
        num_pos = min(16, positive.numel())
        num_neg = min(64 - num_pos, negative.numel())
        expected_pos = positive[torch.randperm(positive.numel())[:num_pos]]
        expected_neg = negative[torch.randperm(negative.numel())[:num_neg]]
        assert torch.where(p)[0].tolist() == sorted(expected_pos.tolist())
        assert torch.where(n)[0].tolist() == sorted(expected_neg.tolist())
    assert sampler([]) == ([], [])


@pytest.mark.reference
def test_matcher_matches_torchvision():
    pytest.importorskip("torchvision")
    from torchvision.models.detection._utils import Matcher as TVMatcher

    g = torch.Generator().manual_seed(0)
    iou = (torch.rand(7, 500, generator=g) * 1.2).clamp(max=1) ** 2
    iou[:, ::7] = iou[:, ::7].round(decimals=1)  # create ties
    for allow in (False, True):
        tv = TVMatcher(0.7, 0.3, allow_low_quality_matches=allow)(iou)
        assert Matcher(0.7, 0.3, allow)(iou).tolist() == tv.tolist()
