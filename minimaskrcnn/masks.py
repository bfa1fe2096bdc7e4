"""Masks: ground-truth masks cropped into mask-head targets, and predicted masks pasted back into the image.

Built in notebooks/08_mask_head.ipynb.

Shape glossary
    G      ground-truth instances of one image
    P      positive RoIs of one image (training)
    D      detections of one image (inference)
    M      mask resolution of the head (28 in the reference)
    H, W   image height and width
Boxes are absolute (x1, y1, x2, y2) floats.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from minimaskrcnn.roi_ops import roi_align


def mask_targets(gt_masks: Tensor, rois: Tensor, matched_idxs: Tensor, resolution: int) -> Tensor:
    """The training target of each positive RoI: its ground-truth mask cropped to the RoI, resized to M x M.

    gt_masks: Tensor[G, H, W] (0/1, any dtype), rois: Tensor[P, 4] (x1, y1, x2, y2) in the same image,
    matched_idxs: Tensor[P] int64 (which ground-truth mask each RoI learns) -> Tensor[P, M, M] float in 0..1.

    As the reference: RoIAlign of the mask (one channel per instance, the RoI's batch index = its ground truth),
    spatial scale 1, adaptive sampling ratio, aligned False. Values between 0 and 1 appear on the mask's border.
    """
    rois_with_index = torch.cat((matched_idxs.to(rois)[:, None], rois), dim=1)  # (P, 4) -> (P, 5)
    masks = gt_masks[:, None].to(rois)  # (G, H, W) -> (G, 1, H, W)
    with torch.autocast(device_type=rois.device.type, enabled=False):  # targets in full precision under AMP
        return roi_align(masks, rois_with_index, (resolution, resolution), 1.0)[:, 0]  # (P, 1, M, M) -> (P, M, M)


def expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Scale boxes: Tensor[D, 4] about their centres by `scale` -> Tensor[D, 4]."""
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx = (boxes[:, 2] + boxes[:, 0]) * 0.5
    cy = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=1)


def paste_mask(mask: Tensor, box: list[int], image_size: tuple[int, int]) -> Tensor:
    """Paste one mask: Tensor[M', M'] into an image of image_size (H, W) at the integer box [x1, y1, x2, y2].

    The mask is resized bilinearly (align_corners False) to (y2 - y1 + 1) x (x2 - x1 + 1) pixels (at least 1)
    and the part inside the image is copied; the rest of the image is 0. Returns Tensor[H, W].
    """
    x1, y1, x2, y2 = box
    height, width = image_size
    w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    resized = F.interpolate(mask[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    image_mask = mask.new_zeros((height, width))
    xa, xb = max(x1, 0), min(x2 + 1, width)
    ya, yb = max(y1, 0), min(y2 + 1, height)
    if xb > xa and yb > ya:
        image_mask[ya:yb, xa:xb] = resized[ya - y1 : yb - y1, xa - x1 : xb - x1]
    return image_mask


def paste_masks_in_image(masks: Tensor, boxes: Tensor, image_size: tuple[int, int], padding: int = 1) -> Tensor:
    """Turn the head's M x M mask of each detection into a full-image mask, as the reference does.

    masks: Tensor[D, 1, M, M] probabilities, boxes: Tensor[D, 4] (x1, y1, x2, y2) in the image of
    image_size (H, W) -> Tensor[D, 1, H, W].

    1. Zero-pad each mask by `padding` on every side, (M, M) -> (M + 2p, M + 2p), so its border can fade to 0.
    2. Grow each box about its centre by (M + 2p) / M, so the padded mask still covers the original box,
       and truncate its corners to integers.
    3. Resize each padded mask bilinearly onto its integer box and paste it (paste_mask).
    """
    return paste_masks_in_images([masks], [boxes], [image_size], padding)[0]


def paste_masks_in_images(masks: list[Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]],
                          padding: int = 1) -> list[Tensor]:
    """paste_masks_in_image for every image of a batch, reading all the integer boxes back at once (one host sync).

    masks: [Tensor[D_i, 1, M, M]], boxes: [Tensor[D_i, 4]], image_sizes: [(H_i, W_i)] -> [Tensor[D_i, 1, H_i, W_i]].
    """
    int_boxes = [expand_boxes(b, float(m.shape[-1] + 2 * padding) / m.shape[-1]).to(torch.int64)
                 for m, b in zip(masks, boxes)]
    int_boxes = torch.cat(int_boxes).tolist() if int_boxes else []  # the host sync: (sum D_i, 4) corners
    pasted, start = [], 0
    for m, size in zip(masks, image_sizes):
        padded = F.pad(m, (padding,) * 4)  # (D, 1, M, M) -> (D, 1, M+2p, M+2p)
        image_boxes, start = int_boxes[start:start + len(m)], start + len(m)
        image_masks = [paste_mask(p[0], b, size) for p, b in zip(padded, image_boxes)]
        # (D, H, W) -> (D, 1, H, W)
        pasted.append(torch.stack(image_masks)[:, None] if image_masks else m.new_zeros((0, 1, *size)))
    return pasted
