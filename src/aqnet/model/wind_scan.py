"""Wind-ordered patch scanning: the token sequence reordered upwind -> downwind.

Semantics (what the forecaster does with the permutation):

* **Sectors** follow :mod:`aqnet.orders`: the direction the wind blows *toward*,
  ``sector = round(atan2(v, u) / 22.5 deg) mod 16`` - east (u > 0, v = 0) is sector 0, north 4,
  west 8, south 12 (counter-clockwise). ``u`` and ``v`` are the model's input channels of those
  names, de-normalised with ``wind_norm = (u_mean, u_std, v_mean, v_std)`` and averaged over the
  whole grid (``global``) or over each region's pixels (``regional``) of each sample.
* **Orders** are :func:`aqnet.orders.build_orders` for the model's patch grid, held as
  non-persistent buffers (built once in ``__init__``, moved with the module, never saved).
  ``global``: sample ``b`` uses ``global[s_b]`` of shape ``(N,)``. ``regional``: the patch grid is
  cut into regions of ``region_patches`` patches (raster order); region ``r`` of sample ``b`` is
  scanned with ``regional[s_br, r]`` and the regions are concatenated in raster order. ``off``:
  the identity (no gather at all).
* **The permutation** ``perm (B, N)`` says which patch sits in each sequence slot:
  ``scanned[b, s] = tokens[b, perm[b, s]]``. The whole batch is reordered with one gather; there
  is no Python loop over samples and no ``.item()``.
* In a bidirectional transformer a reordering only matters through what is indexed **by sequence
  slot**. So the position embedding is added by slot *after* the permutation (it then encodes
  each token's rank along the wind, as the baseline was trained), while every per-token attribute
  - the patch elevation and the true 2-D patch coordinates - is permuted *with* its token, and
  :meth:`WindScan.unscan` (the inverse permutation) is applied before unpatchify, so every
  prediction lands on its own pixel. With the position embedding zeroed the forecaster is then
  exactly invariant to the scan (the tests pin this).
* ``reference``: the permutation the researchers' baseline was trained with
  (:mod:`aqnet.model.reference_scan`, which lists how it differs from the modes above): computed per
  sample from the normalised ``u``, ``v`` (batched, no buffers), and **no** inverse before
  unpatchify (:attr:`WindScan.unscans` is False). Elevations and coordinates still travel with
  their tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from aqnet.model.reference_scan import check_grid, reference_permutation
from aqnet.model.shapes import check_shape
from aqnet.orders import N_SECTORS, SECTOR_DEG, build_orders

MODES: tuple[str, ...] = ("off", "global", "regional", "reference")


def sector_of(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Wind sector (int64, 0..15) of the direction the wind blows toward; 0 = east, 4 = north.

    The torch twin of :func:`aqnet.orders.sector_of` (computed in float64).
    """
    theta = torch.atan2(v.to(torch.float64), u.to(torch.float64)) * (180.0 / math.pi)
    return torch.remainder(torch.floor(theta / SECTOR_DEG + 0.5).to(torch.int64), N_SECTORS)


