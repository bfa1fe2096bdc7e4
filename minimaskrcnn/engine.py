"""Training engine: the optimisation loop, learning-rate schedule, checkpoints, resume, evaluation, distributed runs.

Built in notebooks/11_train_on_gpu.ipynb.

The loop counts optimiser *steps*, not epochs, and everything random depends only on (seed, step):
- data order: a DistributedSampler (one replica when not distributed) reshuffled with `set_epoch(epoch)`, where
  epoch = step // steps_per_epoch; a resumed run skips the batches of the current epoch already seen;
- augmentation: each sample is loaded under its own seed derived from (seed, epoch, index) (`SeededDataset`);
- the model's own randomness (RPN / RoI sampling): torch's generator is re-seeded from (seed, step, rank) before
  every step.
So a run stopped after any checkpoint and resumed ends with the same weights as an uninterrupted run (on the CPU).

Checkpoints are written atomically (temporary file, then os.replace): a process killed at any moment leaves either
the previous checkpoint or the new one, never half a file. They hold tensors and plain data only and are read with
`torch.load(weights_only=True)`, so a checkpoint file cannot run code; they describe themselves (full model config,
number of classes, class names, category ids, training config, a fingerprint of the training set; format below
`FORMAT_VERSION`), and a resume refuses a checkpoint whose model or data differ from the current ones.

Shape glossary
    N      images per step on one process (TrainConfig.batch_size)
    P      number of processes (world size) under torchrun
"""
import errno
import hashlib
import io
import json
import math
import pickle
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm.auto import tqdm

from minimaskrcnn.evaluation import IOU_TYPES, coco_evaluate, merge_results, predict_dataset

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 2  # 1: numpy RNG state and a preset name (needed full unpickling); 2: plain data, full config
METRICS_NAME = "metrics.jsonl"
LOSS_PLOT_NAME = "loss_curve.png"


@dataclass
class TrainConfig:
    steps: int = 1000  # total optimiser steps of the run (the schedule spans them all)
    batch_size: int = 4  # images per step on each process
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adamw" (Adam, decoupled weight decay; betas (momentum, 0.999))
    lr: float = 0.02  # peak learning rate (after warm-up)
    momentum: float = 0.9  # SGD momentum; AdamW's first beta
    weight_decay: float = 1e-4  # SGD: L2 penalty on every trainable parameter; AdamW: decay rate (times lr)
    warmup_steps: int = 100  # linear warm-up length in steps
    warmup_factor: float = 0.001  # learning rate at step 0 as a fraction of `lr`
    schedule: str = "cosine"  # after warm-up: "cosine" (to 0 at the last step) or "step" (x gamma at milestones)
    milestones: tuple = (0.7, 0.9)  # "step" schedule: fractions of `steps` where the rate is multiplied by gamma
    gamma: float = 0.1  # "step" schedule decay factor
    clip_grad_norm: float | None = 10.0  # clip the global gradient norm to this (None: no clipping)
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16 + GradScaler); ignored on CPU
    seed: int = 0  # the one seed data order, augmentation and model sampling derive from
    log_every: int = 10  # write a metrics record every this many steps
    eval_every: int = 0  # evaluate on the validation set every this many steps (0: only at the end)
    checkpoint_every: int = 100  # write the checkpoint every this many steps (and always at the end)
    max_nonfinite: int = 5  # this many non-finite losses in a row stop the run with an error
    num_workers: int = 0  # DataLoader worker processes
    eval_batch_size: int = 8  # images per inference batch during evaluation
    progress: bool = True  # show a tqdm progress bar (rank 0 only)
    find_unused_parameters: bool = True  # passed to DistributedDataParallel

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"TrainConfig.optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"TrainConfig.schedule must be 'cosine' or 'step', got {self.schedule!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"TrainConfig: steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")


class WarmupSchedule:
    """Learning-rate multiplier of step t: linear warm-up from `warmup_factor` to 1, then cosine or step decay.

    `train` sets the rate of step t to cfg.lr * WarmupSchedule(cfg)(t): a function of the config and the step only,
    so nothing about the schedule needs saving and a resumed run follows the schedule of its current config.
    """

    def __init__(self, cfg: TrainConfig):
        self.total, self.warmup, self.factor = cfg.steps, cfg.warmup_steps, cfg.warmup_factor
        self.schedule, self.gamma = cfg.schedule, cfg.gamma
        self.milestones = [int(m * cfg.steps) for m in cfg.milestones]

    def __call__(self, step: int) -> float:
        warm = 1.0
        if step < self.warmup:
            alpha = step / self.warmup
            warm = self.factor * (1 - alpha) + alpha
        if self.schedule == "step":
            return warm * self.gamma ** sum(step >= m for m in self.milestones)
        progress = min(max(step - self.warmup, 0) / max(self.total - self.warmup, 1), 1.0)
        return warm * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------------- randomness
