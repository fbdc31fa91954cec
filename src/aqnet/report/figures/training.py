"""Training figures: validation and training loss, and elevation_alpha, against step.

With several fine-tune seeds per variant (``finetune.seeds``) each curve is the mean over the
seeds, with a band from the lowest to the highest seed (:func:`seed_band`); with one seed it is
that run's curve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from aqnet.report.figures.style import BASELINE_COLOUR, THRESHOLD_COLOUR, palette, save

SEED_BAND_ALPHA = 0.25


def seed_band(runs: Sequence[pd.DataFrame], column: str) -> pd.DataFrame:
    """Mean, min and max of ``column`` over the runs, on the steps every run logged it.

    Args:
        runs: each seed's metrics (columns ``step`` and ``column``).
        column: the metric.

    Returns:
        Columns ``step``, ``mean``, ``min``, ``max``, ``n_runs``, one row per common step, in step
        order (a step logged twice in one run, e.g. after a resume, counts once: the last).
    """
    series = []
    for k, df in enumerate(runs):
        rows = df[df[column].notna()]
        series.append(rows.groupby("step")[column].last().rename(k))
    table = pd.concat(series, axis=1, join="inner").sort_index()
    return pd.DataFrame(
        {
            "step": table.index.to_numpy(),
            "mean": table.mean(axis=1).to_numpy(),
            "min": table.min(axis=1).to_numpy(),
            "max": table.max(axis=1).to_numpy(),
            "n_runs": len(runs),
        }
    )


def _curve(
    ax: Any,
    name: str,
    df: pd.DataFrame,
    runs: Sequence[pd.DataFrame] | None,
    column: str,
    style: str,
    **kw: Any,
) -> None:
    """One variant's curve of ``column``: the seeds' mean and min-max band, or the one run."""
    if runs is not None and len(runs) > 1:
        band = seed_band(runs, column)
        ax.plot(
            band["step"], band["mean"], style, label=f"{name} (mean of {len(runs)} seeds)", **kw
        )
        ax.fill_between(
            band["step"], band["min"], band["max"], alpha=SEED_BAND_ALPHA, color=kw.get("color")
        )
        return
    rows = df[df[column].notna()]
    ax.plot(rows["step"], rows[column], style, label=name, **kw)


def plot_val_loss(
    metrics: Mapping[str, pd.DataFrame],
    *,
    baseline_val_loss: float,
    threshold: float,
    out: Path,
    runs: Mapping[str, Sequence[pd.DataFrame]] | None = None,
) -> Path:
    """val_loss against step per variant with the baseline and threshold lines; train loss beside.

    Args:
        metrics: ``{variant: metrics DataFrame}`` (columns ``step``, ``val_loss``,
            ``train_loss``).
        baseline_val_loss: the baseline's validation loss (a horizontal line).
        threshold: the success threshold (a horizontal line).
        out: the PNG to write.
        runs: ``{variant: every seed's metrics}``; a variant with several is drawn as the
            seeds' mean with a min-max band.
    """
    runs = runs or {}
    fig = Figure(figsize=(11, 4.2))
    ax_val, ax_train = fig.subplots(1, 2)
    for colour, (name, df) in zip(palette(len(metrics)), metrics.items(), strict=True):
        seeds = runs.get(name)
        _curve(ax_val, name, df, seeds, "val_loss", "o-", color=colour, ms=3)
        _curve(ax_train, name, df, seeds, "train_loss", "-", color=colour, lw=1)
    ax_val.axhline(
        baseline_val_loss,
        color=BASELINE_COLOUR,
        ls="--",
        label=f"baseline val_loss {baseline_val_loss:.4f}",
    )
    if not np.isclose(threshold, baseline_val_loss):
        ax_val.axhline(
            threshold, color=THRESHOLD_COLOUR, ls=":", label=f"threshold {threshold:.4f}"
        )
    else:
        ax_val.plot([], [], color=THRESHOLD_COLOUR, ls=":", label="threshold = baseline val_loss")
    ax_val.set(xlabel="optimizer step", ylabel="val_loss (masked MSE, normalised)")
    ax_val.set_title("Validation loss of the fine-tune")
    ax_val.legend(fontsize=8)
    ax_train.set(xlabel="optimizer step", ylabel="train_loss (masked MSE, normalised)")
    ax_train.set_title("Training loss")
    ax_train.legend(fontsize=8)
    for ax in (ax_val, ax_train):
        ax.grid(alpha=0.3)
    return save(fig, out)


def plot_alpha(
    metrics: Mapping[str, pd.DataFrame],
    alpha_cols: Mapping[str, Mapping[int, str]],
    *,
    out: Path,
    runs: Mapping[str, Sequence[pd.DataFrame]] | None = None,
) -> Path:
    """``elevation_alpha`` of each TopoFlow block against step, per variant.

    Args:
        metrics: ``{variant: metrics DataFrame}``.
        alpha_cols: ``{variant: {block: column}}`` (``aqnet.report.inputs.alpha_columns``).
        out: the PNG to write.
        runs: ``{variant: every seed's metrics}``; a variant with several is drawn as the
            seeds' mean with a min-max band.
    """
    runs = runs or {}
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    styles = ["-", "--", ":", "-."]
    blocks = sorted({b for cols in alpha_cols.values() for b in cols})
    colours = dict(zip(blocks, palette(len(blocks)), strict=True))
    drawn = 0
    for k, (name, df) in enumerate(metrics.items()):
        for block, col in alpha_cols.get(name, {}).items():
            _curve(
                ax,
                f"{name}: block {block}",
                df,
                runs.get(name),
                col,
                styles[k % len(styles)],
                color=colours[block],
            )
            drawn += 1
    ax.axhline(0.0, color="0.5", lw=0.8)
    if not drawn:
        ax.text(
            0.5,
            0.5,
            "no TopoFlow block in any variant (no alpha_block<i> column)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    else:
        ax.legend(fontsize=8)
    ax.set(xlabel="optimizer step", ylabel="elevation_alpha")
    ax.set_title("Elevation-bias strength alpha per TopoFlow block (starts at 0)")
    ax.grid(alpha=0.3)
    return save(fig, out)
