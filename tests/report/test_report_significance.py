"""The map of where the gain over the control is significant: per-tile tests with Holm's
correction on constructed evaluations with a known answer, the array behind the image, the PNG,
and the seed spread in the training figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg

from aqnet.config import POLLUTANTS, validate_config
from aqnet.report import figures
from aqnet.report.evaluation_file import evaluation_dataset
from aqnet.report.figures.gains import significant_gain
from aqnet.report.figures.training import seed_band
from aqnet.report.significance import significance_map

H, W, CELLS = 8, 16, (4, 4)  # 2 x 4 tiles
LEADS = [12, 24, 48, 96]
N_DAYS = 120
GAIN_TILES = {1, 6}  # tiles (row-major) where the variant is truly better
LAT = np.linspace(48.0, 50.0, H)
LON = np.linspace(-126.0, -122.0, W)


def _evaluation(tile_mse: np.ndarray, *, outside: int | None = None) -> object:
    """An evaluation of one start per day whose ``tile_mse`` is given (``(2, S, L, T)``)."""
    n_s = tile_mse.shape[1]
    init = np.datetime64("2018-01-01T00", "ns") + np.arange(n_s) * np.timedelta64(1, "D")
    valid = init[:, None] + np.array(LEADS) * np.timedelta64(1, "h")
    tile_mse = tile_mse.copy()
    if outside is not None:
        tile_mse[:, :, :, outside] = np.nan  # a tile outside the domain: nothing scored
    mse = np.broadcast_to(np.nanmean(tile_mse, axis=3)[..., None], (2, n_s, 4, len(POLLUTANTS)))
    return evaluation_dataset(
        mse=mse.copy(),
        std=np.full(len(POLLUTANTS), 10.0),
        sq_err_map=np.ones((2, len(POLLUTANTS), H, W)),
        init_time=init,
        valid_time=valid,
        starts=[(2018, i) for i in range(n_s)],
        lead_times_h=LEADS,
        units=["ug m-3"] * len(POLLUTANTS),
        lat=LAT,
        lon=LON,
        region_cells=CELLS,
        attrs={"split": "test"},
        tile_mse=tile_mse,
    )


@pytest.fixture(scope="module")
def arms():
    """Control and variant sharing the daily weather noise; the variant removes 30 % of the
    error in GAIN_TILES and nothing elsewhere (its own small noise everywhere)."""
    rng = np.random.default_rng(0)
    n_t = (H // CELLS[0]) * (W // CELLS[1])
    weather = 1.0 + 0.3 * rng.standard_normal((N_DAYS, 1, n_t)) ** 2  # shared by both arms
    control = weather + 0.02 * rng.random((N_DAYS, 4, n_t))
    factor = np.array([0.7 if t in GAIN_TILES else 1.0 for t in range(n_t)])
    variant = weather * factor + 0.02 * rng.random((N_DAYS, 4, n_t))
    baseline = np.broadcast_to(1.2 * weather, control.shape)
    ev_ctrl = _evaluation(np.stack([baseline, control]), outside=7)
    ev_new = _evaluation(np.stack([baseline, variant]), outside=7)
    return ev_ctrl, ev_new


def test_significant_exactly_where_the_variant_gains(arms):
    ev_ctrl, ev_new = arms
    rcfg = validate_config({})["report"]
    sig = significance_map(
        ev_new, rcfg, ev_ref=ev_ctrl, ref_name="ctrl", new_name="new", grid_shape=(H, W)
    )
    assert sig is not None and sig.correction == "Holm"
    assert sig.gain_pct.shape == sig.significant.shape == (2, 4)
    assert sig.n_tested == 7 and np.isnan(sig.gain_pct[1, 3])  # tile 7 outside: not tested
    assert set(np.flatnonzero(sig.significant.ravel())) == GAIN_TILES
    for t in GAIN_TILES:
        assert sig.gain_pct.ravel()[t] == pytest.approx(30.0, abs=1.5)
    table = sig.table.set_index("tile")
    assert (table["p_holm"] >= table["p_value"] - 1e-15).all()
    assert table.loc[sorted(GAIN_TILES), "ci_high"].lt(0).all()  # new - ref < 0 with confidence
    others = [t for t in table.index if t not in GAIN_TILES]
    assert table.loc[others, "gain_pct"].abs().lt(3.0).all()


def test_no_gain_gives_an_empty_map_and_a_missing_tile_mse_none(arms):
    ev_ctrl, _ = arms
    rcfg = validate_config({})["report"]
    same = significance_map(
        ev_ctrl, rcfg, ev_ref=ev_ctrl, ref_name="a", new_name="b", grid_shape=(H, W)
    )
    assert same.n_significant == 0
    plain = ev_ctrl.drop_vars("tile_mse")
    assert significance_map(plain, rcfg, ref_name="a", new_name="b", grid_shape=(H, W)) is None
    with pytest.raises(ValueError, match="tiles of 4x4 cells cut the 8x8 grid into 2x2"):
        significance_map(ev_ctrl, rcfg, ref_name="a", new_name="b", grid_shape=(8, 8))


def test_tiles_with_too_few_days_are_not_tested_and_stay_out_of_holm(arms):
    ev_ctrl, ev_new = arms
    rcfg = validate_config({})["report"]
    week = {"sample": slice(0, 7)}  # 7 days: fewer than 2 blocks of at least 4 days
    sig = significance_map(
        ev_new.isel(week), rcfg, ev_ref=ev_ctrl.isel(week), ref_name="c", new_name="n",
        grid_shape=(H, W),
    )  # fmt: skip
    assert len(sig.table) == 7 and not sig.table["testable"].any()  # 8 tiles, 1 outside
    assert sig.n_tested == 0 and sig.n_significant == 0
    assert np.isnan(sig.gain_pct).all() and (sig.table["p_holm"] == 1.0).all()
    full = significance_map(
        ev_new, rcfg, ev_ref=ev_ctrl, ref_name="c", new_name="n", grid_shape=(H, W)
    )
    assert full.n_tested == len(full.table) == 7 and full.table["testable"].all()


def _blue_pixels(path) -> int:
    rgb = mpimg.imread(path)[..., :3]
    return int(((rgb[..., 2] - rgb[..., 0]) > 0.35).sum())


def test_the_map_draws_significant_tiles_and_masks_the_rest(arms, tmp_path):
    ev_ctrl, ev_new = arms
    rcfg = validate_config({})["report"]
    sig = significance_map(
        ev_new, rcfg, ev_ref=ev_ctrl, ref_name="ctrl", new_name="new", grid_shape=(H, W)
    )
    shown = significant_gain(sig.gain_pct, sig.significant)
    assert list(np.flatnonzero(~shown.mask.ravel())) == sorted(GAIN_TILES)
    np.testing.assert_allclose(shown.compressed(), sig.gain_pct.ravel()[sorted(GAIN_TILES)])
    elev = np.outer(np.linspace(0, 1, H), np.linspace(0, 1, W)) * 2000.0
    kw = {"lat": LAT, "lon": LON, "elevation_m": elev}
    found = figures.plot_significance_map(
        sig.gain_pct, sig.significant, out=tmp_path / "sig.png", note="Holm over 7 tiles", **kw
    )
    none = figures.plot_significance_map(
        sig.gain_pct, np.zeros_like(sig.significant), out=tmp_path / "none.png", **kw
    )
    rgb = mpimg.imread(found)[..., :3]
    assert rgb.std() > 0.05  # not blank
    # two significant blue tiles on the map: far more blue than the colour bar alone
    assert _blue_pixels(found) > _blue_pixels(none) + 1000


def test_training_figures_show_the_seed_spread(tmp_path):
    steps = np.arange(0, 31, 10)
    runs = [
        pd.DataFrame(
            {
                "step": steps,
                "val_loss": 1.0 - 0.01 * steps * f,
                "train_loss": 1.0 - 0.01 * steps * f,
                "alpha_block0": 0.1 * steps * f,
            }
        )
        for f in (0.5, 1.0, 1.5)
    ]
    band = seed_band(runs, "val_loss")
    np.testing.assert_allclose(band["mean"], 1.0 - 0.01 * steps)
    np.testing.assert_allclose(band["min"], 1.0 - 0.015 * steps)
    np.testing.assert_allclose(band["max"], 1.0 - 0.005 * steps)
    assert (band["n_runs"] == 3).all()
    repeated = pd.concat([runs[0], runs[0].assign(val_loss=0.0).iloc[-1:]])  # a resumed step
    assert seed_band([repeated, runs[1]], "val_loss")["min"].iloc[-1] == 0.0
    out = figures.plot_alpha(
        {"default": runs[0]},
        {"default": {0: "alpha_block0"}},
        out=tmp_path / "alpha.png",
        runs={"default": runs},
    )
    one = figures.plot_alpha(
        {"default": runs[0]}, {"default": {0: "alpha_block0"}}, out=tmp_path / "one.png"
    )
    a, b = mpimg.imread(out)[..., :3], mpimg.imread(one)[..., :3]
    assert a.shape != b.shape or not np.allclose(a, b)  # the band is drawn
    coloured = lambda img: int((img.max(-1) - img.min(-1) > 0.2).sum())  # noqa: E731
    assert coloured(a) > coloured(b) + 500
