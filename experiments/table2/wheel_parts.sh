# Sourced by stage.sh and probes.sh (which define die CODE MESSAGE): the halves that split_wheels.sh makes, put in
# two device calls and joined on the device.
#   put_parts DIR PARTS      copy a carried half (a split_wheels.sh folder) into PARTS
#   parts_complete PARTS     true once every piece PARTS/PARTS names is there (and SHA256SUMS)
#   join_parts PARTS JOINED  the whole wheels into JOINED, refused unless every piece is there and every checksum
#                            matches; JOINED is replaced only if this function wrote it (its .joined marker)
put_parts() {
  [ -f "$1/.split_wheels" ] || die 3 "$1: not a split_wheels.sh folder, or not carried (carry it with this call)"
  mkdir -p "$2" && cp "$1"/* "$2/"
  echo "put $(ls "$1" | tr '\n' ' ')into $2"
}
parts_complete() {
  local part
  [ -f "$1/SHA256SUMS" ] && [ -f "$1/PARTS" ] || return 1
  while read -r part; do [ -f "$1/$part" ] || return 1; done < "$1/PARTS"
}
join_parts() {
  local parts_dir=$1 joined=$2 tmp="$2.tmp" name part parts
  for f in SHA256SUMS PARTS; do
    [ -f "$parts_dir/$f" ] || die 3 "$parts_dir/$f missing: put the second half first (this call or before)"
  done
  while read -r part; do
    [ -f "$parts_dir/$part" ] || die 3 "$part: not in $parts_dir (put both halves)"
  done < "$parts_dir/PARTS"
  [ ! -e "$joined" ] || [ -f "$joined/.joined" ] || die 3 "$joined exists and was not written by a join"
  rm -rf "$tmp" && mkdir -p "$tmp"
  while read -r _ name; do
    parts=$(grep -F -x -e "$name.part0" -e "$name.part1" "$parts_dir/PARTS" || true)
    if [ -n "$parts" ]; then
      (cd "$parts_dir" && cat $parts) > "$tmp/$name"
    elif [ -f "$parts_dir/$name" ]; then
      cp "$parts_dir/$name" "$tmp/"
    else
      rm -rf "$tmp"; die 3 "$name: not in $parts_dir (put both halves)"
    fi
  done < "$parts_dir/SHA256SUMS"
  (cd "$tmp" && sha256sum --quiet -c "$parts_dir/SHA256SUMS" >/dev/null 2>&1) \
    || { rm -rf "$tmp"; die 3 "the joined wheels do not match $parts_dir/SHA256SUMS: put both halves of one split"; }
  touch "$tmp/.joined" && rm -rf "$joined" && mv "$tmp" "$joined"
}
