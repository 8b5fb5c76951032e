"""``sae-rdp demo --out DIR``: the main job. Runs every capability's CPU-sized demonstration and
writes ``DIR/report.md`` with figures (PNG) and JSON results. No GPU, no network."""

from __future__ import annotations

import argparse
import importlib
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from sae_rdp_plugin.io import atomic_write_text

# Order of the report's sections; each module exposes demo_section(out: Path) -> str | None.
SECTIONS = ["theory", "sweep", "audit", "identifiability", "train"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on its embedded defaults (CPU, no network)")
    p.add_argument("--out", required=True, type=Path, help="output folder (report.md, figures, JSON)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=None, help="run only these sections")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        "# sae-rdp demo report\n",
        f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on "
        f"{platform.machine()} / Python {platform.python_version()}, CPU only.\n",
    ]
    for name in args.only or SECTIONS:
        mod = importlib.import_module(f"sae_rdp_plugin.commands.{name}")
        t0 = time.time()
        print(f"[demo] {name} ...", flush=True)
        md = mod.demo_section(out)
        if md:
            parts.append(md.rstrip() + f"\n\n_({name}: {time.time() - t0:.1f} s)_\n")
    atomic_write_text(out / "report.md", "\n".join(parts))
    print(f"[demo] wrote {out / 'report.md'}")
    return 0
