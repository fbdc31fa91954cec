"""The LUMI profile and config as files: their paths, LUMI's limits, and a rule's resources.

Shared by the tests that read the profile (``test_lumi_profile.py``) and the ones that run it
(``test_slurm.py``). ``derive`` is ``tests/workflow/slurm/derive_profile.py``, which derives the
localhost-Slurm profile from ``profiles/lumi``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
LUMI_PROFILE = REPO / "profiles" / "lumi" / "config.yaml"
LUMI_CONFIG = REPO / "config" / "lumi.yaml"
REFERENCE_CONFIG = REPO / "config" / "reference.yaml"
RANK_SH = REPO / "profiles" / "lumi" / "rank.sh"


def _load_derive() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "derive_profile", REPO / "tests" / "workflow" / "slurm" / "derive_profile.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


derive = _load_derive()

# LUMI's partitions (docs.lumi-supercomputer.eu, "Slurm partitions"): wall-time limit in minutes,
# most nodes per job, and whether the partition has GPUs.
LUMI_PARTITIONS: dict[str, dict[str, Any]] = {
    "small": {"max_minutes": 3 * 24 * 60, "max_nodes": 4, "gpu": False},
    "standard": {"max_minutes": 2 * 24 * 60, "max_nodes": 512, "gpu": False},
    "debug": {"max_minutes": 30, "max_nodes": 4, "gpu": False},
    "small-g": {"max_minutes": 3 * 24 * 60, "max_nodes": 4, "gpu": True},
    "standard-g": {"max_minutes": 2 * 24 * 60, "max_nodes": 1024, "gpu": True},
    "dev-g": {"max_minutes": 3 * 60, "max_nodes": 32, "gpu": True},
}
LUMI_NODE_MEM_MB = 480 * 1024  # what a LUMI-G node gives to jobs
LUMI_CORES_PER_GCD = 7  # 8 cores per GCD, one reserved for the system
LUMI_GCDS_PER_NODE = 8

GATED_CHAIN = (
    "build_cache",
    "verify_wind_order",
    "audit_checkpoint",
    "smoke_forward",
    "check_network",
    "validate_short",
    "rehearse_report",
    "finetune",
    "evaluate",
    "report",
)
"""The stages of the LUMI run (data and baseline given) that Slurm runs, in DAG order."""

RANKED = ("check_network", "validate_short", "finetune")


def rule_resources(profile: Mapping[str, Any], rule: str) -> dict[str, Any]:
    """The resources the profile gives ``rule``: its set-resources over the default-resources."""
    res = dict(profile.get("default-resources") or {})
    res.update((profile.get("set-resources") or {}).get(rule) or {})
    return {k: derive.unquote(v) for k, v in res.items()}
