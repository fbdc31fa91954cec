"""Evaluation on the tiny cache with two tiny checkpoints, the report command end to end, the
captions in a real Snakemake HTML report, and that report rendered in headless Chromium.

The browser test is skipped only when no Chromium is installed (Debian: ``apt-get install -y
chromium``); everything else runs offline on the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from aqnet.cli import main
from aqnet.config import POLLUTANTS, dump_config, load_resolved, variant_config
from aqnet.data import load_static
from aqnet.provenance import gate_digest
from aqnet.report.attribution import VERDICTS
from aqnet.report.bias_share import config_share, terrain_share, token_elevations
from aqnet.report.build import OUTPUTS
from aqnet.report.evaluate import evaluate
from aqnet.report.evaluation_file import open_evaluation
from aqnet.report.render_check import RenderResult, _problems, check_report, find_chromium

REPO = Path(__file__).resolve().parents[2]
CAPTIONS = REPO / "workflow" / "report"
ALPHA = 2.0


def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def setup(tiny_config: dict[str, Any], tiny_cache: Path, tmp_path_factory) -> dict[str, Any]:
    """A resolved config for small evaluations and three checkpoints: the baseline, a fine-tune
    with the baseline's weights and alpha = 0, and the same with alpha = ``ALPHA``."""
    from aqnet.checkpoint import load_weights, save_lightning_checkpoint
    from aqnet.data import load_stats
    from aqnet.model import Forecaster, baseline_of, from_pipeline_config

    root = tmp_path_factory.mktemp("report_pipeline")
    cfg = copy.deepcopy(tiny_config)
    cfg["report"].update(eval_batches=1, eval_batch_size=8, block_hours=1, bootstrap_samples=200)
    cfg["report"].update(split="val", control="alpha0")  # alpha0: the fine-tune with alpha = 0
    cfg["finetune"]["device"] = "cpu"
    cfg = variant_config(cfg, "default")
    config_path = root / "config.yaml"
    dump_config(cfg, config_path)

    mcfg = from_pipeline_config(cfg, stats=load_stats(tiny_cache))
    torch.manual_seed(0)
    base = Forecaster(baseline_of(mcfg))
    base_ckpt = save_lightning_checkpoint(root / "baseline.ckpt", base, val_loss=1.25)
    fine = Forecaster(mcfg)
    load_weights(fine, base_ckpt)  # expects exactly the TopoFlow keys to be missing
    zero_ckpt = save_lightning_checkpoint(root / "alpha0.ckpt", fine, val_loss=1.25)
    with torch.no_grad():
        for key in fine.topoflow_keys():
            if key.endswith("elevation_alpha"):
                fine.get_parameter(key).fill_(ALPHA)
    alpha_ckpt = save_lightning_checkpoint(root / "alpha.ckpt", fine, val_loss=1.2)
    return {
        "root": root,
        "cfg": cfg,
        "config": config_path,
        "cache": tiny_cache,
        "baseline": base_ckpt,
        "alpha0": zero_ckpt,
        "alpha": alpha_ckpt,
    }


@pytest.fixture(scope="module")
def evaluations(setup: dict[str, Any]) -> dict[str, Any]:
    """The alpha = ALPHA fine-tune evaluated through ``aqnet evaluate``, the alpha = 0 one through
    the function."""
    out = setup["root"] / "variants"
    rc, text = run_cli(
        [
            "evaluate",
            "--config", str(setup["config"]),
            "--cache", str(setup["cache"]),
            "--baseline", str(setup["baseline"]),
            "--finetuned", str(setup["alpha"]),
            "--out", str(out / "default" / "evaluation.nc"),
        ]
    )  # fmt: skip
    zero = evaluate(
        setup["cfg"],
        setup["cache"],
        setup["baseline"],
        setup["alpha0"],
        out / "alpha0" / "evaluation.nc",
    )
    return {"rc": rc, "stdout": text, "alpha": out / "default" / "evaluation.nc", "alpha0": zero}