def _mix(*numbers: int) -> int:
    """A deterministic 63-bit seed from a few integers."""
    h = 0
    for n in numbers:
        h = (h * 1_000_003 + int(n) + 0x9E3779B9) % (2**63 - 1)
    return h


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a dataset so that item (index, seed) is loaded with every generator seeded by `seed`.

    Random transforms then depend only on the seed the sampler hands out, not on the process or worker that loads it.
    The caller's generator states are restored afterwards.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class StepBatchSampler(Sampler):
    """Yields the batches of steps start_step .. total_steps - 1 as lists of (index, sample seed).

    Epoch e is a DistributedSampler permutation with set_epoch(e) (num_replicas=1 outside torchrun), cut into
    steps_per_epoch batches of batch_size (an incomplete last batch is dropped).
    """

    def __init__(self, dataset_len, batch_size, seed, start_step, total_steps, rank=0, world_size=1):
        self.sampler = DistributedSampler(range(dataset_len), num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed, drop_last=False)
        self.batch_size, self.seed = batch_size, seed
        self.start_step, self.total_steps = start_step, total_steps
        self.steps_per_epoch = len(self.sampler) // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"StepBatchSampler: {dataset_len} images over {world_size} process(es) cannot fill one "
                             f"batch of {batch_size}; lower the batch size")

    def __len__(self):
        return self.total_steps - self.start_step

    def __iter__(self):
        step = self.start_step
        while step < self.total_steps:
            epoch, first = divmod(step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)
            for b in range(first, self.steps_per_epoch):
                if step >= self.total_steps:
                    return
                idx = order[b * self.batch_size:(b + 1) * self.batch_size]
                yield [(i, _mix(self.seed, epoch, i)) for i in idx]
                step += 1


