"""Checkpoints: the file a training run writes and resumes from, and the model it describes.

Built in notebooks/11_train_on_gpu.ipynb.

Safe to write: `save_checkpoint` writes a temporary file and renames it over the previous one (os.replace), so a
process killed at any moment leaves either the previous checkpoint or the new one, never half a file.
Safe to read: a checkpoint holds tensors and plain data only and is read with `torch.load(weights_only=True)`, so a
file cannot run code when loaded; anything else is refused, naming what it holds (`unpickling_refusal`).
Self-describing: besides the weights, optimiser, grad scaler and generator states (engine.train writes them), it
records the model's full config and number of classes (`describe_model`; `model_from_checkpoint` rebuilds the model
from them), the class names and category ids, the training config and a fingerprint of the training set
(`dataset_fingerprint`); `check_resumable` refuses to resume a run whose model, data or setup differ.
Its layout is versioned by `FORMAT_VERSION`.

Shape glossary
    none of its own: the tensors are state dicts and generator states, stored with the shapes they have
"""
import hashlib
import io
import json
import os
import pickle
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

import torch

from minimaskrcnn.distributed import unwrap

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 2  # 1: numpy RNG state and a preset name (needed full unpickling); 2: plain data, full config


# ------------------------------------------------------------------------------------------------ file I/O
def save_checkpoint(path, **state) -> None:
    """torch.save(state) to a temporary file next to `path`, flushed to disk, then renamed over `path` (atomic).

    On an OSError (disk full, ...) the temporary file is removed, the previous checkpoint at `path` is left as it was,
    and an OSError saying so is raised. Built in notebooks/11_train_on_gpu.ipynb.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        kept = f"the previous checkpoint {path} is left intact" if path.exists() else "no checkpoint was written"
        raise OSError(err.errno, f"could not write checkpoint {path} ({err.strerror or err}); {kept}") from err


def load_checkpoint(path, map_location="cpu") -> dict:
    """The dict `train` saved at `path`, read with torch.load(weights_only=True): tensors and plain data only.

    A file holding anything else (a pickled object that could run code when loaded) is refused with a ValueError
    naming what it holds, and so is a checkpoint of another format version (format 1, written by minimaskrcnn before
    checkpoints were plain data, included). Built in notebooks/11_train_on_gpu.ipynb.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(unpickling_refusal(path, err)) from None
    except (RuntimeError, EOFError) as err:  # not a torch.save file at all (empty, truncated, another format)
        raise ValueError(f"{path} is not a readable checkpoint: {str(err) or 'the file is empty'}") from None
    version = ckpt.get("format_version") if isinstance(ckpt, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} is not a minimaskrcnn checkpoint of format {FORMAT_VERSION} (format_version: "
                         f"{version}); it was written by another version of minimaskrcnn or by something else")
    return ckpt


def unpickling_refusal(path: Path, err: Exception) -> str:
    """Why a file that torch.load(weights_only=True) rejected is refused (load_checkpoint, weights.read_weights_file),
    naming the globals it would import -- never torch's advice to retry with weights_only=False.
    No notebook shows it on its own (notebooks/11_train_on_gpu.ipynb loads checkpoints through load_checkpoint)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a file too broken to list them: the loader's own message says enough
        names = []
    if names and all(name.startswith("numpy") for name in names):
        return (f"{path} was written by an older version of minimaskrcnn (checkpoint format 1, numpy objects "
                f"{names}); this version reads only plain-data checkpoints (format {FORMAT_VERSION}) and will not "
                f"unpickle it. Retrain, or, only if you trust the file, load it yourself and re-save its 'model' "
                f"state dict")
    if not names:  # not a pickle of objects at all: torch's reason follows "WeightsUnpickler error:"
        lines = [line.strip() for line in str(err).split("WeightsUnpickler error:")[-1].splitlines() if line.strip()]
        return f"{path} is not a readable checkpoint ({lines[0] if lines else type(err).__name__})"
    return (f"{path} holds objects other than tensors and plain data ({', '.join(names)}); unpickling them could "
            f"run code, so the file is refused")


# ------------------------------------------------------------------------------------------- what it describes
def check_plain(name: str, value) -> None:
    """Refuse `value` unless torch.load(weights_only=True) can read it back (tensors and plain data only)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = next((line for line in str(err).splitlines() if "GLOBAL" in line), str(err).splitlines()[-1])
        raise TypeError(f"{name} must hold only tensors and plain data (str, int, float, bool, None, lists, tuples, "
                        f"dicts) so that checkpoints load with weights_only=True; it holds {detail.strip()}") from None


def as_lists(value):
    """Tuples (nested too) as lists: a config as checkpoints store and compare it."""
    if isinstance(value, (list, tuple)):
        return [as_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: as_lists(v) for k, v in value.items()}
    return value


def as_tuples(value):
    """Lists (nested too) back to tuples: the config dataclasses hold tuples."""
    return tuple(as_tuples(v) for v in value) if isinstance(value, list) else value


