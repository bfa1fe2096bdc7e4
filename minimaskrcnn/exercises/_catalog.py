"""Every exercise: its cases (hand-made, edge, random) and the typical mistakes `check` recognises, by notebook.

Shape glossary
    N, M   numbers of boxes (or images, for feature maps: Tensor[N, C, H, W])
    G, P   ground-truth boxes and predictions of one image (IoU matrices are Tensor[G, P])
    A      anchors per location;  T  anchors of all levels
    R      RoIs;  K  object classes (K + 1 with the background)
    M'     side of a square mask before pasting
A mistake is a wrong version of the exercise, written on purpose: when a learner's answer gives the same output as
one of them on the failing case, `check` names the mistake.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from minimaskrcnn.anchors import cell_anchors, grid_anchors
from minimaskrcnn.boxes import batched_nms, box_area, box_iou, clip_boxes, decode_boxes, encode_boxes, nms
from minimaskrcnn.evaluation import xyxy_to_xywh
from minimaskrcnn.losses import box_regression_loss, mask_loss, smooth_l1
from minimaskrcnn.masks import expand_boxes, mask_targets, paste_mask
from minimaskrcnn.matching import Matcher
from minimaskrcnn.roi_heads import postprocess_detections
from minimaskrcnn.roi_ops import assign_levels, roi_align, roi_pool
from minimaskrcnn.rpn import filter_proposals, flatten_predictions

from minimaskrcnn.exercises._checking import Case, Exercise
from minimaskrcnn.exercises.references import average_precision_reference, fpn_top_down_reference


def _t(rows, dtype=torch.float32) -> Tensor:
    return torch.tensor(rows, dtype=dtype)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_boxes(n: int, g: torch.Generator, extent: float = 40.0, dtype=torch.float32) -> Tensor:
    """n boxes Tensor[n, 4] (x1, y1, x2, y2), corners in [0, extent), sides 1..20 (aspect ratios vary)."""
    xy = torch.rand(n, 2, generator=g) * extent
    wh = 1 + torch.rand(n, 2, generator=g) * 19
    return torch.cat((xy, xy + wh), dim=1).to(dtype)


def _xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Read (x1, y1, x2, y2) boxes as if they were (x, y, w, h): what a learner who mixes them up computes on."""
    return torch.cat((boxes[..., :2], boxes[..., :2] + boxes[..., 2:]), dim=-1)


def _plus_one(boxes: Tensor) -> Tensor:
    """Widen every box by one pixel: the old "+1" convention (w = x2 - x1 + 1)."""
    return boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=boxes.dtype)


# ------------------------------------------------------------------------------------------------ 01 anchors
def _cell_variant(sizes, aspect_ratios, inverse=False, size_major=False, rounded=True, half=True):
    out = []
    if size_major:
        pairs = [(s, r) for s in sizes for r in aspect_ratios]
    else:
        pairs = [(s, r) for r in aspect_ratios for s in sizes]
    for s, r in pairs:
        r = 1 / r if inverse else r
        w, h = s / math.sqrt(r), s * math.sqrt(r)
        w, h = (w / 2, h / 2) if half else (w, h)
        out.append([-w, -h, w, h])
    boxes = torch.tensor(out, dtype=torch.float32).reshape(-1, 4)
    return boxes.round() if rounded else boxes


def _cell_cases():
    return [Case("one size, ratio 1", {"sizes": (32,), "aspect_ratios": (1.0,)}),
            Case("ratios 0.5, 1, 2", {"sizes": (32,), "aspect_ratios": (0.5, 1.0, 2.0)}),
            Case("two sizes, three ratios (order)", {"sizes": (32, 64), "aspect_ratios": (0.5, 1.0, 2.0)}),
            Case("odd size, ratio 0.25 (rounding)", {"sizes": (45,), "aspect_ratios": (0.25, 3.0)}),
            Case("no sizes (empty)", {"sizes": (), "aspect_ratios": (1.0,)})]


def _grid_variant_anchor_major(cell, feature_size, stride):
    return grid_anchors(cell, feature_size, stride).view(-1, len(cell), 4).transpose(0, 1).reshape(-1, 4)


def _grid_cases():
    cell = cell_anchors((16,), (0.5, 1.0, 2.0))
    return [Case("1 x 1 map", {"cell": cell, "feature_size": (1, 1), "stride": (8, 8)}),
            Case("2 x 3 map, stride 8", {"cell": cell[1:2], "feature_size": (2, 3), "stride": (8, 8)}),
            Case("3 x 2 map, stride_y 4, stride_x 16", {"cell": cell, "feature_size": (3, 2), "stride": (4, 16)}),
            Case("empty map", {"cell": cell, "feature_size": (0, 3), "stride": (8, 8)})]


# ------------------------------------------------------------------------------------------------ 02 IoU, matching
def _iou_union_not_reduced(boxes1, boxes2):
    wh = (torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:]) - torch.max(boxes1[:, None, :2], boxes2[None, :, :2]))
    inter = wh.clamp(min=0).prod(-1)
    return inter / (box_area(boxes1)[:, None] + box_area(boxes2)[None])


def _iou_not_clamped(boxes1, boxes2):
    wh = (torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:]) - torch.max(boxes1[:, None, :2], boxes2[None, :, :2]))
    inter = wh.prod(-1)
    return inter / (box_area(boxes1)[:, None] + box_area(boxes2)[None] - inter)


def _iou_over_first_area(boxes1, boxes2):
    wh = (torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:]) - torch.max(boxes1[:, None, :2], boxes2[None, :, :2]))
    return wh.clamp(min=0).prod(-1) / box_area(boxes1)[:, None]


def _iou_cases():
    g = _gen(2)
    a = _t([[0, 0, 10, 10]])
    return [Case("identical boxes", {"boxes1": a, "boxes2": a.clone()}),
            Case("partial overlap (hand: 25 / 175)", {"boxes1": a, "boxes2": _t([[5, 5, 15, 15]])}),
            Case("touching boxes (shared edge)", {"boxes1": a, "boxes2": _t([[10, 0, 20, 10]])}),
            Case("disjoint boxes", {"boxes1": a, "boxes2": _t([[12, 14, 20, 30]])}),
            Case("box inside another, aspect ratio 4", {"boxes1": _t([[0, 0, 40, 10]]), "boxes2": _t([[5, 2, 15, 8]])}),
            Case("no boxes1 (empty)", {"boxes1": _t([]).view(0, 4), "boxes2": a}),
            Case("random, float64", {"boxes1": _random_boxes(4, g, 20, torch.float64),
                                     "boxes2": _random_boxes(3, g, 20, torch.float64)}),
            Case("random, float32", {"boxes1": _random_boxes(5, g, 20), "boxes2": _random_boxes(6, g, 20)})]


def _matcher_variant(strict=False, low_quality="all"):
    def build(high, low, allow):
        def match(iou):
            if iou.shape[0] == 0:
                return torch.full((iou.shape[1],), -1, dtype=torch.int64)
            best, matches = iou.max(dim=0)
            raw = matches.clone()
            below = best <= low if strict else best < low
            above = best > high if strict else best >= high
            matches[below] = -1
            matches[~below & ~above] = -2
            if allow and low_quality == "all":
                _, pred = torch.where(iou == iou.max(dim=1, keepdim=True).values)
                matches[pred] = raw[pred]
            elif allow and low_quality == "argmax":
                pred = iou.argmax(dim=1)
                matches[pred] = raw[pred]
            return matches
        return match
    return build


def _matcher_cases():
    # thresholds 0.75 / 0.25: exact in float32, so a learner comparing Python floats meets the same numbers
    at_thresholds = _t([[0.75, 0.25, 0.5, 0.125, 0.6875], [0.125, 0.1875, 0.625, 0.25, 0.75]])
    ties = _t([[0.4, 0.4, 0.1, 0.0], [0.0, 0.2, 0.6, 0.6]])
    g = _gen(3)
    return [Case("IoU exactly at the thresholds", {"high_threshold": 0.75, "low_threshold": 0.25,
                                                  "allow_low_quality_matches": False, "iou": at_thresholds}),
            Case("low-quality matches, ties", {"high_threshold": 0.7, "low_threshold": 0.3,
                                               "allow_low_quality_matches": True, "iou": ties}),
            Case("no ground truth (G = 0)", {"high_threshold": 0.7, "low_threshold": 0.3,
                                             "allow_low_quality_matches": True, "iou": _t([]).view(0, 4)}),
            Case("thresholds 0.5 / 0.5", {"high_threshold": 0.5, "low_threshold": 0.5,
                                          "allow_low_quality_matches": False, "iou": _t([[0.5, 0.49, 0.51]])}),
            Case("random, low-quality", {"high_threshold": 0.7, "low_threshold": 0.3, "allow_low_quality_matches": True,
                                         "iou": torch.rand(3, 8, generator=g) * 0.8})]


