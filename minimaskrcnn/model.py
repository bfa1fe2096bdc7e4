"""The whole Mask R-CNN: configuration, presets, input checks, and the model that chains every stage.

Built in notebooks/10_full_model.ipynb.

Shape glossary
    N        images in the batch
    H, W     an image's original height and width;  H', W' after resizing;  (Hp, Wp) the padded batch
    G        ground-truth instances of one image
    K        object classes (labels 1..K; 0 is background); num_classes = K + 1 counts the background too
    D        detections of one image
Boxes are absolute (x1, y1, x2, y2) floats, in original image pixels at the model's input and output.

Data flow (as torchvision's GeneralizedRCNN):
    images -> normalise, resize, pad into a batch -> backbone + FPN -> RPN proposals -> RoI heads
           -> detections mapped back to the original sizes (boxes rescaled, masks pasted into the image).
"""
import math
import warnings
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from minimaskrcnn.anchors import AnchorGenerator
from minimaskrcnn.backbone import LEVEL_NAMES, NORMS, STAGES_PER_DEPTH, build_backbone
from minimaskrcnn.masks import paste_masks_in_images
from minimaskrcnn.roi_heads import BoxPredictor, MaskHead, MaskPredictor, RoIHeads, TwoMLPHead, sample_proposals
from minimaskrcnn.roi_ops import MultiScaleRoIPooler
from minimaskrcnn.rpn import RegionProposalNetwork, RPNHead, assign_targets, filter_proposals
from minimaskrcnn.transforms import preprocess, resize_boxes, resize_geometry


def _int(lo: float = 1, hi: float = math.inf):
    """Check: an int (not a bool) in [lo, hi]."""
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _number(lo: float = 0.0, hi: float = math.inf, above: bool = False):
    """Check: a finite int or float (not a bool) in [lo, hi], or in (lo, hi] with above=True."""
    return lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                      and (lo < v if above else lo <= v) and v <= hi)


def _tuple(item, length: int | None = None):
    """Check: a non-empty tuple (or list) whose entries all pass `item`; exactly `length` of them when given."""
    return lambda v: isinstance(v, (tuple, list)) and len(v) == (length or len(v)) > 0 and all(map(item, v))


_COUNT = (_int(1), "an int >= 1")
_THRESHOLD = (_number(0, 1), "a number in [0, 1]")
_FRACTION = (_number(0, 1, above=True), "a number in (0, 1]")
_FLAG = (lambda v: isinstance(v, bool), "True or False")
_PER_LEVEL = (_tuple(_tuple(_number(0, above=True)), len(LEVEL_NAMES)),
              f"{len(LEVEL_NAMES)} non-empty tuples of numbers > 0, one per FPN level {LEVEL_NAMES}")
