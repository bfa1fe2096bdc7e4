"""Matching anchors or proposals to ground truth, and sampling a balanced training set from them.

Built in notebooks/02_iou_matching.ipynb.

Shape glossary
    G   ground-truth boxes of one image
    P   predictions (anchors or proposals) of one image
"""
import torch
from torch import Tensor


class Matcher:
    """Give every prediction the index of its best ground-truth box, or a negative code.

    IoU >= high: matched (the index, >= 0); IoU < low: BELOW_LOW_THRESHOLD (-1, a negative);
    in between: BETWEEN_THRESHOLDS (-2, ignored). With allow_low_quality_matches, the predictions that overlap some
    ground-truth box best (all of them on ties) are matched even below `high`, each to its OWN best ground truth
    (usually that box; another one when the prediction overlaps that one even more).
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False):
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold {low_threshold} must be <= high_threshold {high_threshold}")
        self.high, self.low = high_threshold, low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> Tensor:
        """iou: Tensor[G, P] -> Tensor[P] int64: matched ground-truth index, -1 (negative) or -2 (ignored).

        With no ground truth (G == 0) every prediction is a negative. Masked arithmetic only: no host sync.
        """
        if iou.shape[0] == 0:
            return torch.full((iou.shape[1],), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device)
        best_iou, best_gt = iou.max(dim=0)  # (P,), (P,)
        matches = torch.where(best_iou < self.high, self.BETWEEN_THRESHOLDS, best_gt)
        matches = torch.where(best_iou < self.low, self.BELOW_LOW_THRESHOLD, matches)
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1).values  # (G,)
            # predictions in a (gt, prediction) pair that reaches its ground truth's best overlap, ties included
            is_best = (iou == best_per_gt[:, None]).any(dim=0)  # (G, P) -> (P,)
            matches = torch.where(is_best, best_gt, matches)
        return matches


class BalancedSampler:
    """Pick at most `batch_size_per_image` predictions per image, a `positive_fraction` of them positive.

    labels follow the convention >= 1 positive (class id), 0 negative, < 0 ignored. When there are too few
    positives the negatives fill the batch. Uses torch's global random generator (seed it for repeatability).
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """labels: [Tensor[P_i]] per image -> (positive masks, negative masks), each [Tensor[P_i] bool].

        Draws as torchvision's sampler does (torch.randperm over each image's positives, then its negatives), so the
        same seed picks the same predictions; randperm needs their numbers on the host: one host sync per call.
        """
        if not labels:
            return [], []
        positive = [lab >= 1 for lab in labels]
        negative = [lab == 0 for lab in labels]
        counts = torch.stack([torch.stack((p.sum(), n.sum())) for p, n in zip(positive, negative)]).tolist()
        pos_masks, neg_masks = [], []
        for pos, neg, (num_positive, num_negative) in zip(positive, negative, counts):
            num_pos = min(int(self.batch_size_per_image * self.positive_fraction), num_positive)
            num_neg = min(self.batch_size_per_image - num_pos, num_negative)
            pos_masks.append(_pick(pos, num_positive, num_pos))
            neg_masks.append(_pick(neg, num_negative, num_neg))
        return pos_masks, neg_masks


def _pick(candidates: Tensor, count: int, num: int) -> Tensor:
    """A random `num` of the `count` True entries of candidates: Tensor[P] bool -> Tensor[P] bool.

    torch.randperm(count)[:num] gives the ranks of the chosen ones among the candidates in index order, as
    torchvision's `candidate_indices[randperm(count)[:num]]`, found by rank (cumsum) instead of by index (nonzero).
    """
    ranks = torch.randperm(count, device=candidates.device)[:num]  # drawn even for count 0: the same random stream
    if count == 0:
        return torch.zeros_like(candidates)
    chosen = torch.zeros(count, dtype=torch.bool, device=candidates.device)
    chosen[ranks] = True
    rank = (candidates.cumsum(dim=0) - 1).clamp(min=0)  # (P,): each candidate's rank among the candidates
    return candidates & chosen[rank]
