#!/usr/bin/env python3
"""Pack Gemma-3-270M, the tokenized corpus and the wheels into device calls of at most 64 MB each.

Run on the dev machine (CPU) right before the device calls:

    python experiments/gemma3_270m/prepare.py       # writes .carry/g3/call*/ and .carry/g3/plan.json

Each device call carries the whole working tree (tracked + untracked non-ignored files) plus its
carry paths, 64 MB in all. This script measures the working tree now, sizes the model pieces to fill
each call (minus ``--margin-mib``), and prints the exact calls (command + carry list). Call 0 carries
``.whl`` + the corpus + a first model piece, calls 1..N-1 one piece each; the last one also assembles
the GGUF (sha256-checked), converts it to a HookedTransformer and saves it under /tmp/g3. Then the
``probes`` call carries the sae-probes / SAEBench / zstandard wheels (``--probes-whl``, copied to
``.carry/g3/call_probes``) for SAEBench's sparse_probing_sae_probes step (skipped with
``--no-probes``), and the run call carries nothing extra. All calls must be made back to back (files
on the device survive only between back-to-back calls).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: paths are relative to it, git measures its tree
STAGE = "experiments/gemma3_270m/stage.sh"  # run on the device from the repository root


sys.path.insert(0, str(ROOT / "experiments" / "table2"))
from pack import LIMIT, MIB, folder_bytes, tree_bytes  # noqa: E402  (table2's stager's measures and per-call limit)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--whl", default=".whl", help="wheel folder (carried by call 0)")
    ap.add_argument(
        "--corpus", default=".carry/corpus_gemma3", help="`sae-rdp corpus build` output (Gemma tokenizer, context 1024)"
    )
    ap.add_argument(
        "--gguf", default=None, help="the full Gemma-3-270M GGUF (default: assembled from the PyPI packages)"
    )
    ap.add_argument("--out", default=".carry/g3")
    ap.add_argument(
        "--probes-whl",
        default=".carry/probes_whl",
        help="folder with the sae-probes, sae-bench and zstandard cp312 wheels (experiments/gemma3_270m/README.md)",
    )
    ap.add_argument("--no-probes", action="store_true", help="no probes call (the run then needs --probe-datasets 0)")
    ap.add_argument("--run-args", default="", help="extra arguments for the run call (e.g. --skip-sweep)")
    ap.add_argument(
        "--limit-mib",
        type=float,
        default=LIMIT / MIB,
        help="per call, the working tree included (default: 64 MB in MiB)",
    )
    ap.add_argument("--margin-mib", type=float, default=2.0, help="slack for files that appear before the calls")
    args = ap.parse_args(argv)

    from sae_rdp_plugin.lm import models as M

    gguf = Path(args.gguf) if args.gguf else M.gguf_path("gemma3-270m")
    whl, corpus, out = ROOT / args.whl, ROOT / args.corpus, ROOT / args.out
    for need in (whl, corpus / "tokens.npz", corpus / "manifest.json"):
        if not need.exists():
            raise SystemExit(f"missing {need} (see experiments/gemma3_270m/README.md)")
    tree = tree_bytes()
    cap = int((args.limit_mib - args.margin_mib) * MIB) - tree
    whl_b = folder_bytes(whl)
    corp_b = (corpus / "tokens.npz").stat().st_size + (corpus / "manifest.json").stat().st_size
    first = cap - whl_b - corp_b
    if first < 0:
        raise SystemExit(
            f"call 0 does not fit: tree {tree / MIB:.1f} + wheels {whl_b / MIB:.1f} + corpus {corp_b / MIB:.1f} MiB > "
            f"{args.limit_mib - args.margin_mib} MiB"
        )
    if cap < 8 * MIB:
        raise SystemExit(f"working tree is {tree / MIB:.1f} MiB: too little room left per call")
    probes = None if args.no_probes else ROOT / args.probes_whl
    if probes is not None:
        wheels = sorted(probes.glob("*.whl"))
        names = {w.name.split("-")[0].lower() for w in wheels}
        if not {"sae_probes", "sae_bench", "zstandard"} <= names:
            raise SystemExit(
                f"{probes} must hold the sae_probes, sae_bench and zstandard wheels (found {sorted(names)}): "
                "see experiments/gemma3_270m/README.md"
            )
        probes_b = sum(w.stat().st_size for w in wheels)
        if probes_b > cap:
            raise SystemExit(
                f"probes call does not fit: tree {tree / MIB:.1f} + wheels {probes_b / MIB:.1f} MiB > "
                f"{args.limit_mib - args.margin_mib} MiB"
            )
    if out.exists():
        shutil.rmtree(out)
    size = gguf.stat().st_size
    sizes = []
    if first >= MIB:
        sizes.append(first)
    while sum(sizes) < size:
        sizes.append(min(cap, size - sum(sizes)))
    calls = []
    with open(gguf, "rb") as f:
        for i, n in enumerate(sizes):
            c = 0 if (first >= MIB and i == 0) else (i if first >= MIB else i + 1)
            d = out / f"call{c}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{gguf.name}.piece{i:02d}").write_bytes(f.read(n))
    n_calls = len(sizes) if first >= MIB else len(sizes) + 1
    (out / "call0").mkdir(parents=True, exist_ok=True)
    (out / "call0" / "corpus").mkdir(exist_ok=True)
    for fn in ("tokens.npz", "manifest.json"):
        shutil.copy(corpus / fn, out / "call0" / "corpus" / fn)
    (out / f"call{n_calls - 1}" / "LAST").write_text(f"{len(sizes)}\n")
    for c in range(n_calls):
        carry = ([args.whl] if c == 0 else []) + [f"{args.out}/call{c}"]
        payload = folder_bytes(out / f"call{c}") + (whl_b if c == 0 else 0)
        calls.append(
            {
                "command": f"bash {STAGE} {c}",
                "carry": carry,
                "payload_mib": round(payload / MIB, 2),
                "total_with_tree_mib": round((payload + tree) / MIB, 2),
            }
        )
    if probes is not None:
        pdir = out / "call_probes"
        pdir.mkdir(parents=True)
        for w in wheels:
            shutil.copy(w, pdir / w.name)
        calls.append(
            {
                "command": f"bash {STAGE} probes",
                "carry": [f"{args.out}/call_probes"],
                "payload_mib": round(probes_b / MIB, 2),
                "total_with_tree_mib": round((probes_b + tree) / MIB, 2),
            }
        )
    run_cmd = f"bash {STAGE} run" + (f" {args.run_args}" if args.run_args else "")
    if probes is None and "--probe-datasets" not in args.run_args:
        run_cmd += " --probe-datasets 0"
    calls.append({"command": run_cmd, "carry": [], "payload_mib": 0, "total_with_tree_mib": round(tree / MIB, 2)})
    plan = {
        "gguf": gguf.name,
        "gguf_bytes": size,
        "pieces": len(sizes),
        "tree_mib": round(tree / MIB, 2),
        "calls": calls,
    }
    (out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    print(f"working tree {tree / MIB:.1f} MiB; {len(sizes)} model pieces; {len(calls)} device calls, back to back:")
    for c in calls:
        print(f"  run(command={c['command']!r}, carry={json.dumps(c['carry'])})   # {c['total_with_tree_mib']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
