"""Command line: `python -m minimaskrcnn train|evaluate|predict|check-data ...` (`--help` on each documents it).

Built in notebooks/11_train_on_gpu.ipynb.

    python -m minimaskrcnn train --preset tiny --data shapes --out runs/tiny          # what `make train` runs
    python -m minimaskrcnn train --preset r50_fpn_gn --data shapes --out runs/r50gn   # notebook 11's GPU run
    python -m minimaskrcnn train --data data/pennfudan --out runs/pf                  # a folder with train/ and val/
    python -m minimaskrcnn train --train-images T/ --train-annotations T.json --val-images V/ --val-annotations V.json
    python -m minimaskrcnn train --preset r50_fpn --weights coco --data data/pennfudan --out runs/pf-coco
    python -m minimaskrcnn check-data --images DIR --annotations FILE                 # every image decoded, checked
    python -m minimaskrcnn evaluate --checkpoint runs/tiny/checkpoint.pt --data data/shapes/val
    python -m minimaskrcnn predict --checkpoint runs/tiny/checkpoint.pt --out runs/pred photos/
    torchrun --nproc_per_node=2 -m minimaskrcnn train ...                              # DistributedDataParallel

A split is a folder of images and a COCO instances file; the folder layout is <split>/images/ and
<split>/annotations.json, and a data folder holds train/ and val/. `--data shapes` is the one that names the
synthetic shapes data (data/shapes, generated there when missing); nothing else is ever generated.
Nothing the user owns is overwritten: a non-empty --out needs --resume or --overwrite, predict never writes into
the folders it reads, and every argument is checked before any work starts.
"""
import argparse
import ast
import json
import math
import os
import shutil
import sys
import tempfile
import time
import types
import typing
from dataclasses import fields
from pathlib import Path

import torch

from minimaskrcnn import checkpoints, distributed, engine
from minimaskrcnn.evaluation import format_metrics, predictions_to_coco
from minimaskrcnn.model import PRESET_TRAINING, PRESETS, MaskRCNNConfig

SHAPES_DIR = Path("data/shapes")  # where `--data shapes` lives, relative to the working directory (the repository)
SPLIT_FLAGS = ("train_images", "train_annotations", "val_images", "val_annotations")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PREDICTIONS_NAME = "results.json"


# ----------------------------------------------------------------------------------------------- argument types
def _number(kind, low: float, inclusive: bool = True, high: float = math.inf):
    """An argparse type: a finite `kind` (int or float) >= low (or > low when not inclusive) and <= high."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not math.isfinite(value):  # nan, inf: a learning rate or weight decay that turns every weight into NaN
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < low or (value == low and not inclusive) or value > high:
            bounds = f"between {low} and {high}" if high < math.inf else f"{'>=' if inclusive else '>'} {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int, non_negative_int = _number(int, 1), _number(int, 0)
positive_float, non_negative_float = _number(float, 0, inclusive=False), _number(float, 0)
probability = _number(float, 0, high=1)
seed_int = _number(int, 0, high=2**63 - 1)  # what torch.manual_seed takes


def device_name(text: str) -> str:
    """--device: a device torch knows and this machine has (cpu, cuda, cuda:1, mps ...)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; expected cpu, cuda, cuda:N, mps ...") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: no CUDA GPU is available here (use --device cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: no Apple GPU (MPS) is available here (use --device cpu)")
    return text


