"""Configuration of the ``rdp_proxies`` SAEBench eval."""

from __future__ import annotations

from pydantic import Field
from pydantic.dataclasses import dataclass
from sae_bench.evals.base_eval_output import BaseEvalConfig

from sae_rdp_plugin.errors import SaeRdpError


@dataclass
class RDPProxiesEvalConfig(BaseEvalConfig):
    model_name: str = Field(
        default="",
        title="Model Name",
        description="Label of the language model the activations come from (metadata only: the eval reads "
        "cached activations, it runs no model).",
    )
    activations_path: str = Field(
        default="",
        title="Activations Path",
        description="A .pt or .safetensors file holding 'acts' [N, d_in] (held-out activations at the SAEs' "
        "hook) and 'token_ids' [N] (the token id at each position). Used by the CLI; run_eval takes tensors.",
    )
    sae_paths: list[str] = Field(
        default_factory=list,
        title="SAE Paths",
        description="Local SAELens SAE folders to evaluate (used by the CLI instead of the regex selection).",
    )
    top_m: int = Field(
        default=16,
        title="Top m",
        description="token_entropy uses the token ids at each latent's top_m highest (active) activations.",
    )
    chunk: int = Field(
        default=4096,
        title="Chunk",
        description="Tokens per forward pass, and decoder rows per block of the cosine matrix (memory bound).",
    )

    def check(self) -> RDPProxiesEvalConfig:
        """Raise SaeRdpError naming the first bad value; return self (pydantic checks only the types; not a
        ``__post_init__``, which pydantic would wrap in a multi-line ValidationError)."""
        for name in ("top_m", "chunk"):
            check_count(name, getattr(self, name))
        return self


def check_count(name: str, v: object) -> int:
    """``v`` if it is an integer >= 1 (not a bool), else SaeRdpError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise SaeRdpError(f"{name} must be an integer >= 1, got {v!r}")
    return v
