"""Tests for minimaskrcnn.exercises: every checker accepts its solution, rejects typical wrong versions (named),
reports stubs as not attempted and never lets a learner's exception through."""
import contextlib
import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from minimaskrcnn.boxes import batched_nms, decode_boxes, nms
from minimaskrcnn.exercises import EXERCISES, check, stub
from minimaskrcnn.exercises import solutions as S
from minimaskrcnn.exercises.references import average_precision_reference, fpn_top_down_reference
from minimaskrcnn.ops import roi_align as fast_roi_align

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
REQUIRED = {"cell_anchors": "01", "box_iou": "02", "encode_boxes": "03", "decode_boxes": "03", "nms": "03",
            "roi_pool": "06", "roi_align": "06", "assign_levels": "06", "smooth_l1": "09", "paste_mask": "08"}


def run(name, fn, capsys):
    ok = check(name, fn)
    return ok, capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ the registry
def test_registry_covers_the_notebooks():
    assert len(EXERCISES) >= 20
    for name, notebook in REQUIRED.items():
        assert EXERCISES[name].notebook.startswith(notebook)
    assert {ex.notebook[:2] for ex in EXERCISES.values()} >= {"01", "02", "03", "04", "05", "06", "07", "08", "09",
                                                                "11"}
    for name, ex in EXERCISES.items():
        assert (NOTEBOOKS / f"{ex.notebook}.ipynb").exists(), name
        assert ex.statement and ex.hint, name
        assert len(ex.mistakes) >= 3, name


@pytest.mark.parametrize("name", list(EXERCISES))
def test_checker_accepts_the_solution(name, capsys):
    solution = getattr(S, name)
    assert solution is not EXERCISES[name].reference  # a solution of its own, not the package's function
    ok, out = run(name, solution, capsys)
    assert ok, out
    assert "agree" in out and len(out.splitlines()) == 1


@pytest.mark.parametrize("name", list(EXERCISES))
def test_stub_is_not_attempted(name, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    ok, out = run(name, stub, capsys)
    assert not ok
    assert out.startswith(f"{name}: not attempted yet. Hint: ") and "Traceback" not in out

    class MatcherStub:
        def __init__(self, high_threshold, low_threshold, allow_low_quality_matches=False):
            pass

        def __call__(self, iou):
            pass  # your code here

    assert check(name, MatcherStub if name == "Matcher" else lambda *args: None) is False
    assert "not attempted yet" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(EXERCISES))
def test_stub_source_runs_and_is_not_attempted(name, capsys):
    namespace = {}
    source = stub(name)
    assert max(len(line) for line in source.splitlines()) <= 120
    exec(source, namespace)  # what a notebook's "Your turn" cell holds
    assert check(name, namespace[name]) is False
    assert capsys.readouterr().out.startswith(f"{name}: not attempted yet")


def test_learner_exception_is_a_message(capsys):
    def broken(boxes1, boxes2):
        return boxes1[:, 7]  # IndexError

    ok, out = run("box_iou", broken, capsys)
    assert not ok
    assert "raised IndexError" in out and "case: identical boxes" in out and "Traceback" not in out


def test_unknown_name_lists_the_exercises(capsys):
    ok, out = run("box_iuo", S.box_iou, capsys)
    assert not ok and "no exercise called 'box_iuo'" in out and "box_iou" in out


def test_diagnosis_names_case_inputs_expected_got(capsys):
    ok, out = run("smooth_l1", lambda x, t, beta: ((x - t).abs() - 0.5).clamp(min=0).sum(), capsys)
    lines = out.splitlines()
    assert not ok and lines[0].startswith("smooth_l1: case 'beta 1' differs (max difference")
    assert [line.split(":")[0].strip() for line in lines[1:4]] == ["inputs", "expected", "got"]
    assert len(lines) <= 5


def test_wrong_dtype_is_reported(capsys):
    ok, out = run("xyxy_to_xywh", lambda b: S.xyxy_to_xywh(b).float(), capsys)
    assert not ok and "dtype torch.float32, expected torch.float64" in out


