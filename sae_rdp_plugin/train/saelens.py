"""Training weighted (and stock) SAEs with SAELens's own trainer.

Two entry points:

* :func:`train_synthetic` trains on synthetic activations from ``sae_lens.synthetic`` (a
  FeatureDictionary of ``n_features`` ground-truth directions in R^d_in and an ActivationGenerator
  with per-feature firing probabilities and magnitudes) by feeding SAELens's ``SAETrainer`` an iterator
  of activation tensors. For ``weighted_*`` architectures gamma is estimated first by a streaming
  float64 pass over ``gamma_estimation_batches`` fresh batches of the same generator.
* :func:`train_language_model` runs SAELens's ``LanguageModelSAETrainingRunner`` on a model layer
  (``override_model`` / ``override_dataset`` as in SAELens); for ``weighted_*`` architectures gamma is
  estimated from the runner's own ActivationsStore before training (or taken from the resume
  checkpoint / ``from_pretrained_path`` / ``gamma_path``).

Both write a SAELens-loadable SAE (cfg.json + sae_weights.safetensors, stock architecture name) and,
for weighted architectures, ``gamma.safetensors`` next to it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.wsae.gamma import GAMMA_FILENAME, check_alpha

STOCK_ARCHITECTURES = ("standard", "topk", "jumprelu", "batchtopk")
WEIGHTED_ARCHITECTURES = ("weighted_standard", "weighted_topk", "weighted_jumprelu", "weighted_batchtopk")
VALID_ARCHITECTURES = WEIGHTED_ARCHITECTURES + STOCK_ARCHITECTURES


def check_architecture(architecture: str) -> str:
    if architecture not in VALID_ARCHITECTURES:
        raise SaeRdpError(f"unknown architecture {architecture!r}; valid: {', '.join(VALID_ARCHITECTURES)}")
    return architecture


def is_weighted(architecture: str) -> bool:
    return architecture.startswith("weighted_")


def sae_config_dict(
    architecture: str,
    d_in: int,
    d_sae: int,
    *,
    k: float | None = None,
    alpha: float | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    sparsity_coefficient: float | None = None,
    gamma_path: str | None = None,
    gamma_estimation_batches: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A training-SAE config dict for SAELens (``TrainingSAEConfig.from_dict``) for one architecture.

    ``k`` applies to (weighted_)topk / batchtopk; ``sparsity_coefficient`` is l1_coefficient for
    standard and l0_coefficient for jumprelu. ``alpha`` and gamma fields only for weighted ones."""
    check_architecture(architecture)
    if d_in <= 0 or d_sae <= 0:
        raise SaeRdpError(f"d_in and d_sae must be positive, got d_in={d_in}, d_sae={d_sae}")
    base = architecture.removeprefix("weighted_")
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "device": device,
        "dtype": dtype,
    }
    if base in ("topk", "batchtopk"):
        kk = 32 if k is None else k
        if kk <= 0 or kk > d_sae:
            raise SaeRdpError(f"k must be in 1..d_sae={d_sae}, got {kk}")
        cfg["k"] = int(kk) if base == "topk" else float(kk)
    if base == "standard" and sparsity_coefficient is not None:
        cfg["l1_coefficient"] = float(sparsity_coefficient)
    if base == "jumprelu" and sparsity_coefficient is not None:
        cfg["l0_coefficient"] = float(sparsity_coefficient)
    if is_weighted(architecture):
        cfg["alpha"] = check_alpha(1.0 if alpha is None else alpha)
        if gamma_path is not None:
            cfg["gamma_path"] = str(gamma_path)
        if gamma_estimation_batches is not None:
            cfg["gamma_estimation_batches"] = int(gamma_estimation_batches)
    elif alpha is not None and check_alpha(alpha) != 0:
        raise SaeRdpError(
            f"alpha={alpha} needs a weighted architecture (weighted_{base}); {architecture!r} is unweighted"
        )
    cfg.update(extra)
    return cfg


def build_training_sae(cfg_dict: dict[str, Any]) -> Any:
    """Build a SAELens TrainingSAE from a config dict (through SAELens's registry)."""
    import sae_rdp_plugin.wsae.registry as arch

    arch.register_now()
    from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig

    return TrainingSAE.from_dict(TrainingSAEConfig.from_dict(cfg_dict).to_dict())


