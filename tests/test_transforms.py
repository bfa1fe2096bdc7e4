"""Tests for minimaskrcnn.transforms: sizes, boxes and masks staying aligned, padding, and torchvision parity."""
import pytest
import torch

from minimaskrcnn.transforms import (Compose, RandomHorizontalFlip, Resize, batch_images, hflip, normalize, preprocess,
                                     resize_boxes, resize_geometry, resize_to)


def _target_from_masks(masks):
    """Target whose boxes are the tight boxes (x1, y1, x2 + 1, y2 + 1) of uint8 masks[N, H, W]."""
    boxes = []
    for m in masks:
        rows, cols = torch.nonzero(m, as_tuple=True)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.arange(1, len(masks) + 1),
            "masks": masks}


def _rect_masks(height, width, rects):
    masks = torch.zeros((len(rects), height, width), dtype=torch.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, rects):
        m[y1:y2, x1:x2] = 1
    return masks


def test_normalize():
    image = torch.rand(3, 5, 7)
    out = normalize(image, (0.5, 0.25, 0.0), (0.5, 2.0, 1.0))
    assert torch.allclose(out[0], (image[0] - 0.5) / 0.5) and torch.allclose(out[1], (image[1] - 0.25) / 2)
    assert torch.equal(out[2], image[2])
    with pytest.raises(TypeError, match="floating point"):
        normalize(torch.zeros(3, 4, 4, dtype=torch.uint8), (0, 0, 0), (1, 1, 1))


@pytest.mark.parametrize("size, min_size, max_size, expected", [
    ((100, 200), 50, 1000, (50, 100)),    # short side -> min_size
    ((100, 400), 50, 120, (30, 120)),     # long side capped at max_size
    ((128, 128), 800, 1333, (800, 800)),
    ((480, 640), 800, 1333, (800, 1066)),  # floor(640 * 800 / 480)
])
def test_resize_to_sizes(size, min_size, max_size, expected):
    image, _ = resize_to(torch.rand(3, *size), None, min_size, max_size)
    assert tuple(image.shape[-2:]) == expected


@pytest.mark.parametrize("size", [(100, 200), (480, 640), (20, 2000), (2000, 20), (7, 1333), (333, 333), (1, 96)])
@pytest.mark.parametrize("min_size, max_size", [(64, 96), (800, 1333), (192, 320)])
def test_resize_geometry_predicts_resize_to(size, min_size, max_size):
    """resize_geometry gives resize_to's output size, or refuses (naming the sizes) when a side would vanish."""
    image = torch.rand(3, *size)
    try:
        scale, new = resize_geometry(size, min_size, max_size)
    except ValueError as error:
        assert f"a {size[0]} x {size[1]} image would be resized to" in str(error) and "raise max_size" in str(error)
        with pytest.raises(ValueError, match="crop or tile it"):
            resize_to(image, None, min_size, max_size)
        assert min(size) * max_size // max(size) < 1
        return
    assert tuple(resize_to(image, None, min_size, max_size)[0].shape[-2:]) == new
    assert scale == min(min_size / min(size), max_size / max(size))


def test_resize_keeps_boxes_on_masks():
    masks = _rect_masks(60, 80, [(10, 5, 30, 25), (40, 30, 80, 60), (0, 0, 4, 6)])
    target = _target_from_masks(masks)
    image, out = resize_to(torch.rand(3, 60, 80), target, 150, 1000)
    scale = 150 / 60
    assert image.shape == (3, 150, 200) and out["masks"].shape == (3, 150, 200) and out["masks"].dtype == torch.uint8
    assert torch.allclose(out["boxes"], target["boxes"] * scale)
    # the resized masks' tight boxes agree with the resized boxes to within one source pixel
    assert torch.allclose(_target_from_masks(out["masks"])["boxes"], out["boxes"], atol=scale)
    assert target["masks"].shape == (3, 60, 80)  # the input target is left alone
    assert torch.equal(out["labels"], target["labels"])


