"""Box geometry: areas, IoU, clipping, delta coding and non-maximum suppression.

Built in notebooks/02_iou_matching.ipynb (IoU) and notebooks/03_box_coding_nms.ipynb (coding, NMS).

Shape glossary
    N, M   numbers of boxes
    C      number of classes whose deltas are stacked side by side (C = 1 for the RPN)
Boxes are absolute (x1, y1, x2, y2) floats; width = x2 - x1 (no "+1").

Precision: every function here computes in float32 (or float64) when given float16 / bfloat16 boxes or deltas, as
mixed precision (autocast) produces them. In half precision an ordinary image's boxes lose whole pixels (bfloat16
keeps 8 significant bits: 800 +- 4 px) and their areas overflow (float16's largest value, 65504, is less
than the area of a 256 x 256 px box).
"""
import math

import torch
from torch import Tensor

# Largest log-scale change a predicted delta may ask for: exp(4.135) = 1000 / 16 (as in Detectron).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def upcast(t: Tensor) -> Tensor:
    """float16 / bfloat16 -> float32; other dtypes unchanged. Box arithmetic goes through it (see Precision above)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def box_area(boxes: Tensor) -> Tensor:
    """boxes: Tensor[N, 4] (x1, y1, x2, y2) -> Tensor[N] areas (float32 for half-precision boxes)."""
    boxes = upcast(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union. boxes1: Tensor[N, 4], boxes2: Tensor[M, 4] -> Tensor[N, M].

    Same semantics as torchvision.ops.box_iou (0/0 for two empty boxes gives NaN there too); computed in float32
    for float16 / bfloat16 boxes.
    """
    boxes1, boxes2 = upcast(boxes1), upcast(boxes2)
    area1, area2 = box_area(boxes1), box_area(boxes2)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip boxes: Tensor[..., 4] to an image of size (height, width); float32 out for half-precision boxes.

    (bfloat16 cannot hold most image sizes: a width of 1333 would be stored as 1336, outside the image.)
    """
    height, width = size
    boxes = upcast(boxes)
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices (Tensor[K] int64) of boxes: Tensor[N, 4] whose width and height are both >= min_size."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((w >= min_size) & (h >= min_size))[0]


def encode_boxes(targets: Tensor, anchors: Tensor, weights: tuple[float, float, float, float]) -> Tensor:
    """Deltas that turn anchors into targets. targets, anchors: Tensor[N, 4] -> Tensor[N, 4] (dx, dy, dw, dh).

    dx = wx * (tx - ax) / aw, dy = wy * (ty - ay) / ah, dw = ww * log(tw / aw), dh = wh * log(th / ah),
    with centres (x, y) and sizes (w, h). Half-precision inputs are encoded in float32.
    Built in notebooks/03_box_coding_nms.ipynb.
    """
    wx, wy, ww, wh = weights
    targets, anchors = upcast(targets), upcast(anchors)
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    tw, th = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
    tx, ty = targets[:, 0] + 0.5 * tw, targets[:, 1] + 0.5 * th
    return torch.stack(
        (wx * (tx - ax) / aw, wy * (ty - ay) / ah, ww * torch.log(tw / aw), wh * torch.log(th / ah)), dim=1
    )


def decode_boxes(
    deltas: Tensor,
    anchors: Tensor,
    weights: tuple[float, float, float, float],
    clamp: float = BBOX_XFORM_CLIP,
) -> Tensor:
    """Apply deltas: Tensor[N, C*4] to anchors: Tensor[N, 4] -> boxes Tensor[N, C*4].

    The inverse of encode_boxes; dw and dh are clamped to `clamp` first so exp() cannot overflow. The boxes have the
    deltas' dtype, float32 for half-precision deltas (under autocast): the anchors are cast to it, never down to half.
    Built in notebooks/03_box_coding_nms.ipynb.
    """
    wx, wy, ww, wh = weights
    deltas = upcast(deltas)
    anchors = anchors.to(deltas.dtype)
    aw, ah = anchors[:, 2:3] - anchors[:, 0:1], anchors[:, 3:4] - anchors[:, 1:2]  # (N, 1)
    ax, ay = anchors[:, 0:1] + 0.5 * aw, anchors[:, 1:2] + 0.5 * ah
    dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy  # (N, C)
    dw = (deltas[:, 2::4] / ww).clamp(max=clamp)
    dh = (deltas[:, 3::4] / wh).clamp(max=clamp)
    cx, cy = dx * aw + ax, dy * ah + ay
    half_w, half_h = 0.5 * torch.exp(dw) * aw, 0.5 * torch.exp(dh) * ah
    boxes = torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=2)  # (N, C, 4)
    return boxes.flatten(1)  # (N, C, 4) -> (N, C*4)


def _iou_columns(cols1: Tensor, cols2: Tensor) -> Tensor:
    """IoU of boxes given as columns Tensor[5, N] and Tensor[5, M] (x1, y1, x2, y2, area) -> Tensor[N, M]."""
    width = torch.min(cols1[2, :, None], cols2[2, None]) - torch.max(cols1[0, :, None], cols2[0, None])
    height = torch.min(cols1[3, :, None], cols2[3, None]) - torch.max(cols1[1, :, None], cols2[1, None])
    inter = width.clamp_(min=0).mul_(height.clamp_(min=0))  # (N, M)
    return inter / (cols1[4, :, None] + cols2[4, None] - inter)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, block_size: int | None = None) -> Tensor:
    """Greedy non-maximum suppression, as torchvision.ops.nms.

    boxes: Tensor[N, 4], scores: Tensor[N] -> indices Tensor[K] int64 of the kept boxes, by decreasing score
    (equal scores: lower index first). A box is dropped when its IoU with a higher-scoring kept box is
    > iou_threshold. Built in notebooks/03_box_coding_nms.ipynb.

    The greedy loop "take the best box, drop what it overlaps, repeat" is done in blocks of `block_size` boxes in
    score order, so memory stays O(block_size * K) instead of O(N^2) and no Python loop runs per box:
      1. drop the block's boxes that overlap an already kept box (one IoU matrix, block x kept);
      2. settle the block among itself. Box i survives iff no surviving box j < i of the block overlaps it.
         Starting from "all survive" and re-applying that rule makes entries 0..t exact after t rounds (entry i
         only depends on earlier ones), so the rounds stop at the one fixed point, the greedy answer.
    block_size None: 256 on the CPU, 4096 on a GPU, where a larger IoU matrix costs little and each block's
    rounds wait on the device (a host sync per round), so fewer blocks are faster. The result is the same.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms: boxes must be Tensor[N, 4] and scores Tensor[N], got {tuple(boxes.shape)} "
                         f"and {tuple(scores.shape)}")
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    if block_size is None:
        block_size = 256 if boxes.device.type == "cpu" else 4096
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_boxes = upcast(boxes)[order]  # IoUs in float32 for half-precision boxes
    cols = torch.cat((sorted_boxes.T, box_area(sorted_boxes)[None])).contiguous()  # (N, 4) -> (5, N) with areas
    kept = []  # indices into sorted_boxes, by block
    kept_cols = cols[:, :0]
    for start in range(0, len(order), block_size):
        block = cols[:, start : start + block_size]
        idx = torch.arange(start, start + block.shape[1], device=boxes.device)
        if kept_cols.shape[1]:  # 1. suppressed by boxes kept in earlier blocks
            alive = ~(_iou_columns(block, kept_cols) > iou_threshold).any(dim=1)
            block, idx = block[:, alive], idx[alive]
        if block.shape[1] == 0:
            continue
        # 2. within the block: overlaps[j, i] = box j comes before box i and overlaps it
        overlaps = (_iou_columns(block, block) > iou_threshold).triu_(diagonal=1)
        overlaps = overlaps.float()  # 0/1 counts, summed exactly by a matrix product
        survive = torch.ones(block.shape[1], device=boxes.device)
        while True:
            new = (survive @ overlaps == 0).float()  # (B,) @ (B, B): number of surviving earlier overlaps
            if torch.equal(new, survive):
                break
            survive = new
        keep_block = survive.bool()
        kept.append(idx[keep_block])
        kept_cols = torch.cat((kept_cols, block[:, keep_block]), dim=1)
    return order[torch.cat(kept)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS done independently per category idxs: Tensor[N] int64, as torchvision.ops.batched_nms.

    Boxes of different categories are shifted apart by more than the whole extent of the boxes so they can never
    overlap; one nms call then does every category at once (no Python loop over categories). The shifted boxes are
    float32 for half-precision boxes (shifts of a few thousand pixels per category would overflow float16).
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    boxes = upcast(boxes)
    offsets = idxs.to(boxes) * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)