_CONFIG_RULES = {  # MaskRCNNConfig field -> (check of its value, what is allowed)
    "backbone_depth": (lambda v: _int(0)(v) and v in STAGES_PER_DEPTH, f"one of {sorted(STAGES_PER_DEPTH)}"),
    "backbone_norm": (lambda v: v in NORMS, f"one of {NORMS}"),
    "trainable_layers": (_int(0, 5), "an int in 0..5"),
    "base_width": _COUNT,
    "fpn_channels": _COUNT,
    "image_mean": (_tuple(_number(-math.inf), 3), "3 numbers, one per RGB channel"),
    "image_std": (_tuple(_number(0, above=True), 3), "3 numbers > 0, one per RGB channel"),
    "min_size": _COUNT,
    "max_size": _COUNT,
    "size_divisible": _COUNT,
    "channels_last": _FLAG,
    "anchor_sizes": _PER_LEVEL,
    "aspect_ratios": _PER_LEVEL,
    "rpn_fg_iou_thresh": _THRESHOLD,
    "rpn_bg_iou_thresh": _THRESHOLD,
    "rpn_batch_size_per_image": _COUNT,
    "rpn_positive_fraction": _FRACTION,
    "rpn_pre_nms_top_n_train": _COUNT,
    "rpn_pre_nms_top_n_test": _COUNT,
    "rpn_post_nms_top_n_train": _COUNT,
    "rpn_post_nms_top_n_test": _COUNT,
    "rpn_nms_thresh": _THRESHOLD,
    "rpn_min_size": (_number(0), "a number >= 0"),
    "rpn_score_thresh": _THRESHOLD,
    "roi_op": (lambda v: v in ("align", "pool"), "'align' or 'pool'"),
    "box_roi_size": _COUNT,
    "mask_roi_size": _COUNT,
    "sampling_ratio": (_int(-math.inf), "an int (<= 0: adaptive)"),
    "roi_aligned": _FLAG,
    "box_fg_iou_thresh": _THRESHOLD,
    "box_bg_iou_thresh": _THRESHOLD,
    "box_batch_size_per_image": _COUNT,
    "box_positive_fraction": _FRACTION,
    "box_coder_weights": (_tuple(_number(0, above=True), 4), "4 numbers > 0 (wx, wy, ww, wh)"),
    "representation_size": _COUNT,
    "box_score_thresh": _THRESHOLD,
    "box_nms_thresh": _THRESHOLD,
    "detections_per_img": _COUNT,
    "mask_head_layers": (_tuple(_int(1)), "a non-empty tuple of ints >= 1"),
    "mask_dim_reduced": _COUNT,
}
_CONFIG_RELATIONS = (  # (field, check of the whole config, what is allowed: formatted with the config's fields)
    ("rpn_bg_iou_thresh", lambda c: c.rpn_bg_iou_thresh <= c.rpn_fg_iou_thresh, "at most rpn_fg_iou_thresh, "
     "{rpn_fg_iou_thresh}"),
    ("box_bg_iou_thresh", lambda c: c.box_bg_iou_thresh <= c.box_fg_iou_thresh, "at most box_fg_iou_thresh, "
     "{box_fg_iou_thresh}"),
    ("min_size", lambda c: c.min_size <= c.max_size, "at most max_size, {max_size}"),
    ("aspect_ratios", lambda c: len({len(s) * len(r) for s, r in zip(c.anchor_sizes, c.aspect_ratios)}) == 1,
     "as many anchors (sizes x ratios) on every level, as one RPN head serves them all; anchor_sizes {anchor_sizes}"),
)


