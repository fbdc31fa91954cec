"""What will run: the wind scan orders the model applies, checked by ``verify_wind_order``.

In ``global`` / ``regional`` mode the model scans with the cache's tables, which the gate has
just compared with the reference's. In ``reference`` mode (the researchers' scan rule) no table
is read: the order is recomputed from each sample's wind, so :func:`check_applied_orders`
recomputes it for the validation subset with the model's batched scan, compares it with the rule
computed the way the reference code does, and reports how often the reference file's regional
table would have given the same order.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aqnet.orders import OrdersFileError
from aqnet.stage import StageFailure
from aqnet.wind_tables import read_tables

__all__ = ["check_applied_orders"]


def check_applied_orders(
    cfg: Mapping[str, Any], cache_dir: Path, reference: Path
) -> dict[str, Any]:
    """What will run: in ``reference`` mode, the orders of the validation subset recomputed.

    The model's batched scan (:class:`aqnet.model.wind_scan.WindScan`, what the fine-tune runs) is
    applied to the validation subset's inputs (the items every validation pass evaluates) and
    compared with :func:`aqnet.model.reference_scan.reference_permutation_loop`, the rule computed
    the way the reference code does. Then, for each sample and region, the order the reference
    file's regional table holds for the region's nearest sector is compared with the applied one:
    how often they agree (the tables are never read by the reference rule).

    Returns:
        ``mode``, ``tables_used``, ``summary`` and, in reference mode, ``samples``,
        ``items``, ``regions``, ``identical``, ``table_agreement`` (fraction, or None when the
        reference's grid is not the model's).

    Raises:
        StageFailure: the applied orders differ from the rule (naming the sample and region), or
            the cache folder is missing.
    """
    import torch

    from aqnet.model.reference_scan import (
        nearest_sector,
        reference_permutation_loop,
        region_angles,
    )

    mode = str(cfg["model"]["wind_scan"])
    if mode in ("global", "regional"):
        return {
            "mode": mode,
            "tables_used": True,
            "summary": f"wind_scan {mode}: the model scans with these tables",
        }
    if mode == "off":
        return {"mode": mode, "tables_used": False, "summary": "wind_scan off: no table is used"}
    if not cache_dir.is_dir():
        raise StageFailure(
            f"wind_scan reference: the applied orders are recomputed from the validation samples, "
            f"so --cache must be the cache folder, not {cache_dir}"
        )
    from aqnet.data import CacheDataset, load_stats, validation_indices
    from aqnet.model.presets import from_pipeline_config
    from aqnet.model.wind_scan import WindScan

    mcfg = from_pipeline_config(cfg, stats=load_stats(cache_dir))
    dataset = CacheDataset(cache_dir, "val", lead_times_h=tuple(cfg["lead_times_h"]))
    n = min(int(cfg["validation"]["samples"]), len(dataset))
    items = validation_indices(len(dataset), n, group=len(cfg["lead_times_h"]))
    if not items:
        raise StageFailure(f"wind_scan reference: the validation split of {cache_dir} is empty")
    x = torch.stack([torch.as_tensor(dataset[i][0]) for i in items])  # (S, V, H, W)
    ui, vi = mcfg.in_variables.index("u"), mcfg.in_variables.index("v")
    scan = WindScan(
        mode="reference", img_size=mcfg.img_size, patch_size=mcfg.patch_size,
        region_patches=mcfg.region_patches, u_index=ui, v_index=vi, wind_norm=mcfg.wind_norm,
    )  # fmt: skip
    applied = scan.permutation(x)  # (S, N) what the model runs
    grid = {"grid_patches": mcfg.grid_patches, "region_patches": mcfg.region_patches}
    rule = reference_permutation_loop(x[:, ui], x[:, vi], **grid)  # (S, N)
    n_local = mcfg.region_patches[0] * mcfg.region_patches[1]
    bad = (applied != rule).nonzero()
    if len(bad):
        s, slot = (int(t) for t in bad[0])
        raise StageFailure(
            f"wind_scan reference: the model's scan differs from the reference rule on "
            f"{len(bad)} slot(s) of {len({int(t) for t in bad[:, 0]})} validation sample(s); "
            f"first: sample {s} (item {items[s]}), region {slot // n_local}, slot {slot}: patch "
            f"{int(applied[s, slot])} (model) vs {int(rule[s, slot])} (rule)"
        )
    out: dict[str, Any] = {
        "mode": mode,
        "tables_used": False,
        "samples": len(items),
        "items": list(items),
        "regions": applied.shape[1] // n_local,
        "identical": True,
        "table_agreement": None,
    }
    try:
        tables = read_tables(reference)
    except OrdersFileError:
        tables = None
    n_regions = out["regions"]
    hp, wp = mcfg.grid_patches
    if tables is not None and tables.grid == {
        "grid_h": hp, "grid_w": wp, "num_sectors": 16,
        "regions_h": hp // mcfg.region_patches[0], "regions_w": wp // mcfg.region_patches[1],
    }:  # fmt: skip
        sectors = nearest_sector(region_angles(x[:, ui], x[:, vi], **grid))  # (S, R)
        table = torch.from_numpy(tables.tables["regional"])  # (16, R, P) local indices
        looked_up = table[sectors, torch.arange(n_regions)]  # (S, R, P)
        local = applied.reshape(len(items), n_regions, n_local) % n_local  # (S, R, P)
        out["table_agreement"] = float((looked_up == local).all(dim=-1).double().mean())
    agree = (
        "the reference file's grid is not the model's"
        if out["table_agreement"] is None
        else f"its regional table for the nearest sector gives the applied order in "
        f"{out['table_agreement']:.0%} of the (sample, region) pairs"
    )
    out["summary"] = (
        f"wind_scan reference: the orders applied to {len(items)} validation samples "
        f"({n_regions} regions each) are recomputed from each sample's wind and equal the "
        f"reference rule; no table is used ({agree})"
    )
    return out
