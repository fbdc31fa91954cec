"""Gate ``audit_checkpoint``: every baseline weight lands in the fine-tune model.

The fine-tune model of the resolved config is built
(:func:`aqnet.model.presets.from_pipeline_config` with the cache's statistics) and the checkpoint
is loaded through :func:`aqnet.checkpoint.load_weights` - the same code every later stage loads
weights with, so what was audited is what trains.

It passes only when the model's keys missing from the checkpoint are exactly the expected new
TopoFlow parameters (``gates.expected_missing_keys``, by default ``model.topoflow_keys()``),
nothing is unexpected and no shape differs. The report holds the
:class:`~aqnet.checkpoint.LoadReport` (loaded / missing / unexpected / shape-mismatched keys,
per-module groups with parameter counts, prefix rules, hyper-parameters) and the baseline's
recorded validation loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from aqnet.checkpoint import CheckpointError, load_weights
from aqnet.stage import StageFailure


def build_model(
    cfg: Mapping[str, Any], cache_dir: str | Path | None, *, baseline: bool = False
) -> nn.Module:
    """The fine-tune (or, with ``baseline=True``, the baseline) model of a resolved config.

    The wind normalisation comes from the cache's ``stats.json`` when ``cache_dir`` is given,
    else from the normalisation table when ``data.normalization.source`` is ``table``, else it
    is the identity.
    """
    from aqnet.model import Forecaster
    from aqnet.model.presets import baseline_of, from_pipeline_config

    stats = None
    if cache_dir is not None:
        from aqnet.data import load_stats

        stats = load_stats(cache_dir)
    elif cfg.get("data", {}).get("normalization", {}).get("source") == "table":
        from aqnet.data.reference import baseline_stats

        stats, _ = baseline_stats(cfg)  # the given table: no cache needed
    mcfg = from_pipeline_config(cfg, stats=stats)
    return Forecaster(baseline_of(mcfg) if baseline else mcfg)


def expected_missing_keys(cfg: Mapping[str, Any], model: nn.Module) -> list[str]:
    """``gates.expected_missing_keys`` when set, else ``model.topoflow_keys()``."""
    configured = cfg.get("gates", {}).get("expected_missing_keys")
    if configured is not None:
        return [str(k) for k in configured]
    return list(model.topoflow_keys())


def audit_checkpoint(
    cfg: Mapping[str, Any],
    checkpoint: str | Path,
    *,
    cache_dir: str | Path | None = None,
    report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load ``checkpoint`` into the fine-tune model of ``cfg`` and report exactly what happened.

    Args:
        cfg: a resolved pipeline config (``aqnet.config.load_resolved``).
        checkpoint: the baseline checkpoint (Lightning layout, wrapped or plain state dict).
        cache_dir: the cache whose ``stats.json`` gives the wind normalisation (the model's
            config then matches the one the baseline was trained with); it must be normalised
            as the config says the baseline was. ``None`` with a normalisation table: no cache
            is needed (a user holding only the checkpoint).
        report: a dict to fill (``aqnet.stage.run_stage`` passes its report); a new one if None.

    Returns:
        The report: ``checkpoint``, ``variant``, ``expected_missing``, ``load`` (the
        :class:`~aqnet.checkpoint.LoadReport` as a dict), ``module_summary``,
        ``baseline_val_loss`` (``baseline.val_loss`` of the config, else the checkpoint's),
        ``reason``.

    Raises:
        StageFailure: unreadable or unsafe checkpoint, or a load that is not clean (the report
            then holds the load report too).
    """
    from aqnet.provenance import gate_digest

    report = {} if report is None else report
    report["config_digest"] = gate_digest(cfg)  # what reads this report checks it
    if cache_dir is not None:  # a cache normalised otherwise than the baseline: refused here
        from aqnet.data import load_stats, read_meta
        from aqnet.data.reference import PreprocessingError, check_cache_normalization

        try:
            report["normalization"] = check_cache_normalization(
                cfg, load_stats(cache_dir), read_meta(cache_dir)
            )
        except PreprocessingError as exc:
            raise StageFailure(f"audit_checkpoint: {exc}") from exc
    model = build_model(cfg, cache_dir)
    expected = expected_missing_keys(cfg, model)
    report.update(
        checkpoint=str(checkpoint),
        variant=cfg.get("variant", "default"),
        model_config=model.config.to_dict(),
        expected_missing=expected,
    )
    try:
        load = load_weights(
            model,
            checkpoint,
            expected_missing=expected,
            checkpoint_variables=cfg.get("baseline", {}).get("variables"),
        )
    except CheckpointError as exc:
        if exc.report is not None:
            report["adapter"] = exc.report.adapter
            report["load"] = exc.report.to_dict()
            report["module_summary"] = exc.report.summary_lines()
        raise StageFailure(str(exc)) from exc

    configured = cfg.get("baseline", {}).get("val_loss")
    report["load"] = load.to_dict()
    report["module_summary"] = load.summary_lines()
    report["checkpoint_val_loss"] = load.val_loss
    report["baseline_val_loss"] = configured if configured is not None else load.val_loss
    report["baseline_val_loss_source"] = (
        "config baseline.val_loss" if configured is not None else load.val_loss_source
    )
    prefix = f"; key rules: {', '.join(load.prefix_rules)}" if load.prefix_rules else ""
    new = ", ".join(load.missing) if load.missing else "none"
    dropped = load.adaptation.get("dropped", {})
    if dropped:
        prefix += "; kept out: " + "; ".join(f"{k} ({why})" for k, why in dropped.items())
    val = report["baseline_val_loss"]
    val_text = f"{val:.4g}" if val is not None else "not recorded"
    report["adapter"] = load.adapter
    report["reason"] = (
        f"{load.adapter} layout: "
        f"{len(load.loaded)} of {len(load.loaded) + len(load.missing)} model keys loaded "
        f"({load.loaded_parameters:,} parameters), missing exactly the {len(load.missing)} "
        f"expected new parameter(s) ({new}), nothing unexpected{prefix}; baseline val_loss "
        f"{val_text}"
    )
    return report
