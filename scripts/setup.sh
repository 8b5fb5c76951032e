#!/usr/bin/env bash
# Create .venv and install sae-rdp with everything its tests and demo need, CPU-only, idempotently.
# torch: the CPU wheel (pip install torch==2.13.0 takes it from this machine's disk; elsewhere pip
# downloads the default build). sae-bench 0.6 is installed with --no-deps: it hard-requires
# torchvision (which would replace a CPU torch by a multi-GB CUDA build) and pins numpy<2 /
# datasets<4, none of which the parts we use (eval base classes, validators) need.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0" || python -m pip install -q "torch>=2.4,<2.15"
python -m pip install -q -e ".[test,models]"
python -m pip install -q --no-deps "sae-bench>=0.6,<0.7"
python -m pip install -q "scikit-learn>=1.5" "seaborn>=0.13" "tabulate>=0.9" "collectibles>=0.1.5"
python -m pip install -q --no-deps "sae-probes>=0.4.2,<0.5" && python -m pip install -q "zstandard>=0.19"  # [probes], see pyproject
# Triton: the fast step's GPU kernels are tested on CPU through Triton's interpreter (tests/test_fast_kernels.py)
python -c "import triton" 2>/dev/null || python -m pip install -q "triton==3.6.0" || echo "setup: triton not installed: tests/test_fast_kernels.py will be skipped"
python -c "import sae_rdp_plugin, sae_bench.evals.base_eval_output" >/dev/null
echo "setup: ok ($(python -c 'import torch; print("torch", torch.__version__)'))"
