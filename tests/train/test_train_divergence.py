"""The message of a diverged run (:mod:`aqnet.train.divergence`): step, epoch, the last good
checkpoint, and whether the data or the model is at fault."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from aqnet.train.divergence import batch_diagnosis, divergence_message, finite_channels


class _Samples:
    """Eight samples of 2 input and 1 output channels; sample 5's ``y`` holds a NaN."""

    variables = ("u", "v")
    out_variables = ("pm25",)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.zeros(1, 2, 2)
        if i == 5:
            y[0, 1, 0] = math.nan
        return torch.zeros(2, 2, 2), y

    def sample_info(self, i: int) -> tuple[int, int, int, np.datetime64]:
        return 2013, i // 4, 12 * (1 + i % 4), np.datetime64("2013-01-01T12:00")


def test_the_message_names_step_epoch_and_the_last_good_checkpoint() -> None:
    state = Path("/state/last.pt")
    msg = divergence_message(
        stage="finetune",
        what="gradient norm",
        value=math.inf,
        step=7,
        steps_per_epoch=3,
        state_path=state,
        last_checkpoint_step=6,
        hint=" Hint.",
    )
    assert msg == (
        "finetune: non-finite gradient norm (inf) at step 7 (epoch 2); the run stopped before "
        "applying the update; the last good checkpoint is /state/last.pt (step 6). Hint."
    )
    first = divergence_message(
        stage="baseline",
        what="training loss",
        value=math.nan,
        step=1,
        steps_per_epoch=3,
        state_path=state,
        last_checkpoint_step=None,
    )
    assert "at step 1 (epoch 0)" in first
    assert first.endswith("no checkpoint was written yet (/state/last.pt does not exist).")


def test_finite_channels() -> None:
    t = torch.zeros(3, 2, 2)
    t[1, 0, 1] = math.inf
    assert finite_channels(t) == [True, False, True]


def test_the_diagnosis_names_the_bad_sample_of_the_step_or_blames_the_model() -> None:
    data = _Samples()
    # One rank, 4 samples per step, 2 steps per epoch: the step holding sample 5 names it.
    hints = [
        batch_diagnosis(
            data, step=s, steps_per_epoch=2, per_rank_step=4, rank=0, world_size=1, seed=0
        )
        for s in (1, 2)
    ]
    bad = [h for h in hints if "Non-finite" in h]
    assert len(bad) == 1
    assert "sample 5 (year 2013, time index 1, lead 24 h, valid 2013-01-01T12:00): y:pm25" in bad[0]
    assert bad[0].endswith("fix the cache (build_cache's NaN handling) or the input file.")
    good = next(h for h in hints if h not in bad)
    assert good.startswith(" The data of rank 0's part of the batch is finite: the model diverged")
