"""Controlled ablations of the mask branch, after the Mask R-CNN paper's Table 2, at notebook scale.

Built in notebooks/06_roialign_vs_roipool.ipynb (RoIPool vs RoIAlign) and notebooks/12_paper_ablations.ipynb (every
row of Table 2). Each study is a tuple of `Variant`s that differ from the baseline in one field; a row of the paper's
table is a field on `Variant` (read in `MaskBranch`: the pooling op, the stride, the head, the loss and the mask
probabilities), an entry in `STUDIES` and, for the paired differences, a (choice, alternative) pair in `PAIRS`.

One setup for every variant, so that only the ablated choice differs:
- data: synthetic shapes (`make_shapes`), the same images for every variant and seed;
- network: a small conv stem trained from scratch (stride 8, 16 or 32) and the model's mask head
  (`MaskHead` + `MaskPredictor`: pooled S x S RoI features -> M x M mask logits per class), or an MLP head;
- training RoIs: every ground-truth box jittered like a proposal; targets `mask_targets`, loss `mask_loss`
  (per-class sigmoid) or a per-pixel softmax over the classes;
- scoring: every validation object's exact ground-truth box and class are given (score 1), its predicted mask is
  pasted into the image and pycocotools scores the masks (`segm`), so the mask AP measures mask quality alone.

Run the full study (several seeds) with `python -m minimaskrcnn.ablation --out FILE.json`; `--help` lists the options.

Shape glossary
    B          images in a training batch
    R          RoIs over the batch
    C          channels of the stem's feature map
    K          object classes; K + 1 with background (class 0)
    S          RoI pooling output size (14, as the model's mask head)
    M          mask resolution (2 S = 28)
    G          ground-truth objects of one image
    L          mask channels: K + 1 (class-specific) or 1 (class-agnostic)
"""
import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minimaskrcnn.data import CocoDataset, make_shapes
from minimaskrcnn.evaluation import evaluate_predictions
from minimaskrcnn.losses import mask_loss
from minimaskrcnn.masks import mask_targets, paste_masks_in_image
from minimaskrcnn.roi_heads import MaskHead, MaskPredictor, mask_probabilities
from minimaskrcnn.roi_ops import roi_align, roi_pool
from minimaskrcnn.utils import seed_everything

METRICS = ("AP", "AP50", "AP75")


@dataclass(frozen=True)
class Variant:
    """One arm of a study: the baseline (the paper's choices: RoIAlign, per-class sigmoid masks, FCN head, on a
    stride-8 map) with at most a field or two changed."""

    name: str  # label in tables and pictures
    pool: str = "align"  # "align": roi_align (sampling ratio 2, aligned=False, as the model) | "pool": roi_pool
    stride: int = 8  # feature stride of the stem: a power of two >= 4
    mask_loss: str = "sigmoid"  # "sigmoid": binary cross-entropy on the object's own class channel (the paper's) |
    #                             "softmax": per-pixel softmax over the K + 1 channels, multinomial cross-entropy
    class_agnostic: bool = False  # one mask channel for every class (L = 1) instead of one per class (L = K + 1)
    head: str = "fcn"  # "fcn": MaskHead + MaskPredictor (convs keep the S x S layout) | "mlp": MLPMaskHead (flatten)


@dataclass(frozen=True)
class Setup:
    """What every variant of a study shares: data, network size, schedule."""

    train_images: int = 256  # shapes images to train on (make_shapes seed data_seed)
    val_images: int = 64  # shapes images to score (make_shapes seed data_seed + 1)
    data_seed: int = 1  # the data are the same for every variant and training seed
    steps: int = 400  # Adam steps
    batch: int = 8  # images per step
    lr: float = 3e-3  # Adam learning rate, cosine-decayed to 0 over the steps
    jitter: float = 0.1  # each box edge moves by up to this fraction of the box's width / height
    rois_per_object: int = 2  # jittered RoIs per ground-truth object and step
    channels: int = 32  # C, the stem's width
    head: tuple[int, ...] = (32, 32)  # widths of the mask head's 3x3 convs (four 256 in the reference)
    pool_size: int = 14  # S
    mask_size: int = 28  # M = 2 S (the predictor's transposed conv doubles S)
    mlp: tuple[int, ...] = (128, 128)  # widths of the MLP head's hidden fc layers: 4 x the conv width, as the
    #                                    paper's fc 1024 beside its 256-channel convs (Table 2e)


