"""Random generators: seed them all, save them all, restore them all (Python's, NumPy's, torch's CPU and CUDA ones).

seed_everything is the first cell of every notebook; rng_states / set_rng_states are what a checkpoint keeps so that
a resumed run draws what the uninterrupted run would have drawn (engine.train). Built in notebooks/11.

Shape glossary
    none: generator states are ByteTensors (torch, CUDA) and a Tensor[624] of keys (NumPy's MT19937)
"""
import random

import numpy as np
import torch


def seed_everything(seed: int = 0) -> None:
    """Seed Python's, NumPy's and torch's random generators (the first cell of every notebook calls this)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
