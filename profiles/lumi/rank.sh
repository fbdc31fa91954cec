#!/usr/bin/env bash
# profiles/lumi/rank.sh -- the environment every stage runs in on a LUMI-G compute node.
#
# The profile puts this script in front of each stage's command (resource `rank_wrapper`); for the
# multi-rank stages srun starts it once per rank:
#
#   srun --cpu-bind=mask_cpu:... --nodes=50 --ntasks-per-node=8 --cpus-per-task=7 \
#       profiles/lumi/rank.sh --container IMAGE.sif --bind /pfs,... --venv DIR -- aqnet finetune ...
#
# Options (before `--`):
#   --container SIF   the Singularity/Apptainer image with PyTorch for ROCm; `none` runs the
#                     command on the host (the localhost Slurm test, which has no container)
#   --bind LIST       comma-separated bind mounts into the container (the file systems the data,
#                     the checkpoints, the clone and the venv live on); LUMI's minimal bindings
#                     for RCCL (below) are added to it
#   --venv DIR        a virtual environment, created inside the container on top of its PyTorch,
#                     that holds aqnet (`pip install -e .`); activated inside the container
#
# What it sets, each only when not already set (so a user or a test can override it):
#   MASTER_ADDR / MASTER_PORT   rank 0's node (first host of the step's node list) and
#                               20000 + job id % 20000: two jobs sharing a node never collide;
#                               the same rule as aqnet.train.distributed uses without them
#   ROCR_VISIBLE_DEVICES        in a step with several GPUs visible per node, local rank i keeps
#                               the i-th one only: with LUMI's CPU masks (in the profile's srun
#                               line) rank i then runs on the cores closest to its GCD
#   MIOPEN_USER_DB_PATH         MIOpen's kernel database and cache on node-local /tmp, per rank:
#   MIOPEN_CUSTOM_CACHE_DIR     on the shared Lustre file system hundreds of ranks lock and
#                               corrupt one database
#   NCCL_SOCKET_IFNAME          RCCL's bootstrap over the Slingshot interfaces hsn0..hsn3
#   NCCL_NET_GDR_LEVEL          GPU-direct RDMA between GCD and NIC (LUMI's recommendation)
#   CXI_FORK_SAFE(_HP),         libfabric (CXI) stays correct when DataLoader workers fork
#   FI_CXI_DISABLE_CQ_HUGETLB
#
# Inside a container it also binds LUMI's "minimal bindings" for RCCL over Slingshot, as LUMI's
# PyTorch page lists them (https://lumi-supercomputer.github.io/LUMI-EasyBuild-docs/p/PyTorch/,
# "Direct access"; the same list is on the jax page): /var/spool/slurmd (Slurm's per-job files),
# /opt/cray (the Cray libfabric the aws-ofi-rccl plugin loads, and the PE) and
# /usr/lib64/libcxi.so.1 (the host's Slingshot 11 library). Without them RCCL quietly falls back
# to TCP sockets; the check_network stage catches that. AQNET_LUMI_BINDS (comma-separated)
# replaces the list, since LUMI says it may change after a system update; a listed path missing on
# the host is skipped with a warning. The images LUMI provides carry the aws-ofi-rccl plugin
# themselves: an image from elsewhere needs it installed against LUMI's libfabric.
#
# The command is exec'ed (also inside the container), so Slurm's signals -- the profile's
# --signal=USR1@600 before the time limit -- reach the training process itself.
set -euo pipefail

die() {
  echo "rank.sh: $*" >&2
  exit 2
}

container=none
bind=""
venv=""
while [ $# -gt 0 ]; do
  case "$1" in
    --container)
      [ $# -ge 2 ] || die "--container needs a value"
      container=$2
      shift 2
      ;;
    --bind)
      [ $# -ge 2 ] || die "--bind needs a value"
      bind=$2
      shift 2
      ;;
    --venv)
      [ $# -ge 2 ] || die "--venv needs a value"
      venv=$2
      shift 2
      ;;
    --)
      shift
      break
      ;;
    *) die "unknown option '$1' (usage: rank.sh [--container SIF|none] [--bind LIST] [--venv DIR] -- COMMAND ...)" ;;
  esac
