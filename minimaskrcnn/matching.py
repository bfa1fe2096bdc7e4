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

        With no ground truth (G == 0) every prediction is a negative.
        """
        if iou.shape[0] == 0:
            return torch.full((iou.shape[1],), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device)
        best_iou, matches = iou.max(dim=0)  # (P,), (P,)
        raw_matches = matches.clone()
        matches[best_iou < self.low] = self.BELOW_LOW_THRESHOLD
        matches[(best_iou >= self.low) & (best_iou < self.high)] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1).values  # (G,)
            # every (gt, prediction) pair that reaches its ground truth's best overlap, ties included
            _, pred_idx = torch.where(iou == best_per_gt[:, None])
            matches[pred_idx] = raw_matches[pred_idx]
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
        """labels: [Tensor[P_i]] per image -> (positive masks, negative masks), each [Tensor[P_i] bool]."""
        pos_masks, neg_masks = [], []
        for lab in labels:
            positive = torch.where(lab >= 1)[0]
            negative = torch.where(lab == 0)[0]
            num_pos = min(int(self.batch_size_per_image * self.positive_fraction), positive.numel())
            num_neg = min(self.batch_size_per_image - num_pos, negative.numel())
            pos = positive[torch.randperm(positive.numel(), device=lab.device)[:num_pos]]
            neg = negative[torch.randperm(negative.numel(), device=lab.device)[:num_neg]]
            pos_mask = torch.zeros_like(lab, dtype=torch.bool)
            neg_mask = torch.zeros_like(lab, dtype=torch.bool)
            pos_mask[pos] = True
            neg_mask[neg] = True
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks
