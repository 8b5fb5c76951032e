#!/usr/bin/env bash
# Device call before the E-* stages (experiments/table2/README.md, section 4), after `stage.sh wheels`, back to back:
#   bash experiments/table2/probes.sh      # carry [".carry/probes_whl"]
# Installs the sae-probes / SAEBench / zstandard wheels into /tmp/site (pip --no-deps --no-index --target) and checks
# that SAEBench's sparse_probing_sae_probes imports (xgboost stubbed) and that sae-probes ships every dataset of
# probe_datasets.json.
# When the working tree and .carry/probes_whl no longer fit one call (64 MiB), the wheels travel in the two halves
# that split_wheels.sh makes (prepare.sh), one call each:
#   bash experiments/table2/probes.sh put .carry/probes_part1                                 # carry that folder
#   bash experiments/table2/probes.sh put .carry/probes_part2 && bash experiments/table2/probes.sh   # carry part2
# `put` copies a carried half to /tmp/probes_parts; without .carry/probes_whl, the install joins the halves into
# /tmp/probes_whl and checks them against SHA256SUMS first (`probes.sh join` does only that).
set -euo pipefail
cd "$(dirname "$0")/../.."
SITE=${T2_SITE:-/tmp/site}
PARTS=${T2_PROBES_PARTS:-/tmp/probes_parts}
JOINED=${T2_PROBES_JOINED:-/tmp/probes_whl}
PY=${PYTHON:-python3}
die() { echo "error: $2" >&2; exit "$1"; }
source experiments/table2/wheel_parts.sh
case "${1:-}" in
put)
  [ $# -eq 2 ] || die 2 "usage: probes.sh put <carried folder>"
  put_parts "$2" "$PARTS"
  exit 0 ;;
join)
  join_parts "$PARTS" "$JOINED"
  echo "probes joined: $(ls "$JOINED" | tr '\n' ' ')"
  exit 0 ;;
esac
SRC=${1:-.carry/probes_whl}
if [ $# -eq 0 ] && [ ! -d "$SRC" ]; then
  join_parts "$PARTS" "$JOINED"
  SRC=$JOINED
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d "$SRC" ] || die 3 "$SRC not carried (carry it with this call)"
"$PY" -c "import sae_lens, transformer_lens" 2>/dev/null || die 3 "run stage.sh wheels first, back to back"
"$PY" -m pip install -q --no-deps --no-index --no-compile --no-cache-dir --upgrade --target "$SITE" "$SRC"/*.whl
"$PY" - <<'PYEOF'
import json, sys
sys.path.insert(0, "experiments/table2")
from probing_stage import gemma_probing
stubbed = gemma_probing().install_xgboost_stub()
import sae_probes
from sae_bench.evals.sparse_probing_sae_probes.main import run_eval  # noqa: F401
subset = json.load(open("experiments/table2/probe_datasets.json"))["subset"]
missing = [d for d in subset if d not in sae_probes.DATASETS]
if missing:
    sys.exit(f"error: datasets missing from sae-probes: {missing}")
print(f"probes ok: {len(subset)} datasets, xgboost {'stubbed' if stubbed else 'real'}")
PYEOF
