#!/usr/bin/env bash
# Reproduce the committed identifiability results (CPU). Each grid checkpoints after every
# (activation, n_m) group, so an interrupted run resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-experiments/identifiability}
for g in sparsity_activation width mixed_wp mixed_wp_inverse; do
  .venv/bin/sae-rdp identifiability --out "$OUT" --grid "$g" --no-progress &
done
wait