def rng_states() -> dict:
    """Every generator's state as tensors and plain types (loadable with torch.load(weights_only=True)).

    torch: ByteTensor; cuda: one ByteTensor per GPU (only when CUDA is available); numpy: its MT19937 state with
    the 624 keys as an int64 Tensor[624]; python: random.getstate() (nested tuples of ints).
    Built in notebooks/11_train_on_gpu.ipynb.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore `rng_states()`. The states may lie on any device (a checkpoint written on a GPU); CUDA generators are
    restored only when CUDA is available here. Built in notebooks/11_train_on_gpu.ipynb."""
    torch.set_rng_state(states["torch"].cpu())
    numpy = states["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].cpu().numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]][:torch.cuda.device_count()])


def worker_start_method(device: torch.device, num_workers: int) -> str | None:
    """How DataLoader workers start: forked (the default, quick) for the CPU; spawned when the model is on CUDA.

    A child forked from a process that has initialised CUDA inherits its CUDA context, the pinned-memory caches and
    every lock as another thread held it, and may not use any of them (CUDA does not support fork): a worker that
    does (freeing an inherited tensor is enough) aborts, or blocks in the driver where no signal ends it and can
    outlive the training process, holding the GPU and that process's output pipes (the likely reason notebook 11's
    GPU run never returned). A spawned worker starts a fresh interpreter and inherits none of it; in exchange the
    dataset and its transforms travel pickled, so they must be importable (not classes defined in a notebook cell).
    """
    return "spawn" if num_workers > 0 and device.type == "cuda" else None


def collate(batch):
    """[(image, target), ...] -> (list of images, list of targets): images of different sizes stay separate."""
    images, targets = zip(*batch)
    return list(images), list(targets)


# --------------------------------------------------------------------------------------------------- distributed
def init_distributed() -> tuple[int, int, int]:
    """Join the process group when launched by torchrun (NCCL on GPU, gloo on CPU); (rank, world, local_rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return get_rank(), get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def cleanup_distributed() -> None:
    """Leave the process group (if any) at the end of a torchrun job."""
    if dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def unwrap(model):
    """The bare model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------------------------------- checkpoints
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


def _lists(value):
    """Tuples (nested too) as lists: a config as checkpoints store and compare it."""
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def _tuples(value):
    """Lists (nested too) back to tuples: the config dataclasses hold tuples."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def describe_model(model) -> dict:
    """{"config": asdict(model.cfg) with tuples as lists, "num_classes"} of a (possibly DDP-wrapped) model.

    Both are None for a model without a dataclass `.cfg` / a `.num_classes` (e.g. a toy model in the tests).
    Built in notebooks/11_train_on_gpu.ipynb.
    """
    bare = unwrap(model)
    cfg = getattr(bare, "cfg", None)
    config = _lists(asdict(cfg)) if cfg is not None and is_dataclass(cfg) else None
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
    config = MaskRCNNConfig(**{k: _tuples(v) for k, v in info["config"].items()})
    model = MaskRCNN(config, info["num_classes"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


# Resuming with other values of these TrainConfig fields is fine: they do not change what the run computes.
FREE_FIELDS = ("log_every", "eval_every", "checkpoint_every", "num_workers", "eval_batch_size", "progress",
               "find_unused_parameters", "max_nonfinite")
# Changes to these are honoured: the rate of step t is always lr * WarmupSchedule(current config)(t).
SCHEDULE_FIELDS = ("steps", "lr", "warmup_steps", "warmup_factor", "schedule", "milestones", "gamma")


def check_resumable(ckpt: dict, cfg: TrainConfig, model_info: dict, fingerprint: dict, path="checkpoint") -> None:
    """Refuse to resume from `ckpt` when the model, its classes, the training set or a TrainConfig field that is
    neither free nor a schedule field differ from the current run (ValueError listing `field: saved -> now`).

    model_info: `describe_model` of the current model, with the run's `class_names` and `category_ids` when it has
    them (compared too: the same number of classes may mean other classes); fingerprint: `dataset_fingerprint` of the
    current training set.
    Built in notebooks/11_train_on_gpu.ipynb.
    """
    saved_info, saved_cfg, now_cfg = ckpt.get("model_info") or {}, ckpt["train_config"], _lists(asdict(cfg))
    pairs = {f"model.{k}": (_lists(saved_info.get(k)), _lists(model_info.get(k)))
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


# ---------------------------------------------------------------------------------------------------- metrics
def read_metrics(path) -> list[dict]:
    """The records of a metrics.jsonl file (one JSON object per line)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsFile:
    """A run's metrics.jsonl on rank 0, appended one record per line; `path` None: nothing written.

    resume_step: a resumed run first drops the records written after its checkpoint's step (by a run killed after
    that checkpoint). None (a fresh run): the old run's file is left alone until the new run has a checkpoint of its
    own; until then records go to a side file (.metrics.jsonl.new) that `commit()` moves over metrics.jsonl
    (os.replace, atomic). `train` calls commit() after every checkpoint.
    """

    def __init__(self, path: Path | None, resume_step: int | None):
        self.path = self.target = path
        if path is None:
            return
        if resume_step is not None:
            self.records = [r for r in read_metrics(path) if r["step"] <= resume_step]
            self._write(path, self.records)
        else:
            self.records, self.target = [], path.with_name(f".{path.name}.new")
            self._write(self.target, [])

    @staticmethod
    def _write(path: Path, records: list[dict]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, path)

    def append(self, record: dict) -> None:
        if self.path is not None:
            with open(self.target, "a") as f:
                f.write(json.dumps(record) + "\n")

    def commit(self) -> None:
        if self.target != self.path:
            os.replace(self.target, self.path)
            self.target = self.path


def save_loss_plot(records: list[dict], path) -> None:
    """Loss curves and learning rate (viz.train) saved as a PNG, without pyplot (works under any backend)."""
    from matplotlib.figure import Figure

    from minimaskrcnn.viz.train import plot_history

    fig = Figure(figsize=(10, 3.6))
    plot_history(records, fig=fig)
    fig.savefig(path, dpi=100, bbox_inches="tight")


# --------------------------------------------------------------------------------------------------- evaluation
def evaluate(model, dataset, device=None, batch_size: int = 8, iou_types=IOU_TYPES, verbose: bool = False,
             amp: bool = True, num_workers: int = 0, category_ids=None) -> dict:
    """COCO metrics of `model` on a CocoDataset-like `dataset` (see evaluation.coco_evaluate for the format).

    Labels map to COCO category ids through `category_ids` (list: index = label, or dict label -> id; default
    dataset.category_ids; the CLI passes the checkpoint's); a label outside it is an error naming it. Each batch
    becomes COCO result dicts (masks RLE-encoded) as it leaves the model (evaluation.predict_dataset). Under torchrun
    each process predicts its share of the images; rank 0 gathers the result dicts (never masks) and evaluates, and
    every process returns the same metrics.
    """
    device = torch.device(device) if device is not None else default_device()
    bare = unwrap(model)
    world, rank = get_world_size(), get_rank()
    sampler = DistributedSampler(dataset, world, rank, shuffle=False) if world > 1 else None
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=num_workers,
                        multiprocessing_context=worker_start_method(device, num_workers))
    category_ids = dataset.category_ids if category_ids is None else category_ids
    with _autocast(device, amp):
        results, image_ids = predict_dataset(bare, loader, device, category_ids)
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, (results, image_ids))
        results, image_ids = merge_results(gathered)  # the sampler pads with repeated images: each image once
    metrics = [coco_evaluate(dataset.coco, results, iou_types, image_ids, verbose) if rank == 0 else None]
    if world > 1:
        dist.broadcast_object_list(metrics, src=0)
    return metrics[0]


