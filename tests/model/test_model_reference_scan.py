"""The researchers' scan rule (``wind_scan: reference``): hand-worked cases for each quirk, the
batched permutation against the per-region loop, and its place in the forecaster."""

import math

import pytest
import torch

from aqnet.model import Forecaster, tiny
from aqnet.model.aggregation import VariableAggregation
from aqnet.model.reference_scan import (
    nearest_sector,
    reference_permutation,
    reference_permutation_loop,
    region_angles,
)
from aqnet.model.wind_scan import WindScan

HP, WP = 8, 16  # patch grid of a 16 x 32 field with patch 2: 4 x 4 regions of 2 x 4 patches
PIX = (16, 32)
EAST = [0, 4, 1, 5, 2, 6, 3, 7]  # angle 0: by column, the two rows of a column tied (stable)
SHALLOW = [4, 0, 5, 1, 6, 2, 7, 3]  # 0 < angle < 25 deg on this grid: row 1 before row 0


def field(angle_deg: float, speed: float = 1.0, shape=PIX, dtype=torch.float64):
    """(1, H, W) u and v of a uniform wind blowing toward ``angle_deg`` (0 = +column)."""
    a = math.radians(angle_deg)
    u = torch.full((1, *shape), speed * math.cos(a), dtype=dtype)
    v = torch.full((1, *shape), speed * math.sin(a), dtype=dtype)
    return u, v


def run_of(perm: torch.Tensor, r: int) -> list[int]:
    """The local order written into slots 8 r .. 8 r + 7."""
    return (perm[0, 8 * r : 8 * r + 8] - 8 * r).tolist()


def both(u, v, grid=(HP, WP)):
    """The batched permutation, checked equal to the loop written the reference's way."""
    fast = reference_permutation(u, v, grid_patches=grid)
    slow = reference_permutation_loop(u, v, grid_patches=grid)
    assert torch.equal(fast, slow)
    return fast


def test_stable_ties_keep_raster_order():
    """East wind (angle exactly 0): the two rows of each column project equally; the stable sort
    keeps row 0 first. A calm region (speed 0) gets angle atan2(0, 0) = 0 too."""
    perm = both(*field(0.0))
    assert all(run_of(perm, r) == EAST for r in range(16))
    calm = both(*field(0.0, speed=0.0))
    assert torch.equal(calm, perm)


def test_the_angle_is_continuous_not_a_sector():
    """10 degrees lies in sector 0 (within 11.25), whose order is EAST; the continuous angle
    lifts row 0 by (2/7) sin(10 deg) = 0.050 above row 1, less than a column step
    (2/15) cos(10 deg) = 0.131, so within each column row 1 comes first."""
    perm = both(*field(10.0))
    assert run_of(perm, 0) == SHALLOW
    assert nearest_sector(torch.tensor([math.radians(10.0)])).tolist() == [0]


def test_row_zero_counts_as_north():
    """Wind toward +v (80 deg): rows dominate. With row 0 as north, the southern row 1 is upwind
    and comes first; aqnet's convention (row 0 south) would put row 0 first."""
    perm = both(*field(80.0))
    assert run_of(perm, 0) == [4, 5, 6, 7, 0, 1, 2, 3]


def test_coordinates_are_normalised_by_the_whole_patch_grid():
    """At 20 deg a column step weighs (2 / (Wp - 1)) cos a and a row step (2 / (Hp - 1)) sin a.
    Wp = 16: 0.125 > row 0.098 -> SHALLOW. Wp = 32: 0.061 < 0.098, so row 1 runs ahead by one
    column. The regions are the same 2 x 4 patches in both; only the whole grid differs."""
    assert run_of(both(*field(20.0)), 0) == SHALLOW
    wide = both(*field(20.0, shape=(16, 64)), grid=(8, 32))
    assert run_of(wide, 0) == [4, 5, 0, 6, 1, 7, 2, 3]


