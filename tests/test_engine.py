"""Engine: schedule, checkpoints of a run, resume equality, non-finite losses, 2-process gloo run, SIGKILL then resume;
a checkpoint that would run code refused on every path, self-describing checkpoints, resume checks (other model /
data / setup refused, schedule changes honoured) and the old run's metrics kept. The checkpoint file on its own
(formats, disk full, fingerprints): tests/test_checkpoints.py; the generators' states: tests/test_utils.py.

The engine is model-agnostic (torchvision call convention), so these tests use a toy detector that trains in
milliseconds; tests/test_cli.py runs the real tiny Mask R-CNN end to end. The toy's source is written to a file so
that subprocesses (torchrun, the killed run) import exactly the same code.
"""
import dataclasses
import importlib.util
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

from minimaskrcnn import checkpoints, engine
from minimaskrcnn.engine import StepBatchSampler, TrainConfig, WarmupSchedule

TOY_SOURCE = '''
import contextlib, io, sys
import torch
from torch import nn
from pycocotools.coco import COCO
from minimaskrcnn import distributed, engine


class ToyDetector(nn.Module):
    """Predicts one box per image from a conv; its loss uses torch.rand like the RPN/RoI samplers do."""

    def __init__(self, nan_calls=()):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)
        self.nan_calls, self.calls = set(nan_calls), 0

    def forward(self, images, targets=None):
        out = self.fc(self.conv(torch.stack(images)).mean((2, 3)))  # (N, 5): 4 box numbers + 1 score
        if not self.training:
            boxes = torch.cat([out[:, :2].clamp(0, 6), out[:, :2].clamp(0, 6) + 8 + out[:, 2:4].clamp(0, 8)], 1)
            return [{"boxes": b[None], "labels": torch.ones(1, dtype=torch.int64), "scores": s.sigmoid()[None],
                     "masks": torch.ones(1, 1, 16, 16) * 0.9} for b, s in zip(boxes, out[:, 4])]
        gt = torch.stack([t["boxes"][0] for t in targets])
        noise = torch.rand(len(images), 1)  # model-side randomness, like anchor sampling
        self.calls += 1
        box = ((out[:, :4] - gt / 8) ** 2 * (1 + 0.1 * noise)).mean()
        if self.calls in self.nan_calls:
            box = box * float("nan")
        return {"loss_box_reg": box, "loss_classifier": out[:, 4].abs().mean()}


class ToyDataset(torch.utils.data.Dataset):
    """12 random 16x16 images with one box each; random horizontal flip from the global torch generator."""

    def __init__(self, n=12):
        self.n = n
        self.category_ids, self.class_names = [0, 1], ["background", "blob"]
        anns = [{"id": i + 1, "image_id": i, "category_id": 1, "bbox": [2.0, 3.0, 8.0, 9.0], "area": 72.0,
                 "iscrowd": 0, "segmentation": [[2, 3, 10, 3, 10, 12, 2, 12]]} for i in range(n)]
        self.coco = COCO()
        self.coco.dataset = {"images": [{"id": i, "height": 16, "width": 16} for i in range(n)],
                             "categories": [{"id": 1, "name": "blob"}], "annotations": anns}
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i))
        boxes = torch.tensor([[2.0, 3.0, 10.0, 12.0]])
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
            boxes = torch.tensor([[6.0, 3.0, 14.0, 12.0]])
        return image, {"boxes": boxes, "labels": torch.ones(1, dtype=torch.int64), "image_id": i}


def config(**kw):
    base = dict(steps=12, batch_size=3, lr=0.05, warmup_steps=3, log_every=2, checkpoint_every=2, progress=False)
    return engine.TrainConfig(**{**base, **kw})


def run(out_dir, steps, resume, delay=0.0):
    """The script entry used by the SIGKILL test and torchrun: train, optionally slowly."""
    class Slow(ToyDetector):
        def forward(self, images, targets=None):
            import time
            time.sleep(delay)
            return super().forward(images, targets)

    torch.manual_seed(0)
    model = Slow()
    result = engine.train(model, ToyDataset(), config(steps=steps, checkpoint_every=1), out_dir=out_dir,
                          val_set=ToyDataset(), resume=resume)
    if distributed.get_rank() == 0:
        torch.save({"state": model.state_dict(), "metrics": result.metrics, "step": result.step},
                   f"{out_dir}/final_rank0.pt")


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume", float(sys.argv[4]))
'''


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy_engine.py"
    path.write_text(TOY_SOURCE)
    spec = importlib.util.spec_from_file_location("toy_engine", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def subprocess_env(tmp_path):
    """The environment of a subprocess that imports the toy module from tmp_path and the very minimaskrcnn this test
    imported (the checkout under test, not whichever one is installed)."""
    package_root = pathlib.Path(engine.__file__).resolve().parents[1]
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(tmp_path), str(package_root)])}


