"""What the report's figures share: colours, saving, labels, map extents and terrain contours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

DPI = 110
BASELINE_COLOUR = "0.35"
FINETUNED_COLOUR = "tab:blue"
THRESHOLD_COLOUR = "tab:red"
STATUS_COLOURS = {"PASS": "#2e7d32", "FAIL": "#c62828", "MISSING": "#9e9e9e"}


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def pct_label(value: float) -> str:
    """A signed percentage with enough digits to show small changes: ``+1.2%``, ``-0.034%``."""
    if not np.isfinite(value):
        return "n/a"
    return f"{value:+.1f}%" if abs(value) >= 1 else f"{value:+.2g}%"


def robust_max(values: np.ndarray, q: float = 99.0) -> float:
    """The ``q``-th percentile of ``|values|`` over finite entries (1 when there is none)."""
    finite = np.abs(values[np.isfinite(values)])
    top = float(np.percentile(finite, q)) if finite.size else 0.0
    return top if top > 0 else (float(finite.max()) if finite.size and finite.max() > 0 else 1.0)


def palette(n: int) -> list[Any]:
    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def map_extent(lat: np.ndarray, lon: np.ndarray) -> tuple[float, float, float, float]:
    dlon = float(lon[1] - lon[0]) if lon.size > 1 else 1.0
    dlat = float(lat[1] - lat[0]) if lat.size > 1 else 1.0
    return (
        float(lon[0] - dlon / 2),
        float(lon[-1] + dlon / 2),
        float(lat[0] - dlat / 2),
        float(lat[-1] + dlat / 2),
    )


def terrain_contours(ax: Any, lon: np.ndarray, lat: np.ndarray, elevation_m: np.ndarray) -> None:
    if np.nanmax(elevation_m) - np.nanmin(elevation_m) <= 0:
        return
    levels = np.linspace(np.nanmin(elevation_m), np.nanmax(elevation_m), 7)[1:-1]
    cs = ax.contour(lon, lat, elevation_m, levels=levels, colors="k", linewidths=0.6, alpha=0.7)
    ax.clabel(cs, fmt="%.0f m", fontsize=6)


def clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def diverging_map(ax: Any, values: np.ndarray, extent: Any, *, vmax: float, cmap: str) -> Any:
    """``values`` as a map on a colour scale centred on 0, from -vmax to +vmax."""
    return ax.imshow(
        values,
        origin="lower",
        extent=extent,
        cmap=cmap,
        norm=TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax),
        aspect="auto",
    )


def label_tiles(
    ax: Any, extent: Any, labels: np.ndarray, colours: np.ndarray | None = None
) -> None:
    """Write ``labels[r, c]`` at the centre of tile ``(r, c)`` of an ``(Ry, Rx)`` map over
    ``extent`` (an empty label writes nothing); only for up to 64 tiles, where they stay legible."""
    ry, rx = labels.shape
    if ry * rx > 64:
        return
    x0, x1, y0, y1 = extent
    for r in range(ry):
        for c in range(rx):
            if labels[r, c]:
                ax.text(
                    x0 + (c + 0.5) * (x1 - x0) / rx,
                    y0 + (r + 0.5) * (y1 - y0) / ry,
                    labels[r, c],
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if colours is None else colours[r, c],
                )