def test_resize_boxes_per_axis():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    assert resize_boxes(boxes, (100, 50), (200, 25)).tolist() == [[5.0, 40.0, 15.0, 80.0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_resize_boxes_equals_float32_tensor_ratios(dtype):
    """The host-side ratios give bit for bit what multiplying by torchvision's float32 ratio tensors gives."""
    generator = torch.Generator().manual_seed(0)
    boxes = (torch.rand(200, 4, generator=generator) * 1333).to(dtype)
    for from_size, to_size in (((480, 640), (800, 1066)), ((333, 517), (799, 1333)), ((1000, 7), (13, 3))):
        ratio_h, ratio_w = (torch.tensor(new, dtype=torch.float32) / torch.tensor(old, dtype=torch.float32)
                            for new, old in zip(to_size, from_size))
        x1, y1, x2, y2 = boxes.unbind(-1)
        expected = torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=-1)
        assert torch.equal(resize_boxes(boxes, from_size, to_size), expected)


def test_hflip_keeps_boxes_on_masks_and_is_an_involution():
    masks = _rect_masks(20, 30, [(2, 3, 9, 10), (25, 0, 30, 20)])
    target = _target_from_masks(masks)
    image = torch.rand(3, 20, 30)
    flipped_image, flipped = hflip(image, target)
    assert torch.equal(flipped_image[..., 0], image[..., -1])
    assert flipped["boxes"].tolist() == [[21, 3, 28, 10], [0, 0, 5, 20]]
    assert torch.equal(_target_from_masks(flipped["masks"])["boxes"], flipped["boxes"])
    back_image, back = hflip(flipped_image, flipped)
    assert torch.equal(back_image, image) and torch.equal(back["boxes"], target["boxes"])
    assert torch.equal(back["masks"], target["masks"])


def test_random_flip_probability_and_seed():
    image, target = torch.rand(3, 4, 6), _target_from_masks(_rect_masks(4, 6, [(0, 0, 2, 2)]))
    assert torch.equal(RandomHorizontalFlip(0.0)(image, target)[0], image)
    assert torch.equal(RandomHorizontalFlip(1.0)(image, target)[0], image.flip(-1))
    torch.manual_seed(0)
    first = [RandomHorizontalFlip(0.5)(image, target)[1]["boxes"][0, 0].item() for _ in range(20)]
    torch.manual_seed(0)
    second = [RandomHorizontalFlip(0.5)(image, target)[1]["boxes"][0, 0].item() for _ in range(20)]
    assert first == second and set(first) == {0.0, 4.0}
    with pytest.raises(ValueError, match="p must be"):
        RandomHorizontalFlip(1.5)


def test_compose_resize_then_flip():
    masks = _rect_masks(40, 50, [(5, 5, 20, 15)])
    target = _target_from_masks(masks)
    image, out = Compose([Resize(80, 200), RandomHorizontalFlip(1.0)])(torch.rand(3, 40, 50), target)
    assert image.shape == (3, 80, 100)
    assert out["boxes"].tolist() == [[60.0, 10.0, 90.0, 30.0]]
    assert torch.equal(_target_from_masks(out["masks"])["boxes"], out["boxes"])


def test_batch_images_pads_bottom_right_to_multiple():
    images = [torch.rand(3, 50, 70), torch.rand(3, 64, 33)]
    batch, sizes = batch_images(images, size_divisible=32)
    assert batch.shape == (2, 3, 64, 96) and sizes == [(50, 70), (64, 33)]
    assert torch.equal(batch[0, :, :50, :70], images[0]) and torch.equal(batch[1, :, :64, :33], images[1])
    assert batch[0, :, 50:].abs().sum() == 0 and batch[0, :, :, 70:].abs().sum() == 0
    assert batch[1, :, :, 33:].abs().sum() == 0
    assert batch_images([torch.rand(3, 5, 5)], size_divisible=1)[0].shape == (1, 3, 5, 5)
    with pytest.raises(ValueError, match="empty"):
        batch_images([])


def test_preprocess_normalises_resizes_and_batches_in_that_order():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    images = [torch.rand(3, 40, 60), torch.rand(3, 50, 30)]
    masks = _rect_masks(40, 60, [(4, 6, 20, 30)])
    targets = [_target_from_masks(masks), {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 50, 30).byte()}]
    kept = [t["boxes"].clone() for t in targets]
    batch, sizes, resized = preprocess(images, targets, mean, std, 80, 100, 32)
    assert sizes == [(66, 100), (100, 60)] and batch.shape == (2, 3, 128, 128)  # max_size caps both long sides
    first = resize_to(normalize(images[0], mean, std), targets[0], 80, 100)
    assert torch.equal(batch[0, :, :66, :100], first[0]) and torch.equal(resized[0]["boxes"], first[1]["boxes"])
    assert all(torch.equal(t["boxes"], k) for t, k in zip(targets, kept))  # the inputs are left as they were
    assert preprocess(images, None, mean, std, 80, 100, 32)[2] is None


@pytest.mark.reference
def test_matches_torchvision_generalized_rcnn_transform():
    tv_transform = pytest.importorskip("torchvision.models.detection.transform")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    reference = tv_transform.GeneralizedRCNNTransform(800, 1333, mean, std).eval()
    torch.manual_seed(0)
    for height, width in [(128, 128), (97, 203), (480, 640), (1001, 59)]:
        images = [torch.rand(3, height, width), torch.rand(3, width // 2 + 7, height)]
        targets = []
        for image in images:
            h, w = image.shape[-2:]
            xy = torch.rand(4, 4) * torch.tensor([w, h, w, h])
            targets.append({"boxes": torch.cat([xy[:, :2].minimum(xy[:, 2:]), xy[:, :2].maximum(xy[:, 2:])], 1),
                            "masks": (torch.rand(4, h, w) > 0.5).byte()})
        image_list, tv_targets = reference(images, [dict(t) for t in targets])
        batch, sizes, ours = preprocess(images, targets, mean, std, 800, 1333, 32)
        assert torch.equal(batch, image_list.tensors)
        assert sizes == [tuple(s) for s in image_list.image_sizes]
        for t, tv in zip(ours, tv_targets):
            assert torch.equal(t["boxes"], tv["boxes"]) and torch.equal(t["masks"], tv["masks"])
        boxes = torch.rand(5, 4) * 100
        assert torch.equal(resize_boxes(boxes, (height, width), sizes[0]),
                           tv_transform.resize_boxes(boxes, (height, width), sizes[0]))
