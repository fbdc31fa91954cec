"""aqnet.checkpoint: reading, adapting, loading and writing checkpoints.

* :mod:`~aqnet.checkpoint.read` - :func:`read_checkpoint` (``weights_only``, never runs code),
  :class:`CheckpointContents`, :class:`CheckpointError`;
* :mod:`~aqnet.checkpoint.keys` - prefixes, variable names and orders, :class:`Adapted`;
* :mod:`~aqnet.checkpoint.adapters` - one key adapter per known layout (aqnet's own, the
  researchers' training code, their published release), recognised from the keys alone;
* :mod:`~aqnet.checkpoint.load` - :func:`load_weights`, the one audited loading path, and
  :func:`compare_state_dicts`;
* :mod:`~aqnet.checkpoint.report` - :class:`LoadReport` and the sentences of a refused load;
* :mod:`~aqnet.checkpoint.save` - :func:`save_lightning_checkpoint`.
"""

from aqnet.checkpoint.adapters import ADAPTERS, adapt_state_dict, detect_adapter
from aqnet.checkpoint.keys import PREFIXES, Adapted, AdapterError, strip_prefixes
from aqnet.checkpoint.load import (
    adapt,
    compare_state_dicts,
    config_differences,
    load_weights,
    model_config_dict,
    unwrap_model,
)
from aqnet.checkpoint.read import CheckpointContents, CheckpointError, read_checkpoint
from aqnet.checkpoint.report import TOPOFLOW_FIELDS, LoadReport, ModuleGroup
from aqnet.checkpoint.save import LIGHTNING_VERSION, save_lightning_checkpoint

__all__ = [
    "ADAPTERS",
    "LIGHTNING_VERSION",
    "PREFIXES",
    "TOPOFLOW_FIELDS",
    "Adapted",
    "AdapterError",
    "CheckpointContents",
    "CheckpointError",
    "LoadReport",
    "ModuleGroup",
    "adapt",
    "adapt_state_dict",
    "compare_state_dicts",
    "config_differences",
    "detect_adapter",
    "load_weights",
    "model_config_dict",
    "read_checkpoint",
    "save_lightning_checkpoint",
    "strip_prefixes",
    "unwrap_model",
]
