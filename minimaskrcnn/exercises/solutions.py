"""Reference solutions of the exercises, written as a learner would: plain loops, one step per line, slow.

Try the exercise first! Each function has the signature of the package function it mirrors (see EXERCISES) and
passes `check(name, solution)`. The package's own versions are vectorised; these are the readable ones.

Shape glossary
    N, M   numbers of boxes (or images, for feature maps Tensor[N, C, H, W])
    G, P   ground-truth boxes and predictions of one image
    A      anchors per location;  T  anchors of all levels of one image
    R      RoIs;  K  object classes (K + 1 with the background)
    D      detections, or points of a precision-recall curve
Boxes are (x1, y1, x2, y2) with width = x2 - x1 (no "+1").
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from minimaskrcnn.ops import roi_align as fast_roi_align
from minimaskrcnn.roi_ops import roi_align_reference, roi_pool_reference


# ------------------------------------------------------------------------------------------------ 01 anchors
def cell_anchors(sizes, aspect_ratios) -> Tensor:
    """Notebook 01: the anchors centred on (0, 0), ratio-major -> Tensor[A, 4]."""
    corners = []
    for ratio in aspect_ratios:
        for size in sizes:
            h = size * math.sqrt(ratio)  # ratio = h / w and h * w = size**2
            w = size / math.sqrt(ratio)
            corners.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(corners, dtype=torch.float32).reshape(-1, 4).round()


def grid_anchors(cell, feature_size, stride) -> Tensor:
    """Notebook 01: cell Tensor[A, 4] repeated at every location of the map -> Tensor[H_l*W_l*A, 4]."""
    height, width = feature_size
    stride_y, stride_x = stride
    anchors = []
    for i in range(height):
        for j in range(width):
            x, y = j * stride_x, i * stride_y
            for anchor in cell:
                anchors.append(anchor + torch.tensor([x, y, x, y], dtype=cell.dtype))
    return torch.stack(anchors) if anchors else cell.new_zeros((0, 4))


# ------------------------------------------------------------------------------------------------ 02 IoU, matching
def box_iou(boxes1, boxes2) -> Tensor:
    """Notebook 02: IoU of every pair -> Tensor[N, M]."""
    iou = torch.zeros((len(boxes1), len(boxes2)), dtype=boxes1.dtype)
    for i, (ax1, ay1, ax2, ay2) in enumerate(boxes1.tolist()):
        for j, (bx1, by1, bx2, by2) in enumerate(boxes2.tolist()):
            inter_w = max(min(ax2, bx2) - max(ax1, bx1), 0.0)
            inter_h = max(min(ay2, by2) - max(ay1, by1), 0.0)
            inter = inter_w * inter_h
            union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
            iou[i, j] = inter / union
    return iou


class Matcher:
    """Notebook 02: Matcher(high, low, allow_low_quality_matches)(iou Tensor[G, P]) -> Tensor[P] int64."""

    def __init__(self, high_threshold, low_threshold, allow_low_quality_matches=False):
        self.high, self.low, self.allow = high_threshold, low_threshold, allow_low_quality_matches

    def __call__(self, iou):
        num_gt, num_pred = iou.shape
        matches = torch.full((num_pred,), -1, dtype=torch.int64)  # -1: negative
        if num_gt == 0:
            return matches
        best_iou, best_gt = iou.max(dim=0)
        for p in range(num_pred):
            if best_iou[p] >= self.high:
                matches[p] = best_gt[p]
            elif best_iou[p] >= self.low:
                matches[p] = -2  # between the thresholds: ignored
        if self.allow:
            for g in range(num_gt):
                for p in range(num_pred):
                    if iou[g, p] == iou[g].max():  # one of this ground truth's best predictions
                        matches[p] = best_gt[p]
        return matches


# ------------------------------------------------------------------------------------------------ 03 coding, NMS
def _centres_and_sizes(boxes):
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w, h


def encode_boxes(targets, anchors, weights) -> Tensor:
    """Notebook 03: deltas (dx, dy, dw, dh) from anchors to targets -> Tensor[N, 4]."""
    wx, wy, ww, wh = weights
    tx, ty, tw, th = _centres_and_sizes(targets)
    ax, ay, aw, ah = _centres_and_sizes(anchors)
    dx = wx * (tx - ax) / aw
    dy = wy * (ty - ay) / ah
    dw = ww * torch.log(tw / aw)
    dh = wh * torch.log(th / ah)
    return torch.stack([dx, dy, dw, dh], dim=1)


def decode_boxes(deltas, anchors, weights, clamp=math.log(1000.0 / 16)) -> Tensor:
    """Notebook 03: boxes from deltas Tensor[N, C*4] and anchors Tensor[N, 4] -> Tensor[N, C*4]."""
    wx, wy, ww, wh = weights
    ax, ay, aw, ah = _centres_and_sizes(anchors.to(deltas.dtype))
    columns = []
    for c in range(deltas.shape[1] // 4):  # one group of 4 deltas per class
        dx, dy = deltas[:, 4 * c] / wx, deltas[:, 4 * c + 1] / wy
        dw = torch.clamp(deltas[:, 4 * c + 2] / ww, max=clamp)
        dh = torch.clamp(deltas[:, 4 * c + 3] / wh, max=clamp)
        cx, cy = ax + dx * aw, ay + dy * ah
        w, h = aw * torch.exp(dw), ah * torch.exp(dh)
        columns += [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    return torch.stack(columns, dim=1)


def nms(boxes, scores, iou_threshold) -> Tensor:
    """Notebook 03: greedy NMS -> indices Tensor[K] int64 by decreasing score."""
    order = sorted(range(len(boxes)), key=lambda i: -float(scores[i]))  # sorted() is stable: ties keep index order
    iou = box_iou(boxes, boxes)
    keep = []
    for i in order:
        if all(iou[i, k] <= iou_threshold for k in keep):
            keep.append(i)
    return torch.tensor(keep, dtype=torch.int64)


def batched_nms(boxes, scores, idxs, iou_threshold) -> Tensor:
    """Notebook 03: NMS within each category -> indices Tensor[K] int64 by decreasing score."""
    keep = []
    for category in idxs.unique().tolist():
        members = torch.where(idxs == category)[0]
        keep += members[nms(boxes[members], scores[members], iou_threshold)].tolist()
    keep.sort(key=lambda i: (-float(scores[i]), i))
    return torch.tensor(keep, dtype=torch.int64)


def clip_boxes(boxes, size) -> Tensor:
    """Notebook 03: boxes Tensor[..., 4] clipped to the image (height, width)."""
    height, width = size
    out = boxes.clone()
    for k, limit in enumerate((width, height, width, height)):
        out[..., k] = out[..., k].clamp(min=0, max=limit)
    return out


# ------------------------------------------------------------------------------------------------ 04 FPN
def fpn_top_down(laterals) -> list:
    """Notebook 04: the FPN's top-down merge, [Tensor[N, F, H_l, W_l]] finest first -> the merged maps."""
    merged = [None] * len(laterals)
    merged[-1] = laterals[-1]  # the coarsest level has nothing above it
    for level in range(len(laterals) - 2, -1, -1):
        above = F.interpolate(merged[level + 1], size=laterals[level].shape[-2:], mode="nearest")
        merged[level] = laterals[level] + above
    return merged