def test_evaluate_with_alpha_zero_equals_the_baseline(evaluations):
    ds = evaluations["alpha0"]
    sizes = {"model": 2, "sample": 2, "lead_time": 4, "pollutant": 6, "y": 16, "x": 32, "region": 4}
    assert dict(ds.sizes) == {**sizes, "tile": 16}  # wind-scan tiles of 4 x 8 cells
    mse = ds["mse"]
    assert np.isfinite(mse.values).all()
    np.testing.assert_allclose(
        mse.sel(model="finetuned").values, mse.sel(model="baseline").values, rtol=1e-5
    )
    regions = ds["region_mse"]  # basin, plateau, plain, mountain; NaN where a class is absent
    np.testing.assert_allclose(
        regions.sel(model="finetuned").values, regions.sel(model="baseline").values, rtol=1e-5
    )
    assert np.isfinite(regions.values).any()
    maps = ds["sq_err_map"]
    np.testing.assert_allclose(
        maps.sel(model="finetuned").values, maps.sel(model="baseline").values, rtol=1e-5
    )


def test_evaluate_writes_the_layout(setup, evaluations):
    assert evaluations["rc"] == 0, evaluations["stdout"]
    assert (
        "evaluate: 2 forecast start(s) x 4 lead time(s) of the val split" in evaluations["stdout"]
    )
    ds = open_evaluation(evaluations["alpha"])
    # eval_batches 1 x batch 8 = 8 items = 2 whole start times, spread over the 24 of the split.
    assert ds["time_index"].values.tolist() == [0, 23]
    assert ds["year"].values.tolist() == [2014, 2014]
    lead = ds["lead_time"].values.astype("timedelta64[h]")
    np.testing.assert_array_equal(ds["valid_time"].values, ds["init_time"].values[:, None] + lead)
    assert ds["pollutant"].values.tolist() == list(POLLUTANTS)
    units = dict(zip(ds["pollutant"].values, ds["units"].values, strict=True))
    assert units["pm25"] == "ug m-3" and units["co"] == "mg m-3"
    from aqnet.data import load_stats

    std = np.array([load_stats(setup["cache"])[p]["std"] for p in POLLUTANTS])
    np.testing.assert_allclose(ds["rmse_phys"].values, np.sqrt(ds["mse"].values) * std, rtol=1e-12)
    assert ds.attrs["baseline_checkpoint_val_loss"] == pytest.approx(1.25)
    assert list(ds.attrs["region_cells"]) == [4, 8]
    assert ds.attrs["n_items"] == 8 and ds.attrs["n_items_in_split"] == 96
    # alpha = ALPHA changes the fine-tune's predictions.
    diff = ds["mse"].sel(model="finetuned") - ds["mse"].sel(model="baseline")
    assert float(np.abs(diff).max()) > 1e-6


def test_tile_errors_add_up_to_the_domain_error(setup, evaluations):
    """Each tile's MSE, weighted by its scored cells, averages to the domain's MSE."""
    from aqnet.data import load_static

    ds = open_evaluation(evaluations["alpha"])
    mask = np.asarray(load_static(setup["cache"])["mask"], dtype=np.float64)  # (16, 32)
    cells = mask.reshape(4, 4, 4, 8).sum((1, 3)).ravel()  # (16,) scored cells per tile
    tiles = ds["tile_mse"].values  # (2, S, L, 16)
    assert np.isfinite(tiles[..., cells > 0]).all() and np.isnan(tiles[..., cells == 0]).all()
    weighted = np.nansum(tiles * cells, axis=-1) / cells.sum()  # (2, S, L)
    np.testing.assert_allclose(weighted, ds["mse"].values.mean(-1), rtol=1e-6)  # float32 sums
    diff = ds["tile_mse"].sel(model="finetuned") - ds["tile_mse"].sel(model="baseline")
    assert float(np.nanmax(np.abs(diff))) > 1e-6  # alpha = ALPHA moves them