def _autocast(device: torch.device, amp: bool):
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp and device.type == "cuda")


# ------------------------------------------------------------------------------------------------------ training
@dataclass
class TrainResult:
    step: int  # steps completed
    history: list = field(default_factory=list)  # metrics records (loss records and evaluation records)
    metrics: dict | None = None  # the last evaluation (None when no validation set)


def _make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _check_plain(name: str, value) -> None:
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


def _resume(ckpt_path: Path, model, optimizer, scaler, cfg: TrainConfig, info: dict, fingerprint: dict) -> int:
    """Load the checkpoint into model, optimiser, scaler and the generators after `check_resumable`; its step."""
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")  # RNG states must be CPU tensors (a GPU run's too);
    # load_state_dict copies the weights and optimiser state to the parameters' device
    check_resumable(ckpt, cfg, info, fingerprint, ckpt_path)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt["scaler"]:  # empty when written without fp16 scaling (CPU, bf16)
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_states(ckpt["rng"])
    return ckpt["step"]


def train(model, train_set, cfg: TrainConfig, out_dir=None, val_set=None, device=None, resume: bool = False,
          model_info: dict | None = None, stop_at: int | None = None, on_log=None) -> TrainResult:
    """Train `model` (torchvision call convention: model(images, targets) -> dict of losses) on `train_set`.

    out_dir: where checkpoint.pt, metrics.jsonl and loss_curve.png go (None: nothing written, no resume).
    resume: continue from out_dir/checkpoint.pt when it exists (a fresh run when it does not). The checkpoint must
    match the current run: same model config and num_classes, same training set (number of images and digest of
    its `.image_ids`), same TrainConfig except the free fields (`FREE_FIELDS`: logging, evaluation and checkpoint
    frequency, workers, ...) and the schedule fields (`SCHEDULE_FIELDS`), whose changes are honoured: the rate of
    step t is always cfg.lr * WarmupSchedule(cfg)(t) with the current cfg, so e.g. resuming a cosine run of 1000
    steps at its end with steps=2000 re-spans the decay over 2000 steps (the rate goes back up to half the peak at
    step 1000 and decays to 0 at step 2000; never 0 for the added steps). Anything else is refused (ValueError).
    resume=False starts fresh whatever out_dir holds: at its first checkpoint it REPLACES out_dir's checkpoint.pt
    and metrics.jsonl (until then the old run's files stay intact); refusing a used out_dir is the caller's choice.
    model_info: extra plain data saved in the checkpoint (class_names and category_ids default to train_set's
    attributes); the model's full config and num_classes are added from the model itself (`describe_model`), so
    that `model_from_checkpoint` can rebuild it.
    stop_at: stop after this step although the schedule spans cfg.steps (simulates an interrupted run).
    on_log(record): called on rank 0 with every metrics record (e.g. a live plot in a notebook).
    Built in notebooks/11_train_on_gpu.ipynb.
    """
    rank, world, _ = init_distributed()
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    out_dir = Path(out_dir) if out_dir is not None else None
    ckpt_path = out_dir / CHECKPOINT_NAME if out_dir else None
    if out_dir and rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    info = {"class_names": getattr(train_set, "class_names", None),
            "category_ids": getattr(train_set, "category_ids", None), **(model_info or {}), **describe_model(model)}
    _check_plain("model_info", info)
    fingerprint = dataset_fingerprint(train_set)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _make_optimizer(params, cfg)
    schedule = WarmupSchedule(cfg)
    use_fp16 = cfg.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_fp16)

    step, resumed = 0, resume and ckpt_path is not None and ckpt_path.is_file()
    if resumed:
        step = _resume(ckpt_path, model, optimizer, scaler, cfg, info, fingerprint)
    metrics_file = MetricsFile(out_dir / METRICS_NAME if out_dir and rank == 0 else None, step if resumed else None)
    history = list(metrics_file.records) if metrics_file.path else []

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters)

    def log(record):
        history.append(record)
        if rank != 0:
            return
        metrics_file.append(record)
        if on_log:
            on_log(record)

    def checkpoint():
        if ckpt_path is not None and rank == 0:
            save_checkpoint(ckpt_path, format_version=FORMAT_VERSION, step=step, model=model.state_dict(),
                            optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), rng=rng_states(),
                            train_config=_lists(asdict(cfg)), dataset=fingerprint,
                            world_size=world, model_info=info)
            metrics_file.commit()
        if world > 1:
            dist.barrier()

    def run_eval():
        metrics = evaluate(model, val_set, device, cfg.eval_batch_size, amp=cfg.amp, num_workers=cfg.num_workers)
        log({"step": step, "eval": {t: {k: v for k, v in m.items() if k != "per_class"} for t, m in metrics.items()}})
        return metrics

    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    sampler = StepBatchSampler(len(train_set), cfg.batch_size, cfg.seed, step, max(end, step), rank, world)
    loader = DataLoader(SeededDataset(train_set), batch_sampler=sampler, collate_fn=collate,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                        multiprocessing_context=worker_start_method(device, cfg.num_workers))
    bar = tqdm(total=end, initial=step, disable=not cfg.progress or rank != 0, desc="train", dynamic_ncols=True)
    running, nonfinite, metrics = {}, 0, None
    t_last, step_last = time.perf_counter(), step
    model.train()
    for images, targets in loader:
        torch.manual_seed(_mix(cfg.seed, step, rank))  # the model's sampling depends only on (seed, step, rank)
        lr = cfg.lr * schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = [img.to(device, non_blocking=True) for img in images]
        targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
                   for t in targets]
        with _autocast(device, cfg.amp):
            losses = net(images, targets)
        names = sorted(losses)
        values = torch.stack([losses[k].detach().float() for k in names])
        if world > 1:
            dist.all_reduce(values)
            values /= world
        loss = sum(losses.values())
        finite = bool(torch.isfinite(values).all())
        optimizer.zero_grad(set_to_none=True)
        if finite:
            scaler.scale(loss).backward()
            if cfg.clip_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            nonfinite = 0
        else:
            nonfinite += 1
            bad = {k: float(v) for k, v in zip(names, values)}
            warnings.warn(f"step {step}: non-finite loss {bad}; step skipped ({nonfinite} in a row)", RuntimeWarning)
            if nonfinite >= cfg.max_nonfinite:
                raise FloatingPointError(
                    f"{nonfinite} non-finite losses in a row (last at step {step}: {bad}); lower the learning rate "
                    f"(now {lr:g}), raise warm-up or check the data")
        step += 1
        if finite:
            for k, v in zip(names, values.tolist()):  # exponential moving averages for the progress bar
                running[k] = v if k not in running else 0.9 * running[k] + 0.1 * v
        bar.update(1)
        if running:
            bar.set_postfix(loss=f"{sum(running.values()):.3f}", **{k.removeprefix("loss_")[:8]: f"{v:.3f}"
                                                                   for k, v in running.items()})
        if step % cfg.log_every == 0 or step == end:
            now = time.perf_counter()
            record = {"step": step, "epoch": step // sampler.steps_per_epoch, "lr": lr,
                      "loss": float(values.sum()), **{k: float(v) for k, v in zip(names, values)},
                      "images_per_s": (step - step_last) * cfg.batch_size * world / max(now - t_last, 1e-9)}
            log(record)
            t_last, step_last = now, step
        if val_set is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            metrics = run_eval()
            model.train()
        if step % cfg.checkpoint_every == 0 or step == end:
            checkpoint()
    bar.close()
    if val_set is not None and step == cfg.steps:
        metrics = run_eval()
    if out_dir and rank == 0 and history:
        save_loss_plot(history, out_dir / LOSS_PLOT_NAME)
    return TrainResult(step=step, history=history, metrics=metrics)
