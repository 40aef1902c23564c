#!/usr/bin/env bash
# Shared by the sbatch templates (which find it next to themselves): load the cluster's environment, then start
# one training process per task with srun, in the folder the job was submitted from (relative run_dir and data
# paths mean what they meant there). Every hyperparameter comes from the command line (recipe=..., key=value);
# this file only maps the allocation onto the trainer: trainer.devices = tasks per node, trainer.num_nodes =
# nodes, cluster=slurm (a signal at any moment -> checkpoint + requeue; resume=auto on the requeued start).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
env_file=${WAN_CLUSTER_ENV:-$repo/slurm/clusters/default.env}
if [[ ! -f "$env_file" ]]; then
  echo "launch.sh: no cluster env file $env_file (copy slurm/clusters/default.env to it)" >&2
  exit 2
fi
# shellcheck source=/dev/null
source "$env_file"
python=${WAN_PYTHON:-python}

tasks_per_node=${SLURM_NTASKS_PER_NODE:-$(( SLURM_NTASKS / SLURM_NNODES ))}
tasks_per_node=${tasks_per_node%%(*}  # "8(x4)" -> 8
# the rendezvous: the first node of the allocation (where this script and rank 0 run) as SLURM reaches it
# (NodeAddr), on a port free on it, so two jobs sharing a node never meet on one (Lightning's default port,
# 15000 + the job id's last 4 digits, collides for jobs 10123 and 20123). Never a MASTER_ADDR / MASTER_PORT the job
# inherited from the shell that ran sbatch (sbatch exports it whole): they name some earlier run's rendezvous,
# where the tasks would wait 30 minutes for a peer. A cluster that needs another address (an InfiniBand name) sets
# WAN_MASTER_ADDR in its env file.
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR=${WAN_MASTER_ADDR:-$(scontrol show node -o "$first" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)}
export MASTER_PORT=$("$python" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
echo "job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}): ${SLURM_NNODES} node(s) x ${tasks_per_node} task(s), rendezvous ${MASTER_ADDR}:${MASTER_PORT}"

srun --kill-on-bad-exit=1 --cpu-bind=none \
  "$python" "$repo/train.py" cluster=slurm \
  trainer.devices="$tasks_per_node" trainer.num_nodes="$SLURM_NNODES" "$@"