def test_evaluate_matches_the_training_loss(setup, evaluations):
    """Per-sample MSE of the first item = aqnet.losses.masked_mse of the baseline on it."""
    from aqnet.checkpoint import load_weights, read_checkpoint
    from aqnet.data import CacheDataset
    from aqnet.losses import masked_mse
    from aqnet.model import Forecaster, ModelConfig

    ds = open_evaluation(evaluations["alpha"])
    data = CacheDataset(setup["cache"], "val", lead_times_h=(12, 24, 48, 96))
    x, y, lead, elev, mask = data[0]  # start time 0, lead 12 h
    hp = read_checkpoint(setup["baseline"]).hyper_parameters
    model = Forecaster(ModelConfig.from_dict(hp["model_config"]))
    load_weights(model, setup["baseline"], expected_missing=[])
    with torch.no_grad():
        loss = masked_mse(model.eval()(x[None], lead[None], elev[None]), y[None], mask[None])
    per_sample = ds["mse"].sel(model="baseline", sample=0, lead_time=12).values.mean()
    assert per_sample == pytest.approx(float(loss), rel=1e-5)


def test_models_without_a_stored_config_take_the_pipeline_config(setup, tmp_path):
    from aqnet.checkpoint import read_checkpoint
    from aqnet.report.evaluate import build_models

    plain = tmp_path / "plain.ckpt"
    state = read_checkpoint(setup["baseline"]).state_dict
    torch.save({k.removeprefix("model."): v for k, v in state.items()}, plain)
    base, fine, info = build_models(setup["cfg"], setup["cache"], plain, setup["alpha"])
    assert info["baseline_model_config_source"] == "pipeline config (baseline_of)"
    assert info["finetuned_model_config_source"] == f"checkpoint {setup['alpha']}"
    assert info["baseline_checkpoint_val_loss"] is None  # a plain state dict records none
    assert list(base.config.topoflow_blocks) == [] and list(fine.config.topoflow_blocks) == [0]
    assert info["region_cells"] == [4, 8]
    from aqnet.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="does not fit the model"):
        build_models(setup["cfg"], setup["cache"], setup["alpha"], plain)  # swapped


def make_variant_folder(folder: Path, evaluation: Path | None, cfg: dict[str, Any]) -> None:
    """What the pipeline leaves in results/variants/<v>/ besides evaluation.nc."""
    (folder / "finetune").mkdir(parents=True, exist_ok=True)
    if evaluation is not None and evaluation != folder / "evaluation.nc":
        (folder / "evaluation.nc").write_bytes(evaluation.read_bytes())
    step = np.arange(9)
    pd.DataFrame(
        {
            "step": step,
            "train_loss": np.r_[np.nan, 1.3 - 0.02 * step[1:]],
            "val_loss": np.where(step % 4 == 0, 1.25 - 0.01 * step, np.nan),
            "alpha_block0": 0.05 * step,
            "step_time_s": np.r_[np.nan, np.full(8, 0.2)],
            "val_time_s": np.where(step % 4 == 0, 1.0, np.nan),
        }
    ).to_csv(folder / "finetune" / "metrics.csv", index=False)
    (folder / "finetune" / "summary.json").write_text(json.dumps({"world_size": 1}))
    dump_config(cfg, folder / "config.yaml")
    made_under = {"config_digest": gate_digest(load_resolved(folder / "config.yaml"))}
    (folder / "audit_checkpoint.json").write_text(
        json.dumps({"verdict": "PASS", "load": {"loaded": ["a"], "missing": ["b"]}, **made_under})
    )
    (folder / "smoke_forward.json").write_text(
        json.dumps({"verdict": "PASS", "val_loss": 1.24, "baseline_val_loss": 1.25, **made_under})
    )
    (folder / "validate_short.json").write_text(
        json.dumps(
            {
                "verdict": "PASS",
                "projected_cost": {"gpu_hours": 0.002, "step_time_s": 0.2},
                **made_under,
            }
        )
    )


