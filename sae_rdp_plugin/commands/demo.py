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


#: what the report starts with (how an earlier demo output is recognised)
REPORT_TITLE = "# sae-rdp demo report\n"
#: every name the demo writes directly in --out: the report, each section's folder, the train section's files
DEMO_NAMES = frozenset(["report.md", *SECTIONS, "wsae_run", "train_demo.json"])


def is_demo_output(p: Path) -> bool:
    """An earlier demo output: its report.md (the marker) and nothing but the names the demo writes, so no
    user's file is overwritten (sections write into their own folders, which they replace or update)."""
    from sae_rdp_plugin.io import folder_holds_only

    report = p / "report.md"
    try:
        ours = report.is_file() and not report.is_symlink() and report.read_text().startswith(REPORT_TITLE)
    except (OSError, UnicodeDecodeError):
        return False
    return ours and folder_holds_only(p, DEMO_NAMES.__contains__)


def run(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.io import check_out_folder

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    check_out_folder(out, is_demo_output)
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        REPORT_TITLE,
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
