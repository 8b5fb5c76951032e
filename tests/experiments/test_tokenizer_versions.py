"""experiments/table2/diagnostics/tokenizer_versions.py on two small tokenizers (one keeps words whole, one splits
them): counts against a hand count, the probe's pieces, bad input exits 2 before writing; and the committed JSONs
are what the docs quote (FINDINGS.md, the table2 README)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from script_loader import load_script

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lm"))
from test_tokenizer_check import PIECES, _fast  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
tv = load_script("tokenizer_versions", "experiments/table2/diagnostics/tokenizer_versions.py")


def _folders(tmp: Path) -> tuple[Path, Path]:
    a, b = tmp / "split", tmp / "whole"
    _fast(sorted(set(PIECES + ["\u2581w", "orld", "H", "ello"])), split_words=True).save_pretrained(str(a))
    _fast(PIECES, split_words=False).save_pretrained(str(b))
    return a, b


def test_counts_and_probe_pieces(tmp_path):
    a, b = _folders(tmp_path)
    text = tmp_path / "t.txt"
    line = "Hello world, the tokenizer. Hello world, the tokenizer."  # >= 40 characters
    text.write_text(f"{line}\nshort\n{line}\n")
    out = tmp_path / "r.json"
    argv = ["--model", "gemma3-270m", "--a", str(a), "--a-label", "split", "--b", str(b), "--b-label", "whole"]
    assert tv.main([*argv, "--text", str(text), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["lines"] == 2 and r["identical_lines"] == 0
    assert r["tokens_b"] == 2 * 12  # six whole pieces per sentence, two sentences per line
    assert r["probe_pieces_b"] == PIECES == r["probe_expected"] and r["probe_pieces_a"] != PIECES
    assert r["tokens_a"] > r["tokens_b"]


@pytest.mark.parametrize(
    "change, msg",
    [
        ({"--model": "tiny-gpt2"}, "no tokenizer probe"),
        ({"--a": "/nonexistent"}, "no tokenizer.json"),
        ({"--text": "/nonexistent.txt"}, "not a file"),
        ({"--lines": "0"}, "--lines must be >= 1"),
    ],
)
def test_bad_input_exits_2_with_one_error_line_and_writes_nothing(tmp_path, capsys, change, msg):
    a, b = _folders(tmp_path)
    text = tmp_path / "t.txt"
    text.write_text("Hello world, the tokenizer. Hello world, the tokenizer.\n")
    args = {"--model": "gemma3-270m", "--a": str(a), "--a-label": "x", "--b": str(b), "--b-label": "y",
            "--text": str(text), "--out": str(tmp_path / "r.json")} | change  # fmt: skip
    with pytest.raises(SystemExit) as e:
        tv.main([x for kv in args.items() for x in kv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0]
    assert not (tmp_path / "r.json").exists()


def test_committed_comparisons_are_what_the_docs_say():
    g = json.loads((ROOT / "experiments/table2/diagnostics/tokenizer_versions_gemma3-270m.json").read_text())
    s = json.loads((ROOT / "experiments/table2/diagnostics/tokenizer_versions_smollm2-135m.json").read_text())
    assert g["identical_lines"] == 0 and g["probe_pieces_b"] == g["probe_expected"] != g["probe_pieces_a"]
    assert s["identical_lines"] == s["lines"] and s["probe_pieces_a"] == s["probe_pieces_b"] == s["probe_expected"]
    readme = " ".join((ROOT / "experiments/table2/README.md").read_text().split())
    for q in (
        f"{g['identical_lines']} of {g['lines']:,} lines of {g['text']} get the same token ids",
        f"{g['tokens_a']:,} tokens against {g['tokens_b']:,} ({g['tokens_a'] / g['tokens_b']:.2f}x)",
        f"{len(g['probe_pieces_a'])} pieces instead of {len(g['probe_pieces_b'])}",
        f"SmolLM2-135M's tokenizer tokenizes all {s['lines']:,} lines identically under both versions",
    ):
        assert q in readme, q


def test_argument_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        tv.main(["--model", "gemma3-270m"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and "--out" in err[0]
