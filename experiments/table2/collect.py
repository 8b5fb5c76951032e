#!/usr/bin/env python3
"""Bring one device call's bundle into the committed results (dev machine, CPU).

    .venv/bin/python experiments/table2/collect.py <files_at>/x/<ID>.tar.xz [--into results/<model>-L<layer>]

``stage.sh run`` returns ``<ID>.tar.xz``: every core / eval JSON of the device's run folder so far, each SAE's
``train_summary.json``, the stage and calibration files. A fresh machine's run folder holds only that session's
records, so a plain ``tar -x`` would replace a committed ``stage_<ID>.json`` (one record per device call) with
the new session's calls alone. This script extracts into a temporary folder, then

* ``stage_*.json``: the committed calls followed by the bundle's calls not already committed (same record),
  ``gpu_s_total`` re-summed, ``complete`` (per eval) merged, the other keys from the bundle;
* ``calibration_*.json``: copied into the model-layer folder and into ``results/`` (``stage.sh run`` copies
  ``results/calibration_*.json`` onto a fresh machine, where ``T-*`` of standard / jumprelu need them);
* an SAE's eval JSON (``core/``, ``rdp_proxies/``, ``sparse_probing_sae_probes/``, ``absorption_first_letter/``):
  named from its own ``sae_lens_release_id`` and ``sae_lens_id`` (``run_stage.eval_json_name``), whatever its name
  in the bundle, so that two architectures' SAEs of one id never overwrite each other (bundles made before the
  architecture was part of the name are renamed); one without those ids is refused;
* ``absorption_probe/<model>/layer_<L>/``: the first-letter probe of SAEBench's absorption eval in its carried form
  (probe.pth, manifest.json; ``stage.sh run`` copies it onto a fresh machine, where absorption skips training the
  probe): refused unless the manifest's sha256 of each file matches the bundle's file;
* another model's files (``stage.sh run`` copies every committed calibration and LLM baseline onto the machine, so
  they come back in every bundle): a calibration of another model-layer's stage and
  ``probe_baselines/baseline_results_<other model>/`` are not written (listed as such);
* every other file: written when new or identical; a different existing file is replaced (an SAE's JSON is
  recomputed only when its SAE was retrained) and listed.

``--replicate <model>-L<layer>-<architecture>-r<N>``: the bundle is another training run of an architecture's
sweep (``report.py``'s replicates) and goes to ``results/replicates/<name>/``: its eval JSONs and train summaries
of that architecture and its stage records only (the calibrations and LLM baselines are the committed sweep's;
a carried absorption probe still goes to the model-layer folder, it belongs to the model). An eval JSON the
replicate already holds must have the same ``eval_result_metrics`` (a later session that retrained the same SAEs
in the deterministic mode, README section 6): then the committed file stays; different metrics refuse the whole
bundle (other SAEs: collect them as a new replicate). A train summary the replicate holds stays as it is.

The model-layer folder (``results/<model>-L<layer>``) is read from the bundle: the release ids of its SAEBench
JSONs (``table2-<model>-L<layer>-<architecture>``), else its stage ids (``C-<model>-<layer>-<architecture>``,
``T-...``, ``E-<model>-<layer>``); a bundle naming two model-layers, or none (give ``--into``), or another one than
``--into``, is refused. Nothing is written before the whole bundle has been read and checked (member names
relative, no links).
"""

from __future__ import annotations

import json
import sys
import tarfile
import tempfile
from pathlib import Path

from sae_rdp_plugin.io import atomic_write_bytes

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run_stage import ABSORPTION_CARRY_DIR as CARRY_DIR  # noqa: E402
from run_stage import EVAL_DIRS, eval_json_name  # noqa: E402
from run_stage import RELEASE_ID as _RELEASE  # noqa: E402
from run_stage import REPLICATE_NAME as _REPLICATE  # noqa: E402
from run_stage import STAGE_ID as _STAGE  # noqa: E402

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
    if isinstance(old.get("complete"), dict) and isinstance(new.get("complete"), dict):
        out["complete"] = {**old["complete"], **new["complete"]}  # per eval: one the bundle did not run stays
    out["gpu_s_total"] = round(sum(float(c.get("gpu_s", 0.0)) for c in calls), 2)
    return out