STUDIES = {
    "roi_op": (Variant("RoIPool", pool="pool"), Variant("RoIAlign")),
    "roi_op_stride16": (Variant("RoIPool s16", pool="pool", stride=16), Variant("RoIAlign s16", stride=16)),
    # every row of the paper's Table 2 at our scale; the first variant is the baseline every single change is made to
    "table2": (Variant("RoIAlign s8"), Variant("softmax", mask_loss="softmax"), Variant("RoIPool s8", pool="pool"),
               Variant("class-agnostic", class_agnostic=True), Variant("MLP head", head="mlp"),
               Variant("RoIAlign s16", stride=16), Variant("RoIPool s16", pool="pool", stride=16),
               Variant("RoIAlign s32", stride=32), Variant("RoIPool s32", pool="pool", stride=32)),
}

# The paired differences each study reports: (the paper's choice, the alternative it is compared with) -> the
# summary's "choice - alternative". A study not listed compares every variant with its first one.
PAIRS = {
    "table2": (("RoIAlign s8", "softmax"), ("RoIAlign s8", "RoIPool s8"), ("RoIAlign s8", "class-agnostic"),
               ("RoIAlign s8", "MLP head"), ("RoIAlign s16", "RoIPool s16"), ("RoIAlign s32", "RoIPool s32")),
}


class MLPMaskHead(nn.Sequential):
    """The paper's MLP mask head (Table 2e), at our widths: flatten the pooled features, hidden fc + ReLU layers, one
    fc to every mask logit. Tensor[R, C, S, S] -> (R, C*S*S) -> ... -> (R, L*M*M) -> Tensor[R, L, M, M]."""

    def __init__(self, in_features: int, widths: tuple[int, ...], channels: int, mask_size: int):
        layers = [nn.Flatten()]
        for width in widths:
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
            in_features = width
        layers += [nn.Linear(in_features, channels * mask_size**2), nn.Unflatten(1, (channels, mask_size, mask_size))]
        super().__init__(*layers)


