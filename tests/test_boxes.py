"""Tests for minimaskrcnn.boxes: hand-computed IoU and coding, pycocotools IoU, NMS properties, batched NMS,
nms_mask (batched problems, alive masks, groups, chains longer than NMS_ROUNDS)."""
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

import minimaskrcnn.boxes as boxes_module
from minimaskrcnn.boxes import (
    BBOX_XFORM_CLIP,
    batched_nms,
    box_area,
    box_iou,
    clip_boxes,
    decode_boxes,
    NMS_ROUNDS,
    encode_boxes,
    large_boxes,
    nms,
    nms_mask,
    remove_small_boxes,
    upcast,
)
from minimaskrcnn.boxes import _sorted_nms
from minimaskrcnn.syncs import SyncCounter


def random_boxes(n, generator, size=100.0, max_wh=30.0):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * max_wh + 1
    return torch.cat((xy, xy + wh), dim=1)


def clustered_boxes(n, generator, clusters=20):
    """Jittered copies of a few boxes, like raw detections around objects."""
    centres = random_boxes(clusters, generator)
    pick = torch.randint(0, clusters, (n,), generator=generator)
    boxes = centres[pick] + torch.randn(n, 4, generator=generator, dtype=torch.float64) * 3
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    return boxes


def test_area_and_iou_by_hand():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 5, 15, 15], [0, 0, 10, 10], [10, 0, 20, 10], [2, 2, 4, 4], [20, 20, 30, 40]])
    assert box_area(b).tolist() == [100, 100, 100, 4, 200]
    # overlap 5x5 = 25, union 175; identical; touching edge; contained 4/100; disjoint
    assert torch.allclose(box_iou(a, b), torch.tensor([[25 / 175, 1.0, 0.0, 0.04, 0.0]]))
    assert box_iou(a, b).shape == (1, 5)
    assert box_iou(b, a).shape == (5, 1)
    assert box_iou(torch.zeros(0, 4), b).shape == (0, 5)


def test_iou_equals_pycocotools():
    g = torch.Generator().manual_seed(0)
    b1, b2 = random_boxes(30, g), random_boxes(40, g)
    xywh = lambda b: torch.cat((b[:, :2], b[:, 2:] - b[:, :2]), dim=1).numpy()  # noqa: E731
    expected = mask_utils.iou(xywh(b1), xywh(b2), np.zeros(len(b2), dtype=np.uint8))
    np.testing.assert_allclose(box_iou(b1, b2).numpy(), expected, rtol=1e-9, atol=1e-12)


def test_clip_and_remove_small():
    boxes = torch.tensor([[-5.0, -5, 50, 20], [10, 10, 200, 90], [3, 3, 3.5, 10]])
    assert clip_boxes(boxes, (40, 100)).tolist() == [[0, 0, 50, 20], [10, 10, 100, 40], [3, 3, 3.5, 10]]
    assert clip_boxes(boxes[None], (40, 100)).shape == (1, 3, 4)
    assert remove_small_boxes(boxes, 1.0).tolist() == [0, 1]


def test_encode_by_hand():
    anchor = torch.tensor([[0.0, 0, 10, 20]])  # centre (5, 10), size 10 x 20
    target = torch.tensor([[2.0, 4, 22, 24]])  # centre (12, 14), size 20 x 20
    deltas = encode_boxes(target, anchor, (1, 1, 1, 1))
    assert torch.allclose(deltas, torch.tensor([[0.7, 0.2, math.log(2), 0.0]]))
    deltas = encode_boxes(target, anchor, (10, 10, 5, 5))
    assert torch.allclose(deltas, torch.tensor([[7.0, 2.0, 5 * math.log(2), 0.0]]))


def test_decode_by_hand_and_round_trip():
    anchor = torch.tensor([[0.0, 0, 10, 20]])
    deltas = torch.tensor([[0.7, 0.2, math.log(2), 0.0]])
    assert torch.allclose(decode_boxes(deltas, anchor, (1, 1, 1, 1)), torch.tensor([[2.0, 4, 22, 24]]))
    g = torch.Generator().manual_seed(1)
    anchors, targets = random_boxes(50, g), random_boxes(50, g)
    for weights in [(1, 1, 1, 1), (10, 10, 5, 5)]:
        back = decode_boxes(encode_boxes(targets, anchors, weights), anchors, weights)
        assert torch.allclose(back, targets, atol=1e-9)