# ------------------------------------------------------------------------------------ synthetic


@dataclass
class SyntheticTrainResult:
    out: str
    architecture: str
    d_in: int
    d_sae: int
    k: float | None
    alpha: float | None
    tokens: int
    steps: int
    device: str
    seconds: float
    mcc: float
    explained_variance: float
    l0: float
    dead_latents: int
    final_losses: dict[str, float] = field(default_factory=dict)
    gamma_file: str | None = None


def make_synthetic_source(
    d_in: int,
    n_features: int,
    *,
    firing_probability: float = 0.02,
    seed: int = 0,
    device: str = "cpu",
    magnitude_std: float = 0.2,
) -> tuple[Any, Any]:
    """(FeatureDictionary, ActivationGenerator) from sae_lens.synthetic with Zipf-like firing
    probabilities (mean ``firing_probability``) so that input dimensions have unequal variance."""
    from sae_lens.synthetic import ActivationGenerator, FeatureDictionary

    if n_features <= 0:
        raise SaeRdpError(f"n_features must be positive, got {n_features}")
    if not 0 < firing_probability < 1:
        raise SaeRdpError(f"firing_probability must be in (0, 1), got {firing_probability}")
    torch.manual_seed(seed)
    fd = FeatureDictionary(n_features, d_in, device=device, seed=seed, initializer=None)
    ranks = torch.arange(1, n_features + 1, dtype=torch.float32)
    p = 1.0 / ranks**0.5
    p = (p / p.mean() * firing_probability).clamp(max=0.9)
    gen = ActivationGenerator(
        n_features,
        firing_probabilities=p.to(device),
        std_firing_magnitudes=magnitude_std,
        mean_firing_magnitudes=1.0,
        device=device,
    )
    return fd, gen


def _trainer_config(
    tokens: int, batch_size: int, lr: float, device: str, checkpoint_path: str | None, n_checkpoints: int
) -> Any:
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    return SAETrainerConfig(
        total_training_samples=int(tokens),
        train_batch_size_samples=int(batch_size),
        lr=lr,
        lr_end=lr,  # explicit (ECOSYSTEM.md): SAETrainer asserts it is set
        lr_scheduler_name="constant",
        device=device,
        n_checkpoints=n_checkpoints,
        checkpoint_path=checkpoint_path,
        save_final_checkpoint=False,
        dead_feature_window=200,
        feature_sampling_window=1000,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
    )


@torch.no_grad()
def _eval_on_batch(sae: Any, x: torch.Tensor) -> dict[str, float]:
    sae.eval()
    acts = sae.encode(x)
    x_hat = sae.decode(acts)
    resid = (x - x_hat).pow(2).sum(-1).mean()
    tot = (x - x.mean(0)).pow(2).sum(-1).mean()
    return {
        "explained_variance": float(1 - resid / tot),
        "l0": float((acts != 0).float().sum(-1).mean()),
        "dead_latents": int(((acts != 0).sum(0) == 0).sum()),
    }


