"""Tests for minimaskrcnn.roi_ops: hand-computed values, borders, gradients, level assignment, torchvision parity."""
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from minimaskrcnn.roi_ops import (MultiScaleRoIPooler, assign_levels, roi_align, roi_align_reference, roi_pool,
                                  roi_pool_reference)


def arange_map():
    """A 1 x 1 x 5 x 5 map with F[h, w] = 5 h + w: linear, so bilinear sampling at (y, x) gives exactly 5 y + x."""
    return torch.arange(25, dtype=torch.float64).view(1, 1, 5, 5)


def box(*xyxy, batch=0.0):
    return torch.tensor([[batch, *xyxy]], dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ RoIAlign values
def test_roi_align_hand_values_legacy():
    # box 0..4, one bin of size 4, 2 x 2 samples at 1 and 3 on each axis -> mean (2, 2) -> 5 * 2 + 2
    assert roi_align(arange_map(), box(0, 0, 4, 4), 1, sampling_ratio=2).item() == pytest.approx(12.0)
    # 2 x 2 output: bins of size 2, one sample each at their centres 1 and 3 -> 5 y + x
    out = roi_align(arange_map(), box(0, 0, 4, 4), 2, sampling_ratio=1)[0, 0]
    assert torch.allclose(out, torch.tensor([[6.0, 8.0], [16.0, 18.0]], dtype=torch.float64))


def test_roi_align_hand_values_aligned():
    # aligned shifts the box by -0.5: samples at 0.5 and 2.5 -> mean 1.5 -> 5 * 1.5 + 1.5
    assert roi_align(arange_map(), box(0, 0, 4, 4), 1, sampling_ratio=2, aligned=True).item() == pytest.approx(9.0)


def test_roi_align_box_partly_outside():
    # samples at 4 (the last row/column, read as is) and 6 (> H = 5: contributes 0); only (4, 4) counts, / 4 samples
    assert roi_align(arange_map(), box(3, 3, 7, 7), 1, sampling_ratio=2).item() == pytest.approx(24.0 / 4)
    # aligned: samples at -0.5 (inside [-1, H], clamped to row 0) and 0.5 -> mean 0.25 on each axis -> 5 * 0.25 + 0.25
    assert roi_align(arange_map(), box(-0.5, -0.5, 1.5, 1.5), 1, sampling_ratio=2, aligned=True).item() == pytest.approx(1.5)
    # a sample below -1 contributes 0: samples at -1.5 (dropped) and 0.5 on each axis -> only (0.5, 0.5) = 3, / 4
    assert roi_align(arange_map(), box(-2, -2, 2, 2), 1, sampling_ratio=2, aligned=True).item() == pytest.approx(0.75)


def test_roi_align_box_fully_outside_is_zero():
    out = roi_align(arange_map(), box(10, 10, 12, 12), 3, sampling_ratio=2)
    assert torch.count_nonzero(out) == 0


def test_roi_align_zero_size_boxes():
    # legacy: the RoI is widened to 1 x 1 -> samples at 1.25, 1.75 -> mean 1.5 -> 9
    assert roi_align(arange_map(), box(1, 1, 1, 1), 1, sampling_ratio=2).item() == pytest.approx(9.0)
    # aligned, fixed sampling: all samples at the shifted corner 0.5 -> 3
    assert roi_align(arange_map(), box(1, 1, 1, 1), 1, sampling_ratio=2, aligned=True).item() == pytest.approx(3.0)
    # aligned, adaptive sampling: ceil(0) = 0 samples -> 0
    assert roi_align(arange_map(), box(1, 1, 1, 1), 1, sampling_ratio=-1, aligned=True).item() == 0.0


def test_roi_align_adaptive_sampling_is_per_roi():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 12, 12, dtype=torch.float64) ** 2  # non-linear, so the number of samples matters
    small, large = box(0, 0, 3, 3), box(0, 0, 10, 10)  # 1 x 1 output: ceil(3) = 3, ceil(10) = 10 samples per axis
    both = torch.cat((small, large))
    adaptive = roi_align(x, both, 1, sampling_ratio=-1)
    assert torch.allclose(adaptive[0], roi_align(x, small, 1, sampling_ratio=3)[0])
    assert torch.allclose(adaptive[1], roi_align(x, large, 1, sampling_ratio=10)[0])
    assert not torch.allclose(adaptive[1], roi_align(x, large, 1, sampling_ratio=3)[0])


