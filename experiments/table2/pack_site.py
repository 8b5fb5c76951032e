#!/usr/bin/env python3
"""The device's missing wheels as one installed tree, compressed, for one device call (dev machine, CPU).

    .venv/bin/python experiments/table2/pack_site.py .whl .carry/site

``.whl`` (SAELens, TransformerLens, sparsify, SAEBench and what they need that the GPU image lacks: 44 MB of
wheels) and the working tree no longer fit one call's 64 MB, so they travelled in two halves (split_wheels.sh),
and a refused first half left the second on a fresh machine without it. Installed and xz-compressed they take
about 12 MiB: one call, ``stage.sh site .carry/site``, which checks the archive and unpacks it into ``/tmp/site``.

What it does: ``pip install --target`` of every wheel in SRC for the device's Python (CPython 3.12, manylinux
x86_64; no index, no dependencies resolved: SRC holds them all), then, in the archive, leaves out

* ``bin/``: the console scripts pip wrote, whose first line names this machine's interpreter;
* ``wandb/bin/``: wandb's service programs (wandb-core, wandb-symon and a parquet library, 50 MB of the 164 MB
  installed). wandb starts them only for a run that logs (``wandb.init`` outside mode "disabled"); every device
  script sets ``WANDB_MODE=disabled``, and a run that did log would stop with wandb's own error naming the
  missing program instead of logging nowhere.

Writes ``OUT/site.tar.xz``, ``OUT/SHA256SUMS`` (of the archive), ``OUT/WHEELS`` (the wheels it holds, with their
sha256) and the marker ``OUT/.pack_site``, all into a new folder that then replaces OUT (``io.staged_folder``); a
folder OUT this script did not write is refused, never replaced. Exit status 2 and one line ``error: ...`` on bad input.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from sae_rdp_plugin.cli import OneLineArgumentParser
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.io import check_out_folder, sha256_file, staged_folder

MARKER = ".pack_site"
# the device's interpreter and platform (the GPU image's python3; ECOSYSTEM.md)
PIP_TARGET = [
    "--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
]  # fmt: skip
# installed paths left out of the archive (module docstring): relative to the install target
LEFT_OUT = ("bin", "wandb/bin")


def check_args(src: Path, out: Path) -> list[Path]:
    """The wheels of ``src``, after checking that ``out`` may be written (absent, empty, or this script's:
    :func:`sae_rdp_plugin.io.check_out_folder`). Bad input: SaeRdpError."""
    if not src.is_dir():
        raise SaeRdpError(f"{src}: no such folder (experiments/table2/prepare.sh downloads the wheels into .whl)")
    wheels = sorted(src.glob("*.whl"))
    if not wheels:
        raise SaeRdpError(f"{src}: no .whl files")
    names = [w.name.split("-")[0].lower().replace("_", "-") for w in wheels]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # pip --target would install one over the other
        raise SaeRdpError(f"{src}: more than one wheel of {', '.join(twice)}")
    check_out_folder(out, lambda p: (p / MARKER).is_file(), flag="out")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise SaeRdpError(f"{out}: inside the wheels folder {src}")
    return wheels


def install(wheels: list[Path], target: Path) -> None:
    """``pip install --target`` of ``wheels`` for the device's Python, nothing fetched and nothing resolved."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile", "--target"]
    r = subprocess.run([*cmd, str(target), *PIP_TARGET, *map(str, wheels)], capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise SaeRdpError(f"pip could not install the wheels for the device's Python: {last}")


def archive(target: Path, dest: Path) -> None:
    """``dest``: a tar.xz of ``target``'s files in name order, without ``LEFT_OUT``, owner and times cleared."""

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    left_out = {target / p for p in LEFT_OUT}
    files = sorted(p for p in target.rglob("*") if p.is_file() and not any(d == p or d in p.parents for d in left_out))
    with tarfile.open(dest, "w:xz", preset=9) as tar:
        for f in files:
            tar.add(f, arcname=str(f.relative_to(target)), recursive=False, filter=clean)


def pack(src: Path, out: Path) -> Path:
    """Write ``out`` (module docstring) from the wheels of ``src``; returns the archive's path. An ``out`` written
    from the same wheels (its WHEELS: names and sha256) is kept as it is."""
    wheels = check_args(src, out)
    listing = "".join(f"{sha256_file(w)}  {w.name}\n" for w in wheels)
    kept = [out / MARKER, out / "WHEELS", out / "site.tar.xz"]
    if all(p.is_file() for p in kept) and (out / "WHEELS").read_text() == listing:
        return out / "site.tar.xz"
    # the installed tree apart (it is not carried); out replaced whole once its files are all written
    with tempfile.TemporaryDirectory(prefix="pack_site.") as tmp, staged_folder(out) as new:
        target = Path(tmp) / "site"
        install(wheels, target)
        archive(target, new / "site.tar.xz")
        (new / "SHA256SUMS").write_text(f"{sha256_file(new / 'site.tar.xz')}  site.tar.xz\n")
        (new / "WHEELS").write_text(listing)
        (new / MARKER).write_text("written by experiments/table2/pack_site.py\n")
    return out / "site.tar.xz"


def main(argv: list[str] | None = None) -> int:
    ap = OneLineArgumentParser(prog="pack_site.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="the folder of wheels (.whl)")
    ap.add_argument("out", type=Path, help="the folder to write (.carry/site)")
    args = ap.parse_args(argv)
    try:
        path = pack(args.src, args.out)
    except SaeRdpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: {path.stat().st_size / (1 << 20):.1f} MiB (stage.sh site {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