def test_decode_several_classes_and_clamp():
    anchors = torch.tensor([[0.0, 0, 10, 10], [10, 10, 30, 20]])
    deltas = torch.zeros(2, 3 * 4)
    deltas[:, 4:8] = torch.tensor([1.0, 0, 0, 0])  # class 1 moves one width right
    deltas[:, 8:12] = torch.tensor([0.0, 0, 100.0, 100.0])  # class 2 asks for exp(100): clamped
    out = decode_boxes(deltas, anchors, (1, 1, 1, 1))
    assert out.shape == (2, 12)
    assert torch.allclose(out[:, :4], anchors)
    assert torch.allclose(out[:, 4:8], anchors + torch.tensor([[10.0, 0, 10, 0], [20, 0, 20, 0]]))
    assert torch.isfinite(out).all()
    widths = out[:, 10] - out[:, 8]
    assert torch.allclose(widths, torch.tensor([10.0, 20.0]) * math.exp(BBOX_XFORM_CLIP))


def check_nms_properties(boxes, scores, keep, thr):
    assert keep.dtype == torch.int64
    assert len(set(keep.tolist())) == len(keep)
    assert (scores[keep][1:] <= scores[keep][:-1]).all(), "kept boxes sorted by decreasing score"
    kept = boxes[keep]
    iou = box_iou(kept, kept)
    iou.fill_diagonal_(0)
    assert (iou <= thr).all(), "two kept boxes overlap more than the threshold"
    suppressed = torch.ones(len(boxes), dtype=torch.bool)
    suppressed[keep] = False
    rank = torch.empty(len(boxes), dtype=torch.int64)
    rank[torch.argsort(scores, descending=True, stable=True)] = torch.arange(len(boxes))
    for i in torch.where(suppressed)[0]:
        earlier = rank[keep] < rank[i]
        over = box_iou(boxes[i : i + 1], kept)[0] > thr
        assert (earlier & over).any(), f"box {int(i)} suppressed without a higher-scoring kept box over {thr}"


@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_properties(thr, seed):
    g = torch.Generator().manual_seed(seed)
    boxes = clustered_boxes(300, g) if seed % 2 == 0 else random_boxes(300, g)
    scores = torch.rand(300, generator=g, dtype=torch.float64)
    keep = nms(boxes, scores, thr)
    check_nms_properties(boxes, scores, keep, thr)