def test_roi_align_multiple_images_and_box_formats():
    x = torch.cat((arange_map(), arange_map() + 100))  # image 1 = image 0 + 100
    rois = torch.tensor([[1, 0, 0, 4, 4], [0, 0, 0, 4, 4], [1, 1, 1, 3, 2]], dtype=torch.float64)
    out = roi_align(x, rois, (2, 3), sampling_ratio=2)
    assert out.shape == (3, 1, 2, 3)
    assert torch.allclose(out[0], out[1] + 100)
    as_list = roi_align(x, [rois[1:2, 1:], torch.cat((rois[0:1, 1:], rois[2:3, 1:]))], (2, 3), sampling_ratio=2)
    assert torch.allclose(as_list, out[[1, 0, 2]])


def test_roi_align_spatial_scale():
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    a = roi_align(x, box(4, 4, 20, 24), 3, spatial_scale=0.25, sampling_ratio=2)
    b = roi_align(x, box(1, 1, 5, 6), 3, spatial_scale=1.0, sampling_ratio=2)
    assert torch.allclose(a, b)


def test_roi_align_no_rois():
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = roi_align(x, torch.zeros(0, 5), 7)
    assert out.shape == (0, 3, 7, 7)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_roi_align_chunks_give_the_same_values_and_gradients(monkeypatch, sampling_ratio):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 12, 15, dtype=torch.float64, requires_grad=True)
    xy = torch.rand(40, 2, dtype=torch.float64) * 10
    wh = torch.rand(40, 2, dtype=torch.float64) * torch.linspace(0.5, 14, 40, dtype=torch.float64)[:, None]
    rois = torch.cat((torch.randint(0, 3, (40, 1)).double(), xy - 1, xy + wh), dim=1)
    results = []
    for budget in (2**30, 1000):  # one chunk, then many (with adaptive sampling: RoIs regrouped by grid)
        monkeypatch.setattr("minimaskrcnn.roi_ops._CHUNK_TAPS", budget)
        x.grad = None
        out = roi_align(x, rois, (3, 4), 0.9, sampling_ratio, True)
        out.backward(torch.arange(out.numel(), dtype=torch.float64).view_as(out))
        results.append((out.detach(), x.grad.clone()))
    assert torch.allclose(results[0][0], results[1][0]) and torch.allclose(results[0][1], results[1][1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_roi_align_half_precision_is_computed_in_float32(dtype):
    torch.manual_seed(0)
    x = torch.randn(1, 8, 10, 10)
    rois = torch.tensor([[0, 1.0, 1.5, 7.0, 8.0], [0, 0.0, 0.0, 3.0, 2.0]])
    out = roi_align(x.to(dtype), rois, 5, 1.0, 2)
    assert out.dtype == dtype
    assert torch.allclose(out.float(), roi_align(x.to(dtype).float(), rois, 5, 1.0, 2), atol=1e-2)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_roi_align_gradcheck(aligned, sampling_ratio):
    torch.manual_seed(0)
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 0.7, 4.2, 5.1], [1, -1.5, 2.0, 3.0, 9.0], [1, 2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, (3, 2), 1.0, sampling_ratio, aligned), (x,))


def test_roi_align_gradient_goes_to_the_four_neighbours():
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    # one sample at (1.25, 2.5): weights 0.75 * 0.5 on rows 1, 2 x columns 2, 3
    roi_align(x, box(2.0, 0.75, 3.0, 1.75), 1, sampling_ratio=1).sum().backward()
    expected = torch.zeros(5, 5, dtype=torch.float64)
    expected[1, 2] = expected[1, 3] = 0.75 * 0.5
    expected[2, 2] = expected[2, 3] = 0.25 * 0.5
    assert torch.allclose(x.grad[0, 0], expected)


