"""Training engine: the optimisation loop and its learning-rate schedule, data order, metrics and evaluation.

Built in notebooks/11_train_on_gpu.ipynb.

`train` is a short loop over named steps: build the run (optimiser, grad scaler, run files), resume it from its
checkpoint, then per batch one optimiser step (`_Run.optimise`), a metrics record (`_Run.log_losses`), an evaluation
(`_Run.evaluate`) and a checkpoint (`_Run.checkpoint`) when their step comes. Its neighbours each live in one place:
checkpoint files (write, read, describe, resume checks) in minimaskrcnn.checkpoints, the generators' states in
minimaskrcnn.utils, the process group and its collectives in minimaskrcnn.distributed.

The loop counts optimiser *steps*, not epochs, and everything random depends only on (seed, step):
- data order: a DistributedSampler (one replica when not distributed) reshuffled with `set_epoch(epoch)`, where
  epoch = step // steps_per_epoch; a resumed run skips the batches of the current epoch already seen;
- augmentation: each sample is loaded under its own seed derived from (seed, epoch, index) (`SeededDataset`);
- the model's own randomness (RPN / RoI sampling): torch's generator is re-seeded from (seed, step, rank) before
  every step.
So a run stopped after any checkpoint and resumed ends with the same weights as an uninterrupted run (on the CPU).

Shape glossary
    N      images per step on one process (TrainConfig.batch_size)
    P      number of processes (world size) under torchrun
    L      loss terms of one step (the model's loss dict)
"""
import json
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm.auto import tqdm

from minimaskrcnn.checkpoints import (CHECKPOINT_NAME, FORMAT_VERSION, as_lists, check_plain, check_resumable,
                                      dataset_fingerprint, describe_model, load_checkpoint, save_checkpoint)
from minimaskrcnn.data import collate
from minimaskrcnn.distributed import (barrier, broadcast_object, default_device, gather_objects, get_rank,
                                      get_world_size, init_distributed, mean_over_processes, unwrap, wrap)
from minimaskrcnn.evaluation import IOU_NAMES, IOU_TYPES, coco_evaluate, merge_results, predict_dataset
from minimaskrcnn.utils import rng_states, set_rng_states

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


# ---------------------------------------------------------------------------------------- data order and seeds
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
    world, rank = get_world_size(), get_rank()
    sampler = DistributedSampler(dataset, world, rank, shuffle=False) if world > 1 else None
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=num_workers,
                        multiprocessing_context=worker_start_method(device, num_workers))
    category_ids = dataset.category_ids if category_ids is None else category_ids
    with _autocast(device, amp):
        results, image_ids = predict_dataset(unwrap(model), loader, device, category_ids)
    if world > 1:  # the sampler pads with repeated images: merge_results keeps each image once
        results, image_ids = merge_results(gather_objects((results, image_ids)))
    metrics = coco_evaluate(dataset.coco, results, iou_types, image_ids, verbose) if rank == 0 else None
    return broadcast_object(metrics)


def _autocast(device: torch.device, amp: bool):
    """Mixed precision on CUDA (bf16 where supported, else fp16) when amp; a no-op context elsewhere."""
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp and device.type == "cuda")


# ------------------------------------------------------------------------------------------------------ training
@dataclass
class TrainResult:
    step: int  # steps completed
    history: list = field(default_factory=list)  # metrics records (loss records and evaluation records)
    metrics: dict | None = None  # the last evaluation (None when no validation set)


