"""aqnet.train: the training entry point for every stage and launcher (see docs/ARCHITECTURE.md).

* :func:`run_training` (:mod:`~aqnet.train.loop`) - baseline, ``validate_short`` and fine-tune;
  single process, ``torchrun`` or ``srun`` ranks (:mod:`~aqnet.train.distributed`); resumable from
  ``<state_dir>/last.pt`` (:mod:`~aqnet.train.state`); ``SIGUSR1`` saves and stops with
  :data:`REQUEUE_EXIT_CODE`. Beside the loop: :mod:`~aqnet.train.batches`,
  :mod:`~aqnet.train.validation`, :mod:`~aqnet.train.divergence`, :mod:`~aqnet.train.outputs`,
  :mod:`~aqnet.train.requeue`, :mod:`~aqnet.train.resume`, :mod:`~aqnet.train.watchdog` and
  :mod:`~aqnet.train.heartbeat`.
* :func:`project_cost` (:mod:`~aqnet.train.cost`) - node-hours, GPU-hours and wall time of a run.
* :func:`validate_short` (:mod:`~aqnet.train.validate_short`) - the short-run gate.
* CLI: :mod:`~aqnet.train.cli` (``aqnet train``, ``train-baseline``, ``validate-short``,
  ``finetune``).
"""

from aqnet.train.cost import project_cost
from aqnet.train.loop import (
    REQUEUE_EXIT_CODE,
    RequeueRequested,
    TrainingDiverged,
    run_training,
)
from aqnet.train.validate_short import validate_short

__all__ = [
    "REQUEUE_EXIT_CODE",
    "RequeueRequested",
    "TrainingDiverged",
    "project_cost",
    "run_training",
    "validate_short",
]