def _fits(value, kind) -> bool:
    """Whether a literal fits a MaskRCNNConfig field type (int, float, bool, str, tuple[...], X | None)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _as_tuples(value):
    """Lists (as "[8, 16]" reads) -> tuples, recursively: the config's sequences are tuples."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def parse_override(text: str):
    """"key=value" -> (key, value): value read as a Python literal ("(8,16)", "0.5", "gn" stays a string) and checked
    against the type of MaskRCNNConfig's field `key`."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    kinds = {f.name: f.type for f in fields(MaskRCNNConfig)}
    if key not in kinds:
        raise argparse.ArgumentTypeError(f"unknown config field {key!r}; MaskRCNNConfig has {', '.join(kinds)}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if not _fits(value, kinds[key]):
        kind = getattr(kinds[key], "__name__", str(kinds[key]))
        raise argparse.ArgumentTypeError(f"{key} must be {kind}, got {raw!r}")
    return key, _as_tuples(value)


def weights_source(text: str) -> str:
    """--weights: "coco", "imagenet" or an existing file."""
    if text in ("coco", "imagenet") or Path(text).is_file():
        return text
    raise argparse.ArgumentTypeError(f"expected coco, imagenet or a weights file; {text!r} is neither (no such file)")


# ------------------------------------------------------------------------------------------------------- data
def fail(command: str, message: str):
    """Stop the command with a message in argparse's error format (exit status 1)."""
    raise SystemExit(f"python -m minimaskrcnn {command}: error: {message}")


def folder_splits(data: Path, names=("train", "val")) -> dict[str, tuple[Path, Path]]:
    """{split: (images dir, annotations file)} of a data folder laid out <data>/<split>/{images, annotations.json}."""
    return {name: (data / name / "images", data / name / "annotations.json") for name in names}


def check_split_paths(command: str, splits: dict[str, tuple[Path, Path]]) -> None:
    """Refuse a split whose images folder or annotation file does not exist, naming it."""
    for name, (images, annotations) in splits.items():
        if not annotations.is_file():
            fail(command, f"{name} split: no annotation file {annotations}")
        if not images.is_dir():
            fail(command, f"{name} split: no images folder {images}")


def train_splits(args) -> dict[str, tuple[Path, Path]]:
    """The train and val splits that `train` was given: the folder layout (--data) or the four explicit paths."""
    given = [flag for flag in SPLIT_FLAGS if getattr(args, flag)]
    option = lambda flag: "--" + flag.replace("_", "-")  # noqa: E731
    if args.data and given:
        fail("train", f"--data and {', '.join(map(option, given))} are alternatives; give one")
    if given:
        missing = [option(flag) for flag in SPLIT_FLAGS if flag not in given]
        if missing:
            fail("train", f"missing {', '.join(missing)}: explicit splits need all four of "
                          f"{', '.join(map(option, SPLIT_FLAGS))} (a missing validation split is never substituted)")
        return {"train": (Path(args.train_images), Path(args.train_annotations)),
                "val": (Path(args.val_images), Path(args.val_annotations))}
    if not args.data:
        fail("train", "no data: give --data DIR (with train/ and val/), --data shapes (the synthetic shapes, "
                      "generated in data/shapes when missing) or --train-images/--train-annotations/--val-images/"
                      "--val-annotations")
    return folder_splits(SHAPES_DIR if args.data == "shapes" else Path(args.data))


def prepare_shapes(num_train: int, num_val: int, image_size: int) -> None:
    """Generate the shapes data in data/shapes/train and data/shapes/val where missing (seeds 1 and 2).

    Each split is written into a hidden temporary folder renamed into place when complete: an interrupted run leaves
    no half split behind, and a folder that is there without annotations.json (not ours) is refused, not written over.
    """
    from minimaskrcnn.data import make_shapes

    for split, num, seed in (("train", num_train, 1), ("val", num_val, 2)):
        folder = SHAPES_DIR / split
        if (folder / "annotations.json").is_file():
            continue
        if folder.exists() and any(folder.iterdir()):
            fail("train", f"{folder} exists without annotations.json; it was not made by minimaskrcnn, so it is not "
                          "written over: move it away to have the shapes generated there")
        SHAPES_DIR.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{split}-", dir=SHAPES_DIR))
        try:
            t0 = time.perf_counter()
            make_shapes(tmp, num_images=num, image_size=image_size, seed=seed)
            os.replace(tmp, folder)  # an empty folder is replaced too
            print(f"generated {num} shapes images in {folder} ({time.perf_counter() - t0:.1f} s)")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _problem_list(problems: list[str], limit: int = 20) -> str:
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return "\n  " + "\n  ".join(problems[:limit]) + more


