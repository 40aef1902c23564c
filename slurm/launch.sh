#!/usr/bin/env bash
# Shared by the sbatch templates: load the cluster's environment, then start one training process per task
# with srun. Every hyperparameter comes from the command line (recipe=..., key=value); this file only maps the
# allocation onto the trainer: trainer.devices = tasks per node, trainer.num_nodes = nodes, cluster=slurm
# (checkpoint + requeue on the --signal SIGUSR1, resume=auto on the requeued start).
set -euo pipefail

repo=${WAN_TRAIN_REPO:-${SLURM_SUBMIT_DIR:-$(pwd)}}
cd "$repo"
env_file=${WAN_CLUSTER_ENV:-slurm/clusters/default.env}
if [[ ! -f "$env_file" ]]; then
  echo "launch.sh: no cluster env file $env_file (copy slurm/clusters/default.env to it)" >&2
  exit 2
fi
# shellcheck source=/dev/null
source "$env_file"

tasks_per_node=${SLURM_NTASKS_PER_NODE:-$(( SLURM_NTASKS / SLURM_NNODES ))}
tasks_per_node=${tasks_per_node%%(*}  # "8(x4)" -> 8
echo "job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}): ${SLURM_NNODES} node(s) x ${tasks_per_node} task(s)"

srun --kill-on-bad-exit=1 --cpu-bind=none \
  "${WAN_PYTHON:-python}" train.py cluster=slurm \
  trainer.devices="$tasks_per_node" trainer.num_nodes="$SLURM_NNODES" "$@"
