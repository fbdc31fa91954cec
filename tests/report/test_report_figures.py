"""Report tables and figures from constructed evaluations and metrics, on the tiny cache's grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from aqnet.config import POLLUTANTS
from aqnet.report import analysis, figures
from aqnet.report.evaluation_file import evaluation_dataset
from aqnet.report.inputs import (
    alpha_columns,
    final_val_loss,
    gate_rows,
    load_variant,
    measured_gpu_hours,
    parse_variant_dirs,
    read_metrics_table,
)
from aqnet.report.regions import gain_by_elevation, gain_by_region, gain_by_terrain

STD = np.array([10.0, 20.0, 5.0, 8.0, 0.1, 15.0])
UNITS = ["ug m-3"] * 4 + ["mg m-3", "ug m-3"]
LEADS = [12, 24, 48, 96]
T0 = np.datetime64("2014-01-01T00:00", "ns")


def constructed_evaluation(
    static: dict[str, np.ndarray], *, n_days: int = 6, high_gain: float = 0.2, seed: int = 0
) -> Any:
    """Baseline MSE 1 + noise everywhere; the fine-tune removes ``high_gain`` of the error above
    the median elevation and nothing below it (maps and per-sample errors alike)."""
    rng = np.random.default_rng(seed)
    n_s = 24 * n_days
    elev = np.asarray(static["elevation_m"], dtype=np.float64)
    inside = np.asarray(static["mask"], dtype=bool)
    high = elev > np.median(elev[inside])
    base_map = np.where(inside, 1.0 + 0.1 * rng.random(elev.shape), np.nan)
    ft_map = np.where(high, base_map * (1.0 - high_gain), base_map)
    maps = np.stack([np.repeat(m[None], 6, axis=0) for m in (base_map, ft_map)])  # (2, C, H, W)
    frac_high = float(high[inside].mean())
    base = 1.0 + 0.05 * np.repeat(rng.normal(size=(n_days, 1, 1)), 24, axis=0)
    base = np.broadcast_to(base, (n_s, 4, 6)).copy() + 0.01 * rng.random((n_s, 4, 6))
    mse = np.stack([base, base * (1.0 - high_gain * frac_high)])  # (2, S, L, C)
    init = T0 + np.arange(n_s) * np.timedelta64(1, "h")
    valid = init[:, None] + np.array(LEADS) * np.timedelta64(1, "h")
    return evaluation_dataset(
        mse=mse,
        std=STD,
        sq_err_map=maps,
        init_time=init,
        valid_time=valid,
        starts=[(2014, i) for i in range(n_s)],
        lead_times_h=LEADS,
        units=UNITS,
        lat=static["lat"],
        lon=static["lon"],
        region_cells=(4, 8),
        attrs={"variant": "default", "baseline_checkpoint_val_loss": 1.0},
    )


def constructed_metrics(path: Path, *, steps: int = 40, blocks: tuple[int, ...] = (0,)) -> Path:
    step = np.arange(steps + 1)
    df = pd.DataFrame(
        {
            "step": step,
            "epoch": step / 10,
            "train_loss": np.r_[np.nan, 1.0 - 0.004 * step[1:]],
            "val_loss": np.where(step % 10 == 0, 1.0 - 0.005 * step, np.nan),
            **{f"alpha_block{b}": 0.01 * step * (b + 1) for b in blocks},
            "step_time_s": np.r_[np.nan, np.full(steps, 0.5)],
            "val_time_s": np.where(step % 10 == 0, 2.0, np.nan),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def static(tiny_cache: Path) -> dict[str, np.ndarray]:
    from aqnet.data import load_static

    return load_static(tiny_cache)


def test_rmse_table_is_physical_units(static):
    ev = constructed_evaluation(static)
    table = analysis.rmse_table(ev)
    assert len(table) == 6 * (4 + 1)
    row = table[(table.pollutant == "co") & (table.lead_time_h == 24)].iloc[0]
    mse_b = ev["mse"].sel(model="baseline", pollutant="co", lead_time=24).values
    assert row.rmse_baseline == pytest.approx(np.sqrt(mse_b.mean()) * 0.1)
    assert row.units == "mg m-3" and row.n_samples == 144
    ratio = row.rmse_finetuned / row.rmse_baseline
    assert row.change_pct == pytest.approx(100 * (ratio - 1))
    assert (table.change_pct < 0).all()


def test_paired_samples_and_comparisons(static):
    ev = constructed_evaluation(static)
    base, ft, times = analysis.paired_samples(ev)
    assert base.shape == ft.shape == times.shape == (144,)
    rcfg = {"block_hours": 24, "significance": 0.05, "bootstrap_samples": 500}
    test = analysis.compare_to_baseline(ev, rcfg)
    assert test.n_blocks == 6 and test.significant_improvement
    other = constructed_evaluation(static, high_gain=0.1)
    between = analysis.compare_fine_tunes(ev, other, rcfg, ref_name="default", new_name="h500")
    assert between.mean_diff > 0 and between.ref_name == "default"
    shifted = other.assign_coords(init_time=other.init_time + np.timedelta64(1000, "D"))
    with pytest.raises(ValueError, match="share 0 evaluated sample"):
        analysis.compare_fine_tunes(ev, shifted, rcfg, ref_name="default", new_name="h500")


def test_check_evaluation_names_the_file(static):
    ev = constructed_evaluation(static).drop_vars("rmse_phys")
    with pytest.raises(ValueError, match=r"x\.nc: not an aqnet evaluation file.*rmse_phys"):
        analysis.check_evaluation(ev, source="x.nc")


def test_metrics_reading(tmp_path):
    path = constructed_metrics(tmp_path / "metrics.csv", blocks=(0, 1))
    df = read_metrics_table(path)
    assert alpha_columns(df) == {0: "alpha_block0", 1: "alpha_block1"}
    assert final_val_loss(df) == (pytest.approx(0.8), 40)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"step": [0], "val_loss": [1.0]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"bad\.csv: metrics\.csv lacks the column\(s\) \['train"):
        read_metrics_table(bad)
    with pytest.raises(FileNotFoundError, match="metrics file not found"):
        read_metrics_table(tmp_path / "nope.csv")


def test_variant_folder_gates_and_cost(tmp_path, static):
    folder = tmp_path / "default"
    constructed_metrics(folder / "finetune" / "metrics.csv")
    constructed_evaluation(static).to_netcdf(folder / "evaluation.nc")
    (folder / "finetune" / "summary.json").write_text(json.dumps({"world_size": 16}))
    audit = {"verdict": "PASS", "load": {"loaded": ["a", "b"], "missing": ["c"], "unexpected": []}}
    (folder / "audit_checkpoint.json").write_text(json.dumps(audit))
    smoke = {"verdict": "FAIL", "reason": "smoke_forward: validation loss 0.964 vs 0.356"}
    (folder / "smoke_forward.json").write_text(json.dumps(smoke))
    short = {"verdict": "PASS", "projected_cost": {"gpu_hours": 0.05, "step_time_s": 0.4}}
    (folder / "validate_short.json").write_text(json.dumps(short))
    v = load_variant("default", folder)
    assert v.final_val_loss == pytest.approx(0.8) and v.final_alphas() == {0: pytest.approx(0.4)}
    launch = {"nodes": 1, "tasks_per_node": 8, "gpu_hours_per_node_hour": 4.0}
    # 40 steps x 0.5 s + 5 validations x 2 s = 30 s on 16 ranks = 2 nodes, 4 GPU-h per node-hour.
    assert measured_gpu_hours(v, launch) == pytest.approx(30 / 3600 * 2 * 4)
    wind = {"verdict": "PASS", "cache": {"digest": "ab" * 32}, "digests_equal": True}
    rows = gate_rows(wind, {"default": v})
    by_gate = {r["gate"]: r for r in rows}
    assert by_gate["verify_wind_order"]["detail"].startswith("digest abababababab, equal")
    assert by_gate["audit_checkpoint"]["detail"] == "2 keys loaded, 1 new (expected), 0 unexpected"
    assert by_gate["smoke_forward"]["status"] == "FAIL"
    assert "0.964" in by_gate["smoke_forward"]["detail"]
    assert by_gate["validate_short"]["detail"] == "step 0.4 s, projected 0.05 GPU-h"
    assert gate_rows(None, {})[0]["status"] == "MISSING"
    with pytest.raises(FileNotFoundError, match="evaluation file not found"):
        load_variant("other", tmp_path / "default" / "finetune")


def test_parse_variant_dirs():
    assert parse_variant_dirs(["default=a/b", "h500=c"]) == {
        "default": Path("a/b"),
        "h500": Path("c"),
    }
    for bad, msg in ((["x"], "NAME=DIR"), (["a=1", "a=2"], "given twice"), ([], "at least one")):
        with pytest.raises(ValueError, match=msg):
            parse_variant_dirs(bad)


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_make_figures_writes_every_figure(tmp_path, static, monkeypatch):
    ev = constructed_evaluation(static)
    other = constructed_evaluation(static, high_gain=0.1)
    metrics = {
        "default": read_metrics_table(constructed_metrics(tmp_path / "m1.csv")),
        "blocks01": read_metrics_table(constructed_metrics(tmp_path / "m2.csv", blocks=(0, 1))),
    }
    rcfg = {"block_hours": 24, "significance": 0.05, "bootstrap_samples": 200}
    rows = []
    for name, e in (("default", ev), ("blocks01", other)):
        _, ft, times = analysis.paired_samples(e)
        mean, low, high = analysis.loss_ci(ft, times, rcfg)
        rows.append(
            {
                "variant": name,
                "eval_loss": mean,
                "eval_loss_ci_low": low,
                "eval_loss_ci_high": high,
                "final_val_loss": 0.8,
                "gpu_hours": 0.03 if name == "default" else np.nan,
            }
        )
    comparison = pd.DataFrame(rows)
    regions, grid = gain_by_region(ev, static["elevation_m"], region_cells=(4, 8))
    base_map, ft_map = analysis.mse_maps(ev)
    data = figures.FigureData(
        metrics=metrics,
        alpha_cols={n: alpha_columns(m) for n, m in metrics.items()},
        baseline_val_loss=1.0,
        threshold=0.9,
        rmse=analysis.rmse_table(ev),
        base_map=base_map,
        ft_map=ft_map,
        lat=ev["lat"].values,
        lon=ev["lon"].values,
        elevation_m=static["elevation_m"],
        bands=gain_by_elevation(ev, static["elevation_m"]),
        terrain=gain_by_terrain(regions),
        gain_grid=grid,
        region_cells=(4, 8),
        gates=gate_rows(None, {}),
        costs=pd.DataFrame(
            {
                "variant": ["default", "blocks01"],
                "projected_gpu_hours": [0.02, np.nan],
                "measured_gpu_hours": [0.03, np.nan],
            }
        ),
        comparison=comparison,
        rmse_change=pd.DataFrame(
            {p: [-1.0, -0.5] for p in POLLUTANTS}, index=["default", "blocks01"]
        ),
        alphas={"default": {0: 0.4}, "blocks01": {0: 0.4, 1: 0.8}},
        baseline_eval_loss=1.0,
        tag="variant default",
    )
    drawn = _capture_figures(monkeypatch)
    paths = figures.make_figures(data, tmp_path / "report")
    assert set(paths) == set(figures.FIGURES)
    for key, path in paths.items():
        assert path.name == figures.FIGURES[key]
        assert _is_png(path), path
        _assert_not_blank(path)

    # What is plotted is the data: the validation curves and the baseline line ...
    ax_val = drawn["val_loss.png"].axes[0]
    for name, df in metrics.items():
        (line,) = [ln for ln in ax_val.get_lines() if ln.get_label() == name]
        rows = df[df["val_loss"].notna()]
        np.testing.assert_allclose(line.get_xdata(), rows["step"])
        np.testing.assert_allclose(line.get_ydata(), rows["val_loss"])
    baseline = [ln for ln in ax_val.get_lines() if ln.get_label().startswith("baseline val_loss")]
    assert len(baseline) == 1 and np.allclose(baseline[0].get_ydata(), 1.0)
    # ... alpha per block, from the metrics' columns ...
    ax_alpha = drawn["alpha.png"].axes[0]
    (alpha1,) = [ln for ln in ax_alpha.get_lines() if ln.get_label() == "blocks01: block 1"]
    np.testing.assert_allclose(alpha1.get_ydata(), metrics["blocks01"]["alpha_block1"])
    # ... the RMSE bars of the first pollutant, baseline then fine-tuned, per lead time ...
    ax_rmse = drawn["rmse_by_pollutant.png"].axes[0]
    first = data.rmse[
        (data.rmse["pollutant"] == POLLUTANTS[0]) & (data.rmse["lead_time_h"] != "all")
    ]
    heights = [bar.get_height() for bar in ax_rmse.patches]
    np.testing.assert_allclose(heights[: len(first)], first["rmse_baseline"])
    np.testing.assert_allclose(heights[len(first) : 2 * len(first)], first["rmse_finetuned"])
    # ... and the error maps: the baseline's, then fine-tuned - baseline (NaN off the domain).
    base_img, diff_img = (ax.get_images()[0] for ax in drawn["error_map.png"].axes[:2])
    np.testing.assert_allclose(np.ma.filled(base_img.get_array(), np.nan), base_map)
    np.testing.assert_allclose(np.ma.filled(diff_img.get_array(), np.nan), ft_map - base_map)


def _capture_figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Record every figure as it is saved: ``{file name: Figure}``."""
    from matplotlib.figure import Figure

    drawn: dict[str, Any] = {}
    real = Figure.savefig

    def savefig(fig: Any, fname: Any, *args: Any, **kwargs: Any) -> Any:
        drawn[Path(fname).name] = fig
        return real(fig, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return drawn


def _assert_not_blank(path: Path) -> None:
    """More than frames, ticks and titles (which are grey): at least 0.3 % of the pixels are
    coloured (curves, bars, colour maps; an empty two-panel figure has none)."""
    import matplotlib.image

    pixels = matplotlib.image.imread(path)[..., :3]
    coloured = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 0.15
    assert coloured.mean() > 0.003, f"{path.name} is blank: {coloured.mean():.2%} coloured pixels"


def test_alpha_figure_without_topoflow_blocks(tmp_path):
    df = read_metrics_table(constructed_metrics(tmp_path / "m.csv", blocks=()))
    out = figures.plot_alpha({"no_topoflow": df}, {"no_topoflow": {}}, out=tmp_path / "a.png")
    assert _is_png(out)


def test_pct_label():
    assert figures.pct_label(12.345) == "+12.3%"
    assert figures.pct_label(-0.0123) == "-0.012%"
    assert figures.pct_label(float("nan")) == "n/a"
