"""Weighted SAEs (WSAE) as SAELens training architectures.

Four training architectures, each a subclass of SAELens's own training SAE, so that with alpha = 0
they compute exactly SAELens's loss and gradients:

==================== ============================ =========================== =================
architecture         subclass of                  extra terms (weighted?)     saved for inference as
==================== ============================ =========================== =================
weighted_standard    StandardTrainingSAE          L1 penalty (no recon.)      standard
weighted_topk        TopKTrainingSAE              dead-latent aux loss (yes)  topk
weighted_jumprelu    JumpReLUTrainingSAE          L0 / pre-act (no recon.)    jumprelu
weighted_batchtopk   BatchTopKTrainingSAE         dead-latent aux loss (yes)  jumprelu
==================== ============================ =========================== =================

Loss (THEORY.md section 7): every squared reconstruction error the architecture trains on is weighted
per input dimension by gamma_i^2,

    mse_loss = mean_batch sum_i gamma_i^2 (x_i - x_hat_i)^2 = E || Gamma (x - x_hat) ||^2,

including TopK/BatchTopK's dead-latent auxiliary loss  E || Gamma (e - W_dec^T z_aux) ||^2  with
e = x - x_hat (the residual the dead latents learn to predict). Attention ``hook_z`` activations, which a
training SAE with hook_z reshaping on receives as (..., n_heads, d_head), are weighted by gamma in SAELens's
flattening order i = h * d_head + j. The sparsity penalties (L1, L0, pre-activation) contain no reconstruction
and are unchanged. gamma_i = s_i^alpha with s_i the
activation variance of dimension i (see :mod:`sae_rdp_plugin.wsae.gamma` for the normalization CHOICE and
the zero-variance and massive-activation rules).

Where gamma comes from, in order: (1) ``sae.set_gamma(...)`` / ``sae.set_gamma_from_stats(...)`` /
:func:`estimate_gamma` (a streaming float64 pass over an activation iterator such as SAELens's
ActivationsStore), or a training checkpoint (``load_weights_from_checkpoint`` and, with the plugin imported,
SAELens's ``TrainingSAE.load_from_disk`` read the checkpoint's gamma.safetensors); (2) the config field
``gamma_path`` (a gamma file or a run directory); (3) if none of these, alpha = 0 needs no statistics (gamma =
1), otherwise the first training batch is used to estimate the variance, with a warning (SAELens's runner
gives the SAE no access to the activation store before training;
:func:`sae_rdp_plugin.train.saelens.train_language_model` does the full ``gamma_estimation_batches`` pass
first).

gamma is a non-persistent buffer: it never enters ``sae_weights.safetensors``. ``save_model``
(checkpoints) and ``save_inference_model`` (final SAE) write ``gamma.safetensors`` next to the weights
and record it in the cfg.json metadata. The inference cfg.json names the stock architecture, so the
saved SAE loads with stock ``SAE.load_from_disk`` in a process that never imported this plugin.

Relation to SAELens's ``normalize_activations="covariance_whitening"``: that option trains on whitened
activations, i.e. with the full Mahalanobis loss (x - x_hat)^T Sigma^{-1} (x - x_hat) (and whitened
encoder inputs); a diagonal WSAE with gamma = s^(-1/2) (alpha = -1/2, which this plugin does not
allow, as the paper's alpha >= 0 up-weights high-variance dimensions) would be its loss-only diagonal
cousin.
"""

from __future__ import annotations

import difflib
import warnings
from contextvars import ContextVar
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import (
    JumpReLUSAE,
    JumpReLUSAEConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
)
from sae_lens.saes.sae import SAEConfig, TrainStepInput, TrainStepOutput, mse_loss
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import (
    TopKSAE,
    TopKSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    act_times_W_dec,
    calculate_topk_aux_acts,
)

from sae_rdp_plugin.architectures import get_architecture
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.wsae.gamma import (
    GAMMA_FILENAME,
    ActivationStats,
    check_alpha,
    check_gamma,
    check_normalization,
    check_variance_cap_quantile,
    estimate_activation_stats,
    gamma_from_variance,
    is_hook_z_shape,
    load_gamma_file,
    normalize_gamma,
    save_gamma_file,
)

