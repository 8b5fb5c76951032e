#!/usr/bin/env bash
# One device call of the end-to-end benchmark (benchmarks/e2e/bench_e2e.py) on the lent GPU machine.
# Carry .carry/e2e (the wheels of sae-lens, transformer-lens, eai-sparsify, datasets and of what they need
# that the machine's image lacks; see README.md). Installs them offline into /tmp/site, puts the
# repository on the import path (the package is not pip-installed there), turns NVLink multicast off, and
# runs the benchmark with this script's arguments; its log goes to $OUT/log.txt next to latest.json/md.
#
#   bash benchmarks/e2e/run_on_device.sh --out $OUT [--only ROW ...] [--resume benchmarks/e2e/latest.json]
set -uo pipefail
cd "$(dirname "$0")/../.."
WHEELS=.carry/e2e/wheels
LOG_DIR=${OUT:-out/e2e}
mkdir -p "$LOG_DIR"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    --find-links "$WHEELS" "$WHEELS"/*.whl 2>&1 | grep -v -i "warning" | tail -5
elif ! PYTHONPATH=/tmp/site python3 -c "import sae_lens, sparsify, transformer_lens, datasets" 2>/dev/null; then
  # (experiments/table2/stage.sh site or wheels puts a superset into /tmp/site earlier in the same session)
  echo "error: no wheels in $WHEELS and none installed in /tmp/site: run experiments/table2/stage.sh site" \
    ".carry/site first (or stage.sh wheels, its two halves; README.md: .carry/e2e and the tree no longer fit one call)" >&2
  exit 2
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
# real weights staged by experiments/table2/stage.sh: its unpacked tokenizer (checked on the dev machine; the
# image's transformers converts Gemma's GGUF tokenizer into one that splits words)
if [ -z "${SAE_RDP_TOKENIZER_DIR:-}" ] && [ -f /tmp/t2/tokenizer/tokenizer.json ]; then
  export SAE_RDP_TOKENIZER_DIR=/tmp/t2/tokenizer
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 - <<'EOF'
import importlib.metadata as md
for d in ("torch", "triton", "transformers", "sae-lens", "transformer-lens", "eai-sparsify", "datasets"):
    try:
        print(d, md.version(d), end="; ")
    except md.PackageNotFoundError:
        print(d, "MISSING", end="; ")
print()
EOF
} 2>&1 | tee "$LOG_DIR/log.txt"
python3 benchmarks/e2e/bench_e2e.py "$@" 2>&1 | tee -a "$LOG_DIR/log.txt"
