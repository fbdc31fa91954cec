"""resolve_device: the device of a single-process stage, and the messages of a bad setting."""

from __future__ import annotations

import pytest
import torch

from aqnet.device import resolve_device


def test_auto_and_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto", stage="evaluate").type == expected
    assert resolve_device("cpu", stage="evaluate") == torch.device("cpu")


def test_an_unknown_device_is_refused_naming_the_stage() -> None:
    with pytest.raises(
        ValueError, match=r"^smoke_forward: unknown device 'gpu' \(auto, cpu, cuda, cuda:<i>\)$"
    ):
        resolve_device("gpu", stage="smoke_forward")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_a_gpu_asked_for_where_none_is_visible() -> None:
    with pytest.raises(
        ValueError, match=r"^evaluate: device 'cuda:1' requested but no GPU is visible$"
    ):
        resolve_device("cuda:1", stage="evaluate")