def test_the_mean_wind_is_speed_weighted():
    """Half the region blows (2, 0), half (0, 1.2). The plain mean (1, 0.6) points at 31.0 deg,
    the speed-weighted mean (1.25, 0.45) at 19.8 deg: below the 25.0 deg where a row-1 patch
    overtakes the previous column's row-0 patch, so the order is SHALLOW."""
    u = torch.zeros(1, *PIX, dtype=torch.float64)
    v = torch.zeros(1, *PIX, dtype=torch.float64)
    u[:, :, 0::2] = 2.0  # alternate columns inside every 4 x 8 pixel region
    v[:, :, 1::2] = 1.2
    angles = region_angles(u, v, grid_patches=(HP, WP), region_patches=(2, 4))
    torch.testing.assert_close(angles, torch.full((1, 16), math.atan2(0.45, 1.25)).double())
    perm = both(u, v)
    assert run_of(perm, 0) == SHALLOW
    plain = both(*field(math.degrees(math.atan2(0.6, 1.0))))
    assert run_of(plain, 0) == [4, 5, 0, 6, 1, 7, 2, 3]


def test_orders_are_written_into_runs_of_eight_raster_slots():
    """Only the wind of pixel region 5 (region row 1, column 1) differs. The reordered slots are
    40..47 (patch row 2, columns 8..15), not region 5's own 2 x 4 block (patches 36..39, 52..55)."""
    u, v = field(0.0)
    u[:, 4:8, 8:16], v[:, 4:8, 8:16] = math.cos(math.radians(80)), math.sin(math.radians(80))
    perm = both(u, v)
    assert run_of(perm, 5) == [4, 5, 6, 7, 0, 1, 2, 3]
    assert all(run_of(perm, r) == EAST for r in range(16) if r != 5)
    moved = (perm[0] != torch.tensor([8 * r + i for r in range(16) for i in EAST])).nonzero()
    assert moved.flatten().tolist() == list(range(40, 48))
    # every slot takes its token from its own run of 8
    assert torch.equal(perm[0] // 8, torch.arange(128) // 8)


def test_float32_angle_of_a_north_wind_reverses_the_columns():
    """u = 0, v > 0: atan2 in float32 is float32(pi / 2) > pi / 2, whose cosine is -4.4e-8, so the
    columns of a row sort east to west; in float64 atan2 gives a value below pi / 2 and west to
    east. The reference computes the angle in the input's dtype; so does the batched scan."""
    u = torch.zeros(1, *PIX)
    v = torch.ones(1, *PIX)
    assert run_of(both(u, v), 0) == [7, 6, 5, 4, 3, 2, 1, 0]
    assert run_of(both(u.double(), v.double()), 0) == [4, 5, 6, 7, 0, 1, 2, 3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_equals_the_per_region_loop_at_paper_size(dtype):
    g = torch.Generator().manual_seed(3)
    u = torch.randn(2, 128, 256, generator=g).to(dtype) + 0.3
    v = torch.randn(2, 128, 256, generator=g).to(dtype) - 0.2
    u[1, :8, :16] = 0.0  # two calm regions
    v[1, :8, :16] = 0.0
    perm = both(u, v, grid=(64, 128))
    assert perm.shape == (2, 8192)
    assert torch.equal(perm.sort(dim=1).values, torch.arange(8192).expand(2, -1))
    assert not torch.equal(perm[0], perm[1])  # per-sample orders


def test_the_batched_permutation_never_reads_values_on_the_host():
    """On the meta device there are no values: a ``.item()`` or a value-dependent Python branch
    would raise. The permutation still comes out with its shape."""
    u = torch.empty(3, 128, 256, device="meta")
    perm = reference_permutation(u, u, grid_patches=(64, 128))
    assert perm.shape == (3, 8192) and perm.device.type == "meta"


def test_nearest_sector_tie_goes_to_the_lower_sector():
    half = math.pi / 16  # 11.25 deg, exactly between sectors 0 and 1
    angles = torch.tensor([half, -half, math.pi / 8, 3 * math.pi / 2, -1e-9], dtype=torch.float64)
    assert nearest_sector(angles).tolist() == [0, 0, 1, 12, 0]


def test_grids_the_rule_cannot_tile_are_refused():
    u = torch.zeros(1, 2, 32)
    with pytest.raises(ValueError, match=r"patch grid 1x16 needs at least 2 rows"):
        reference_permutation(u, u, grid_patches=(1, 16))
    with pytest.raises(ValueError, match=r"region_patches 2x4 must divide the patch grid 8x10"):
        reference_permutation(torch.zeros(1, 16, 20), torch.zeros(1, 16, 20), grid_patches=(8, 10))


def test_a_model_on_such_a_grid_is_refused_when_built():
    with pytest.raises(ValueError, match=r"patch grid 1x16 needs at least 2 rows"):
        Forecaster(tiny(img_size=(2, 32), wind_scan="reference", region_patches=(1, 4)))


def test_reordering_before_or_after_the_variable_aggregation_is_the_same():
    """The reference reorders (B, V, L, D) before the aggregation, aqnet (B, L, D) after it."""
    torch.manual_seed(0)
    agg = VariableAggregation(num_variables=5, embed_dim=16, num_heads=4).double()
    tokens = torch.randn(2, 5, 128, 16, dtype=torch.float64)
    u, v = torch.randn(2, *PIX, dtype=torch.float64), torch.randn(2, *PIX, dtype=torch.float64)
    perm = reference_permutation(u, v, grid_patches=(HP, WP))
    before = agg(torch.take_along_dim(tokens, perm[:, None, :, None], dim=2))
    after = WindScan.scan(agg(tokens), perm)
    torch.testing.assert_close(before, after, rtol=0, atol=1e-14)


def _permute_patches(fields: torch.Tensor, perm: torch.Tensor, p: int = 2) -> torch.Tensor:
    """(B, C, H, W) -> the same with patch ``s`` replaced by patch ``perm[b, s]``."""
    b, c, h, w = fields.shape
    t = fields.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, Hp, Wp, C, p, p)
    t = WindScan.scan(t.reshape(b, -1, c, p, p), perm).reshape(b, h // p, w // p, c, p, p)
    return t.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def test_forecaster_reference_mode_has_no_inverse_and_carries_true_elevation():
    """With the position embedding zeroed the transformer is permutation-equivariant, so the
    reference-scan model's output is the unscanned model's with patch ``s`` taken from patch
    ``perm[s]`` (no inverse before unpatchify). With the elevation bias acting (alpha 1.5) this
    holds only because each token's elevation in metres travels with it."""
    torch.manual_seed(0)
    off = Forecaster(tiny(img_size=PIX, wind_scan="off")).double().eval()
    ref = Forecaster(tiny(img_size=PIX, wind_scan="reference")).double().eval()
    ref.load_state_dict(off.state_dict())
    assert not ref.wind_scan.unscans and off.wind_scan.unscans
    with torch.no_grad():
        for model in (off, ref):
            model.blocks[0].attn.elevation_alpha.fill_(1.5)
            model.pos_embed.zero_()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 15, *PIX, generator=g, dtype=torch.float64)
    elev = torch.rand(2, *PIX, generator=g, dtype=torch.float64) * 3000.0
    lead = torch.tensor([12.0, 48.0], dtype=torch.float64)
    perm = ref.wind_scan.permutation(x)
    u, v = ref.config.in_variables.index("u"), ref.config.in_variables.index("v")
    assert torch.equal(perm, reference_permutation(x[:, u], x[:, v], grid_patches=(HP, WP)))
    assert not torch.equal(perm[0], torch.arange(128))
    with torch.no_grad():
        want = _permute_patches(off(x, lead, elev), perm)
        got = ref(x, lead, elev)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert (got - off(x, lead, elev)).abs().max() > 1e-3


def test_reference_mode_ignores_the_wind_normalisation():
    """The reference reads the normalised channels: wind_norm changes aqnet's sectors, not this."""
    x = torch.randn(2, 15, *PIX, dtype=torch.float64)
    a = Forecaster(tiny(img_size=PIX, wind_scan="reference")).wind_scan.permutation(x)
    b = Forecaster(
        tiny(img_size=PIX, wind_scan="reference", wind_norm=(5.0, 0.1, -3.0, 7.0))
    ).wind_scan.permutation(x)
    assert torch.equal(a, b)
