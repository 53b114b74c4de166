#!/usr/bin/env bash
# One GPU session, one script (at most 8 minutes on an H100/H200), in this order:
#   1. the speed table: the paper net's loop as `--preset paper` runs it against a
#      reference-style loop (fp32, plain Adam, .item() every step), 128 and 512 px;
#   2. F16 denoising, sigma 25, 512 px: the paper preset's 3000 iterations, timed (target
#      < 15 s), eager, CUDA-graphed, and graphed in fp32 (bf16 must stay within 0.1 dB of
#      it); then the quality preset (our loop, early stopping);
#   3. several jobs per GPU: K=4 fast-preset jobs at 256 px batched vs one after another;
#   4. the CUDA-only tests (the graphed step against the eager one, resume on CUDA);
#   5. Set5 x4 with the paper's protocol (luma, 4 px border; paper 29.90 dB).
# Run from the repo root on the device machine with carry [".bench_data"] (a copy of
# ../shared/data/benchmarks). `benchmarks/device_check.sh --smoke` runs every step on the
# CPU with tiny sizes: the script's plumbing, not its numbers.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SMOKE=0; [ "${1:-}" = "--smoke" ] && SMOKE=1
OUT="${OUT:-/tmp/device_out}"; mkdir -p "$OUT"
PY="${PY:-python3}"
if [ "$SMOKE" = 1 ]; then DEVICE=cpu; DATA="${DATA:-../shared/data}"; else DEVICE="${DEVICE:-cuda}"; DATA="${DATA:-.bench_data}"; fi
[ -d "$DATA/benchmarks" ] || { echo "no $DATA/benchmarks: carry .bench_data or set DATA" >&2; exit 2; }
smoke() { [ "$SMOKE" = 1 ] && echo "$1" || echo "$2"; }

[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

echo "== 1. speed: the engine's paper loop against a reference-style loop, side by side"
for size in $(smoke "64" "128 512"); do
  $PY benchmarks/loop_speed.py --device "$DEVICE" --size "$size" --blocks 3 --steps $(smoke 3 100) 2>&1 | tee -a "$OUT/speed.md"
done

echo "== 2. F16 denoising, sigma 25, 512 px: paper preset (3000 iterations, timed), eager and CUDA-graphed,"
echo "   bf16 against fp32 (the PSNR must stay within 0.1 dB), and the quality preset"
for variant in "eager" "graph fit.cuda_graph=true" "graph-fp32 fit.cuda_graph=true fit.precision=fp32"; do
  set -- $variant; name=$1; shift; sets=(); for kv in "$@"; do sets+=(--set "$kv"); done
  echo "-- paper preset, $name" | tee -a "$OUT/paper_f16.md"
  $PY benchmarks/paper.py --device "$DEVICE" --data "$DATA" --tasks denoise --only F16_GT --presets paper \
    ${sets[@]+"${sets[@]}"} $(smoke --smoke "") 2>/dev/null | tee -a "$OUT/paper_f16.md"
done
echo "-- quality preset" | tee -a "$OUT/paper_f16.md"
$PY benchmarks/paper.py --device "$DEVICE" --data "$DATA" --tasks denoise --only F16_GT --presets quality \
  $(smoke --smoke "") 2>/dev/null | tee -a "$OUT/paper_f16.md"

echo "== 3. several jobs per GPU: K=4 at 256 px, batched vs one after another"
$PY benchmarks/batching.py --device "$DEVICE" $(smoke --smoke "--size 256 --jobs 1 4 8 --steps 100 --iterations 500 --precision auto --channels-last") \
  2>&1 | tee "$OUT/batching.md"

echo "== 4. the CUDA tests (skipped on a machine without CUDA): graphed against eager, resume, every operator"
$PY -m pytest -q -p no:cacheprovider tests/engine/test_fit.py tests/engine/test_nets.py -k cuda 2>&1 | tail -n 15 | tee "$OUT/cuda_tests.txt"

echo "== 5. Set5 x4, the paper's protocol (paper 29.90 dB)"
$PY benchmarks/paper.py --device "$DEVICE" --data "$DATA" --tasks sr5 --presets paper $(smoke --smoke "") 2>/dev/null | tee "$OUT/paper_sr5.md"