def run_group(cmd, env, timeout=240):
    """subprocess.run that, on timeout, kills the whole process group (torchrun's workers included)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd} timed out after {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_schedule_warmup_then_cosine_or_step():
    cos = WarmupSchedule(TrainConfig(steps=100, warmup_steps=10, warmup_factor=0.1))
    assert cos(0) == pytest.approx(0.1) and cos(5) == pytest.approx(0.55) and cos(10) == pytest.approx(1.0)
    assert cos(55) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0, abs=1e-12)
    step = WarmupSchedule(TrainConfig(steps=100, warmup_steps=0, schedule="step", milestones=(0.5, 0.8), gamma=0.1))
    assert [step(t) for t in (0, 49, 50, 80)] == pytest.approx([1, 1, 0.1, 0.01])
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="adam")


def test_batches_depend_only_on_seed_and_step():
    full = list(StepBatchSampler(10, 3, seed=4, start_step=0, total_steps=8))
    assert len(full) == 8 and all(len(b) == 3 for b in full)
    assert list(StepBatchSampler(10, 3, seed=4, start_step=5, total_steps=8)) == full[5:]
    epoch0 = [i for b in full[:3] for i, _ in b]
    assert len(set(epoch0)) == 9  # 3 steps per epoch, no image twice within an epoch
    assert full != list(StepBatchSampler(10, 3, seed=5, start_step=0, total_steps=8))
    ranks = [list(StepBatchSampler(10, 2, seed=4, start_step=0, total_steps=2, rank=r, world_size=2)) for r in (0, 1)]
    assert not {i for b in ranks[0] for i, _ in b} & {i for b in ranks[1] for i, _ in b}
    with pytest.raises(ValueError, match="batch"):
        StepBatchSampler(2, 3, 0, 0, 1)


def test_checkpoint_round_trip(toy, tmp_path):
    torch.manual_seed(0)
    model = toy.ToyDetector()
    engine.train(model, toy.ToyDataset(), toy.config(steps=4), out_dir=tmp_path / "run")
    ckpt = checkpoints.load_checkpoint(tmp_path / "run" / checkpoints.CHECKPOINT_NAME)
    assert ckpt["step"] == 4 and ckpt["format_version"] == checkpoints.FORMAT_VERSION
    assert set(ckpt) >= {"model", "optimizer", "scaler", "rng", "train_config", "dataset", "model_info"}
    fresh = toy.ToyDetector()
    fresh.load_state_dict(ckpt["model"])
    assert same_weights(model, fresh)
    assert ckpt["optimizer"]["state"]  # momentum buffers saved
    assert ckpt["train_config"]["milestones"] == [0.7, 0.9]  # tuples stored as lists
    assert ckpt["dataset"]["num_images"] == 12 and ckpt["dataset"]["image_ids_sha256"] is None  # no .image_ids
    assert len(ckpt["dataset"]["annotations_sha256"]) == 64  # the toy set has a .coco
    assert ckpt["model_info"] == {"class_names": ["background", "blob"], "category_ids": [0, 1], "config": None,
                                  "num_classes": None}  # the toy has no .cfg / .num_classes
    assert not list((tmp_path / "run").glob(".*tmp*"))  # the temporary file was renamed away
    assert (tmp_path / "run" / engine.LOSS_PLOT_NAME).stat().st_size > 0
    records = engine.read_metrics(tmp_path / "run" / engine.METRICS_NAME)
    assert [r["step"] for r in records] == [2, 4]
    schedule = WarmupSchedule(toy.config(steps=4))  # the rate of the step that ended at record step s
    assert [r["lr"] for r in records] == pytest.approx([0.05 * schedule(1), 0.05 * schedule(3)])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoints.load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_gives_the_same_weights(toy, tmp_path, optimizer):
    cfg = toy.config(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01)
    torch.manual_seed(0)
    straight = toy.ToyDetector()
    engine.train(straight, toy.ToyDataset(), cfg, out_dir=tmp_path / "a")
    torch.manual_seed(0)
    first = toy.ToyDetector()
    assert engine.train(first, toy.ToyDataset(), cfg, out_dir=tmp_path / "b", stop_at=5).step == 5
    assert not same_weights(straight, first)
    state = checkpoints.load_checkpoint(tmp_path / "b" / checkpoints.CHECKPOINT_NAME)["optimizer"]["state"][0]
    assert set(state) == ({"momentum_buffer"} if optimizer == "sgd" else {"step", "exp_avg", "exp_avg_sq"})
    torch.manual_seed(123)  # a new process would start from other weights and another RNG state
    resumed = toy.ToyDetector()
    result = engine.train(resumed, toy.ToyDataset(), cfg, out_dir=tmp_path / "b", resume=True)
    assert result.step == 12 and same_weights(straight, resumed)
    steps = [r["step"] for r in engine.read_metrics(tmp_path / "b" / engine.METRICS_NAME)]
    assert steps == sorted(steps) and steps[-1] == 12


def test_nonfinite_loss_skips_the_step_then_stops(toy):
    torch.manual_seed(0)
    model = toy.ToyDetector(nan_calls={3})
    with pytest.warns(RuntimeWarning, match="step 2: non-finite loss"):
        result = engine.train(model, toy.ToyDataset(), toy.config(steps=6))
    assert result.step == 6 and all(torch.isfinite(p).all() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(FloatingPointError, match="3 non-finite losses in a row"):
            engine.train(toy.ToyDetector(nan_calls=range(2, 20)), toy.ToyDataset(), toy.config(max_nonfinite=3))


def test_two_process_gloo_run(toy, tmp_path):
    env = subprocess_env(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "toy_engine.py"), str(tmp_path / "ddp"), "6", "fresh", "0"]
    res = run_group(cmd, env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = torch.load(tmp_path / "ddp" / "final_rank0.pt", weights_only=True)
    assert out["step"] == 6 and checkpoints.load_checkpoint(tmp_path / "ddp" / checkpoints.CHECKPOINT_NAME)["step"] == 6
    # rank 0 evaluated all 12 images gathered from both processes: the same AP as one process evaluating the model
    model = toy.ToyDetector()
    model.load_state_dict(out["state"])
    single = engine.evaluate(model, toy.ToyDataset(), "cpu", batch_size=5)
    assert out["metrics"]["bbox"]["AP"] == pytest.approx(single["bbox"]["AP"])
    records = engine.read_metrics(tmp_path / "ddp" / engine.METRICS_NAME)
    assert records[-1]["step"] == 6 and "eval" in records[-1]


def test_sigkill_mid_run_then_resume_finishes(toy, tmp_path):
    out = tmp_path / "killed"
    env = subprocess_env(tmp_path)
    script = str(tmp_path / "toy_engine.py")
    proc = subprocess.Popen([sys.executable, script, str(out), "40", "fresh", "0.05"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / checkpoints.CHECKPOINT_NAME
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a few more steps, then kill without warning (possibly while a checkpoint is being written)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoints.load_checkpoint(ckpt)["step"]  # the last checkpoint is complete and loadable
    assert 1 <= killed_at < 40
    res = run_group([sys.executable, script, str(out), "40", "resume", "0"], env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert torch.load(out / "final_rank0.pt", weights_only=True)["step"] == 40
    # and it matches a run that was never interrupted
    straight = tmp_path / "straight"
    assert run_group([sys.executable, script, str(straight), "40", "fresh", "0"], env).returncode == 0
    a = torch.load(out / "final_rank0.pt", weights_only=True)["state"]
    b = torch.load(straight / "final_rank0.pt", weights_only=True)["state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ checkpoint safety
class Payload:
    """Unpickling this writes `marker`: what a malicious checkpoint could do (os.system, ...)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.write_text, (self.marker, "code ran")


