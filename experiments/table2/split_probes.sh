#!/usr/bin/env bash
# Split the sparse-probing wheels (.carry/probes_whl, 45 MB) into two carry folders for two device calls: with the
# working tree (20 MB tracked) one folder no longer fits the run tool's 64 MiB per call.
#   bash experiments/table2/split_probes.sh [SRC] [OUT1] [OUT2]
# SRC (default .carry/probes_whl) holds sae_probes-*.whl (and the other wheels); OUT1 (.carry/probes_part1) gets
# the first half of the sae-probes wheel, OUT2 (.carry/probes_part2) the second half, every other wheel of SRC,
# SHA256SUMS of the whole wheels and PARTS (the halves' names, in order). On the device: `probes.sh put OUT1` (one call), then `probes.sh put OUT2 &&
# probes.sh` (the next): probes.sh joins the halves and checks them before installing.
set -euo pipefail
die() { echo "error: $1" >&2; exit 2; }
SRC=${1:-.carry/probes_whl}
OUT1=${2:-.carry/probes_part1}
OUT2=${3:-.carry/probes_part2}
[ -d "$SRC" ] || die "$SRC: no such folder (experiments/table2/prepare.sh downloads it)"
shopt -s nullglob
big=("$SRC"/sae_probes-*.whl)
[ ${#big[@]} -eq 1 ] || die "$SRC: expected one sae_probes-*.whl, found ${#big[@]}"
for o in "$OUT1" "$OUT2"; do
  [ -d "$o" ] && [ -n "$(ls -A "$o")" ] && [ ! -f "$o/.split_probes" ] && die "$o: exists and was not written by split_probes.sh"
done
rm -rf "$OUT1" "$OUT2"
mkdir -p "$OUT1" "$OUT2"
name=$(basename "${big[0]}")
half=$(( ($(stat -c %s "${big[0]}") + 1) / 2 ))
head -c "$half" "${big[0]}" > "$OUT1/$name.part0"
tail -c +"$(( half + 1 ))" "${big[0]}" > "$OUT2/$name.part1"
for w in "$SRC"/*.whl; do [ "$w" = "${big[0]}" ] || cp "$w" "$OUT2/"; done
(cd "$SRC" && sha256sum -- *.whl) > "$OUT2/SHA256SUMS"
printf '%s\n' "$name.part0" "$name.part1" > "$OUT2/PARTS"  # the pieces of each split wheel, in order
touch "$OUT1/.split_probes" "$OUT2/.split_probes"
du -sh "$OUT1" "$OUT2"
