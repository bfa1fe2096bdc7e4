"""Controlled ablations of the mask branch, after the Mask R-CNN paper's Table 2, at notebook scale.

Built in notebooks/06_roialign_vs_roipool.ipynb (RoIPool vs RoIAlign). Each study is a tuple of `Variant`s that
differ from the baseline in one field; a new row of the paper's table is a new field on `Variant` (read in
`MaskBranch` or `train_variant`) and a new entry in `STUDIES`.

One setup for every variant, so that only the ablated choice differs:
- data: synthetic shapes (`make_shapes`), the same images for every variant and seed;
- network: a small conv stem trained from scratch (stride 8, 16 or 32) and the model's mask head
  (`MaskHead` + `MaskPredictor`: pooled S x S RoI features -> M x M mask logits per class);
- training RoIs: every ground-truth box jittered like a proposal; targets `mask_targets`, loss `mask_loss`;
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
    """One arm of a study: the baseline (RoIAlign on a stride-8 map) with at most a field or two changed."""

    name: str  # label in tables and pictures
    pool: str = "align"  # "align": roi_align (sampling ratio 2, aligned=False, as the model) | "pool": roi_pool
    stride: int = 8  # feature stride of the stem: a power of two >= 4


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


STUDIES = {
    "roi_op": (Variant("RoIPool", pool="pool"), Variant("RoIAlign")),
    "roi_op_stride16": (Variant("RoIPool s16", pool="pool", stride=16), Variant("RoIAlign s16", stride=16)),
}


class MaskBranch(nn.Module):
    """A small conv stem (log2(stride) stride-2 3x3 convs, then one 3x3 conv, all C wide with GroupNorm and ReLU),
    RoI pooling (RoIPool or RoIAlign) and the model's mask head.

    forward(images: Tensor[B, 3, H, W], rois: Tensor[R, 5] (batch index, x1, y1, x2, y2) in image pixels)
    -> Tensor[R, K+1, M, M] mask logits.
    """

    def __init__(self, variant: Variant, setup: Setup, num_classes: int):
        super().__init__()
        if variant.pool not in ("align", "pool"):
            raise ValueError(f"Variant {variant.name!r}: pool must be 'align' or 'pool', got {variant.pool!r}")
        stages = round(math.log2(variant.stride))
        if variant.stride < 4 or 2**stages != variant.stride:
            raise ValueError(f"Variant {variant.name!r}: stride must be a power of two >= 4, got {variant.stride}")
        layers, channels = [], 3
        for stride in [2] * stages + [1]:  # GroupNorm: trains from scratch in a few hundred steps
            layers += [nn.Conv2d(channels, setup.channels, 3, stride, 1), nn.GroupNorm(8, setup.channels),
                       nn.ReLU(inplace=True)]
            channels = setup.channels
        self.stem = nn.Sequential(*layers)
        self.head = MaskHead(channels, setup.head)
        self.predictor = MaskPredictor(setup.head[-1], setup.head[-1], num_classes)
        self.variant, self.pool_size = variant, setup.pool_size

    def pool(self, features: Tensor, rois: Tensor) -> Tensor:
        """features: Tensor[B, C, H/stride, W/stride], rois: Tensor[R, 5] -> Tensor[R, C, S, S]."""
        scale = 1 / self.variant.stride
        if self.variant.pool == "pool":
            return roi_pool(features, rois, self.pool_size, scale)
        return roi_align(features, rois, self.pool_size, scale, sampling_ratio=2, aligned=False)

    def forward(self, images: Tensor, rois: Tensor) -> Tensor:
        return self.predictor(self.head(self.pool(self.stem(images - 0.5), rois)))  # pixels 0..1 -> -0.5..0.5


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
        loss = mask_loss(net(images, rois), labels, targets)
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
        probs = mask_probabilities(net(image[None], rois), [labels])[0]  # (G, 1, M, M)
        crops.append(probs[:, 0])
        predictions.append({"boxes": boxes, "labels": labels, "scores": torch.ones(len(boxes)),
                            "masks": paste_masks_in_image(probs, boxes, tuple(image.shape[-2:]))})
        image_ids.append(int(target["image_id"]))
    net.train()
    metrics = evaluate_predictions(data.val_set, predictions, image_ids, iou_types=("segm",))["segm"]
    return metrics, torch.cat(crops)


# The paper's numbers for each study (He et al. 2017, Table 2; COCO mask AP in points, ResNet-50 backbones):
# what a learner compares ours with.
PAPER = {
    "roi_op": {"source": "Table 2c (ResNet-50-C4, stride 16)", "RoIPool": {"AP": 26.9, "AP75": 26.4},
               "RoIAlign": {"AP": 30.3, "AP75": 31.5}},
}


def run_study(variants, setup: Setup, seeds, root, log=print, crops: int = 0) -> list[dict]:
    """Train and score every variant with every seed on one data set written under `root`.

    -> one dict per run: {"variant", "seed", "AP", "AP50", "AP75", "seconds"} (seconds: training + scoring), and
    with crops > 0 "crops": the predicted M x M masks of the first `crops` validation objects (2 decimals).
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
            if crops:
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


def summarize(runs: list[dict], baseline: str) -> dict:
    """Mean and spread over seeds: {variant: {metric: (mean, standard deviation)}}, plus for every other variant
    "<variant> - <baseline>": the same for the per-seed difference (the runs of one seed share initial weights'
    seed and batches, so the difference is paired). Metrics are in AP points (x 100)."""
    names = list(dict.fromkeys(run["variant"] for run in runs))
    by_name = {name: {run["seed"]: run for run in runs if run["variant"] == name} for name in names}

    def spread(values):
        return (100 * statistics.mean(values), 100 * statistics.stdev(values) if len(values) > 1 else 0.0)

    table = {name: {m: spread([run[m] for run in by_name[name].values()]) for m in METRICS} for name in names}
    for name in names:
        if name != baseline:
            seeds = sorted(by_name[name].keys() & by_name[baseline].keys())
            table[f"{name} - {baseline}"] = {m: spread([by_name[name][s][m] - by_name[baseline][s][m] for s in seeds])
                                             for m in METRICS}
    return table


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m minimaskrcnn.ablation", description=__doc__.split("\n")[0])
    parser.add_argument("--study", default="roi_op", choices=sorted(STUDIES), help="which variants (default roi_op)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--steps", type=int, default=Setup.steps, help=f"Adam steps (default {Setup.steps})")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (default: torch's)")
    parser.add_argument("--jobs", type=int, default=1, help="runs (variant, seed) in parallel processes (default 1)")
    parser.add_argument("--crops", type=int, default=0, help="keep the masks of this many validation objects")
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
    jobs = [(variant, setup, seed, threads, args.crops) for seed in args.seeds for variant in variants]
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            runs = [run for job_runs in pool.map(_run_one, jobs) for run in job_runs]
    else:
        runs = [run for job in jobs for run in _run_one(job)]
    results = {
        "command": "python -m minimaskrcnn.ablation " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {threads} torch thread(s) x {args.jobs} "
                   f"process(es), torch {torch.__version__}",
        "wall_seconds": round(time.perf_counter() - start),
        "study": args.study, "variants": [asdict(v) for v in variants], "setup": asdict(setup), "runs": runs,
        "summary": summarize(runs, baseline=variants[0].name),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