def test_checkpoint_that_would_run_code_is_refused(toy, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "marker"
    engine.train(toy.ToyDetector(), toy.ToyDataset(), toy.config(steps=2), out_dir=run)
    path = run / checkpoints.CHECKPOINT_NAME
    ckpt = checkpoints.load_checkpoint(path)
    ckpt["model_info"]["note"] = Payload(marker)
    torch.save(ckpt, path)
    calls = [lambda: checkpoints.load_checkpoint(path), lambda: checkpoints.model_from_checkpoint(path),
             lambda: engine.train(toy.ToyDetector(), toy.ToyDataset(), toy.config(steps=4), out_dir=run, resume=True)]
    for call in calls:
        with pytest.raises(ValueError, match="pathlib.*could run code"):
            call()
        assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: full unpickling runs it
    assert marker.read_text() == "code ran"


def test_model_info_must_be_plain_data(toy, tmp_path):
    with pytest.raises(TypeError, match="model_info.*numpy"):
        engine.train(toy.ToyDetector(), toy.ToyDataset(), toy.config(steps=2), out_dir=tmp_path / "run",
                     model_info={"category_ids": [np.int64(0), np.int64(1)]})
    assert not (tmp_path / "run" / checkpoints.CHECKPOINT_NAME).exists()


# ------------------------------------------------------------------------------------ self-describing checkpoints
def test_model_from_checkpoint_rebuilds_the_full_config(tmp_path, monkeypatch):
    from minimaskrcnn import model as model_module
    from minimaskrcnn.data import CocoDataset, make_shapes

    annotations = make_shapes(tmp_path / "shapes", 2, image_size=64)
    data = CocoDataset(annotations.parent / "images", annotations)
    torch.manual_seed(0)
    model = model_module.build_model("tiny", len(data.class_names), min_size=64, max_size=64,
                                     anchor_sizes=((8,), (16,), (32,), (64,), (128,)))
    engine.train(model, data, TrainConfig(steps=1, batch_size=2, progress=False), out_dir=tmp_path / "run",
                 device="cpu", model_info={"preset": "tiny"})
    # the meaning of a preset may change; the checkpoint does not depend on it
    monkeypatch.setitem(model_module.PRESETS, "tiny", model_module.MaskRCNNConfig(backbone_depth=101))
    rebuilt, ckpt = checkpoints.model_from_checkpoint(tmp_path / "run" / checkpoints.CHECKPOINT_NAME)
    assert rebuilt.cfg == model.cfg and rebuilt.num_classes == model.num_classes == 5 and not rebuilt.training
    assert rebuilt.cfg.anchor_sizes == ((8,), (16,), (32,), (64,), (128,))  # tuples restored
    assert same_weights(model, rebuilt)
    info = ckpt["model_info"]
    assert info["class_names"] == data.class_names and info["category_ids"] == data.category_ids
    assert info["preset"] == "tiny" and info["config"]["anchor_sizes"] == [[8], [16], [32], [64], [128]]
    assert ckpt["dataset"]["num_images"] == 2 and len(ckpt["dataset"]["image_ids_sha256"]) == 64


# ------------------------------------------------------------------------------------------------ resume checks


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    width: int = 4
    sizes: tuple = (1, 2)


def test_resume_refuses_another_model_data_or_setup(toy, tmp_path):
    run = tmp_path / "run"

    def toy_model(**cfg):
        model = toy.ToyDetector()
        model.cfg, model.num_classes = ToyConfig(**cfg), 2
        return model

    engine.train(toy_model(), toy.ToyDataset(), toy.config(), out_dir=run, stop_at=4)
    saved = (run / checkpoints.CHECKPOINT_NAME).read_bytes()
    refused = {"model.config.width: 4 -> 8": (toy_model(width=8), toy.ToyDataset(), toy.config()),
               "model.config.sizes: [1, 2] -> [1, 3]": (toy_model(sizes=(1, 3)), toy.ToyDataset(), toy.config()),
               "dataset.num_images: 12 -> 9": (toy_model(), toy.ToyDataset(9), toy.config()),
               "train_config.batch_size: 3 -> 4": (toy_model(), toy.ToyDataset(), toy.config(batch_size=4)),
               "train_config.seed: 0 -> 1": (toy_model(), toy.ToyDataset(), toy.config(seed=1)),
               "steps: 3 is below the checkpoint's step 4": (toy_model(), toy.ToyDataset(), toy.config(steps=3))}
    for message, (model, data, cfg) in refused.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            engine.train(model, data, cfg, out_dir=run, resume=True)
    assert (run / checkpoints.CHECKPOINT_NAME).read_bytes() == saved  # nothing trained, nothing written
    data = toy.ToyDataset()
    data.image_ids = list(range(12))
    with pytest.raises(ValueError, match=r"dataset.image_ids_sha256: None -> '[0-9a-f]{64}'"):
        engine.train(toy_model(), data, toy.config(), out_dir=run, resume=True)
    ckpt = checkpoints.load_checkpoint(run / checkpoints.CHECKPOINT_NAME)  # as if written on a GPU: resumable on a CPU
    ckpt["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    checkpoints.save_checkpoint(run / checkpoints.CHECKPOINT_NAME, **ckpt)
    # logging, evaluation and checkpoint frequencies, workers and the progress bar may change
    free = toy.config(log_every=3, checkpoint_every=5, eval_every=7, eval_batch_size=2, progress=False)
    assert engine.train(toy_model(), toy.ToyDataset(), free, out_dir=run, resume=True).step == 12


def test_evaluations_during_training_are_logged_and_printed(toy, tmp_path, capsys):
    """eval_every: the metrics of steps 4 and 8 and the final one (12) are records of the history, and with the
    progress bar on, each is one printed line a learner reads (box and mask AP and AP50, as logged)."""
    cfg = toy.config(eval_every=4, progress=True)
    result = engine.train(toy.ToyDetector(), toy.ToyDataset(), cfg, out_dir=tmp_path / "run", val_set=toy.ToyDataset())
    evals = [r for r in result.history if "eval" in r]
    assert [r["step"] for r in evals] == [4, 8, 12]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(lines) == 3
    for line, record in zip(lines, evals):
        box, mask = record["eval"]["bbox"], record["eval"]["segm"]
        assert line.startswith(f"step {record['step']}/12: box AP {box['AP']:.3f} AP50 {box['AP50']:.3f}, "
                               f"mask AP {mask['AP']:.3f} AP50 {mask['AP50']:.3f} on 12 val images ("), line


def test_resume_honours_a_longer_schedule(toy, tmp_path):
    run = tmp_path / "run"
    engine.train(toy.ToyDetector(), toy.ToyDataset(), toy.config(steps=6, log_every=1), out_dir=run)
    longer = toy.config(steps=10, lr=0.03, log_every=1)  # train on, with a lower peak rate
    assert engine.train(toy.ToyDetector(), toy.ToyDataset(), longer, out_dir=run, resume=True).step == 10
    records = engine.read_metrics(run / engine.METRICS_NAME)
    assert [r["step"] for r in records] == list(range(1, 11))
    schedule = WarmupSchedule(longer)
    added = [r["lr"] for r in records[6:]]  # steps 6..9 follow the 10-step schedule of the new rate, never 0
    assert added == pytest.approx([0.03 * schedule(t) for t in range(6, 10)]) and min(added) > 0


# ------------------------------------------------------------------------------------------------ nothing lost
def test_fresh_run_keeps_the_old_run_until_its_first_checkpoint(toy, tmp_path):
    run = tmp_path / "run"
    engine.train(toy.ToyDetector(), toy.ToyDataset(), toy.config(steps=4), out_dir=run)
    old = engine.read_metrics(run / engine.METRICS_NAME)

    class Killed(Exception):
        pass

    def die_at_step_3(record):
        assert engine.read_metrics(run / engine.METRICS_NAME) == old  # the new records are not in it yet
        if record["step"] == 3:
            raise Killed

    with pytest.raises(Killed):  # a new run dies before its first checkpoint (step 4)
        engine.train(toy.ToyDetector(), toy.ToyDataset(), toy.config(log_every=1, checkpoint_every=4),
                     out_dir=run, on_log=die_at_step_3)
    assert engine.read_metrics(run / engine.METRICS_NAME) == old
    assert checkpoints.load_checkpoint(run / checkpoints.CHECKPOINT_NAME)["step"] == 4
    seen = []
    engine.train(toy.ToyDetector(), toy.ToyDataset(), toy.config(steps=6, log_every=1, checkpoint_every=4),
                 out_dir=run, on_log=lambda r: seen.append(engine.read_metrics(run / engine.METRICS_NAME)))
    assert seen[3] == old and [r["step"] for r in seen[4]] == [1, 2, 3, 4, 5]  # replaced by the step-4 checkpoint
    assert [r["step"] for r in engine.read_metrics(run / engine.METRICS_NAME)] == [1, 2, 3, 4, 5, 6]
