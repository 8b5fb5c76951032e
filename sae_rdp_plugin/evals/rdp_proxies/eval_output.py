"""Output schema of the ``rdp_proxies`` SAEBench eval: one file per SAE."""

from __future__ import annotations

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass
from sae_bench.evals.base_eval_output import (
    DEFAULT_DISPLAY,
    BaseEvalOutput,
    BaseMetricCategories,
    BaseMetrics,
    BaseResultDetail,
)

from sae_rdp_plugin.evals.rdp_proxies.eval_config import RDPProxiesEvalConfig

EVAL_TYPE_ID_RDP_PROXIES = "rdp_proxies"


@dataclass
class RDPProxiesMetrics(BaseMetrics):
    token_entropy: float = Field(
        title="Token Entropy",
        description=(
            "Mean over latents active on the sample of the entropy (nats) of the token ids at the latent's "
            "top_m highest activations (0 = fires on one token type; higher = more polysemantic). NaN if no "
            "latent is active."
        ),
        json_schema_extra=DEFAULT_DISPLAY,
    )
    decoder_max_cos: float = Field(
        title="Decoder Max |cos|",
        description=(
            "Mean over latents with a nonzero decoder row of max_{j != i} |cos(W_dec_i, W_dec_j)| (higher = "
            "more entangled). NaN if no decoder row is nonzero or d_sae = 1."
        ),
        json_schema_extra=DEFAULT_DISPLAY,
    )


@dataclass
class RDPProxiesSampleMetrics(BaseMetrics):
    l0: float = Field(title="L0", description="Mean number of active latents (z > 0) per token")
    dead_fraction: float = Field(title="Dead Fraction", description="Fraction of latents never active on the sample")
    n_tokens: int = Field(title="Tokens", description="Held-out tokens evaluated")
    top_m: int = Field(title="Top m", description="Top activations per latent used by token_entropy")


@dataclass
class RDPProxiesMetricCategories(BaseMetricCategories):
    proxies: RDPProxiesMetrics = Field(
        title="Proxies",
        description="Ground-truth-free polysemanticity proxies (higher = more polysemantic)",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    sample: RDPProxiesSampleMetrics = Field(
        title="Sample",
        description="Sparsity on the held-out sample and the settings the proxies were measured with",
        json_schema_extra=DEFAULT_DISPLAY,
    )


@dataclass
class RDPProxiesResultDetail(BaseResultDetail):
    pass


@dataclass(config=ConfigDict(title="RDP Proxies"))
class RDPProxiesEvalOutput(BaseEvalOutput[RDPProxiesEvalConfig, RDPProxiesMetricCategories, RDPProxiesResultDetail]):
    """
    Ground-truth-free polysemanticity proxies of an SAE on held-out language-model activations (sae-rdp):
    the entropy of the token ids at each latent's top activations and the decoder rows' max |cos| with
    another row, plus L0 and the dead fraction on the sample.
    """

    eval_config: RDPProxiesEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: RDPProxiesMetricCategories
    eval_result_details: list[RDPProxiesResultDetail] = Field(
        default_factory=list, title="Details", description="Unused (one file per SAE holds its metrics)."
    )
    eval_type_id: str = Field(default=EVAL_TYPE_ID_RDP_PROXIES)