def _invoke_matcher(fn, args):
    return fn(args["high_threshold"], args["low_threshold"], args["allow_low_quality_matches"])(args["iou"])


# ------------------------------------------------------------------------------------------------ 03 coding, NMS
def _encode_no_weights(targets, anchors, weights):
    return encode_boxes(targets, anchors, (1.0, 1.0, 1.0, 1.0))


def _encode_inverted_log(targets, anchors, weights):
    out = encode_boxes(targets, anchors, weights)
    return torch.cat((out[:, :2], -out[:, 2:]), dim=1)


def _encode_by_target_size(targets, anchors, weights):
    out = encode_boxes(targets, anchors, weights)
    ratio = (anchors[:, 2:] - anchors[:, :2]) / (targets[:, 2:] - targets[:, :2])  # offsets / tw instead of / aw
    return torch.cat((out[:, :2] * ratio, out[:, 2:]), dim=1)


def _encode_corner_offsets(targets, anchors, weights):
    out = encode_boxes(targets, anchors, weights)
    aw = anchors[:, 2:] - anchors[:, :2]
    offsets = torch.tensor(weights[:2], dtype=out.dtype) * (targets[:, :2] - anchors[:, :2]) / aw
    return torch.cat((offsets, out[:, 2:]), dim=1)


def _coding_boxes():
    anchors = _t([[0, 0, 10, 10], [10, 20, 30, 30], [5, 5, 9, 21]])
    targets = _t([[1, 2, 11, 14], [12, 18, 40, 30], [5, 5, 9, 21]])
    return anchors, targets


def _encode_cases():
    anchors, targets = _coding_boxes()
    g = _gen(4)
    return [Case("hand-made, weights 1", {"targets": targets, "anchors": anchors, "weights": (1.0, 1.0, 1.0, 1.0)}),
            Case("weights (10, 10, 5, 5)", {"targets": targets, "anchors": anchors, "weights": (10.0, 10.0, 5.0, 5.0)}),
            Case("target equals anchor", {"targets": anchors[:1], "anchors": anchors[:1].clone(),
                                          "weights": (1.0, 1.0, 1.0, 1.0)}),
            Case("no boxes (empty)", {"targets": _t([]).view(0, 4), "anchors": _t([]).view(0, 4),
                                      "weights": (1.0, 1.0, 1.0, 1.0)}),
            Case("random, float64", {"targets": _random_boxes(5, g, dtype=torch.float64),
                                     "anchors": _random_boxes(5, g, dtype=torch.float64),
                                     "weights": (10.0, 10.0, 5.0, 5.0)})]


def _decode_no_clamp(deltas, anchors, weights, clamp=None):
    return decode_boxes(deltas, anchors, weights, clamp=float("inf"))