class MaskBranch(nn.Module):
    """A small conv stem (log2(stride) stride-2 3x3 convs, then one 3x3 conv, all C wide with GroupNorm and ReLU),
    RoI pooling (RoIPool or RoIAlign) and a mask head (the model's FCN one, or an MLP).

    forward(images: Tensor[B, 3, H, W], rois: Tensor[R, 5] (batch index, x1, y1, x2, y2) in image pixels)
    -> Tensor[R, L, M, M] mask logits; `loss` and `probabilities` read them as the variant's mask_loss says.
    """

    def __init__(self, variant: Variant, setup: Setup, num_classes: int):
        super().__init__()
        for field, allowed in (("pool", ("align", "pool")), ("mask_loss", ("sigmoid", "softmax")),
                               ("head", ("fcn", "mlp"))):
            if getattr(variant, field) not in allowed:
                raise ValueError(f"Variant {variant.name!r}: {field} must be one of {allowed}, "
                                 f"got {getattr(variant, field)!r}")
        if variant.class_agnostic and variant.mask_loss == "softmax":
            raise ValueError(f"Variant {variant.name!r}: a softmax needs a channel per class; class_agnostic "
                             "masks have one")
        stages = round(math.log2(variant.stride))
        if variant.stride < 4 or 2**stages != variant.stride:
            raise ValueError(f"Variant {variant.name!r}: stride must be a power of two >= 4, got {variant.stride}")
        layers, channels = [], 3
        for stride in [2] * stages + [1]:  # GroupNorm: trains from scratch in a few hundred steps
            layers += [nn.Conv2d(channels, setup.channels, 3, stride, 1), nn.GroupNorm(8, setup.channels),
                       nn.ReLU(inplace=True)]
            channels = setup.channels
        self.stem = nn.Sequential(*layers)
        masks = 1 if variant.class_agnostic else num_classes  # L
        if variant.head == "fcn":
            self.head = nn.Sequential(MaskHead(channels, setup.head), MaskPredictor(setup.head[-1], setup.head[-1],
                                                                                      masks))
        else:
            self.head = MLPMaskHead(channels * setup.pool_size**2, setup.mlp, masks, setup.mask_size)
        self.variant, self.pool_size = variant, setup.pool_size

    def pool(self, features: Tensor, rois: Tensor) -> Tensor:
        """features: Tensor[B, C, H/stride, W/stride], rois: Tensor[R, 5] -> Tensor[R, C, S, S]."""
        scale = 1 / self.variant.stride
        if self.variant.pool == "pool":
            return roi_pool(features, rois, self.pool_size, scale)
        return roi_align(features, rois, self.pool_size, scale, sampling_ratio=2, aligned=False)

    def forward(self, images: Tensor, rois: Tensor) -> Tensor:
        return self.head(self.pool(self.stem(images - 0.5), rois))  # pixels 0..1 -> -0.5..0.5

    def channels(self, labels: Tensor) -> Tensor:
        """labels: Tensor[R] -> the mask channel each RoI is read from, Tensor[R] (all 0 if class-agnostic)."""
        return torch.zeros_like(labels) if self.variant.class_agnostic else labels

    def loss(self, logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
        """logits: Tensor[R, L, M, M], labels: Tensor[R], targets: Tensor[R, M, M] in 0..1 -> the mean loss.

        sigmoid: `mask_loss` (binary cross-entropy on the RoI's channel; the other classes' channels get no loss).
        softmax: cross-entropy of the per-pixel softmax over all K + 1 channels against a target that puts the
        target value t on the object's class and 1 - t on background (channel 0): a hard 0/1 target inside and
        outside the mask, the same soft border values as the sigmoid's target. The classes compete for each pixel.
        """
        if self.variant.mask_loss == "sigmoid":
            return mask_loss(logits, self.channels(labels), targets)
        log_p = F.log_softmax(logits, dim=1)  # (R, K+1, M, M)
        own = log_p[torch.arange(len(labels)), labels]  # (R, K+1, M, M) -> (R, M, M)
        return -(targets * own + (1 - targets) * log_p[:, 0]).mean()

    def probabilities(self, logits: Tensor, labels: Tensor) -> Tensor:
        """logits: Tensor[R, L, M, M], labels: Tensor[R] -> Tensor[R, 1, M, M]: each RoI's probability of being its
        class (sigmoid of its channel, or its class's share of the softmax)."""
        if self.variant.mask_loss == "sigmoid":
            return mask_probabilities(logits, [self.channels(labels)])[0]
        return F.softmax(logits, dim=1)[torch.arange(len(labels)), labels][:, None]  # (R, K+1, M, M) -> (R, 1, M, M)


@dataclass
class Data:
    """The loaded shapes: train and val as lists of (image Tensor[3, H, W], target), val_set for pycocotools."""

    train: list
    val: list
    val_set: CocoDataset
    num_classes: int  # K + 1 (background included)


def make_data(setup: Setup, root) -> Data:
    """Write the shapes datasets of `setup` under the folder `root` (two subfolders) and load them."""
    sets = []
    for name, count, seed in (("train", setup.train_images, setup.data_seed), ("val", setup.val_images,
                                                                                setup.data_seed + 1)):
        make_shapes(Path(root) / name, num_images=count, seed=seed, progress=False)
        sets.append(CocoDataset(Path(root) / name / "images", Path(root) / name / "annotations.json"))
    train_set, val_set = sets
    return Data([train_set[i] for i in range(len(train_set))], [val_set[i] for i in range(len(val_set))], val_set,
                len(train_set.class_names))


def jitter_boxes(boxes: Tensor, amount: float, generator: torch.Generator) -> Tensor:
    """Move each edge of boxes: Tensor[G, 4] by a uniform amount in +-amount x the box's width (x) or height (y)."""
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # (G, 2) -> (G, 4): w, h, w, h
    return boxes + (torch.rand(boxes.shape, generator=generator) * 2 - 1) * amount * size


def training_batch(data: Data, setup: Setup, generator: torch.Generator):
    """A random batch: -> (images Tensor[B, 3, H, W], rois Tensor[R, 5], labels Tensor[R], targets Tensor[R, M, M])."""
    picks = torch.randint(0, len(data.train), (setup.batch,), generator=generator).tolist()
    rois, labels, targets = [], [], []
    for b, i in enumerate(picks):
        target = data.train[i][1]
        owner = torch.arange(len(target["boxes"])).repeat(setup.rois_per_object)
        boxes = jitter_boxes(target["boxes"][owner], setup.jitter, generator)
        rois.append(torch.cat((torch.full((len(boxes), 1), float(b)), boxes), dim=1))  # (R_b, 1) + (R_b, 4)
        labels.append(target["labels"][owner])
        targets.append(mask_targets(target["masks"], boxes, owner, setup.mask_size))
    images = torch.stack([data.train[i][0] for i in picks])
    return images, torch.cat(rois), torch.cat(labels), torch.cat(targets)


def train_variant(variant: Variant, data: Data, setup: Setup, seed: int) -> tuple[MaskBranch, list[float]]:
    """Train a fresh MaskBranch (initial weights and batches from `seed`) -> (network, loss of every step)."""
    seed_everything(seed)
    net = MaskBranch(variant, setup, data.num_classes)
    optimiser = torch.optim.Adam(net.parameters(), lr=setup.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, setup.steps)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(setup.steps):
        images, rois, labels, targets = training_batch(data, setup, generator)
        loss = net.loss(net(images, rois), labels, targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
    return net, losses


@torch.no_grad()
def evaluate_variant(net: MaskBranch, data: Data) -> tuple[dict, Tensor]:
    """Exact ground-truth boxes and classes in -> ({"AP", "AP50", "AP75", ...} of pycocotools `segm`,
    the predicted M x M masks of every validation object, Tensor[sum G, M, M])."""
    net.eval()
    predictions, image_ids, crops = [], [], []
    for image, target in data.val:
        boxes, labels = target["boxes"], target["labels"]
        rois = torch.cat((torch.zeros(len(boxes), 1), boxes), dim=1)  # (G, 1) + (G, 4) -> (G, 5)
        probs = net.probabilities(net(image[None], rois), labels)  # (G, 1, M, M)
        crops.append(probs[:, 0])
        predictions.append({"boxes": boxes, "labels": labels, "scores": torch.ones(len(boxes)),
                            "masks": paste_masks_in_image(probs, boxes, tuple(image.shape[-2:]))})
        image_ids.append(int(target["image_id"]))
    net.train()
    metrics = evaluate_predictions(data.val_set, predictions, image_ids, iou_types=("segm",))["segm"]
    return metrics, torch.cat(crops)


def target_crops(data: Data, mask_size: int) -> Tensor:
    """The target masks of every validation object in its exact box's M x M frame, in the order of
    `evaluate_variant`'s crops: Tensor[sum G, M, M]."""
    return torch.cat([mask_targets(t["masks"], t["boxes"], torch.arange(len(t["boxes"])), mask_size)
                      for _, t in data.val])


def crop_ious(masks: Tensor, targets: Tensor) -> Tensor:
    """Mask IoU of each predicted crop with its target, both thresholded at 0.5 in the box's frame:
    masks, targets: Tensor[N, M, M] -> Tensor[N]."""
    masks, targets = masks > 0.5, targets > 0.5
    return (masks & targets).sum((1, 2)) / (masks | targets).sum((1, 2))


@torch.no_grad()
def class_competition(net: MaskBranch, data: Data) -> dict:
    """Why a softmax mask head can fail: over the pixels inside every validation object's target mask (exact box),
    the mean probability of foreground (1 - P(background)), the mean probability of the object's own class (the
    mask that is scored), and how often the most likely class (background excluded) is the object's; and, over the
    pixels of the box's M x M frame outside the target mask, the mean probability of foreground there.
    net: a MaskBranch with mask_loss "softmax" -> {"foreground", "own class", "class accuracy",
    "foreground outside"}."""
    if net.variant.mask_loss != "softmax":
        raise ValueError(f"class_competition: variant {net.variant.name!r} has no softmax over classes")
    net.eval()
    foreground, own, correct, pixels, outside_foreground, outside_pixels = 0.0, 0.0, 0, 0, 0.0, 0
    for image, target in data.val:
        boxes, labels = target["boxes"], target["labels"]
        rois = torch.cat((torch.zeros(len(boxes), 1), boxes), dim=1)  # (G, 1) + (G, 4) -> (G, 5)
        probs = F.softmax(net(image[None], rois), dim=1)  # (G, K+1, M, M)
        inside = mask_targets(target["masks"], boxes, torch.arange(len(boxes)), probs.shape[-1]) > 0.5  # (G, M, M)
        foreground += (1 - probs[:, 0])[inside].sum().item()
        own += probs[torch.arange(len(labels)), labels][inside].sum().item()  # (G, K+1, M, M) -> (G, M, M)
        best = probs[:, 1:].argmax(dim=1) + 1  # (G, K, M, M) -> (G, M, M): the most likely object class
        correct += int((best == labels[:, None, None])[inside].sum())
        pixels += int(inside.sum())
        outside_foreground += (1 - probs[:, 0])[~inside].sum().item()
        outside_pixels += int((~inside).sum())
    net.train()
    return {"foreground": foreground / pixels, "own class": own / pixels, "class accuracy": correct / pixels,
            "foreground outside": outside_foreground / outside_pixels}


# The paper's numbers for each study (He et al. 2017, Table 2; COCO mask AP in points, ResNet-50 backbones):
# what a learner compares ours with. The ResNet-50-C4 baseline (RoIAlign, per-class sigmoid masks) is the paper's
# choice in Table 2b, 2c and section 4.2 alike.
_R50_C4 = {"AP": 30.3, "AP50": 51.2, "AP75": 31.5}
_TABLE_2C = {"source": "Table 2c (ResNet-50-C4, stride 16): RoIAlign vs RoIPool", "choice": _R50_C4,
             "alternative": {"AP": 26.9, "AP50": 48.8, "AP75": 26.4}}
PAPER = {
    "roi_op": {"source": "Table 2c (ResNet-50-C4, stride 16)", "RoIPool": _TABLE_2C["alternative"],
               "RoIAlign": _TABLE_2C["choice"]},
    # one entry per PAIRS["table2"] pair: the paper's (choice, alternative) numbers on COCO
    "table2": {
        ("RoIAlign s8", "softmax"): {"source": "Table 2b (ResNet-50-C4): sigmoid vs softmax", "choice": _R50_C4,
                                     "alternative": {"AP": 24.8, "AP50": 44.1, "AP75": 25.1}},
        ("RoIAlign s8", "RoIPool s8"): _TABLE_2C,  # the paper has stride 16 only
        ("RoIAlign s8", "class-agnostic"): {"source": "Section 4.2 text (ResNet-50-C4): class-specific vs "
                                                      "class-agnostic", "choice": {"AP": _R50_C4["AP"]},
                                            "alternative": {"AP": 29.7}},
        ("RoIAlign s8", "MLP head"): {"source": "Table 2e (ResNet-50-FPN): FCN vs MLP (fc 1024, 1024)",
                                      "choice": {"AP": 33.6, "AP50": 55.2, "AP75": 35.3},
                                      "alternative": {"AP": 31.5, "AP50": 53.7, "AP75": 32.8}},
        ("RoIAlign s16", "RoIPool s16"): _TABLE_2C,
        ("RoIAlign s32", "RoIPool s32"): {"source": "Table 2d (ResNet-50-C5, stride 32): RoIAlign vs RoIPool",
                                          "choice": {"AP": 30.9, "AP50": 51.8, "AP75": 32.1},
                                          "alternative": {"AP": 23.6, "AP50": 46.5, "AP75": 21.6}},
    },
}


def paper_table(results: dict) -> str:
    """The summary of a `--study table2` results dict beside the paper's numbers: a markdown table, one line per
    PAIRS["table2"] pair, mask AP in points; ours: mean ± standard deviation over seeds, the differences paired per
    seed (choice - alternative); the paper's differences from its Table 2 / section 4.2 numbers."""
    summary = results["summary"]
    lines = ["| choice vs alternative | paper's row | ours: AP | ours: Δ AP | ours: Δ AP75 | paper: AP "
             "| paper: Δ AP | paper: Δ AP75 |", "|---|---|---|---|---|---|---|---|"]
    for a, b in PAIRS["table2"]:
        paper, diff = PAPER["table2"][a, b], summary[f"{a} - {b}"]
        choice, alternative = paper["choice"], paper["alternative"]

        def paper_diff(metric):
            return f"{choice[metric] - alternative[metric]:+.1f}" if metric in choice else "not given"

        lines.append(f"| {a} vs {b} | {paper['source']} | {summary[a]['AP'][0]:.1f} ± {summary[a]['AP'][1]:.1f} vs "
                     f"{summary[b]['AP'][0]:.1f} ± {summary[b]['AP'][1]:.1f} | {diff['AP'][0]:+.1f} ± "
                     f"{diff['AP'][1]:.1f} | {diff['AP75'][0]:+.1f} ± {diff['AP75'][1]:.1f} | {choice['AP']} vs "
                     f"{alternative['AP']} | {paper_diff('AP')} | {paper_diff('AP75')} |")
    return "\n".join(lines)


def run_study(variants, setup: Setup, seeds, root, log=print, crops: int = 0) -> list[dict]:
    """Train and score every variant with every seed on one data set written under `root`.

    -> one dict per run: {"variant", "seed", "AP", "AP50", "AP75", "seconds"} (seconds: training + scoring), and
    with crops > 0, in the runs of the first seed, "crops": the predicted M x M masks of the first `crops` validation
    objects (2 decimals).
    """
    data = make_data(setup, root)
    runs = []
    for seed in seeds:
        for variant in variants:
            start = time.perf_counter()
            net, _ = train_variant(variant, data, setup, seed)
            metrics, masks = evaluate_variant(net, data)
            runs.append({"variant": variant.name, "seed": seed, **{m: metrics[m] for m in METRICS},
                         "seconds": round(time.perf_counter() - start, 1)})
            if crops and seed == seeds[0]:
                runs[-1]["crops"] = masks[:crops].mul(100).round().div(100).tolist()
            log(f"{variant.name:>14s}  seed {seed}  " + "  ".join(f"{m} {metrics[m]:.3f}" for m in METRICS)
                + f"  ({runs[-1]['seconds']:.0f} s)")
    return runs


def _run_one(job) -> list[dict]:
    """One variant and seed in its own process (main --jobs): job = (variant, setup, seed, torch threads, crops)."""
    variant, setup, seed, threads, crops = job
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="minimaskrcnn_ablation_") as root:
        return run_study([variant], setup, [seed], root, log=lambda line: print(line, flush=True), crops=crops)


def summarize(runs: list[dict], pairs) -> dict:
    """Mean and spread over seeds: {variant: {metric: (mean, standard deviation)}}, plus for every (a, b) in pairs
    "<a> - <b>": the same for the per-seed difference a - b (the runs of one seed share the initial weights' seed
    and the batches, so the difference is paired). Metrics are in AP points (x 100)."""
    names = list(dict.fromkeys(run["variant"] for run in runs))
    by_name = {name: {run["seed"]: run for run in runs if run["variant"] == name} for name in names}

    def spread(values):
        return (100 * statistics.mean(values), 100 * statistics.stdev(values) if len(values) > 1 else 0.0)

    table = {name: {m: spread([run[m] for run in by_name[name].values()]) for m in METRICS} for name in names}
    for a, b in pairs:
        if a not in by_name or b not in by_name:
            raise ValueError(f"summarize: pair ({a!r}, {b!r}) names a variant with no runs; variants: {names}")
        seeds = sorted(by_name[a].keys() & by_name[b].keys())
        table[f"{a} - {b}"] = {m: spread([by_name[a][s][m] - by_name[b][s][m] for s in seeds]) for m in METRICS}
    return table


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m minimaskrcnn.ablation", description=__doc__.split("\n")[0],
        epilog="studies: " + "; ".join(f"{name}: {', '.join(v.name for v in variants)}"
                                      for name, variants in STUDIES.items()))
    parser.add_argument("--study", default="roi_op", choices=sorted(STUDIES),
                        help="which variants (default roi_op; table2: every row of the paper's Table 2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--steps", type=int, default=Setup.steps, help=f"Adam steps (default {Setup.steps})")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (default: torch's)")
    parser.add_argument("--jobs", type=int, default=1, help="runs (variant, seed) in parallel processes (default 1)")
    parser.add_argument("--crops", type=int, default=0,
                        help="keep the masks of this many validation objects (in the first seed's runs)")
    parser.add_argument("--out", type=Path, required=True, help="results JSON to write (refused if it exists)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        parser.error(f"--out {args.out} exists; pass --overwrite to replace it")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    setup = replace(Setup(), steps=args.steps)
    variants = STUDIES[args.study]
    start = time.perf_counter()
    threads = args.threads or torch.get_num_threads()
    if args.jobs > 1:
        jobs = [(variant, setup, seed, threads, args.crops if seed == args.seeds[0] else 0) for seed in args.seeds
                for variant in variants]
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            runs = [run for job_runs in pool.map(_run_one, jobs) for run in job_runs]
    else:  # one process: the data are written and loaded once
        with tempfile.TemporaryDirectory(prefix="minimaskrcnn_ablation_") as root:
            runs = run_study(variants, setup, args.seeds, root, log=lambda line: print(line, flush=True),
                             crops=args.crops)
    results = {
        "command": "python -m minimaskrcnn.ablation " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {threads} torch thread(s) x {args.jobs} "
                   f"process(es), torch {torch.__version__}",
        "wall_seconds": round(time.perf_counter() - start),
        "study": args.study, "variants": [asdict(v) for v in variants], "setup": asdict(setup), "runs": runs,
        "summary": summarize(runs, PAIRS.get(args.study, [(v.name, variants[0].name) for v in variants[1:]])),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    if args.study == "table2":
        print(paper_table(results))
    return results


if __name__ == "__main__":
    main()