@dataclass(frozen=True)
class MaskRCNNConfig:
    """Every knob of the model. Defaults are the torchvision-compatible R50-FPN reference configuration.

    Impossible values are refused when the config is made (also by `dataclasses.replace`, so by build_model's
    overrides): one ValueError lists every field whose value is wrong alone, with the value and what is allowed;
    only when there are none are the fields checked against each other (thresholds, sizes, anchors per level).
    """

    # --- backbone + FPN
    backbone_depth: int = 50  # ResNet depth: 18, 34, 50 or 101
    backbone_norm: str = "frozen_bn"  # normalisation: "frozen_bn" (pretrained statistics), "bn" or "gn" (trainable)
    trainable_layers: int = 3  # how many ResNet stages train, counted from the top (0..5; 5 = all incl. the stem)
    base_width: int = 64  # channels of the first ResNet stage (64 in the reference; smaller = faster)
    fpn_channels: int = 256  # channels of every FPN output level
    # --- model-side transform
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # per-channel mean subtracted from inputs
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # per-channel std inputs are divided by
    min_size: int = 800  # resize so the short side is min_size ...
    max_size: int = 1333  # ... unless the long side would pass max_size
    size_divisible: int = 32  # pad the batch bottom/right to a multiple of this
    channels_last: bool = False  # convolution weights and the batch laid out (N, H, W, C) in memory; feature maps
    #                              keep that layout. Same results up to rounding; faster with oneDNN on a CPU (tiny)
    # --- anchors
    anchor_sizes: tuple[tuple[float, ...], ...] = ((32,), (64,), (128,), (256,), (512,))  # pixels, per FPN level
    aspect_ratios: tuple[tuple[float, ...], ...] = ((0.5, 1.0, 2.0),) * 5  # anchor h / w, per FPN level
    # --- RPN
    rpn_fg_iou_thresh: float = 0.7  # anchors with IoU >= this with a ground-truth box are positives
    rpn_bg_iou_thresh: float = 0.3  # anchors with IoU < this with every box are negatives
    rpn_batch_size_per_image: int = 256  # anchors sampled per image for the RPN losses
    rpn_positive_fraction: float = 0.5  # at most this fraction of them positive
    rpn_pre_nms_top_n_train: int = 2000  # best-scoring anchors kept per level before NMS, training
    rpn_pre_nms_top_n_test: int = 1000  # ... at inference
    rpn_post_nms_top_n_train: int = 2000  # proposals kept per image after NMS, training
    rpn_post_nms_top_n_test: int = 1000  # ... at inference
    rpn_nms_thresh: float = 0.7  # IoU above which a proposal suppresses a lower-scoring one
    rpn_min_size: float = 1e-3  # proposals narrower or shorter than this (pixels) are dropped
    rpn_score_thresh: float = 0.0  # proposals with objectness probability below this are dropped
    # --- RoI pooling
    roi_op: str = "align"  # "align" (RoIAlign, bilinear) or "pool" (RoIPool, quantised) for the notebook 06 ablation
    box_roi_size: int = 7  # pooled size S of each RoI for the box head
    mask_roi_size: int = 14  # pooled size for the mask head (its output masks are 2x: 28)
    sampling_ratio: int = 2  # bilinear samples per bin side in RoIAlign (<= 0: adaptive)
    roi_aligned: bool = False  # RoIAlign's half-pixel shift (False in torchvision's Mask R-CNN and its weights)
    # --- box head
    box_fg_iou_thresh: float = 0.5  # proposals with IoU >= this with a ground-truth box are positives
    box_bg_iou_thresh: float = 0.5  # proposals with IoU < this with every box are backgrounds
    box_batch_size_per_image: int = 512  # RoIs sampled per image for the box and mask losses
    box_positive_fraction: float = 0.25  # at most this fraction of them positive
    box_coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)  # delta scaling (wx, wy, ww, wh)
    representation_size: int = 1024  # width of the box head's two fully connected layers
    box_score_thresh: float = 0.05  # detections scoring at or below this are dropped
    box_nms_thresh: float = 0.5  # per-class NMS IoU threshold for the final detections
    detections_per_img: int = 100  # detections kept per image
    # --- mask head
    mask_head_layers: tuple[int, ...] = (256, 256, 256, 256)  # channels of each 3x3 conv of the mask head
    mask_dim_reduced: int = 256  # channels of the 2x transposed conv before the per-class 1x1 logits

    def __post_init__(self):
        values = vars(self)
        problems = [f"{name}={values[name]!r} (allowed: {allowed})"
                    for name, (check, allowed) in _CONFIG_RULES.items() if not check(values[name])]
        if not problems:
            problems = [f"{name}={values[name]!r} (allowed: {allowed.format(**values)})"
                        for name, check, allowed in _CONFIG_RELATIONS if not check(self)]
        if problems:
            raise ValueError(f"MaskRCNNConfig: impossible value{'s' * (len(problems) > 1)}: {'; '.join(problems)}")


PRESETS: dict[str, MaskRCNNConfig] = {
    # torchvision's maskrcnn_resnet50_fpn: loads its converted weights (minimaskrcnn.weights.from_torchvision), and is
    # what `train --weights coco|imagenet` fine-tunes (frozen batch norm needs pretrained statistics).
    "r50_fpn": MaskRCNNConfig(),
    # The same ResNet-50-FPN trained from scratch on the 256-px shapes (notebook 11's GPU mode): trainable GroupNorm
    # instead of frozen batch norm (random weights have no statistics to freeze), every stage trained, the images
    # kept at 256 px and anchors halved to the small objects, and fewer proposals and sampled RoIs than the
    # reference: a shapes image holds ~3.5 objects, and on a GPU the per-image proposal and RoI work (NMS, sampling,
    # many small kernels) sets the pace of a step, not the convolutions.
    "r50_fpn_gn": MaskRCNNConfig(
        backbone_norm="gn",
        trainable_layers=5,
        min_size=256,
        max_size=256,
        anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
        rpn_pre_nms_top_n_train=600,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_train=300,
        rpn_post_nms_top_n_test=300,
        box_batch_size_per_image=128,
    ),
    # CPU training from scratch on 128-pixel shapes images (`make train`): a narrow ResNet-18 with trainable GroupNorm,
    # small FPN, thin heads. Tuned on the shapes data (objects 5..42 px, median 23, boxes nearly square; ~3.5 per
    # image): three anchor sizes per level 2^(1/3) apart from 12 px and one ratio leave far fewer objects without an
    # anchor of IoU >= 0.7 than one size per level and three ratios (notebook 01 measures it); few proposals and
    # sampled RoIs, half of them positive (the RoI heads and NMS dominate a CPU step; more positives train the
    # classifier faster). The 128-px images are upsampled to 192 px: P2 then has 1.5x finer cells on the small
    # objects, which pays for the dearer step (BENCHMARKS.md: the input-size comparison).
    "tiny": MaskRCNNConfig(
        backbone_depth=18,
        backbone_norm="gn",
        trainable_layers=5,
        base_width=32,
        fpn_channels=64,
        min_size=192,
        max_size=320,
        anchor_sizes=((12, 15, 19), (24, 30, 38), (48, 60, 76), (96, 121, 152), (192, 242, 305)),
        aspect_ratios=((1.0,),) * 5,
        rpn_pre_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_train=150,
        rpn_post_nms_top_n_test=100,
        box_batch_size_per_image=32,
        box_positive_fraction=0.5,
        representation_size=256,
        detections_per_img=50,
        mask_head_layers=(64, 64, 64, 64),
        mask_dim_reduced=64,
        channels_last=True,
    ),
}


