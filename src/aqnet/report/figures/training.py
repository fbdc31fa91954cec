"""Training figures: validation and training loss, and elevation_alpha, against step."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from aqnet.report.figures.style import BASELINE_COLOUR, THRESHOLD_COLOUR, palette, save


def plot_val_loss(
    metrics: Mapping[str, pd.DataFrame],
    *,
    baseline_val_loss: float,
    threshold: float,
    out: Path,
) -> Path:
    """val_loss against step per variant with the baseline and threshold lines; train loss beside.

    Args:
        metrics: ``{variant: metrics DataFrame}`` (columns ``step``, ``val_loss``,
            ``train_loss``).
        baseline_val_loss: the baseline's validation loss (a horizontal line).
        threshold: the success threshold (a horizontal line).
        out: the PNG to write.
    """
    fig = Figure(figsize=(11, 4.2))
    ax_val, ax_train = fig.subplots(1, 2)
    for colour, (name, df) in zip(palette(len(metrics)), metrics.items(), strict=True):
        val = df[df["val_loss"].notna()]
        ax_val.plot(val["step"], val["val_loss"], "o-", color=colour, ms=3, label=name)
        tr = df[df["train_loss"].notna()]
        ax_train.plot(tr["step"], tr["train_loss"], "-", color=colour, lw=1, label=name)
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
    metrics: Mapping[str, pd.DataFrame], alpha_cols: Mapping[str, Mapping[int, str]], *, out: Path
) -> Path:
    """``elevation_alpha`` of each TopoFlow block against step, per variant.

    Args:
        metrics: ``{variant: metrics DataFrame}``.
        alpha_cols: ``{variant: {block: column}}`` (``aqnet.report.inputs.alpha_columns``).
        out: the PNG to write.
    """
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    styles = ["-", "--", ":", "-."]
    blocks = sorted({b for cols in alpha_cols.values() for b in cols})
    colours = dict(zip(blocks, palette(len(blocks)), strict=True))
    drawn = 0
    for k, (name, df) in enumerate(metrics.items()):
        for block, col in alpha_cols.get(name, {}).items():
            rows = df[df[col].notna()]
            ax.plot(
                rows["step"],
                rows[col],
                styles[k % len(styles)],
                color=colours[block],
                label=f"{name}: block {block}",
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