# ------------------------------------------------------------------------------------------------ 05 RPN
def flatten_predictions(logits, deltas):
    """Notebook 05: per-level head outputs -> (Tensor[N, T], Tensor[N, T, 4]) in the anchors' order."""
    flat_logits, flat_deltas = [], []
    for lg, dl in zip(logits, deltas):
        n, a, h, w = lg.shape
        flat_logits.append(lg.permute(0, 2, 3, 1).reshape(n, h * w * a))  # (N, A, H, W) -> (N, H*W*A)
        dl = dl.reshape(n, a, 4, h, w).permute(0, 3, 4, 1, 2)  # (N, A*4, H, W) -> (N, H, W, A, 4)
        flat_deltas.append(dl.reshape(n, h * w * a, 4))
    return torch.cat(flat_logits, dim=1), torch.cat(flat_deltas, dim=1)


def filter_proposals(proposals, objectness, level_sizes, image_sizes, pre_nms_top_n, post_nms_top_n, nms_thresh,
                     min_size=1e-3, score_thresh=0.0):
    """Notebook 05: decoded boxes + logits -> per image (boxes [Tensor[P_i, 4]], probabilities [Tensor[P_i]])."""
    all_boxes, all_scores = [], []
    for i, size in enumerate(image_sizes):
        boxes, logits, levels, start = [], [], [], 0
        for level, count in enumerate(level_sizes):  # the best pre_nms_top_n of each level
            top = objectness[i, start:start + count].topk(min(pre_nms_top_n, count)).indices + start
            boxes.append(proposals[i, top])
            logits.append(objectness[i, top])
            levels += [level] * len(top)
            start += count
        boxes = clip_boxes(torch.cat(boxes), size)
        scores = torch.sigmoid(torch.cat(logits))
        levels = torch.tensor(levels, dtype=torch.int64)
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        ok = (widths >= min_size) & (heights >= min_size) & (scores >= score_thresh)
        boxes, scores, levels = boxes[ok], scores[ok], levels[ok]
        keep = batched_nms(boxes, scores, levels, nms_thresh)[:post_nms_top_n]
        all_boxes.append(boxes[keep])
        all_scores.append(scores[keep])
    return all_boxes, all_scores


