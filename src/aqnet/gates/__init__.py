"""aqnet.gates: the cheap checks that guard the expensive stages (see docs/ARCHITECTURE.md).

* :func:`verify_wind_order` - the cache's scan orders are valid and identical to the baseline's;
* :func:`audit_checkpoint` - every baseline weight lands; only the new TopoFlow keys are missing;
* :func:`smoke_forward` - real batches: shapes, finite loss equal to the baseline model's,
  validation loss over the pipeline's validation subset near the baseline's recorded one.

Each fills and returns a report dict and raises :class:`aqnet.stage.StageFailure` with a readable
message; :mod:`aqnet.gates.cli` wraps them as ``aqnet`` subcommands.
"""

from aqnet.gates.audit import audit_checkpoint
from aqnet.gates.smoke import smoke_forward
from aqnet.gates.wind_order import verify_wind_order

__all__ = ["audit_checkpoint", "smoke_forward", "verify_wind_order"]
