"""GPT-2 small, Pythia-70M and Pythia-160M with no network: their published configs (checked against the
references installed with transformers, TransformerLens, SAELens and SAEBench), random-weight models of those
architectures at a small width, and every LM-facing path on them: TransformerLens hook activations against
transformers' hidden states of the same weights, the activation pipeline, the activation cache, and real-weight
loading from a local folder or GGUF file through the code that also serves the hub."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.lm import models as M

NAMES = ["gpt2", "pythia-70m", "pythia-160m-deduped"]
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "saebench"


def perturbed(hf, seed: int = 1):
    """Every parameter moved off its initial value (a random init leaves LayerNorm at w = 1, b = 0 and the
    biases at 0, which would hide a norm or bias that is dropped or misplaced)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return hf.eval()


@pytest.fixture(scope="module")
def small_hf():
    return {name: perturbed(M.random_hf_model(name, **M.SMALL)) for name in NAMES}


def ids(vocab: int, rows: int = 3, T: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, vocab, (rows, T), generator=torch.Generator().manual_seed(seed))


def no_hub(monkeypatch):
    """Make every hub entry point fail loudly."""
    import transformers
    from transformer_lens import HookedTransformer

    def refuse(*a, **k):
        raise AssertionError(f"hub touched: {a[:1]}")

    for cls in (transformers.AutoConfig, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", refuse)
    monkeypatch.setattr(HookedTransformer, "from_pretrained", refuse)


# ------------------------------------------------------------------------------- published configs


def test_published_configs_agree_with_installed_references():
    """GPT-2: transformers' GPT2Config defaults are documented as openai-community/gpt2's configuration.
    GPT-2 / Pythia-70M depth: SAELens's pretrained SAE releases for them (gpt2-small-res-jb: blocks 0..11;
    pythia-70m-deduped-res-sm: blocks 0..5). Pythia-70M width: SAEBench's MODEL_CONFIGS (d_model 512).
    Pythia-160M has no installed reference: its numbers are those of the hub config.json."""
    import ast
    import importlib.util

    import yaml
    from transformers import GPT2Config

    ours, ref = M.published_hf_config("gpt2"), GPT2Config()
    for f in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function"):
        assert getattr(ours, f) == getattr(ref, f), f
    for f in ("layer_norm_epsilon", "bos_token_id", "eos_token_id", "tie_word_embeddings", "scale_attn_weights"):
        assert getattr(ours, f) == getattr(ref, f), f

    def package_dir(name: str) -> Path:  # found, not imported (both import slowly)
        return Path(importlib.util.find_spec(name).submodule_search_locations[0])

    text = (package_dir("sae_lens") / "pretrained_saes.yaml").read_text()
    releases = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    for release, name in (("gpt2-small-res-jb", "gpt2-small"), ("pythia-70m-deduped-res-sm", "pythia-70m-deduped")):
        assert releases[release]["model"] == name
        blocks = {int(s["id"].split(".")[1]) for s in releases[release]["saes"]}
        assert max(blocks) + 1 == M.published_arch(name)[0].n_layers
    tree = ast.parse((package_dir("sae_bench") / "custom_saes" / "run_all_evals_custom_saes.py").read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "MODEL_CONFIGS"]
    model_configs = ast.literal_eval(node.value)
    assert model_configs["pythia-70m-deduped"]["d_model"] == M.published_hf_config("pythia-70m").hidden_size


def test_pythia_70m_width_in_the_held_saebench_data():
    """The 2024 SAEBench Pythia-70M sweep records the SAEs' activation_dim and the model they read."""
    f = SHARED / "SAE_Bench_Template_sae_bench_data_2024-09" / "sae_bench_pythia70m_sweep_topk_ctx128_0730_data.json"
    if not f.is_file():
        pytest.skip("../shared SAEBench data not present")
    trainers = [v["trainer"] for v in json.loads(f.read_text())["sae_config_dictionary_learning"].values()]
    assert {(t["lm_name"], t["activation_dim"]) for t in trainers} == {("EleutherAI/pythia-70m-deduped", 512)}
    arch, repo = M.published_arch("EleutherAI/pythia-70m-deduped")
    assert (arch.d_model, repo) == (512, "EleutherAI/pythia-70m-deduped")


@pytest.mark.parametrize("size", [{}, M.SMALL], ids=["published", "small"])
@pytest.mark.parametrize("name", NAMES)
def test_tl_config_equals_transformer_lens_conversion(name, size, tmp_path):
    """published_tl_config == TransformerLens's own get_pretrained_model_config of a folder holding the
    published config.json (TransformerLens reads a local folder offline), field by field."""
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    M.published_hf_config(name, **size).save_pretrained(tmp_path)
    ref = get_pretrained_model_config(str(tmp_path))
    ours = M.published_tl_config(name, **size)
    differ = {k for k in vars(ref) if getattr(ours, k) != getattr(ref, k)}
    assert differ == {"model_name", "tokenizer_name"}  # TransformerLens names both after the folder
    assert ours.tokenizer_name is None  # a tokenizer name would send TransformerLens to the hub


def test_names_users_give_resolve_to_their_architecture():
    """The model names of SAELens's releases and SAEBench's configs for these families, and the hub ids."""
    expect = {
        "gpt2": ("gpt2", "gpt2"),
        "gpt2-small": ("gpt2", "gpt2"),
        "openai-community/gpt2": ("gpt2", "openai-community/gpt2"),
        "pythia-70m-deduped": ("pythia-70m", "EleutherAI/pythia-70m-deduped"),
        "EleutherAI/pythia-160m-deduped": ("pythia-160m", "EleutherAI/pythia-160m-deduped"),
        "eleutherai/pythia-160m": ("pythia-160m", "EleutherAI/pythia-160m"),
    }
    for name, (arch, repo) in expect.items():
        hit = M.published_arch(name)
        assert hit is not None and (hit[0].key, hit[1]) == (arch, repo), name
    assert M.published_arch("gpt2-medium") is None and M.published_arch("pythia-410m") is None
    with pytest.raises(SaeRdpError, match="multiple of n_heads"):
        M.published_hf_config("gpt2", d_model=64, n_heads=5)
    with pytest.raises(SaeRdpError, match=r"n_layers must be in 1\.\.6"):
        M.published_hf_config("pythia-70m", n_layers=7)


def test_random_models_build_without_the_hub(monkeypatch):
    no_hub(monkeypatch)
    for name in NAMES:
        tl = M.random_model_like(name, **M.SMALL, seed=3)
        assert (tl.cfg.n_layers, tl.cfg.d_model, tl.cfg.n_heads, tl.tokenizer) == (2, 64, 4, None)
    hf, tok = M.hf_model("pythia-70m-deduped", random_init=True, n_layers=1, dtype="float32")  # full width
    assert tok is None and hf.get_input_embeddings().weight.shape == (50304, 512) and hf.config.num_hidden_layers == 1
    a = M.random_model_like("pythia-70m", **M.SMALL, seed=3)
    b = M.random_model_like("pythia-70m", **M.SMALL, seed=3)
    torch.testing.assert_close(a.blocks[0].attn.W_Q, b.blocks[0].attn.W_Q)
    with pytest.raises(SaeRdpError, match="resize only"):
        M.random_model_like("gemma-3-270m", d_model=64)


# ------------------------------------------------------------------------------- activations


@pytest.mark.parametrize("name", NAMES)
def test_hook_activations_match_transformers_hidden_states(small_hf, name):
    """TransformerLens (weights converted from the transformers model) against transformers itself:
    blocks.0.hook_resid_pre = hidden_states[0], blocks.L.hook_resid_post = hidden_states[L+1] before the last
    block, ln_final(last resid_post) = hidden_states[-1] (transformers applies the final norm there); logits
    too; and lm.activations.hook_activations, which stops after the hooked block, returns the same."""
    from sae_rdp_plugin.lm.activations import hook_activations

    hf = small_hf[name]
    tl = M.hooked_from_hf(name, hf, None)
    x = ids(hf.config.vocab_size)
    with torch.no_grad():
        out = hf(x, output_hidden_states=True)
        logits, cache = tl.run_with_cache(x)
    hs = out.hidden_states
    scale = max(float(h.abs().max()) for h in hs)
    tol = dict(atol=1e-5 * scale, rtol=0)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], hs[0], **tol)
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], hs[1], **tol)
    torch.testing.assert_close(tl.ln_final(cache["blocks.1.hook_resid_post"]), hs[2], **tol)
    torch.testing.assert_close(logits, out.logits, atol=1e-5 * float(out.logits.abs().max()), rtol=0)
    torch.testing.assert_close(hook_activations(tl, x, "blocks.0.hook_resid_post"), hs[1], **tol)


