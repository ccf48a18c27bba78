#!/usr/bin/env bash
# Training throughput of tiny_vit_5m_224 on one CUDA GPU, batch 256, fp16 autocast, synthetic
# 224 px data, for the three targets of `tinyvit train`:
#   (a) --labels            the baseline without distillation (label smoothing 0.1, no mixup)
#   (b) --logits            sparse top-K targets (K = 10 of 1000 classes), as a store gives them
#   (c) --teacher FILE      online distillation, a tiny_vit_21m_224 forward every step
#
# For CUDA hosts that have torch 2.11 (with CUDA) but no Rust toolchain and no internet:
#   1. on a machine with cargo:  cargo build --release -p tinyvit-host --bin tinyvit
#                                strip -o tinyvit target/release/tinyvit
#   2. copy `tinyvit` and this script to the GPU host, then run:
#                                bash gpu_bench.sh ./tinyvit [OUT_DIR]
# The binary loads libtorch (and libtorch_cuda) from the Python torch found by `python3`.
#
# (b) reads its top-K from the data workers' synthetic records, not from files: the cost of
# reading a real store (mmap, one record of 4 + 4K bytes per image) is measured by the store
# benchmark (`cargo xtask bench`). Images/s is the median of the logged windows after the
# first (cudnn autotuning and allocator warm-up excluded).
#
# Measured (2026-11-28, NVIDIA H200, driver 580.159.04, torch 2.11.0+cu130, STEPS=40,
# WORKERS=14; four runs of the script gave (b)/(a) = 0.959, 0.979, 0.975, 0.941):
#   (a) --labels 2310 images/s, (b) --logits 2174 (0.941), (c) online 21m teacher 1730 (0.749);
#   timm peer 2944 images/s with the batch already on the GPU, 2277 with a pageable host copy.
#
# Environment: STEPS (optimizer steps per run, default 60), WORKERS (data threads, default 12).
set -euo pipefail

BIN=${1:-"$(dirname "$0")/../target/release/tinyvit"}
OUT=${2:-gpu-bench}
STEPS=${STEPS:-60}
WORKERS=${WORKERS:-12}
PY=${PYTHON:-python3}

TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c 'import torch; print("python torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$OUT/gpu.txt"
"$BIN" --version | tee -a "$OUT/gpu.txt"

N=$(( (STEPS + 2) * 256 ))
COMMON=(--arch tiny_vit_5m_224 --synthetic "$N" --batch-size 256 --epochs 1 --max-steps "$STEPS"
        --device cuda --amp true --num-classes 1000 --recipe in22k-distill
        --workers "$WORKERS" --log-every 5 --quiet)

echo "teacher: tiny_vit_21m_224 checkpoint (random weights; only its cost matters)"
rm -rf "$OUT/teacher21m"
"$BIN" train --arch tiny_vit_21m_224 --synthetic 64 --labels --batch-size 64 --epochs 1 \
    --max-steps 1 --device cuda --num-classes 1000 --recipe in1k-scratch --quiet \
    --out "$OUT/teacher21m" > /dev/null

run() {
    local name=$1; shift
    rm -rf "${OUT:?}/$name"
    echo "($name) ${*}"
    "$BIN" train "${COMMON[@]}" "$@" --out "$OUT/$name" > "$OUT/$name.summary.json"
}
run a-labels --labels --mixup 0 --cutmix 0
run b-logits --logits synthetic --synthetic-topk 10
run c-online --teacher "$OUT/teacher21m/model.safetensors"

"$PY" - "$OUT" <<'EOF'
import json, os, statistics, sys
out = sys.argv[1]
rows = []
for name in ["a-labels", "b-logits", "c-online"]:
    recs = [json.loads(l) for l in open(os.path.join(out, name, "metrics.jsonl")) if l.strip()]
    ips = [r["images_per_s"] for r in recs if r["kind"] == "train"][1:]
    rows.append((name, statistics.median(ips)))
base = rows[0][1]
gpu = open(os.path.join(out, "gpu.txt")).readline().strip()
lines = [f"tiny_vit_5m_224 training, batch 256, fp16 autocast, synthetic 224 px data, on {gpu}:"]
for name, v in rows:
    lines.append(f"  {name:<9} {v:8.0f} images/s   ratio to (a) {v / base:.3f}")
text = "\n".join(lines)
print(text)
open(os.path.join(out, "result.txt"), "w").write(text + "\n")
EOF

# Peer: the same student, batch, precision and optimizer in PyTorch + timm, when timm is there.
if "$PY" -c 'import timm' 2> /dev/null; then
    "$PY" "$(dirname "$0")/gpu_bench_peer.py" "$STEPS" | tee -a "$OUT/result.txt"
fi