# ------------------------------------------------------------------------------------------------ 06 RoI ops
# The readable RoIPool and RoIAlign live beside the fast ops in minimaskrcnn/roi_ops.py (notebook 06 shows them):
# loops over RoIs, bins and bilinear samples.
roi_pool = roi_pool_reference
roi_align = roi_align_reference


def assign_levels(boxes, k_min, k_max, canonical_scale=224, canonical_level=4, eps=1e-6) -> Tensor:
    """Notebook 06: FPN level of each box, counted from k_min -> Tensor[R] int64."""
    levels = []
    for x1, y1, x2, y2 in boxes.tolist():
        side = math.sqrt((x2 - x1) * (y2 - y1))
        level = math.floor(canonical_level + math.log2(side / canonical_scale) + eps) if side > 0 else k_min
        levels.append(min(max(level, k_min), k_max) - k_min)
    return torch.tensor(levels, dtype=torch.int64)


# ------------------------------------------------------------------------------------------------ 07 box head
def postprocess_detections(class_logits, box_regression, proposals, image_sizes,
                           box_coder_weights=(10.0, 10.0, 5.0, 5.0), score_thresh=0.05, nms_thresh=0.5,
                           detections_per_img=100, min_size=1e-2):
    """Notebook 07: box-head outputs -> per image (boxes, scores, labels), NMS per class."""
    probabilities = F.softmax(class_logits, dim=-1)
    num_classes = class_logits.shape[1]
    all_boxes, all_scores, all_labels = [], [], []
    start = 0
    for rois, size in zip(proposals, image_sizes):
        stop = start + len(rois)
        boxes = decode_boxes(box_regression[start:stop], rois, box_coder_weights)
        boxes = clip_boxes(boxes.reshape(len(rois), num_classes, 4), size)  # (R_i, (K+1)*4) -> (R_i, K+1, 4)
        scores = probabilities[start:stop]
        found = []  # (score, RoI, class, box) of the detections that survive their class's NMS
        for k in range(1, num_classes):  # class 0 is the background
            w, h = boxes[:, k, 2] - boxes[:, k, 0], boxes[:, k, 3] - boxes[:, k, 1]
            candidates = torch.where((scores[:, k] > score_thresh) & (w >= min_size) & (h >= min_size))[0]
            kept = candidates[nms(boxes[candidates, k], scores[candidates, k], nms_thresh)]
            found += [(float(scores[r, k]), int(r), k, boxes[r, k]) for r in kept]
        found.sort(key=lambda d: (-d[0], d[1], d[2]))  # by score; ties: RoI, then class
        found = found[:detections_per_img]
        all_boxes.append(torch.stack([d[3] for d in found]) if found else boxes.new_zeros((0, 4)))
        all_scores.append(scores.new_tensor([d[0] for d in found]))
        all_labels.append(torch.tensor([d[2] for d in found], dtype=torch.int64))
        start = stop
    return all_boxes, all_scores, all_labels