def _json(rel: Path, data: bytes, where: str = "the bundle's") -> object:
    """A JSON member of the bundle (or a committed file), parsed; ValueError naming it when malformed."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{where} {rel}: not JSON ({e})") from None


def _stage_record(rel: Path, data: bytes, where: str = "the bundle's") -> dict:
    """A stage_*.json record: a JSON object whose ``calls`` (if any) is a list of objects."""
    d = _json(rel, data, where)
    if not isinstance(d, dict):
        raise ValueError(f"{where} {rel}: not a JSON object (a stage record)")
    calls = d.get("calls", [])
    if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
        raise ValueError(f"{where} {rel}: 'calls' is not a list of objects")
    return d


def model_layer(files: dict[Path, bytes]) -> str | None:
    """``<model>-L<layer>`` of a bundle (relative path -> bytes), from its JSONs' release ids, else its stage ids;
    None when it names none; ValueError when it names several."""
    found = set()
    for rel, data in files.items():
        if rel.suffix != ".json":
            continue
        d = _json(rel, data)
        if rel.parent != Path(".") and isinstance(d, dict) and (m := _RELEASE.match(str(d.get("sae_lens_release_id")))):
            found.add(f"{m['model']}-L{m['layer']}")
    # stage records before calibrations: `stage.sh run` puts every committed calibration on the machine, so a
    # bundle of one model's stage can carry another model's calibration files
    for prefix in ("stage_", "calibration_"):
        if found:
            break
        for rel, data in files.items():
            if rel.parent == Path(".") and rel.name.startswith(prefix):
                d = _json(rel, data)
                if not isinstance(d, dict):
                    raise ValueError(f"the bundle's {rel}: not a JSON object")
                if m := _STAGE.match(str(d.get("stage", ""))):
                    found.add(f"{m['model']}-L{m['layer']}")
    if len(found) > 1:
        raise ValueError(f"the bundle spans model-layers {sorted(found)}")
    return found.pop() if found else None


def other_models_files(files: dict[Path, bytes], named: str | None) -> set[Path]:
    """The files of a bundle that belong to another model than ``named`` (``<model>-L<layer>``): calibration files
    of another model-layer's stage and sae-probes' LLM baselines of another model
    (``probe_baselines/baseline_results_<model>/``). ``stage.sh run`` copies every committed calibration and
    baseline onto the machine, so they come back in every bundle; they are the committed ones of their own folder
    and are not written into this one."""
    if named is None:
        return set()
    model = named.rsplit("-L", 1)[0]
    out = set()
    for rel, data in files.items():
        if rel.parent == Path(".") and rel.name.startswith("calibration_"):
            d = _json(rel, data)
            m = _STAGE.match(str(d.get("stage", ""))) if isinstance(d, dict) else None
            if m and f"{m['model']}-L{m['layer']}" != named:
                out.add(rel)
        elif len(rel.parts) > 1 and rel.parts[0] == "probe_baselines" and rel.parts[1].startswith("baseline_results_"):
            if rel.parts[1].removeprefix("baseline_results_") != model:
                out.add(rel)
    return out


def by_sae_ids(files: dict[Path, bytes]) -> dict[Path, bytes]:
    """``files`` with every eval JSON (``<eval dir>/<name>.json``) renamed to ``eval_json_name`` of its ids;
    ValueError for one without ids, or for two JSONs of one eval and one SAE."""
    out: dict[Path, bytes] = {}
    for rel, data in files.items():
        if len(rel.parts) == 2 and rel.parts[0] in EVAL_DIRS and rel.suffix == ".json":
            d = _json(rel, data)
            ids = (d.get("sae_lens_release_id"), d.get("sae_lens_id")) if isinstance(d, dict) else (None, None)
            if not all(isinstance(i, str) and i for i in ids):
                raise ValueError(f"{rel}: no sae_lens_release_id / sae_lens_id")
            rel = Path(rel.parts[0]) / eval_json_name(*ids)
            if rel in out:
                raise ValueError(f"two {rel.parts[0]} JSONs of one SAE ({ids[0]}, {ids[1]})")
        out[rel] = data
    return out


def check_carried_probes(files: dict[Path, bytes]) -> None:
    """ValueError unless each ``absorption_probe/**/manifest.json`` of the bundle lists files that the bundle holds
    next to it with the sha256 it gives (a probe that would be refused on the device is not committed)."""
    import hashlib

    for rel, data in files.items():
        if rel.parts[0] != CARRY_DIR or rel.name != "manifest.json":
            continue
        d = _json(rel, data)
        listed = d.get("files") if isinstance(d, dict) else None
        if not isinstance(listed, dict) or not listed:
            raise ValueError(f"the bundle's {rel}: no 'files' object")
        for name, sha in listed.items():
            f = rel.parent / str(name)
            if f not in files:
                raise ValueError(f"the bundle's {rel} lists {name}, which the bundle lacks")
            if hashlib.sha256(files[f]).hexdigest() != sha:
                raise ValueError(f"the bundle's {f}: sha256 differs from its manifest's")


# a train summary's fields that only the SAE itself decides (its held-out metrics and last loss): equal for the same
# SAE in two bundles, and for a deterministic retraining that reproduced it; timings differ run to run
SAME_SAE_FIELDS = ("final_loss", "heldout_fvu", "heldout_l0", "heldout_dead_fraction", "tokens", "steps")


def replicate_contents(files: dict[Path, bytes], name: str, named: str | None) -> dict[Path, bytes]:
    """What of a bundle (named by ids: :func:`by_sae_ids`) goes to the replicate ``name``: the eval JSONs of its
    release, the train summaries of its architecture, the stage records, a carried probe; ValueError when the
    name is malformed or the bundle is of another model-layer or holds neither that release's JSONs nor a carried
    probe."""
    m = _REPLICATE.match(name)
    if not m:
        raise ValueError(f"--replicate {name!r}: give <model>-L<layer>-<architecture>-r<N>")
    if named != m["ml"]:
        raise ValueError(f"--replicate {name}: the bundle holds {named or 'no model-layer'}'s results, not {m['ml']}'s")
    release = f"table2-{m['ml']}-{m['arch']}"
    out: dict[Path, bytes] = {}
    for rel, data in files.items():
        top = rel.parts[0]
        if len(rel.parts) == 2 and top in EVAL_DIRS and rel.suffix == ".json":
            if json.loads(data).get("sae_lens_release_id") == release:
                out[rel] = data
        elif top == "train_summaries" and rel.suffix == ".json":
            d = _json(rel, data)
            if isinstance(d, dict) and d.get("architecture") == m["arch"]:
                out[rel] = data
        elif (len(rel.parts) == 1 and rel.name.startswith("stage_")) or top == CARRY_DIR:
            out[rel] = data
    if not any(r.parts[0] in EVAL_DIRS or r.parts[0] == CARRY_DIR for r in out):
        # (a bundle of `--absorption-probe-only` holds a carried probe and its stage record, no eval JSON)
        raise ValueError(f"--replicate {name}: the bundle holds no eval JSON of {release} and no carried probe")
    return out


def collect(
    bundle: Path, into: Path | None = None, results: Path | None = None, replicate: str | None = None
) -> dict[str, list[str]]:
    """Extract ``bundle`` into ``into`` (default: ``results/<model>-L<layer>`` read from the bundle), or into
    ``results/replicates/<replicate>`` (``replicate``), as described in the module docstring; returns what was
    done. ``results``: default ``RESULTS`` (read at the call)."""
    results = RESULTS if results is None else results
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
        contents = {p.relative_to(tmp): p.read_bytes() for p in sorted(tmp.rglob("*")) if p.is_file()}
        if not contents:
            raise ValueError(f"{bundle}: empty bundle")
        check_carried_probes(contents)
        named = model_layer(contents)  # first: JSONs of two model-layers may share a name
        other = other_models_files(contents, named)
        contents = {rel: data for rel, data in contents.items() if rel not in other}
        skipped = sorted(str(rel) for rel in other)
        contents = by_sae_ids(contents)
        if replicate is not None:
            if into is not None:
                raise ValueError("give --into or --replicate, not both")
            contents = replicate_contents(contents, replicate, named)
            into = results / "replicates" / replicate
        if into is None:
            if named is None:
                raise ValueError(f"{bundle}: names no model-layer; give --into")
            into = results / named
        elif replicate is None and named is not None and into.name != named:
            raise ValueError(f"{bundle} holds {named} results, not {into.name} (--into)")
        for d in (into, *(into / rel.parent for rel in contents)):
            if d.exists() and not d.is_dir():
                raise ValueError(f"--into {into}: {d} exists and is not a folder")
        plan: list[tuple[Path, bytes, str]] = []
        for rel, data in contents.items():
            dest = into / rel
            if replicate is not None and rel.parts[0] == CARRY_DIR:
                dest = results / str(named) / rel  # the probe belongs to the model-layer, not to one run
            if replicate is not None and dest.is_file() and dest.read_bytes() != data:
                if rel.parts[0] == "train_summaries":
                    old = _json(rel, dest.read_bytes(), "the committed")
                    new_sum = _json(rel, data)
                    differ = [
                        k
                        for k in SAME_SAE_FIELDS
                        if not isinstance(old, dict) or not isinstance(new_sum, dict) or old.get(k) != new_sum.get(k)
                    ]
                    if differ:  # another training run's SAE (its core and absorption would join the wrong SAEs)
                        raise ValueError(
                            f"{rel}: its {', '.join(differ)} differ from the replicate's committed summary (other "
                            "SAEs: collect them as a new replicate)"
                        )
                    plan.append((dest, data, "kept"))  # the first session's (timings differ run to run)
                    continue
                if rel.parts[0] in EVAL_DIRS:
                    old = _json(rel, dest.read_bytes(), "the committed")
                    new_metrics = json.loads(data).get("eval_result_metrics")
                    if not isinstance(old, dict) or old.get("eval_result_metrics") != new_metrics:
                        raise ValueError(
                            f"{rel}: its metrics differ from the replicate's committed ones (other SAEs: collect "
                            "them as a new replicate)"
                        )
                    plan.append((dest, data, "same SAE"))
                    continue
            if rel.parent == Path(".") and rel.name.startswith("stage_") and rel.suffix == ".json":
                new = _stage_record(rel, data)
                if dest.is_file():
                    new = merge_stage(_stage_record(dest, dest.read_bytes(), "the committed"), new)
                data = (json.dumps(new, indent=1) + "\n").encode()
                plan.append((dest, data, "stage"))
                continue
            if rel.parent == Path(".") and rel.name.startswith("calibration_"):
                _json(rel, data)  # a broken calibration must not reach a fresh machine
                plan.append((results / rel.name, data, "calibration"))
            kind = "new" if not dest.exists() else ("same" if dest.read_bytes() == data else "replaced")
            plan.append((dest, data, kind))
    done: dict[str, list[str]] = {}
    for dest, data, kind in plan:
        if kind not in ("same", "same SAE", "kept"):
            atomic_write_bytes(dest, data)
        done.setdefault(kind, []).append(str(dest))
    if skipped:
        done["other model, not written"] = skipped
    return done


def main(argv: list[str] | None = None) -> int:
    from sae_rdp_plugin.cli import OneLineArgumentParser

    ap = OneLineArgumentParser(prog="collect.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path, help="<ID>.tar.xz from a stage.sh run call")
    ap.add_argument("--into", type=Path, default=None, help="the model-layer folder (default: read from the bundle)")
    ap.add_argument(
        "--replicate",
        default=None,
        help="<model>-L<layer>-<architecture>-r<N>: the bundle is another training run of that architecture's "
        "sweep, collected into results/replicates/<name>/",
    )
    args = ap.parse_args(argv)
    try:
        done = collect(args.bundle, args.into, replicate=args.replicate)
    except (ValueError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    for kind in ("stage", "calibration", "new", "replaced", "same", "same SAE", "kept", "other model, not written"):
        if done.get(kind):
            quiet = kind in ("new", "same", "same SAE", "kept")
            print(f"{kind}: {len(done[kind])}" + ("" if quiet else f" ({', '.join(done[kind])})"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