def train(model, train_set, cfg: TrainConfig, out_dir=None, val_set=None, device=None, resume: bool = False,
          model_info: dict | None = None, stop_at: int | None = None, on_log=None) -> TrainResult:
    """Train `model` (torchvision call convention: model(images, targets) -> dict of losses) on `train_set`.

    out_dir: where checkpoint.pt, metrics.jsonl and loss_curve.png go (None: nothing written, no resume).
    resume: continue from out_dir/checkpoint.pt when it exists (a fresh run when it does not). The checkpoint must
    match the current run (checkpoints.check_resumable): same model config and num_classes, same training set
    (number of images and digests of its `.image_ids` and annotations), same TrainConfig except the free fields
    (`checkpoints.FREE_FIELDS`: logging, evaluation and checkpoint frequency, workers, ...) and the schedule fields
    (`checkpoints.SCHEDULE_FIELDS`), whose changes are honoured: the rate of step t is always
    cfg.lr * WarmupSchedule(cfg)(t) with the current cfg, so e.g. resuming a cosine run of 1000 steps at its end with
    steps=2000 re-spans the decay over 2000 steps (the rate goes back up to half the peak at step 1000 and decays to
    0 at step 2000; never 0 for the added steps). Anything else is refused (ValueError).
    resume=False starts fresh whatever out_dir holds: at its first checkpoint it REPLACES out_dir's checkpoint.pt
    and metrics.jsonl (until then the old run's files stay intact); refusing a used out_dir is the caller's choice.
    model_info: extra plain data saved in the checkpoint (class_names and category_ids default to train_set's
    attributes); the model's full config and num_classes are added from the model itself (`describe_model`), so
    that `checkpoints.model_from_checkpoint` can rebuild it.
    stop_at: stop after this step although the schedule spans cfg.steps (simulates an interrupted run).
    on_log(record): called on rank 0 with every metrics record (e.g. a live plot in a notebook).
    Built in notebooks/11_train_on_gpu.ipynb.
    """
    init_distributed()
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    run = _Run(model, train_set, cfg, out_dir, device, model_info, on_log)  # optimiser, scaler, run files
    if resume:
        run.resume()
    run.start()
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    sampler = StepBatchSampler(len(train_set), cfg.batch_size, cfg.seed, run.step, max(end, run.step), run.rank,
                               run.world)
    loader = DataLoader(SeededDataset(train_set), batch_sampler=sampler, collate_fn=collate,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                        multiprocessing_context=worker_start_method(device, cfg.num_workers))
    progress = _Progress(run.step, end, enabled=cfg.progress and run.rank == 0)
    metrics = None
    model.train()
    for images, targets in loader:
        lr, losses, finite = run.optimise(images, targets)
        progress.update(losses, finite)
        if run.step % cfg.log_every == 0 or run.step == end:
            run.log_losses(lr, losses, run.step // sampler.steps_per_epoch)
        if val_set is not None and cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < cfg.steps:
            metrics = run.evaluate(val_set)
            model.train()
        if run.step % cfg.checkpoint_every == 0 or run.step == end:
            run.checkpoint()
    progress.close()
    if val_set is not None and run.step == cfg.steps:
        metrics = run.evaluate(val_set)
    run.plot_losses()
    return TrainResult(step=run.step, history=run.history, metrics=metrics)


class _Run:
    """The state of one training run and the named steps `train` takes with it.

    Holds the model (and its DDP wrapper), the optimiser, the fp16 grad scaler, the step reached, the metrics
    history and the run's files in out_dir (written by rank 0). Built by `train`, which owns the loop.
    """

    def __init__(self, model, train_set, cfg: TrainConfig, out_dir, device: torch.device, model_info, on_log):
        self.model, self.cfg, self.device, self.on_log = model, cfg, device, on_log
        self.rank, self.world = get_rank(), get_world_size()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.ckpt_path = self.out_dir / CHECKPOINT_NAME if self.out_dir else None
        if self.out_dir and self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.info = {"class_names": getattr(train_set, "class_names", None),
                     "category_ids": getattr(train_set, "category_ids", None), **(model_info or {}),
                     **describe_model(model)}
        check_plain("model_info", self.info)
        self.fingerprint = dataset_fingerprint(train_set)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = _make_optimizer(self.params, cfg)
        self.schedule = WarmupSchedule(cfg)
        use_fp16 = cfg.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()  # bf16 needs no scaling
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_fp16)
        self.step, self.resumed, self.nonfinite = 0, False, 0

    # ---- resume
    def resume(self) -> None:
        """Continue from the checkpoint, when there is one: weights, optimiser, scaler, generators, step
        (after checkpoints.check_resumable). A fresh run otherwise."""
        if self.ckpt_path is None or not self.ckpt_path.is_file():
            return
        ckpt = load_checkpoint(self.ckpt_path, map_location="cpu")  # RNG states must be CPU tensors (a GPU run's
        # too); load_state_dict copies the weights and optimiser state to the parameters' device
        check_resumable(ckpt, self.cfg, self.info, self.fingerprint, self.ckpt_path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"]:  # empty when written without fp16 scaling (CPU, bf16)
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_states(ckpt["rng"])
        self.step, self.resumed = ckpt["step"], True

    def start(self) -> None:
        """Open the run's metrics.jsonl (rank 0; a resumed run keeps its records up to the checkpoint as its history),
        wrap the model for the processes, start the speed clock."""
        path = self.out_dir / METRICS_NAME if self.out_dir and self.rank == 0 else None
        self.metrics_file = MetricsFile(path, self.step if self.resumed else None)
        self.history = list(self.metrics_file.records) if self.metrics_file.path else []
        self.net = wrap(self.model, self.device, self.cfg.find_unused_parameters)
        self.t_last, self.step_last = time.perf_counter(), self.step

    # ---- one step
    def optimise(self, images, targets) -> tuple[float, dict[str, float], bool]:
        """One optimiser step on a batch -> (its learning rate, {"loss": the total, loss name: value, ...} averaged
        over the processes, whether they were finite). A non-finite loss skips the step with a warning;
        cfg.max_nonfinite of them in a row stop the run.
        """
        cfg, device = self.cfg, self.device
        torch.manual_seed(_mix(cfg.seed, self.step, self.rank))  # the model's sampling: a function of seed, step, rank
        lr = cfg.lr * self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images = [img.to(device, non_blocking=True) for img in images]
        targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
                   for t in targets]
        with _autocast(device, cfg.amp):
            losses = self.net(images, targets)
        names = sorted(losses)
        values = mean_over_processes(torch.stack([losses[k].detach().float() for k in names]))  # (L,)
        loss = sum(losses.values())
        finite = bool(torch.isfinite(values).all())
        self.optimizer.zero_grad(set_to_none=True)
        if finite:
            self.scaler.scale(loss).backward()
            if cfg.clip_grad_norm:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.nonfinite = 0
        else:
            self._skip_nonfinite(dict(zip(names, values.tolist())), lr)
        self.step += 1
        return lr, {"loss": float(values.sum()), **dict(zip(names, values.tolist()))}, finite

    def _skip_nonfinite(self, bad: dict[str, float], lr: float) -> None:
        self.nonfinite += 1
        warnings.warn(f"step {self.step}: non-finite loss {bad}; step skipped ({self.nonfinite} in a row)",
                      RuntimeWarning)
        if self.nonfinite >= self.cfg.max_nonfinite:
            raise FloatingPointError(
                f"{self.nonfinite} non-finite losses in a row (last at step {self.step}: {bad}); lower the learning "
                f"rate (now {lr:g}), raise warm-up or check the data")

    # ---- log, evaluate, checkpoint
    def log(self, record: dict) -> None:
        """Keep a metrics record; rank 0 appends it to metrics.jsonl and hands it to on_log."""
        self.history.append(record)
        if self.rank != 0:
            return
        self.metrics_file.append(record)
        if self.on_log:
            self.on_log(record)

    def log_losses(self, lr: float, losses: dict[str, float], epoch: int) -> None:
        """The loss record of the current step, with the speed since the previous one (images/s, all processes)."""
        now = time.perf_counter()
        images_per_s = (self.step - self.step_last) * self.cfg.batch_size * self.world / max(now - self.t_last, 1e-9)
        self.log({"step": self.step, "epoch": epoch, "lr": lr, **losses, "images_per_s": images_per_s})
        self.t_last, self.step_last = now, self.step

    def evaluate(self, val_set) -> dict:
        """COCO metrics on val_set (every process takes part); their summary is logged, and rank 0 prints one line
        of it (above the progress bar) when the progress bar is on."""
        cfg = self.cfg
        start = time.perf_counter()
        metrics = evaluate(self.model, val_set, self.device, cfg.eval_batch_size, amp=cfg.amp,
                           num_workers=cfg.num_workers)
        self.log({"step": self.step,
                  "eval": {t: {k: v for k, v in m.items() if k != "per_class"} for t, m in metrics.items()}})
        if self.rank == 0 and cfg.progress:
            scores = ", ".join(f"{IOU_NAMES.get(t, t)} AP {m['AP']:.3f} AP50 {m['AP50']:.3f}"
                               for t, m in metrics.items())
            tqdm.write(f"step {self.step}/{cfg.steps}: {scores} on {len(val_set)} val images "
                       f"({time.perf_counter() - start:.0f} s)")
        self.t_last += time.perf_counter() - start  # the images/s of the next loss record count training only
        return metrics

    def checkpoint(self) -> None:
        """Rank 0 writes the checkpoint (atomically) and commits metrics.jsonl up to it; the others wait for it."""
        if self.ckpt_path is not None and self.rank == 0:
            save_checkpoint(self.ckpt_path, format_version=FORMAT_VERSION, step=self.step,
                            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                            scaler=self.scaler.state_dict(), rng=rng_states(), train_config=as_lists(asdict(self.cfg)),
                            dataset=self.fingerprint, world_size=self.world, model_info=self.info)
            self.metrics_file.commit()
        barrier()

    def plot_losses(self) -> None:
        """loss_curve.png of the whole history (rank 0)."""
        if self.out_dir and self.rank == 0 and self.history:
            save_loss_plot(self.history, self.out_dir / LOSS_PLOT_NAME)


def _make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class _Progress:
    """The tqdm progress bar (rank 0): steps, and exponential moving averages of the finite losses."""

    def __init__(self, start: int, end: int, enabled: bool):
        self.bar = tqdm(total=end, initial=start, disable=not enabled, desc="train", dynamic_ncols=True)
        self.running = {}

    def update(self, losses: dict[str, float], finite: bool) -> None:
        """One step done; losses as _Run.optimise returns them (the total "loss" shows as the sum of the averages)."""
        if finite:
            for k, v in losses.items():
                if k != "loss":
                    self.running[k] = v if k not in self.running else 0.9 * self.running[k] + 0.1 * v
        self.bar.update(1)
        if self.running:
            self.bar.set_postfix(loss=f"{sum(self.running.values()):.3f}",
                                 **{k.removeprefix("loss_")[:8]: f"{v:.3f}" for k, v in self.running.items()})

    def close(self) -> None:
        self.bar.close()
