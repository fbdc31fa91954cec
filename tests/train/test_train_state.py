"""The resume state's generator states (:mod:`aqnet.train.state`)."""

from __future__ import annotations

import random

import numpy as np
import torch

from aqnet.train.state import capture_rng, restore_rng, seed_everything


def test_rng_state_round_trip() -> None:
    state = capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002 - the global generator
    restore_rng(state)
    b = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_seed_everything_seeds_python_numpy_and_torch() -> None:
    seed_everything(7)
    a = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002 - the global generator
    seed_everything(7)
    b = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002
    seed_everything(8)
    c = random.random()
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2]) and c != a[0]
