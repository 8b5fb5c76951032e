#!/usr/bin/env bash
# Device call before the E-* stages (experiments/table2/README.md, section 4), after `stage.sh wheels`, back to back:
#   bash experiments/table2/probes.sh      # carry [".carry/probes_whl"]
# Installs the sae-probes / SAEBench / zstandard wheels into /tmp/site (pip --no-deps --no-index --target) and checks
# that SAEBench's sparse_probing_sae_probes imports (xgboost stubbed) and that sae-probes ships every dataset of
# probe_datasets.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
SITE=${T2_SITE:-/tmp/site}
SRC=${1:-.carry/probes_whl}
PY=${PYTHON:-python3}
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d "$SRC" ] || { echo "error: $SRC not carried (carry it with this call)"; exit 3; }
"$PY" -c "import sae_lens, transformer_lens" 2>/dev/null || { echo "error: run stage.sh wheels first, back to back"; exit 3; }
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
