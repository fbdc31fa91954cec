"""Several fine-tune seeds per variant: their evaluations pooled, and the spread between them.

A paired test over samples conditions on the trained models: two arms that differ only by
training noise (another seed, another path of the optimiser) are "significantly" different on
enough samples. With ``finetune.seeds`` every variant and the control run once per seed
(``aqnet.config.with_seeds``); here

* :func:`pool_runs` averages a variant's per-sample losses over its seeds (the expected loss of
  one training run), which the paired tests then use;
* :func:`seed_test` compares the per-seed mean losses of a variant with the control's: Welch's
  t test over the runs, so a gain must exceed the spread between training runs to count.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import xarray as xr
from scipy import stats as _sps

from aqnet.report.analysis import paired_samples
from aqnet.report.inputs import VariantResults


def pool_runs(runs: Sequence[VariantResults]) -> VariantResults:
    """One variant's runs (seeds) as one: errors averaged over the runs, the first run's rest.

    ``mse``, ``rmse_phys ** 2``, ``sq_err_map`` and (where every run has them) ``region_mse`` and
    ``tile_mse`` are averaged over the runs on the same samples; training metrics, config and
    gates are the first run's.

    Raises:
        ValueError: when the runs were evaluated on different samples or splits.
    """
    first = runs[0]
    if len(runs) == 1:
        return first
    ev0 = first.evaluation
    for r in runs[1:]:
        ev = r.evaluation
        same = (
            ev.sizes == ev0.sizes
            and np.array_equal(ev["init_time"].values, ev0["init_time"].values)
            and ev.attrs.get("split") == ev0.attrs.get("split")
        )
        if not same:
            raise ValueError(
                f"seeds of {first.name}: {r.files['evaluation']} was evaluated on other samples "
                f"than {first.files['evaluation']}: evaluate every seed on the same split"
            )
    mse = xr.concat([r.evaluation["mse"] for r in runs], "run").mean("run")
    rmse_sq = xr.concat([r.evaluation["rmse_phys"] ** 2 for r in runs], "run").mean("run")
    maps = xr.concat([r.evaluation["sq_err_map"] for r in runs], "run").mean("run")
    pooled = ev0.copy()
    pooled["mse"] = mse.assign_attrs(ev0["mse"].attrs)
    pooled["rmse_phys"] = np.sqrt(rmse_sq).assign_attrs(ev0["rmse_phys"].attrs)
    pooled["sq_err_map"] = maps.assign_attrs(ev0["sq_err_map"].attrs)
    for name in ("region_mse", "tile_mse"):  # optional per-area errors
        if all(name in r.evaluation for r in runs):
            area = xr.concat([r.evaluation[name] for r in runs], "run").mean("run")
            pooled[name] = area.assign_attrs(ev0[name].attrs)
    pooled.attrs["pooled_runs"] = ", ".join(r.name for r in runs)
    return dataclasses.replace(first, evaluation=pooled)


def run_means(runs: Sequence[VariantResults]) -> list[float]:
    """Each run's mean fine-tune loss on its evaluated samples (the seed spread's values)."""
    return [float(np.mean(paired_samples(r.evaluation)[1])) for r in runs]


@dataclass(frozen=True)
class SeedTest:
    """Per-seed mean losses of ``new`` against ``ref``: Welch's t test over the runs."""

    ref_name: str
    new_name: str
    ref_means: tuple[float, ...]
    new_means: tuple[float, ...]
    mean_diff: float
    ref_spread: float
    new_spread: float
    t_statistic: float
    p_value: float

    def describe(self) -> str:
        return (
            f"over {len(self.new_means)} and {len(self.ref_means)} seeds: {self.new_name} - "
            f"{self.ref_name} mean loss difference {self.mean_diff:+.4g}, seed spread (sd) "
            f"{self.new_spread:.3g} and {self.ref_spread:.3g}, Welch t = {self.t_statistic:.3g}, "
            f"p = {self.p_value:.3g}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["description"] = self.describe()
        return d


def seed_test(
    ref_means: Sequence[float], new_means: Sequence[float], *, ref_name: str, new_name: str
) -> SeedTest | None:
    """Welch's two-sided t test of the per-seed means; ``None`` with fewer than 2 seeds on a
    side (the spread between training runs is then not measured)."""
    ref = np.asarray(ref_means, dtype=np.float64)
    new = np.asarray(new_means, dtype=np.float64)
    if ref.size < 2 or new.size < 2:
        return None
    diff = float(new.mean() - ref.mean())
    if ref.std(ddof=1) == 0 and new.std(ddof=1) == 0:
        t, p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    else:
        res = _sps.ttest_ind(new, ref, equal_var=False)
        t, p = float(res.statistic), float(res.pvalue)
    return SeedTest(
        ref_name=ref_name,
        new_name=new_name,
        ref_means=tuple(float(v) for v in ref),
        new_means=tuple(float(v) for v in new),
        mean_diff=diff,
        ref_spread=float(ref.std(ddof=1)),
        new_spread=float(new.std(ddof=1)),
        t_statistic=t,
        p_value=p,
    )