# ------------------------------------------------------------------------------------------------ RoIPool values
def test_roi_pool_hand_values():
    # box 0..4 -> 5 pixels, bins of 2.5: [0, 3) and [2, 5) on each axis; max = bottom-right corner of each bin
    out = roi_pool(arange_map(), box(0, 0, 4, 4), 2)[0, 0]
    assert torch.equal(out, torch.tensor([[12.0, 14.0], [22.0, 24.0]], dtype=torch.float64))


def test_roi_pool_rounds_halves_away_from_zero():
    # 0.5 -> 1 and 2.5 -> 3 (C round, not banker's): rows/cols 1..3 -> max F[3, 3] = 18
    assert roi_pool(arange_map(), box(0.5, 0.5, 2.5, 2.5), 1).item() == 18.0


def test_roi_pool_outside_and_empty_bins_are_zero():
    assert torch.count_nonzero(roi_pool(arange_map() + 1, box(10, 10, 12, 12), 2)) == 0
    # partly outside: bins past the map's edge are empty -> 0, the others take their max
    out = roi_pool(arange_map() + 1, box(3, 3, 8, 8), 2)[0, 0]  # 6 pixels 3..8, bins [3, 6) (clipped to 5) and [6, 9)
    assert torch.equal(out, torch.tensor([[25.0, 0.0], [0.0, 0.0]], dtype=torch.float64))


def test_roi_pool_multiple_images_and_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 0.7, 4.2, 5.1], [1, -1.5, 2.0, 3.0, 9.0], [1, 2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, (3, 2)), (x,))
    as_list = roi_pool(x, [rois[:1, 1:], rois[1:, 1:]], (3, 2))
    assert torch.equal(as_list, roi_pool(x, rois, (3, 2)))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="input"):
        roi_align(torch.zeros(3, 5, 5), torch.zeros(1, 5), 2)
    with pytest.raises(ValueError, match=r"boxes\[1\]"):
        roi_pool(torch.zeros(1, 1, 5, 5), [torch.zeros(1, 4), torch.zeros(1, 5)], 2)
    with pytest.raises(ValueError, match="K, 5"):
        roi_align(torch.zeros(1, 1, 5, 5), torch.zeros(1, 4), 2)


# ------------------------------------------------------------------------------------------ readable references
def rois_past_the_border(count, generator, image_count=2, low=-3.0, span=14.0, max_size=12.0):
    """Tensor[count, 5] float64: boxes spread over and past a ~10-pixel map, some with zero width or height."""
    xy = torch.rand(count, 2, generator=generator, dtype=torch.float64) * span + low
    wh = torch.rand(count, 2, generator=generator, dtype=torch.float64) * max_size
    wh[:3, 0] = 0  # zero width
    wh[3:5] = 0  # a point
    index = torch.randint(0, image_count, (count, 1), generator=generator).double()
    return torch.cat((index, xy, xy + wh), dim=1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
def test_roi_align_reference_equals_fast_op(aligned, sampling_ratio):
    generator = torch.Generator().manual_seed(sampling_ratio + 10 * aligned)
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64, generator=generator)
    rois = rois_past_the_border(12, generator)
    assert bool(((rois[:, 1:3] < 0) | (rois[:, 3:] > 9)).any())  # some boxes go past the border
    for scale, size in ((1.0, (3, 2)), (0.5, 4)):
        fast = roi_align(x, rois, size, scale, sampling_ratio, aligned)
        slow = roi_align_reference(x, rois, size, scale, sampling_ratio, aligned)
        assert torch.allclose(fast, slow, rtol=0, atol=1e-12)