# --------------------------------------------------------------------------------------- configs


@dataclass(kw_only=True)
class WeightedConfigMixin:
    """Fields shared by the ``weighted_*`` training configs.

    Args:
        alpha: exponent in gamma_i = s_i^alpha (s_i = activation variance of input dim i); >= 0.
            alpha = 0 is the ordinary SAE. The paper uses 0.5 and 1.
        gamma_normalization: CHOICE "mean_square" (default): gamma /= sqrt(mean(gamma^2)), so the
            weighted loss has the scale of the unweighted one; "none": gamma_i = s_i^alpha as is.
        gamma_path: a gamma.safetensors file (or a directory holding one) to read gamma from. If the
            file holds the variance, gamma is recomputed from it with this config's alpha,
            normalization, floor and cap; otherwise its gamma is used (normalised per gamma_normalization).
        gamma_estimation_batches: batches in the streaming variance pass done before training.
        variance_floor: zero-variance rule: s_i <- max(s_i, variance_floor * mean(s)) before the power.
        variance_cap_quantile: massive-activation rule, q in (0, 1] or None (no cap, the default): after the
            floor, s_i <- min(s_i, Q_q(s)), the q-quantile of the d_in variances, before the power. Without it
            a dimension holding most of the variance gets gamma ~ its variance^alpha and the loss
            reconstructs that dimension only; q = 1 caps at the maximum (no change).
    """

    alpha: float = 1.0
    gamma_normalization: str = "mean_square"
    gamma_path: str | None = None
    gamma_estimation_batches: int = 100
    variance_floor: float = 1e-6
    variance_cap_quantile: float | None = None

    _inference_config_class: ClassVar[type[SAEConfig]]

    def __post_init__(self) -> None:
        self.alpha = check_alpha(self.alpha)
        check_normalization(self.gamma_normalization)
        if self.gamma_estimation_batches <= 0:
            raise SaeRdpError(f"gamma_estimation_batches must be positive, got {self.gamma_estimation_batches}")
        if not (self.variance_floor >= 0):
            raise SaeRdpError(f"variance_floor must be >= 0, got {self.variance_floor}")
        self.variance_cap_quantile = check_variance_cap_quantile(self.variance_cap_quantile)
        if getattr(self, "normalize_activations", "none") == "covariance_whitening":
            raise SaeRdpError(
                "weighted_* architectures do not support normalize_activations='covariance_whitening' "
                "(gamma is estimated on unwhitened activations; whitening already reweights the loss)"
            )
        super().__post_init__()  # type: ignore[misc]

    def get_inference_config_class(self) -> type[SAEConfig]:
        return self._inference_config_class


@dataclass(kw_only=True)
class WeightedStandardTrainingSAEConfig(WeightedConfigMixin, StandardTrainingSAEConfig):
    """SAELens's StandardTrainingSAEConfig (ReLU + L1) plus the WSAE fields."""

    _inference_config_class: ClassVar[type[SAEConfig]] = StandardSAEConfig

    @classmethod
    def architecture(cls) -> str:
        return "weighted_standard"


@dataclass(kw_only=True)
class WeightedTopKTrainingSAEConfig(WeightedConfigMixin, TopKTrainingSAEConfig):
    """SAELens's TopKTrainingSAEConfig plus the WSAE fields."""

    _inference_config_class: ClassVar[type[SAEConfig]] = TopKSAEConfig

    @classmethod
    def architecture(cls) -> str:
        return "weighted_topk"


@dataclass(kw_only=True)
class WeightedJumpReLUTrainingSAEConfig(WeightedConfigMixin, JumpReLUTrainingSAEConfig):
    """SAELens's JumpReLUTrainingSAEConfig plus the WSAE fields."""

    _inference_config_class: ClassVar[type[SAEConfig]] = JumpReLUSAEConfig

    @classmethod
    def architecture(cls) -> str:
        return "weighted_jumprelu"