def test_nms_many_boxes_several_blocks(monkeypatch):
    g = torch.Generator().manual_seed(3)
    boxes = clustered_boxes(3000, g, clusters=300).float()
    scores = torch.rand(3000, generator=g)
    keep = nms(boxes, scores, 0.5)  # two segments (NMS_SEGMENT 2048)
    check_nms_properties(boxes, scores, keep, 0.5)
    # the block and segment sizes are only implementation details, on both paths (CPU's and the sync-free one)
    for sync_free in (False, True):
        for block_size in (7, 5000):
            assert _sorted_nms(boxes, scores, 0.5, None, block_size, sync_free).tolist() == keep.tolist()
    monkeypatch.setattr(boxes_module, "NMS_SEGMENT", 100)
    assert _sorted_nms(boxes, scores, 0.5, None, None, True).tolist() == keep.tolist()


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_cpu_path_and_sync_free_path_keep_the_same_boxes(thr):
    """nms on the CPU drops suppressed boxes as it goes (_compacting_nms); a GPU takes the sync-free path (NMS_SEGMENT
    segments settled by nms_mask). Run on the CPU with each path's parameters, both keep the same boxes."""
    g = torch.Generator().manual_seed(int(thr * 10))
    for n in (1, 300, 2500):  # 2500: two of the sync-free path's segments
        boxes = clustered_boxes(n, g, clusters=max(n // 10, 1)).float()
        scores = torch.rand(n, generator=g)
        scores[::7] = scores[0]  # ties: the lower index first on both paths
        groups = torch.randint(0, 5, (n,), generator=g)
        for idxs in (None, groups):
            cpu = _sorted_nms(boxes, scores, thr, idxs, None, sync_free=False)
            assert torch.equal(cpu, _sorted_nms(boxes, scores, thr, idxs, None, sync_free=True))
            assert torch.equal(cpu, nms(boxes, scores, thr) if idxs is None else batched_nms(boxes, scores, idxs, thr))
            if idxs is None:
                check_nms_properties(boxes, scores, cpu, thr)


def test_sync_counter_sees_the_sync_free_path():
    """Under a SyncCounter (which counts what a GPU run would do) nms takes the GPU's path: one sync per segment."""
    g = torch.Generator().manual_seed(0)
    boxes, scores = clustered_boxes(3000, g, clusters=300).float(), torch.rand(3000, generator=g)
    assert not boxes_module._sync_free(boxes.device)
    with SyncCounter() as counter:
        assert boxes_module._sync_free(boxes.device)
        keep = nms(boxes, scores, 0.5)
    assert counter.total() == 2  # ceil(3000 / NMS_SEGMENT): the count of kept boxes per segment
    assert torch.equal(keep, nms(boxes, scores, 0.5))


def test_nms_by_hand_and_edge_cases():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # box 3 (0.95) suppresses box 0 (IoU 0.9) and box 1? IoU(3,1)= 72/(90+100-72)=0.61 -> suppressed at 0.5
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.95).tolist() == [3, 0, 1, 2]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    # equal scores: the earlier index wins, as a stable sort gives
    same = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    assert nms(same, torch.tensor([0.5, 0.5]), 0.5).tolist() == [0]


def test_batched_nms_equals_per_class_nms():
    g = torch.Generator().manual_seed(4)
    boxes = clustered_boxes(500, g, clusters=15).float()
    scores = torch.rand(500, generator=g)
    idxs = torch.randint(0, 5, (500,), generator=g)
    keep = batched_nms(boxes, scores, idxs, 0.5)
    expected = torch.cat([torch.where(idxs == c)[0][nms(boxes[idxs == c], scores[idxs == c], 0.5)] for c in range(5)])
    expected = expected[torch.argsort(scores[expected], descending=True)]
    assert keep.tolist() == expected.tolist()
    # the same box in two classes is kept twice
    twice = batched_nms(torch.tensor([[0.0, 0, 5, 5]] * 2), torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5)
    assert twice.tolist() == [0, 1]


def test_nms_chain_longer_than_the_rounds_settles_exactly():
    """Boxes 1 px apart, scores falling along the row: each kept box only frees the next one, one round at a time."""
    x = torch.arange(24 * NMS_ROUNDS, dtype=torch.float32)
    boxes = torch.stack((x, torch.zeros_like(x), x + 10, torch.full_like(x, 10)), dim=1)
    scores = 1 - x / len(x)
    # IoU with the box 1, 2, 3, 4 px away: 9/11, 8/12, 7/13 (all > 0.5), 6/14: every 4th box is kept
    expected = list(range(0, len(x), 4))
    keep, settled = nms_mask(boxes, 0.5)
    assert not settled  # a chain of 6 * NMS_ROUNDS kept boxes cannot settle in NMS_ROUNDS rounds
    keep, settled = nms_mask(boxes, 0.5, exact=True)
    assert settled and torch.where(keep)[0].tolist() == expected
    assert nms(boxes, scores, 0.5).tolist() == expected
    assert nms(boxes, scores, 0.5, block_size=7).tolist() == expected


def test_nms_mask_batched_problems_alive_and_groups():
    g = torch.Generator().manual_seed(9)
    boxes = clustered_boxes(600, g, clusters=30).float().reshape(2, 300, 4)  # two independent problems
    alive = torch.rand(2, 300, generator=g) > 0.3
    groups = torch.randint(0, 3, (2, 300), generator=g)
    keep, settled = nms_mask(boxes, 0.5, alive=alive, groups=groups, block_size=64)
    assert settled and keep.shape == (2, 300) and not (keep & ~alive).any()
    scores = torch.linspace(1, 0, 300)  # the boxes are in score order already
    for i in range(2):
        # dead boxes take no part: as nms of the alive ones alone, per group
        idx = torch.where(alive[i])[0]
        expected = idx[batched_nms(boxes[i, idx], scores[idx], groups[i, idx], 0.5)]
        assert torch.where(keep[i])[0].tolist() == sorted(expected.tolist())


def test_large_boxes_is_the_mask_remove_small_boxes_selects():
    boxes = torch.tensor([[[0.0, 0, 5, 5], [0, 0, 0.5, 5]], [[1, 1, 2, 1.5], [0, 0, 1, 1]]])  # (2, 2, 4)
    assert large_boxes(boxes, 1.0).tolist() == [[True, False], [False, True]]
    assert remove_small_boxes(boxes[0], 1.0).tolist() == [0]


# ------------------------------------------------------------------------------ half precision (mixed precision)
def image_scale_boxes(n, generator, size=2000.0, max_wh=500.0):
    """Boxes of an ordinary photo's scale, float32: corners anywhere up to `size` px, sides 8..max_wh px."""
    xy = torch.rand(n, 2, generator=generator) * (size - max_wh)
    wh = torch.rand(n, 2, generator=generator) * (max_wh - 8) + 8
    return torch.cat((xy, xy + wh), dim=1)


def test_decode_under_bf16_autocast_equals_float32_at_800_px():
    """Deltas come out of a bf16 layer under autocast; decoding them on 800-px anchors stays within 0.1 px of fp32."""
    g = torch.Generator().manual_seed(6)
    anchors = image_scale_boxes(2000, g, size=1333.0, max_wh=512.0)
    layer = torch.nn.Linear(16, 2 * 4)  # two classes of deltas side by side
    with torch.no_grad():
        layer.weight.mul_(0.2)
    features = torch.randn(2000, 16, generator=g)
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            deltas = layer(features)
            boxes = decode_boxes(deltas, anchors, weights)
        assert deltas.dtype == torch.bfloat16 and boxes.dtype == torch.float32
        expected = decode_boxes(deltas.float(), anchors, weights)  # the same deltas, decoded in float32
        assert (boxes - expected).abs().max() <= 0.1
        # what decoding on anchors rounded to bf16 (as before) cost: whole pixels at this scale
        rounded = decode_boxes(deltas.float(), anchors.bfloat16().float(), weights)
        assert (rounded - expected).abs().max() > 1.0


def test_encode_and_clip_compute_in_float32_for_half_boxes():
    g = torch.Generator().manual_seed(7)
    anchors, targets = image_scale_boxes(300, g, size=1333.0), image_scale_boxes(300, g, size=1333.0)
    for dtype in (torch.float16, torch.bfloat16):
        a, t = anchors.to(dtype), targets.to(dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            deltas = encode_boxes(t, a, (10.0, 10.0, 5.0, 5.0))
        assert deltas.dtype == torch.float32
        torch.testing.assert_close(deltas, encode_boxes(t.float(), a.float(), (10.0, 10.0, 5.0, 5.0)), rtol=0, atol=0)
        clipped = clip_boxes(a + 40, (800, 1333))  # bf16 cannot hold 1333: it would clip to 1336
        assert clipped.dtype == torch.float32 and clipped[:, 2].max() == 1333 and clipped[:, 3].max() == 800
    assert upcast(torch.zeros(1, dtype=torch.float64)).dtype == torch.float64  # float64 stays float64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_iou_and_nms_of_half_boxes_equal_float32(dtype):
    """Boxes up to 2000 px in float16 / bfloat16: IoU, NMS and batched NMS give their float32 results."""
    g = torch.Generator().manual_seed(8)
    centres = image_scale_boxes(40, g)
    boxes = (centres[torch.randint(0, 40, (600,), generator=g)] + torch.randn(600, 4, generator=g) * 20).to(dtype)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 8)
    scores = torch.rand(600, generator=g).to(dtype)
    idxs = torch.randint(0, 5, (600,), generator=g)
    naive_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # in the boxes' own dtype
    if dtype == torch.float16:
        assert torch.isinf(naive_area).any()  # the overflow this guards against
    exact = boxes.float()  # the same values in float32
    iou = box_iou(boxes, boxes[:100])
    assert iou.dtype == torch.float32 and torch.isfinite(iou).all()
    torch.testing.assert_close(iou, box_iou(exact, exact[:100]), rtol=0, atol=0)
    assert box_area(boxes).tolist() == box_area(exact).tolist()
    for thr in (0.3, 0.5, 0.7):
        keep = nms(boxes, scores, thr)
        assert keep.tolist() == nms(exact, scores.float(), thr).tolist() and 40 <= len(keep) < 600
        assert batched_nms(boxes, scores, idxs, thr).tolist() == batched_nms(exact, scores.float(), idxs, thr).tolist()


@pytest.mark.reference
def test_matches_torchvision():
    tv = pytest.importorskip("torchvision")
    g = torch.Generator().manual_seed(5)
    boxes = clustered_boxes(2000, g, clusters=100).float()
    scores = torch.rand(2000, generator=g)
    idxs = torch.randint(0, 4, (2000,), generator=g)
    torch.testing.assert_close(box_iou(boxes[:300], boxes), tv.ops.box_iou(boxes[:300], boxes))
    for thr in (0.3, 0.5, 0.7):
        assert nms(boxes, scores, thr).tolist() == tv.ops.nms(boxes, scores, thr).tolist()
        assert batched_nms(boxes, scores, idxs, thr).tolist() == tv.ops.batched_nms(boxes, scores, idxs, thr).tolist()