@pytest.fixture(scope="module")
def report_run(setup, evaluations) -> dict[str, Any]:
    variants = setup["root"] / "variants"
    make_variant_folder(variants / "default", None, setup["cfg"])
    alpha0_cfg = copy.deepcopy(setup["cfg"])
    alpha0_cfg["model"]["h_scale_m"] = 500.0
    make_variant_folder(variants / "alpha0", None, alpha0_cfg)
    gates = setup["root"] / "gates"
    gates.mkdir(exist_ok=True)
    (gates / "verify_wind_order.json").write_text(
        json.dumps({"verdict": "PASS", "cache": {"digest": "9eeba72ae0dd33f7"}, "digests_equal": 1})
    )
    # The projection of check_budget, and one stage's benchmark file (what it used locally).
    (gates / "check_budget.json").write_text(
        json.dumps(
            {
                "projection": {
                    "stages": [{"stage": "finetune", "variant": "default", "gpu_hours": 0.5}]
                }
            }
        )
    )
    bench = setup["root"] / "benchmarks" / "finetune"
    bench.mkdir(parents=True, exist_ok=True)
    (bench / "default.tsv").write_text("s\th:m:s\n450.0\t0:07:30\n")
    out = setup["root"] / "report"
    rc, text = run_cli(
        [
            "report",
            "--benchmarks", str(setup["root"] / "benchmarks"),
            "--config", str(setup["config"]),
            "--cache", str(setup["cache"]),
            "--variant-dir", f"default={variants / 'default'}",
            "--variant-dir", f"alpha0={variants / 'alpha0'}",
            "--gates", str(gates),
            "--out-dir", str(out),
        ]
    )  # fmt: skip
    return {"rc": rc, "stdout": text, "out": out}


def test_report_builds_every_file(setup, report_run):
    assert report_run["rc"] == 0, report_run["stdout"]
    out = report_run["out"]
    for name in OUTPUTS.values():
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    result = json.loads((out / "verdict.json").read_text())
    assert result["verdict"] in VERDICTS and result["variant"] == "default"
    assert report_run["stdout"].startswith(f"report: {result['verdict']}: ")
    assert result["final_val_loss"] == pytest.approx(1.17)  # last validated step of metrics.csv
    # success_threshold null: the baseline's paired mean loss on the same samples
    assert result["threshold"] == pytest.approx(result["vs_baseline"]["mean_ref"])
    assert result["threshold_source"] == "the baseline's paired mean loss on the same samples"
    assert result["split"] == "val" and result["control"] == "alpha0"
    assert result["vs_baseline"]["n_samples"] == 2
    assert result["vs_control"]["ref_name"] == "alpha0"
    # the two start times lie on one day: too few blocks for a test, so nothing is significant
    assert result["vs_control"]["n_days"] == 1 and result["vs_control"]["p_value"] == 1.0
    assert result["verdict"] != "SUCCESS"
    # per lead time (4), per pollutant (6) and per named region against the control, Holm within
    # each family
    families = [r["family"] for r in result["breakdown"]]
    assert families[:10] == ["lead_time_h"] * 4 + ["pollutant"] * 6
    assert set(families[10:]) == {"region"} and len(families) > 10
    assert all(r["p_holm"] >= r["p_value"] for r in result["breakdown"])
    assert set(result["variants"]) == {"default", "alpha0"}
    zero = result["variants"]["alpha0"]
    assert zero["verdict"] == "CONTROL"
    assert zero["vs_baseline"]["mean_diff"] == pytest.approx(0.0, abs=1e-6)
    assert zero["settings"]["h_scale_m"] == 500.0
    assert zero["gpu_hours"] == pytest.approx((8 * 0.2 + 3 * 1.0) / 3600 * 1 * 4.0)
    best = result["best_variant"]
    assert best["name"] == "default" and best["verdict"] == result["verdict"]  # control excluded
    assert [g["status"] for g in result["gates"]] == ["PASS"] * 7
    # GPU-hours per GPU stage: projected beside used (450 s on 1 node x 4 GPU-h per node-hour)
    usage = {(r["stage"], r["variant"]): r for r in result["gpu_hours_by_stage"]}
    assert len(usage) == 5 and list(usage)[0] == ("check_network", "shared")
    assert usage[("check_network", "shared")]["nodes"] == 2
    ft = usage[("finetune", "default")]
    assert ft["projected_gpu_hours"] == 0.5 and ft["used_gpu_hours"] == pytest.approx(0.5)
    assert ft["used_from"] == "benchmark file"
    assert usage[("validate_short", "alpha0")]["used_gpu_hours"] is None
    md = (out / "summary.md").read_text()
    md_rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()]
    assert ["finetune", "default", "1", "0.5", "0.5", "benchmark file"] in md_rows
    assert md.splitlines()[2] == f"## Verdict: {result['verdict']} (variant default)"
    assert (out / "summary.html").read_text().count("data:image/png;base64,") == 9
    # the significance map's tests: every tile of 4 x 8 cells that holds scored cells against
    # the control, none significant on one day of samples
    tiles = pd.read_csv(out / "gain_significance.csv")
    assert tiles.tile.tolist() == list(range(1, 16))  # tile 0 holds no scored cell
    assert not tiles.significant.any()
    assert (tiles.p_holm >= tiles.p_value).all()
    table = pd.read_csv(out / "rmse_table.csv")
    assert len(table) == 30 and set(table.pollutant) == set(POLLUTANTS)
    variants = pd.read_csv(out / "variants.csv")
    assert variants.variant.tolist() == ["default", "alpha0"]
    # what the bias can add on this terrain: the primary variant's bias on the cache's terrain
    share = result["bias_share"]
    assert share["direction"] == "uphill" and share["h_scale_m"] == 1000.0
    elevation = load_static(setup["cache"])["elevation_m"]
    heights_m = token_elevations(elevation, 2)
    z = heights_m / 1000.0
    assert share["n_tokens"] == z.size
    assert share["bilinear"] == pytest.approx(terrain_share(z)["bilinear"], rel=1e-9)
    assert share["lowest_m"] == pytest.approx(heights_m.min())
    tied = float(np.mean(heights_m <= heights_m.min() + 1.0))  # within 1 m of the lowest
    assert share["lowest_tied"] == pytest.approx(tied)
    assert tied >= 0.05  # the tiny terrain's sea: the summary names the tie
    assert f"{100 * tied:.1f} % of the tokens are tied at the lowest height (0 m; on a coast" in md
    assert 0.0 < share["key_only"] <= share["bilinear"] <= share["per_query"] <= 1.0
    assert f"reproduces {100 * share['bilinear']:.1f} % of the row-centred bias" in md


