"""Small helpers shared by the notebooks, the tests and the engine."""
import random

import numpy as np
import torch


def seed_everything(seed: int = 0) -> None:
    """Seed Python's, NumPy's and torch's random generators (the first cell of every notebook calls this)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
