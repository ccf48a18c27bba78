#!/usr/bin/env bash
# Teacher pass as a Slurm job array: array task I of N writes part I/N of one logit store.
# Every part builds the same manifest from the same arguments, so the parts can run on any
# nodes in any order; a killed task is simply resubmitted (--resume continues from its last
# complete block). When all tasks are done, `tinyvit logits verify $OUT` checks the whole store.
#
#   sbatch --array=0-7 scripts/slurm_save_logits.sh
#
# Edit the variables below (or export them before sbatch; sbatch passes the environment).
#SBATCH --job-name=tinyvit-save-logits
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=save-logits-%A_%a.log
set -euo pipefail

TEACHER=${TEACHER:-teacher.pt}          # TorchScript teacher
DATA=${DATA:-folder:/data/imagenet/train}
OUT=${OUT:-/shared/logits/teacher-k10}  # a folder every node sees
EPOCHS=${EPOCHS:-90}
TOPK=${TOPK:-10}
PRESET=${PRESET:-in22k-distill}
SEED=${SEED:-0}
BATCH=${BATCH:-256}

: "${SLURM_ARRAY_TASK_ID:?run this with sbatch --array=0-(N-1)}"
: "${SLURM_ARRAY_TASK_COUNT:?run this with sbatch --array=0-(N-1)}"
I=$SLURM_ARRAY_TASK_ID
N=$SLURM_ARRAY_TASK_COUNT

# --resume is safe on a first run too: it only continues this part's own files.
exec tinyvit save-logits \
  --teacher "$TEACHER" --data "$DATA" --epochs "$EPOCHS" --topk "$TOPK" --out "$OUT" \
  --preset "$PRESET" --seed "$SEED" --batch-size "$BATCH" --device cuda \
  --workers "${SLURM_CPUS_PER_TASK:-8}" --shard "$I/$N" --resume --quiet
