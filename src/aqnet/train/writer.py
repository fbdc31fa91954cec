"""What a training run makes of its running state: ``metrics.csv``, ``last.pt``, the stage's
outputs (by rank 0) and the result :func:`aqnet.train.loop.run_training` returns (every rank).

:class:`RunWriter` writes the metrics rows (:mod:`aqnet.train.metrics`), the content of the
resume state (:func:`aqnet.train.state.save_state`; the save every rank agrees on is
:func:`aqnet.train.snapshot.save_training_state`), and at the end the stage's checkpoint, the
fine-tune's ``summary.json`` (:mod:`aqnet.train.outputs`) and ``complete.json``
(:func:`aqnet.train.resume.mark_complete`). On the other ranks it writes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from aqnet.stage import write_json
from aqnet.train.batches import BatchPlan
from aqnet.train.distributed import DistContext
from aqnet.train.metrics import write_metrics
from aqnet.train.outputs import hyper_parameters, median_step_time, run_summary, write_checkpoint
from aqnet.train.resume import current_job_id, mark_complete
from aqnet.train.run_state import RunState
from aqnet.train.state import save_state

if TYPE_CHECKING:
    from aqnet.model import ModelConfig

__all__ = ["RunWriter"]


@dataclasses.dataclass(kw_only=True)
class RunWriter:
    """The files of one run (see the module docstring).

    ``tcfg`` is the stage's ``train`` section; ``fingerprint`` is what a resume must match
    (:func:`aqnet.train.resume.run_fingerprint`).
    """

    ctx: DistContext
    stage: str
    variant: str
    tcfg: Mapping[str, Any]
    out_dir: Path
    state_path: Path
    model: nn.Module
    optimizer: Any
    scheduler: Any
    mcfg: ModelConfig
    plan: BatchPlan
    steps_per_epoch: int
    lead_times_h: Sequence[int]
    columns: Sequence[str]
    train_ds: Any
    n_val: int
    fingerprint: Mapping[str, Any]

    def write_metrics(self, state: RunState) -> None:
        if self.ctx.is_main:
            write_metrics(self.out_dir / "metrics.csv", state.rows, self.columns)

    def write_state(self, state: RunState, rng: list[Any]) -> None:
        """Rank 0: ``last.pt`` at ``state.step`` with every rank's generator states, then the
        metrics."""
        if self.ctx.is_main:
            epoch, pos = divmod(state.step, self.steps_per_epoch)
            save_state(
                self.state_path,
                {
                    "stage": self.stage,
                    "fingerprint": dict(self.fingerprint),
                    "step": state.step,
                    "sampler": {"epoch": epoch, "step_in_epoch": pos, "seed": self.tcfg["seed"]},
                    "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "rng": rng,
                    "metrics": state.rows,
                    "best": state.best,
                    "init": state.init_report,
                    "world_size": self.ctx.world_size,
                    "job_id": current_job_id(),
                },
            )
            self.write_metrics(state)

    def write_outputs(self, state: RunState) -> dict[str, str]:
        """The finished stage's files (rank 0); returns their paths by key on every rank."""
        outputs = {"metrics": str(self.out_dir / "metrics.csv")}
        if not self.ctx.is_main:
            return outputs
        self.write_metrics(state)
        hp = hyper_parameters(
            model_config=self.mcfg.to_dict(),
            stage=self.stage,
            variant=self.variant,
            steps=state.step,
            global_batch=self.plan.global_batch,
            lr=float(self.tcfg["lr"]),
            lr_new=float(self.tcfg["lr_new"]),
            lead_times_h=self.lead_times_h,
            best=state.best,
        )
        outputs.update(
            write_checkpoint(
                self.stage,
                self.out_dir,
                self.model,
                hyper_parameters=hp,
                best=state.best,
                final_val_loss=state.rows[-1].get("val_loss"),
                step=state.step,
            )
        )
        if self.stage == "finetune":
            summary_path = self.out_dir / "summary.json"
            write_json(summary_path, self.summary(state))
            outputs["summary"] = str(summary_path)
        return outputs

    def summary(self, state: RunState) -> dict[str, Any]:
        return run_summary(
            stage=self.stage,
            variant=self.variant,
            steps=state.step,
            world_size=self.ctx.world_size,
            global_batch=self.plan.global_batch,
            train_start_times=sum(self.train_ds.n_base),
            validation_samples=self.n_val,
            rows=state.rows,
            best=state.best,
            init_report=state.init_report,
            resumed_from=state.resumed_from,
            model_config=self.mcfg.to_dict(),
        )

    def finish(self, state: RunState) -> dict[str, str]:
        """The finished run's outputs (:meth:`write_outputs`), then ``complete.json`` beside
        ``last.pt`` (rank 0); returns the outputs' paths by key."""
        outputs = self.write_outputs(state)
        if self.ctx.is_main:
            mark_complete(
                self.state_path.parent, stage=self.stage, step=state.step, outputs=outputs
            )
        return outputs

    def result(
        self,
        state: RunState,
        *,
        run_steps: int,
        completed: bool,
        stopped_after_step: int | None,
        outputs: Mapping[str, str],
        wall_time_s: float,
    ) -> dict[str, Any]:
        """What :func:`aqnet.train.loop.run_training` returns (every rank)."""
        val_rows = state.val_rows()
        return {
            "stage": self.stage,
            "steps_done": state.step,
            "run_steps": run_steps,
            "completed": completed,
            "stopped_after_step": stopped_after_step,
            "resumed_from": state.resumed_from,
            "world_size": self.ctx.world_size,
            "ranks": self.ctx.ranks,
            "launcher": self.ctx.info.launcher,
            "batch": dataclasses.asdict(self.plan),
            "validation_samples": self.n_val,
            "rows": state.rows,
            "step0_val_loss": val_rows[0]["val_loss"] if val_rows else None,
            "final_val_loss": val_rows[-1]["val_loss"] if val_rows else None,
            "best_val_loss": state.best["val_loss"],
            "best_step": state.best["step"],
            "step_time_s": median_step_time(state.rows),
            "wall_time_s": wall_time_s,
            "init": state.init_report,
            "outputs": outputs,
            "state_path": str(self.state_path),
        }