def categories_of(category_ids, class_names) -> dict[int, str]:
    """{COCO category id: name} from a dataset's / checkpoint's category_ids and class_names ([0] = background)."""
    labels = category_ids.items() if isinstance(category_ids, dict) else enumerate(category_ids)
    return {int(cat): class_names[int(label)] for label, cat in labels if int(label) > 0}


def category_differences(first: dict[int, str], second: dict[int, str], names: tuple[str, str]) -> list[str]:
    """What differs between two {category id: name} maps, one line per id (empty when they agree)."""
    lines = []
    for cat in sorted(set(first) | set(second)):
        if cat not in second:
            lines.append(f"category id {cat} ({first[cat]!r}) only in {names[0]}")
        elif cat not in first:
            lines.append(f"category id {cat} ({second[cat]!r}) only in {names[1]}")
        elif first[cat] != second[cat]:
            lines.append(f"category id {cat} is {first[cat]!r} in {names[0]} but {second[cat]!r} in {names[1]}")
    return lines


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run in a non-empty --out unless told --overwrite (or --resume with a checkpoint).

    The side files of a run of ours stopped before its first checkpoint (.metrics.jsonl.new, .checkpoint.pt.tmp*)
    do not count: a new run replaces them.
    """
    if out.exists() and not out.is_dir():
        fail("train", f"--out {out} is a file, not a folder")
    ours = (f".{engine.METRICS_NAME}", f".{checkpoints.CHECKPOINT_NAME}")
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith(ours)) if out.is_dir() else []
    if not entries or overwrite or (resume and (out / checkpoints.CHECKPOINT_NAME).is_file()):
        return
    held = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    if resume:
        fail("train", f"--resume: {out} holds {held} but no {checkpoints.CHECKPOINT_NAME} to resume from; pass "
                      "--overwrite to start a new run there anyway, or choose another --out")
    if checkpoints.CHECKPOINT_NAME in entries:
        fail("train", f"{out} already holds a run ({held}); pass --resume to continue it, --overwrite to start a new "
                      "run over it (its checkpoint, metrics and pictures are replaced), or choose another --out")
    fail("train", f"{out} is not empty (it holds {held}); pass --overwrite to write a run there anyway, or choose "
                  "another --out")


# ------------------------------------------------------------------------------------------------------ train
def check_model(preset: str, overrides: dict, weights: str | None) -> None:
    """Refuse, before any download or data work, overrides the model cannot be built with, and a model that
    torchvision's published weights (--weights coco | imagenet) cannot fill; a local file is checked when loaded.

    The models are built on the meta device: shapes only, no memory, next to no time.
    """
    from minimaskrcnn.model import build_model
    from minimaskrcnn.weights import PREDICTOR_PREFIXES

    with torch.device("meta"):
        try:
            model = build_model(preset, 2, **overrides)
        except (TypeError, ValueError) as error:
            fail("train", f"--override: {error}")
        if weights not in ("coco", "imagenet"):
            return
        reference = build_model("r50_fpn", 2)
    ours, theirs = model.state_dict(), reference.state_dict()
    if weights == "imagenet":
        keys = [k for k in theirs if k.startswith("backbone.body.")]
    else:
        keys = [k for k in theirs if not k.startswith(PREDICTOR_PREFIXES)]
    misfit = [k for k in keys if k not in ours or ours[k].shape != theirs[k].shape]
    extra = [k for k in ours if k.startswith("backbone.body.") and k not in theirs]
    if misfit or extra:
        fail("train", f"--weights {weights} are torchvision's ResNet-50 {'' if weights == 'imagenet' else 'FPN '}"
                      f"weights; they fit --preset r50_fpn with frozen (or trainable) batch norm, not --preset {preset}"
                      f" with overrides {overrides or '{}'} (e.g. {(misfit + extra)[0]} differs)")


def cmd_train(args) -> int:
    recipe = PRESET_TRAINING[args.preset]  # what the command line does not say, the preset's recipe does
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else getattr(recipe, name)  # noqa: E731
    if args.data != "shapes" and any(getattr(args, n) is not None for n in ("num_train", "num_val", "image_size")):
        fail("train", "--num-train, --num-val and --image-size size the generated shapes data: only with --data shapes")
    splits = train_splits(args)
    out = Path(args.out or f"runs/{args.preset}")
    check_out_dir(out, args.resume, args.overwrite)
    overrides = dict(args.override)
    check_model(args.preset, overrides, args.weights)
    resuming = args.resume and (out / checkpoints.CHECKPOINT_NAME).is_file()

    from minimaskrcnn.data import check_dataset

    rank, world, _ = distributed.init_distributed()
    if rank == 0 and args.data == "shapes":
        prepare_shapes(pick("num_train"), pick("num_val"), pick("image_size"))
    if rank == 0:  # every image decoded and every annotation checked before the first step
        check_split_paths("train", splits)
        for name, (images, annotations) in splits.items():
            t0 = time.perf_counter()
            problems = check_dataset(images, annotations, progress=True)
            if problems:
                fail("train", f"the {name} split ({annotations}) has {len(problems)} problem(s):"
                              f"{_problem_list(problems)}")
            print(f"checked the {name} split ({annotations}) in {time.perf_counter() - t0:.1f} s: no problems")
    distributed.barrier()  # the other processes wait for rank 0's data checks
    from minimaskrcnn.data import CocoDataset
    from minimaskrcnn.model import build_model
    from minimaskrcnn.transforms import RandomHorizontalFlip

    train_set = CocoDataset(*splits["train"], transforms=RandomHorizontalFlip(0.5))
    val_set = CocoDataset(*splits["val"])
    differences = category_differences(categories_of(train_set.category_ids, train_set.class_names),
                                       categories_of(val_set.category_ids, val_set.class_names),
                                       (str(splits["train"][1]), str(splits["val"][1])))
    if differences:
        fail("train", "the train and val splits have different categories:" + _problem_list(differences))
    if math.ceil(len(train_set) / world) < pick("batch_size"):
        fail("train", f"--batch-size {pick('batch_size')} is more than the {len(train_set)} training images of "
                      f"{splits['train'][1]} give each of {world} process(es); lower it")
    num_classes = len(train_set.class_names)  # background included, as torchvision
    torch.manual_seed(args.seed)  # the initial weights too (every rank the same; DDP broadcasts rank 0's anyway)
    model = build_model(args.preset, num_classes, **overrides)
    if args.weights and not resuming:
        from minimaskrcnn.weights import load_initial_weights

        try:
            account = load_initial_weights(model, args.weights)
        except ValueError as error:
            fail("train", f"--weights {args.weights}: {error}")
        if rank == 0:
            print(f"initial weights: {account}")
    cfg = engine.TrainConfig(
        steps=pick("steps"), batch_size=pick("batch_size"), optimizer=pick("optimizer"), lr=pick("lr"),
        weight_decay=pick("weight_decay"), warmup_steps=pick("warmup_steps"),
        schedule=args.schedule, seed=args.seed, eval_every=pick("eval_every"), checkpoint_every=args.checkpoint_every,
        log_every=args.log_every, num_workers=args.workers, amp=not args.no_amp, progress=not args.no_progress)
    info = {"preset": args.preset, "overrides": overrides, "weights": args.weights,
            "class_names": list(train_set.class_names), "category_ids": _plain(train_set.category_ids)}
    if resuming:  # a checkpoint that cannot be read or continued is refused before training, not in a traceback
        path = out / checkpoints.CHECKPOINT_NAME
        try:
            checkpoints.check_resumable(checkpoints.load_checkpoint(path), cfg,
                                        {**info, **checkpoints.describe_model(model)},
                                        checkpoints.dataset_fingerprint(train_set), path)
        except ValueError as error:
            fail("train", f"--resume: {error}")
    device = torch.device(args.device) if args.device else distributed.default_device()
    if rank == 0:
        print(f"training {args.preset} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) on "
              f"{len(train_set)} images, {cfg.steps} steps of {cfg.batch_size} x {world} process(es), {device}")
    t0 = time.perf_counter()
    result = engine.train(model, train_set, cfg, out_dir=out, val_set=val_set, device=device, resume=args.resume,
                          model_info=info, stop_at=args.stop_at)
    if rank == 0:
        print(f"trained to step {result.step} in {time.perf_counter() - t0:.1f} s; "
              f"checkpoint {out / checkpoints.CHECKPOINT_NAME}")
        if result.metrics is not None:
            print(format_metrics(result.metrics))
            (out / "eval.json").write_text(json.dumps(result.metrics, indent=1))
            predictions_picture(model, val_set, out / "predictions.png", device)
            print(f"wrote {out / engine.LOSS_PLOT_NAME}, {out / 'predictions.png'} and {out / 'eval.json'}")
    distributed.cleanup_distributed()
    return 0


def _plain(mapping):
    """category_ids as a JSON/torch.save-friendly list or dict of ints."""
    return {int(k): int(v) for k, v in mapping.items()} if isinstance(mapping, dict) else [int(v) for v in mapping]


def predictions_picture(model, dataset, path: Path, device, count: int = 8, score_threshold: float = 0.5) -> None:
    """Save a grid of the first `count` images of `dataset` with the model's detections."""
    from minimaskrcnn.viz.train import plot_prediction_grid

    images = [dataset[i][0] for i in range(min(count, len(dataset)))]
    with torch.no_grad():
        preds = [{k: v.cpu() for k, v in p.items()} for p in model.eval()([im.to(device) for im in images])]
    fig = plot_prediction_grid(images, preds, dataset.class_names, score_threshold)
    fig.savefig(path, dpi=100, bbox_inches="tight")


