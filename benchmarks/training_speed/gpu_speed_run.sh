#!/usr/bin/env bash
# One device call for the training-speed work (benchmarks/training_speed): installs the carried wheels,
# runs the CUDA tests of the fast step, tunes the Triton block sizes, then benchmarks with the best
# ones. Usage on the device (carry .whl):  bash benchmarks/training_speed/gpu_speed_run.sh [bench args...]
# (.whl with the tree passed one call's 64 MiB on 2026-12-06: install it first with experiments/table2/stage.sh
# site .carry/site, one call (or stage.sh wheels .carry/whl_part1, then .carry/whl_part2); the install below then
# finds no .whl and the wheels already in /tmp/site)
# (SKIP_TUNE=1: no tuning; PROFILE_DEAD=F: also profile_fast_step.py with a fraction F of the latents dead;
# TESTS=aux: only the aux-loss, hot-row and RowsAt tests; TESTS=det: the deterministic mode's and sae_streams' GPU
# tests; SKIP_HOT=1: no bench_topk_hot.py)
# The package is not installed there: PYTHONPATH puts the repository root on the import path.
set -uo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 WANDB_MODE=disabled
OUT=${OUT:-out/speed}; mkdir -p "$OUT"
B=benchmarks/training_speed
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
# whole pytest output into $OUT/pytest.txt (a failure's assertion comes back with it), its summary lines here
PT="python3 -m pytest -q -p no:cacheprovider -p no:warnings --tb=short"
: > "$OUT/pytest.txt"
if [ "${TESTS:-all}" = det ]; then  # TESTS=det: the deterministic mode's and the CUDA streams' GPU tests (short)
  $PT -m gpu tests/fast/test_fast_topk.py -k deterministic -s >> "$OUT/pytest.txt" 2>&1
  $PT -m gpu tests/train/test_sae_streams.py >> "$OUT/pytest.txt" 2>&1
elif [ "${TESTS:-all}" = aux ]; then  # TESTS=aux: only the aux-loss kernel and step tests (a short call)
  $PT -m gpu tests/fast/test_aux_compact.py >> "$OUT/pytest.txt" 2>&1
  $PT tests/fast/test_topk_mask.py >> "$OUT/pytest.txt" 2>&1
  $PT -m "gpu or not gpu" tests/fast/test_fast_kernels.py -k "hot or row_topk_in or rows_at or sparse_grad or masked_copy or compacted_copy" >> "$OUT/pytest.txt" 2>&1
  $PT tests/fast/test_topk_kernel.py -k masked_copy >> "$OUT/pytest.txt" 2>&1
else
  $PT -m "gpu or not gpu" tests/fast/test_fast_kernels.py >> "$OUT/pytest.txt" 2>&1
  $PT -m gpu tests/fast/test_fast_topk.py tests/fast/test_aux_compact.py tests/train/test_sae_streams.py >> "$OUT/pytest.txt" 2>&1
  $PT tests/fast/test_topk_kernel.py tests/fast/test_topk_mask.py >> "$OUT/pytest.txt" 2>&1
fi
grep -E "passed|failed|error|^FAILED|^E " "$OUT/pytest.txt" | tail -20
if [ "${SKIP_HOT:-0}" != 1 ]; then
  python3 $B/bench_topk_hot.py --out "$OUT" 2>&1 | grep -v -i warn | tail -8
fi
if [ -n "${PROFILE_DEAD:-}" ]; then  # e.g. PROFILE_DEAD=0.5: the kernel table of the step with the aux loss
  python3 $B/profile_fast_step.py --dead-frac "$PROFILE_DEAD" --small-only --out "$OUT/profile" 2>&1 | grep -v -i warn | tail -25
fi
if [ "${SKIP_TUNE:-0}" != 1 ]; then
  python3 $B/tune_fast_kernels.py --out "$OUT" 2>&1 | grep -v -i warn | tail -12
  BLOCKS="--blocks-json $OUT/tune_fast_kernels.json"
else
  BLOCKS=""
fi
python3 $B/bench_training_speed.py --device cuda --out "$OUT" $BLOCKS "$@" 2>&1 | grep -v -i warn | tee "$OUT/log.txt" | tail -40
