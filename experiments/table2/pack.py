#!/usr/bin/env python3
"""Pack one model's GGUF and its corpus shards into device calls for ``stage.sh put`` (dev machine, CPU).

    .venv/bin/python experiments/table2/pack.py --model gemma3-270m --shards .carry/corpus_table2_gemma3/shards

Writes ``.carry/t2/<model>/call<N>/`` (the shards folder's files under ``shards/``, the GGUF in pieces
``<name>.pieceNN``, first fit in that order) and ``.carry/t2/<model>/calls.json``, and prints the device calls.
Each call carries the working tree too (64 MB in all): the tree is measured now (``git ls-files``) and each call
is filled to 64 MB minus the tree minus ``--margin-mib``. The last call holds ``GGUF`` (the file name and its
sha256), which ``stage.sh run`` uses to assemble and check the model.

The tree grows between sessions (results land), and the run tool refuses a call over 64 MB before it runs, after
the device machine has started. So before a session:

    .venv/bin/python experiments/table2/pack.py --model gemma3-270m --check

measures each packed call, and each wheel folder the session carries (``WHEEL_FOLDERS``), beside today's tree and
exits 1 (naming them) when one no longer fits: re-pack or re-split then.

The first call also holds ``tokenizer.tar.xz``: the model's tokenizer as this machine converts it
(``lm.models.load_tokenizer``, which checks it splits a probe sentence into whole vocabulary pieces).
``stage.sh`` unpacks it on the device and points ``SAE_RDP_TOKENIZER_DIR`` at it, because the GPU image's
transformers (5.17) converts Gemma's GGUF tokenizer into one that splits words.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from sae_rdp_plugin.io import sha256_file

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def tree_bytes() -> int:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in out if f and (ROOT / f.decode()).is_file())


def tokenizer_archive(model: str, dest: Path, gguf: Path | None = None) -> Path:
    """``dest``: a tar.xz of the folder ``tokenizer/`` holding ``model``'s checked tokenizer (save_pretrained;
    converted from ``gguf`` when given and not cached yet)."""
    import tarfile
    import tempfile

    from sae_rdp_plugin.lm.models import load_tokenizer

    tok = load_tokenizer(model, gguf)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(str(Path(tmp) / "tokenizer"))
        part = dest.with_name(dest.name + ".part")
        with tarfile.open(part, "w:xz") as tar:
            tar.add(Path(tmp) / "tokenizer", arcname="tokenizer")
        part.replace(dest)
    return dest


# the run tool's limit per call, the working tree plus what the call carries: "64 MiB" in its notes, but it refused a
# call of 62.4 MiB (65.5 MB) and took ones of 63.2 MB, so the decimal 64 MB is the safe reading
LIMIT = 64_000_000


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# the wheel folders a table2 session carries beside the puts, one call each: pack_site.py's (stage.sh site) and the
# split_wheels.sh halves (stage.sh wheels HALF, probes.sh put HALF)
WHEEL_FOLDERS = (".carry/site", ".carry/whl_part1", ".carry/whl_part2", ".carry/probes_part1", ".carry/probes_part2")


def carried_folders(pack_dir: Path) -> list[str]:
    """The folders a session carries, one per call: the put calls of ``pack_dir/calls.json``, then those of
    ``WHEEL_FOLDERS`` that exist. ValueError when calls.json is not pack.py's or names a folder that is gone (a missing
    folder would measure 0 bytes and pass)."""
    try:
        puts = [c["carry"][0] for c in json.loads((pack_dir / "calls.json").read_text())]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"{pack_dir / 'calls.json'} is not a pack.py call list ({exc}): re-pack") from exc
    if not puts:
        raise ValueError(f"{pack_dir / 'calls.json'} lists no put call: re-pack")
    gone = [p for p in puts if not (ROOT / p).is_dir()]
    if gone:
        raise ValueError(f"{', '.join(gone)}: listed in {pack_dir / 'calls.json'} but not there: re-pack")
    return puts + [h for h in WHEEL_FOLDERS if (ROOT / h).is_dir()]


def overfull(sizes: dict[str, int], tree: int, limit: int = LIMIT) -> list[tuple[str, int]]:
    """The folders of ``sizes`` (folder -> bytes) whose bytes plus ``tree`` exceed ``limit``: (folder, bytes over)."""
    return [(rel, size + tree - limit) for rel, size in sizes.items() if size + tree > limit]


def check(pack_dir: Path) -> int:
    """Exit status of ``--check``: 0 when every carried folder still fits beside today's tree, 1 when one does not."""
    tree = tree_bytes()
    sizes = {f: folder_bytes(ROOT / f) for f in carried_folders(pack_dir)}
    biggest = max(sizes.values())
    over = overfull(sizes, tree, LIMIT)
    print(
        f"tree {tree / MIB:.1f} MiB; {len(sizes)} carried folders, the largest {biggest / MIB:.1f} MiB; room left "
        f"{(LIMIT - tree - biggest) / MIB:.1f} MiB"
    )
    if over:
        names = ", ".join(f"{rel} (+{b / MIB:.1f} MiB)" for rel, b in over)
        print(
            f"error: over 64 MB with today's tree: {names}; re-pack (pack.py without --check; the wheel and probe "
            "halves: prepare.sh's split_wheels.sh lines)",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, choices=["gemma3-270m", "smollm2-135m"])
    ap.add_argument("--shards", type=Path, help="the corpus's travel shards (shards.json); required to pack")
    ap.add_argument("--check", action="store_true", help="only check that the packed calls fit beside today's tree")
    ap.add_argument("--gguf", type=Path, default=None, help="default: from the installed PyPI packages")
    ap.add_argument("--out", type=Path, default=ROOT / ".carry" / "t2")
    ap.add_argument(
        "--margin-mib",
        type=float,
        default=12.0,
        help="room left per call for the tree to grow (results land between sessions: 2-5 MiB a session)",
    )
    args = ap.parse_args(argv)
    if args.check:
        pack_dir = args.out / args.model
        if not (pack_dir / "calls.json").is_file():
            print(f"error: no calls.json in {pack_dir}: nothing packed for {args.model}", file=sys.stderr)
            return 2
        try:
            return check(pack_dir)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.shards is None:
        print("error: --shards is required to pack (or pass --check)", file=sys.stderr)
        return 2
    if not (args.shards / "shards.json").is_file():
        print(f"error: no shards.json in {args.shards}", file=sys.stderr)
        return 2
    from sae_rdp_plugin.lm.models import gguf_path

    gguf = gguf_path(args.model, args.gguf)
    budget = LIMIT - int(args.margin_mib * MIB) - tree_bytes()
    if budget < 8 * MIB:
        print(f"error: the working tree leaves {budget / MIB:.1f} MiB per call", file=sys.stderr)
        return 2
    dest = args.out / args.model
    if dest.exists():
        if not (dest / "calls.json").is_file():
            print(f"error: {dest} exists and was not written by pack.py", file=sys.stderr)
            return 2
        shutil.rmtree(dest)  # an earlier run of this script
    items: list[tuple[str, Path | None, int, int]] = []  # (name in the call, source, offset, size)
    tok_archive = tokenizer_archive(args.model, args.out / f".{args.model}-tokenizer.tar.xz", args.gguf)
    items.append(("tokenizer.tar.xz", tok_archive, 0, tok_archive.stat().st_size))
    for f in sorted(args.shards.iterdir()):
        if f.is_file():
            items.append((f"shards/{f.name}", f, 0, f.stat().st_size))
    size = gguf.stat().st_size
    piece = budget // 2
    for i, off in enumerate(range(0, size, piece)):
        items.append((f"{gguf.name}.piece{i:02d}", gguf, off, min(piece, size - off)))
    calls: list[list[tuple[str, Path | None, int, int]]] = [[]]
    used = 0
    for it in items:
        if used + it[3] > budget and calls[-1]:
            calls.append([])
            used = 0
        calls[-1].append(it)
        used += it[3]
    for n, call in enumerate(calls):
        cdir = dest / f"call{n}"
        for name, src, off, sz in call:
            p = cdir / name
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as f:
                f.seek(off)
                p.write_bytes(f.read(sz))
    (dest / f"call{len(calls) - 1}" / "GGUF").write_text(f"{gguf.name} {sha256_file(gguf)}\n")
    rel = dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest
    plan = [
        {"command": f"bash experiments/table2/stage.sh put {rel}/call{n}", "carry": [f"{rel}/call{n}"]}
        for n in range(len(calls))
    ]
    (dest / "calls.json").write_text(json.dumps(plan, indent=1) + "\n")
    for c in plan:
        print(json.dumps(c))
    return 0


if __name__ == "__main__":
    sys.exit(main())
