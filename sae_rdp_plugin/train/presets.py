"""Published training setups, ready to run with one command (every SAE of every layer from one activation stream,
:func:`sae_rdp_plugin.train.lm.train_on_model`).

``wsae-pythia-160m`` (:data:`WSAE_PYTHIA_160M`): the WSAE paper's language-model setting (``THEORY.md``
section 4): TopK SAEs with k = 32 and 32 times the model width (768 -> 24,576 latents) on each of
Pythia-160M's layers 0-11, trained with the weighted loss at alpha = 0.5 and alpha = 1 next to the ordinary
TopK loss (the paper's baseline). The paper reports auto-interpretability 76.4 -> 80.2 at alpha = 1 (mean over
the layers). What it leaves unsaid is chosen here and listed in :attr:`Preset.choices`::

    python -m sae_rdp_plugin.train.presets wsae-pythia-160m --dataset corpus/ --out runs/wsae_pythia160m \\
        --device cuda

Weights: the hub (or its cache), or ``--path`` (a ``save_pretrained`` folder or a GGUF file). Offline, on
random weights of the architecture at a small width: ``--random-init --n-layers 2 --d-model 64 --n-heads 4``.
The SAEs go to ``out/<hook>/<name>/`` with ``out/summary.json``, as ``sae-rdp train --model`` writes them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.train.config import TrainConfig

__all__ = ["Preset", "WSAE_PYTHIA_160M", "PRESETS", "run_preset", "main"]


@dataclass(frozen=True)
class Preset:
    """A training setup: SAEs (``saes``: architecture and alpha) of ``expansion`` times the model width on the
    hook ``hook.format(layer=L)`` of each of ``layers``, all sharing ``k``, ``tokens`` and ``batch_size``."""

    name: str
    model: str
    layers: tuple[int, ...]
    saes: tuple[tuple[str, float | None], ...]
    k: int
    expansion: int
    tokens: int
    batch_size: int
    hook: str = "blocks.{layer}.hook_resid_post"
    source: str = ""
    choices: tuple[str, ...] = ()

    def hooks(self, layers: Sequence[int] | None = None) -> list[str]:
        """The hook names of ``layers`` (default: the preset's)."""
        return [self.hook.format(layer=int(layer)) for layer in (self.layers if layers is None else layers)]

    def configs(self, d_in: int, **overrides: Any) -> list[TrainConfig]:
        """One TrainConfig per SAE for a model of width ``d_in`` (``overrides``: other TrainConfig fields)."""
        fields = {"tokens": self.tokens, "batch_size": self.batch_size, **overrides}
        return [
            TrainConfig(arch, d_in, self.expansion * d_in, k=self.k, alpha=alpha, **fields) for arch, alpha in self.saes
        ]


WSAE_PYTHIA_160M = Preset(
    name="wsae-pythia-160m",
    model="pythia-160m",
    layers=tuple(range(12)),
    saes=(("topk", None), ("weighted_topk", 0.5), ("weighted_topk", 1.0)),
    k=32,
    expansion=32,
    tokens=50_000_000,
    batch_size=4096,
    source="WSAE paper (THEORY.md section 4): Pythia-160M, TopK k=32, 32x width, layers 0-11, alpha 0.5 / 1",
    choices=(
        "hook: the residual stream after each block (blocks.L.hook_resid_post)",
        "model: pythia-160m (the paper does not say whether the deduplicated one); --model pythia-160m-deduped",
        "baseline: stock TopK (the ordinary loss; weighted_topk at alpha 0 is the same loss)",
        "50M training tokens, batch 4096, learning rate 3e-4 (constant), text of --dataset",
    ),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (WSAE_PYTHIA_160M,)}


def run_preset(
    preset: Preset,
    model: Any,
    tokens: Any,
    out: str | Path,
    *,
    heldout_tokens: Any = None,
    layers: Sequence[int] | None = None,
    bos_token_id: int | None = None,
    pad_token_id: int | None = None,
    train_overrides: dict[str, Any] | None = None,
    pipeline_overrides: dict[str, Any] | None = None,
    notes: dict[str, Any] | None = None,
    fast: bool = True,
    progress: bool = True,
) -> list[dict]:
    """Train ``preset``'s SAEs on ``model`` (a transformers causal LM) over the token rows ``tokens``.

    ``layers`` (default: the preset's) selects hooks; ``train_overrides`` replace TrainConfig fields (tokens,
    batch_size, device, seed, ...); ``pipeline_overrides`` are further PipelineConfig fields. The SAEs are
    written to ``out/<hook>/<name>/`` and ``out/summary.json``; returns one result dict per SAE."""
    from sae_rdp_plugin.lm.pipeline import PipelineConfig
    from sae_rdp_plugin.train.lm import grid_specs, train_on_model, write_summary

    d_in = int(model.get_input_embeddings().embedding_dim)
    cfgs = preset.configs(d_in, **(train_overrides or {}))
    hooks = preset.hooks(layers)
    specs = grid_specs(hooks, cfgs, out)
    c = cfgs[0]
    pcfg = PipelineConfig(
        hooks=hooks,
        context_size=int(tokens.shape[1]),
        batch_size=c.batch_size,
        seed=c.seed,
        device=c.device,
        **(pipeline_overrides or {}),
    )
    notes = {"preset": preset.name, "preset_source": preset.source, **(notes or {})}
    results = train_on_model(
        model,
        tokens,
        pcfg,
        specs,
        heldout_tokens=heldout_tokens,
        bos_token_id=bos_token_id,
        pad_token_id=pad_token_id,
        fast=fast,
        progress=progress,
        notes=notes,
    )
    write_summary(out, results, **notes, hooks=hooks)
    return results


def _ints(flag: str, text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise SaeRdpError(f"{flag} takes comma-separated integers, got {text!r}") from exc


def arg_parser() -> argparse.ArgumentParser:
    from sae_rdp_plugin.cli import OneLineArgumentParser

    p = OneLineArgumentParser(
        prog="python -m sae_rdp_plugin.train.presets",
        description="Train a published setup's SAEs with one command: "
        + "; ".join(f"{n}: {q.source}" for n, q in PRESETS.items()),
    )
    p.add_argument("preset", choices=sorted(PRESETS))
    p.add_argument("--dataset", required=True, help="corpus folder, datasets folder with 'tokens', or text file")
    p.add_argument("--out", required=True, help="output folder (SAEs in out/<hook>/<name>/, out/summary.json)")
    p.add_argument("--model", default=None, help="model name (default: the preset's)")
    p.add_argument("--path", default=None, help="local weights: a save_pretrained folder or a GGUF file")
    p.add_argument("--random-init", action="store_true", help="random weights of the architecture (no network)")
    p.add_argument("--n-layers", type=int, default=None, help="only the first N blocks of the model")
    p.add_argument("--d-model", type=int, default=None, help="with --random-init: a smaller width (tests)")
    p.add_argument("--n-heads", type=int, default=None, help="with --random-init and --d-model: heads")
    p.add_argument("--layers", default=None, help="comma-separated layers (default: the preset's that exist)")
    p.add_argument("--tokens", type=int, default=None, help="training tokens (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per step (default: the preset's)")
    p.add_argument("--gamma-batches", type=int, default=None, help="batches of the WSAE variance pass (default 20)")
    p.add_argument("--context-size", type=int, default=None, help="cut the dataset's rows to this length")
    p.add_argument("--buffer-tokens", type=int, default=None, help="rows per hook in the shuffle buffer")
    p.add_argument("--model-dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--no-compile", action="store_true", help="run the model forward without torch.compile")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sae_rdp_plugin.train.presets NAME --dataset D --out O [...]``: every input is checked
    before anything is written; bad input is one line ``error: ...`` and exit status 2."""
    from sae_rdp_plugin.cli import run_entry_point

    def run() -> int:
        from sae_rdp_plugin.lm.models import hf_model, published_arch, random_hf_model
        from sae_rdp_plugin.train.lm import check_out_dir, dataset_tokens

        args = arg_parser().parse_args(argv)
        preset = PRESETS[args.preset]
        name = args.model or preset.model
        resize = {"d_model": args.d_model, "n_heads": args.n_heads}
        if any(v is not None for v in resize.values()) and not (args.random_init and published_arch(name)):
            raise SaeRdpError("--d-model / --n-heads resize a random GPT-2 / Pythia: add --random-init")
        if args.random_init and args.path:
            raise SaeRdpError("--random-init builds random weights: it takes no --path")
        layers = None if args.layers is None else _ints("--layers", args.layers)
        train_overrides: dict[str, Any] = {"device": args.device, "seed": args.seed}
        for key, field in (
            ("tokens", "tokens"),
            ("batch_size", "batch_size"),
            ("gamma_batches", "gamma_estimation_batches"),
        ):
            if getattr(args, key) is not None:
                train_overrides[field] = getattr(args, key)
        preset.configs(1, **train_overrides)  # flag values checked before the model loads
        check_out_dir(args.out)
        if args.random_init and published_arch(name):
            seed, dev = args.seed, args.device
            model = random_hf_model(
                name, n_layers=args.n_layers, **resize, seed=seed, dtype=args.model_dtype, device=dev
            )
            tok = None
        else:
            model, tok = hf_model(
                name,
                path=args.path,
                n_layers=args.n_layers,
                random_init=args.random_init,
                seed=args.seed,
                dtype=args.model_dtype,
                device=args.device,
            )
        n_blocks = int(model.config.num_hidden_layers)
        if layers is None:
            layers = [layer for layer in preset.layers if layer < n_blocks]
            if len(layers) < len(preset.layers):
                print(f"{name} has {n_blocks} blocks: training layers {layers} of the preset's {list(preset.layers)}")
        bad = [layer for layer in layers if not 0 <= layer < n_blocks]
        if bad or not layers:
            raise SaeRdpError(f"--layers {bad or layers}: the model has blocks 0..{n_blocks - 1}")
        train, held, held_note, corpus_bos = dataset_tokens(args.dataset, tok, args.context_size)
        source = tok if tok is not None else model.config
        pipeline = {"model_dtype": args.model_dtype, "compile": False if args.no_compile else None}
        if args.buffer_tokens is not None:
            pipeline["buffer_tokens"] = args.buffer_tokens
        notes = {"model": name, "random_init": args.random_init, "dataset": args.dataset, "heldout": held_note}
        results = run_preset(
            preset,
            model,
            train,
            args.out,
            heldout_tokens=held,
            layers=layers,
            bos_token_id=getattr(source, "bos_token_id", None) if corpus_bos is None else corpus_bos,
            pad_token_id=getattr(source, "pad_token_id", None),
            train_overrides=train_overrides,
            pipeline_overrides=pipeline,
            notes=notes,
        )
        for r in results:
            print(
                f"saved {r['name']} for {name} {r['hook']} to {r['out']}: held-out FVU {r['heldout_fvu']:.4f}, "
                f"L0 {r['heldout_l0']:.1f}"
            )
        return 0

    return run_entry_point(run)


if __name__ == "__main__":
    raise SystemExit(main())