@pytest.mark.parametrize("name", ["gpt2", "pythia-160m-deduped"])
def test_activation_pipeline_matches_transformer_lens(small_hf, name):
    """The activation pipeline (truncated transformers forward) yields, at non-BOS positions, the rows of
    TransformerLens's run_with_cache on the same weights."""
    from sae_rdp_plugin.lm.pipeline import ActivationPipeline, PipelineConfig

    hf = small_hf[name]
    bos = hf.config.bos_token_id
    tokens = ids(hf.config.vocab_size, rows=4, T=8).numpy()
    tokens[:, 0] = bos
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    cfg = PipelineConfig(hooks=hooks, context_size=8, model_dtype="float32", batch_size=28, buffer_tokens=56)
    got = ActivationPipeline(hf, tokens, cfg, bos_token_id=bos, pad_token_id=None).activations(tokens)
    _, cache = M.hooked_from_hf(name, hf, None).run_with_cache(torch.as_tensor(tokens, dtype=torch.long))
    for h in hooks:
        ref = cache[h]
        torch.testing.assert_close(got[h], ref, atol=1e-5 * float(ref.abs().max()), rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "pythia-70m"])
def test_activation_cache_on_random_architectures(name, tmp_path):
    """cache_activations on a random model of the architecture: the stored rows are run_with_cache's at the
    positions that are not the family's BOS (GPT-2 50256, Pythia 0)."""
    from sae_rdp_plugin.lm.activations import cache_activations, load_all

    tl = M.random_model_like(name, **M.SMALL, seed=1)
    bos = M.published_hf_config(name).bos_token_id
    tokens = ids(tl.cfg.d_vocab - 1, rows=5, T=8, seed=2).numpy().astype(np.int32)
    tokens[:, 0] = bos
    tokens[1, 4] = bos
    hook = "blocks.1.hook_resid_post"
    m = cache_activations(tl, tokens, hook, tmp_path / "c", rows_per_shard=2, dtype="float32", bos_token_id=bos)
    assert m["complete"] and m["total_tokens"] == tokens.size - 6 and m["d_in"] == 64
    ref = tl.run_with_cache(torch.as_tensor(tokens, dtype=torch.long))[1][hook]
    keep = torch.as_tensor(tokens != bos)
    torch.testing.assert_close(load_all(tmp_path / "c"), ref[keep], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- real weights: one code path


@pytest.mark.parametrize("name", ["gpt2", "pythia-160m-deduped"])
def test_local_folder_loads_through_from_pretrained(small_hf, name, tmp_path, monkeypatch):
    """A model saved with save_pretrained is read back by path (local files only): load_model's
    HookedTransformer and hf_model's transformers model give the saved model's hidden states; no tokenizer
    files -> no tokenizer; n_layers reads the first blocks."""
    import transformers

    from sae_rdp_plugin.lm.pipeline import base_model_parts

    hf = small_hf[name]
    hf.save_pretrained(tmp_path)
    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, src, *a, **k):
        seen.append((src, k.get("local_files_only")))
        return real(cls, src, *a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    x = ids(hf.config.vocab_size)
    with torch.no_grad():
        hs = hf(x, output_hidden_states=True).hidden_states
    tl = M.load_model(name, path=tmp_path)
    assert tl.tokenizer is None and tl.cfg.n_layers == 2
    _, cache = tl.run_with_cache(x)
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], hs[1], rtol=0, atol=1e-5 * float(hs[1].abs().max()))
    one, tok = M.hf_model(name, path=tmp_path, n_layers=1, dtype="float32")
    assert tok is None and one.config.num_hidden_layers == 1
    base, _, norm = base_model_parts(hf)
    with torch.no_grad():  # the last hidden state of the 1-block model is after the final norm
        last = one(x, output_hidden_states=True).hidden_states[1]
        torch.testing.assert_close(last, getattr(base, norm)(hs[1]), rtol=0, atol=1e-5)
    assert seen == [(str(tmp_path), True), (str(tmp_path), True)]