@dataclass(frozen=True)
class TrainingRecipe:
    """How `python -m minimaskrcnn train --preset NAME` trains a preset when the command line does not say.

    The optimiser fields are engine.TrainConfig's; the last three size the synthetic data of `--data shapes`.
    """

    steps: int  # optimiser steps of the run
    batch_size: int  # images per step and process
    optimizer: str  # "sgd" (with momentum) or "adamw"
    lr: float  # peak learning rate, after the warm-up
    weight_decay: float  # L2 penalty (SGD) or decoupled decay rate (AdamW)
    warmup_steps: int  # linear warm-up length
    eval_every: int  # evaluate on val every this many steps, for the AP curve (0: only at the end)
    num_train: int  # --data shapes: training images generated when data/shapes has none
    num_val: int  # ... validation images
    image_size: int  # ... their side in pixels


# Each preset's training recipe, next to its model (one name, one model, one recipe).
PRESET_TRAINING: dict[str, TrainingRecipe] = {
    # torchvision's fine-tuning tutorial's schedule (Penn-Fudan: 10 epochs of 60 steps of 2 images), for the
    # reference model started from the COCO or ImageNet weights (train --weights)
    "r50_fpn": TrainingRecipe(steps=600, batch_size=2, optimizer="sgd", lr=0.005, weight_decay=5e-4, warmup_steps=60,
                              eval_every=0, num_train=5000, num_val=500, image_size=256),
    # notebook 11's GPU run: from scratch with SGD, a longer warm-up for the random weights
    "r50_fpn_gn": TrainingRecipe(steps=1400, batch_size=8, optimizer="sgd", lr=0.02, weight_decay=1e-4,
                                 warmup_steps=200, eval_every=0, num_train=1000, num_val=200, image_size=256),
    # `make train` on a 2-core CPU in about 10 minutes: AdamW, which learns the from-scratch box classifier much
    # sooner than SGD (BENCHMARKS.md has both)
    "tiny": TrainingRecipe(steps=2000, batch_size=4, optimizer="adamw", lr=2e-3, weight_decay=1e-4, warmup_steps=100,
                           eval_every=500, num_train=400, num_val=100, image_size=128),
}


# ----------------------------------------------------------------------------------------------------------------
# Input checks: bad input fails here, with what was wrong and where, instead of as a NaN a thousand steps later
# ----------------------------------------------------------------------------------------------------------------
# Pixel values a float image may hold: 0..1 with a margin for resampling overshoot (bicubic) and light noise. 0..255
# images and images already normalised (about -2.1..2.6), the two usual mistakes, fall far outside.
PIXEL_RANGE = (-0.1, 1.1)


