"""Box geometry: areas, IoU, clipping, delta coding and non-maximum suppression.

Built in notebooks/02_iou_matching.ipynb (IoU) and notebooks/03_box_coding_nms.ipynb (coding, NMS).

Shape glossary
    N, M   numbers of boxes
    C      number of classes whose deltas are stacked side by side (C = 1 for the RPN)
    G, n   independent NMS problems (images, levels) of n boxes each;  B  boxes per NMS block
Boxes are absolute (x1, y1, x2, y2) floats; width = x2 - x1 (no "+1").

Precision: every function here computes in float32 (or float64) when given float16 / bfloat16 boxes or deltas, as
mixed precision (autocast) produces them. In half precision an ordinary image's boxes lose whole pixels (bfloat16
keeps 8 significant bits: 800 +- 4 px) and their areas overflow (float16's largest value, 65504, is less
than the area of a 256 x 256 px box).
"""
import math

import torch
from torch import Tensor

from minimaskrcnn.syncs import counting_syncs

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


def large_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Which of boxes: Tensor[..., 4] are at least min_size wide and high -> Tensor[...] bool (no host sync)."""
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return (w >= min_size) & (h >= min_size)


def true_indices(mask: Tensor, count: int) -> Tensor:
    """The indices of the True entries of mask: Tensor[N] bool, in order, given how many there are (count, read
    once for many masks) -> Tensor[count] int64. torch.where(mask)[0] without its host sync: a stable sort puts the
    True entries first, in index order."""
    return torch.argsort((~mask).to(torch.uint8), stable=True)[:count]


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices (Tensor[K] int64) of boxes: Tensor[N, 4] whose width and height are both >= min_size."""
    return torch.where(large_boxes(boxes, min_size))[0]


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


# Fixed-point rounds that nms_mask runs on each block before it moves on. Greedy NMS on detectors' boxes settles in
# a few: at most 6, counting the round that confirms, measured on the RPN and box-head NMS of a random r50_fpn at
# 320 and 512 px and on 3000 clustered boxes at IoU 0.3 / 0.5 / 0.7. A block that needs more is caught at the end of
# the call (settled is False), which then runs again settling each block before the next.
NMS_ROUNDS = 8
# Boxes that nms / batched_nms settle at once, sync-free, before one host sync learns how many were kept; later
# segments compare only with those. 2048 holds the RPN's per-level NMS (pre_nms_top_n up to 2000) and usual detection
# post-processing; more boxes cost a sync per 2048. (One segment compares all its pairs: larger ones cost the CPU.)
NMS_SEGMENT = 2048
# Boxes per block of the CPU's NMS (_compacting_nms, the nms of before NMS_SEGMENT): small blocks, since every box a
# kept one suppresses is dropped before the next comparisons.
CPU_NMS_SEGMENT = 256
# Most IoU entries computed at once when boxes are compared with earlier ones: 2**24 (64 MB per temporary).
_MAX_PAIRS = 2**24


def _columns(boxes: Tensor) -> Tensor:
    """boxes: Tensor[G, n, 4] -> Tensor[G, 5, n]: x1, y1, x2, y2 and area as rows (contiguous columns per box)."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return torch.cat((boxes.transpose(1, 2), area[:, None]), dim=1).contiguous()


def _overlaps(cols1: Tensor, cols2: Tensor, iou_threshold: float) -> Tensor:
    """IoU > iou_threshold of boxes given as columns Tensor[G, 5, N] and Tensor[G, 5, M] (x1, y1, x2, y2, area)
    -> Tensor[G, N, M] bool. The arithmetic of torchvision's nms kernel (a NaN IoU, 0 / 0, never suppresses)."""
    width = torch.min(cols1[:, 2, :, None], cols2[:, 2, None]) - torch.max(cols1[:, 0, :, None], cols2[:, 0, None])
    height = torch.min(cols1[:, 3, :, None], cols2[:, 3, None]) - torch.max(cols1[:, 1, :, None], cols2[:, 1, None])
    inter = width.clamp_(min=0).mul_(height.clamp_(min=0))  # (G, N, M)
    return inter / (cols1[:, 4, :, None] + cols2[:, 4, None] - inter) > iou_threshold