def test_local_path_errors_are_one_line(small_hf, tmp_path):
    small_hf["gpt2"].save_pretrained(tmp_path / "g")
    cases = [
        (lambda: M.load_model("pythia-70m", path=tmp_path / "g"), "holds a gpt2 model, not gpt_neox"),
        (lambda: M.load_model("gpt2", path=tmp_path / "none"), "no model at"),
        (lambda: M.load_model("gemma-2-2b", path=tmp_path / "g"), "not for 'gemma-2-2b'"),
    ]
    for call, match in cases:
        with pytest.raises(SaeRdpError, match=match) as e:
            call()
        assert "\n" not in str(e.value)


def _gguf_from_gpt2(hf, path: Path) -> None:
    """Write a transformers GPT-2 as a GGUF file with transformers' own name map (the inverse of its loader:
    Conv1D weights transposed back); a tiny byte-level vocabulary ("a", "b", "ab", ...)."""
    gguf = pytest.importorskip("gguf")
    from transformers.modeling_gguf_pytorch_utils import GPT2TensorProcessor, get_gguf_hf_weights_map

    c = hf.config
    w = gguf.GGUFWriter(str(path), arch="gpt2")
    w.add_block_count(c.n_layer)
    w.add_context_length(c.n_positions)
    w.add_embedding_length(c.n_embd)
    w.add_feed_forward_length(4 * c.n_embd)
    w.add_head_count(c.n_head)
    w.add_layer_norm_eps(c.layer_norm_epsilon)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "ab"] + [f"t{i}" for i in range(3, c.vocab_size)])
    w.add_token_merges(["a b"])
    w.add_token_scores([0.0] * c.vocab_size)
    w.add_token_types([1] * c.vocab_size)
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
    sd = hf.state_dict()
    for gname, hname in get_gguf_hf_weights_map(hf, GPT2TensorProcessor(config=c)).items():
        t = sd[hname].detach().float().numpy()
        if any(k in gname for k in ("attn_qkv.weight", "ffn_down.weight", "ffn_up.weight", "attn_output.weight")):
            t = t.T
        w.add_tensor(gname, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gpt2_gguf_file_loads_through_from_pretrained(tmp_path):
    """A GPT-2 GGUF file (float32 tensors, so no quantization error) loads by path, tokenizer included, into
    the same hidden states; a 512-token vocabulary keeps the tokenizer conversion fast."""
    cfg = M.published_hf_config("gpt2", **M.SMALL)
    cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id = 512, 511, 511
    hf = perturbed(M._random_model(cfg, seed=0, dtype="float32", device="cpu"))
    path = tmp_path / "gpt2-random.gguf"
    _gguf_from_gpt2(hf, path)
    x = ids(512)
    with torch.no_grad():
        hs = hf(x, output_hidden_states=True).hidden_states
    tl = M.load_model("gpt2", path=path)
    assert tl.tokenizer is not None and tl.tokenizer.eos_token_id == 511
    _, cache = tl.run_with_cache(x)
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], hs[1], rtol=0, atol=1e-5 * float(hs[1].abs().max()))


