"""Fixtures of the LUMI tests: the LUMI profile and the LUMI run's merged config, read once."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from lumi_files import LUMI_CONFIG, LUMI_PROFILE, REFERENCE_CONFIG, REPO, derive

from aqnet.config import validate_config


@pytest.fixture(scope="module")
def lumi_profile() -> dict[str, Any]:
    return derive.load_profile(LUMI_PROFILE)


@pytest.fixture(scope="module")
def lumi_config() -> dict[str, Any]:
    """config.yaml, config/reference.yaml and config/lumi.yaml merged as Snakemake merges the
    profile's config files, then validated."""
    from snakemake.utils import update_config

    with (REPO / "config.yaml").open() as fh:
        merged = yaml.safe_load(fh)
    for path in (REFERENCE_CONFIG, LUMI_CONFIG):
        with path.open() as fh:
            update_config(merged, yaml.safe_load(fh))
    return validate_config(merged, source="config.yaml + config/reference.yaml + config/lumi.yaml")
