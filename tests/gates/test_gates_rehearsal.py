"""Gate ``rehearse_report``: evaluate and report run on validate_short's weights before the
fine-tune; a report that could not be built fails the gate instead of failing after the run."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aqnet.config import dump_config, variant_config
from aqnet.gates.rehearsal import rehearse_report
from aqnet.stage import StageFailure, read_json, run_stage
from aqnet.train import run_training
from aqnet.train.validate_short import validate_short

TRAIN = {"steps": 4, "batch_size": 4, "val_every": 2, "checkpoint_every": 2, "log_every": 0}


@pytest.fixture(scope="module")
def variant(tiny_config: dict[str, Any], tiny_cache: Path, tmp_path_factory: Any) -> dict:
    """A baseline, and one variant's folder as the pipeline leaves it after validate_short."""
    root = tmp_path_factory.mktemp("rehearsal")
    cfg = copy.deepcopy(tiny_config)
    cfg["baseline"]["train"].update(TRAIN)
    cfg["finetune"].update(TRAIN)
    cfg["gates"]["validate_short_steps"] = 2
    cfg["validation"].update(samples=4, batch_size=2)
    # One variant, no control arm: the rehearsal of a report, not of the verdict's comparison.
    cfg["report"].update(eval_batch_size=4, bootstrap_samples=100, control=None)
    cfg = variant_config(cfg, "default")
    run_training(
        cfg,
        stage="baseline",
        cache_dir=tiny_cache,
        out_dir=root / "baseline",
        state_dir=root / "state" / "baseline",
    )
    ckpt = root / "baseline" / "baseline.ckpt"
    vdir = root / "variants" / "default"
    dump_config(cfg, vdir / "config.yaml")
    code = run_stage(
        "validate_short",
        lambda rep: validate_short(
            cfg,
            cache_dir=tiny_cache,
            out_dir=vdir / "validate_short",
            state_dir=root / "state" / "vs",
            init_checkpoint=ckpt,
            expected_world_size=None,
            report=rep,
        ),
        vdir / "validate_short.json",
    )
    assert code == 0
    return {"cfg": cfg, "ckpt": ckpt, "dir": vdir, "root": root}


def test_a_split_too_short_for_any_test_fails_before_the_fine_tune(
    variant: dict, tiny_cache: Path, tmp_path: Path
) -> None:
    cfg = copy.deepcopy(variant["cfg"])
    cfg["gates"]["require_testable_split"] = True
    report: dict[str, Any] = {}
    kwargs = {
        "cache_dir": tiny_cache,
        "baseline_checkpoint": variant["ckpt"],
        "variant_dirs": {"default": variant["dir"]},
        "gates_dir": None,
        "work_dir": tmp_path / "rehearsal",
        "batches": 2,
    }
    with pytest.raises(StageFailure) as err:
        rehearse_report(cfg, report=report, **kwargs)
    message = str(err.value)
    assert "the evaluation of the test split covers 1 forecast start day(s)" in message
    assert "fewer than the 8 days of the 2 blocks of at least 4 d" in message
    assert "every verdict INCONCLUSIVE" in message and "gates.require_testable_split" in message
    assert report["evaluation_days"] == 1 and report["needed_days"] == 8
    assert not (tmp_path / "rehearsal").exists()  # refused before anything was evaluated
    cfg["gates"]["require_testable_split"] = False
    line = rehearse_report(cfg, report=report, **kwargs)
    assert line.startswith("the real evaluation covers 1 start days (a test needs 8)")


def test_start_days_count_the_days_of_the_selected_start_times() -> None:
    from aqnet.report.evaluate import select_items, start_days

    t0 = np.datetime64("2018-01-01T00", "h")
    infos = [
        (2018, s, lead, t0 + np.timedelta64(s * 6 + lead, "h"))
        for s in range(40)  # a start every 6 h: 10 days
        for lead in (12, 24, 48, 96)
    ]
    items, _ = select_items(infos, n_items=None)
    assert start_days(infos, items) == 10
    items, starts = select_items(infos, n_items=3 * 4)  # 3 whole start times, spread evenly
    assert [s for _, s in starts] == [0, 20, 39] and start_days(infos, items) == 3
    items, _ = select_items(infos, n_items=4 * 4)  # starts 0, 13, 26, 39: days 0, 3, 6, 9
    assert start_days(infos, items) == 4


def test_the_report_is_built_from_validate_shorts_weights(
    variant: dict, tiny_cache: Path, tmp_path: Path
) -> None:
    assert (variant["dir"] / "validate_short" / "final.ckpt").is_file()
    report: dict[str, Any] = {}
    line = rehearse_report(
        variant["cfg"],
        cache_dir=tiny_cache,
        baseline_checkpoint=variant["ckpt"],
        variant_dirs={"default": variant["dir"]},
        gates_dir=None,
        work_dir=tmp_path / "rehearsal",
        batches=2,
        report=report,
    )
    assert report["evaluated_items"] == {"default": 8}  # 2 batches of 4 items
    assert {"verdict.json", "summary.html", "val_loss.png", "rmse_table.csv"} <= set(
        report["files"]
    )
    verdict = read_json(tmp_path / "rehearsal" / "report" / "verdict.json")
    assert verdict["variant"] == "default"
    assert "evaluate ran on validate_short's weights of 1 variant(s)" in line
    # The variant's own folder is untouched: the rehearsal writes only under work_dir.
    assert not (variant["dir"] / "evaluation.nc").exists()


def test_a_cache_without_units_fails_the_gate_before_the_fine_tune(
    variant: dict, tiny_cache: Path, tmp_path: Path
) -> None:
    """A cache built before units were recorded, from stores without units attributes: the
    evaluation cannot label its errors. The gate fails with evaluate's own message."""
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    meta = json.loads((cache / "meta.json").read_text())
    meta.pop("units")
    meta["sources"] = {}
    (cache / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StageFailure) as err:
        rehearse_report(
            variant["cfg"],
            cache_dir=cache,
            baseline_checkpoint=variant["ckpt"],
            variant_dirs={"default": variant["dir"]},
            gates_dir=None,
            work_dir=tmp_path / "rehearsal",
            batches=1,
            report={},
        )
    msg = str(err.value)
    assert msg.startswith("rehearse_report: evaluate would fail for variant 'default' after the")
    assert "evaluate: no units for ['pm25', 'pm10', 'so2', 'no2', 'co', 'o3']" in msg

    # A variant whose validate_short left no weights is named.
    empty = tmp_path / "variants" / "h500"
    empty.mkdir(parents=True)
    dump_config(variant["cfg"], empty / "config.yaml")
    with pytest.raises(StageFailure, match=r"variant 'h500' lacks .*final\.ckpt"):
        rehearse_report(
            variant["cfg"],
            cache_dir=tiny_cache,
            baseline_checkpoint=variant["ckpt"],
            variant_dirs={"default": variant["dir"], "h500": empty},
            gates_dir=None,
            work_dir=tmp_path / "rehearsal",
            batches=1,
            report={},
        )