# ------------------------------------------------------------------------------------------------ 08 masks
def paste_mask(mask, box, image_size) -> Tensor:
    """Notebook 08: one mask resized onto its integer box (inclusive corners) in an empty image -> Tensor[H, W]."""
    x1, y1, x2, y2 = box
    height, width = image_size
    w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    resized = F.interpolate(mask[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    image = mask.new_zeros((height, width))
    for y in range(max(y1, 0), min(y2 + 1, height)):  # x2, y2 are inside the box; a degenerate box pastes nothing
        for x in range(max(x1, 0), min(x2 + 1, width)):
            image[y, x] = resized[y - y1, x - x1]
    return image


def mask_targets(gt_masks, rois, matched_idxs, resolution) -> Tensor:
    """Notebook 08: each RoI's ground-truth mask cropped and resized by RoIAlign -> Tensor[P, M, M]."""
    targets = []
    for roi, gt in zip(rois, matched_idxs.tolist()):
        mask = gt_masks[gt][None, None].to(rois.dtype)  # (H, W) -> (1, 1, H, W)
        crop = fast_roi_align(mask, [roi[None]], resolution, 1.0, -1, False)  # (1, 1, M, M)
        targets.append(crop[0, 0])
    return torch.stack(targets) if targets else rois.new_zeros((0, resolution, resolution))


def expand_boxes(boxes, scale) -> Tensor:
    """Notebook 08: boxes grown about their centres by scale -> Tensor[D, 4]."""
    out = []
    for x1, y1, x2, y2 in boxes.tolist():
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        half_w, half_h = (x2 - x1) / 2 * scale, (y2 - y1) / 2 * scale
        out.append([cx - half_w, cy - half_h, cx + half_w, cy + half_h])
    return torch.tensor(out, dtype=boxes.dtype).reshape(-1, 4)


# ------------------------------------------------------------------------------------------------ 09 losses
def smooth_l1(input, target, beta) -> Tensor:
    """Notebook 09: summed smooth-L1 -> a scalar Tensor."""
    x = (input - target).abs()
    if beta == 0:
        return x.sum()
    return torch.where(x < beta, 0.5 * x**2 / beta, x - 0.5 * beta).sum()


def box_regression_loss(box_deltas, labels, target_deltas, beta=1 / 9) -> Tensor:
    """Notebook 09: smooth-L1 of each positive RoI's own-class deltas, summed, / R -> a scalar Tensor."""
    total = box_deltas.new_zeros(())
    for r, label in enumerate(labels.tolist()):
        if label > 0:
            predicted = box_deltas[r, 4 * label: 4 * label + 4]
            total = total + smooth_l1(predicted, target_deltas[r], beta)
    return total / max(len(labels), 1)


def mask_loss(mask_logits, labels, mask_targets) -> Tensor:
    """Notebook 09: BCE on each positive's own-class mask, mean over every pixel -> a scalar Tensor."""
    if len(labels) == 0:
        return mask_logits.sum() * 0
    total = mask_logits.new_zeros(())
    for p, label in enumerate(labels.tolist()):
        total = total + F.binary_cross_entropy_with_logits(mask_logits[p, label], mask_targets[p], reduction="sum")
    return total / mask_targets.numel()


# ------------------------------------------------------------------------------------------------ 11 evaluation
def xyxy_to_xywh(boxes) -> Tensor:
    """Notebook 11: (x1, y1, x2, y2) -> COCO's (x, y, width, height), Tensor[D, 4]."""
    out = boxes.clone()
    out[:, 2] = boxes[:, 2] - boxes[:, 0]
    out[:, 3] = boxes[:, 3] - boxes[:, 1]
    return out


def average_precision(recall, precision) -> float:
    """Notebook 11: COCO's 101-point interpolated AP of one precision-recall curve."""
    recall, precision = recall.tolist(), precision.tolist()
    for i in range(len(precision) - 2, -1, -1):  # the envelope: best precision at this or a higher recall
        precision[i] = max(precision[i], precision[i + 1])
    total = 0.0
    for t in range(101):
        threshold = t / 100
        reached = [p for r, p in zip(recall, precision) if r >= threshold]
        total += reached[0] if reached else 0.0  # the first point whose recall reaches the threshold
    return total / 101
