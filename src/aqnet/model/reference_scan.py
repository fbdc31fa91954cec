"""The scan order the researchers' baseline was trained with (``wind_scan: reference``).

The baseline to fine-tune was trained by the researchers' code, whose patch embedding reorders the
tokens with ``CachedWindScanning.apply_regional_wind_reordering_32x32_optimized``. That method is
defined three times in ``src/wind_scanning_cached.py``; Python keeps the **last** definition, and
that is what ran. Line numbers below are of ``AmmarKheder/TopoFlow`` at commit
``a962ae077fed6730ef0bcd114b374c39b96fdd5e`` (abbreviated ``a962ae0``), counted from the file's
first line; the file in ``AmmarKheder/aq_net2_baseline`` at commit
``4b08a7c46bfd235939778f2f9deea6f95df18354`` ends with the same last definition and the same
``apply_cached_wind_reordering``, at other line numbers:

* ``src/wind_scanning_cached.py`` 547-617: the last definition (the first two are at 305 and
  407). It is called from ``apply_cached_wind_reordering`` (669-687, ``regional_mode`` truthy),
  which ``src/climax_core/parallelpatchembed_wind.py`` ``forward`` (around line 159) calls with
  ``regional_mode="32x32"``.
* It **never reads the cache**: the orders are recomputed for every sample and region from the
  wind of that sample. The ``wind_scanner_cache.pkl`` tables (``cached_orders``,
  ``regional_cached_orders``) are loaded (``_load_cache_from_disk``, 101-128) but unused by it.

What it does, and how each point differs from aqnet's own ``global`` / ``regional`` modes
(:mod:`aqnet.orders`, :mod:`aqnet.model.wind_scan`):

1. **Normalised winds.** ``u``, ``v`` are channels of the *normalised* input ``x``
   (``parallelpatchembed_wind.py`` ~143-144, ``x[:, self.u_var_idx]`` with ``u_var_idx=0``,
   ``v_var_idx=1`` by default, 44). aqnet's modes de-normalise with ``wind_norm`` first; here
   ``wind_norm`` plays no part. (The reference takes channel positions 0 and 1; aqnet takes the
   channels named ``u`` and ``v``, which are those positions in ``MODEL_VARIABLES``.)
2. **Regions.** 32 x 32 regions, hard-coded (``regions_h = regions_w = 32``, 27-28; pixel slices
   ``u.shape[1] // 32``, 578-581): at the paper grid (128 x 256, patch 2) a region is 4 x 8
   pixels = 2 x 4 patches, aqnet's ``region_patches``. On another grid the reference degenerates
   (``grid_h // 32 = 0`` patches per region leaves the output uninitialised); aqnet keeps the
   region size ``region_patches`` there, which is the reference's at its own grid.
3. **Speed-weighted mean wind, continuous angle.** ``_calculate_wind_angle`` (214-232):
   ``s = sqrt(u**2 + v**2)``; when ``sum(s) > 0`` the mean is ``(sum(u * s) / sum(s), sum(v * s) /
   sum(s))``, else ``(0, 0)``; the angle is ``atan2(mean_v, mean_u)`` in the input's dtype, taken
   out with ``.item()``. It is **not** rounded to one of the 16 sectors (aqnet's modes use the
   plain mean and the nearest sector).
4. **Projection with the whole grid's normalisation, row 0 north.** ``_calculate_patch_projection``
   (201-212) on the region's local patch ``(local_row, local_col) = divmod(idx, 4)`` (597-598):
   ``norm_row = row / (grid_h - 1) * 2 - 1``, ``norm_col = col / (grid_w - 1) * 2 - 1`` with the
   **whole patch grid's** ``grid_h = Hp``, ``grid_w = Wp`` although the rows and columns are local
   (0..1, 0..3), and ``projection = norm_col * cos(a) + (-norm_row) * sin(a)``: rows count
   southward (row 0 is north), where aqnet's orders count ``+row`` northward (row 0 = south). So a
   local row step weighs ``(Wp - 1) / (Hp - 1)`` (about 2 at the paper grid) times a column step.
   It is computed in float64 (Python floats).
5. **Stable sort.** ``list.sort(key=projection)`` (605): ascending, equal projections keep the
   raster order of the local indices.
6. **Runs of 8 raster slots.** The sorted local order of region ``r`` is written into sequence
   slots ``8 r .. 8 r + 7`` from the tokens of those same slots (590-591, 608-615):
   ``out[8 r + i] = tokens[8 r + order_r[i]]``. A run of 8 consecutive raster tokens (a quarter of
   a patch row) is not region ``r``'s 2 x 4 block, so the wind of one region reorders the tokens
   of another place. aqnet's ``regional`` mode permutes each region's own block.
7. **No inverse.** ``src/climax_core/arch.py`` ``forward`` applies the head and ``unpatchify`` to
   the tokens in slot order (``AmmarKheder/TopoFlow`` commit ``190e037``, ``forward`` and
   ``unpatchify``): the prediction of slot ``s`` lands on raster patch ``s``. aqnet's modes apply
   the inverse permutation first.
8. **Position embedding by slot**, as in aqnet: ``x = x + self.pos_embed`` after the aggregation
   (``arch.py`` ``forward_encoder``).
9. **Where.** The reorder acts on ``(B, V, L, D)`` before the variable aggregation
   (``parallelpatchembed_wind.py`` ``forward``); the variable embedding is per variable and the
   aggregation is per token, so reordering after the aggregation, as aqnet does, is the same.
10. **Failure fallback.** The call is wrapped in ``try/except`` that prints a warning and keeps the
    row-major order (``parallelpatchembed_wind.py`` ~141-164, ``wind_scanning_cached.py`` 678-687).
    Whether the baseline trained with the reorder or with the fallback cannot be read off the code:
    the smoke gate evaluates both (``reference`` and ``off``) when the recorded loss is missed.

The TopoFlow bias does **not** copy the reference's elevation input (the normalised channel in
raster order, ``arch.py`` ``forward_encoder``): every scan mode carries each token's true elevation
in metres with the token (:mod:`aqnet.model.forecaster`).

Bit for bit: the angle is computed with the same operations in the input's dtype and the
projections in float64 as the reference does; a float sum may round in another order on another
device, which can move an angle by an ulp, and that changes an order only where two projections tie
to within that ulp. :func:`reference_permutation_loop` is the per-sample, per-region loop written
the way the reference code works; the tests and the ``verify_wind_order`` gate compare the batched
:func:`reference_permutation` against it exactly.

aqnet's ``global`` and ``regional`` modes remain: they are the corrected scans for new baselines
and ablations for the researchers' one. Their effect can only be attributed with a baseline trained
with them; fine-tuning the researchers' baseline with them starts off its training distribution.
"""