class WindScan(nn.Module):
    """Per-sample wind sectors, the scan permutation, and the (inverse) token reordering."""

    def __init__(
        self,
        *,
        mode: str,
        img_size: tuple[int, int],
        patch_size: int,
        region_patches: tuple[int, int],
        u_index: int,
        v_index: int,
        wind_norm: tuple[float, float, float, float],
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"wind scan: mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.patch_size = int(patch_size)
        self.region_patches = (int(region_patches[0]), int(region_patches[1]))
        self.grid_patches = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.u_index, self.v_index = int(u_index), int(v_index)
        self.wind_norm = tuple(float(w) for w in wind_norm)
        if mode == "reference":
            check_grid(self.grid_patches, self.region_patches, self.img_size)
        orders = build_orders(self.grid_patches, region_patches=self.region_patches)
        glob = torch.from_numpy(orders["global"])  # (16, N)
        regional = torch.from_numpy(orders["regional"])  # (16, R, P)
        self.register_buffer("global_orders", glob, persistent=False)
        self.register_buffer("regional_orders", regional, persistent=False)
        self.register_buffer("region_index", torch.arange(regional.shape[1]), persistent=False)

    @property
    def unscans(self) -> bool:
        """Whether the inverse permutation is applied before unpatchify (all modes but
        ``reference``, whose baseline was trained without it)."""
        return self.mode != "reference"

    @property
    def num_patches(self) -> int:
        return self.grid_patches[0] * self.grid_patches[1]

    def sectors(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, V, H, W) normalised inputs -> sectors (B,) (global) or (B, R) (regional)."""
        u_mean, u_std, v_mean, v_std = self.wind_norm
        u = x[:, self.u_index].to(torch.float64) * u_std + u_mean  # (B, H, W) physical
        v = x[:, self.v_index].to(torch.float64) * v_std + v_mean  # (B, H, W)
        if self.mode == "regional":
            b = x.shape[0]
            rh, rw = (
                self.region_patches[0] * self.patch_size,
                self.region_patches[1] * self.patch_size,
            )
            h, w = self.img_size
            # (B, H, W) -> (B, H/rh, rh, W/rw, rw) -> region means (B, R) in raster order
            u = u.reshape(b, h // rh, rh, w // rw, rw).mean(dim=(2, 4)).reshape(b, -1)
            v = v.reshape(b, h // rh, rh, w // rw, rw).mean(dim=(2, 4)).reshape(b, -1)
            return sector_of(u, v)  # (B, R)
        return sector_of(u.mean(dim=(1, 2)), v.mean(dim=(1, 2)))  # (B,)

    def permutation_from_sectors(self, sectors: torch.Tensor) -> torch.Tensor:
        """sectors: (B,) global or (B, R) regional -> perm (B, N) int64 patch index per slot."""
        if self.mode == "global":
            check_shape(sectors, ("B",), stage="wind scan global sectors")
            return self.global_orders[sectors]  # (B, N)
        if self.mode == "regional":
            r = self.regional_orders.shape[1]
            check_shape(sectors, ("B", ("R", r)), stage="wind scan regional sectors")
            per_region = self.regional_orders[sectors, self.region_index]  # (B, R, P)
            return per_region.reshape(sectors.shape[0], -1)  # (B, N)
        raise ValueError("wind scan: mode 'off' has no permutation")

    def permutation(self, x: torch.Tensor) -> torch.Tensor | None:
        """x: (B, V, H, W) -> perm (B, N) int64, or ``None`` when the mode is ``off``."""
        if self.mode == "off":
            return None
        check_shape(x, ("B", "V", ("H", self.img_size[0]), ("W", self.img_size[1])),
                    stage="wind scan input")  # fmt: skip
        if self.mode == "reference":  # normalised channels, per-sample orders
            return reference_permutation(
                x[:, self.u_index],
                x[:, self.v_index],
                grid_patches=self.grid_patches,
                region_patches=self.region_patches,
            )
        return self.permutation_from_sectors(self.sectors(x))

    @staticmethod
    def scan(tokens: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
        """tokens: (B, N, ...) in patch order -> (B, N, ...) in scan order (slot s holds patch
        ``perm[b, s]``); identity when ``perm`` is None."""
        if perm is None:
            return tokens
        b, n = perm.shape
        check_shape(tokens, (("B", b), ("N", n), *tokens.shape[2:]), stage="wind scan tokens")
        # One gather of whole rows: (B * N, ...) rows picked by the flat index b * N + perm[b, s].
        # (take_along_dim reads an index per element and is ~5x slower for (B, N, D) on a CPU.)
        flat = (perm + torch.arange(b, device=perm.device)[:, None] * n).reshape(-1)  # (B * N,)
        rows = tokens.reshape(b * n, *tokens.shape[2:])  # (B * N, ...)
        return rows.index_select(0, flat).reshape(tokens.shape)

    @staticmethod
    def inverse(perm: torch.Tensor) -> torch.Tensor:
        """perm: (B, N) -> its inverse (B, N): ``inv[b, perm[b, s]] = s``."""
        slots = torch.arange(perm.shape[1], device=perm.device).expand_as(perm)  # (B, N)
        return torch.empty_like(perm).scatter_(1, perm, slots)

    @classmethod
    def unscan(cls, tokens: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
        """tokens: (B, N, ...) in scan order -> (B, N, ...) back in patch (raster) order."""
        if perm is None:
            return tokens
        return cls.scan(tokens, cls.inverse(perm))
