#!/usr/bin/env bash
# Reproduce the committed identifiability results (CPU). Each grid checkpoints after every
# (activation, n_m) group, so an interrupted run resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-evals/identifiability}
.venv/bin/sae-rdp identifiability --out "$OUT" --grid sparsity_activation &
.venv/bin/sae-rdp identifiability --out "$OUT" --grid width &
wait