# --------------------------------------------------------------------------------------------------- evaluate
def load_model(command: str, path):
    """checkpoints.model_from_checkpoint(path), its refusals (no such file, not a plain-data checkpoint of ours,
    weights that do not fit the config it records) as this command's error."""
    try:
        return checkpoints.model_from_checkpoint(path)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        fail(command, f"--checkpoint: {error}")


def check_output_file(command: str, out: Path, overwrite: bool, inputs: list[Path]) -> None:
    """Refuse an output file that is one of the command's inputs, a folder, or (without --overwrite) exists."""
    if any(out.resolve() == path.resolve() for path in inputs):
        fail(command, f"--out {out} is one of the inputs; write the output elsewhere")
    if out.is_dir():
        fail(command, f"--out {out} is a folder; name a file")
    if out.exists() and not overwrite:
        fail(command, f"--out {out} exists already; pass --overwrite to replace it, or choose another file")


def checkpoint_categories(command: str, ckpt: dict, path) -> tuple[dict[int, str], dict]:
    """({category id: name}, model_info) of a checkpoint; refused when it does not record its categories."""
    info = ckpt.get("model_info") or {}
    if not info.get("class_names") or info.get("category_ids") is None:
        fail(command, f"{path} records no class names / category ids: it cannot say what its labels mean")
    return categories_of(info["category_ids"], info["class_names"]), info