done
[ $# -gt 0 ] || die "no command given after the options"

# Rendezvous of the ranks, from the job (srun sets the step's node list in every task). Outside a
# Slurm step (a stage run by hand) there is one process and nothing to meet: leave both unset.
nodes=${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:-}}
if [ -z "${MASTER_ADDR:-}" ] && [ -n "$nodes" ]; then
  MASTER_ADDR=$(scontrol show hostnames "$nodes" | head -n 1)
  [ -n "$MASTER_ADDR" ] || die "scontrol show hostnames '$nodes' returned no host"
  export MASTER_ADDR
fi
if [ -z "${MASTER_PORT:-}" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
fi

# One GCD per rank when the step sees several per node (a full node: 8 ranks, gres gpu:8).
if [ -n "${ROCR_VISIBLE_DEVICES:-}" ] && [ -n "${SLURM_LOCALID:-}" ]; then
  IFS=, read -r -a gpus <<<"$ROCR_VISIBLE_DEVICES"
  if [ "${#gpus[@]}" -gt 1 ]; then
    [ "$SLURM_LOCALID" -lt "${#gpus[@]}" ] ||
      die "local rank $SLURM_LOCALID but only ${#gpus[@]} GPUs visible ($ROCR_VISIBLE_DEVICES): more ranks per node than GCDs"
    export ROCR_VISIBLE_DEVICES=${gpus[$SLURM_LOCALID]}
  fi
fi

miopen=/tmp/${USER:-$(id -un)}-miopen-${SLURM_JOB_ID:-0}-${SLURM_LOCALID:-0}
export MIOPEN_USER_DB_PATH=${MIOPEN_USER_DB_PATH:-$miopen}
export MIOPEN_CUSTOM_CACHE_DIR=${MIOPEN_CUSTOM_CACHE_DIR:-$MIOPEN_USER_DB_PATH}
mkdir -p "$MIOPEN_USER_DB_PATH" "$MIOPEN_CUSTOM_CACHE_DIR"
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-hsn0,hsn1,hsn2,hsn3}
export NCCL_NET_GDR_LEVEL=${NCCL_NET_GDR_LEVEL:-PHB}
export CXI_FORK_SAFE=${CXI_FORK_SAFE:-1}
export CXI_FORK_SAFE_HP=${CXI_FORK_SAFE_HP:-1}
export FI_CXI_DISABLE_CQ_HUGETLB=${FI_CXI_DISABLE_CQ_HUGETLB:-1}

if [ "$container" = none ]; then
  if [ -n "$venv" ]; then
    # shellcheck disable=SC1091  # the venv is the user's
    source "$venv/bin/activate"
  fi
  exec "$@"
fi

[ -r "$container" ] || die "container image '$container' not found or not readable (profiles/lumi/config.yaml: rank_wrapper)"
runner=$(command -v singularity || command -v apptainer) || die "neither singularity nor apptainer is on PATH"
# Inside the container: the image's own Python environment ($WITH_CONDA in LUMI's PyTorch images),
# then the venv with aqnet, then the command.
inner='if [ -n "${WITH_CONDA:-}" ]; then eval "$WITH_CONDA"; fi
if [ -n "$AQNET_VENV" ]; then source "$AQNET_VENV/bin/activate"; fi
exec "$@"'
export AQNET_VENV=$venv
IFS=, read -r -a system_binds <<<"${AQNET_LUMI_BINDS-/var/spool/slurmd,/opt/cray,/usr/lib64/libcxi.so.1}"
for path in "${system_binds[@]}"; do
  [ -n "$path" ] || continue
  if [ -e "$path" ]; then
    bind=${bind:+$bind,}$path
  else
    echo "rank.sh: warning: $path (LUMI's minimal bindings for RCCL) is not on this host; not bound" >&2
  fi
done
bind_args=()
if [ -n "$bind" ]; then bind_args=(--bind "$bind"); fi
exec "$runner" exec "${bind_args[@]}" "$container" bash -c "$inner" rank.sh "$@"