from __future__ import annotations

import math

import torch

from aqnet.model.shapes import check_shape


def _layout(
    grid_patches: tuple[int, int], region_patches: tuple[int, int], img_hw: tuple[int, int]
) -> tuple[int, int, int, int, int, int, int, int]:
    """``(hp, wp, rh, rw, nrh, nrw, ph, pw)``: patch grid, region size in patches, region grid,
    region size in pixels; raises ``ValueError`` when they do not tile."""
    hp, wp = (int(s) for s in grid_patches)
    rh, rw = (int(s) for s in region_patches)
    h, w = (int(s) for s in img_hw)
    if hp < 2 or wp < 2:
        raise ValueError(
            f"reference wind scan: the patch grid {hp}x{wp} needs at least 2 rows and 2 columns "
            "(coordinates are normalised by (Hp - 1) and (Wp - 1))"
        )
    if rh < 1 or rw < 1 or hp % rh or wp % rw:
        raise ValueError(
            f"reference wind scan: region_patches {rh}x{rw} must divide the patch grid {hp}x{wp}"
        )
    nrh, nrw = hp // rh, wp // rw
    if h % nrh or w % nrw:
        raise ValueError(
            f"reference wind scan: the {nrh}x{nrw} regions do not tile the {h}x{w} wind field"
        )
    return hp, wp, rh, rw, nrh, nrw, h // nrh, w // nrw


