#!/usr/bin/env bash
# One GPU session, one script: CUDA path, throughput, the paper's protocol on a subset,
# and DeepInverse side by side. Run from the repo root on the device machine with
# carry [".bench_data", ".whl"] (copies of ../shared/data/benchmarks and the deepinv +
# natsort wheels); on a CPU, run it with DEVICE=cpu QUICK=1 to check the script itself.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/device_out}"; mkdir -p "$OUT"
DEVICE="${DEVICE:-cuda}"; DATA="${DATA:-.bench_data}"; PY="${PY:-python3}"
QUICK="${QUICK:-0}"

if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
  fi
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if [ "$QUICK" = 1 ]; then ITERS="--iterations 20"; SIZES="64"; IMAGES=1; else ITERS=""; SIZES="256 512"; IMAGES=5; fi

echo "== throughput"
$PY benchmarks/throughput.py --device "$DEVICE" --sizes $SIZES --iterations 50 2>&1 | tee "$OUT/throughput.md"

echo "== deterministic mode: two seeded runs per mode, compared bit for bit, and its cost"
$PY benchmarks/determinism.py --device "$DEVICE" --size $([ "$QUICK" = 1 ] && echo 64 || echo 256) \
  --iterations $([ "$QUICK" = 1 ] && echo 20 || echo 500) 2>&1 | tee "$OUT/determinism.md"

echo "== the paper's protocols beside its numbers: Set5 x4 (luma, 4 px border) and F16 denoising"
$PY benchmarks/paper.py --device "$DEVICE" --data "$DATA" --tasks sr5 $([ "$QUICK" = 1 ] && echo --smoke) 2>/dev/null | tee "$OUT/paper_sr5.md"
$PY benchmarks/paper.py --device "$DEVICE" --data "$DATA" --tasks denoise --images 2 $([ "$QUICK" = 1 ] && echo --smoke) 2>/dev/null | tee "$OUT/paper_denoise.md"

echo "== fast preset sweep on 96 px crops (what the CPU runs), sigma=25, 5 images"
for variant in "" "--set net.channels=128" "--set fit.ema=0.995" "--set fit.early_stop.min_delta=0.3 --set fit.early_stop.patience=300"; do
  $PY benchmarks/quality.py --device "$DEVICE" --data "$DATA" --tasks denoise --images $([ "$QUICK" = 1 ] && echo 1 || echo 5) $ITERS $variant 2>/dev/null | grep "^mean" | tee -a "$OUT/sweep.md"
done

echo "== denoising sigma=25, paper preset"
$PY benchmarks/quality.py --full --device "$DEVICE" --data "$DATA" --tasks denoise --images $([ "$QUICK" = 1 ] && echo 1 || echo 3) --skip 2 $ITERS 2>/dev/null | tee "$OUT/denoise.md"

echo "== super-resolution x4, Set5, paper preset (Y-channel PSNR columns = the paper's protocol)"
$PY benchmarks/quality.py --full --device "$DEVICE" --data "$DATA" --tasks superres --images $IMAGES $ITERS 2>/dev/null | tee "$OUT/sr.md"

echo "== DeepInverse DeepImagePrior side by side (same noisy image, same iteration cap)"
$PY benchmarks/compare_deepinv.py --device "$DEVICE" --iterations $([ "$QUICK" = 1 ] && echo 20 || echo 2000) --crop 256 \
  "$DATA"/benchmarks/denoise9/originals/F16_GT.png "$DATA"/benchmarks/denoise9/originals/kodim03.png 2>&1 | tee "$OUT/deepinv.md"

echo "== inpainting, 50% pixels dropped, paper preset (11000 iterations at lr 0.001)"
$PY benchmarks/quality.py --full --device "$DEVICE" --data "$DATA" --tasks inpaint --images $([ "$QUICK" = 1 ] && echo 1 || echo 2) --skip 4 $ITERS 2>/dev/null | tee "$OUT/inpaint.md"
