#!/usr/bin/env python3
"""Bring one device call's bundle into the committed results (dev machine, CPU).

    .venv/bin/python experiments/table2/collect.py <files_at>/x/<ID>.tar.xz [--into results/gemma3-270m-L9]

``stage.sh run`` returns ``<ID>.tar.xz``: every core / eval JSON of the device's run folder so far, each SAE's
``train_summary.json``, the stage and calibration files. A fresh machine's run folder holds only that session's
records, so a plain ``tar -x`` would replace a committed ``stage_<ID>.json`` (one record per device call) with
the new session's calls alone. This script extracts into a temporary folder, then

* ``stage_*.json``: the committed calls followed by the bundle's calls not already committed (same record),
  ``gpu_s_total`` re-summed, the other keys from the bundle;
* ``calibration_*.json``: copied into the model-layer folder and into ``results/`` (``stage.sh run`` copies
  ``results/calibration_*.json`` onto a fresh machine, where ``T-*`` of standard / jumprelu need them);
* every other file: written when new or identical; a different existing file is replaced (an SAE's JSON is
  recomputed only when its SAE was retrained) and listed.

Nothing is written before the whole bundle has been read and checked (member names relative, no links).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def merge_stage(old: dict, new: dict) -> dict:
    """The committed stage record with the bundle's calls appended (records already present are skipped)."""
    if old.get("stage") != new.get("stage"):
        raise ValueError(f"stage files disagree on the stage: {old.get('stage')!r} vs {new.get('stage')!r}")
    calls = list(old.get("calls", []))
    for c in new.get("calls", []):
        if c not in calls:
            calls.append(c)
    out = {**old, **new, "calls": calls}
    out["gpu_s_total"] = round(sum(float(c.get("gpu_s", 0.0)) for c in calls), 2)
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def collect(bundle: Path, into: Path, results: Path = RESULTS) -> dict[str, list[str]]:
    """Extract ``bundle`` into ``into`` as described in the module docstring; returns what was done."""
    if not bundle.is_file():
        raise ValueError(f"no bundle at {bundle}")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        try:
            with tarfile.open(bundle, "r:*") as tar:
                members = tar.getmembers()
                for m in members:
                    p = Path(m.name)
                    if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                        raise ValueError(f"{bundle}: unsafe member {m.name!r}")
                tar.extractall(tmp, members=members, filter="data")
        except tarfile.TarError as e:
            raise ValueError(f"{bundle}: not a readable tar archive ({e})") from e
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        if not files:
            raise ValueError(f"{bundle}: empty bundle")
        plan: list[tuple[Path, bytes, str]] = []
        for f in files:
            rel = f.relative_to(tmp)
            dest = into / rel
            data = f.read_bytes()
            if rel.parent == Path(".") and rel.name.startswith("stage_") and rel.suffix == ".json":
                new = json.loads(data)
                if dest.is_file():
                    new = merge_stage(json.loads(dest.read_text()), new)
                data = (json.dumps(new, indent=1) + "\n").encode()
                plan.append((dest, data, "stage"))
                continue
            if rel.parent == Path(".") and rel.name.startswith("calibration_"):
                json.loads(data)  # a broken calibration must not reach a fresh machine
                plan.append((results / rel.name, data, "calibration"))
            kind = "new" if not dest.exists() else ("same" if dest.read_bytes() == data else "replaced")
            plan.append((dest, data, kind))
    done: dict[str, list[str]] = {}
    for dest, data, kind in plan:
        if kind != "same":
            _write_atomic(dest, data)
        done.setdefault(kind, []).append(str(dest))
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path, help="<ID>.tar.xz from a stage.sh run call")
    ap.add_argument("--into", type=Path, default=RESULTS / "gemma3-270m-L9", help="the model-layer folder")
    args = ap.parse_args(argv)
    try:
        done = collect(args.bundle, args.into)
    except (ValueError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    for kind in ("stage", "calibration", "new", "replaced", "same"):
        if done.get(kind):
            print(f"{kind}: {len(done[kind])}" + ("" if kind in ("new", "same") else f" ({', '.join(done[kind])})"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