def cmd_evaluate(args) -> int:
    if args.data and (args.images or args.annotations):
        fail("evaluate", "--data and --images/--annotations are alternatives; give one")
    if args.data:
        data = Path(args.data)
        split = args.split or ("." if (data / "annotations.json").is_file() else "val")
        images, annotations = (data / split / "images", data / split / "annotations.json")
    elif args.images and args.annotations:
        images, annotations = Path(args.images), Path(args.annotations)
    else:
        fail("evaluate", "give --data (a split folder, or one with val/) or both --images and --annotations")
    check_split_paths("evaluate", {"evaluation": (images, annotations)})
    if args.out:
        check_output_file("evaluate", Path(args.out), args.overwrite, [annotations, Path(args.checkpoint)])
    distributed.init_distributed()
    model, ckpt = load_model("evaluate", args.checkpoint)
    trained, info = checkpoint_categories("evaluate", ckpt, args.checkpoint)
    from minimaskrcnn.data import CocoDataset, check_dataset

    problems = check_dataset(images, annotations)
    if problems:
        fail("evaluate", f"{annotations} has {len(problems)} problem(s):{_problem_list(problems)}")
    dataset = CocoDataset(images, annotations)
    differences = category_differences(trained, categories_of(dataset.category_ids, dataset.class_names),
                                       (f"the checkpoint {args.checkpoint}", str(annotations)))
    if differences:  # labels are the checkpoint's: the file's categories must be the same ids with the same names
        fail("evaluate", "the checkpoint and the annotation file have different categories:"
                         + _problem_list(differences))
    device = torch.device(args.device) if args.device else distributed.default_device()
    model.to(device)
    metrics = engine.evaluate(model, dataset, device, batch_size=args.batch_size, category_ids=info["category_ids"])
    if distributed.get_rank() == 0:
        print(format_metrics(metrics))
        if args.out:
            Path(args.out).write_text(json.dumps(metrics, indent=1))
    distributed.cleanup_distributed()
    return 0


