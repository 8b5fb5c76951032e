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

Both are described by a :class:`~sae_rdp_plugin.train.config.TrainConfig` (:func:`runner_config` turns
one into the runner's config) and write a SAELens-loadable SAE (cfg.json + sae_weights.safetensors,
stock architecture name) and, for weighted architectures, ``gamma.safetensors`` next to it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from sae_rdp_plugin.architectures import check_architecture, is_weighted
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.rdp.metrics import rate_distortion
from sae_rdp_plugin.train.config import TrainConfig, sae_config_dict
from sae_rdp_plugin.train.synthetic import make_synthetic_source
from sae_rdp_plugin.wsae.gamma import GAMMA_FILENAME

__all__ = [
    "check_architecture",
    "is_weighted",
    "sae_config_dict",
    "build_training_sae",
    "SyntheticTrainResult",
    "train_synthetic",
    "train_language_model",
    "tokens_dataset_from_text",
    "load_dataset_arg",
    "runner_config",
    "saelens_cli",
]


def build_training_sae(cfg_dict: dict[str, Any]) -> Any:
    """Build a SAELens TrainingSAE from a config dict (through SAELens's registry). Keys that are not
    fields of the architecture's config class raise SaeRdpError (SAELens would drop them silently)."""
    import sae_rdp_plugin.wsae.registry as arch

    arch.register_now()
    from sae_lens.registry import get_sae_training_class
    from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig

    cfg_cls = get_sae_training_class(check_architecture(cfg_dict.get("architecture")))[1]
    unknown = set(cfg_dict) - {f.name for f in fields(cfg_cls)} - {"architecture"}
    if unknown:
        raise SaeRdpError(f"unknown config fields for {cfg_dict['architecture']}: {sorted(unknown)}")
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


def train_synthetic(
    cfg: TrainConfig | str,
    *args: Any,
    n_features: int | None = None,
    firing_probability: float = 0.02,
    resume_from: str | Path | None = None,
    fast: bool = True,
    **train_fields: Any,
) -> SyntheticTrainResult:
    """Train an SAE on sae_lens.synthetic activations and save it (+ gamma) to ``out``.

    Called as ``train_synthetic(cfg, out)`` with a :class:`~sae_rdp_plugin.train.config.TrainConfig`, or
    as ``train_synthetic(architecture, d_in, d_sae, out, **train_fields)`` with TrainConfig's other
    fields as keywords (the same run). The data (:func:`~sae_rdp_plugin.train.synthetic.make_synthetic_source`,
    seeded by ``cfg.seed``) has ``n_features`` ground-truth directions (default ``2 * d_in``) firing with
    mean probability ``firing_probability``. For weighted architectures gamma is estimated first from
    ``cfg.gamma_estimation_batches`` batches (unless ``cfg.gamma_path`` or ``resume_from`` gives it).
    ``resume_from`` is a checkpoint folder; ``fast=False`` uses SAELens's reference step.

    Reports MCC of the decoder against the true directions, and the explained variance, L0 and dead
    latents of one fresh batch (:func:`sae_rdp_plugin.rdp.metrics.rate_distortion`)."""
    from sae_lens.synthetic import SyntheticActivationIterator, mean_correlation_coefficient
    from sae_lens.training.sae_trainer import SAETrainer

    from sae_rdp_plugin.io import atomic_write_json

    if isinstance(cfg, TrainConfig):
        if len(args) != 1 or train_fields:
            raise TypeError("train_synthetic(cfg, out): a TrainConfig and the output folder, nothing else")
        (out,) = args
    else:
        if len(args) != 3:
            raise TypeError("train_synthetic(architecture, d_in, d_sae, out, **train_fields)")
        d_in, d_sae, out = args
        cfg = TrainConfig(cfg, d_in, d_sae, **train_fields)
    n_features = 2 * cfg.d_in if n_features is None else n_features
    out = Path(out)
    t0 = time.time()
    fd, gen = make_synthetic_source(
        cfg.d_in, n_features, firing_probability=firing_probability, seed=cfg.seed, device=cfg.device
    )
    data = SyntheticActivationIterator(fd, gen, batch_size=cfg.batch_size)
    sae_cfg = cfg.sae_config_dict()
    torch.manual_seed(cfg.seed)
    sae = build_training_sae(sae_cfg)
    weighted = cfg.arch.weighted
    if weighted and not sae.gamma_is_set and resume_from is None:
        sae.estimate_gamma(data, cfg.gamma_estimation_batches, progress=True)
    ckpt_dir = str(out / "checkpoints") if cfg.n_checkpoints > 0 else None
    trainer = SAETrainer(cfg=cfg.trainer_config(ckpt_dir), sae=sae, data_provider=data)
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
    sae.eval()
    rd = rate_distortion(sae, next(data).to(cfg.device))
    mcc = mean_correlation_coefficient(sae.W_dec.detach().float().cpu(), fd.feature_vectors.detach().float().cpu())
    res = SyntheticTrainResult(
        out=str(out),
        architecture=cfg.architecture,
        d_in=cfg.d_in,
        d_sae=cfg.d_sae,
        k=sae_cfg.get("k"),
        alpha=sae_cfg.get("alpha"),
        tokens=int(cfg.tokens),
        steps=trainer.n_training_steps,
        device=cfg.device,
        seconds=round(time.time() - t0, 2),
        mcc=float(mcc),
        explained_variance=rd.explained_variance,
        l0=rd.rate,
        dead_latents=rd.dead_latents,
        gamma_file=str(out / GAMMA_FILENAME) if weighted else None,
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
    cfg: TrainConfig,
    *,
    model_name: str,
    hook_name: str,
    out: str | Path,
    context_size: int = 128,
    n_batches_in_buffer: int = 16,
    store_batch_size_prompts: int = 8,
) -> Any:
    """A LanguageModelSAERunnerConfig training ``cfg`` on ``hook_name`` of ``model_name``, for offline use
    (no wandb): ``cfg.tokens`` training tokens in batches of ``cfg.batch_size`` tokens, the SAE and trainer
    fields of :class:`~sae_rdp_plugin.train.config.TrainConfig`; the final SAE goes to ``out`` and
    checkpoints to ``out/checkpoints``. The buffer holds at least one training batch."""
    import sae_rdp_plugin.wsae.registry as arch

    arch.register_now()
    from sae_lens.config import LanguageModelSAERunnerConfig, LoggingConfig
    from sae_lens.saes.sae import TrainingSAEConfig

    n_buf = max(n_batches_in_buffer, math.ceil(cfg.batch_size / context_size))
    return LanguageModelSAERunnerConfig(
        sae=TrainingSAEConfig.from_dict(cfg.sae_config_dict()),
        model_name=model_name,
        hook_name=hook_name,
        dataset_path="",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=context_size,
        training_tokens=int(cfg.tokens),
        train_batch_size_tokens=cfg.batch_size,
        store_batch_size_prompts=store_batch_size_prompts,
        n_batches_in_buffer=n_buf,
        lr=cfg.lr,
        lr_end=cfg.lr,
        lr_scheduler_name="constant",
        autocast=cfg.autocast,
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=cfg.feature_sampling_window,
        n_batches_for_norm_estimate=cfg.n_batches_for_norm_estimate,
        device=cfg.device,
        seed=cfg.seed,
        output_path=str(out),
        checkpoint_path=str(Path(out) / "checkpoints"),
        n_checkpoints=cfg.n_checkpoints,
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
