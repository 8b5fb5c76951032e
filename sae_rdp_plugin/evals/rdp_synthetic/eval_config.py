"""Configuration of the ``rdp_synthetic`` SAEBench eval."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field
from pydantic.dataclasses import dataclass
from sae_bench.evals.base_eval_output import BaseEvalConfig

from sae_rdp_plugin.errors import SaeRdpError

DEFAULT_DGP: dict[str, Any] = {"name": "pairs_rho0.5", "kind": "pairs", "m": 8, "d": 16, "rho": 0.5, "q": 0.1}


@dataclass
class RDPSyntheticEvalConfig(BaseEvalConfig):
    model_name: str = Field(
        default="synthetic",
        title="Model Name",
        description="Label of the synthetic model (the SAEs are evaluated on the DGP below, not on an LLM).",
    )
    dgp: dict[str, Any] = Field(
        default_factory=lambda: dict(DEFAULT_DGP),
        title="DGP",
        description="Data-generating process as a sae_rdp_plugin.sweep.config.DGPSpec dict (kinds: pairs, blocks, "
        "bernoulli, explicit, saelens). Ignored when dgp_path or synthetic_model_path is set.",
    )
    dgp_path: str = Field(
        default="",
        title="DGP Path",
        description="A JSON file holding a DGPSpec dict or a sweep config (then dgp_name picks the DGP).",
    )
    dgp_name: str = Field(default="", title="DGP Name", description="DGP of the sweep config in dgp_path ('' = first).")
    synthetic_model_path: str = Field(
        default="",
        title="Synthetic Model Path",
        description="A SAELens SyntheticModel folder (SyntheticModel.load_from_disk); its FeatureDictionary "
        "vectors are the concepts.",
    )
    sae_paths: list[str] = Field(
        default_factory=list,
        title="SAE Paths",
        description="Local SAELens SAE folders to evaluate (used by the CLI instead of the regex selection).",
    )
    n_samples: int = Field(default=20000, title="Samples", description="Evaluation samples drawn from the DGP.")
    batch_size: int = Field(default=4096, title="Batch Size", description="Samples per forward pass.")
    random_seed: int = Field(default=42, title="Random Seed", description="Seed of the evaluation sample.")
    reduction: str = Field(
        default="mean",
        title="P Reduction",
        description="CHOICE of Definition 1: mean (default), sum or max over live latents.",
    )
    use_abs: bool = Field(
        default=True, title="Use |cos|", description="CHOICE of Definition 1: |cos| (True) or cos^2 (False)."
    )
    zero_tol: float = Field(
        default=1e-8, title="Zero Tolerance", description="Rows with norm <= zero_tol count as dead (left out of P)."
    )

    def check(self) -> RDPSyntheticEvalConfig:
        """Raise SaeRdpError naming the first bad value; return self. (pydantic checks only the types;
        n_samples <= 0 would run and write a rate of -0.0 and a NaN. Not a ``__post_init__``: pydantic
        would wrap the error in a multi-line ValidationError.)"""
        for name in ("n_samples", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or v < 1:
                raise SaeRdpError(f"{name} must be an integer >= 1, got {v!r}")
        if self.reduction not in ("mean", "sum", "max"):
            raise SaeRdpError(f"reduction must be mean, sum or max, got {self.reduction!r}")
        if not (math.isfinite(self.zero_tol) and self.zero_tol >= 0):
            raise SaeRdpError(f"zero_tol must be finite and >= 0, got {self.zero_tol!r}")
        return self
