"""Time to load an offline model's Hugging Face model (benchmarks/e2e): transformers' GGUF route against the
dequantized-model cache of :func:`sae_rdp_plugin.lm.models.dequantized_hf`.

Every e2e row and every table2 device call loads Gemma-3-270M from its GGUF. transformers' GGUF route parses
the file's whole metadata (its 262k-token vocabulary) for the config and again for the weights, then
dequantizes every tensor; the cache keeps the float32 model as a safetensors folder after the first load.

Rows, each in a fresh process (no warm file cache of Python objects), for a GGUF cut to ``--n-layers`` blocks
(the cut itself is made before timing):

* ``ggufreader_block_count``, ``gguf_block_count``: the full GGUF's block count (``hf_model`` asks it on every
  load to decide on the cut) by ``gguf.GGUFReader`` (how it was read before) and by our header-only read;
* ``transformers_gguf``: ``load_hf_from_gguf`` (tokenizer passed in, so not timed), the route before the cache;
* ``cache_first``: ``dequantized_hf`` with an empty cache (the GGUF route plus writing the folder);
* ``cache_hit``: ``dequantized_hf`` again (reads the folder).

Wall seconds (``time.perf_counter``), ``--repeats`` processes per row, median. Prints a table, writes
``OUT/model_load.json``. Usage: python benchmarks/e2e/bench_model_load.py [--gguf PATH] [--n-layers 7]
[--repeats 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROWS = ("ggufreader_block_count", "gguf_block_count", "transformers_gguf", "cache_first", "cache_hit")

CHILD = """
import json, sys, time
from pathlib import Path
from sae_rdp_plugin.lm import models as M
row, gguf = sys.argv[1], Path(sys.argv[2])
t = time.perf_counter()
if row == "ggufreader_block_count":
    import gguf as G
    r = G.GGUFReader(sys.argv[3])
    int(r.fields[r.fields["general.architecture"].contents() + ".block_count"].contents())
elif row == "gguf_block_count":
    M.gguf_block_count(sys.argv[3])
elif row == "transformers_gguf":
    M.load_hf_from_gguf(gguf, tokenizer=object())
else:
    M.dequantized_hf(gguf)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def run_child(row: str, gguf: Path, full: Path, cache: Path) -> float:
    env = {**os.environ, "SAE_RDP_MODEL_CACHE": str(cache)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, row, str(gguf), str(full)], env=env, capture_output=True, text=True, check=True
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: the gemma3-270m packages' file)")
    ap.add_argument("--n-layers", type=int, default=7, help="blocks kept (the e2e bench's 7; 0: the whole model)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/e2e/model_load"))
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.n_layers < 0:
        print("error: --repeats must be >= 1 and --n-layers >= 0", file=sys.stderr)
        return 2
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.io import atomic_write_json
    from sae_rdp_plugin.lm import models as M

    with tempfile.TemporaryDirectory() as tmp:
        try:
            src = M.gguf_path("gemma3-270m", args.gguf)
            gguf = src
            if args.n_layers:
                gguf = Path(tmp) / f"{src.stem}.first{args.n_layers}.gguf"
                M.truncate_gguf(src, gguf, args.n_layers)
        except (SaeRdpError, OSError) as exc:
            print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        times: dict[str, list[float]] = {r: [] for r in ROWS}
        for _ in range(args.repeats):
            cache = Path(tempfile.mkdtemp(dir=tmp))
            for r in ROWS:  # cache_first fills the cache that cache_hit reads
                times[r].append(run_child(r, gguf, src, cache))
    rows = [{"row": r, "median_s": statistics.median(v), "seconds": v} for r, v in times.items()]
    res = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "gguf": src.name,
        "n_layers": args.n_layers or None,
        "repeats": args.repeats,
        "rows": rows,
    }
    atomic_write_json(args.out / "model_load.json", res)
    print(f"{res['date_utc']} UTC, {res['machine']}, {src.name}, blocks {args.n_layers or 'all'}")
    for r in rows:
        print(f"{r['row']:<20} {r['median_s']:8.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
