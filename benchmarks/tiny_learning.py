"""What limits how fast the tiny preset learns (issue 17): model variants the package has no setting for, and
how much of a checkpoint's mask AP is lost to its class labels.

    python benchmarks/tiny_learning.py train --variant fpn_gn,mask_gn,box_conv -- --preset tiny --data shapes \
        --out runs/v --steps 500 --eval-every 250
    python benchmarks/tiny_learning.py agnostic runs/tiny/checkpoint.pt [more checkpoints]

`train` builds the preset, changes it as the variants say, then runs `python -m minimaskrcnn train` with the
arguments after `--` (a checkpoint of a changed model only loads through this script). Variants (comma-separated):
  fpn_gn       GroupNorm after every FPN conv (lateral and output)
  mask_gn      GroupNorm after each 3x3 conv of the mask head
  box_conv     box head = two 3x3 convs (GroupNorm, ReLU) + one fc, instead of two fcs
  zero_res     every residual block's branch starts at zero (its last norm's scale set to 0): the block is
               the identity, or its shortcut projection, at the start
  cls_wX       the box classifier's loss multiplied by X (e.g. cls_w3)
  boxcanonX    the box head pools each RoI from the FPN level floor(4 + log2(sqrt(area) / X)) instead of X = 224
`agnostic` evaluates each checkpoint's masks on the shapes val split twice with pycocotools: as usual, and with
the classes ignored (COCOeval useCats=0). The difference is what wrong class labels cost.
Figures: BENCHMARKS.md ("Training quality: the tiny preset").
"""
import argparse
import contextlib
import io
import sys

import torch
from torch import nn

import minimaskrcnn.model as model_module
import minimaskrcnn.roi_ops as roi_ops

VARIANTS = ("fpn_gn", "mask_gn", "box_conv", "zero_res", "cls_w", "boxcanon")


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels)


class ConvFCHead(nn.Module):
    """Tensor[R, C, S, S] -> two (3x3 conv, GroupNorm, ReLU) -> flatten -> fc + ReLU -> Tensor[R, representation]."""

    def __init__(self, channels: int, size: int, representation: int):
        super().__init__()
        layers = []
        for _ in range(2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), group_norm(channels), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(channels * size * size, representation)

    def forward(self, x):
        return torch.relu(self.fc(self.convs(x).flatten(1)))  # (R, C, S, S) -> (R, C*S*S) -> (R, representation)


def apply_variants(model, variants: list[str]):
    cfg, channels = model.cfg, model.cfg.fpn_channels
    for variant in variants:
        if variant == "fpn_gn":
            for block in [*model.backbone.fpn.inner_blocks, *model.backbone.fpn.layer_blocks]:
                block.append(group_norm(channels))
        elif variant == "mask_gn":
            for block in model.roi_heads.mask_head:
                block.insert(1, group_norm(block[0].out_channels))
        elif variant == "box_conv":
            model.roi_heads.box_head = ConvFCHead(channels, cfg.box_roi_size, cfg.representation_size)
        elif variant == "zero_res":
            for block in model.backbone.body.modules():
                if hasattr(block, "bn2"):  # a residual block: its last norm is bn3 (bottleneck) or bn2 (basic)
                    nn.init.zeros_(getattr(block, "bn3", block.bn2).weight)
        elif variant.startswith("cls_w"):
            model.roi_heads.losses = scaled_classifier_loss(model.roi_heads.losses, float(variant[5:]))
        elif variant.startswith("boxcanon"):
            pool = model.roi_heads.box_roi_pool
            pool.forward = with_canonical_scale(pool.forward, float(variant[8:]))
        else:
            raise SystemExit(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def scaled_classifier_loss(losses, weight: float):
    def scaled(*args, **kwargs):
        out = losses(*args, **kwargs)
        out["loss_classifier"] = out["loss_classifier"] * weight
        return out
    return scaled


def with_canonical_scale(forward, scale: float):
    def pooled(*args, **kwargs):
        defaults = roi_ops.assign_levels.__defaults__
        roi_ops.assign_levels.__defaults__ = (scale, *defaults[1:])
        try:
            return forward(*args, **kwargs)
        finally:
            roi_ops.assign_levels.__defaults__ = defaults
    return pooled


def train(variants: list[str], cli_args: list[str]) -> int:
    build = model_module.build_model
    model_module.build_model = lambda *args, **kwargs: apply_variants(build(*args, **kwargs), variants)
    from minimaskrcnn.__main__ import main
    return main(["train", *cli_args])


def agnostic(checkpoints: list[str]) -> None:
    from pycocotools.cocoeval import COCOeval

    from minimaskrcnn.checkpoints import model_from_checkpoint
    from minimaskrcnn.data import CocoDataset, collate
    from minimaskrcnn.evaluation import predict_dataset

    val = CocoDataset("data/shapes/val/images", "data/shapes/val/annotations.json")
    loader = torch.utils.data.DataLoader(val, batch_size=4, collate_fn=collate)
    for path in checkpoints:
        model, _ = model_from_checkpoint(path)
        with torch.no_grad():
            results, _ = predict_dataset(model, loader, "cpu", val.category_ids)
        scores = []
        for use_cats in (1, 0):
            with contextlib.redirect_stdout(io.StringIO()):
                coco_eval = COCOeval(val.coco, val.coco.loadRes([dict(r) for r in results]), "segm")
                coco_eval.params.useCats = use_cats
                coco_eval.evaluate(), coco_eval.accumulate(), coco_eval.summarize()
            scores.append(f"AP {coco_eval.stats[0]:.3f} AP50 {coco_eval.stats[1]:.3f}")
        print(f"{path}: mask {scores[0]}; classes ignored: {scores[1]}", flush=True)


if __name__ == "__main__":
    argv = sys.argv[1:]
    cli_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a changed tiny model (CLI arguments after --)")
    t.add_argument("--variant", default="", help="comma-separated: " + ", ".join(VARIANTS))
    a = sub.add_parser("agnostic", help="mask AP with and without the classes")
    a.add_argument("checkpoints", nargs="+")
    args = p.parse_args(argv)
    if args.command == "train":
        sys.exit(train([v for v in args.variant.split(",") if v], cli_args))
    agnostic(args.checkpoints)