def check_grid(
    grid_patches: tuple[int, int], region_patches: tuple[int, int], img_hw: tuple[int, int]
) -> None:
    """Raise ``ValueError`` (naming the sizes) unless the rule can run on this grid."""
    _layout(grid_patches, region_patches, img_hw)


def region_angles(
    u: torch.Tensor,
    v: torch.Tensor,
    *,
    grid_patches: tuple[int, int],
    region_patches: tuple[int, int],
) -> torch.Tensor:
    """Speed-weighted mean wind angle of every region (quirk 3), batched.

    Args:
        u, v: (B, H, W) the normalised wind channels.
        grid_patches: ``(Hp, Wp)``.
        region_patches: ``(rh, rw)`` region size in patches (the reference's 2 x 4).

    Returns:
        (B, R) float64 angles in radians (``atan2`` in the input's dtype), regions in raster
        order ``r = region_row * (Wp / rw) + region_col``.
    """
    check_shape(u, ("B", "H", "W"), stage="reference wind scan u")
    check_shape(v, (("B", u.shape[0]), ("H", u.shape[1]), ("W", u.shape[2])),
                stage="reference wind scan v")  # fmt: skip
    _, _, _, _, nrh, nrw, ph, pw = _layout(grid_patches, region_patches, u.shape[1:])
    b = u.shape[0]
    # (B, H, W) -> (B, nrh, ph, nrw, pw) -> (B, nrh, nrw, ph, pw) -> (B, R, ph * pw)
    ur = u.reshape(b, nrh, ph, nrw, pw).transpose(2, 3).reshape(b, nrh * nrw, ph * pw)
    vr = v.reshape(b, nrh, ph, nrw, pw).transpose(2, 3).reshape(b, nrh * nrw, ph * pw)
    speed = torch.sqrt(ur**2 + vr**2)  # (B, R, ph * pw)
    total = speed.sum(dim=-1)  # (B, R)
    moving = total > 0
    zero = torch.zeros((), dtype=total.dtype, device=total.device)
    mean_u = torch.where(moving, (ur * speed).sum(dim=-1) / total, zero)  # (B, R)
    mean_v = torch.where(moving, (vr * speed).sum(dim=-1) / total, zero)
    return torch.atan2(mean_v, mean_u).to(torch.float64)  # (B, R)


def local_projections(
    angles: torch.Tensor, *, grid_patches: tuple[int, int], region_patches: tuple[int, int]
) -> torch.Tensor:
    """Projection of each region's local patches on its wind direction (quirk 4).

    Args:
        angles: (B, R) float64 radians.

    Returns:
        (B, R, P) float64, ``P = rh * rw``; local patch ``l`` is at ``divmod(l, rw)``.
    """
    hp, wp = (int(s) for s in grid_patches)
    rh, rw = (int(s) for s in region_patches)
    local = torch.arange(rh * rw, device=angles.device)
    norm_row = (torch.div(local, rw, rounding_mode="floor").to(torch.float64) / (hp - 1)) * 2 - 1
    norm_col = (torch.remainder(local, rw).to(torch.float64) / (wp - 1)) * 2 - 1  # (P,)
    cos, sin = torch.cos(angles)[..., None], torch.sin(angles)[..., None]  # (B, R, 1)
    return norm_col * cos + (-norm_row) * sin  # (B, R, P)


