"""aqnet.model: the ClimaX-style forecaster with the TopoFlow additions (see docs/ARCHITECTURE.md).

* :mod:`~aqnet.model.presets` - :class:`ModelConfig`, :func:`tiny`, :func:`paper`,
  :func:`from_pipeline_config`, :func:`baseline_of`;
* :mod:`~aqnet.model.forecaster` - :class:`Forecaster` and :func:`count_parameters`;
* one concept per module: :mod:`~aqnet.model.patch_embed`, :mod:`~aqnet.model.wind_scan`,
  :mod:`~aqnet.model.reference_scan` (the researchers' scan rule),
  :mod:`~aqnet.model.aggregation`, :mod:`~aqnet.model.embeddings`,
  :mod:`~aqnet.model.attention`, :mod:`~aqnet.model.elevation_attention`,
  :mod:`~aqnet.model.blocks`, :mod:`~aqnet.model.head`, :mod:`~aqnet.model.shapes`;
  checkpoints are read, adapted and loaded by :mod:`aqnet.checkpoint`.
"""

from aqnet.model.forecaster import Forecaster, count_parameters
from aqnet.model.presets import ModelConfig, baseline_of, from_pipeline_config, paper, tiny

__all__ = [
    "Forecaster",
    "ModelConfig",
    "baseline_of",
    "count_parameters",
    "from_pipeline_config",
    "paper",
    "tiny",
]