def _suppressed(cols: Tensor, earlier: Tensor, iou_threshold: float, earlier_kept: Tensor | None,
                groups: Tensor | None, earlier_groups: Tensor | None) -> Tensor:
    """Which of the boxes cols: Tensor[G, 5, N] overlap a kept one of earlier: Tensor[G, 5, M] -> Tensor[G, N] bool.

    earlier_kept: Tensor[G, M] bool (None: all kept); groups / earlier_groups: Tensor[G, N] / [G, M] (None: one
    group), only the same group suppresses. The earlier boxes are taken a chunk at a time (_MAX_PAIRS).
    """
    num_problems, _, n = cols.shape
    out = torch.zeros((num_problems, n), dtype=torch.bool, device=cols.device)
    chunk = max(1, _MAX_PAIRS // (num_problems * max(n, 1)))
    for first in range(0, earlier.shape[2], chunk):
        part = slice(first, first + chunk)
        over = _overlaps(cols, earlier[:, :, part], iou_threshold)  # (G, N, chunk)
        if earlier_kept is not None:
            over &= earlier_kept[:, None, part]
        if groups is not None:
            over &= groups[:, :, None] == earlier_groups[:, None, part]
        out |= over.any(dim=2)
    return out


def _settle(alive: Tensor, overlaps: Tensor, survive: Tensor, rounds: int) -> tuple[Tensor, Tensor]:
    """`rounds` rounds of "box i survives iff it is alive and no surviving earlier box of its block overlaps it".

    alive, survive: Tensor[G, B] bool (survive: the state to start from); overlaps: Tensor[G, B, B] float, 1 where
    box j (row) comes before box i (column) and overlaps it -> (survive, Tensor[] bool: the last round changed nothing).
    """
    for _ in range(rounds):
        previous = survive
        # (G, 1, B) @ (G, B, B) -> (G, B): how many surviving earlier boxes overlap each box (0/1 sums, exact)
        survive = alive & (torch.matmul(survive.to(overlaps.dtype)[:, None], overlaps)[:, 0] == 0)
    return survive, (survive == previous).all()


def nms_mask(boxes: Tensor, iou_threshold: float, alive: Tensor | None = None, groups: Tensor | None = None,
             block_size: int | None = None, exact: bool = False) -> tuple[Tensor, Tensor]:
    """Greedy NMS of boxes already sorted by decreasing score, as a mask, without a host synchronisation.

    boxes: Tensor[..., n, 4], each leading index an independent problem (an image, a level); alive: Tensor[..., n]
    bool (None: all), the boxes that take part: the others are neither kept nor suppress anything; groups:
    Tensor[..., n] int64 (None: one group), only boxes of the same group suppress each other (batched NMS).
    -> (keep Tensor[..., n] bool, settled Tensor[] bool). keep is greedy NMS's answer when settled is True: every
    block settled within NMS_ROUNDS rounds. Otherwise call again with exact=True, which settles each block before
    the next (a host sync per NMS_ROUNDS rounds); settled is then True.

    The boxes are taken `block_size` at a time in score order (256 on the CPU, 4096 on a GPU; the answer does not
    depend on it), so memory stays O(block_size * n) and no Python loop runs per box:
      1. a box of the block that overlaps a box kept in an earlier block is suppressed (IoU block x earlier boxes);
      2. the block settles among itself. Box i survives iff no surviving box j < i of the block overlaps it.
         Starting from "all alive boxes survive" and re-applying that rule makes entries 0..t exact after t rounds
         (entry i only depends on earlier ones), so the rounds reach the one fixed point, the greedy answer.
    Every pair of boxes is compared once: O(n^2) work, meant for the few thousand boxes of one NMS problem.
    """
    *batch, n, _ = boxes.shape
    cols = _columns(upcast(boxes).reshape(-1, n, 4))  # (..., n, 4) -> (G, n, 4) -> (G, 5, n)
    num_problems, device = cols.shape[0], cols.device
    alive = torch.ones((num_problems, n), dtype=torch.bool, device=device) if alive is None else alive.reshape(-1, n)
    groups = None if groups is None else groups.reshape(-1, n)
    if block_size is None:
        block_size = 256 if device.type == "cpu" else 4096
    keep = torch.zeros((num_problems, n), dtype=torch.bool, device=device)
    settled = torch.ones((), dtype=torch.bool, device=device)
    for start in range(0, n, block_size):
        end = min(start + block_size, n)
        block, block_alive = cols[:, :, start:end], alive[:, start:end]
        block_groups = None if groups is None else groups[:, start:end]
        if start:  # 1. suppressed by boxes kept in earlier blocks
            block_alive = block_alive & ~_suppressed(block, cols[:, :, :start], iou_threshold, keep[:, :start],
                                                     block_groups, None if groups is None else groups[:, :start])
        # 2. within the block: overlaps[j, i] = box j comes before box i and overlaps it
        over = _overlaps(block, block, iou_threshold)
        if groups is not None:
            over &= block_groups[:, :, None] == block_groups[:, None, :]
        overlaps = over.triu_(diagonal=1).float()  # 0/1 counts, summed exactly by a matrix product
        survive, block_settled = _settle(block_alive, overlaps, block_alive, NMS_ROUNDS)
        while exact and not block_settled:  # a host sync per NMS_ROUNDS rounds
            survive, block_settled = _settle(block_alive, overlaps, survive, NMS_ROUNDS)
        keep[:, start:end] = survive
        settled &= block_settled
    return keep.reshape(*batch, n), settled


def _sorted_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, groups: Tensor | None,
                block_size: int | None, sync_free: bool) -> Tensor:
    """nms / batched_nms: sort by score, then NMS -> indices of the kept boxes, best first.

    sync_free (what a GPU runs): NMS_SEGMENT boxes at a time: those kept by earlier segments suppress, nms_mask settles
    the rest, one host sync learns how many it kept. Otherwise (the CPU, where reading a value back costs nothing):
    _compacting_nms, which drops each suppressed box at once and so compares fewer pairs. The answer is the same.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = upcast(boxes)[order]
    groups = None if groups is None else groups[order]
    if not sync_free:
        return order[_compacting_nms(boxes, iou_threshold, groups, block_size or CPU_NMS_SEGMENT)]
    kept = []  # indices into the sorted boxes, per segment
    for start in range(0, len(order), NMS_SEGMENT):
        part = slice(start, start + NMS_SEGMENT)
        seg_groups = None if groups is None else groups[part]
        alive = None
        if kept:  # suppressed by the boxes earlier segments kept
            previous = torch.cat(kept)
            alive = ~_suppressed(_columns(boxes[None, part]), _columns(boxes[None, previous]), iou_threshold, None,
                                 None if groups is None else seg_groups[None], None if groups is None
                                 else groups[None, previous])[0]
        for exact in (False, True):  # exact only when a block needed more than NMS_ROUNDS rounds
            keep, settled = nms_mask(boxes[part], iou_threshold, alive, seg_groups, block_size, exact)
            count, settled = torch.stack((keep.sum(), settled.long())).tolist()  # the host sync of the segment
            if settled:
                break
        kept.append(start + true_indices(keep, count))
    return order[torch.cat(kept)]


def _compacting_nms(boxes: Tensor, iou_threshold: float, groups: Tensor | None, block_size: int) -> Tensor:
    """Greedy NMS of boxes: Tensor[n, 4] sorted by decreasing score, for the CPU -> Tensor[K] int64 positions of the
    kept boxes, in order. groups: Tensor[n] (None: one group), as nms_mask's.

    nms_mask's two steps, block_size boxes at a time, with the boxes that drop out removed at once (boolean
    selections: a host sync each on a GPU, nothing on the CPU): a block's boxes are compared with the boxes kept so
    far, the survivors among themselves, then settled round by round until a round changes nothing.
    """
    cols = _columns(boxes[None])  # (n, 4) -> (1, 5, n)
    kept = []  # positions, per block
    kept_cols, kept_groups = cols[:, :, :0], None if groups is None else groups[None, :0]
    for start in range(0, boxes.shape[0], block_size):
        part = slice(start, start + block_size)
        block, block_groups = cols[:, :, part], None if groups is None else groups[None, part]
        index = torch.arange(start, start + block.shape[2])
        if kept:  # 1. suppressed by a box kept earlier: (1, B, K) -> (B,)
            over = _overlaps(block, kept_cols, iou_threshold)
            if groups is not None:
                over &= block_groups[:, :, None] == kept_groups[:, None, :]
            alive = ~over.any(dim=2)[0]
            index, block = index[alive], block[:, :, alive]
            block_groups = None if groups is None else block_groups[:, alive]
        if not len(index):
            continue
        # 2. within the block: overlaps[j, i] = box j comes before box i and overlaps it
        over = _overlaps(block, block, iou_threshold)  # (1, B, B)
        if groups is not None:
            over &= block_groups[:, :, None] == block_groups[:, None, :]
        overlaps = over[0].triu_(diagonal=1).float()  # (B, B)
        survive = torch.ones(len(index))
        while True:  # _settle's rounds, one at a time, until one changes nothing
            previous, survive = survive, (survive @ overlaps == 0).float()  # (B,) @ (B, B) -> (B,)
            if torch.equal(survive, previous):
                break
        survive = survive.bool()
        kept.append(index[survive])
        kept_cols = torch.cat((kept_cols, block[:, :, survive]), dim=2)
        if groups is not None:
            kept_groups = torch.cat((kept_groups, block_groups[:, survive]), dim=1)
    return torch.cat(kept) if kept else torch.zeros(0, dtype=torch.int64)


def _sync_free(device: torch.device) -> bool:
    """Whether nms runs its sync-free path: on a GPU, and on the CPU while a SyncCounter counts what a GPU would do."""
    return device.type != "cpu" or counting_syncs()


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, block_size: int | None = None) -> Tensor:
    """Greedy non-maximum suppression, as torchvision.ops.nms.

    boxes: Tensor[N, 4], scores: Tensor[N] -> indices Tensor[K] int64 of the kept boxes, by decreasing score
    (equal scores: lower index first). A box is dropped when its IoU with a higher-scoring kept box is
    > iou_threshold. Built in notebooks/03_box_coding_nms.ipynb.

    The greedy loop "take the best box, drop what it overlaps, repeat" runs on whole blocks of boxes at once
    (nms_mask); block_size only tunes speed and memory. On the CPU the suppressed boxes are dropped as the blocks go
    (_compacting_nms), which is faster there; elsewhere one host synchronisation per NMS_SEGMENT boxes (the number
    of boxes kept), as torchvision's CUDA nms has one per call.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms: boxes must be Tensor[N, 4] and scores Tensor[N], got {tuple(boxes.shape)} "
                         f"and {tuple(scores.shape)}")
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    return _sorted_nms(boxes, scores, iou_threshold, None, block_size, _sync_free(boxes.device))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS done independently per category idxs: Tensor[N] int64, as torchvision.ops.batched_nms.

    One nms pass does every category at once (no Python loop over categories): only boxes of the same category
    suppress each other. The IoUs are those of the boxes themselves, so the answer is exactly that of nms run on each
    category (no coordinate offsets, which would round). One host synchronisation per NMS_SEGMENT boxes.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    return _sorted_nms(boxes, scores, iou_threshold, idxs, None, _sync_free(boxes.device))
