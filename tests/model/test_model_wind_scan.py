"""Wind-ordered scanning: sectors, orders, the batched permutation and its inverse."""

import numpy as np
import pytest
import torch

from aqnet import orders
from aqnet.model.wind_scan import WindScan, sector_of

GRID = (16, 32)  # pixels; patch 2 -> 8 x 16 patches, regions 2 x 4 -> 4 x 4 = 16 regions


def make_scan(mode: str, wind_norm=(0.0, 1.0, 0.0, 1.0), img_size=GRID) -> WindScan:
    return WindScan(
        mode=mode,
        img_size=img_size,
        patch_size=2,
        region_patches=(2, 4),
        u_index=0,
        v_index=1,
        wind_norm=wind_norm,
    )


def wind_input(u: np.ndarray | float, v: np.ndarray | float, batch: int = 1) -> torch.Tensor:
    """(B, 3, H, W) inputs with channel 0 = u, 1 = v, 2 = noise."""
    x = torch.randn(batch, 3, *GRID, dtype=torch.float64)
    x[:, 0] = torch.as_tensor(u, dtype=torch.float64)
    x[:, 1] = torch.as_tensor(v, dtype=torch.float64)
    return x


@pytest.mark.parametrize(
    ("u", "v", "sector"),
    [(1.0, 0.0, 0), (0.0, 1.0, 4), (-1.0, 0.0, 8), (0.0, -1.0, 12), (1.0, 1.0, 2), (1.0, -1.0, 14)],
)
def test_cardinal_winds_map_to_documented_sectors(u, v, sector):
    """Sector = direction the wind blows toward: east 0, north 4, west 8, south 12."""
    assert sector_of(torch.tensor(u), torch.tensor(v)).item() == sector
    assert int(orders.sector_of(u, v)) == sector


def test_sector_of_matches_the_numpy_definition():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=20000), rng.normal(size=20000)
    u[:10], v[:10] = 0.0, 0.0  # calm: atan2(0, 0) = 0 -> east in both
    got = sector_of(torch.from_numpy(u), torch.from_numpy(v)).numpy()
    np.testing.assert_array_equal(got, orders.sector_of(u, v))
    # On an exact sector boundary (odd multiples of 11.25 degrees) the two atan2 may differ by one
    # ulp, so only "the same or the neighbouring sector" is defined there.
    angles = np.radians(11.25 * np.arange(1, 64, 2))
    u, v = np.cos(angles), np.sin(angles)
    diff = sector_of(torch.from_numpy(u), torch.from_numpy(v)).numpy() - orders.sector_of(u, v)
    assert set(np.abs((diff + 8) % 16 - 8)) <= {0, 1}


@pytest.mark.parametrize("grid", [(8, 16), (64, 128)])
def test_every_order_is_a_permutation(grid):
    scan = make_scan("regional", img_size=(2 * grid[0], 2 * grid[1]))
    n = grid[0] * grid[1]
    assert scan.global_orders.shape == (16, n)
    for k in range(16):
        assert torch.equal(scan.global_orders[k].sort().values, torch.arange(n))
    # any mix of per-region sectors gives a permutation of all N patches
    r = scan.regional_orders.shape[1]
    sectors = torch.cat([torch.arange(16).repeat(r // 16 + 1)[:r][None], torch.randint(16, (7, r))])
    perm = scan.permutation_from_sectors(sectors)
    assert perm.shape == (8, n)
    assert torch.equal(perm.sort(dim=1).values, torch.arange(n).expand(8, n))


def test_orders_are_the_shared_orders_and_not_saved():
    scan = make_scan("global")
    ref = orders.build_orders((8, 16), region_patches=(2, 4))
    np.testing.assert_array_equal(scan.global_orders.numpy(), ref["global"])
    np.testing.assert_array_equal(scan.regional_orders.numpy(), ref["regional"])
    assert scan.state_dict() == {}  # derived buffers are non-persistent


def test_global_permutation_runs_upwind_to_downwind_per_sample():
    scan = make_scan("global")
    x = torch.cat([wind_input(3.0, 0.0), wind_input(0.0, -2.0), wind_input(-1.0, 1.0)])
    assert scan.sectors(x).tolist() == [0, 12, 6]
    perm = scan.permutation(x)
    np.testing.assert_array_equal(perm.numpy(), scan.global_orders[[0, 12, 6]].numpy())
    cols, rows = perm % 16, perm // 16
    assert cols[0, 0] == 0 and cols[0, -1] == 15  # eastward wind: west (upwind) first
    assert rows[1, 0] == 7 and rows[1, -1] == 0  # southward wind: north (upwind) first


def test_sectors_use_de_normalised_wind():
    """Normalised (0.75, 2.0) points north-east, but de-normalised it is (5, 0): east."""
    wind_norm = (2.0, 4.0, -1.0, 0.5)
    x = wind_input(0.75, 2.0)
    assert make_scan("global", wind_norm=wind_norm).sectors(x).tolist() == [0]
    assert make_scan("global").sectors(x).tolist() == [3]


def test_regional_sectors_and_permutation_follow_each_regions_wind():
    """Left half blows east, right half west: each region is ordered by its own wind."""
    u = np.where(np.arange(GRID[1]) < GRID[1] // 2, 1.0, -1.0)[None, :].repeat(GRID[0], 0)
    scan = make_scan("regional")
    x = wind_input(u, 0.0, batch=2)
    x[1, 0] = -x[1, 0]  # sample 1: the mirror image
    sectors = scan.sectors(x)  # (B, R): 4 x 4 regions of 4 x 8 pixels, raster order
    assert sectors.shape == (2, 16)
    expected = torch.tensor([0, 0, 8, 8] * 4)
    assert torch.equal(sectors[0], expected) and torch.equal(sectors[1], 8 - expected)
    perm = scan.permutation(x)
    ref = orders.build_orders((8, 16), region_patches=(2, 4))["regional"]
    want = np.concatenate([ref[s, r] for r, s in enumerate(expected.tolist())])
    np.testing.assert_array_equal(perm[0].numpy(), want)


def test_scan_then_unscan_is_the_identity():
    scan = make_scan("regional")
    x = torch.randn(4, 3, *GRID)
    perm = scan.permutation(x)
    tokens = torch.randn(4, 128, 5)
    scanned = WindScan.scan(tokens, perm)
    assert not torch.equal(scanned, tokens)
    torch.testing.assert_close(scanned[1, 7], tokens[1, perm[1, 7]], rtol=0, atol=0)
    assert torch.equal(WindScan.unscan(scanned, perm), tokens)
    assert torch.equal(WindScan.scan(WindScan.unscan(tokens, perm), perm), tokens)
    elev = torch.randn(4, 128)  # (B, N) attributes permute the same way
    assert torch.equal(WindScan.unscan(WindScan.scan(elev, perm), perm), elev)
    inv = WindScan.inverse(perm)
    assert torch.equal(torch.take_along_dim(perm, inv, dim=1), torch.arange(128).expand(4, 128))


def test_off_mode_is_the_identity_without_a_gather():
    scan = make_scan("off")
    assert scan.permutation(torch.randn(2, 3, *GRID)) is None
    tokens = torch.randn(2, 128, 4)
    assert WindScan.scan(tokens, None) is tokens and WindScan.unscan(tokens, None) is tokens


def test_wrong_sector_shape_is_named():
    with pytest.raises(ValueError, match=r"wind scan regional sectors expects \(B, R=16\)"):
        make_scan("regional").permutation_from_sectors(torch.zeros(2, 8, dtype=torch.long))
