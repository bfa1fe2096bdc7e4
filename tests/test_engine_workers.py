"""engine's DataLoader workers: how they start, and that nothing of them outlives a run (notebook 11's GPU hang).

The GPU itself is not here: the spawn start method used on CUDA is forced on the CPU instead.
"""
import json
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from minimaskrcnn.engine import worker_start_method

# Trains the tiny preset for a few steps with 2 workers, then evaluates with 2 workers, once with forked workers
# (the CPU default) and once with spawned ones (what CUDA gets); prints the worker pids seen during training, the
# losses and the metrics, and how long the run took; then the interpreter exits.
SCRIPT = textwrap.dedent("""
    import time
    start = time.perf_counter()
    import json, multiprocessing, sys, tempfile
    from pathlib import Path
    import torch
    from minimaskrcnn import engine
    from minimaskrcnn.data import CocoDataset, make_shapes
    from minimaskrcnn.model import build_model
    from minimaskrcnn.transforms import RandomHorizontalFlip

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp())
    make_shapes(root, num_images=6, image_size=64, seed=1, progress=False)
    train_set = CocoDataset(root / "images", root / "annotations.json", transforms=RandomHorizontalFlip(0.5))
    val_set = CocoDataset(root / "images", root / "annotations.json")
    report = {}
    for method in ("fork", "spawn"):
        engine.worker_start_method = lambda device, workers: method if workers else None
        pids = set()
        torch.manual_seed(0)
        model = build_model("tiny", len(train_set.class_names), min_size=64, max_size=64)
        cfg = engine.TrainConfig(steps=3, batch_size=2, warmup_steps=1, log_every=1, progress=False,
                                 num_workers=int(sys.argv[1]), eval_batch_size=3)
        result = engine.train(model, train_set, cfg, val_set=val_set, device="cpu",
                              on_log=lambda r: pids.update(p.pid for p in multiprocessing.active_children()))
        report[method] = {"pids": sorted(pids), "losses": [r["loss"] for r in result.history if "loss" in r],
                          "AP": result.metrics["segm"]["AP"], "left": len(multiprocessing.active_children())}
    print(json.dumps(report), flush=True)
    print("ran", time.perf_counter() - start, flush=True)
""")


def test_workers_spawn_on_cuda_fork_on_the_cpu():
    assert worker_start_method(torch.device("cuda", 0), 4) == "spawn"
    assert worker_start_method(torch.device("cuda"), 0) is None  # no workers: no start method at all
    assert worker_start_method(torch.device("cpu"), 4) is None  # the platform default (fork on Linux)


def run(num_workers: int) -> tuple[dict, float]:
    """SCRIPT in a fresh interpreter, output piped: -> (its report, seconds from its last line to its pipes' end)."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(num_workers)], capture_output=True, text=True, timeout=600)
    ended = time.perf_counter()  # run() returns when the process has exited and nothing holds its pipes any more
    assert done.returncode == 0, done.stderr[-3000:]
    report_line, ran_line = done.stdout.strip().splitlines()[-2:]
    return json.loads(report_line), (ended - began) - float(ran_line.split()[1])


@pytest.fixture(scope="module")
def runs():
    return run(2), run(0)


def test_workers_end_with_the_run_and_the_process_exits_promptly(runs):
    """With forked and with spawned workers, in training and evaluation: the workers seen during training are gone
    when train returns, none is left when the interpreter exits, and its output pipes close promptly (a worker
    holding them would keep a notebook runner waiting, as notebook 11's GPU run did)."""
    (report, after_last_line), _ = runs
    psutil = pytest.importorskip("psutil")
    for method in ("fork", "spawn"):
        assert len(report[method]["pids"]) == 2, method  # two workers were seen while training ...
        assert report[method]["left"] == 0, method  # ... and none is left after train (and its evaluation)
        for pid in report[method]["pids"]:  # ... nor after the interpreter exited
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, (method, pid)
    assert after_last_line < 30, f"{after_last_line:.0f} s from the script's last line to the end of its output"


def test_spawned_and_forked_workers_load_the_same_batches_as_the_main_process(runs):
    """The dataset, its random flip and the collate function survive pickling into spawned workers, and every
    start method trains and evaluates exactly as loading in the main process does."""
    (with_workers, _), (without, _) = runs
    for method in ("fork", "spawn"):
        assert with_workers[method]["losses"] == without[method]["losses"], method
        assert with_workers[method]["AP"] == without[method]["AP"], method
    assert len(without["fork"]["losses"]) == 3