def train_synthetic(
    architecture: str,
    d_in: int,
    d_sae: int,
    out: str | Path,
    *,
    k: float | None = 8,
    alpha: float | None = None,
    tokens: int = 200_000,
    batch_size: int = 1024,
    lr: float = 3e-4,
    n_features: int | None = None,
    firing_probability: float = 0.02,
    sparsity_coefficient: float | None = None,
    device: str = "cpu",
    seed: int = 0,
    gamma_path: str | None = None,
    gamma_estimation_batches: int = 20,
    n_checkpoints: int = 0,
    resume_from: str | Path | None = None,
    fast: bool = True,
) -> SyntheticTrainResult:
    """Train ``architecture`` on sae_lens.synthetic activations and save it (+ gamma) to ``out``."""
    from sae_lens.synthetic import SyntheticActivationIterator, mean_correlation_coefficient
    from sae_lens.training.sae_trainer import SAETrainer

    from sae_rdp_plugin.io import atomic_write_json

    check_architecture(architecture)
    if tokens < batch_size:
        raise SaeRdpError(f"tokens ({tokens}) must be at least one batch ({batch_size})")
    n_features = n_features or 2 * d_in
    out = Path(out)
    t0 = time.time()
    fd, gen = make_synthetic_source(d_in, n_features, firing_probability=firing_probability, seed=seed, device=device)
    data = SyntheticActivationIterator(fd, gen, batch_size=batch_size)
    cfg = sae_config_dict(
        architecture,
        d_in,
        d_sae,
        k=k,
        alpha=alpha,
        device=device,
        sparsity_coefficient=sparsity_coefficient,
        gamma_path=gamma_path,
        gamma_estimation_batches=gamma_estimation_batches if is_weighted(architecture) else None,
    )
    torch.manual_seed(seed)
    sae = build_training_sae(cfg)
    if is_weighted(architecture) and not sae.gamma_is_set and resume_from is None:
        sae.estimate_gamma(data, gamma_estimation_batches, progress=True)
    ckpt_dir = str(out / "checkpoints") if n_checkpoints > 0 else None
    trainer = SAETrainer(
        cfg=_trainer_config(tokens, batch_size, lr, device, ckpt_dir, n_checkpoints), sae=sae, data_provider=data
    )
    if resume_from is not None:
        trainer.load_trainer_state(resume_from)
        sae.load_weights_from_checkpoint(resume_from)
    # ---- BEGIN fast path (sae_rdp_plugin.fast.step): (weighted_)topk/batchtopk steps run sparse;
    # same loss/gradients/Adam as SAELens's step; fast=False (`--no-fast`) keeps the reference step.
    if fast:
        from sae_rdp_plugin.fast.step import install_fast_step

        install_fast_step(trainer)
    # ---- END fast path
    trainer.fit()
    sae.save_inference_model(out)
    x_eval = next(data).to(device)
    ev = _eval_on_batch(sae, x_eval)
    mcc = mean_correlation_coefficient(sae.W_dec.detach().float().cpu(), fd.feature_vectors.detach().float().cpu())
    res = SyntheticTrainResult(
        out=str(out),
        architecture=architecture,
        d_in=d_in,
        d_sae=d_sae,
        k=cfg.get("k"),
        alpha=cfg.get("alpha"),
        tokens=int(tokens),
        steps=trainer.n_training_steps,
        device=device,
        seconds=round(time.time() - t0, 2),
        mcc=float(mcc),
        gamma_file=str(out / GAMMA_FILENAME) if is_weighted(architecture) else None,
        **ev,
    )
    atomic_write_json(out / "train_summary.json", asdict(res))
    return res


# ------------------------------------------------------------------------------------ language models


def train_language_model(
    cfg: Any,
    override_model: Any = None,
    override_dataset: Any = None,
    gamma_progress: bool = True,
    fast: bool = True,
) -> Any:
    """Run SAELens's LanguageModelSAETrainingRunner with ``cfg`` (a LanguageModelSAERunnerConfig).

    For weighted architectures, before training: gamma comes from ``cfg.resume_from_checkpoint`` or
    ``cfg.from_pretrained_path`` (their gamma.safetensors, verbatim), from the SAE config's
    ``gamma_path``, or else from a streaming float64 pass over ``gamma_estimation_batches`` batches of
    the runner's own ActivationsStore. The final SAE is saved by SAELens to ``cfg.output_path`` with
    gamma.safetensors next to it. Returns the trained SAE."""
    import sae_rdp_plugin.wsae.registry as arch

    arch.register_now()
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner

    from sae_rdp_plugin.wsae.architectures import WeightedSAEMixin

    if (cfg.n_batches_in_buffer * cfg.context_size) < cfg.train_batch_size_tokens:
        raise SaeRdpError(
            f"n_batches_in_buffer * context_size ({cfg.n_batches_in_buffer} * {cfg.context_size}) must be >= "
            f"train_batch_size_tokens ({cfg.train_batch_size_tokens})"
        )
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=override_dataset, override_model=override_model)
    sae = runner.sae
    if isinstance(sae, WeightedSAEMixin):
        for src in (cfg.resume_from_checkpoint, cfg.from_pretrained_path):
            if src is not None and (Path(src) / GAMMA_FILENAME).exists():
                sae.load_gamma(Path(src) / GAMMA_FILENAME, verbatim=True)
                break
        if not sae.gamma_is_set:
            sae.estimate_gamma(runner.activations_store, progress=gamma_progress)
    # ---- BEGIN fast path (sae_rdp_plugin.fast.step; fast=False / `--no-fast` disables)
    if fast:
        from sae_rdp_plugin.fast.step import install_fast_step

        _run_trainer = runner.run_trainer_with_interruption_handling

        def _run_trainer_fast(trainer: Any) -> Any:
            install_fast_step(trainer)
            return _run_trainer(trainer)

        runner.run_trainer_with_interruption_handling = _run_trainer_fast
    # ---- END fast path
    return runner.run()