def check_images(images, cfg: MaskRCNNConfig | None = None) -> None:
    """Raise TypeError/ValueError unless images is a non-empty list of float Tensor[3, H, W] with finite values in 0..1.

    Any float dtype is accepted (float16, bfloat16, float64: MaskRCNN casts it to its weights' dtype); uint8 is
    refused (divide by 255). With the model's cfg, an image whose aspect ratio the resize cannot keep (short side
    below one pixel after resizing) is refused, and one whose short side ends smaller than the smallest anchor gets
    a warning (detection there will be poor). One host synchronisation for the value checks of the whole list.
    """
    if isinstance(images, Tensor) or not isinstance(images, (list, tuple)):
        raise TypeError(f"images must be a list of Tensor[3, H, W], got {type(images).__name__}; "
                        "for a batched Tensor[N, 3, H, W] pass list(batch)")
    if len(images) == 0:
        raise ValueError("images is an empty list: pass at least one Tensor[3, H, W]")
    for i, image in enumerate(images):
        if not isinstance(image, Tensor):
            raise TypeError(f"images[{i}] must be a Tensor, got {type(image).__name__}")
        if not image.is_floating_point():
            raise TypeError(f"images[{i}] has dtype {image.dtype}; the model takes float images in 0..1: "
                            "convert with image.float() / 255")
        if image.dim() == 2 or (image.dim() == 3 and image.shape[0] == 1):
            raise ValueError(f"images[{i}] is grayscale (shape {tuple(image.shape)}); the model takes Tensor[3, H, W]: "
                             "convert with image.expand(3, -1, -1) (after image[None] for a 2-D image)")
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"images[{i}] has shape {tuple(image.shape)}; expected Tensor[3, H, W] (channels first)")
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"images[{i}] is empty: shape {tuple(image.shape)}")
        if cfg is not None:
            _check_resizable(image, i, cfg)
    device = images[0].device
    low_high = torch.stack([torch.stack(torch.aminmax(image.detach())).to(device, torch.float32) for image in images])
    for i, (low, high) in enumerate(low_high.tolist()):  # (N, 2): min and max of each image; NaN if it has a NaN
        if not (math.isfinite(low) and math.isfinite(high)):
            bad = ~torch.isfinite(images[i])
            c, y, x = torch.nonzero(bad)[0].tolist()
            raise ValueError(f"images[{i}] has {int(bad.sum())} non-finite pixel values, the first "
                             f"{images[i][c, y, x].item()} at channel {c}, row {y}, column {x}")
        if low < PIXEL_RANGE[0] or high > PIXEL_RANGE[1]:
            hint = ("divide by 255 (image / 255)" if low >= PIXEL_RANGE[0] else "pass the image before "
                    "normalisation: the model subtracts image_mean and divides by image_std itself")
            raise ValueError(f"images[{i}] has values in [{low:.4g}, {high:.4g}]; the model takes images in 0..1: "
                             f"{hint}")


def _check_resizable(image: Tensor, i: int, cfg: MaskRCNNConfig) -> None:
    """Refuse images[i] if the model's resize leaves it no pixel on a side; warn if no anchor fits its short side."""
    size = tuple(image.shape[-2:])
    try:
        scale, new = resize_geometry(size, cfg.min_size, cfg.max_size)
    except ValueError as error:
        raise ValueError(f"images[{i}]: {error}") from None
    smallest_anchor = min(min(sizes) for sizes in cfg.anchor_sizes)
    if min(new) < min(cfg.min_size, smallest_anchor):  # squeezed by max_size, below every anchor
        warnings.warn(f"images[{i}] ({size[0]} x {size[1]}) is resized to {new[0]} x {new[1]} (scale {scale:.3g}, "
                      f"max_size={cfg.max_size}): its short side is below the smallest anchor ({smallest_anchor} px), "
                      "so objects in it are likely missed; crop or tile it, or raise max_size", stacklevel=3)


