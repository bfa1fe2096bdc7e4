"""The generators' states (minimaskrcnn/utils.py): saved as plain data, restored exactly."""
import io
import random

import numpy as np
import torch

from minimaskrcnn import utils


def test_rng_states_are_plain_data_and_restore_every_generator():
    buffer = io.BytesIO()
    torch.save(utils.rng_states(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    draw = lambda: (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random())  # noqa: E731
    first = draw()
    assert draw() != first
    utils.set_rng_states(saved)
    assert draw() == first
    if not torch.cuda.is_available():  # written on a GPU, resumed on a CPU: the CUDA states are skipped
        utils.set_rng_states({**saved, "cuda": [torch.zeros(16, dtype=torch.uint8)]})
        assert draw() == first
