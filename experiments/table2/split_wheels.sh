#!/usr/bin/env bash
# Split a folder of wheels into two carry folders for two device calls, when the folder and the working tree no
# longer fit one call's 64 MiB (the run tool): the largest wheel is cut in two halves, the other wheels go whole.
#   bash experiments/table2/split_wheels.sh SRC OUT1 OUT2
# OUT1 gets the first half of SRC's largest wheel, OUT2 its second half, SHA256SUMS of the whole wheels and PARTS
# (the halves' names, in order); every other wheel goes whole to whichever folder is smaller at the time, largest
# first, so that the two calls are about equal (each must fit beside the tree, which grows; wheel_parts.sh joins
# whole wheels from either half). prepare.sh splits .whl (-> .carry/whl_part1, _part2:
# `stage.sh wheels DIR`) and .carry/probes_whl (-> .carry/probes_part1, _part2: `probes.sh put DIR`); on the device
# wheel_parts.sh joins the halves and checks them against SHA256SUMS before anything is installed.
set -euo pipefail
die() { echo "error: $1" >&2; exit 2; }
[ $# -eq 3 ] || die "usage: split_wheels.sh SRC OUT1 OUT2"
SRC=$1 OUT1=$2 OUT2=$3
[ -d "$SRC" ] || die "$SRC: no such folder (experiments/table2/prepare.sh downloads it)"
shopt -s nullglob
wheels=("$SRC"/*.whl)
[ ${#wheels[@]} -ge 1 ] || die "$SRC: no wheels"
for o in "$OUT1" "$OUT2"; do
  if [ -d "$o" ] && [ -n "$(ls -A "$o")" ] && [ ! -f "$o/.split_wheels" ]; then
    die "$o: exists and was not written by split_wheels.sh"
  fi
done
big=$(ls -S "$SRC"/*.whl | head -1)
rm -rf "$OUT1" "$OUT2"
mkdir -p "$OUT1" "$OUT2"
name=$(basename "$big")
half=$(( ($(stat -c %s "$big") + 1) / 2 ))
head -c "$half" "$big" > "$OUT1/$name.part0"
tail -c +"$(( half + 1 ))" "$big" > "$OUT2/$name.part1"
n1=$half n2=$(( $(stat -c %s "$big") - half ))
while IFS= read -r w; do
  [ "$w" = "$big" ] && continue
  sz=$(stat -c %s "$w")
  if [ "$n1" -lt "$n2" ]; then cp "$w" "$OUT1/"; n1=$(( n1 + sz )); else cp "$w" "$OUT2/"; n2=$(( n2 + sz )); fi
done < <(ls -S "$SRC"/*.whl)
(cd "$SRC" && sha256sum -- *.whl) > "$OUT2/SHA256SUMS"
printf '%s\n' "$name.part0" "$name.part1" > "$OUT2/PARTS"  # the pieces of the split wheel, in order
touch "$OUT1/.split_wheels" "$OUT2/.split_wheels"
du -sh "$OUT1" "$OUT2"
