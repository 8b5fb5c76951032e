"""One training configuration: :class:`TrainConfig`, for every way sae-rdp trains an SAE.

``sae-rdp train`` (synthetic and ``--model``), ``sae-rdp distributed train`` / ``grid`` and the Python API
(:func:`sae_rdp_plugin.train.saelens.train_synthetic`, :func:`~sae_rdp_plugin.train.saelens.runner_config`,
:func:`sae_rdp_plugin.train.ddp.train_distributed`, :func:`sae_rdp_plugin.train.grid.sweep_distributed`)
all describe the SAE and its training with it, so each hyperparameter has one name, one meaning and
one default. It builds the two SAELens objects every path needs: the training-SAE config dict
(:meth:`TrainConfig.sae_config_dict`, for ``TrainingSAEConfig.from_dict``) and the trainer config
(:meth:`TrainConfig.trainer_config`, a ``SAETrainerConfig``). :class:`SyntheticStreamConfig` adds what
only the distributed synthetic stream needs.

Importing this module imports neither torch nor SAELens (the CLI reads its defaults).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

from sae_rdp_plugin.architectures import Architecture, get_architecture
from sae_rdp_plugin.errors import SaeRdpError

__all__ = ["TrainConfig", "SyntheticStreamConfig", "sae_config_dict", "B_DEC_INITS"]

#: values of TrainConfig.b_dec_init
B_DEC_INITS = ("zeros", "mean")
#: the largest WSAE exponent accepted: variance^alpha of variances a factor 10 apart already spans 10^alpha,
#: so beyond this gamma leaves float64 range (1e308) for nearly every activation distribution
MAX_ALPHA = 100.0


def sae_train_bytes(d_in: int, d_sae: int, batch_size: int) -> int:
    """Bytes (float32) of training one SAE: encoder and decoder with their gradients and Adam's two moments
    (4 x 2 d_in d_sae), and one batch of inputs and latents (batch_size (d_in + d_sae))."""
    return 4 * (8 * int(d_in) * int(d_sae) + int(batch_size) * (int(d_in) + int(d_sae)))


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    try:
        v = operator.index(value)  # ints, numpy ints; not floats
    except TypeError:
        v = None
    if v is None or isinstance(value, bool) or v < minimum:
        raise SaeRdpError(f"{name} must be an integer >= {minimum}, got {value!r}")


#: seeds go to ``torch.manual_seed`` / ``torch.Generator.manual_seed`` (64-bit); a negative seed would alias a
#: positive one (torch maps it modulo 2**64), so seeds are 0..2**63-1 as in sweep configs
MAX_SEED = 2**63 - 1
#: the synthetic stream seeds chunk c of batch t with (data_seed * 1_000_003 + t) * 1009 + c
#: (:class:`~sae_rdp_plugin.train.synthetic.ShardedSyntheticStream`), which must stay within 64 bits
MAX_DATA_SEED = 2**32 - 1


def _seed(name: str, value: Any, maximum: int = MAX_SEED) -> None:
    try:
        v = operator.index(value)
    except TypeError:
        v = None
    if v is None or isinstance(value, bool) or not 0 <= v <= maximum:
        top = "2**63-1" if maximum == MAX_SEED else "2**32-1" if maximum == MAX_DATA_SEED else str(maximum)
        raise SaeRdpError(f"{name} must be an integer in 0..{top}, got {value!r}")


def _finite(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SaeRdpError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise SaeRdpError(f"{name} must be finite, got {value!r}")
    return v


#: ``TrainConfig.normalize_activations`` values: SAELens's five, then ours (see the field)
NORMALIZATIONS = (
    "none",
    "expected_average_only_in",
    "constant_norm_rescale",
    "layer_norm",
    "covariance_whitening",
    "standardize",
)


@dataclass
class TrainConfig:
    """One SAE and its training with SAELens's ``SAETrainer`` (constant learning rate, Adam).

    ``architecture``, ``d_in`` and ``d_sae`` say what is trained and have no default; every other field
    has the one default used by the CLI commands and the Python API. Invalid values raise SaeRdpError
    when the config is made (also through ``dataclasses.replace``).
    """

    # ---- the SAE
    architecture: str
    """Training architecture: a name in :mod:`sae_rdp_plugin.architectures` (``weighted_topk``, ``topk``, ...)."""
    d_in: int
    """Input width: the dimension of the activations."""
    d_sae: int
    """Number of latents (dictionary size)."""
    k: float = 32
    """Active latents per row, for (weighted_)topk (a whole number) and (weighted_)batchtopk (the mean per
    row over a batch); SAELens's default. Other architectures ignore it."""
    alpha: float | None = None
    """WSAE exponent in gamma_i = variance_i^alpha (>= 0); None means 1 for weighted_* architectures.
    Unweighted architectures accept only None or 0."""
    sparsity_coefficient: float | None = None
    """Sparsity penalty weight: ``l1_coefficient`` of (weighted_)standard, ``l0_coefficient`` of
    (weighted_)jumprelu; None keeps SAELens's default. TopK / BatchTopK have none (refused)."""
    normalize_activations: str = "none"
    """Input normalisation: SAELens's (``none``, ``expected_average_only_in``, ``constant_norm_rescale``,
    ``layer_norm``, ``covariance_whitening``) or ``standardize`` (ours; ``train_on_model`` / ``train_saes`` only,
    the other trainers refuse it: :meth:`require_zero_b_dec`): z_i = (x_i - mu_i) / sqrt(var_i + 1e-3) per
    input dimension, mu and var in float64 over the ``n_batches_for_norm_estimate`` batches. It runs through
    SAELens's activation scaler as a diagonal ``ActivationWhitening`` (matrix diag(1 / sd), inverse diag(sd)),
    so checkpoints store it and the saved SAE has it folded into its weights by SAELens's
    ``fold_activation_whitening`` (stock-loadable, acts on raw x). For layers where a few dimensions carry
    most of the variance (Gemma-3-270M layer 9: one dimension 93% of it, from rare outlier tokens), where an
    L1 SAE on the ``expected_average_only_in`` scale reconstructs that dimension and little else
    (experiments/table2/diagnostics)."""
    dtype: str = "float32"
    """SAE parameter dtype."""
    gamma_path: str | None = None
    """WSAE: a gamma.safetensors file (or a run directory) to take gamma from instead of estimating it."""
    gamma_estimation_batches: int = 20
    """WSAE: batches (of ``batch_size`` rows) in the streaming float64 variance pass before training."""
    variance_cap_quantile: float | None = None
    """WSAE massive-activation rule: q in (0, 1] caps every variance at the q-quantile of the d_in variances
    before the power, s_i <- min(s_i, Q_q(s)) (so one dimension holding most of the variance cannot take
    nearly all of the loss); None: no cap. Only for weighted_* architectures."""
    sae_kwargs: dict[str, Any] = field(default_factory=dict)
    """Further SAELens training-SAE config fields (unknown names are refused); they override the above."""

    # ---- the training run
    tokens: int = 200_000
    """Training samples (activation rows; tokens of a language model), all ranks together."""
    batch_size: int = 1024
    """Rows per optimizer step, all ranks together."""
    lr: float = 3e-4
    """Adam learning rate (constant between the warm-up and the decay)."""
    lr_warm_up_steps: int = 0
    """Steps of SAELens's linear learning-rate warm-up at the start (0: none)."""
    lr_decay_steps: int = 0
    """Steps of SAELens's linear decay to ``lr_end`` at the end (0: none)."""
    lr_end: float | None = None
    """Learning rate at the end of the decay (None: lr / 10, SAELens's runner default)."""
    seed: int = 0
    """Seed of the SAE's initialisation (``train_synthetic`` also draws its data with it)."""
    n_checkpoints: int = 0
    """Intermediate checkpoints, evenly spaced in samples."""
    dead_feature_window: int = 1000
    """Steps without firing after which a latent counts as dead (TopK's auxiliary loss trains dead
    latents); SAELens's default."""
    feature_sampling_window: int = 2000
    """Steps per window of SAELens's firing-frequency statistics; SAELens's default."""
    n_batches_for_norm_estimate: int = 4
    """Batches of the input norm estimate (``normalize_activations="expected_average_only_in"``), and of the
    ``b_dec_init="mean"`` estimate."""
    b_dec_init: str = "zeros"
    """Initial decoder bias: ``"zeros"`` (SAELens 6's init) or ``"mean"``, the mean SAE input
    b_dec = (1/n) sum_t s(x_t) over the n rows of the first N = ``n_batches_for_norm_estimate`` batches before
    training (the normalisation estimate's own batches when the run has one), where s is the run's activation
    normalisation (x * sqrt(d_in) / E||x|| for ``expected_average_only_in``, identity for ``none``), summed
    in float64 over all ranks' rows. The normalisation is folded into the saved SAE at the end as usual
    (b_dec / scale), which then reads raw activations. Why: with a large, nearly constant offset in the
    activations (a massive dimension), a b_dec started at 0 moves ~lr per Adam step, so it needs ~|offset| / lr
    steps, and latents spend themselves on the offset meanwhile. Only ``train_saes`` / ``train_on_model``
    (``sae-rdp train --model``) honour ``"mean"``; the other trainers refuse it (:meth:`require_zero_b_dec`)."""
    threshold_lr_scale: float = 1.0
    """(weighted_)jumprelu: the learning rate of the JumpReLU threshold as a multiple of ``lr`` (its own Adam
    group; SAELens's trainer has one). Why: SAELens parameterises the threshold directly and Adam moves it by
    about lr per step, so with lr 3e-4 it moves <= 0.15 in a 2M-token run (488 steps of 4096), and L0 is set by
    the initial threshold, not by ``l0_coefficient`` (experiments/table2/diagnostics: x30-x100 makes L0 follow
    the coefficient). Only ``train_saes`` / ``train_on_model``, one process."""
    autocast: bool = False
    """bfloat16 autocast of the training step (CUDA)."""
    device: str = "cpu"
    """Torch device (distributed training puts each rank on its own device)."""

    def __post_init__(self) -> None:
        a = get_architecture(self.architecture)
        _positive_int("d_in", self.d_in)
        _positive_int("d_sae", self.d_sae)
        if a.uses_k:
            k = _finite("k", self.k)
            if not 0 < k <= self.d_sae:
                raise SaeRdpError(f"k must be in 1..d_sae={self.d_sae}, got {self.k}")
            if a.k_is_integer and k != int(k):
                raise SaeRdpError(f"k of {self.architecture} is a whole number of latents, got {self.k}")
        from sae_rdp_plugin.wsae.gamma import check_alpha, check_variance_cap_quantile

        if self.alpha is not None and check_alpha(self.alpha) != 0 and not a.weighted:
            raise SaeRdpError(
                f"alpha={self.alpha} needs a weighted architecture (weighted_{a.stock}); "
                f"{self.architecture!r} is unweighted"
            )
        if self.alpha is not None and check_alpha(self.alpha) > MAX_ALPHA:
            raise SaeRdpError(
                f"alpha={self.alpha} is above {MAX_ALPHA:g}: gamma = variance^alpha would leave float64 range for "
                "all but nearly equal variances; use a smaller alpha"
            )
        if self.gamma_path is not None and not a.weighted:
            raise SaeRdpError(
                f"gamma_path (--gamma-file) needs a weighted architecture (weighted_{a.stock}); "
                f"{self.architecture!r} is unweighted"
            )
        if self.sparsity_coefficient is not None:
            if a.sparsity_field is None:
                raise SaeRdpError(f"{self.architecture} has no sparsity coefficient (its sparsity is k)")
            if _finite("sparsity_coefficient", self.sparsity_coefficient) < 0:
                raise SaeRdpError(f"sparsity_coefficient must be >= 0, got {self.sparsity_coefficient}")
        _positive_int("gamma_estimation_batches", self.gamma_estimation_batches)
        if check_variance_cap_quantile(self.variance_cap_quantile) is not None and not a.weighted:
            raise SaeRdpError(
                f"variance_cap_quantile needs a weighted architecture (weighted_{a.stock}); "
                f"{self.architecture!r} is unweighted"
            )
        if self.normalize_activations not in NORMALIZATIONS:
            raise SaeRdpError(
                f"normalize_activations must be one of {', '.join(NORMALIZATIONS)}; got {self.normalize_activations!r}"
            )
        if self.normalize_activations == "standardize" and a.weighted:
            raise SaeRdpError(
                f"normalize_activations='standardize' is not supported for {self.architecture} (gamma is estimated "
                "on raw activations, and standardising already reweights the loss per dimension)"
            )
        if not _finite("threshold_lr_scale", self.threshold_lr_scale) > 0:
            raise SaeRdpError(f"threshold_lr_scale must be > 0, got {self.threshold_lr_scale}")
        if self.threshold_lr_scale != 1.0 and a.stock != "jumprelu":
            raise SaeRdpError(
                f"threshold_lr_scale needs a JumpReLU architecture; {self.architecture!r} has no threshold"
            )
        if not isinstance(self.sae_kwargs, dict):
            raise SaeRdpError(f"sae_kwargs must be a dict of SAELens config fields, got {self.sae_kwargs!r}")
        _positive_int("batch_size", self.batch_size)
        _positive_int("tokens", self.tokens)
        if self.tokens < self.batch_size:
            raise SaeRdpError(f"tokens ({self.tokens}) must be at least one batch ({self.batch_size})")
        if not _finite("lr", self.lr) > 0:
            raise SaeRdpError(f"lr must be > 0, got {self.lr}")
        _positive_int("lr_warm_up_steps", self.lr_warm_up_steps, minimum=0)
        _positive_int("lr_decay_steps", self.lr_decay_steps, minimum=0)
        steps = -(-int(self.tokens) // int(self.batch_size))
        if self.lr_warm_up_steps + self.lr_decay_steps > steps:
            raise SaeRdpError(
                f"lr_warm_up_steps + lr_decay_steps ({self.lr_warm_up_steps} + {self.lr_decay_steps}) exceed the "
                f"run's {steps} steps"
            )
        if self.lr_end is not None and not _finite("lr_end", self.lr_end) >= 0:
            raise SaeRdpError(f"lr_end must be >= 0, got {self.lr_end}")
        _positive_int("n_checkpoints", self.n_checkpoints, minimum=0)
        if self.n_checkpoints > steps:
            # SAELens's trainer writes at most one checkpoint per step: more would be dropped without a word
            # (and it lists every threshold up front: a huge count is a huge list)
            raise SaeRdpError(
                f"n_checkpoints ({self.n_checkpoints}) is more than the run's {steps} steps (at most one checkpoint "
                f"per step); ask for at most {steps}"
            )
        _seed("seed", self.seed)
        _positive_int("dead_feature_window", self.dead_feature_window)
        _positive_int("feature_sampling_window", self.feature_sampling_window)
        _positive_int("n_batches_for_norm_estimate", self.n_batches_for_norm_estimate)
        if self.b_dec_init not in B_DEC_INITS:
            raise SaeRdpError(f"b_dec_init must be one of {', '.join(B_DEC_INITS)}, got {self.b_dec_init!r}")

    def require_zero_b_dec(self, trainer: str) -> None:
        """SaeRdpError unless ``b_dec_init`` is ``"zeros"`` and the normalisation is SAELens's own: for
        ``trainer``, a path that leaves b_dec at SAELens's zero init and runs SAELens's ``fit``."""
        if self.b_dec_init != "zeros":
            raise SaeRdpError(
                f"b_dec_init={self.b_dec_init!r} needs sae-rdp train --model (train_saes / train_on_model); "
                f"{trainer} starts b_dec at zero"
            )
        if self.threshold_lr_scale != 1.0:
            raise SaeRdpError(
                f"threshold_lr_scale={self.threshold_lr_scale} needs sae-rdp train --model (train_saes / "
                f"train_on_model); {trainer} keeps SAELens's single learning rate"
            )
        # the same paths run SAELens's own fit(), which would estimate a PCA whitening for "standardize"
        if self.normalize_activations == "standardize":
            raise SaeRdpError(
                "normalize_activations='standardize' needs sae-rdp train --model (train_saes / train_on_model); "
                f"{trainer} runs SAELens's own normalisation"
            )

    @property
    def arch(self) -> Architecture:
        """The architecture's row of :mod:`sae_rdp_plugin.architectures`."""
        return get_architecture(self.architecture)

    @property
    def steps(self) -> int:
        """Optimizer steps: ``tokens // batch_size`` (SAETrainer stops once ``tokens`` rows are seen)."""
        return self.tokens // self.batch_size

    def sae_config_dict(self) -> dict[str, Any]:
        """The training-SAE config dict for SAELens (``TrainingSAEConfig.from_dict``)."""
        from sae_rdp_plugin.wsae.gamma import check_alpha

        a = self.arch
        cfg: dict[str, Any] = {
            "architecture": a.name,
            "d_in": int(self.d_in),
            "d_sae": int(self.d_sae),
            "device": self.device,
            "dtype": self.dtype,
            # ours -> SAELens's whitening path (train.lm sets the diagonal whitening before SAELens estimates one)
            "normalize_activations": (
                "covariance_whitening" if self.normalize_activations == "standardize" else self.normalize_activations
            ),
        }
        if a.uses_k:
            cfg["k"] = int(self.k) if a.k_is_integer else float(self.k)
        if a.sparsity_field is not None and self.sparsity_coefficient is not None:
            cfg[a.sparsity_field] = float(self.sparsity_coefficient)
        if a.weighted:
            cfg["alpha"] = check_alpha(1.0 if self.alpha is None else self.alpha)
            if self.gamma_path is not None:
                cfg["gamma_path"] = str(self.gamma_path)
            cfg["gamma_estimation_batches"] = int(self.gamma_estimation_batches)
            if self.variance_cap_quantile is not None:
                cfg["variance_cap_quantile"] = float(self.variance_cap_quantile)
        cfg.update(self.sae_kwargs)
        return cfg

    def trainer_config(self, checkpoint_path: str | None = None) -> Any:
        """SAELens's ``SAETrainerConfig`` for this run (``total_training_samples = tokens``, constant lr with
        the optional linear warm-up and decay, no wandb); checkpoints go to ``checkpoint_path`` (None:
        nowhere)."""
        from sae_lens.config import LoggingConfig, SAETrainerConfig

        return SAETrainerConfig(
            total_training_samples=int(self.tokens),
            train_batch_size_samples=int(self.batch_size),
            lr=self.lr,
            # explicit: SAETrainer asserts it is set; it only matters with a decay
            lr_end=(self.lr / 10 if self.lr_end is None else self.lr_end) if self.lr_decay_steps else self.lr,
            lr_scheduler_name="constant",
            lr_warm_up_steps=self.lr_warm_up_steps,
            lr_decay_steps=self.lr_decay_steps,
            device=self.device,
            autocast=self.autocast,
            dead_feature_window=self.dead_feature_window,
            feature_sampling_window=self.feature_sampling_window,
            n_checkpoints=self.n_checkpoints,
            checkpoint_path=checkpoint_path,
            save_final_checkpoint=False,
            logger=LoggingConfig(log_to_wandb=False),
            n_batches_for_norm_estimate=self.n_batches_for_norm_estimate,
        )


@dataclass
class SyntheticStreamConfig:
    """The deterministic synthetic stream of distributed training
    (:class:`sae_rdp_plugin.train.synthetic.ShardedSyntheticStream` of a SynthSAEBench ``SyntheticModel``)."""

    n_features: int = 512
    """Ground-truth features of the synthetic model."""
    data_seed: int = 1
    """Seed of the synthetic model and of its batches (TrainConfig.seed seeds the SAE)."""
    n_chunks: int = 8
    """Seeded chunks per global batch; the world size must divide it (rows per chunk: batch_size / n_chunks)."""

    def __post_init__(self) -> None:
        _positive_int("n_features", self.n_features)
        _positive_int("n_chunks", self.n_chunks)
        _seed("data_seed", self.data_seed, MAX_DATA_SEED)


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
    variance_cap_quantile: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """``TrainConfig(...).sae_config_dict()`` with keyword arguments; ``extra`` are further SAELens
    config fields (``sae_kwargs``); None means TrainConfig's default."""
    defaults = {"k": k, "gamma_estimation_batches": gamma_estimation_batches}
    return TrainConfig(
        architecture,
        d_in,
        d_sae,
        alpha=alpha,
        device=device,
        dtype=dtype,
        sparsity_coefficient=sparsity_coefficient,
        gamma_path=gamma_path,
        variance_cap_quantile=variance_cap_quantile,
        sae_kwargs=extra,
        **{name: v for name, v in defaults.items() if v is not None},
    ).sae_config_dict()