def tokens_dataset_from_text(text: str, tokenizer: Any, context_size: int) -> Any:
    """A datasets.Dataset with a "tokens" column: ``text`` tokenised and cut into context_size rows."""
    from datasets import Dataset

    ids = tokenizer(text, return_tensors=None)["input_ids"]
    n = len(ids) // context_size
    if n == 0:
        raise SaeRdpError(f"text has {len(ids)} tokens, fewer than one context of {context_size}")
    rows = [ids[i * context_size : (i + 1) * context_size] for i in range(n)]
    return Dataset.from_dict({"tokens": rows})


def load_dataset_arg(path: str, tokenizer: Any, context_size: int) -> Any:
    """--dataset: a directory saved with datasets' save_to_disk (with a "tokens" column), or a text file."""
    p = Path(path)
    if p.is_dir():
        from datasets import load_from_disk

        ds = load_from_disk(str(p))
        if "tokens" not in ds.column_names:
            raise SaeRdpError(f"dataset {p} has no 'tokens' column (columns: {ds.column_names})")
        return ds
    if p.is_file():
        return tokens_dataset_from_text(p.read_text(encoding="utf-8", errors="replace"), tokenizer, context_size)
    raise SaeRdpError(f"dataset not found: {path} (give a text file or a datasets directory with a 'tokens' column)")


def runner_config(
    architecture: str,
    d_in: int,
    d_sae: int,
    *,
    model_name: str,
    hook_name: str,
    training_tokens: int,
    out: str | Path,
    k: float | None = 32,
    alpha: float | None = None,
    device: str = "cpu",
    context_size: int = 128,
    batch_size_tokens: int = 1024,
    lr: float = 3e-4,
    n_batches_in_buffer: int = 16,
    store_batch_size_prompts: int = 8,
    gamma_estimation_batches: int = 20,
    seed: int = 0,
    **sae_extra: Any,
) -> Any:
    """A LanguageModelSAERunnerConfig for a (weighted) architecture, for offline use (no wandb)."""
    import sae_rdp_plugin.wsae.registry as arch

    arch.register_now()
    from sae_lens.config import LanguageModelSAERunnerConfig, LoggingConfig
    from sae_lens.saes.sae import TrainingSAEConfig

    sae_cfg = TrainingSAEConfig.from_dict(
        sae_config_dict(
            architecture,
            d_in,
            d_sae,
            k=k,
            alpha=alpha,
            device=device,
            gamma_estimation_batches=gamma_estimation_batches if is_weighted(architecture) else None,
            **sae_extra,
        )
    )
    n_buf = max(n_batches_in_buffer, math.ceil(batch_size_tokens / context_size))
    return LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        model_name=model_name,
        hook_name=hook_name,
        dataset_path="",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=context_size,
        training_tokens=int(training_tokens),
        train_batch_size_tokens=batch_size_tokens,
        store_batch_size_prompts=store_batch_size_prompts,
        n_batches_in_buffer=n_buf,
        lr=lr,
        lr_end=lr,
        device=device,
        seed=seed,
        output_path=str(out),
        checkpoint_path=str(Path(out) / "checkpoints"),
        n_checkpoints=0,
        logger=LoggingConfig(log_to_wandb=False),
        verbose=False,
    )


def saelens_cli(argv: list[str] | None = None) -> Any:
    """SAELens's own runner CLI (``--architecture weighted_topk --alpha 0.5 --model_name ... ``) with the
    plugin registered and gamma estimated from the activation store before training:
    ``python -m sae_rdp_plugin.train.saelens --architecture weighted_topk --alpha 1 --d_in 768 ...``."""
    import sys

    import sae_rdp_plugin.wsae.registry as arch

    arch.register_now()
    from sae_lens.llm_sae_training_runner import _parse_cfg_args

    cfg = _parse_cfg_args(sys.argv[1:] if argv is None else argv)
    return train_language_model(cfg)


if __name__ == "__main__":
    saelens_cli()