# ---------------------------------------------------------------------------------------------------- predict
def collect_images(inputs: list[str]) -> list[Path]:
    """Image files named or found (not recursively) in the folders named; refused when there are none."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            fail("predict", f"{item} is neither an image file nor a folder")
    if not files:
        fail("predict", f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(inputs)}")
    return files


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_predict_outputs(files: list[Path], inputs: list[str], out: Path, overwrite: bool) -> dict[Path, Path]:
    """{input image: output picture}, after refusing an --out that is, holds or lies in a folder of the inputs, two
    inputs that would write one picture, and (without --overwrite) outputs that exist already."""
    if out.exists() and not out.is_dir():
        fail("predict", f"--out {out} is a file, not a folder")
    out = out.resolve()
    folders = {Path(i).resolve() if Path(i).is_dir() else Path(i).resolve().parent for i in inputs}
    for folder in sorted(folders):
        if _inside(out, folder) or _inside(folder, out):
            fail("predict", f"--out {out} {'is' if out == folder else 'holds' if _inside(folder, out) else 'is in'} "
                            f"the folder of inputs {folder}; write the predictions elsewhere")
    targets, seen = {}, {}
    for path in files:
        target = out / f"{path.stem}.png"
        if target in seen:
            fail("predict", f"{seen[target]} and {path} would both write {target}; predict them into separate --out "
                            "folders")
        seen[target], targets[path] = path, target
    if not overwrite:
        existing = [p for p in [*targets.values(), out / PREDICTIONS_NAME] if p.exists()]
        if existing:
            fail("predict", f"{len(existing)} output file(s) exist already ({', '.join(map(str, existing[:3]))}); "
                            "pass --overwrite to replace them, or choose another --out")
    return targets


def cmd_predict(args) -> int:
    from minimaskrcnn.data import read_image
    from minimaskrcnn.viz.train import plot_prediction_grid

    files = collect_images(args.inputs)
    targets = check_predict_outputs(files, args.inputs, Path(args.out), args.overwrite)
    ids = {}
    if args.annotations:
        try:
            entries = json.loads(Path(args.annotations).read_text())["images"]
            ids = {Path(im["file_name"]).name: im["id"] for im in entries}
        except (OSError, ValueError, KeyError, TypeError) as error:
            fail("predict", f"--annotations {args.annotations}: not a COCO file whose images have 'file_name' and "
                            f"'id' ({type(error).__name__}: {error})")
        missing = [f.name for f in files if f.name not in ids]
        if missing:
            fail("predict", f"{args.annotations} has no image entry for {missing[:5]}")
    model, ckpt = load_model("predict", args.checkpoint)
    _, info = checkpoint_categories("predict", ckpt, args.checkpoint)
    device = torch.device(args.device) if args.device else distributed.default_device()
    model.to(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    unreadable = []
    for path, target in targets.items():
        try:
            image = read_image(path)
        except ValueError as error:  # a corrupt photo among many: the others are still predicted, and it is named
            unreadable.append(str(error))
            print(f"skipped {error}")
            continue
        with torch.no_grad():
            (pred,) = model([image.to(device)])
        pred = {k: v.cpu() for k, v in pred.items()}
        results += predictions_to_coco([pred], [ids.get(path.name, path.name)], info["category_ids"])
        fig = plot_prediction_grid([image], [pred], info["class_names"], args.score_threshold, titles=[path.name])
        fig.savefig(target, dpi=100, bbox_inches="tight")
        kept = int((pred["scores"] >= args.score_threshold).sum())
        print(f"{path.name}: {kept} detections >= {args.score_threshold}")
    (out / PREDICTIONS_NAME).write_text(json.dumps(results))
    print(f"wrote {len(files) - len(unreadable)} pictures and {out / PREDICTIONS_NAME} ({len(results)} detections)")
    if unreadable:
        fail("predict", f"{len(unreadable)} image(s) could not be read and were skipped:{_problem_list(unreadable)}")
    return 0


# ------------------------------------------------------------------------------------------------- check-data
def cmd_check_data(args) -> int:
    if args.data and (args.images or args.annotations):
        fail("check-data", "--data and --images/--annotations are alternatives; give one")
    if args.data:
        data = Path(args.data)
        if (data / "annotations.json").is_file():
            splits = {str(data): (data / "images", data / "annotations.json")}
        else:
            splits = {name: pair for name, pair in folder_splits(data).items() if pair[1].is_file()}
            if not splits:
                fail("check-data", f"{data} holds neither annotations.json nor train/ or val/ with one")
    elif args.images and args.annotations:
        splits = {"split": (Path(args.images), Path(args.annotations))}
    else:
        fail("check-data", "give --data (a split folder, or one with train/ and val/) or both --images and "
                           "--annotations")
    check_split_paths("check-data", splits)
    from minimaskrcnn.data import CocoDataset, check_dataset

    total = 0
    for name, (images, annotations) in splits.items():
        problems = check_dataset(images, annotations, progress=True)
        total += len(problems)
        for problem in problems:
            print(problem)
        if not problems:
            dataset = CocoDataset(images, annotations)
            print(f"OK: {annotations}: {len(dataset)} images, {len(dataset.coco.dataset['annotations'])} annotations, "
                  f"categories {categories_of(dataset.category_ids, dataset.class_names)}")
    if total:
        print(f"{total} problem(s)")
    return 1 if total else 0


# ------------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minimaskrcnn", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a preset on COCO-format splits, evaluate, plot",
                       description="Check the data, train, evaluate on val, write checkpoint.pt, metrics.jsonl, "
                                   "loss_curve.png, predictions.png and eval.json into --out. Works under torchrun.")
    t.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                   help="model and training recipe (minimaskrcnn.model.PRESETS, PRESET_TRAINING; default tiny): tiny "
                        "(CPU, from scratch), r50_fpn (the reference model, for --weights coco|imagenet), r50_fpn_gn "
                        "(ResNet-50-FPN with GroupNorm, from scratch)")
    t.add_argument("--data", help="folder with train/ and val/ (each images/ + annotations.json); 'shapes' = the "
                                  "synthetic shapes in data/shapes, generated there when missing")
    t.add_argument("--train-images", help="folder of the training images (with the three flags below)")
    t.add_argument("--train-annotations", help="COCO instances file of the training images")
    t.add_argument("--val-images", help="folder of the validation images")
    t.add_argument("--val-annotations", help="COCO instances file of the validation images")
    t.add_argument("--weights", type=weights_source, help="start from: coco (torchvision's COCO Mask R-CNN, predictors "
                   "re-initialised for your classes), imagenet (ResNet-50 backbone), or a file (a torchvision state "
                   "dict or a minimaskrcnn checkpoint); coco and imagenet need --preset r50_fpn and download once")
    t.add_argument("--out", help="run folder for checkpoint, metrics and pictures (default runs/PRESET)")
    t.add_argument("--steps", type=positive_int, help="optimiser steps (default: per preset)")
    t.add_argument("--batch-size", type=positive_int, help="images per step per process (default: per preset)")
    t.add_argument("--optimizer", choices=("sgd", "adamw"), help="optimiser (default: per preset)")
    t.add_argument("--weight-decay", type=non_negative_float, help="weight decay (default: per preset)")
    t.add_argument("--lr", type=positive_float, help="peak learning rate (default: per preset)")
    t.add_argument("--warmup-steps", type=non_negative_int, help="linear warm-up steps (default: per preset)")
    t.add_argument("--schedule", default="cosine", choices=("cosine", "step"), help="decay after warm-up")
    t.add_argument("--num-train", type=positive_int, help="--data shapes: images to generate for train when missing")
    t.add_argument("--num-val", type=positive_int, help="--data shapes: images to generate for val when missing")
    t.add_argument("--image-size", type=positive_int, help="--data shapes: side of generated images (default: per "
                                                           "preset)")
    t.add_argument("--override", action="append", type=parse_override, default=[], metavar="KEY=VALUE",
                   help="model config override, repeatable, e.g. --override rpn_post_nms_top_n_train=300")
    t.add_argument("--seed", type=seed_int, default=0,
                   help="seed of the initial weights, data order, augmentation and sampling")
    t.add_argument("--eval-every", type=non_negative_int,
                   help="evaluate every N steps (0: at the end only; default: per preset)")
    t.add_argument("--checkpoint-every", type=positive_int, default=100, help="checkpoint every N steps")
    t.add_argument("--log-every", type=positive_int, default=10, help="metrics record every N steps")
    t.add_argument("--stop-at", type=positive_int, help="stop after this step (the schedule still spans --steps)")
    again = t.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt when it exists")
    again.add_argument("--overwrite", action="store_true", help="start a new run in a non-empty --out")
    t.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    t.add_argument("--device", type=device_name, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    t.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="COCO bbox/segm AP of a checkpoint on a COCO-format split",
                       description="Print AP, AP50, AP75, APs/m/l and per-class AP (pycocotools). The split's "
                                   "categories must be the checkpoint's (same ids, same names).")
    e.add_argument("--checkpoint", required=True, help="checkpoint.pt written by train")
    e.add_argument("--data", help="a split folder (images/ + annotations.json) or one with val/")
    e.add_argument("--split", help="subfolder of --data to evaluate (default: val, or --data itself)")
    e.add_argument("--images", help="folder of the images (with --annotations, instead of --data)")
    e.add_argument("--annotations", help="COCO instances file of those images")
    e.add_argument("--batch-size", type=positive_int, default=8, help="images per inference batch")
    e.add_argument("--out", help="also write the metrics to this JSON file (a new file unless --overwrite)")
    e.add_argument("--overwrite", action="store_true", help="replace the --out file when it exists")
    e.add_argument("--device", type=device_name, help="cpu, cuda ... (default: cuda when available)")
    e.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="detect in images; a picture per image and one COCO results JSON",
                       description="Writes OUT/<image>.png and OUT/results.json (COCO results, RLE masks, the "
                                   "checkpoint's category ids). --out may not be, hold or lie in an input folder. "
                                   "An unreadable image is skipped and named; the exit status is then 1.")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by train")
    p.add_argument("--out", required=True, help="output folder (not an input folder)")
    p.add_argument("--overwrite", action="store_true", help="replace output files that exist already")
    p.add_argument("--annotations", help="COCO JSON whose images map file names to image ids (default: the file name)")
    p.add_argument("--score-threshold", type=probability, default=0.5, help="lowest score drawn in the pictures")
    p.add_argument("--device", type=device_name, help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders of images")
    p.set_defaults(func=cmd_predict)

    c = sub.add_parser("check-data", help="check a COCO-format dataset: every image decoded, every annotation",
                       description="Print every problem (file, image id, annotation id, field, value); exit 1 if any.")
    c.add_argument("--data", help="a split folder (images/ + annotations.json) or one with train/ and/or val/")
    c.add_argument("--images", help="folder of the images (with --annotations, instead of --data)")
    c.add_argument("--annotations", help="COCO instances file of those images")
    c.set_defaults(func=cmd_check_data)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
