#!/usr/bin/env bash
# workflow/scripts/requeue_on_tempfail.sh LOG -- COMMAND ...
#
# The fine-tune rule's self-requeue, in one place (the rule and tests/workflow/test_slurm.py run this file).
# Runs COMMAND (the ranks: srun ... aqnet finetune ...) with its output appended to LOG, so LOG
# keeps every allocation's part. When COMMAND exits 75 (EX_TEMPFAIL: SIGUSR1 arrived before the
# time limit and the training saved its state) inside a Slurm job, the job requeues itself
# (`scontrol requeue`, from the batch step, where scontrol is at hand outside the container):
# Slurm ends this allocation, the executor plugin keeps waiting for the same job id, and the
# requeued job resumes from the state. The sleep keeps this allocation from ending with 75 before
# Slurm takes it back. Exits with COMMAND's status otherwise.
set -uo pipefail

[ $# -ge 3 ] && [ "$2" = "--" ] || {
  echo "usage: requeue_on_tempfail.sh LOG -- COMMAND ..." >&2
  exit 2
}
log=$1
shift 2
rc=0
"$@" >>"$log" 2>&1 || rc=$?
if [ "$rc" -eq 75 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  echo "finetune: requeueing Slurm job $SLURM_JOB_ID to resume" >>"$log"
  scontrol requeue "$SLURM_JOB_ID" && sleep 600
fi
exit "$rc"
