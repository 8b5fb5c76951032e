"""`sae-rdp train`: train a weighted (or stock) SAE with SAELens's trainer.

The flags fill one :class:`~sae_rdp_plugin.train.config.TrainConfig` (:func:`train_config`), whose
defaults are the flags' defaults.

    sae-rdp train --synthetic --architecture weighted_topk --d-in 64 --d-sae 256 --k 8 --alpha 1 \\
        --tokens 200000 --out runs/wtopk
    sae-rdp train --model gemma3-270m --hook blocks.6.hook_resid_post --dataset corpus.txt \\
        --architecture weighted_topk --d-sae 8192 --k 32 --alpha 1 --tokens 2000000 --out runs/g6
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sae_rdp_plugin.architectures import architecture_help
from sae_rdp_plugin.train.config import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `train` command group to the top-level parser."""
    p = sub.add_parser(
        "train", help="train a weighted SAE (WSAE) with SAELens, on synthetic or language-model activations"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true", help="train on sae_lens.synthetic activations")
    src.add_argument(
        "--model", help="language model name (gemma3-270m / smollm2-135m offline, else TransformerLens/hub)"
    )
    p.add_argument("--hook", help="TransformerLens hook name, e.g. blocks.6.hook_resid_post (with --model)")
    p.add_argument("--dataset", help="text file or datasets directory with a 'tokens' column (with --model)")
    p.add_argument(
        "--n-layers", type=int, default=None, help="load only the first N blocks of the model (with --model)"
    )
    p.add_argument(
        "--gguf",
        default=None,
        help="local GGUF file or folder of an offline model instead of its PyPI packages (with --model)",
    )
    p.add_argument("--context-size", type=int, default=128)
    p.add_argument("--architecture", default="weighted_topk", help=architecture_help())
    p.add_argument("--d-in", type=int, default=None, help="input width (synthetic; taken from the model otherwise)")
    p.add_argument("--d-sae", type=int, required=True)
    p.add_argument(
        "--k", type=float, default=TrainConfig.k, help="active latents per row for (batch)topk (SAELens's default)"
    )
    p.add_argument("--alpha", type=float, default=None, help="gamma = variance^alpha (weighted archs; default 1)")
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
    p.add_argument("--tokens", type=int, required=True, help="training tokens (samples)")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--n-features", type=int, default=None, help="synthetic ground-truth features (default 2 * d_in)")
    p.add_argument("--firing-probability", type=float, default=0.02, help="synthetic mean firing probability")
    p.add_argument(
        "--checkpoints", type=int, default=TrainConfig.n_checkpoints, help="number of intermediate checkpoints"
    )
    p.add_argument("--resume", default=None, help="checkpoint directory to resume from (synthetic)")
    p.add_argument(
        "--no-fast",
        action="store_true",
        help="use SAELens's reference training step instead of the fast sparse step "
        "(sae_rdp_plugin.fast.step; default for (weighted_)topk/batchtopk)",
    )
    p.add_argument("--device", default=TrainConfig.device)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_handle)


def train_config(args: argparse.Namespace, d_in: int | None = None) -> TrainConfig:
    """The TrainConfig the flags describe (``d_in``: the model's width when ``--d-in`` is not given)."""
    return TrainConfig(
        architecture=args.architecture,
        d_in=args.d_in if args.d_in is not None else d_in,
        d_sae=args.d_sae,
        k=args.k,
        alpha=args.alpha,
        sparsity_coefficient=args.sparsity_coefficient,
        gamma_path=args.gamma_file,
        gamma_estimation_batches=args.gamma_batches,
        tokens=args.tokens,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        n_checkpoints=args.checkpoints,
        device=args.device,
    )


def _handle(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.architectures import check_architecture
    from sae_rdp_plugin.errors import SaeRdpError

    check_architecture(args.architecture)
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
    return _train_lm(args)


def _train_lm(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.train.saelens import load_dataset_arg, runner_config, train_language_model

    try:
        from sae_rdp_plugin.lm.models import load_model
    except ImportError as exc:  # pragma: no cover - models module missing
        raise SaeRdpError(f"model loading unavailable: {exc}") from exc
    try:
        model = load_model(args.model, path=args.gguf, device=args.device, n_layers=args.n_layers)
    except SaeRdpError:
        raise
    except Exception as exc:
        raise SaeRdpError(f"cannot load model {args.model!r} offline: {str(exc).splitlines()[0][:160]}") from exc
    if args.hook not in model.hook_dict:
        raise SaeRdpError(f"hook {args.hook!r} not in model (e.g. blocks.0.hook_resid_post)")
    cfg = train_config(args, d_in=int(model.cfg.d_model))
    dataset = load_dataset_arg(args.dataset, model.tokenizer, args.context_size)
    rc = runner_config(cfg, model_name=args.model, hook_name=args.hook, out=args.out, context_size=args.context_size)
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
