#!/usr/bin/env bash
# Build the sae-rdp wheel from the working tree's files (tracked and untracked, not ignored: no stale build/),
# install it in a throwaway venv and smoke-test it from outside the source tree, so that the wheel, not the
# checkout, is what gets imported. The throwaway venv takes its dependencies (torch, SAELens, ...) from .venv
# through a .pth line instead of downloading them again; .venv's editable install of sae-rdp is not active there
# (a .pth line adds a path; it does not run that folder's own .pth files).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "check_wheel: run scripts/setup.sh first" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

mkdir "$tmp/src"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"  # skip tracked files deleted in the working tree
done | tar -cf - --null -T - | tar -xf - -C "$tmp/src"
.venv/bin/python -m pip wheel -q --no-deps "$tmp/src" -w "$tmp/dist"
wheel=$(ls "$tmp"/dist/sae_rdp-*.whl)

.venv/bin/python - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["sae_rdp_plugin/__main__.py", "sae_rdp_plugin/audit/data/saebench/PROVENANCE.md",
        "sae_rdp_plugin/audit/data/saebench/core_2024-09_final.csv"]
missing = [n for n in need if n not in names]
stray = sorted({n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} - {"sae_rdp_plugin"})
assert not missing, f"missing from the wheel: {missing}"
assert not stray, f"top-level entries in the wheel other than sae_rdp_plugin: {stray}"
EOF

.venv/bin/python -m venv --without-pip "$tmp/venv"
site=$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/_sae_rdp_deps_from_dotvenv.pth"
.venv/bin/python -m pip --python "$tmp/venv/bin/python" install -q --no-deps "$wheel"

cd "$tmp"
"$tmp/venv/bin/python" - "$tmp/venv" <<'EOF'
import sys
from pathlib import Path

import sae_rdp_plugin
from sae_rdp_plugin.audit.readers import BUNDLED_DIR, read_bundled

venv = Path(sys.argv[1]).resolve()
assert venv in Path(sae_rdp_plugin.__file__).resolve().parents, f"imported from {sae_rdp_plugin.__file__}, not the wheel"
assert venv in BUNDLED_DIR.resolve().parents and len(read_bundled("A")) > 0
EOF
"$tmp/venv/bin/python" -m sae_rdp_plugin --help > /dev/null
"$tmp/venv/bin/sae-rdp" audit orientations > /dev/null
echo "check_wheel: ok ($(basename "$wheel") installs and runs from a venv outside the source tree)"