def describe_model(model) -> dict:
    """{"config": asdict(model.cfg) with tuples as lists, "num_classes"} of a (possibly DDP-wrapped) model.

    Both are None for a model without a dataclass `.cfg` / a `.num_classes` (e.g. a toy model in the tests).
    Built in notebooks/11_train_on_gpu.ipynb.
    """
    bare = unwrap(model)
    cfg = getattr(bare, "cfg", None)
    config = as_lists(asdict(cfg)) if cfg is not None and is_dataclass(cfg) else None
    return {"config": config, "num_classes": getattr(bare, "num_classes", None)}


def dataset_fingerprint(dataset) -> dict:
    """{"num_images", "image_ids_sha256", "annotations_sha256"}: digests of the ordered `.image_ids` and, for a
    dataset with a pycocotools `.coco` (CocoDataset), of every annotation's id, image id, category id, crowd flag,
    box and area (an edited mask changes its box or area) -- None when the dataset has no such attribute.

    Built in notebooks/11_train_on_gpu.ipynb.
    """
    ids, coco = getattr(dataset, "image_ids", None), getattr(dataset, "coco", None)
    digest = hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest() if ids is not None else None
    annotations = None
    if coco is not None:
        rows = sorted([a["id"], a["image_id"], a["category_id"], a["iscrowd"], a["area"], *a["bbox"]]
                      for a in coco.dataset["annotations"])
        annotations = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    return {"num_images": len(dataset), "image_ids_sha256": digest, "annotations_sha256": annotations}


def model_from_checkpoint(path, map_location="cpu"):
    """Rebuild the MaskRCNN saved by `train` from the full config and num_classes its checkpoint records.

    Returns (model in eval mode, checkpoint dict). Built in notebooks/11_train_on_gpu.ipynb.
    """
    from minimaskrcnn.model import MaskRCNN, MaskRCNNConfig

    ckpt = load_checkpoint(path, map_location)
    info = ckpt.get("model_info") or {}
    if info.get("config") is None or info.get("num_classes") is None:
        raise ValueError(f"checkpoint {path} has no model config / num_classes in model_info: it was not written by "
                         f"train() for a MaskRCNN")
    unknown = sorted(set(info["config"]) - {f.name for f in fields(MaskRCNNConfig)})
    if unknown:
        raise ValueError(f"checkpoint {path}: model config fields {unknown} are unknown to this version of "
                         f"minimaskrcnn (written by a newer version?)")
    config = MaskRCNNConfig(**{k: as_tuples(v) for k, v in info["config"].items()})
    model = MaskRCNN(config, info["num_classes"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


# ------------------------------------------------------------------------------------------------------ resume
# Resuming with other values of these TrainConfig fields is fine: they do not change what the run computes.
FREE_FIELDS = ("log_every", "eval_every", "checkpoint_every", "num_workers", "eval_batch_size", "progress",
               "find_unused_parameters", "max_nonfinite")
# Changes to these are honoured: the rate of step t is always lr * WarmupSchedule(current config)(t).
SCHEDULE_FIELDS = ("steps", "lr", "warmup_steps", "warmup_factor", "schedule", "milestones", "gamma")


def check_resumable(ckpt: dict, cfg, model_info: dict, fingerprint: dict, path="checkpoint") -> None:
    """Refuse to resume from `ckpt` when the model, its classes, the training set or a field of cfg (the run's
    engine.TrainConfig) that is neither free nor a schedule field differ from the current run (ValueError listing
    `field: saved -> now`).

    model_info: `describe_model` of the current model, with the run's `class_names` and `category_ids` when it has
    them (compared too: the same number of classes may mean other classes); fingerprint: `dataset_fingerprint` of the
    current training set.
    Built in notebooks/11_train_on_gpu.ipynb.
    """
    saved_info, saved_cfg, now_cfg = ckpt.get("model_info") or {}, ckpt["train_config"], as_lists(asdict(cfg))
    pairs = {f"model.{k}": (as_lists(saved_info.get(k)), as_lists(model_info.get(k)))
             for k in ("num_classes", "class_names", "category_ids") if k == "num_classes" or k in model_info}
    saved_model, now_model = saved_info.get("config") or {}, model_info["config"] or {}
    pairs |= {f"model.config.{k}": (saved_model.get(k), now_model.get(k)) for k in {*saved_model, *now_model}}
    pairs |= {f"dataset.{k}": (ckpt["dataset"][k], v) for k, v in fingerprint.items()
              if k in ckpt["dataset"]}  # annotations_sha256: not in checkpoints written before it was added
    pairs |= {f"train_config.{k}": (saved_cfg.get(k), v) for k, v in now_cfg.items()
              if k not in FREE_FIELDS + SCHEDULE_FIELDS}
    differ = [f"  {name}: {saved!r} -> {now!r}" for name, (saved, now) in sorted(pairs.items()) if saved != now]
    if cfg.steps < ckpt["step"]:
        differ.append(f"  train_config.steps: {cfg.steps} is below the checkpoint's step {ckpt['step']}")
    if differ:
        raise ValueError(f"cannot resume from {path}: it was written for another model, data set or training "
                         f"setup (saved -> now):\n" + "\n".join(differ) +
                         "\nStart a fresh run (resume=False, another out_dir) or restore the original settings")
