"""The five Mask R-CNN losses, as free functions, each normalised as in the reference implementation.

Built in notebooks/09_losses.ipynb (RPN losses first used in notebooks/05_rpn.ipynb).

Shape glossary
    S   sampled anchors (RPN) over the whole batch
    R   sampled RoIs over the whole batch;  P of them positive
    K   object classes (+1 for background: class 0)
    M   mask resolution (28 in the reference)
"""
import torch
import torch.nn.functional as F
from torch import Tensor


def smooth_l1(input: Tensor, target: Tensor, beta: float) -> Tensor:
    """Summed smooth-L1: 0.5 x**2 / beta where |x| < beta, |x| - 0.5 beta elsewhere (beta = 0 is plain L1)."""
    if beta == 0:
        return (input - target).abs().sum()
    return F.smooth_l1_loss(input, target, beta=beta, reduction="sum")


def _masked_target(input: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """target where mask (bool, broadcastable), elsewhere input itself (detached): those elements then add 0 to a
    distance loss and get gradient 0, whatever their target held (even inf). A mask over a fixed-size tensor instead
    of a selection of its rows: no host sync."""
    return torch.where(mask, target, input.detach())


def rpn_objectness_loss(logits: Tensor, labels: Tensor, sampled: Tensor | None = None) -> Tensor:
    """Binary cross-entropy of the sampled anchors. logits: Tensor[S], labels: Tensor[S] in {0, 1}; mean over S.

    sampled: Tensor[S] bool (None: all): the anchors that count; the others' labels may be anything.
    """
    if sampled is None:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    return torch.where(sampled, loss, 0.0).sum() / sampled.sum()


def rpn_box_loss(pred_deltas: Tensor, target_deltas: Tensor, num_sampled: int | Tensor, beta: float = 1 / 9,
                 positive: Tensor | None = None) -> Tensor:
    """Smooth-L1 over the positive anchors' deltas (Tensor[P, 4] each), divided by the number sampled S.

    positive: Tensor[P] bool (None: all rows): the rows that count. num_sampled may be a Tensor (no host sync).
    """
    if positive is not None:
        target_deltas = _masked_target(pred_deltas, target_deltas, positive[:, None])
    denominator = num_sampled.clamp(min=1) if isinstance(num_sampled, Tensor) else max(num_sampled, 1)
    return smooth_l1(pred_deltas, target_deltas, beta) / denominator


def classifier_loss(class_logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over K + 1 classes. class_logits: Tensor[R, K+1], labels: Tensor[R] int64; mean over R."""
    return F.cross_entropy(class_logits, labels)


def box_regression_loss(box_deltas: Tensor, labels: Tensor, target_deltas: Tensor, beta: float = 1 / 9) -> Tensor:
    """Smooth-L1 on the deltas predicted for each positive RoI's own class, summed and divided by R.

    box_deltas: Tensor[R, (K+1)*4] class-specific, labels: Tensor[R] (0 = background), target_deltas: Tensor[R, 4]
    (read for the positives only). The positives are a mask, not a selection: no host sync.
    """
    per_class = box_deltas.reshape(box_deltas.shape[0], -1, 4)  # (R, (K+1)*4) -> (R, K+1, 4)
    pred = per_class[torch.arange(labels.numel(), device=labels.device), labels]  # (R, 4): each RoI's own class
    target_deltas = _masked_target(pred, target_deltas, (labels > 0)[:, None])
    return smooth_l1(pred, target_deltas, beta) / max(labels.numel(), 1)


def mask_loss(mask_logits: Tensor, labels: Tensor, mask_targets: Tensor) -> Tensor:
    """Per-pixel binary cross-entropy on the ground-truth class's channel only (no competition between classes).

    mask_logits: Tensor[P, K+1, M, M], labels: Tensor[P] (the positives' classes), mask_targets: Tensor[P, M, M]
    in 0..1; mean over P*M*M. With no positives the loss is a zero that still reaches every logit's graph.
    """
    if mask_targets.numel() == 0:
        return mask_logits.sum() * 0
    chosen = mask_logits[torch.arange(labels.numel(), device=labels.device), labels]  # (P, M, M)
    return F.binary_cross_entropy_with_logits(chosen, mask_targets.to(chosen.dtype))
