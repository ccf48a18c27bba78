#!/usr/bin/env bash
# End-to-end CUDA smoke run of the whole method on a GPU host that has torch 2.11 but no Rust:
# a labels-trained TinyViT teacher, the teacher pass on the GPU (fp16 autocast, top-K on the
# device), a student distilled from the store and a baseline, all with --device cuda.
#
#   bash scripts/gpu_smoke.sh ./tinyvit IMAGES.idx LABELS.idx VAL_IMAGES.idx VAL_LABELS.idx [OUT]
#
# IDX files as the `idx:` data SPEC takes them (Fashion-MNIST splits, gzipped or not).
set -euo pipefail
BIN=$1; TI=$2; TL=$3; VI=$4; VL=$5; OUT=${6:-gpu-smoke}
PY=${PYTHON:-python3}
TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
rm -rf "$OUT"; mkdir -p "$OUT"
D="idx:$TI,$TL"; V="idx:$VI,$VL"
"$BIN" --version
"$BIN" devices
common=(--data "$D" --val "$V" --device cuda --batch-size 256 --quiet --img-size 56)
"$BIN" train --arch tiny_vit_mcu_h7 --labels --aug plain --epochs 3 "${common[@]}" --out "$OUT/teacher" | tail -1
"$BIN" save-logits --teacher "$OUT/teacher/model.safetensors" --data "$D" --epochs 2 --topk 3 \
    --preset light --device cuda --batch-size 256 --out "$OUT/store"
"$BIN" logits verify "$OUT/store"
"$BIN" train --arch tiny_vit_mcu_m4 --logits "$OUT/store" --epochs 2 "${common[@]}" --out "$OUT/kd" | tail -1
"$BIN" train --arch tiny_vit_mcu_m4 --labels --epochs 2 "${common[@]}" --out "$OUT/base" | tail -1