def check_targets(targets, images: list[Tensor], num_classes: int) -> None:
    """Raise TypeError/ValueError unless targets has one valid {boxes, labels, masks} dict per image.

    num_classes counts the background: valid labels are 1..num_classes - 1. Types and shapes are checked first;
    the values (finite, non-degenerate boxes, labels in range, 0/1 masks) then with one host sync for the batch.
    """
    if not isinstance(targets, (list, tuple)):
        raise TypeError(f"targets must be a list of dicts (one per image), got {type(targets).__name__}")
    if len(targets) != len(images):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    flags = []  # per target: Tensor[4] bool (a box not finite, a box degenerate, a label out of range, not 0/1 masks)
    for i, (target, image) in enumerate(zip(targets, images)):
        where = f"targets[{i}]"
        if not isinstance(target, dict):
            raise TypeError(f"{where} must be a dict with boxes, labels, masks, got {type(target).__name__}")
        for key in ("boxes", "labels", "masks"):
            if key not in target:
                raise ValueError(f"{where} has no '{key}' (a training target needs boxes, labels and masks)")
            if not isinstance(target[key], Tensor):
                raise TypeError(f"{where}['{key}'] must be a Tensor, got {type(target[key]).__name__}")
        boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
        if not boxes.is_floating_point():
            raise TypeError(f"{where}['boxes'] has dtype {boxes.dtype}; expected float (x1, y1, x2, y2)")
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{where}['boxes'] has shape {tuple(boxes.shape)}; expected Tensor[G, 4]")
        if labels.dtype != torch.int64:
            raise TypeError(f"{where}['labels'] has dtype {labels.dtype}; expected torch.int64")
        if labels.shape != (boxes.shape[0],):
            raise ValueError(f"{where}['labels'] has shape {tuple(labels.shape)} for {boxes.shape[0]} boxes")
        expected = (boxes.shape[0], *image.shape[-2:])
        if tuple(masks.shape) != expected:
            raise ValueError(f"{where}['masks'] has shape {tuple(masks.shape)}; expected {expected} "
                             "(one H x W mask per box, the size of the image)")
        flags.append(torch.stack((~torch.isfinite(boxes).all(), (boxes[:, 2:] <= boxes[:, :2]).any(),
                                  ((labels < 1) | (labels >= num_classes)).any(), _not_binary(masks).to(boxes.device))))
    if not flags:
        return
    found = torch.stack([f.to(flags[0].device) for f in flags]).tolist()  # (N, 4): the one host sync
    for i, (not_finite, degenerate, out_of_range, not_binary) in enumerate(found):
        where, boxes, labels, masks = f"targets[{i}]", targets[i]["boxes"], targets[i]["labels"], targets[i]["masks"]
        if not_finite:
            bad = torch.where(~torch.isfinite(boxes).all(dim=1))[0][0].item()
            raise ValueError(f"{where}['boxes'][{bad}] = {boxes[bad].tolist()} is not finite")
        if degenerate:
            bad = torch.where((boxes[:, 2:] <= boxes[:, :2]).any(dim=1))[0][0].item()
            raise ValueError(f"{where}['boxes'][{bad}] = {boxes[bad].tolist()} needs x2 > x1 and y2 > y1 "
                             "(boxes are (x1, y1, x2, y2); convert xywh with x2 = x + w, y2 = y + h)")
        if out_of_range:
            bad = torch.where((labels < 1) | (labels >= num_classes))[0][0].item()
            raise ValueError(f"{where}['labels'][{bad}] = {labels[bad].item()} is outside 1..{num_classes - 1} "
                             f"(0 is reserved for background; the model has num_classes = {num_classes} with it)")
        if not_binary:  # 0/255 masks would give a negative mask loss
            nan = masks.isnan()
            values = [f"{v:g}" for v in torch.unique(masks[~nan]).tolist()] + (["nan"] if nan.any() else [])
            shown = ", ".join(values[:6]) + (", ..." if len(values) > 6 else "")
            raise ValueError(f"{where}['masks'] has values [{shown}]; masks must be 0/1 (one binary mask per box): "
                             "convert with (masks > 0).to(torch.uint8) for 0/255 masks, (masks >= 0.5) for soft ones")


def _not_binary(masks: Tensor) -> Tensor:
    """Whether some value of masks is neither 0 nor 1, as Tensor[] bool (no host sync). Integer masks need one
    min/max pass (no temporaries: full-size masks are large)."""
    if masks.dtype == torch.bool or masks.numel() == 0:
        return torch.zeros((), dtype=torch.bool, device=masks.device)
    if masks.is_floating_point():
        return ((masks != 0) & (masks != 1)).any()
    low, high = torch.aminmax(masks)
    return (low < 0) | (high > 1)


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------
def rpn_settings(cfg: MaskRCNNConfig) -> dict:
    """The RegionProposalNetwork's keyword settings from a config's rpn_* fields (the one place their values live)."""
    names = ("fg_iou_thresh", "bg_iou_thresh", "batch_size_per_image", "positive_fraction", "pre_nms_top_n_train",
             "pre_nms_top_n_test", "post_nms_top_n_train", "post_nms_top_n_test", "nms_thresh", "min_size",
             "score_thresh")
    return {name: getattr(cfg, f"rpn_{name}") for name in names}