def test_roi_align_reference_hand_values_and_gradient():
    assert roi_align_reference(arange_map(), box(0, 0, 4, 4), 1, sampling_ratio=2).item() == pytest.approx(12.0)
    assert roi_align_reference(arange_map(), box(3, 3, 7, 7), 1, sampling_ratio=2).item() == pytest.approx(6.0)
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 0.7, 4.2, 5.1], [1, -1.5, 2.0, 3.0, 9.0]], dtype=torch.float64)
    fast_grad, = torch.autograd.grad(roi_align(x, rois, (3, 2), 1.0, -1, True).square().sum(), x)
    slow_grad, = torch.autograd.grad(roi_align_reference(x, rois, (3, 2), 1.0, -1, True).square().sum(), x)
    assert torch.allclose(fast_grad, slow_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 0.5, 1 / 3])
def test_roi_pool_reference_equals_fast_op(scale):
    generator = torch.Generator().manual_seed(int(scale * 100))
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64, generator=generator, requires_grad=True)
    rois = rois_past_the_border(12, generator)
    for size in ((3, 2), 9):  # 9 bins over a few pixels: bins overlap, share rows, or are empty
        fast, slow = roi_pool(x, rois, size, scale), roi_pool_reference(x, rois, size, scale)
        assert torch.equal(fast, slow)
        weights = torch.randn(fast.shape, generator=generator, dtype=torch.float64)
        fast_grad, = torch.autograd.grad((fast * weights).sum(), x)
        slow_grad, = torch.autograd.grad((slow * weights).sum(), x)
        assert torch.allclose(fast_grad, slow_grad, rtol=0, atol=1e-12)


def test_references_refuse_bad_input():
    with pytest.raises(ValueError, match="roi_align_reference: input"):
        roi_align_reference(torch.zeros(3, 5, 5), torch.zeros(1, 5), 2)
    with pytest.raises(ValueError, match=r"boxes\[1\]"):
        roi_pool_reference(torch.zeros(1, 1, 5, 5), [torch.zeros(1, 4), torch.zeros(1, 5)], 2)


# ------------------------------------------------------------------------------------------------ levels
def test_assign_levels():
    sides = torch.tensor([224.0, 112.0, 448.0, 111.9, 8.0, 5000.0])
    boxes = torch.stack((torch.zeros(6), torch.zeros(6), sides, sides), dim=1)
    # levels 4, 3, 5, 2 (just under 112), 2 (clamped up), 5 (clamped down); counted from k_min = 2
    assert assign_levels(boxes, 2, 5).tolist() == [2, 1, 3, 0, 0, 3]
    assert assign_levels(boxes, 3, 4).tolist() == [1, 0, 1, 0, 0, 1]