def test_the_bias_share_is_left_out_where_there_is_no_bias(setup):
    elevation = load_static(setup["cache"])["elevation_m"]
    share = config_share(setup["cfg"], setup["cache"], elevation)
    assert share is not None and 0.0 < share["bilinear"] <= 1.0
    assert config_share(setup["cfg"], setup["cache"], np.full_like(elevation, 300.0)) is None
    off = copy.deepcopy(setup["cfg"])
    off["model"]["elevation_bias"] = False
    assert config_share(off, setup["cache"], elevation) is None
    assert config_share(None, setup["cache"], elevation) is None


def test_report_fails_readably(setup, tmp_path):
    rc, text = run_cli(
        [
            "report",
            "--config", str(setup["config"]),
            "--cache", str(setup["cache"]),
            "--variant-dir", f"default={tmp_path}",
            "--out-dir", str(tmp_path / "report"),
        ]
    )  # fmt: skip
    assert rc == 1
    assert text.strip() == f"report: FAIL - evaluation file not found: {tmp_path / 'evaluation.nc'}"


SNAKEFILE = """
configfile: "config.yaml"
report: "{captions}/workflow.rst"


rule publish:
    output:
{outputs}
    shell:
        "cp {source}/* out/"


rule all:
    default_target: True
    input:
        rules.publish.output,
"""


@pytest.fixture(scope="module")
def html_report(setup, report_run) -> Path:
    """A Snakemake HTML report of the report's outputs with the captions of workflow/report/."""
    assert report_run["rc"] == 0, report_run["stdout"]
    work = setup["root"] / "snakemake"
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(setup["cfg"]))
    outputs = []
    for key, name in OUTPUTS.items():
        stem = Path(name).stem
        category = "1. Verdict" if stem in ("verdict", "summary") else "2. Report"
        outputs.append(
            f"        {key}=report('out/{name}', caption='{CAPTIONS / (stem + '.rst')}', "
            f"category='{category}'),"
        )
    snakefile = SNAKEFILE.replace("{captions}", str(CAPTIONS))
    snakefile = snakefile.replace("{outputs}", "\n".join(outputs))
    (work / "Snakefile").write_text(snakefile.replace("{source}", str(report_run["out"])))
    for args in (["--cores", "1"], ["--report", "report.html"]):
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", *args], cwd=work, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "report.html"