# ------------------------------------------------------------------------------------------------ wrong versions
def cell_not_rounded(sizes, aspect_ratios):
    rows = [[-s / math.sqrt(r) / 2, -s * math.sqrt(r) / 2, s / math.sqrt(r) / 2, s * math.sqrt(r) / 2]
            for r in aspect_ratios for s in sizes]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def cell_size_major(sizes, aspect_ratios):
    rows = [S.cell_anchors([s], [r])[0].tolist() for s in sizes for r in aspect_ratios]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def grid_anchor_major(cell, feature_size, stride):
    h, w = feature_size
    rows = [a + torch.tensor([j * stride[1], i * stride[0]] * 2) for a in cell for i in range(h) for j in range(w)]
    return torch.stack(rows) if rows else cell.new_zeros((0, 4))


def iou_loop(boxes1, boxes2, plus=0.0, reduce_union=True, xywh=False):
    out = torch.zeros(len(boxes1), len(boxes2), dtype=boxes1.dtype)
    for i, a in enumerate(boxes1.tolist()):
        for j, b in enumerate(boxes2.tolist()):
            if xywh:
                a, b = [a[0], a[1], a[0] + a[2], a[1] + a[3]], [b[0], b[1], b[0] + b[2], b[1] + b[3]]
            iw = max(min(a[2], b[2]) - max(a[0], b[0]) + plus, 0)
            ih = max(min(a[3], b[3]) - max(a[1], b[1]) + plus, 0)
            area_a, area_b = ((c[2] - c[0] + plus) * (c[3] - c[1] + plus) for c in (a, b))
            out[i, j] = iw * ih / (area_a + area_b - (iw * ih if reduce_union else 0))
    return out


class ArgmaxMatcher(S.Matcher):
    def __call__(self, iou):
        matches = S.Matcher(self.high, self.low, False)(iou)
        if self.allow and len(iou):
            best_gt = iou.max(dim=0).indices
            for g in range(len(iou)):
                p = int(iou[g].argmax())  # only one prediction per ground truth, even on ties
                matches[p] = best_gt[p]
        return matches


def encode_inverted(targets, anchors, weights):
    d = S.encode_boxes(targets, anchors, weights)
    d[:, 2:] = -d[:, 2:]
    return d


