#!/usr/bin/env bash
# Student training on several nodes of several GPUs: one `tinyvit train` process per GPU,
# started by srun, data-parallel over c10d (rendezvous on the first node, gloo collectives).
# The paper's setup: 4 nodes x 8 GPUs, 128 images per GPU, a global batch of 4096.
#
#   sbatch --nodes=4 scripts/slurm_train.sh
#
# Each task reads SLURM_PROCID (rank), SLURM_STEP_NUM_TASKS (world size), SLURM_LOCALID (its
# GPU); MASTER_ADDR / MASTER_PORT below name the rendezvous host, rank 0's node. --out must be
# a folder every node sees (rank 0 writes it; --resume reads it on every rank). Requeue or
# resubmit with the same --nodes and tasks per node: --resume needs the same world size.
# The binary must be built with `--features dist`.
#
# Edit the variables below (or export them before sbatch; sbatch passes the environment).
#SBATCH --job-name=tinyvit-train
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=12
#SBATCH --mem=0
#SBATCH --time=72:00:00
#SBATCH --requeue
#SBATCH --output=train-%j.log
set -euo pipefail

LOGITS=${LOGITS:-/shared/logits/teacher-k10}  # the teacher pass's store
DATA=${DATA:-folder:/data/imagenet22k/train}
VAL=${VAL:-folder:/data/imagenet/val}
OUT=${OUT:-/shared/runs/tiny_vit_5m_22k}        # a folder every node sees
ARCH=${ARCH:-tiny_vit_5m_224}
EPOCHS=${EPOCHS:-90}
BATCH=${BATCH:-4096}                            # global: 128 per GPU on 32 GPUs
RECIPE=${RECIPE:-in22k-distill}

# The first node of the allocation hosts rank 0 and the rendezvous store.
export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
export MASTER_PORT=${MASTER_PORT:-29500}
# Pin gloo to one network interface if the nodes have several (e.g. ib0):
# export GLOO_SOCKET_IFNAME=ib0

# --resume is safe on a first run too (it starts fresh when $OUT holds no run); each task
# takes the GPU numbered by its SLURM_LOCALID.
srun --kill-on-bad-exit=1 tinyvit train \
  --arch "$ARCH" --logits "$LOGITS" --data "$DATA" --val "$VAL" --out "$OUT" \
  --recipe "$RECIPE" --epochs "$EPOCHS" --batch-size "$BATCH" --device cuda \
  --workers "${SLURM_CPUS_PER_TASK:-12}" --resume --quiet