def test_every_output_has_a_caption():
    for name in OUTPUTS.values():
        stem = Path(name).stem
        assert (CAPTIONS / f"{stem}.rst").is_file(), f"no caption workflow/report/{stem}.rst"
    assert (CAPTIONS / "workflow.rst").is_file()


@pytest.mark.slow  # a Snakemake run
def test_captions_build_a_snakemake_report(html_report):
    text = html_report.read_text()
    assert html_report.stat().st_size > 100_000
    assert "Elevation-bias strength" in text and "Gate outcomes" in text  # captions rendered
    assert "TopoFlow fine-tune of a ClimaX-style air-quality forecaster" in text
    assert "Variants in this run: default." in text  # Jinja on snakemake.config rendered


@pytest.mark.slow  # a Snakemake run and the browser
@pytest.mark.skipif(
    find_chromium() is None, reason="no Chromium installed (apt-get install chromium)"
)
def test_html_report_renders_in_chromium(html_report, tmp_path):
    result = check_report(
        html_report,
        expect=["val_loss.png", "error_map.png", "gates.png", "variants.png", "summary.html"],
        screenshot=tmp_path / "shot.png",
    )
    assert result.ok, result.problems
    assert result.app and result.workflow_description and not result.errors
    assert {f["name"] for f in result.figures} >= {"val_loss.png", "alpha.png", "gates.png"}
    assert all(f["width"] > 100 and f["height"] > 100 for f in result.figures)
    assert all(result.listed.values()) and len(result.listed) == len(OUTPUTS)
    assert (tmp_path / "shot.png").stat().st_size > 10_000


def test_render_problems_are_named():
    broken = RenderResult(
        report="r.html",
        browser="chromium",
        app=True,
        workflow_description=True,
        listed={"out/a.png": True, "out/b.png": False},
        figures=[
            {"name": "a.png", "found": True, "complete": True, "width": 0, "height": 0},
        ],
        html=[{"name": "summary.html", "found": False}],
        errors=["Uncaught TypeError: x is undefined"],
        screenshot_std=0.0,
    )
    problems = _problems(broken, expect=["a.png", "c.png"])
    text = "\n".join(problems)
    assert "script error in the page: Uncaught TypeError" in text
    assert "out/b.png is not listed" in text
    assert "expected result c.png is not in the report" in text
    assert "figure a.png was not rendered" in text and "0x0 px" in text
    assert "HTML result summary.html was not shown" in text
    assert "screenshot is blank" in text


def test_a_gate_report_of_another_config_is_refused(setup, tmp_path):
    """A variant folder whose validate_short report was made under another config (copied from
    another results folder, or left from an earlier batch size) is not reported on."""
    from aqnet.report.inputs import GATES, check_gates_made_under

    folder = tmp_path / "default"
    make_variant_folder(folder, None, setup["cfg"])
    paths = {"config": folder / "config.yaml", **{g: folder / f"{g}.json" for g in GATES}}
    gates = {g: json.loads(paths[g].read_text()) if paths[g].is_file() else None for g in GATES}
    check_gates_made_under("default", gates, paths)  # made under its own config: accepted

    other = copy.deepcopy(setup["cfg"])
    other["finetune"]["steps"] = int(other["finetune"]["steps"]) + 1
    gates["validate_short"]["config_digest"] = gate_digest(other)
    with pytest.raises(ValueError) as err:
        check_gates_made_under("default", gates, paths)
    message = str(err.value)
    assert "variant 'default'" in message and "validate_short.json was made under config" in message
    assert gate_digest(other) in message and "rerun validate_short" in message

    del gates["validate_short"]["config_digest"]
    with pytest.raises(ValueError, match="records no config digest"):
        check_gates_made_under("default", gates, paths)
