"""Mask targets and pasting masks back into the image (minimaskrcnn/masks.py)."""
import pytest
import torch

from minimaskrcnn.masks import expand_boxes, mask_targets, paste_masks_in_image


def test_mask_targets_crop_the_matched_mask():
    masks = torch.zeros(2, 32, 32, dtype=torch.uint8)
    masks[0, 8:24, 8:24] = 1  # instance 0: a square
    masks[1, :, :16] = 1  # instance 1: the left half
    rois = torch.tensor([[10.0, 10.0, 20.0, 20.0], [10.0, 10.0, 20.0, 20.0], [0.0, 0.0, 8.0, 30.0]])
    targets = mask_targets(masks, rois, torch.tensor([0, 1, 1]), 6)
    assert targets.shape == (3, 6, 6) and targets.dtype == torch.float32
    ones = torch.ones(6, 6)
    torch.testing.assert_close(targets[0], ones)  # RoI strictly inside the square
    torch.testing.assert_close(targets[1][:, :2], ones[:, :2])  # half of it on instance 1 ...
    torch.testing.assert_close(targets[1][:, -2:], 0 * ones[:, :2])  # ... and half off it
    torch.testing.assert_close(targets[2], ones)  # RoI inside the left half


def test_expand_boxes_about_the_centre():
    boxes = torch.tensor([[10.0, 20.0, 38.0, 48.0]])
    assert expand_boxes(boxes, 30 / 28)[0].tolist() == pytest.approx([9.0, 19.0, 39.0, 49.0])


def test_pasted_full_mask_covers_its_box():
    boxes = torch.tensor([[10.0, 20.0, 40.0, 50.0], [0.0, 0.0, 15.0, 9.0]])
    masks = torch.ones(2, 1, 28, 28)
    pasted = paste_masks_in_image(masks, boxes, (64, 80))
    assert pasted.shape == (2, 1, 64, 80)
    for box, mask in zip(boxes, pasted[:, 0]):
        ys, xs = torch.where(mask > 0.5)
        x1, y1, x2, y2 = box.tolist()
        # the thresholded mask spans the box to within a pixel
        assert abs(xs.min().item() - x1) <= 1 and abs(xs.max().item() - x2) <= 1
        assert abs(ys.min().item() - y1) <= 1 and abs(ys.max().item() - y2) <= 1
    assert pasted[0, 0, :15].sum() == 0 and pasted[0, 0, :, 45:].sum() == 0  # nothing outside


def test_pasted_mask_keeps_left_right_and_clips_at_the_border():
    masks = torch.zeros(1, 1, 28, 28)
    masks[..., :14] = 1  # left half of the box
    pasted = paste_masks_in_image(masks, torch.tensor([[-10.0, 5.0, 30.0, 25.0]]), (32, 32))[0, 0]
    assert pasted[15, 0] > 0.9 and pasted[15, 20] < 0.1  # box centre x = 10: left of it on, right off
    assert pasted.shape == (32, 32)


def test_paste_no_detections():
    assert paste_masks_in_image(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (20, 30)).shape == (0, 1, 20, 30)


@pytest.mark.reference
def test_paste_matches_torchvision():
    roi_heads = pytest.importorskip("torchvision.models.detection.roi_heads")
    torch.manual_seed(0)
    masks = torch.rand(6, 1, 28, 28)
    xy = torch.rand(6, 2) * 90 - 10
    boxes = torch.cat((xy, xy + torch.rand(6, 2) * 60 + 0.5), dim=1)
    expected = roi_heads.paste_masks_in_image(masks, boxes, (100, 120))
    assert torch.equal(paste_masks_in_image(masks, boxes, (100, 120)), expected)


@pytest.mark.reference
def test_mask_targets_match_torchvision():
    roi_heads = pytest.importorskip("torchvision.models.detection.roi_heads")
    torch.manual_seed(0)
    gt = (torch.rand(3, 40, 50) > 0.5).to(torch.uint8)
    xy = torch.rand(8, 2) * 30
    rois = torch.cat((xy, xy + torch.rand(8, 2) * 20 + 1), dim=1)
    idx = torch.randint(0, 3, (8,))
    expected = roi_heads.project_masks_on_boxes(gt, rois, idx, 28)
    torch.testing.assert_close(mask_targets(gt, rois, idx, 28), expected)


def test_mask_targets_in_float32_under_autocast():
    masks = torch.zeros(2, 32, 32, dtype=torch.uint8)
    masks[0, 4:20, 6:18] = 1
    masks[1, 10:30, 2:12] = 1
    rois = torch.tensor([[4.0, 2.0, 20.0, 22.0], [0.0, 8.0, 14.0, 31.0], [6.0, 4.0, 18.0, 20.0]])
    matched = torch.tensor([0, 1, 0])
    plain = mask_targets(masks, rois, matched, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = mask_targets(masks, rois, matched, 28)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain)
