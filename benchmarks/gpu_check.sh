#!/usr/bin/env bash
# The prepared GPU check of the fast mode and `high` (issue: a pre-trained fast mode), sized for
# one short run on a lent card (under 10 minutes). Run from the repository root on a machine
# with CUDA, in the project's venv:
#
#     bash benchmarks/gpu_check.sh OUT_DIR
#
# It records the card's name, then: fast and fast+refine10 and high on the faces/wild faces at
# 512 px and the whole photos (s/image at batch 1, the photos median of 3, effect judged by dlib's full pipeline, a
# 12-megapixel photo timed for fast), and fast's throughput at batch 1 and 32 (512 px, 64 images,
# reading and writing included). Every figure it prints names the card.
set -u
OUT="${1:-bench/gpu}"
mkdir -p "$OUT"
python - <<'PY' | tee "$OUT/card.txt"
import torch
print("card:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA DEVICE")
print("torch:", torch.__version__, "cuda:", torch.version.cuda)
PY
timeout 330 python benchmarks/fast.py --device cuda --limit 12 --configs fast,fast+refine10,high \
    --megapixels 12 --repeat 3 --out "$OUT/fast" 2>&1 | tail -n 30 | tee "$OUT/fast.txt"
timeout 180 python benchmarks/throughput.py --device cuda --strength fast --size 512 --count 64 \
    --workers 0 --batch-sizes 1 32 2>&1 | tail -n 20 | tee "$OUT/throughput.txt"