def reference_permutation(
    u: torch.Tensor,
    v: torch.Tensor,
    *,
    grid_patches: tuple[int, int],
    region_patches: tuple[int, int] = (2, 4),
) -> torch.Tensor:
    """The researchers' token permutation for a batch: one batched computation, no loop.

    Args:
        u, v: (B, H, W) the *normalised* wind channels of the input.
        grid_patches: ``(Hp, Wp)`` patch grid.
        region_patches: region size in patches (2 x 4 at the paper grid = 32 x 32 regions).

    Returns:
        perm (B, N) int64: ``scanned[b, s] = tokens[b, perm[b, s]]``. Region ``r`` of sample ``b``
        fills slots ``P r .. P r + P - 1`` with the tokens of those slots, in the stable ascending
        order of its local projections.
    """
    with torch.no_grad():
        angles = region_angles(u, v, grid_patches=grid_patches, region_patches=region_patches)
        proj = local_projections(angles, grid_patches=grid_patches, region_patches=region_patches)
        order = torch.argsort(proj, dim=-1, stable=True)  # (B, R, P) local indices
        p = order.shape[-1]
        start = torch.arange(order.shape[1], device=order.device)[:, None] * p  # (R, 1)
        return (order + start).reshape(u.shape[0], -1)  # (B, N)


def reference_permutation_loop(
    u: torch.Tensor,
    v: torch.Tensor,
    *,
    grid_patches: tuple[int, int],
    region_patches: tuple[int, int] = (2, 4),
) -> torch.Tensor:
    """The same permutation computed the way the reference code does: one sample and one region at
    a time, a scalar angle per region (``float`` of a 0-D tensor), Python ``math`` and a stable
    Python sort. The oracle that :func:`reference_permutation` is tested and gated against, and the
    slow side of ``benchmarks/wind_scan.py``.

    Args and returns as :func:`reference_permutation`.
    """
    check_shape(u, ("B", "H", "W"), stage="reference wind scan u")
    hp, wp, rh, rw, nrh, nrw, ph, pw = _layout(grid_patches, region_patches, u.shape[1:])
    n_local = rh * rw
    perm = torch.empty(u.shape[0], hp * wp, dtype=torch.int64)
    for b in range(u.shape[0]):
        for r in range(nrh * nrw):
            row0, col0 = (r // nrw) * ph, (r % nrw) * pw
            ru = u[b, row0 : row0 + ph, col0 : col0 + pw]
            rv = v[b, row0 : row0 + ph, col0 : col0 + pw]
            speed = torch.sqrt(ru**2 + rv**2)
            if speed.sum() > 0:
                mean_u, mean_v = (ru * speed).sum() / speed.sum(), (rv * speed).sum() / speed.sum()
            else:
                mean_u = mean_v = torch.tensor(0.0)
            angle = float(torch.atan2(mean_v, mean_u))
            cos, sin = math.cos(angle), math.sin(angle)

            def proj(local: int, cos: float = cos, sin: float = sin) -> float:
                row_n = (local // rw) / (hp - 1) * 2 - 1
                col_n = (local % rw) / (wp - 1) * 2 - 1
                return col_n * cos + (-row_n) * sin

            order = sorted(range(n_local), key=proj)
            start = r * n_local
            perm[b, start : start + n_local] = torch.tensor([start + i for i in order])
    return perm.to(u.device)


def nearest_sector(angles: torch.Tensor, *, n_sectors: int = 16) -> torch.Tensor:
    """The sector the reference's cache lookup would pick for an angle (``_find_closest_sector``,
    ``wind_scanning_cached.py`` 234-252 in a962ae0): the smallest circular distance to
    ``2 pi k / n_sectors`` after ``angle % 2 pi``, the lower index on an exact tie.

    Args:
        angles: (...) float64 radians. Returns: (...) int64.
    """
    two_pi = 2 * math.pi
    wrapped = torch.remainder(angles.to(torch.float64), two_pi)[..., None]  # (..., 1)
    k = torch.arange(n_sectors, dtype=torch.float64, device=angles.device)
    centres = two_pi * k / n_sectors  # (S,) the reference's sector angles
    diff = (wrapped - centres).abs()
    diff = torch.minimum(diff, two_pi - diff)  # (..., S)
    return torch.argmin(diff, dim=-1)  # first minimum: the lower index on a tie