class MaskRCNN(nn.Module):
    """Mask R-CNN. num_classes = K + 1 counts the background too, as torchvision (91 for COCO); labels are 1..K.

    model(images, targets) in training -> {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
    "loss_box_reg", "loss_mask"}; in eval (model.eval(); targets None) -> per image
    {boxes Tensor[D, 4], labels Tensor[D], scores Tensor[D], masks Tensor[D, 1, H, W] probabilities},
    in the original image coordinates.
    """

    def __init__(self, cfg: MaskRCNNConfig, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background too (torchvision's convention), so it must be "
                             f">= 2, got {num_classes}")
        self.cfg, self.num_classes = cfg, num_classes
        # the normalisation constants live where the weights do, so no step copies them from the host (not saved)
        self.register_buffer("image_mean", torch.tensor(cfg.image_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("image_std", torch.tensor(cfg.image_std, dtype=torch.float32), persistent=False)
        self.backbone = build_backbone(
            cfg.backbone_depth, cfg.backbone_norm, cfg.trainable_layers, cfg.fpn_channels, base_width=cfg.base_width
        )
        channels = self.backbone.out_channels
        anchor_generator = AnchorGenerator(cfg.anchor_sizes, cfg.aspect_ratios)
        self.rpn = RegionProposalNetwork(
            anchor_generator, RPNHead(channels, anchor_generator.num_anchors_per_location()[0]), **rpn_settings(cfg)
        )
        levels, pooling = ["p2", "p3", "p4", "p5"], (cfg.sampling_ratio, cfg.roi_aligned, cfg.roi_op)
        self.roi_heads = RoIHeads(
            box_roi_pool=MultiScaleRoIPooler(levels, cfg.box_roi_size, *pooling),
            box_head=TwoMLPHead(channels * cfg.box_roi_size**2, cfg.representation_size),
            box_predictor=BoxPredictor(cfg.representation_size, num_classes),
            mask_roi_pool=MultiScaleRoIPooler(levels, cfg.mask_roi_size, *pooling),
            mask_head=MaskHead(channels, cfg.mask_head_layers),
            mask_predictor=MaskPredictor(cfg.mask_head_layers[-1], cfg.mask_dim_reduced, num_classes),
            fg_iou_thresh=cfg.box_fg_iou_thresh,
            bg_iou_thresh=cfg.box_bg_iou_thresh,
            batch_size_per_image=cfg.box_batch_size_per_image,
            positive_fraction=cfg.box_positive_fraction,
            box_coder_weights=cfg.box_coder_weights,
            score_thresh=cfg.box_score_thresh,
            nms_thresh=cfg.box_nms_thresh,
            detections_per_img=cfg.detections_per_img,
        )
        if cfg.channels_last:
            self.to(memory_format=torch.channels_last)  # conv weights (O, I, k, k) stored as (O, k, k, I)

    def transform(self, images: list[Tensor], targets: list[dict] | None = None):
        """Normalise, resize and pad (transforms.preprocess): -> (batch Tensor[N, 3, Hp, Wp], image_sizes [(H', W')],
        resized targets). Images of any float dtype are first cast to the weights' dtype (float32 unless the model
        was converted)."""
        cfg = self.cfg
        dtype = next(self.parameters()).dtype
        batch, image_sizes, targets = preprocess([image.to(dtype) for image in images], targets, self.image_mean,
                                                 self.image_std, cfg.min_size, cfg.max_size, cfg.size_divisible)
        if cfg.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)  # (N, 3, Hp, Wp) with (N, Hp, Wp, 3) strides
        return batch, image_sizes, targets

    def postprocess(self, detections: list[dict], image_sizes: list, original_sizes: list) -> list[dict]:
        """Map detections from the resized images back to the originals (new dicts): rescale boxes, paste masks."""
        boxes = [resize_boxes(det["boxes"], size, original)
                 for det, size, original in zip(detections, image_sizes, original_sizes)]
        masks = paste_masks_in_images([det["masks"] for det in detections], boxes, original_sizes)
        return [{**det, "boxes": b, "masks": m} for det, b, m in zip(detections, boxes, masks)]

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        check_images(images, self.cfg)
        if self.training:
            if targets is None:
                raise ValueError("the model is in training mode and needs targets; call model.eval() for inference")
            check_targets(targets, images, self.num_classes)
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        batch, image_sizes, targets = self.transform(images, targets)
        features = self.backbone(batch)
        proposals, rpn_losses = self.rpn(list(features.values()), image_sizes, tuple(batch.shape[-2:]), targets)
        detections, head_losses = self.roi_heads(features, proposals, image_sizes, targets)
        if self.training:
            return {**rpn_losses, **head_losses}
        return self.postprocess(detections, image_sizes, original_sizes)

    @torch.no_grad()
    def inspect(self, image: Tensor, target: dict | None = None) -> dict:
        """Run one image through the model in inference mode and keep every intermediate (notebook 10).

        image: Tensor[3, H, W] in 0..1; target (optional) {boxes, labels, masks} adds the training-time views
        (RPN anchor labels, sampled RoIs) and the target itself in the resized frame. Everything up to "detections"
        is in the resized image's coordinates (size "image_size", pixels = "scale" x original): draw or match those
        against stages["image"] and stages["target"], never against the original image and target. "result" is the
        model's output in original coordinates.

        Keys: image (Tensor[3, H', W'] resized, 0..1), image_size, scale,
        target (with a target: {boxes Tensor[G, 4], labels Tensor[G], masks Tensor[G, H', W']} resized like image),
        features {name: Tensor[1, C, H_l, W_l]},
        anchors [Tensor[H_l*W_l*A, 4]] per level, objectness [Tensor[H_l*W_l*A]] probabilities per level,
        anchor_labels Tensor[sum A_l] (1 positive, 0 negative, -1 ignored; with a target), proposals Tensor[P, 4],
        sampled_rois / sampled_labels (with a target), class_probs Tensor[P, K+1], refined_boxes Tensor[P, K+1, 4],
        detections {boxes, labels, scores} (resized coordinates), mask_probs Tensor[D, 1, M, M], result (as forward).
        """
        check_images([image])
        if target is not None:
            check_targets([target], [image], self.num_classes)
        was_training = self.training
        self.eval()
        try:
            batch, image_sizes, targets = self.transform([image], None if target is None else [target])
            size = image_sizes[0]
            stages = {"image": torch.nn.functional.interpolate(image[None], size=size, mode="bilinear",
                                                               align_corners=False)[0].clamp(0, 1),
                      "image_size": size, "scale": size[0] / image.shape[-2]}
            if targets is not None:
                stages["target"] = targets[0]  # boxes and masks in the resized frame, like stages["image"]
            features = self.backbone(batch)
            stages["features"] = features
            # the RPN's own steps, once each: head + anchors + decoding (predict), then filtering (as its forward)
            rpn = self.rpn
            anchors, level_sizes, objectness, _, decoded = rpn.predict(list(features.values()), tuple(batch.shape[-2:]))
            stages["anchors"] = list(anchors.split(level_sizes))
            stages["objectness"] = list(objectness[0].sigmoid().split(level_sizes))  # (1, T) -> per level
            if targets is not None:
                stages["anchor_labels"], _ = assign_targets(anchors, targets[0]["boxes"], rpn.matcher)
            proposals, _ = filter_proposals(decoded, objectness, level_sizes, image_sizes, rpn.pre_nms_top_n(),
                                            rpn.post_nms_top_n(), rpn.nms_thresh, rpn.min_size, rpn.score_thresh)
            stages["proposals"] = proposals[0]
            heads = self.roi_heads
            if targets is not None:
                sampled = sample_proposals(proposals, targets, heads.matcher, heads.sampler, heads.box_coder_weights)
                stages["sampled_rois"], stages["sampled_labels"] = sampled.rois[0], sampled.labels[0]
            detected = heads.detect(features, proposals, image_sizes)  # the heads' one inference path
            stages["class_probs"], stages["refined_boxes"] = detected["class_probs"][0], detected["refined_boxes"][0]
            (detection,) = detected["detections"]
            stages["detections"] = {k: detection[k] for k in ("boxes", "labels", "scores")}
            stages["mask_probs"] = detection["masks"]
            stages["result"] = self.postprocess(detected["detections"], image_sizes, [tuple(image.shape[-2:])])[0]
        finally:
            self.train(was_training)
        return stages


def build_model(preset: str = "tiny", num_classes: int = 91, **overrides) -> MaskRCNN:
    """A MaskRCNN from a named preset (PRESETS: "tiny", "r50_fpn", "r50_fpn_gn"), with any config field overridden by
    keyword.

    num_classes includes the background, as torchvision: 91 for COCO, len(dataset.class_names) for a CocoDataset.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    names = {f.name for f in fields(MaskRCNNConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown config field(s) {unknown}; MaskRCNNConfig has {sorted(names)}")
    return MaskRCNN(replace(PRESETS[preset], **overrides), num_classes)