def test_multiscale_pools_each_roi_from_its_level():
    torch.manual_seed(0)
    feats = {f"p{k}": torch.randn(2, 4, 256 // 2**k, 192 // 2**k) for k in (2, 3, 4, 5)}
    boxes = [torch.tensor([[0.0, 0, 20, 20], [0, 0, 240, 230]]), torch.tensor([[10.0, 20, 130, 140]])]
    pooler = MultiScaleRoIPooler(list(feats), 7, 2)
    out = pooler(feats, boxes, [(256, 192), (200, 180)])
    # 20 px -> level 2 (scale 1/4); sqrt(240 * 230) = 235 -> level 4 (1/16); 120 px -> level 3 (1/8)
    assert torch.allclose(out[0], roi_align(feats["p2"], [boxes[0][:1]], 7, 1 / 4, 2)[0])
    assert torch.allclose(out[1], roi_align(feats["p4"], [boxes[0][1:]], 7, 1 / 16, 2)[0])
    assert torch.allclose(out[2], roi_align(feats["p3"], [torch.zeros(0, 4), boxes[1]], 7, 1 / 8, 2)[0])
    pooled = MultiScaleRoIPooler(list(feats), 7, 2, pool="pool")(feats, boxes, [(256, 192), (200, 180)])
    assert torch.equal(pooled[0], roi_pool(feats["p2"], [boxes[0][:1]], 7, 1 / 4)[0])
    with pytest.raises(ValueError, match="p6"):
        MultiScaleRoIPooler(["p6"], 7, 2)(feats, boxes, [(256, 192)])


def multiscale_case(generator):
    """FPN-like maps p2..p5 of 2 images (float64) and boxes of every size (some past the border), with sizes."""
    feats = {f"p{k}": torch.randn(2, 3, 256 // 2**k, 192 // 2**k, generator=generator, dtype=torch.float64)
             for k in (2, 3, 4, 5)}
    boxes = [rois_past_the_border(30, generator, 1, -20.0, 200.0, 600.0)[:, 1:] for _ in range(2)]
    return feats, boxes, [(256, 192), (200, 180)]


@pytest.mark.parametrize("pool", ["align", "pool"])
def test_multiscale_equals_pooling_each_level_on_its_rois(pool):
    """One pass over all RoIs, each reading its own level, = each level's RoIs pooled on their own (values and
    gradients); every level gets some RoIs."""
    generator = torch.Generator().manual_seed(3)
    feats, boxes, sizes = multiscale_case(generator)
    feats = {k: v.requires_grad_() for k, v in feats.items()}
    out = MultiScaleRoIPooler(list(feats), 5, 2, True, pool=pool)(feats, boxes, sizes)
    rois = torch.cat([torch.cat((torch.full((len(b), 1), float(i), dtype=b.dtype), b), 1) for i, b in enumerate(boxes)])
    levels = assign_levels(rois[:, 1:], 2, 5)
    assert sorted(set(levels.tolist())) == [0, 1, 2, 3]
    weights = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    grads = torch.autograd.grad((out * weights).sum(), list(feats.values()))
    expected = torch.zeros_like(out)
    for level, name in enumerate(feats):
        here = levels == level
        if pool == "pool":
            expected[here] = roi_pool(feats[name], rois[here], 5, 1 / 2 ** (level + 2))
        else:
            expected[here] = roi_align(feats[name], rois[here], 5, 1 / 2 ** (level + 2), 2, True)
    expected_grads = torch.autograd.grad((expected * weights).sum(), list(feats.values()))
    assert torch.equal(out, expected)
    for g, e in zip(grads, expected_grads):
        assert torch.allclose(g, e, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_multiscale_pools_half_maps_in_float32_outside_autocast(dtype):
    """Under autocast the maps arrive in half precision: pooled from float32 copies (autocast off), returned in the
    maps' dtype; float64 maps stay float64."""
    feats, boxes, sizes = multiscale_case(torch.Generator().manual_seed(4))
    pooler = MultiScaleRoIPooler(list(feats), 7, 2)
    half = {k: v.to(dtype) for k, v in feats.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pooler(half, [b.to(dtype) for b in boxes], sizes)
    assert out.dtype == dtype
    expected = pooler({k: v.float() for k, v in half.items()}, [b.to(dtype).float() for b in boxes], sizes)
    assert torch.equal(out, expected.to(dtype))
    assert pooler(feats, boxes, sizes).dtype == torch.float64


class HostSyncCounter:
    """Counts the operations that on a GPU make the host wait for the device: results whose size or value the host
    must read -- nonzero, boolean-mask indexing, masked_select, equal, unique (seen as aten operations) and
    item / tolist / bool() / int() / float() (seen as tensor methods)."""

    ATEN = {"nonzero", "masked_select", "equal", "is_nonzero", "_unique2", "unique_dim", "unique_consecutive"}
    METHODS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__"}

    def __init__(self):
        self.counts = {}
        counts = self.counts

        class Aten(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                if name in HostSyncCounter.ATEN or (name in ("index", "index_put", "index_put_") and any(
                        isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)):
                    counts[name] = counts.get(name, 0) + 1
                return func(*args, **(kwargs or {}))

        class Methods(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                name = getattr(func, "__name__", "")
                if name in HostSyncCounter.METHODS:
                    counts[name] = counts.get(name, 0) + 1
                return func(*args, **(kwargs or {}))

        self.modes = (Methods(), Aten())

    def __enter__(self):
        for mode in self.modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self.modes):
            mode.__exit__(*exc)


def test_multiscale_align_reads_nothing_back_from_the_device():
    """RoIAlign with a fixed sampling ratio (the model's): forward and backward over four levels without a single
    host synchronisation; RoIPool (the ablation) reads its longest bin once."""
    feats, boxes, sizes = multiscale_case(torch.Generator().manual_seed(5))
    feats = {k: v.requires_grad_() for k, v in feats.items()}
    for pool, expected in (("align", {}), ("pool", {"tolist": 1})):
        with HostSyncCounter() as counter:
            MultiScaleRoIPooler(list(feats), 7, 2, pool=pool)(feats, boxes, sizes).sum().backward()
        assert counter.counts == expected, pool


# ------------------------------------------------------------------------------------------------ torchvision
def random_rois(generator, num, batch, height, width, scale):
    xy = torch.rand(num, 2, generator=generator, dtype=torch.float64) * torch.tensor([width, height]) / scale * 1.2 - 3
    wh = torch.rand(num, 2, generator=generator, dtype=torch.float64) * torch.tensor([width, height]) / scale * 0.8
    index = torch.randint(0, batch, (num, 1), generator=generator).to(torch.float64)
    return torch.cat((index, xy, xy + wh), dim=1)


@pytest.mark.reference
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_align_equals_torchvision(aligned, sampling_ratio, dtype):
    ops = pytest.importorskip("torchvision.ops")
    g = torch.Generator().manual_seed(sampling_ratio + 10 * aligned)
    x = torch.randn(3, 5, 13, 17, generator=g, dtype=dtype, requires_grad=True)
    rois = random_rois(g, 40, 3, 13, 17, 0.5).to(dtype)
    rois[0, 3:] = rois[0, 1:3]  # a zero-size box
    grad = torch.randn(40, 5, 7, 6, generator=g, dtype=dtype)
    ours = roi_align(x, rois, (7, 6), 0.5, sampling_ratio, aligned)
    (ours_grad,) = torch.autograd.grad(ours, x, grad)
    ref = ops.roi_align(x, rois, (7, 6), 0.5, sampling_ratio, aligned)
    (ref_grad,) = torch.autograd.grad(ref, x, grad)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)
    assert torch.allclose(ours_grad, ref_grad, atol=1e-5, rtol=0)


@pytest.mark.reference
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_roi_pool_equals_torchvision(scale):
    ops = pytest.importorskip("torchvision.ops")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 11, 9, generator=g, dtype=torch.float64, requires_grad=True)
    rois = random_rois(g, 30, 2, 11, 9, scale)
    grad = torch.randn(30, 4, 5, 3, generator=g, dtype=torch.float64)
    ours = roi_pool(x, rois, (5, 3), scale)
    (ours_grad,) = torch.autograd.grad(ours, x, grad)
    ref = ops.roi_pool(x, rois, (5, 3), scale)
    (ref_grad,) = torch.autograd.grad(ref, x, grad)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)
    assert torch.allclose(ours_grad, ref_grad, atol=1e-5, rtol=0)


@pytest.mark.reference
def test_multiscale_equals_torchvision():
    ops = pytest.importorskip("torchvision.ops")
    g = torch.Generator().manual_seed(2)
    feats = {f"p{k}": torch.randn(2, 4, 256 // 2**k, 192 // 2**k, generator=g) for k in (2, 3, 4, 5)}
    boxes = [random_rois(g, 25, 1, 256, 192, 1.0)[:, 1:].float(), random_rois(g, 15, 1, 200, 180, 1.0)[:, 1:].float()]
    sizes = [(256, 192), (200, 180)]
    ours = MultiScaleRoIPooler(list(feats), 7, 2)(feats, boxes, sizes)
    ref = ops.MultiScaleRoIAlign(list(feats), 7, 2)(feats, boxes, sizes)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)
