"""Transforms: what happens to an image (and its boxes and masks) between the dataset and the backbone.

Two kinds live here, in two sections.
- Model side: the preprocessing every image gets inside the model (MaskRCNN.transform calls `preprocess`):
  `normalize`, `resize_to`, `batch_images`, and `resize_boxes` to map detections back. Functional, and exactly as
  torchvision's GeneralizedRCNNTransform does it, so that torchvision weights see the same inputs.
  Built in notebooks/00_data.ipynb.
- Dataset side: augmentation and preparation of training data, `Compose`, `Resize`, `RandomHorizontalFlip`. Each is
  a callable (image, target) -> (image, target) that keeps boxes and masks aligned with the pixels, passed to
  CocoDataset(transforms=...). Built in notebooks/00_data.ipynb.

Shape glossary
    N      number of images in a batch, or of instances in one image's target
    H, W   image height and width (H', W' after resizing; Hp, Wp after padding to a multiple of size_divisible)
    target dict {boxes Tensor[N, 4] (x1, y1, x2, y2), labels Tensor[N], masks Tensor[N, H, W] uint8, ...}
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor


# ----------------------------------------------------------------------------------------------------------------
# Model side: the model's preprocessing (functional)
# ----------------------------------------------------------------------------------------------------------------
def _check_image(image, where: str) -> None:
    if not isinstance(image, Tensor) or image.dim() != 3:
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"{where}: image must be a Tensor[C, H, W], got {got}")
    if not image.is_floating_point():
        raise TypeError(f"{where}: image must be floating point (0..1), got dtype {image.dtype}")


def normalize(image: Tensor, mean, std) -> Tensor:
    """image: Tensor[3, H, W] float -> (image - mean) / std per channel (mean, std: 3 numbers, or Tensor[3]).

    Python numbers are copied to the image's device on every call (a host sync on a GPU); MaskRCNN passes Tensor[3]
    buffers that already live there."""
    _check_image(image, "normalize")
    mean = torch.as_tensor(mean, dtype=image.dtype, device=image.device)
    std = torch.as_tensor(std, dtype=image.dtype, device=image.device)
    return (image - mean[:, None, None]) / std[:, None, None]


def resize_boxes(boxes: Tensor, from_size, to_size) -> Tensor:
    """boxes: Tensor[..., 4] (x1, y1, x2, y2) in an image of size from_size (h, w) -> the same boxes in to_size (h, w).

    The ratios (new size / old size per axis) are float32 divisions, as torchvision's float32 tensors give them, but
    held as Python floats: nothing is copied to the boxes' device. (Half-precision boxes are multiplied by the
    float32 ratio, as torch does on the CPU with torchvision's tensors.)
    """
    # new / old in float64 rounded to float32 is the float32 division (integer sizes: double rounding cannot change it)
    ratio_h, ratio_w = (float(torch.tensor(new / old, dtype=torch.float32)) for new, old in zip(to_size, from_size))
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=-1)


def resize_geometry(size: tuple[int, int], min_size: float, max_size: float) -> tuple[float, tuple[int, int]]:
    """How `resize_to` resizes an image of size (H, W): -> (scale, (H', W')), H' = floor(H * scale), same for W'.

    scale = min(min_size / short side, max_size / long side), a Python float as torchvision's. An aspect ratio beyond
    max_size / min_size lets the long side decide and the short side ends below min_size: with (800, 1333) a
    20 x 2000 image becomes 13 x 1333. Raises ValueError when a side would reach 0 pixels (nothing left to resize).
    """
    height, width = size
    scale = min(min_size / min(height, width), max_size / max(height, width))
    new = (math.floor(height * scale), math.floor(width * scale))  # as F.interpolate(recompute_scale_factor=True)
    if min(new) < 1:
        raise ValueError(f"a {height} x {width} image would be resized to {new[0]} x {new[1]} pixels (scale "
                         f"{scale:.4g}: the long side is capped at max_size={max_size}); its aspect ratio is beyond "
                         f"what min_size={min_size}, max_size={max_size} allow: crop or tile it, or raise max_size")
    return scale, new


def resize_to(image: Tensor, target: dict | None, min_size: float, max_size: float):
    """Resize so the short side becomes min_size unless the long side would pass max_size; boxes and masks follow.

    image: Tensor[3, H, W] float; target: dict with optional boxes Tensor[N, 4] and masks Tensor[N, H, W], or None.
    scale = min(min_size / short side, max_size / long side) (Python float, as torchvision); the image is resized
    bilinearly with align_corners=False and the output size recomputed from the scale factor (floor(H * scale));
    masks are resized with nearest neighbour to exactly the new image size. Returns (image Tensor[3, H', W'],
    new target dict or None); the input target is not modified. An image too elongated to keep one pixel on its
    short side is refused (see `resize_geometry`).
    """
    _check_image(image, "resize_to")
    scale, _ = resize_geometry(tuple(image.shape[-2:]), min_size, max_size)
    resized = F.interpolate(image[None], size=None, scale_factor=scale, mode="bilinear",
                            recompute_scale_factor=True, align_corners=False)[0]
    if target is None:
        return resized, None
    target = dict(target)
    if "boxes" in target:
        target["boxes"] = resize_boxes(target["boxes"], image.shape[-2:], resized.shape[-2:])
    if "masks" in target:
        masks = target["masks"]
        # (N, H, W) -> (N, 1, H, W) -> nearest -> (N, H', W')
        target["masks"] = F.interpolate(masks[:, None].float(), size=resized.shape[-2:])[:, 0].byte()
    return resized, target


def batch_images(images: list[Tensor], size_divisible: int = 32):
    """Pad images to one batch: list of Tensor[3, H_i, W_i] -> (Tensor[N, 3, Hp, Wp], image_sizes [(H_i, W_i)]).

    Hp, Wp = the largest H_i, W_i rounded up to a multiple of size_divisible; padding is zeros at the bottom and
    right, so pixel coordinates (and boxes) are unchanged. Call it after `normalize`: padding is then the mean colour.
    """
    if not images:
        raise ValueError("batch_images: got an empty list of images")
    for i, image in enumerate(images):
        if not isinstance(image, Tensor) or image.dim() != 3:
            raise ValueError(f"batch_images: image {i} must be a Tensor[C, H, W]")
    channels = max(image.shape[0] for image in images)
    height = int(math.ceil(max(image.shape[1] for image in images) / size_divisible) * size_divisible)
    width = int(math.ceil(max(image.shape[2] for image in images) / size_divisible) * size_divisible)
    batch = images[0].new_zeros((len(images), channels, height, width))
    for i, image in enumerate(images):
        batch[i, : image.shape[0], : image.shape[1], : image.shape[2]].copy_(image)
    return batch, [(int(image.shape[1]), int(image.shape[2])) for image in images]


def preprocess(images: list[Tensor], targets: list[dict] | None, mean, std, min_size: float, max_size: float,
               size_divisible: int):
    """The model's preprocessing: each image normalised, then resized (its target's boxes and masks follow), then
    all of them padded into one batch -- the order of torchvision's GeneralizedRCNNTransform.

    images: [Tensor[3, H_i, W_i]] float; targets: one dict per image, or None -> (batch Tensor[N, 3, Hp, Wp],
    image_sizes [(H'_i, W'_i)] before padding, resized targets or None). Inputs are not modified.
    """
    resized_images, resized_targets = [], []
    for i, image in enumerate(images):
        image, target = resize_to(normalize(image, mean, std), None if targets is None else targets[i], min_size,
                                  max_size)
        resized_images.append(image)
        resized_targets.append(target)
    batch, image_sizes = batch_images(resized_images, size_divisible)
    return batch, image_sizes, (None if targets is None else resized_targets)


# ----------------------------------------------------------------------------------------------------------------
# Dataset side: augmentation, callables (image, target) -> (image, target)
# ----------------------------------------------------------------------------------------------------------------
class Compose:
    """Apply transforms one after the other: Compose([Resize(96, 160), RandomHorizontalFlip(0.5)])."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: dict):
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Resize:
    """Resize keeping the aspect ratio (short side -> min_size, long side at most max_size); see `resize_to`."""

    def __init__(self, min_size: float, max_size: float):
        if min_size <= 0 or max_size <= 0:
            raise ValueError(f"Resize: min_size and max_size must be positive, got {min_size}, {max_size}")
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image: Tensor, target: dict):
        return resize_to(image, target, self.min_size, self.max_size)

    def __repr__(self) -> str:
        return f"Resize(min_size={self.min_size}, max_size={self.max_size})"


def hflip(image: Tensor, target: dict):
    """Mirror left-right: image Tensor[C, H, W], boxes x -> W - x (x1 and x2 swap roles), masks mirrored."""
    width = image.shape[-1]
    target = dict(target)
    if "boxes" in target:
        boxes = target["boxes"]
        target["boxes"] = torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1)
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


class RandomHorizontalFlip:
    """Mirror left-right with probability p (draws from torch's global generator, so torch.manual_seed fixes it)."""

    def __init__(self, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: Tensor, target: dict):
        if torch.rand(1).item() < self.p:
            return hflip(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"
