"""Command line: `python -m minimaskrcnn train|evaluate|predict ...` (`--help` on each documents it).

Built in notebooks/11_train_on_gpu.ipynb.

    python -m minimaskrcnn train --preset tiny --data data/shapes --out runs/tiny      # what `make train` runs
    python -m minimaskrcnn evaluate --checkpoint runs/tiny/checkpoint.pt --data data/shapes/val
    python -m minimaskrcnn predict --checkpoint runs/tiny/checkpoint.pt --out runs/pred data/shapes/val/images
    torchrun --nproc_per_node=2 -m minimaskrcnn train ...                              # DistributedDataParallel

A data folder holds one split (images/ + annotations.json, COCO format) or two (train/ and val/, each one split).
"""
import argparse
import ast
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from minimaskrcnn import engine
from minimaskrcnn.evaluation import format_metrics, predictions_to_coco

# Training schedule of each preset when the command line does not say (tuned for `make train` on a 2-core CPU).
PRESET_TRAINING = {
    # tiny: AdamW learns the from-scratch heads faster than SGD (lr 0.01) in make train's 2000 steps. Mask AP / AP50,
    # one thread per run: 0.700 / 0.912 (seed 0) and 0.687 / 0.898 (seed 1) against SGD's 0.642 / 0.877 (seed 0);
    # AdamW lr 1e-3: 0.698 / 0.907 and 0.665 / 0.879. `make train` itself (2 threads, seed 0): 0.698 / 0.902.
    "tiny": {"steps": 2000, "batch_size": 4, "optimizer": "adamw", "lr": 2e-3, "weight_decay": 1e-4,
             "warmup_steps": 100, "num_train": 400, "num_val": 100, "image_size": 128,
             "overrides": {}},  # the model side is PRESETS["tiny"] (minimaskrcnn/model.py)
    "r50_fpn": {"steps": 20000, "batch_size": 8, "optimizer": "sgd", "lr": 0.02, "weight_decay": 1e-4,
                "warmup_steps": 500, "num_train": 5000, "num_val": 500, "image_size": 256,
                "overrides": {"backbone_norm": "gn", "trainable_layers": 5, "min_size": 256, "max_size": 512}},
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def parse_override(text: str):
    """"key=value" -> (key, value) with value read as a Python literal ("(8,16)", "0.5", "gn")."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--override expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def split_dirs(data: Path) -> dict:
    """{"train": dir, "val": dir} of a data folder with train/ and val/ subfolders, or {"val": data} for one split."""
    if (data / "annotations.json").is_file():
        return {"val": data}
    return {s: data / s for s in ("train", "val")}


def open_split(folder: Path, transforms=None):
    from minimaskrcnn.data import CocoDataset

    ann = folder / "annotations.json"
    if not ann.is_file():
        raise FileNotFoundError(f"{folder}: no annotations.json (expected images/ and annotations.json, COCO format)")
    return CocoDataset(folder / "images", ann, transforms=transforms)


def prepare_shapes(data: Path, num_train: int, num_val: int, image_size: int) -> None:
    """Generate the shapes data under data/train and data/val where it is missing (seeds 1 and 2)."""
    from minimaskrcnn.data import make_shapes

    for split, num, seed in (("train", num_train, 1), ("val", num_val, 2)):
        if not (data / split / "annotations.json").is_file():
            t0 = time.perf_counter()
            make_shapes(data / split, num_images=num, image_size=image_size, seed=seed)
            print(f"generated {num} shapes images in {data / split} ({time.perf_counter() - t0:.1f} s)")


def predictions_picture(model, dataset, path: Path, device, count: int = 8, score_threshold: float = 0.5) -> None:
    """Save a grid of the first `count` images of `dataset` with the model's detections."""
    from minimaskrcnn.viz.train import plot_prediction_grid

    images = [dataset[i][0] for i in range(min(count, len(dataset)))]
    with torch.no_grad():
        preds = [{k: v.cpu() for k, v in p.items()} for p in model.eval()([im.to(device) for im in images])]
    fig = plot_prediction_grid(images, preds, dataset.class_names, score_threshold)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def cmd_train(args) -> int:
    rank, world, _ = engine.init_distributed()
    defaults = PRESET_TRAINING.get(args.preset, PRESET_TRAINING["tiny"])
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else defaults[name]  # noqa: E731
    data, out = Path(args.data), Path(args.out)
    if rank == 0 and not args.no_generate:
        prepare_shapes(data, pick("num_train"), pick("num_val"), pick("image_size"))
    if world > 1:
        torch.distributed.barrier()
    from minimaskrcnn.model import build_model
    from minimaskrcnn.transforms import RandomHorizontalFlip

    splits = split_dirs(data)
    if "train" not in splits:
        raise SystemExit(f"train: {data} holds a single split; give a folder with train/ and val/")
    train_set = open_split(splits["train"], transforms=RandomHorizontalFlip(0.5))
    val_set = open_split(splits["val"]) if (splits["val"] / "annotations.json").is_file() else None
    num_classes = len(train_set.class_names)  # background included, as torchvision
    overrides = {**defaults["overrides"], **dict(args.override)}
    torch.manual_seed(args.seed)  # the initial weights too (every rank the same; DDP broadcasts rank 0's anyway)
    model = build_model(args.preset, num_classes, **overrides)
    cfg = engine.TrainConfig(
        steps=pick("steps"), batch_size=pick("batch_size"), optimizer=pick("optimizer"), lr=pick("lr"),
        weight_decay=pick("weight_decay"), warmup_steps=pick("warmup_steps"),
        schedule=args.schedule, seed=args.seed, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
        log_every=args.log_every, num_workers=args.workers, amp=not args.no_amp, progress=not args.no_progress)
    info = {"preset": args.preset, "num_classes": num_classes, "overrides": overrides,
            "class_names": list(train_set.class_names), "category_ids": _plain(train_set.category_ids)}
    device = torch.device(args.device) if args.device else engine.default_device()
    if rank == 0:
        print(f"training {args.preset} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) on "
              f"{len(train_set)} images, {cfg.steps} steps of {cfg.batch_size} x {world} process(es), {device}")
    t0 = time.perf_counter()
    result = engine.train(model, train_set, cfg, out_dir=out, val_set=val_set, device=device, resume=args.resume,
                          model_info=info, stop_at=args.stop_at)
    if rank == 0:
        print(f"trained to step {result.step} in {time.perf_counter() - t0:.1f} s; checkpoint {out / engine.CHECKPOINT_NAME}")
        if result.metrics is not None:
            print(format_metrics(result.metrics))
            (out / "eval.json").write_text(json.dumps(result.metrics, indent=1))
            predictions_picture(model, val_set, out / "predictions.png", device)
            print(f"wrote {out / engine.LOSS_PLOT_NAME}, {out / 'predictions.png'} and {out / 'eval.json'}")
    engine.cleanup_distributed()
    return 0


def _plain(mapping):
    """category_ids as a JSON/torch.save-friendly list or dict of ints."""
    return {int(k): int(v) for k, v in mapping.items()} if isinstance(mapping, dict) else [int(v) for v in mapping]


def cmd_evaluate(args) -> int:
    engine.init_distributed()
    model, _ = engine.model_from_checkpoint(args.checkpoint)
    device = torch.device(args.device) if args.device else engine.default_device()
    model.to(device)
    data = Path(args.data)
    folder = split_dirs(data)["val"] if args.split is None else data / args.split
    dataset = open_split(folder)
    metrics = engine.evaluate(model, dataset, device, batch_size=args.batch_size)
    if engine.get_rank() == 0:
        print(format_metrics(metrics))
        if args.out:
            Path(args.out).write_text(json.dumps(metrics, indent=1))
    engine.cleanup_distributed()
    return 0


def load_image(path: Path) -> torch.Tensor:
    """An image file -> Tensor[3, H, W] float in 0..1."""
    from PIL import Image

    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


def collect_images(inputs: list[str]) -> list[Path]:
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise SystemExit(f"predict: {item} is neither an image file nor a folder")
    if not files:
        raise SystemExit(f"predict: no images ({', '.join(IMAGE_SUFFIXES)}) in {inputs}")
    return files


def cmd_predict(args) -> int:
    from minimaskrcnn.viz.train import plot_prediction_grid

    model, ckpt = engine.model_from_checkpoint(args.checkpoint)
    device = torch.device(args.device) if args.device else engine.default_device()
    model.to(device)
    info = ckpt["model_info"]
    files = collect_images(args.inputs)
    ids = {}
    if args.annotations:
        ids = {Path(im["file_name"]).name: im["id"] for im in json.loads(Path(args.annotations).read_text())["images"]}
        missing = [f.name for f in files if f.name not in ids]
        if missing:
            raise SystemExit(f"predict: {args.annotations} has no image entry for {missing[:5]}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in files:
        image = load_image(path)
        with torch.no_grad():
            (pred,) = model([image.to(device)])
        pred = {k: v.cpu() for k, v in pred.items()}
        results += predictions_to_coco([pred], [ids.get(path.name, path.name)], info["category_ids"])
        fig = plot_prediction_grid([image], [pred], info["class_names"], args.score_threshold, titles=[path.name])
        fig.savefig(out / f"{path.stem}.png", dpi=100, bbox_inches="tight")
        print(f"{path.name}: {int((pred['scores'] >= args.score_threshold).sum())} detections >= {args.score_threshold}")
    (out / "results.json").write_text(json.dumps(results))
    print(f"wrote {len(files)} pictures and {out / 'results.json'} ({len(results)} detections)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minimaskrcnn", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a preset (generates the shapes data when missing), evaluate, plot",
                       description="Train, evaluate on val, write checkpoint.pt, metrics.jsonl, loss_curve.png, "
                                   "predictions.png and eval.json into --out. Works under torchrun unchanged.")
    t.add_argument("--preset", default="tiny", help="model preset: tiny | r50_fpn (default tiny)")
    t.add_argument("--data", default="data/shapes", help="folder with train/ and val/ COCO splits (default data/shapes)")
    t.add_argument("--out", default="runs/tiny", help="run folder for checkpoint, metrics and pictures")
    t.add_argument("--steps", type=int, help="optimiser steps (default: per preset)")
    t.add_argument("--batch-size", type=int, help="images per step per process (default: per preset)")
    t.add_argument("--optimizer", choices=("sgd", "adamw"), help="optimiser (default: per preset)")
    t.add_argument("--weight-decay", type=float, help="weight decay (default: per preset)")
    t.add_argument("--lr", type=float, help="peak learning rate (default: per preset)")
    t.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default: per preset)")
    t.add_argument("--schedule", default="cosine", choices=("cosine", "step"), help="decay after warm-up")
    t.add_argument("--num-train", type=int, help="shapes images to generate for train when missing")
    t.add_argument("--num-val", type=int, help="shapes images to generate for val when missing")
    t.add_argument("--image-size", type=int, help="side of generated shapes images (default: per preset)")
    t.add_argument("--no-generate", action="store_true", help="never generate shapes data (use --data as is)")
    t.add_argument("--override", action="append", type=parse_override, default=[], metavar="KEY=VALUE",
                   help="model config override, repeatable, e.g. --override rpn_post_nms_top_n_train=300")
    t.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights, data order, augmentation and sampling")
    t.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: at the end only)")
    t.add_argument("--checkpoint-every", type=int, default=100, help="checkpoint every N steps")
    t.add_argument("--log-every", type=int, default=10, help="metrics record every N steps")
    t.add_argument("--stop-at", type=int, help="stop after this step (the schedule still spans --steps)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt when it exists")
    t.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    t.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    t.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="COCO bbox/segm AP of a checkpoint on a COCO-format split",
                       description="Print AP, AP50, AP75, APs/m/l and per-class AP (pycocotools).")
    e.add_argument("--checkpoint", required=True, help="checkpoint.pt written by train")
    e.add_argument("--data", required=True, help="a split folder (images/ + annotations.json) or one with val/")
    e.add_argument("--split", help="subfolder of --data to evaluate (default: val, or --data itself)")
    e.add_argument("--batch-size", type=int, default=8, help="images per inference batch")
    e.add_argument("--out", help="also write the metrics to this JSON file")
    e.add_argument("--device", help="cpu, cuda ... (default: cuda when available)")
    e.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="detect in images; a picture per image and one COCO results JSON",
                       description="Writes OUT/<image>.png and OUT/results.json (COCO results, RLE masks).")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by train")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--annotations", help="COCO JSON whose images map file names to image ids (default: the file name)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="lowest score drawn in the pictures")
    p.add_argument("--device", help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders of images")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