def decode_first_class(deltas, anchors, weights, clamp=math.log(1000 / 16)):
    return torch.cat([S.decode_boxes(deltas[:, :4], anchors, weights, clamp)] * (deltas.shape[1] // 4), dim=1)


def decode_times_weights(deltas, anchors, weights, clamp=math.log(1000 / 16)):
    scaled = deltas * torch.tensor(list(weights) * (deltas.shape[1] // 4), dtype=deltas.dtype) ** 2
    return S.decode_boxes(scaled, anchors, weights, clamp)


def nms_loop(boxes, scores, iou_threshold, strict=False, reverse_ties=False, greedy=True):
    key = (lambda i: (-float(scores[i]), -i)) if reverse_ties else (lambda i: (-float(scores[i]), i))
    order = sorted(range(len(boxes)), key=key)
    iou = S.box_iou(boxes, boxes)
    keep = []
    for k, i in enumerate(order):
        others = keep if greedy else order[:k]
        if all((iou[i, j] < iou_threshold) if strict else (iou[i, j] <= iou_threshold) for j in others):
            keep.append(i)
    return torch.tensor(keep, dtype=torch.int64)


def batched_grouped(boxes, scores, idxs, iou_threshold):
    keep = []
    for c in sorted(set(idxs.tolist())):
        members = torch.where(idxs == c)[0]
        keep += members[S.nms(boxes[members], scores[members], iou_threshold)].tolist()
    return torch.tensor(keep, dtype=torch.int64)


def batched_local(boxes, scores, idxs, iou_threshold):
    keep = S.batched_nms(boxes, scores, idxs, iou_threshold)
    rank = [int((idxs[:i] == idxs[i]).sum()) for i in range(len(idxs))]
    return torch.tensor([rank[i] for i in keep.tolist()], dtype=torch.int64)


def clip_max_only(boxes, size):
    out = boxes.clone()
    out[..., 0::2] = out[..., 0::2].clamp(max=size[1])
    out[..., 1::2] = out[..., 1::2].clamp(max=size[0])
    return out


def fpn_loop(laterals, mode="nearest", accumulate=True, top_down=True):
    out = list(laterals)
    steps = range(len(out) - 2, -1, -1) if top_down else range(1, len(out))
    for i in steps:
        j = i + 1 if top_down else i - 1
        source = out[j] if accumulate else laterals[j]
        out[i] = laterals[i] + F.interpolate(source, size=laterals[i].shape[-2:], mode=mode)
    return out


def flatten_anchor_major(logits, deltas):
    n = logits[0].shape[0]
    flat_d = [d.reshape(n, -1, 4, *d.shape[-2:]).permute(0, 1, 3, 4, 2).reshape(n, -1, 4) for d in deltas]
    return torch.cat([lg.reshape(n, -1) for lg in logits], 1), torch.cat(flat_d, 1)


def flatten_coordinate_major(logits, deltas):
    n = logits[0].shape[0]
    flat_d = [d.reshape(n, 4, -1, *d.shape[-2:]).permute(0, 3, 4, 2, 1).reshape(n, -1, 4) for d in deltas]
    return S.flatten_predictions(logits, deltas)[0], torch.cat(flat_d, 1)


def filter_logits(proposals, objectness, level_sizes, image_sizes, pre_nms_top_n, post_nms_top_n, nms_thresh,
                  min_size=1e-3, score_thresh=0.0):
    """Forgets the sigmoid: scores stay logits."""
    boxes_out, scores_out = [], []
    for boxes, logits, size in zip(proposals, objectness, image_sizes):
        top, levels, start = [], [], 0
        for level, count in enumerate(level_sizes):
            top += (logits[start:start + count].topk(min(pre_nms_top_n, count)).indices + start).tolist()
            levels += [level] * min(pre_nms_top_n, count)
            start += count
        b, s, lv = S.clip_boxes(boxes[top], size), logits[top], torch.tensor(levels)
        ok = ((b[:, 2:] - b[:, :2]) >= min_size).all(1) & (s >= score_thresh)
        keep = batched_nms(b[ok], s[ok], lv[ok], nms_thresh)[:post_nms_top_n]
        boxes_out.append(b[ok][keep])
        scores_out.append(s[ok][keep])
    return boxes_out, scores_out


def pool_shifted(input, boxes, output_size, spatial_scale=1.0, truncate=False, exclusive=False):
    b = boxes.clone()
    if truncate:
        b[:, 1:] = torch.floor(b[:, 1:] * spatial_scale) / spatial_scale
    if exclusive:
        b[:, 3:] -= 1 / spatial_scale
    return S.roi_pool(input, b, output_size, spatial_scale)


def levels_loop(boxes, k_min, k_max, canonical_scale=224, canonical_level=4, eps=1e-6, absolute=False,
                rounding=math.floor, clamp=True):
    out = []
    for x1, y1, x2, y2 in boxes.tolist():
        level = rounding(canonical_level + math.log2(math.sqrt((x2 - x1) * (y2 - y1)) / canonical_scale) + eps)
        level = min(max(level, k_min), k_max) if clamp else level
        out.append(level if absolute else level - k_min)
    return torch.tensor(out, dtype=torch.int64)


def post_wrong(class_logits, box_regression, proposals, image_sizes, box_coder_weights=(10.0, 10.0, 5.0, 5.0),
               score_thresh=0.05, nms_thresh=0.5, detections_per_img=100, min_size=1e-2, first=1, per_class=True,
               clip=True):
    k1 = class_logits.shape[1]
    boxes = decode_boxes(box_regression, torch.cat(proposals), box_coder_weights).view(-1, k1, 4)
    probs = F.softmax(class_logits, -1)
    out = ([], [], [])
    for b, p, size in zip(boxes.split([len(r) for r in proposals]), probs.split([len(r) for r in proposals]),
                          image_sizes):
        b = S.clip_boxes(b, size) if clip else b
        b, p = b[:, first:].reshape(-1, 4), p[:, first:].reshape(-1)
        lab = torch.arange(first, k1).repeat(len(b) // max(k1 - first, 1))
        ok = (p > score_thresh) & ((b[:, 2:] - b[:, :2]) >= min_size).all(1)
        b, p, lab = b[ok], p[ok], lab[ok]
        keep = (batched_nms(b, p, lab, nms_thresh) if per_class else nms(b, p, nms_thresh))[:detections_per_img]
        for store, v in zip(out, (b[keep], p[keep], lab[keep])):
            store.append(v)
    return out


def paste_wrong(mask, box, image_size, extra=1, mode="bilinear", align_corners=False):
    x1, y1, x2, y2 = box
    w, h = max(x2 - x1 + extra, 1), max(y2 - y1 + extra, 1)
    kwargs = {} if mode == "nearest" else {"align_corners": align_corners}
    resized = F.interpolate(mask[None, None], size=(h, w), mode=mode, **kwargs)[0, 0]
    image = mask.new_zeros(image_size)
    for y in range(max(y1, 0), min(y2 + extra, image_size[0])):
        for x in range(max(x1, 0), min(x2 + extra, image_size[1])):
            image[y, x] = resized[y - y1, x - x1]
    return image


def targets_wrong(gt_masks, rois, matched_idxs, resolution, aligned=False, first_mask=False, whole=False):
    out = []
    for roi, g in zip(rois, matched_idxs.tolist()):
        mask = gt_masks[0 if first_mask else g][None, None].to(rois.dtype)
        if whole:
            out.append(F.interpolate(mask, size=(resolution, resolution), mode="bilinear")[0, 0])
        else:
            out.append(fast_roi_align(mask, [roi[None]], resolution, 1.0, -1, aligned)[0, 0])
    return torch.stack(out) if out else rois.new_zeros((0, resolution, resolution))


def expand_corner(boxes, scale):
    return torch.cat((boxes[:, :2], boxes[:, :2] + scale * (boxes[:, 2:] - boxes[:, :2])), 1)


def expand_xywh(boxes, scale):
    centre = boxes[:, :2] + boxes[:, 2:] / 2
    return torch.cat((centre - boxes[:, 2:] * scale / 2, centre + boxes[:, 2:] * scale / 2), 1)


def smooth_not_divided(input, target, beta):
    x = (input - target).abs()
    return torch.where(x < beta, 0.5 * x * x, x - 0.5 * beta).sum()


def boxloss_wrong(box_deltas, labels, target_deltas, beta=1 / 9, by_positives=False, class_zero=False):
    total, positives = box_deltas.new_zeros(()), 0
    for r, label in enumerate(labels.tolist()):
        if label > 0:
            k = 0 if class_zero else label
            total = total + S.smooth_l1(box_deltas[r, 4 * k:4 * k + 4], target_deltas[r], beta)
            positives += 1
    return total / max(positives if by_positives else len(labels), 1)


def maskloss_softmax(mask_logits, labels, mask_targets):
    if len(labels) == 0:
        return mask_logits.sum() * 0
    log_p = torch.log_softmax(mask_logits, dim=1)
    return -torch.stack([(mask_targets[p] * log_p[p, k]).mean() for p, k in enumerate(labels.tolist())]).mean()


def ap_loop(recall, precision, points=101, envelope=True):
    r, p = recall.tolist(), precision.tolist()
    if envelope:
        p = [max(p[i:]) for i in range(len(p))]
    values = []
    for t in range(points):
        reached = [pi for ri, pi in zip(r, p) if ri >= t / (points - 1)]
        values.append(reached[0] if reached else 0.0)
    return sum(values) / points


def ap_trapezoid(recall, precision):
    r, p = [0.0] + recall.tolist(), precision.tolist()
    p = p[:1] + p
    return sum((r[i] - r[i - 1]) * (p[i] + p[i - 1]) / 2 for i in range(1, len(r)))


PLUS = torch.tensor([0.0, 0.0, 1.0, 1.0])
WRONG = {
    "cell_anchors": [(lambda s, r: S.cell_anchors(s, [1 / x for x in r]), "w / h instead of h / w"),
                     (cell_not_rounded, "not rounded"), (cell_size_major, "size-major")],
    "grid_anchors": [(lambda c, f, s: S.grid_anchors(c, f, s[::-1]), "stride read as (stride_x, stride_y)"),
                     (grid_anchor_major, "anchor-major"),
                     (lambda c, f, s: S.grid_anchors(c, f, (1, 1)), "not multiplied by the stride")],
    "box_iou": [(lambda a, b: iou_loop(a, b, plus=1.0), "+1 pixel convention in widths"),
                (lambda a, b: iou_loop(a, b, reduce_union=False), "union not reduced by the intersection"),
                (lambda a, b: iou_loop(a, b, xywh=True), "boxes read as xywh")],
    "Matcher": [(lambda h, lo, a: S.Matcher(h + 1e-6, lo + 1e-6, a), "> instead of >="),
                (lambda h, lo, a: S.Matcher(h, lo, False), "low-quality matches ignored"),
                (ArgmaxMatcher, "ties broken in the wrong order")],
    "encode_boxes": [(lambda t, a, w: S.encode_boxes(t + PLUS.to(t), a + PLUS.to(a), w), "+1 pixel convention"),
                     (lambda t, a, w: S.encode_boxes(t, a, (1, 1, 1, 1)), "weights not applied"),
                     (encode_inverted, "log ratio inverted")],
    "decode_boxes": [(lambda d, a, w, c=4.135: S.decode_boxes(d, a, w, math.inf), "not clamped"),
                     (decode_first_class, "only the first class"),
                     (decode_times_weights, "weights multiplied instead of divided")],
    "nms": [(lambda b, s, t: nms_loop(b, s, t, strict=True), "exactly at the threshold"),
            (lambda b, s, t: nms_loop(b, s, t, reverse_ties=True), "ties broken in the wrong order"),
            (lambda b, s, t: nms_loop(b, s, t, greedy=False), "not greedy")],
    "batched_nms": [(lambda b, s, i, t: S.nms(b, s, t), "categories ignored"),
                    (batched_grouped, "grouped by category"), (batched_local, "indices within each category")],
    "clip_boxes": [(lambda b, size: S.clip_boxes(b, size[::-1]), "size read as (width, height)"),
                   (lambda b, size: S.clip_boxes(b, (size[0] - 1, size[1] - 1)), "width - 1 and height - 1"),
                   (clip_max_only, "negative coordinates not clipped")],
    "fpn_top_down": [(lambda lat: fpn_loop(lat, mode="bilinear"), "bilinear instead of nearest"),
                     (lambda lat: fpn_loop(lat, accumulate=False), "not the coarser merged map"),
                     (lambda lat: fpn_loop(lat, top_down=False), "bottom-up")],
    "flatten_predictions": [(flatten_anchor_major, "anchor-major"), (flatten_coordinate_major, "(4, A)"),
                            (lambda lg, dl: S.flatten_predictions([x.transpose(2, 3) for x in lg],
                                                                  [x.transpose(2, 3) for x in dl]),
                             "width and height swapped")],
    "filter_proposals": [(filter_logits, "no sigmoid"),
                         (lambda p, o, ls, sizes, *rest: S.filter_proposals(p, o, ls, [(10**6, 10**6)] * len(sizes),
                                                                             *rest), "not clipped"),
                         (lambda p, o, ls, sizes, pre, post, *rest: S.filter_proposals(p, o, ls, sizes, pre, 10**6,
                                                                                        *rest),
                          "post_nms_top_n ignored")],
    "roi_pool": [(lambda *a: pool_shifted(*a, truncate=True), "truncated instead of rounded"),
                 (lambda *a: pool_shifted(*a, exclusive=True), "x2, y2 excluded"),
                 (lambda i, b, o, s=1.0: S.roi_pool(i, b, o, 1.0), "spatial_scale not applied")],
    "roi_align": [(lambda i, b, o, s=1.0, r=-1, a=False: S.roi_align(i, b, o, s, r, False),
                   "half-pixel offset missing"),
                  (lambda i, b, o, s=1.0, r=-1, a=False: S.roi_align(i, b, o, s, r if r > 0 else 1, a),
                   "one sample per bin"),
                  (lambda i, b, o, s=1.0, r=-1, a=False: S.roi_align(i, b[:, [0, 2, 1, 4, 3]], o, s, r, a),
                   "width and height swapped")],
    "assign_levels": [(lambda *a: levels_loop(*a, absolute=True), "not counted from k_min"),
                      (lambda *a: levels_loop(*a, rounding=round), "rounded instead of floored"),
                      (lambda *a: levels_loop(*a, clamp=False), "not clamped")],
    "postprocess_detections": [(lambda *a: post_wrong(*a, first=0), "background class kept"),
                               (lambda *a: post_wrong(*a, per_class=False), "NMS across classes"),
                               (lambda *a: post_wrong(*a, clip=False), "not clipped")],
    "paste_mask": [(lambda m, b, s: paste_wrong(m, b, s, extra=0), "without the +1"),
                   (lambda m, b, s: paste_wrong(m, b, s, align_corners=True), "align_corners=True"),
                   (lambda m, b, s: paste_wrong(m, b, s, mode="nearest"), "nearest instead of bilinear")],
    "mask_targets": [(lambda *a: targets_wrong(*a, aligned=True), "aligned=True"),
                     (lambda *a: targets_wrong(*a, first_mask=True), "matched_idxs ignored"),
                     (lambda *a: targets_wrong(*a, whole=True), "whole mask resized")],
    "expand_boxes": [(expand_corner, "top-left corner"), (lambda b, s: S.expand_boxes(b, 2 * s), "scaled twice"),
                     (expand_xywh, "boxes read as xywh")],
    "smooth_l1": [(lambda x, t, beta: S.smooth_l1(x, t, 1.0), "beta ignored"),
                  (lambda x, t, beta: S.smooth_l1(x, t, beta) / max(x.numel(), 1), "mean instead of sum"),
                  (smooth_not_divided, "not divided by beta")],
    "box_regression_loss": [(lambda *a: boxloss_wrong(*a, by_positives=True), "number of positives"),
                            (lambda *a: boxloss_wrong(*a, class_zero=True), "class 0's deltas"),
                            (lambda d, lab, t, beta=1 / 9: S.box_regression_loss(d, lab, t, 1.0), "beta ignored")],
    "mask_loss": [(lambda lg, lab, t: S.mask_loss(lg, torch.zeros_like(lab), t), "channel 0"),
                  (lambda lg, lab, t: S.mask_loss(lg, lab, t) * max(t.numel(), 1), "sum instead of mean"),
                  (maskloss_softmax, "softmax cross-entropy")],
    "xyxy_to_xywh": [(lambda b: S.xyxy_to_xywh(b + PLUS.to(b)), "+1 pixel"),
                     (lambda b: torch.cat(((b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]), 1), "centre"),
                     (lambda b: S.xyxy_to_xywh(b)[:, [0, 1, 3, 2]], "width and height swapped")],
    "average_precision": [(lambda r, p: ap_loop(r, p, envelope=False), "no envelope"),
                          (lambda r, p: ap_loop(r, p, points=11), "11-point"),
                          (ap_trapezoid, "area under the raw curve")],
}


def test_every_exercise_has_wrong_versions():
    assert set(WRONG) == set(EXERCISES)
    assert all(len(versions) >= 3 for versions in WRONG.values())


@pytest.mark.parametrize("name, index", [(name, i) for name, versions in WRONG.items() for i in range(len(versions))])
def test_checker_rejects_and_names_a_typical_mistake(name, index, capsys):
    wrong, mistake = WRONG[name][index]
    ok, out = run(name, wrong, capsys)
    assert not ok
    looks_like = [line for line in out.splitlines() if line.strip().startswith("looks like:")]
    assert looks_like and mistake in looks_like[0], out
    assert ", or " not in looks_like[0], out  # one mistake named, not a list of guesses
    assert "Traceback" not in out and len(out.splitlines()) <= 6


# ------------------------------------------------------------------------------------------------ the references
def test_average_precision_reference_matches_pycocotools():
    """17 images with one ground-truth box each, 20 detections (exact box or a miss): AP50 from COCOeval equals the
    reference on the same precision-recall curve."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 17, (20,), generator=g).tolist()
    hits = (torch.rand(20, generator=g) > 0.4).tolist()
    scores = torch.rand(20, generator=g).tolist()
    gt = {"images": [{"id": i, "width": 50, "height": 50} for i in range(17)],
          "annotations": [{"id": i + 1, "image_id": i, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
                           "iscrowd": 0} for i in range(17)], "categories": [{"id": 1, "name": "a"}]}
    dets = [{"image_id": i, "category_id": 1, "bbox": [0, 0, 10, 10] if hit else [30, 30, 10, 10], "score": s}
            for i, hit, s in zip(images, hits, scores)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(dets), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    ap50 = float(evaluator.eval["precision"][0, :, 0, 0, 2].mean())  # IoU 0.5, all recalls, area all, 100 dets
    matched, true_positives = set(), []
    for k in sorted(range(20), key=lambda k: -scores[k]):  # a hit counts once per image
        true_positives.append(float(hits[k] and images[k] not in matched))
        matched |= {images[k]} if hits[k] else set()
    tp = torch.tensor(true_positives, dtype=torch.float64).cumsum(0)
    assert 0 < ap50 < 1
    assert average_precision_reference(tp / 17, tp / torch.arange(1, 21)) == pytest.approx(ap50, abs=1e-12)


def test_fpn_top_down_reference_is_the_fpn_without_its_convs():
    coarse, fine = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 3, 4)
    merged = fpn_top_down_reference([fine, coarse])
    assert torch.equal(merged[1], coarse) and torch.equal(merged[0], torch.ones(1, 1, 3, 4))
