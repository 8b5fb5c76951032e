#!/usr/bin/env bash
# Create .venv and install sae-rdp with everything its tests and demo need, CPU-only, idempotently.
# torch: the CPU wheel (pip install torch==2.13.0 takes it from this machine's disk; elsewhere pip
# downloads the default build). sae-bench 0.6 and sae-probes are installed with --no-deps, last (so that
# no later install reprints their known `pip check` conflicts, listed in the README): sae-bench
# hard-requires torchvision (which would replace a CPU torch by a multi-GB CUDA build) and pins numpy<2 /
# datasets<4; its evals' import-time requirements come from the [saebench] extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0" || python -m pip install -q "torch>=2.4,<2.15"
python -m pip install -q -e ".[test,models,saebench,baselines]" "zstandard>=0.19"  # zstandard: the [probes] extra, see pyproject
# Triton: the fast step's GPU kernels are tested on CPU through Triton's interpreter (tests/test_fast_kernels.py)
python -c "import triton" 2>/dev/null || python -m pip install -q "triton==3.6.0" || echo "setup: triton not installed: tests/test_fast_kernels.py will be skipped"
python -m pip install -q --no-deps "sae-bench>=0.6,<0.7" "sae-probes>=0.4.2,<0.5"
python -c "import sae_rdp_plugin, sae_bench.evals.base_eval_output, sae_bench.evals.sparse_probing.main" >/dev/null
echo "setup: ok ($(python -c 'import torch; print("torch", torch.__version__)'))"