def _decode_weights_multiplied(deltas, anchors, weights, clamp=math.log(1000 / 16)):
    squared = torch.tensor([w * w for w in weights] * (deltas.shape[1] // 4), dtype=deltas.dtype)
    return decode_boxes(deltas * squared, anchors, weights, clamp)  # (d * w**2) / w = d * w


def _decode_plus_one(deltas, anchors, weights, clamp=math.log(1000 / 16)):
    return decode_boxes(deltas, _plus_one(anchors), weights, clamp) - torch.tensor(
        [0.0, 0.0, 1.0, 1.0] * (deltas.shape[1] // 4), dtype=deltas.dtype)


def _decode_first_class(deltas, anchors, weights, clamp=math.log(1000 / 16)):
    return decode_boxes(deltas[:, :4], anchors, weights, clamp).repeat(1, deltas.shape[1] // 4)


def _decode_cases():
    anchors, targets = _coding_boxes()
    w1, w10 = (1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)
    deltas = encode_boxes(targets, anchors, w10)
    g = _gen(5)
    return [Case("zero deltas give the anchors", {"deltas": torch.zeros(3, 4), "anchors": anchors, "weights": w1}),
            Case("hand-made, weights 1", {"deltas": _t([[0.1, -0.2, 0.3, -0.1]] * 3), "anchors": anchors,
                                          "weights": w1}),
            Case("weights (10, 10, 5, 5)", {"deltas": deltas, "anchors": anchors, "weights": w10}),
            Case("two classes (N, 8)", {"deltas": torch.cat((deltas, -deltas), 1), "anchors": anchors, "weights": w10}),
            Case("huge dw, dh (clamped)", {"deltas": _t([[0.0, 0.0, 9.0, 12.0]]), "anchors": anchors[:1],
                                          "weights": w1}),
            Case("clamp = 1 passed explicitly", {"deltas": _t([[0.0, 0.0, 2.0, 0.5]]), "anchors": anchors[:1],
                                                "weights": w1, "clamp": 1.0}),
            Case("no boxes (empty)", {"deltas": _t([]).view(0, 4), "anchors": _t([]).view(0, 4), "weights": w1}),
            Case("random, float64", {"deltas": torch.randn(4, 4, generator=g, dtype=torch.float64),
                                     "anchors": _random_boxes(4, g, dtype=torch.float64), "weights": w10})]


def _nms_at_threshold_dropped(boxes, scores, iou_threshold):
    return nms(boxes, scores, iou_threshold - 1e-6)


def _nms_ties_reversed(boxes, scores, iou_threshold):
    n = len(boxes)
    return (n - 1) - nms(boxes.flip(0), scores.flip(0), iou_threshold)


def _nms_not_greedy(boxes, scores, iou_threshold):
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes, boxes)
    keep = [int(i) for k, i in enumerate(order) if not (iou[i, order[:k]] > iou_threshold).any()]
    return torch.tensor(keep, dtype=torch.int64)


def _nms_sorted_positions(boxes, scores, iou_threshold):
    order = torch.argsort(scores, descending=True, stable=True)
    position = torch.argsort(order)
    return position[nms(boxes, scores, iou_threshold)]


def _nms_index_order(boxes, scores, iou_threshold):
    return nms(boxes, scores, iou_threshold).sort().values


def _nms_cases():
    g = _gen(6)
    chain = _t([[0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]])  # 0 drops 1; 1 would drop 2, but 1 is gone
    return [Case("no boxes (empty)", {"boxes": _t([]).view(0, 4), "scores": _t([]), "iou_threshold": 0.5}),
            Case("IoU exactly at the threshold (0.5): both kept", {"boxes": _t([[0, 0, 3, 1], [1, 0, 4, 1]]),
                                                                   "scores": _t([0.9, 0.8]), "iou_threshold": 0.5}),
            Case("chain: a suppressed box suppresses nothing", {"boxes": chain, "scores": _t([0.9, 0.8, 0.7]),
                                                                "iou_threshold": 0.3}),
            Case("touching boxes", {"boxes": _t([[0, 0, 10, 10], [10, 0, 20, 10]]), "scores": _t([0.5, 0.6]),
                                    "iou_threshold": 0.0}),
            Case("ties in scores", {"boxes": chain, "scores": _t([0.7, 0.7, 0.7]), "iou_threshold": 0.3}),
            Case("kept in decreasing score", {"boxes": _t([[0, 0, 5, 5], [20, 20, 25, 25], [40, 0, 45, 5]]),
                                              "scores": _t([0.2, 0.9, 0.5]), "iou_threshold": 0.5}),
            Case("random, 12 boxes", {"boxes": _random_boxes(12, g, 30), "scores": torch.rand(12, generator=g),
                                      "iou_threshold": 0.3})]


def _batched_ignore_classes(boxes, scores, idxs, iou_threshold):
    return nms(boxes, scores, iou_threshold)


def _batched_grouped(boxes, scores, idxs, iou_threshold):
    keep = batched_nms(boxes, scores, idxs, iou_threshold)
    return keep[torch.argsort(idxs[keep], stable=True)]


def _batched_local_indices(boxes, scores, idxs, iou_threshold):
    keep = batched_nms(boxes, scores, idxs, iou_threshold)
    local = torch.zeros_like(idxs)
    for c in idxs.unique():
        where = torch.where(idxs == c)[0]
        local[where] = torch.arange(len(where))
    return local[keep]


def _batched_cases():
    g = _gen(7)
    two = _t([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10]])
    return [Case("overlapping boxes of different classes", {"boxes": two, "scores": _t([0.9, 0.8, 0.7]),
                                                           "idxs": torch.tensor([1, 2, 1]), "iou_threshold": 0.5}),
            Case("no boxes (empty)", {"boxes": _t([]).view(0, 4), "scores": _t([]),
                                      "idxs": torch.zeros(0, dtype=torch.int64), "iou_threshold": 0.5}),
            Case("classes interleaved", {"boxes": torch.cat((two, two + 30)),
                                         "scores": _t([0.3, 0.9, 0.5, 0.8, 0.4, 0.6]),
                                         "idxs": torch.tensor([2, 1, 2, 1, 2, 1]), "iou_threshold": 0.5}),
            Case("random, 3 classes", {"boxes": _random_boxes(15, g, 25), "scores": torch.rand(15, generator=g),
                                       "idxs": torch.randint(0, 3, (15,), generator=g), "iou_threshold": 0.3})]


def _clip_size_swapped(boxes, size):
    return clip_boxes(boxes, (size[1], size[0]))


def _clip_minus_one(boxes, size):
    return clip_boxes(boxes, (size[0] - 1, size[1] - 1))


def _clip_max_only(boxes, size):
    x, y = boxes[..., 0::2].clamp(max=size[1]), boxes[..., 1::2].clamp(max=size[0])
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def _clip_cases():
    g = _gen(8)
    return [Case("box inside (unchanged)", {"boxes": _t([[1, 2, 5, 6]]), "size": (20, 30)}),
            Case("past every border, height 20, width 30", {"boxes": _t([[-5, -3, 40, 25], [25, 15, 35, 22]]),
                                                            "size": (20, 30)}),
            Case("no boxes (empty)", {"boxes": _t([]).view(0, 4), "size": (20, 30)}),
            Case("batched boxes Tensor[2, 3, 4], float64",
                 {"boxes": _random_boxes(6, g, 40, torch.float64).view(2, 3, 4) - 10, "size": (25, 35)})]


# ------------------------------------------------------------------------------------------------ 04 FPN
def _fpn_variant(mode="nearest", accumulate=True, top_down=True):
    def merge(laterals):
        out = list(laterals)
        order = range(len(out) - 2, -1, -1) if top_down else range(1, len(out))
        for i in order:
            j = i + 1 if top_down else i - 1
            above = out[j] if accumulate else laterals[j]
            kwargs = {"align_corners": False} if mode == "bilinear" else {}
            out[i] = laterals[i] + F.interpolate(above, size=laterals[i].shape[-2:], mode=mode, **kwargs)
        return out
    return merge


def _fpn_cases():
    g = _gen(9)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    return [Case("two levels 4x4, 2x2", {"laterals": [rand(1, 2, 4, 4), rand(1, 2, 2, 2)]}),
            Case("three levels, odd sizes 7x5, 4x3, 2x2", {"laterals": [rand(1, 1, 7, 5), rand(1, 1, 4, 3),
                                                                        rand(1, 1, 2, 2)]}),
            Case("one level", {"laterals": [rand(2, 3, 3, 3)]}),
            Case("four levels, 2 images", {"laterals": [rand(2, 2, 16, 12), rand(2, 2, 8, 6), rand(2, 2, 4, 3),
                                                        rand(2, 2, 2, 2)]})]


# ------------------------------------------------------------------------------------------------ 05 RPN
def _flatten_anchor_major(logits, deltas):
    flat_l = torch.cat([lg.flatten(1) for lg in logits], dim=1)  # (N, A, H, W) -> (N, A*H*W)
    flat_d = torch.cat([d.view(d.shape[0], -1, 4, *d.shape[-2:]).permute(0, 1, 3, 4, 2).reshape(d.shape[0], -1, 4)
                        for d in deltas], dim=1)
    return flat_l, flat_d


def _flatten_coordinate_major(logits, deltas):
    flat_l, _ = flatten_predictions(logits, deltas)
    flat_d = torch.cat([d.view(d.shape[0], 4, -1, *d.shape[-2:]).permute(0, 3, 4, 2, 1).reshape(d.shape[0], -1, 4)
                        for d in deltas], dim=1)
    return flat_l, flat_d


def _flatten_column_major(logits, deltas):
    return flatten_predictions([lg.transpose(2, 3) for lg in logits], [d.transpose(2, 3) for d in deltas])


def _flatten_cases():
    g = _gen(10)
    one = torch.arange(18.0).view(1, 3, 2, 3)
    return [Case("one level, A = 3, 2 x 3 map", {"logits": [one], "deltas": [torch.arange(72.0).view(1, 12, 2, 3)]}),
            Case("two levels, two images", {"logits": [torch.randn(2, 2, 3, 2, generator=g),
                                                       torch.randn(2, 2, 1, 1, generator=g)],
                                            "deltas": [torch.randn(2, 8, 3, 2, generator=g),
                                                       torch.randn(2, 8, 1, 1, generator=g)]})]


def _filter_variant(per_level_top=True, per_level_nms=True, clip=True, sigmoid=True, post_top=True):
    def run(proposals, objectness, level_sizes, image_sizes, pre_nms_top_n, post_nms_top_n, nms_thresh,
            min_size=1e-3, score_thresh=0.0):
        boxes_out, scores_out = [], []
        levels = torch.cat([torch.full((n,), i) for i, n in enumerate(level_sizes)])
        for boxes, logits, size in zip(proposals, objectness, image_sizes):
            if per_level_top:
                starts = [sum(level_sizes[:i]) for i in range(len(level_sizes))]
                idx = torch.cat([torch.topk(part, min(pre_nms_top_n, len(part))).indices + start
                                 for part, start in zip(logits.split(level_sizes), starts)])
            else:
                idx = torch.topk(logits, min(pre_nms_top_n, len(logits))).indices
            b, s, lvl = boxes[idx], logits[idx], levels[idx]
            s = torch.sigmoid(s) if sigmoid else s
            b = clip_boxes(b, size) if clip else b
            wh = b[:, 2:] - b[:, :2]
            keep = torch.where((wh >= min_size).all(1) & (s >= score_thresh))[0]
            b, s, lvl = b[keep], s[keep], lvl[keep]
            keep = batched_nms(b, s, lvl, nms_thresh) if per_level_nms else nms(b, s, nms_thresh)
            keep = keep[:post_nms_top_n] if post_top else keep
            boxes_out.append(b[keep])
            scores_out.append(s[keep])
        return boxes_out, scores_out
    return run


def _filter_cases():
    g = _gen(11)
    # level 0: 4 anchors, level 1: 2 anchors; boxes 2 and 5 overlap box 0 across levels; box 1 past the border
    boxes = _t([[[0, 0, 10, 10], [25, 25, 40, 40], [1, 1, 11, 11], [0, 20, 5, 30], [30, 0, 31, 1], [0, 0, 10, 11]]])
    logits = _t([[2.0, 1.0, 1.5, -1.0, 0.5, 3.0]])
    base = {"proposals": boxes, "objectness": logits, "level_sizes": [4, 2], "image_sizes": [(32, 32)]}
    rand_boxes = _random_boxes(24, g, 30).view(2, 12, 4)
    return [Case("hand-made, generous limits", base | {"pre_nms_top_n": 10, "post_nms_top_n": 10, "nms_thresh": 0.5}),
            Case("pre_nms_top_n 2 per level", base | {"pre_nms_top_n": 2, "post_nms_top_n": 10, "nms_thresh": 0.5}),
            Case("post_nms_top_n 2", base | {"pre_nms_top_n": 10, "post_nms_top_n": 2, "nms_thresh": 0.5}),
            Case("score_thresh 0.6, min_size 2", base | {"pre_nms_top_n": 10, "post_nms_top_n": 10, "nms_thresh": 0.5,
                                                         "min_size": 2.0, "score_thresh": 0.6}),
            Case("random, two images, three levels",
                 {"proposals": rand_boxes, "objectness": torch.randn(2, 12, generator=g), "level_sizes": [6, 4, 2],
                  "image_sizes": [(30, 40), (25, 20)], "pre_nms_top_n": 3, "post_nms_top_n": 5, "nms_thresh": 0.4})]


# ------------------------------------------------------------------------------------------------ 06 RoI ops
def _yx_swapped(boxes: Tensor) -> Tensor:
    """Tensor[R, 5] (batch, x1, y1, x2, y2) read as (batch, y1, x1, y2, x2)."""
    return boxes[:, [0, 2, 1, 4, 3]]


def _roi_cases(align: bool):
    g = _gen(12)
    ramp = torch.arange(36.0).view(1, 1, 6, 6) ** 1.5 / 10  # non-linear, so the number of samples matters
    two = torch.randn(2, 2, 5, 7, generator=g)
    common = [
        Case("one box, 2 x 2 bins", {"input": ramp, "boxes": _t([[0, 0.5, 1.0, 4.5, 3.5]]), "output_size": 2}),
        Case("box past the border", {"input": ramp, "boxes": _t([[0, 3.0, -2.0, 8.0, 4.0]]), "output_size": (2, 3)}),
        Case("zero-size RoI", {"input": ramp, "boxes": _t([[0, 2.0, 2.0, 2.0, 2.0]]), "output_size": 2}),
        Case("wide box (aspect ratio 3), output 1 x 3", {"input": two, "boxes": _t([[1, 0.0, 1.0, 6.0, 3.0]]),
                                                         "output_size": (1, 3)}),
        Case("spatial_scale 0.5, two images", {"input": two, "boxes": _t([[1, 2.0, 0.0, 10.0, 6.0], [0, 0, 0, 13, 9]]),
                                               "output_size": 2, "spatial_scale": 0.5}),
        Case("no RoIs (empty)", {"input": two, "boxes": _t([]).view(0, 5), "output_size": 2}),
    ]
    if not align:
        return common + [Case("random, float64", {"input": two.double(), "boxes": torch.cat(
            (torch.tensor([[0.0], [1.0], [1.0]]), _random_boxes(3, g, 5)), 1).double(), "output_size": 3})]
    extra = [
        Case("sampling_ratio 2", {"input": ramp, "boxes": _t([[0, 0.5, 1.0, 4.5, 3.5]]), "output_size": 2,
                                  "spatial_scale": 1.0, "sampling_ratio": 2}),
        Case("aligned=True", {"input": ramp, "boxes": _t([[0, 0.5, 1.0, 4.5, 3.5]]), "output_size": 2,
                              "spatial_scale": 1.0, "sampling_ratio": 2, "aligned": True}),
        Case("aligned=True, adaptive, scale 0.5", {"input": two, "boxes": _t([[1, 2.0, 0.0, 11.0, 6.0]]),
                                                   "output_size": 2, "spatial_scale": 0.5, "sampling_ratio": -1,
                                                   "aligned": True}),
        Case("small box, legacy (RoI at least 1 pixel)", {"input": ramp, "boxes": _t([[0, 1.0, 1.0, 1.5, 1.2]]),
                                                          "output_size": 2, "spatial_scale": 1.0, "sampling_ratio": 2}),
        Case("random, float64, aligned", {"input": two.double(), "boxes": torch.cat(
            (torch.tensor([[0.0], [1.0]]), _random_boxes(2, g, 5)), 1).double(), "output_size": 2,
            "spatial_scale": 1.0, "sampling_ratio": -1, "aligned": True})]
    return common + extra


def _align_args(args: dict) -> dict:
    """A roi_align case's arguments with the defaults filled in, in signature order."""
    out = dict(args)
    for name, default in (("spatial_scale", 1.0), ("sampling_ratio", -1), ("aligned", False)):
        out.setdefault(name, default)
    return out


def _align_variant(aligned=None, no_legacy_clamp=False, scale=True, swapped=False, ratio=None):
    def run(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned_=False):
        a = aligned_ if aligned is None else aligned
        s = spatial_scale if scale else 1.0
        b = _yx_swapped(boxes) if swapped else boxes
        r = ratio if (ratio is not None and sampling_ratio <= 0) else sampling_ratio
        if no_legacy_clamp and not a:  # no half-pixel shift, no 1-pixel minimum: aligned=True on boxes + 0.5 px
            return roi_align(input, b + torch.tensor([0.0] + [0.5 / s] * 4), output_size, s, r, True)
        return roi_align(input, b, output_size, s, r, a)
    return run


def _pool_variant(truncate=False, exclusive_end=False, scale=True, swapped=False):
    def run(input, boxes, output_size, spatial_scale=1.0):
        s = spatial_scale if scale else 1.0
        b = _yx_swapped(boxes) if swapped else boxes.clone()
        if truncate:  # edges rounded down instead of to the nearest feature pixel
            b[:, 1:] = torch.floor(b[:, 1:] * s) / s
        if exclusive_end:  # x2, y2 not counted as inside the RoI: one pixel less
            b[:, 3:] = b[:, 3:] - 1 / s
        return roi_pool(input, b, output_size, s)
    return run


def _levels_absolute(boxes, k_min, k_max, canonical_scale=224, canonical_level=4, eps=1e-6):
    return assign_levels(boxes, k_min, k_max, canonical_scale, canonical_level, eps) + k_min


def _levels_rounded(boxes, k_min, k_max, canonical_scale=224, canonical_level=4, eps=1e-6):
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    level = torch.round(canonical_level + torch.log2(scale / canonical_scale))
    return (level.clamp(k_min, k_max) - k_min).to(torch.int64)


def _levels_of_area(boxes, k_min, k_max, canonical_scale=224, canonical_level=4, eps=1e-6):
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    level = torch.floor(canonical_level + torch.log2(area / canonical_scale) + eps)
    return (level.clamp(k_min, k_max) - k_min).to(torch.int64)


def _levels_unclamped(boxes, k_min, k_max, canonical_scale=224, canonical_level=4, eps=1e-6):
    return assign_levels(boxes, -100, 100, canonical_scale, canonical_level, eps) - 100 - k_min


def _levels_cases():
    g = _gen(13)
    return [Case("224, 112, 56 px squares (levels 4, 3, 2)", {"boxes": _t([[0, 0, 224, 224], [0, 0, 112, 112],
                                                                        [10, 10, 66, 66]]), "k_min": 2, "k_max": 5}),
            Case("tiny and huge boxes (clamped)", {"boxes": _t([[0, 0, 4, 4], [0, 0, 2000, 1500]]), "k_min": 2,
                                                   "k_max": 5}),
            Case("112 x 448 box (aspect ratio 4)", {"boxes": _t([[0, 0, 112, 448]]), "k_min": 2, "k_max": 5}),
            Case("300 px box (between levels)", {"boxes": _t([[0, 0, 300, 300], [0, 0, 160, 160]]), "k_min": 2,
                                                 "k_max": 5}),
            Case("k_min 3, k_max 4", {"boxes": _t([[0, 0, 50, 50], [0, 0, 224, 224], [0, 0, 900, 900]]), "k_min": 3,
                                      "k_max": 4}),
            Case("no boxes (empty)", {"boxes": _t([]).view(0, 4), "k_min": 2, "k_max": 5}),
            Case("random, float64", {"boxes": _random_boxes(6, g, 100, torch.float64) * 8, "k_min": 2, "k_max": 5})]


# ------------------------------------------------------------------------------------------------ 07 box head
def _post_variant(background=False, per_class_nms=True, softmax=True, class_deltas=True, clip=True):
    def run(class_logits, box_regression, proposals, image_sizes, box_coder_weights=(10.0, 10.0, 5.0, 5.0),
            score_thresh=0.05, nms_thresh=0.5, detections_per_img=100, min_size=1e-2):
        k1 = class_logits.shape[1]
        regression = box_regression if class_deltas else box_regression[:, :4].repeat(1, k1)
        boxes_all = decode_boxes(regression, torch.cat(proposals), box_coder_weights).view(-1, k1, 4)
        scores_all = F.softmax(class_logits, -1) if softmax else torch.sigmoid(class_logits)
        out = ([], [], [])
        first = 0 if background else 1
        for boxes, scores, size in zip(boxes_all.split([len(p) for p in proposals]),
                                       scores_all.split([len(p) for p in proposals]), image_sizes):
            boxes = clip_boxes(boxes, size) if clip else boxes
            labels = torch.arange(k1).expand_as(scores)
            b, s, lab = boxes[:, first:].reshape(-1, 4), scores[:, first:].reshape(-1), labels[:, first:].reshape(-1)
            wh = b[:, 2:] - b[:, :2]
            keep = torch.where((s > score_thresh) & (wh >= min_size).all(1))[0]
            b, s, lab = b[keep], s[keep], lab[keep]
            keep = (batched_nms(b, s, lab, nms_thresh) if per_class_nms else nms(b, s, nms_thresh))[:detections_per_img]
            for store, v in zip(out, (b[keep], s[keep], lab[keep])):
                store.append(v)
        return out
    return run


def _post_cases():
    g = _gen(14)
    proposals = [_t([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 28]]), _t([[5, 5, 25, 15], [-4, 2, 8, 12]])]
    logits = _t([[0.0, 3.0, 2.9], [0.5, 2.0, 0.1], [3.0, 0.1, 0.2], [0.0, 1.0, 1.0], [0.0, 2.0, -1.0]])
    deltas = torch.randn(5, 12, generator=g) * 0.5
    base = {"class_logits": logits, "box_regression": deltas, "proposals": proposals,
            "image_sizes": [(32, 32), (20, 24)]}
    zero = base | {"box_regression": torch.zeros(5, 12)}
    return [Case("zero deltas, two classes, two images", zero),
            Case("random deltas", base),
            Case("score_thresh 0.3, detections_per_img 2", base | {"box_coder_weights": (10.0, 10.0, 5.0, 5.0),
                                                                    "score_thresh": 0.3, "nms_thresh": 0.5,
                                                                    "detections_per_img": 2}),
            Case("weights (1, 1, 1, 1), NMS 0.3", base | {"box_coder_weights": (1.0, 1.0, 1.0, 1.0),
                                                         "score_thresh": 0.05, "nms_thresh": 0.3,
                                                         "detections_per_img": 100})]


# ------------------------------------------------------------------------------------------------ 08 masks
def _paste_variant(plus_one=True, align_corners=False, xywh=False, mode="bilinear"):
    def run(mask, box, image_size):
        x1, y1, x2, y2 = box
        if xywh:
            x2, y2 = x1 + x2, y1 + y2
        extra = 1 if plus_one else 0
        w, h = max(x2 - x1 + extra, 1), max(y2 - y1 + extra, 1)
        kwargs = {"align_corners": align_corners} if mode == "bilinear" else {}
        resized = F.interpolate(mask[None, None], size=(h, w), mode=mode, **kwargs)[0, 0]
        out = mask.new_zeros(image_size)
        xa, xb, ya, yb = max(x1, 0), min(x2 + extra, image_size[1]), max(y1, 0), min(y2 + extra, image_size[0])
        if xb > xa and yb > ya:
            out[ya:yb, xa:xb] = resized[ya - y1: yb - y1, xa - x1: xb - x1]
        return out
    return run


def _paste_cases():
    g = _gen(15)
    mask = torch.rand(4, 4, generator=g)
    return [Case("box inside the image", {"mask": mask, "box": [2, 1, 7, 6], "image_size": (10, 12)}),
            Case("box 9 x 3 (aspect ratio 3)", {"mask": mask, "box": [1, 2, 9, 4], "image_size": (8, 12)}),
            Case("box past the border", {"mask": mask, "box": [-3, 4, 5, 12], "image_size": (9, 7)}),
            Case("box outside the image", {"mask": mask, "box": [20, 20, 25, 25], "image_size": (8, 8)}),
            Case("degenerate box (x2 < x1)", {"mask": mask, "box": [3, 3, 2, 5], "image_size": (8, 8)}),
            Case("float64 mask", {"mask": mask.double(), "box": [0, 0, 5, 3], "image_size": (6, 6)})]


def _targets_aligned(gt_masks, rois, matched_idxs, resolution):
    rois5 = torch.cat((matched_idxs.to(rois)[:, None], rois), dim=1)
    return roi_align(gt_masks[:, None].to(rois), rois5, resolution, 1.0, -1, True)[:, 0]


def _targets_first_mask(gt_masks, rois, matched_idxs, resolution):
    return mask_targets(gt_masks, rois, torch.zeros_like(matched_idxs), resolution)


def _targets_whole_mask(gt_masks, rois, matched_idxs, resolution):
    whole = gt_masks[matched_idxs][:, None].to(rois)
    return F.interpolate(whole, size=(resolution, resolution), mode="bilinear", align_corners=False)[:, 0]


def _targets_cases():
    masks = torch.zeros(2, 8, 10, dtype=torch.uint8)
    masks[0, 1:5, 2:8] = 1
    masks[1, 3:8, 0:4] = 1
    rois = _t([[1, 0, 9, 6], [0, 2, 5, 8], [2.5, 1.5, 6.5, 4.5]])
    return [Case("three RoIs, two masks, 4 x 4", {"gt_masks": masks, "rois": rois,
                                                 "matched_idxs": torch.tensor([0, 1, 0]), "resolution": 4}),
            Case("RoI past the border, 3 x 3", {"gt_masks": masks, "rois": _t([[-2, 4, 6, 12]]),
                                               "matched_idxs": torch.tensor([1]), "resolution": 3}),
            Case("no RoIs (empty)", {"gt_masks": masks, "rois": _t([]).view(0, 4),
                                     "matched_idxs": torch.zeros(0, dtype=torch.int64), "resolution": 4})]


def _expand_corner(boxes, scale):
    return torch.cat((boxes[:, :2], boxes[:, :2] + (boxes[:, 2:] - boxes[:, :2]) * scale), dim=1)


def _expand_double(boxes, scale):
    return expand_boxes(boxes, 2 * scale)


def _expand_xywh(boxes, scale):
    centre, size = boxes[:, :2] + boxes[:, 2:] / 2, boxes[:, 2:] * scale
    return torch.cat((centre - size / 2, centre + size / 2), dim=1)


def _expand_cases():
    g = _gen(16)
    return [Case("scale 2", {"boxes": _t([[10, 10, 20, 30]]), "scale": 2.0}),
            Case("scale 30 / 28", {"boxes": _t([[0, 0, 28, 14], [5, 6, 7, 8]]), "scale": 30 / 28}),
            Case("no boxes (empty)", {"boxes": _t([]).view(0, 4), "scale": 1.5}),
            Case("random, float64", {"boxes": _random_boxes(4, g, dtype=torch.float64), "scale": 0.5})]


# ------------------------------------------------------------------------------------------------ 09 losses
def _smooth_beta_one(input, target, beta):
    return smooth_l1(input, target, 1.0)


def _smooth_mean(input, target, beta):
    return smooth_l1(input, target, beta) / max(input.numel(), 1)


def _smooth_not_divided(input, target, beta):
    x = (input - target).abs()
    return torch.where(x < beta, 0.5 * x**2, x - 0.5 * beta).sum()


def _smooth_l2(input, target, beta):
    return (0.5 * (input - target) ** 2).sum()


def _smooth_cases():
    g = _gen(17)
    x = _t([0.0, 0.05, -0.5, 2.0, -3.0])
    return [Case("beta 1", {"input": x, "target": torch.zeros(5), "beta": 1.0}),
            Case("beta 1/9", {"input": x, "target": _t([0.1, 0.0, 0.0, 1.0, 0.0]), "beta": 1 / 9}),
            Case("beta 0 (plain L1)", {"input": x, "target": torch.zeros(5), "beta": 0.0}),
            Case("|x| exactly beta", {"input": _t([0.5, -0.5]), "target": torch.zeros(2), "beta": 0.5}),
            Case("no elements (empty)", {"input": _t([]), "target": _t([]), "beta": 1.0}),
            Case("random, float64, (3, 4)", {"input": torch.randn(3, 4, generator=g, dtype=torch.float64),
                                             "target": torch.randn(3, 4, generator=g, dtype=torch.float64),
                                             "beta": 0.3})]


def _boxloss_by_positives(box_deltas, labels, target_deltas, beta=1 / 9):
    positives = max(int((labels > 0).sum()), 1)
    return box_regression_loss(box_deltas, labels, target_deltas, beta) * labels.numel() / positives


def _boxloss_class_zero(box_deltas, labels, target_deltas, beta=1 / 9):
    first = box_deltas[:, :4].repeat(1, box_deltas.shape[1] // 4)
    return box_regression_loss(first, labels, target_deltas, beta)


def _boxloss_all_rois(box_deltas, labels, target_deltas, beta=1 / 9):
    return box_regression_loss(box_deltas, labels.clamp(min=1), target_deltas, beta)


def _boxloss_beta_one(box_deltas, labels, target_deltas, beta=1 / 9):
    return box_regression_loss(box_deltas, labels, target_deltas, 1.0)


def _boxloss_cases():
    g = _gen(18)
    labels = torch.tensor([0, 2, 1, 0, 2])
    return [Case("5 RoIs, 3 positive, K + 1 = 3", {"box_deltas": torch.randn(5, 12, generator=g), "labels": labels,
                                                   "target_deltas": torch.randn(5, 4, generator=g)}),
            Case("beta 0.5", {"box_deltas": torch.randn(5, 12, generator=g), "labels": labels,
                              "target_deltas": torch.randn(5, 4, generator=g), "beta": 0.5}),
            Case("no positives", {"box_deltas": torch.randn(2, 8, generator=g), "labels": torch.tensor([0, 0]),
                                  "target_deltas": torch.randn(2, 4, generator=g)})]


def _maskloss_softmax(mask_logits, labels, mask_targets):
    if mask_targets.numel() == 0:
        return mask_logits.sum() * 0
    log_p = F.log_softmax(mask_logits, dim=1)[torch.arange(len(labels)), labels]
    return -(mask_targets * log_p).mean()


def _maskloss_channel_zero(mask_logits, labels, mask_targets):
    return mask_loss(mask_logits, torch.zeros_like(labels), mask_targets)


def _maskloss_sum(mask_logits, labels, mask_targets):
    return mask_loss(mask_logits, labels, mask_targets) * max(mask_targets.numel(), 1)


def _maskloss_all_channels(mask_logits, labels, mask_targets):
    if mask_targets.numel() == 0:
        return mask_logits.sum() * 0
    expanded = mask_targets[:, None].expand_as(mask_logits).to(mask_logits.dtype)
    return F.binary_cross_entropy_with_logits(mask_logits, expanded)


def _maskloss_cases():
    g = _gen(19)
    targets = (torch.rand(3, 4, 4, generator=g) > 0.5).float()
    targets[0, 0, :2] = 0.5  # a soft target on a mask's border
    return [Case("3 positives, K + 1 = 3, 4 x 4", {"mask_logits": torch.randn(3, 3, 4, 4, generator=g),
                                                   "labels": torch.tensor([1, 2, 1]), "mask_targets": targets}),
            Case("no positives (empty)", {"mask_logits": torch.randn(0, 3, 4, 4),
                                          "labels": torch.zeros(0, dtype=torch.int64),
                                          "mask_targets": torch.zeros(0, 4, 4)})]


# ------------------------------------------------------------------------------------------------ 11 evaluation
def _xywh_plus_one(boxes):
    return xyxy_to_xywh(_plus_one(boxes))


def _xywh_centre(boxes):
    return torch.cat(((boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]), dim=1)


def _xywh_swapped(boxes):
    return xyxy_to_xywh(boxes)[:, [0, 1, 3, 2]]


def _xywh_cases():
    g = _gen(20)
    return [Case("one box 10 x 20", {"boxes": _t([[1, 2, 11, 22]])}),
            Case("no boxes (empty)", {"boxes": _t([]).view(0, 4)}),
            Case("random, float64", {"boxes": _random_boxes(4, g, dtype=torch.float64)})]


def _ap_no_envelope(recall, precision):
    first = torch.searchsorted(recall.double().contiguous(), torch.linspace(0, 1, 101, dtype=torch.float64))
    return float(torch.cat((precision.double(), precision.new_zeros(1, dtype=torch.float64)))[first].mean())


def _ap_eleven_points(recall, precision):
    envelope = precision.double().flip(0).cummax(0).values.flip(0)
    first = torch.searchsorted(recall.double().contiguous(), torch.linspace(0, 1, 11, dtype=torch.float64))
    return float(torch.cat((envelope, envelope.new_zeros(1)))[first].mean())


def _ap_trapezoid(recall, precision):
    r = torch.cat((recall.new_zeros(1), recall)).double()
    p = torch.cat((precision[:1], precision)).double()
    return float(torch.trapezoid(p, r)) if len(recall) else 0.0


def _ap_rectangles(recall, precision):
    r = torch.cat((recall.new_zeros(1), recall)).double()
    return float(((r[1:] - r[:-1]) * precision.double()).sum())


def _ap_cases():
    g = _gen(21)
    hits = (torch.rand(20, generator=g) > 0.4).double()
    tp = hits.cumsum(0)
    return [Case("perfect detector", {"recall": _t([0.5, 1.0]), "precision": _t([1.0, 1.0])}),
            Case("precision dips then recovers", {"recall": _t([0.25, 0.25, 0.5, 0.75, 0.75]),
                                                  "precision": _t([1.0, 0.5, 0.67, 0.75, 0.6])}),
            Case("recall stops at 0.6", {"recall": _t([0.2, 0.4, 0.6]), "precision": _t([1.0, 0.8, 0.5])}),
            Case("no detections (empty)", {"recall": _t([]), "precision": _t([])}),
            Case("random curve, 20 detections, 17 objects", {"recall": tp / 17,
                                                             "precision": tp / torch.arange(1, 21)})]


# ------------------------------------------------------------------------------------------------ the registry
def _ex(notebook, reference, statement, hint, cases, mistakes=(), invoke=None) -> Exercise:
    extra = {"invoke": invoke} if invoke else {}
    return Exercise(notebook, reference, statement, hint, cases, list(mistakes), **extra)


_IOU_XYWH = ("boxes read as xywh (x, y, width, height) instead of (x1, y1, x2, y2)",
             lambda b1, b2: box_iou(_xywh_to_xyxy(b1), _xywh_to_xyxy(b2)))

EXERCISES: dict[str, Exercise] = {
    "cell_anchors": _ex(
        "01_anchors", cell_anchors,
        "Build the A = len(aspect_ratios) * len(sizes) anchors centred on (0, 0), ratio-major, as Tensor[A, 4].",
        "an aspect ratio r = h / w keeps the area size**2: h = size * sqrt(r), w = size / sqrt(r); corners are "
        "(-w/2, -h/2, w/2, h/2) rounded; loop over ratios outside, sizes inside.",
        _cell_cases,
        [("aspect ratio read as w / h instead of h / w (width and height swapped)",
          lambda s, r: _cell_variant(s, r, inverse=True)),
         ("corners not rounded to integers", lambda s, r: _cell_variant(s, r, rounded=False)),
         ("size-major order instead of ratio-major", lambda s, r: _cell_variant(s, r, size_major=True)),
         ("corners at +-w, +-h instead of +-w/2, +-h/2", lambda s, r: _cell_variant(s, r, half=False))]),
    "grid_anchors": _ex(
        "01_anchors", grid_anchors,
        "Tile the cell anchors over an H_l x W_l feature map: location (i, j) sits at (j * stride_x, i * stride_y).",
        "shift every cell anchor by (x, y, x, y); order: row by row, then the A anchors of each location; "
        "stride is (stride_y, stride_x).",
        _grid_cases,
        [("stride read as (stride_x, stride_y)", lambda c, f, s: grid_anchors(c, f, s[::-1])),
         ("feature_size read as (width, height)", lambda c, f, s: grid_anchors(c, f[::-1], s)),
         ("anchor-major order instead of location-major", _grid_variant_anchor_major),
         ("shifted by the location index, not multiplied by the stride", lambda c, f, s: grid_anchors(c, f, (1, 1)))]),
    "box_iou": _ex(
        "02_iou_matching", box_iou,
        "Pairwise intersection over union of boxes1: Tensor[N, 4] and boxes2: Tensor[M, 4] -> Tensor[N, M].",
        "intersection = clamp(min(x2) - max(x1), 0) * clamp(min(y2) - max(y1), 0); union = area1 + area2 - "
        "intersection; width = x2 - x1 (no +1).",
        _iou_cases,
        [("+1 pixel convention in widths", lambda b1, b2: box_iou(_plus_one(b1), _plus_one(b2))),
         _IOU_XYWH,
         ("union not reduced by the intersection", _iou_union_not_reduced),
         ("intersection not clamped at 0 for disjoint boxes", _iou_not_clamped),
         ("intersection divided by the first box's area instead of the union", _iou_over_first_area)]),
    "Matcher": _ex(
        "02_iou_matching", Matcher,
        "A class Matcher(high_threshold, low_threshold, allow_low_quality_matches) whose call maps iou: "
        "Tensor[G, P] to Tensor[P] int64: matched index, -1 below low, -2 between the thresholds.",
        "best IoU over dim 0: >= high keeps the index, < low gives -1, in between -2; low-quality matches: every "
        "prediction that reaches some ground truth's best IoU (ties included) gets its OWN best index back, even "
        "below high; G = 0: all -1.",
        _matcher_cases,
        [("thresholds compared with > instead of >= (an IoU exactly at the threshold)",
          _matcher_variant(strict=True)),
         ("low-quality matches ignored", _matcher_variant(low_quality="none")),
         ("ties broken in the wrong order: only one best prediction per ground truth (argmax) restored",
          _matcher_variant(low_quality="argmax"))],
        _invoke_matcher),
    "encode_boxes": _ex(
        "03_box_coding_nms", encode_boxes,
        "The deltas (dx, dy, dw, dh) that turn anchors into targets (both Tensor[N, 4]), scaled by weights.",
        "centres and sizes first (w = x2 - x1, x = x1 + w / 2); dx = wx * (tx - ax) / aw, dw = ww * log(tw / aw).",
        _encode_cases,
        [("+1 pixel convention in widths", lambda t, a, w: encode_boxes(_plus_one(t), _plus_one(a), w)),
         ("boxes read as xywh", lambda t, a, w: encode_boxes(_xywh_to_xyxy(t), _xywh_to_xyxy(a), w)),
         ("weights not applied", _encode_no_weights),
         ("log ratio inverted: log(aw / tw) instead of log(tw / aw)", _encode_inverted_log),
         ("centre offsets divided by the target's size instead of the anchor's", _encode_by_target_size),
         ("offsets of the top-left corners instead of the centres", _encode_corner_offsets)]),
    "decode_boxes": _ex(
        "03_box_coding_nms", decode_boxes,
        "Apply deltas: Tensor[N, C*4] to anchors: Tensor[N, 4] -> boxes Tensor[N, C*4] (the inverse of "
        "encode_boxes), clamping dw, dh at `clamp` first.",
        "divide each delta by its weight, clamp dw and dh (max=clamp), then cx = dx * aw + ax, w = exp(dw) * aw; "
        "C > 1: deltas[:, 0::4] are all the dx.",
        _decode_cases,
        [("dw, dh not clamped", _decode_no_clamp),
         ("weights multiplied instead of divided", _decode_weights_multiplied),
         ("+1 pixel convention in widths", _decode_plus_one),
         ("only the first class's deltas decoded (C > 1)", _decode_first_class),
         ("anchors read as xywh", lambda d, a, w, c=math.log(1000 / 16): decode_boxes(d, _xywh_to_xyxy(a), w, c))]),
    "nms": _ex(
        "03_box_coding_nms", nms,
        "Greedy non-maximum suppression: indices (int64) of the kept boxes by decreasing score; a box is dropped "
        "when its IoU with a higher-scoring kept box is > iou_threshold. (block_size only tunes the package's "
        "speed: ignore it.)",
        "sort by score (stable, descending: equal scores keep the lower index first); walk the order, keep a box "
        "unless it overlaps an already kept one by more than the threshold.",
        _nms_cases,
        [("IoU exactly at the threshold dropped (>= instead of >)", _nms_at_threshold_dropped),
         ("ties broken in the wrong order (higher index first)", _nms_ties_reversed),
         ("not greedy: suppressed boxes still suppress others", _nms_not_greedy),
         ("positions in the sorted order returned instead of indices of the boxes", _nms_sorted_positions),
         ("kept boxes in index order instead of decreasing score", _nms_index_order)]),
    "batched_nms": _ex(
        "03_box_coding_nms", batched_nms,
        "NMS within each category idxs: Tensor[N] int64; boxes of different categories never suppress each other.",
        "either loop over categories and merge the kept indices sorted by score, or shift each category's boxes "
        "far apart (offset = idx * (max coordinate + 1)) and run one nms.",
        _batched_cases,
        [("categories ignored (one NMS over all boxes)", _batched_ignore_classes),
         ("kept boxes grouped by category instead of sorted by score", _batched_grouped),
         ("indices within each category instead of into all boxes", _batched_local_indices)]),
    "clip_boxes": _ex(
        "03_box_coding_nms", clip_boxes,
        "Clip boxes: Tensor[..., 4] to an image of size (height, width).",
        "x coordinates into [0, width], y coordinates into [0, height]; boxes[..., 0::2] are the x.",
        _clip_cases,
        [("size read as (width, height)", _clip_size_swapped),
         ("clipped to width - 1 and height - 1", _clip_minus_one),
         ("negative coordinates not clipped to 0", _clip_max_only)]),
    "fpn_top_down": _ex(
        "04_backbone_fpn", fpn_top_down_reference,
        "The FPN's top-down merge: laterals [Tensor[N, F, H_l, W_l]] finest first -> merged maps, coarsest "
        "unchanged, each finer one = its lateral + the merged map above, nearest-upsampled to its size.",
        "start from the last (coarsest) lateral; walk towards the finest; F.interpolate(merged, size=lateral.shape"
        "[-2:], mode='nearest').",
        _fpn_cases,
        [("bilinear instead of nearest upsampling", _fpn_variant(mode="bilinear")),
         ("each level adds the coarser lateral, not the coarser merged map", _fpn_variant(accumulate=False)),
         ("merged bottom-up (fine to coarse) instead of top-down", _fpn_variant(top_down=False))]),
    "flatten_predictions": _ex(
        "05_rpn", flatten_predictions,
        "RPN head outputs per level (logits [Tensor[N, A, H, W]], deltas [Tensor[N, A*4, H, W]]) -> "
        "(Tensor[N, T], Tensor[N, T, 4]) in the anchors' order: level, row, column, anchor.",
        "permute (N, A, H, W) -> (N, H, W, A) before reshaping; the deltas' channels are (A, 4): view them as "
        "(N, A, 4, H, W) first.",
        _flatten_cases,
        [("anchor-major order (A, H, W) instead of (H, W, A)", _flatten_anchor_major),
         ("delta channels read as (4, A) instead of (A, 4)", _flatten_coordinate_major),
         ("width and height swapped (column-major locations)", _flatten_column_major)]),
    "filter_proposals": _ex(
        "05_rpn", filter_proposals,
        "Decoded boxes Tensor[N, T, 4] + logits Tensor[N, T] -> per image (boxes, probabilities): top-n per level, "
        "sigmoid, clip, drop small boxes and low scores, NMS per level, keep the post_nms_top_n best.",
        "split the logits by level_sizes and topk each; remember each kept box's level for batched_nms; clip "
        "before the size filter; sort the result by decreasing score.",
        _filter_cases,
        [("top-n taken over all levels together instead of per level", _filter_variant(per_level_top=False)),
         ("NMS across levels instead of within each level", _filter_variant(per_level_nms=False)),
         ("boxes not clipped to the image", _filter_variant(clip=False)),
         ("scores returned as logits (no sigmoid)", _filter_variant(sigmoid=False)),
         ("post_nms_top_n ignored", _filter_variant(post_top=False))]),
    "roi_pool": _ex(
        "06_roialign_vs_roipool", roi_pool,
        "RoIPool: round each box (Tensor[R, 5] batch index first) to feature pixels, cut it into ph x pw "
        "quantised bins, max over each bin -> Tensor[R, C, ph, pw]. A slow loop is fine.",
        "x1 = round(x1 * scale) (halves away from 0), RoI at least 1 x 1 with x2 inclusive: bin = (x2 - x1 + 1) / "
        "pw; bin j covers [x1 + floor(j * bin), x1 + ceil((j + 1) * bin)) clipped to the map; empty bin -> 0.",
        lambda: _roi_cases(align=False),
        [("box edges truncated instead of rounded", _pool_variant(truncate=True)),
         ("x2, y2 excluded from the RoI (x2 - x1 instead of x2 - x1 + 1)", _pool_variant(exclusive_end=True)),
         ("spatial_scale not applied", _pool_variant(scale=False)),
         ("width and height swapped (boxes read as y1, x1, y2, x2)", _pool_variant(swapped=True))]),
    "roi_align": _ex(
        "06_roialign_vs_roipool", roi_align,
        "RoIAlign: each of ph x pw bins = the mean of grid x grid bilinear samples, nothing rounded -> "
        "Tensor[R, C, ph, pw]. A slow loop over RoIs, bins and samples is a correct answer.",
        "scale the box and subtract 0.5 if aligned; legacy: width, height at least 1; grid = sampling_ratio or "
        "ceil(bin size); sample at start + (g + 0.5) * bin / grid; 0 outside [-1, H], edge pixel repeated.",
        lambda: _roi_cases(align=True),
        [("half-pixel offset missing (aligned=True treated as False)", _align_variant(aligned=False)),
         ("half-pixel offset applied in legacy mode too", _align_variant(aligned=True)),
         ("legacy RoIs not widened to at least 1 x 1 pixel", _align_variant(no_legacy_clamp=True)),
         ("spatial_scale not applied", _align_variant(scale=False)),
         ("width and height swapped (boxes read as y1, x1, y2, x2)", _align_variant(swapped=True)),
         ("one sample per bin instead of adaptive ceil(bin size)", _align_variant(ratio=1))],
        lambda fn, args: fn(*_align_args(args).values())),
    "assign_levels": _ex(
        "06_roialign_vs_roipool", assign_levels,
        "The FPN level of each box: floor(k0 + log2(sqrt(area) / 224) + eps) clamped to [k_min, k_max], counted "
        "from k_min -> Tensor[R] int64.",
        "torch.floor, then clamp, then subtract k_min; sqrt of the area, not the area.",
        _levels_cases,
        [("level not counted from k_min (absolute level returned)", _levels_absolute),
         ("rounded instead of floored", _levels_rounded),
         ("log2 of the area instead of its square root", _levels_of_area),
         ("not clamped to [k_min, k_max]", _levels_unclamped)]),
    "postprocess_detections": _ex(
        "07_box_head", postprocess_detections,
        "Box-head outputs -> per image (boxes, scores, labels): softmax, decode every class's deltas, clip, drop "
        "the background, scores <= score_thresh and tiny boxes, NMS per class, keep the best detections_per_img.",
        "every (RoI, class >= 1) pair is a candidate: reshape boxes to (R_i, K+1, 4), drop column 0, flatten; "
        "batched_nms with the labels as categories.",
        _post_cases,
        [("background class kept as a detection", _post_variant(background=True)),
         ("NMS across classes instead of per class", _post_variant(per_class_nms=False)),
         ("sigmoid scores instead of softmax", _post_variant(softmax=False)),
         ("class 0's deltas used for every class", _post_variant(class_deltas=False)),
         ("boxes not clipped to the image", _post_variant(clip=False))]),
    "paste_mask": _ex(
        "08_mask_head", paste_mask,
        "Paste one mask Tensor[M', M'] into an image of image_size (H, W) at the integer box [x1, y1, x2, y2].",
        "resize bilinearly (align_corners=False) to (y2 - y1 + 1) x (x2 - x1 + 1), at least 1 x 1; copy only the "
        "part inside the image; zeros elsewhere.",
        _paste_cases,
        [("box size without the +1 (x2 - x1 pixels)", _paste_variant(plus_one=False)),
         ("align_corners=True", _paste_variant(align_corners=True)),
         ("box read as xywh", _paste_variant(xywh=True)),
         ("nearest instead of bilinear resizing", _paste_variant(mode="nearest"))]),
    "mask_targets": _ex(
        "08_mask_head", mask_targets,
        "Each positive RoI's training mask: its ground-truth mask (gt_masks[matched_idxs]) cropped to the RoI "
        "and resized to resolution x resolution -> Tensor[P, M, M] float.",
        "roi_align on the masks as (G, 1, H, W) with RoIs (matched index, x1, y1, x2, y2), spatial_scale 1, "
        "sampling_ratio -1, aligned False.",
        _targets_cases,
        [("aligned=True (half-pixel offset added)", _targets_aligned),
         ("matched_idxs ignored: every RoI cut from mask 0", _targets_first_mask),
         ("the whole mask resized instead of the RoI's crop", _targets_whole_mask)]),
    "expand_boxes": _ex(
        "08_mask_head", expand_boxes,
        "Scale boxes Tensor[D, 4] about their centres by `scale`.",
        "centre = (x1 + x2) / 2, half width = (x2 - x1) / 2 * scale.",
        _expand_cases,
        [("scaled about the top-left corner instead of the centre", _expand_corner),
         ("half-size scaled twice (2 * scale)", _expand_double),
         ("boxes read as xywh", _expand_xywh)]),
    "smooth_l1": _ex(
        "09_losses", smooth_l1,
        "Summed smooth-L1: 0.5 x**2 / beta where |x| < beta, |x| - 0.5 beta elsewhere; beta = 0 is plain L1.",
        "x = input - target; torch.where(|x| < beta, ..., ...).sum(); handle beta == 0 separately (0 / 0).",
        _smooth_cases,
        [("beta ignored (beta = 1)", _smooth_beta_one),
         ("mean instead of sum", _smooth_mean),
         ("quadratic part not divided by beta", _smooth_not_divided),
         ("plain squared error (no linear part)", _smooth_l2)]),
    "box_regression_loss": _ex(
        "09_losses", box_regression_loss,
        "Smooth-L1 on each positive RoI's deltas for its own class, summed, divided by the number of RoIs R.",
        "view box_deltas as (R, K+1, 4); pick [positive, labels[positive]]; divide by labels.numel().",
        _boxloss_cases,
        [("divided by the number of positives instead of all sampled RoIs", _boxloss_by_positives),
         ("class 0's deltas used instead of each RoI's class", _boxloss_class_zero),
         ("background RoIs included", _boxloss_all_rois),
         ("beta ignored (beta = 1)", _boxloss_beta_one)]),
    "mask_loss": _ex(
        "09_losses", mask_loss,
        "Per-pixel binary cross-entropy of each positive's own-class mask logits against its target, mean over "
        "P*M*M; with no positives, mask_logits.sum() * 0.",
        "mask_logits[arange(P), labels] -> (P, M, M); F.binary_cross_entropy_with_logits.",
        _maskloss_cases,
        [("softmax cross-entropy over classes instead of a per-class sigmoid", _maskloss_softmax),
         ("channel 0 used for every RoI", _maskloss_channel_zero),
         ("sum instead of mean", _maskloss_sum),
         ("loss over every class channel", _maskloss_all_channels)]),
    "xyxy_to_xywh": _ex(
        "11_train_on_gpu", xyxy_to_xywh,
        "Convert boxes Tensor[D, 4] (x1, y1, x2, y2) to COCO's (x, y, width, height).",
        "(x1, y1) stay; width = x2 - x1 (no +1).",
        _xywh_cases,
        [("+1 pixel convention in widths", _xywh_plus_one),
         ("centre (cx, cy) instead of the top-left corner", _xywh_centre),
         ("width and height swapped", _xywh_swapped)]),
    "average_precision": _ex(
        "11_train_on_gpu", average_precision_reference,
        "COCO's AP of one precision-recall curve (recall, precision: Tensor[D]) as a float: 101-point "
        "interpolation of the precision envelope.",
        "envelope: precision[i] = max(precision[i:]); at t = 0, 0.01, ..., 1 take the first point with recall >= t "
        "(torch.searchsorted, side='left'), 0 if none; mean of the 101 values.",
        _ap_cases,
        [("precision not made monotone (no envelope)", _ap_no_envelope),
         ("11-point (PASCAL VOC 2007) instead of 101-point interpolation", _ap_eleven_points),
         ("area under the raw curve (trapezoids) instead of interpolated precision", _ap_trapezoid),
         ("area under the raw curve (rectangles) instead of interpolated precision", _ap_rectangles)]),
}
