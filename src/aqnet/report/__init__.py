"""aqnet.report: evaluation of the fine-tune against the baseline, the statistical verdict, the
figures and the report (see docs/ARCHITECTURE.md).

Modules: :mod:`~aqnet.report.evaluate` (``evaluate`` -> ``evaluation.nc``),
:mod:`~aqnet.report.stats` (block bootstrap, Wilcoxon on block means, ``verdict``),
:mod:`~aqnet.report.analysis` (tables from evaluation files), :mod:`~aqnet.report.regions`
(the gains by elevation band, region and terrain class), :mod:`~aqnet.report.figures`
(``make_figures`` and one function per figure), :mod:`~aqnet.report.inputs` (what the report
reads), :mod:`~aqnet.report.build` (``build_report``), :mod:`~aqnet.report.comparison` (the
variants compared), :mod:`~aqnet.report.cli`.

The names below are imported lazily, so ``import aqnet.report`` does not import torch or
matplotlib until one of them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aqnet.report.build import build_report
    from aqnet.report.evaluate import evaluate
    from aqnet.report.figures import make_figures
    from aqnet.report.stats import PairedTest, Verdict, paired_test, verdict

_EXPORTS: dict[str, str] = {
    "evaluate": "aqnet.report.evaluate",
    "verdict": "aqnet.report.stats",
    "paired_test": "aqnet.report.stats",
    "PairedTest": "aqnet.report.stats",
    "Verdict": "aqnet.report.stats",
    "make_figures": "aqnet.report.figures",
    "build_report": "aqnet.report.build",
}

__all__ = [
    "PairedTest",
    "Verdict",
    "build_report",
    "evaluate",
    "make_figures",
    "paired_test",
    "verdict",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'aqnet.report' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