def test_hub_names_read_their_repository_through_the_same_code(small_hf, monkeypatch):
    """Without a path, the GPT-2 / Pythia names go to transformers' from_pretrained with their hub repository
    (TransformerLens's official name, so its cache is reused) and no local_files_only; the hub is faked by
    the small random model here."""
    import transformers

    calls = []

    def fake(kind):
        def load(cls, src, *a, **k):
            calls.append((kind, src, k.get("local_files_only")))
            if kind == "config":
                return copy.deepcopy(small_hf["gpt2" if "gpt2" in src else "pythia-160m-deduped"].config)
            if kind == "model":
                return transformers.AutoModelForCausalLM.from_config(k["config"])
            return None

        return classmethod(load)

    for kind, cls in (
        ("config", transformers.AutoConfig),
        ("model", transformers.AutoModelForCausalLM),
        ("tokenizer", transformers.AutoTokenizer),
    ):
        monkeypatch.setattr(cls, "from_pretrained", fake(kind))
    tl = M.load_model("pythia-160m-deduped", n_layers=1)
    assert tl.cfg.original_architecture == "GPTNeoXForCausalLM" and tl.cfg.default_prepend_bos is False
    assert tl.cfg.n_layers == 1
    M.load_model("gpt2-small")
    M.load_tokenizer("pythia-70m")
    repos = [(k, s) for k, s, local in calls if local is None]
    assert len(repos) == len(calls) == 7
    assert {s for _, s in repos} == {"EleutherAI/pythia-160m-deduped", "gpt2", "EleutherAI/pythia-70m"}
