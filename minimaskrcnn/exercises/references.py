"""References for the two exercises whose idea has no function of its own in the package yet.

The FPN's top-down merge lives inside FPN.forward (minimaskrcnn.backbone), and COCO's AP is computed by pycocotools
(minimaskrcnn.evaluation calls it); the exercises fpn_top_down (notebook 04) and average_precision (notebook 11)
are checked against these, which follow them step by step.

Shape glossary
    N, F       images and channels of the FPN maps
    H_l, W_l   height and width of level l
    D          points of a precision-recall curve (one per detection, in decreasing score order)
"""
import numpy as np
import torch
from torch import Tensor

from minimaskrcnn.backbone import FPN


def fpn_top_down_reference(laterals: list[Tensor]) -> list[Tensor]:
    """The FPN's top-down merge alone: FPN.forward with every 1x1 lateral and 3x3 output conv set to the identity.

    laterals: [Tensor[N, F, H_l, W_l]] finest first -> merged [Tensor[N, F, H_l, W_l]] (without the extra "pool").
    The exercise of notebooks/04_backbone_fpn.ipynb.
    """
    channels = laterals[0].shape[1]
    fpn = FPN([channels] * len(laterals), channels).to(laterals[0].dtype)
    eye = torch.eye(channels, dtype=laterals[0].dtype)
    with torch.no_grad():
        for inner, layer in zip(fpn.inner_blocks, fpn.layer_blocks):
            inner[0].weight.copy_(eye[:, :, None, None])
            layer[0].weight.zero_()[:, :, 1, 1] = eye
            inner[0].bias.zero_()
            layer[0].bias.zero_()
        return fpn(laterals)[:-1]


def average_precision_reference(recall: Tensor, precision: Tensor) -> float:
    """COCO's AP of one precision-recall curve, as pycocotools' COCOeval.accumulate computes it.

    recall, precision: Tensor[D] after each detection in decreasing score order (recall non-decreasing).
    1. Make precision non-increasing from the right (each point takes the best precision at any higher recall).
    2. At each of the 101 recall thresholds 0, 0.01, ..., 1 read the precision of the first point whose recall
       reaches it (0 when none does). 3. AP = the mean of the 101 values. (A curve with no point gives 0.)
    The exercise of notebooks/11_train_on_gpu.ipynb.
    """
    recall, precision = recall.double(), precision.double()
    envelope = precision.flip(0).cummax(0).values.flip(0)  # best precision at this or any later point
    thresholds = torch.from_numpy(np.linspace(0.0, 1.0, 101))  # pycocotools' recThrs (torch.linspace rounds 6 apart)
    first = torch.searchsorted(recall.contiguous(), thresholds, side="left")  # first point with recall >= threshold
    padded = torch.cat((envelope, envelope.new_zeros(1)))  # index D (no point reaches it) -> 0
    return float(padded[first].mean())