@dataclass(kw_only=True)
class WeightedBatchTopKTrainingSAEConfig(WeightedConfigMixin, BatchTopKTrainingSAEConfig):
    """SAELens's BatchTopKTrainingSAEConfig plus the WSAE fields (saved as a JumpReLU SAE)."""

    _inference_config_class: ClassVar[type[SAEConfig]] = JumpReLUSAEConfig

    @classmethod
    def architecture(cls) -> str:
        return "weighted_batchtopk"


# ------------------------------------------------------------------------------------ SAE mixin


class WeightedSAEMixin:
    """Adds the gamma buffer, the weighted reconstruction loss and gamma saving/loading."""

    gamma: torch.Tensor
    cfg: Any

    def _init_gamma(self) -> None:
        dev = self.W_dec.device  # type: ignore[attr-defined]
        if dev.type == "meta":  # SAELens's loaders build on "meta" first; buffers must be real
            dev = torch.device("cpu")
        self.register_buffer(  # type: ignore[attr-defined]
            "gamma",
            torch.ones(self.cfg.d_in, dtype=self.W_dec.dtype, device=dev),
            persistent=False,  # type: ignore[attr-defined]
        )
        self._gamma64: torch.Tensor = torch.ones(self.cfg.d_in, dtype=torch.float64)
        self._gamma_stats: ActivationStats | None = None
        self._gamma_source: str | None = None
        self.mse_loss_fn = self._weighted_mse_loss
        if self.cfg.alpha == 0:
            self._gamma_source = "alpha=0 (uniform)"
        if self.cfg.gamma_path:
            self.load_gamma(self.cfg.gamma_path)

    # ---- gamma management
    @property
    def gamma_is_set(self) -> bool:
        return self._gamma_source is not None

    @property
    def gamma_float64(self) -> torch.Tensor:
        """The gamma in use, as the float64 master copy (what gets saved)."""
        return self._gamma64.clone()

    @torch.no_grad()
    def _install_gamma(self, gamma64: torch.Tensor, source: str, stats: ActivationStats | None) -> None:
        g = check_gamma(gamma64, self.cfg.d_in)
        self._gamma64 = g
        self._gamma_stats = stats
        self._gamma_source = source
        self.gamma.copy_(g.to(device=self.gamma.device, dtype=self.gamma.dtype))

    def set_gamma(self, gamma: torch.Tensor | list[float], normalize: bool = True, source: str = "explicit") -> None:
        """Use an explicit gamma (length d_in, >= 0); normalised per cfg.gamma_normalization unless
        ``normalize=False``."""
        g = check_gamma(gamma, self.cfg.d_in)
        if normalize:
            g = normalize_gamma(g, self.cfg.gamma_normalization)
        self._install_gamma(g, source, None)

    def set_gamma_from_stats(self, stats: ActivationStats) -> None:
        """gamma = gamma_from_variance(stats.variance, cfg.alpha, cfg.gamma_normalization, cfg.variance_floor,
        cfg.variance_cap_quantile)."""
        if stats.variance.shape != (self.cfg.d_in,):
            raise SaeRdpError(f"variance has shape {tuple(stats.variance.shape)}, expected ({self.cfg.d_in},)")
        c = self.cfg
        g = gamma_from_variance(
            stats.variance, c.alpha, c.gamma_normalization, c.variance_floor, c.variance_cap_quantile
        )
        self._install_gamma(g, f"{stats.source}: variance over {stats.n_samples} samples", stats)

    def load_gamma(self, path: str | Path, verbatim: bool = False) -> None:
        """Read gamma from a gamma file or a directory holding one. ``verbatim=True`` (checkpoint resume)
        uses the stored gamma bit for bit; otherwise a stored variance is re-powered with this config."""
        gf = load_gamma_file(path, self.cfg.d_in)
        if verbatim or gf.stats is None:
            if verbatim:
                self._install_gamma(gf.gamma, gf.metadata.get("source", "file"), gf.stats)
            else:
                self.set_gamma(gf.gamma, normalize=True, source=f"file {path}")
        else:
            self.set_gamma_from_stats(gf.stats)

    def estimate_gamma(self, batches: Any, n_batches: int | None = None, progress: bool = False) -> ActivationStats:
        """Streaming float64 variance pass over ``n_batches`` (default cfg.gamma_estimation_batches)."""
        stats = estimate_activation_stats(
            batches, self.cfg.d_in, n_batches or self.cfg.gamma_estimation_batches, progress=progress
        )
        self.set_gamma_from_stats(stats)
        return stats

    def save_gamma(self, directory: str | Path) -> Path:
        return save_gamma_file(
            Path(directory) / GAMMA_FILENAME,
            self._gamma64,
            alpha=self.cfg.alpha,
            normalization=self.cfg.gamma_normalization,
            variance_floor=self.cfg.variance_floor,
            variance_cap_quantile=self.cfg.variance_cap_quantile,
            stats=self._gamma_stats,
            source=self._gamma_source or "unset",
        )

    def _ensure_gamma(self, sae_in: torch.Tensor) -> None:
        if self.gamma_is_set:
            return
        warnings.warn(
            f"{self.cfg.architecture()}: no gamma given (set_gamma / estimate_gamma / gamma_path); estimating "
            "the activation variance from the first training batch only "
            f"({sae_in.numel() // self.cfg.d_in} samples)",
            stacklevel=3,
        )
        stats = estimate_activation_stats([sae_in], self.cfg.d_in, 1)
        stats.source = "first training batch"
        self.set_gamma_from_stats(stats)

    # ---- loss
    def _gamma_sq(self, like: torch.Tensor) -> torch.Tensor:
        """gamma_i^2 shaped to broadcast against ``like``: (d_in,), or (n_heads, d_head) for hook_z
        activations, which a training SAE with hook_z reshaping on receives and returns as
        (..., n_heads, d_head); gamma is indexed in SAELens's flattening order i = h * d_head + j."""
        g2 = self.gamma.to(device=like.device, dtype=like.dtype).pow(2)
        if is_hook_z_shape(like.shape, self.cfg.d_in):
            return g2.reshape(like.shape[-2], like.shape[-1])
        return g2

    def _weighted_mse_loss(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-element gamma_i^2 (preds_i - target_i)^2 (SAELens's mse_loss times gamma^2); for hook_z
        activations (..., n_heads, d_head), gamma_{h * d_head + j}^2 (preds_hj - target_hj)^2."""
        per = mse_loss(preds, target)
        return per * self._gamma_sq(per)

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        x = step_input.sae_in
        self._ensure_gamma(x)  # a first-batch estimate refuses NaN / Inf itself
        # once gamma is set, the gamma-weighted loss of a NaN / Inf row is NaN and training would go on silently
        if not bool(torch.isfinite(x).all()):
            raise SaeRdpError(
                f"{self.cfg.architecture()}: NaN or Inf in the training activations at step "
                f"{step_input.n_training_steps} (batch of shape {tuple(x.shape)})"
            )
        return super().training_forward_pass(step_input)  # type: ignore[misc]

    # ---- saving / loading
    def _record_gamma_metadata(self) -> None:
        md = self.cfg.metadata
        md.wsae_gamma_file = GAMMA_FILENAME
        md.wsae_gamma_source = self._gamma_source or "unset"
        md.wsae_alpha = self.cfg.alpha

    def save_model(self, path: str | Path) -> tuple[Path, Path]:
        self._record_gamma_metadata()
        out = super().save_model(path)  # type: ignore[misc]
        self.save_gamma(path)
        return out

    def save_inference_model(self, path: str | Path) -> tuple[Path, Path]:
        self._record_gamma_metadata()
        out = super().save_inference_model(path)  # type: ignore[misc]
        self.save_gamma(path)
        return out

    def load_weights_from_checkpoint(self, checkpoint_path: Path | str) -> None:
        super().load_weights_from_checkpoint(checkpoint_path)  # type: ignore[misc]
        if not self.load_checkpoint_gamma(checkpoint_path) and self.cfg.alpha != 0:
            raise SaeRdpError(
                f"checkpoint {checkpoint_path} has no {GAMMA_FILENAME}: cannot resume with the same gamma"
            )

    def load_checkpoint_gamma(self, checkpoint_path: Path | str) -> bool:
        """Install the gamma saved next to a checkpoint's weights bit for bit (``SAE.load_from_disk`` and
        ``TrainingSAE.load_from_disk`` call this); False if the folder has no gamma file."""
        gpath = Path(checkpoint_path) / GAMMA_FILENAME
        if not gpath.exists():
            return False
        self.load_gamma(gpath, verbatim=True)
        return True


class WeightedTopKAuxMixin:
    """TopK / BatchTopK dead-latent auxiliary loss with the same gamma^2 weighting.

    Identical to SAELens's TopKTrainingSAE.calculate_topk_aux_loss except for the factor gamma_i^2
    inside the squared error (at gamma = 1 the two agree bit for bit; tests check this)."""

    def calculate_topk_aux_loss(
        self,
        sae_in: torch.Tensor,
        sae_out: torch.Tensor,
        hidden_pre: torch.Tensor,
        dead_neuron_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        if dead_neuron_mask is None or (num_dead := int(dead_neuron_mask.sum())) == 0:
            return sae_out.new_tensor(0.0)
        if self.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):  # type: ignore[attr-defined]
            raise ValueError(
                "TopK auxiliary loss does not support activation normalization "
                f"(normalize_activations={self.cfg.normalize_activations!r})."  # type: ignore[attr-defined]
            )
        residual = (sae_in - sae_out).detach()
        k_aux = sae_in.shape[-1] // 2
        scale = min(num_dead / k_aux, 1.0)
        k_aux = min(k_aux, num_dead)
        auxk_acts = calculate_topk_aux_acts(k_aux=k_aux, hidden_pre=hidden_pre, dead_neuron_mask=dead_neuron_mask)
        recons = act_times_W_dec(auxk_acts, self.W_dec, self.cfg.rescale_acts_by_decoder_norm)  # type: ignore[attr-defined]
        recons = self.reshape_fn_out(recons, self.d_head)  # type: ignore[attr-defined]
        sq = (recons - residual).pow(2)
        auxk_loss = (sq * self._gamma_sq(sq)).sum(dim=-1).mean()  # type: ignore[attr-defined]
        return self.cfg.aux_loss_coefficient * scale * auxk_loss  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------ SAE classes


class WeightedStandardTrainingSAE(WeightedSAEMixin, StandardTrainingSAE):
    """ReLU + L1 SAE trained on E||Gamma(x - x_hat)||^2 + l1 (SAELens's StandardTrainingSAE otherwise)."""

    def __init__(self, cfg: WeightedStandardTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self._init_gamma()


class WeightedTopKTrainingSAE(WeightedSAEMixin, WeightedTopKAuxMixin, TopKTrainingSAE):
    """TopK SAE trained on E||Gamma(x - x_hat)||^2 + weighted dead-latent aux loss."""

    def __init__(self, cfg: WeightedTopKTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self._init_gamma()


class WeightedJumpReLUTrainingSAE(WeightedSAEMixin, JumpReLUTrainingSAE):
    """JumpReLU SAE trained on E||Gamma(x - x_hat)||^2 + L0 (+ pre-activation) penalty."""

    def __init__(self, cfg: WeightedJumpReLUTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self._init_gamma()


class WeightedBatchTopKTrainingSAE(WeightedSAEMixin, WeightedTopKAuxMixin, BatchTopKTrainingSAE):
    """BatchTopK SAE trained on E||Gamma(x - x_hat)||^2 + weighted dead-latent aux loss."""

    def __init__(self, cfg: WeightedBatchTopKTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self._init_gamma()


#: (training SAE class, config class) of each weighted architecture, keyed by the config's own name
#: (tests/test_architectures.py checks the keys are sae_rdp_plugin.architectures.WEIGHTED_NAMES)
WEIGHTED_ARCHITECTURES: dict[str, tuple[type, type]] = {
    cfg_cls.architecture(): (sae_cls, cfg_cls)
    for sae_cls, cfg_cls in (
        (WeightedStandardTrainingSAE, WeightedStandardTrainingSAEConfig),
        (WeightedTopKTrainingSAE, WeightedTopKTrainingSAEConfig),
        (WeightedJumpReLUTrainingSAE, WeightedJumpReLUTrainingSAEConfig),
        (WeightedBatchTopKTrainingSAE, WeightedBatchTopKTrainingSAEConfig),
    )
}


@dataclass
class WeightedBatchTopKCheckpointConfig(JumpReLUSAEConfig):
    """Inference config of a ``weighted_batchtopk`` training checkpoint (a JumpReLU SAE, see below)."""

    rescale_acts_by_decoder_norm: bool = False

    @classmethod
    def architecture(cls) -> str:
        return "weighted_batchtopk"


class WeightedBatchTopKCheckpointSAE(JumpReLUSAE):
    """A ``weighted_batchtopk`` training checkpoint loaded for inference: the JumpReLU SAE that
    ``save_inference_model`` would write, as SAELens's TopK/BatchTopK ``process_state_dict_for_saving_inference``
    does: with rescale_acts_by_decoder_norm, b_enc_j *= n_j, W_enc[:, j] *= n_j, W_dec[j] /= n_j
    (n_j = ||W_dec[j]||); then threshold_j = the learned global BatchTopK threshold for every latent j."""

    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        if "topk_threshold" in state_dict:
            if self.cfg.rescale_acts_by_decoder_norm:
                n = state_dict["W_dec"].norm(dim=-1).clamp(min=1e-8)
                state_dict["b_enc"] = state_dict["b_enc"] * n
                state_dict["W_enc"] = state_dict["W_enc"] * n.unsqueeze(0)
                state_dict["W_dec"] = state_dict["W_dec"] / n.unsqueeze(1)
            t = state_dict.pop("topk_threshold").item()
            state_dict["threshold"] = torch.ones_like(state_dict["b_enc"]) * t
        super().process_state_dict_for_loading(state_dict)


#: (inference SAE class, config class) that SAELens's ``SAE.load_from_disk`` builds from a ``weighted_*``
#: training checkpoint: the stock inference class the final SAE is saved as (gamma is a training-only weight)
CHECKPOINT_INFERENCE_CLASSES: dict[str, tuple[type, type]] = {
    "weighted_standard": (StandardSAE, StandardSAEConfig),
    "weighted_topk": (TopKSAE, TopKSAEConfig),
    "weighted_jumprelu": (JumpReLUSAE, JumpReLUSAEConfig),
    "weighted_batchtopk": (WeightedBatchTopKCheckpointSAE, WeightedBatchTopKCheckpointConfig),
}


def estimate_gamma(
    sae: WeightedSAEMixin, batches: Any, n_batches: int | None = None, progress: bool = False
) -> ActivationStats:
    """Estimate and install gamma on a weighted training SAE from an iterator of activation batches."""
    if not isinstance(sae, WeightedSAEMixin):
        raise SaeRdpError(
            f"{type(sae).__name__} is not a weighted SAE (architectures: {', '.join(WEIGHTED_ARCHITECTURES)})"
        )
    return sae.estimate_gamma(batches, n_batches, progress=progress)


def register_with_saelens() -> None:
    """Add the ``weighted_*`` classes to SAELens's registries (idempotent).

    Training registry: the weighted training classes. Inference registry (``SAE.load_from_disk``):
    :data:`CHECKPOINT_INFERENCE_CLASSES`, as only a training checkpoint's cfg.json names ``weighted_*`` (a
    final SAE is saved under the stock name). Also wraps two SAELens entry points once
    (:func:`_patch_saelens`).
    Raises if another package already registered one of the names with different classes."""
    from sae_lens.registry import (
        SAE_CLASS_REGISTRY,
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_class,
        register_sae_training_class,
    )

    for name, (sae_cls, cfg_cls) in WEIGHTED_ARCHITECTURES.items():
        for registry, register, classes in (
            (SAE_TRAINING_CLASS_REGISTRY, register_sae_training_class, (sae_cls, cfg_cls)),
            (SAE_CLASS_REGISTRY, register_sae_class, CHECKPOINT_INFERENCE_CLASSES[name]),
        ):
            existing = registry.get(name)
            if existing is None:
                register(name, *classes)
            elif existing != classes:
                raise SaeRdpError(
                    f"SAELens architecture {name!r} is already registered by another package ({existing[0].__module__})"
                )
    _patch_saelens()


def check_config_keys(config_dict: dict[str, Any]) -> None:
    """Refuse a ``weighted_*`` config dict with a key that is no field of its config class (SAELens would
    drop it silently, e.g. ``aplha`` -> the default alpha 1), naming the closest valid key; refuse a
    ``weighted_*`` name no registry knows, listing the valid names. Other dicts are SAELens's business and
    keep SAELens's behaviour (a KeyError for an unknown architecture), so importing the plugin changes
    nothing for them."""
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    name = config_dict.get("architecture")
    if name is None:
        return
    if name not in SAE_TRAINING_CLASS_REGISTRY and str(name).startswith("weighted"):
        get_architecture(name)  # raises, listing the valid names
    if name not in WEIGHTED_ARCHITECTURES:
        return
    valid = {f.name for f in fields(WEIGHTED_ARCHITECTURES[name][1])} | {"architecture", "metadata"}
    for key in config_dict:
        if key not in valid:
            close = difflib.get_close_matches(str(key), sorted(valid), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(valid))}"
            raise SaeRdpError(f"unknown config key {key!r} for {name}; {hint}")


_loading_from_disk: ContextVar[bool] = ContextVar("sae_rdp_loading_from_disk", default=False)


def _patch_saelens() -> None:
    """Wrap ``TrainingSAEConfig.from_dict`` (check the keys, :func:`check_config_keys`) and
    ``SAE.load_from_disk`` (a weighted SAE also reads the folder's gamma.safetensors: SAELens's loader
    hands the SAE its cfg and weights, never the folder). Both wrappers call SAELens's own function."""
    from sae_lens.saes.sae import SAE, TrainingSAEConfig

    if getattr(TrainingSAEConfig.from_dict, "_sae_rdp_wrapped", False):
        return
    from_dict, load_from_disk = TrainingSAEConfig.from_dict.__func__, SAE.load_from_disk.__func__

    def checked_from_dict(cls: type, config_dict: dict[str, Any]) -> Any:
        if not _loading_from_disk.get():  # a saved cfg.json may hold keys of older versions: only typed dicts
            check_config_keys(config_dict)
        return from_dict(cls, config_dict)

    def load_with_gamma(cls: type, path: str | Path, *args: Any, **kwargs: Any) -> Any:
        token = _loading_from_disk.set(True)
        try:
            sae = load_from_disk(cls, path, *args, **kwargs)
        finally:
            _loading_from_disk.reset(token)
        if isinstance(sae, WeightedSAEMixin):
            sae.load_checkpoint_gamma(path)
        return sae

    for fn, orig in ((checked_from_dict, from_dict), (load_with_gamma, load_from_disk)):
        fn.__doc__, fn._sae_rdp_wrapped = orig.__doc__, True  # type: ignore[attr-defined]
    TrainingSAEConfig.from_dict = classmethod(checked_from_dict)  # type: ignore[method-assign,assignment]
    SAE.load_from_disk = classmethod(load_with_gamma)  # type: ignore[method-assign,assignment]


# Importing this module registers its classes: whichever of sae_lens and this module is imported first,
# the registry sees the weighted_* names once both exist (the import hook in
# sae_rdp_plugin.wsae.registry imports this module after sae_lens).
register_with_saelens()
