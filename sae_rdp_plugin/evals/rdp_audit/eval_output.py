"""Output schema of the ``rdp_audit`` SAEBench eval: one file per sweep; metrics summarise the sweep,
``eval_result_details`` hold one entry per audited proxy."""

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

from sae_rdp_plugin.evals.rdp_audit.eval_config import RdpAuditEvalConfig

EVAL_TYPE_ID_RDP_AUDIT = "rdp_audit"


@dataclass
class RdpAuditSweepMetrics(BaseMetrics):
    n_saes: int = Field(
        title="SAEs", description="SAEs in the sweep (with rate and distortion)", json_schema_extra=DEFAULT_DISPLAY
    )
    n_dominated_pairs: int = Field(
        title="Dominated Pairs",
        description="Ordered pairs (i, j) with R_i <= R_j, D_i <= D_j, (R_i, D_i) != (R_j, D_j)",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    frac_pairs_dominated: float = Field(
        title="Fraction Comparable", description="Dominated pairs / (N choose 2): 0 = a pure Pareto front"
    )
    rate_min: float = Field(title="Rate Min", description="Smallest rate in the sweep")
    rate_max: float = Field(title="Rate Max", description="Largest rate in the sweep")
    distortion_min: float = Field(title="Distortion Min", description="Smallest distortion in the sweep")
    distortion_max: float = Field(title="Distortion Max", description="Largest distortion in the sweep")


@dataclass
class RdpAuditSummaryMetrics(BaseMetrics):
    n_proxies: int = Field(
        title="Proxies Audited", description="Proxies with a defined audit", json_schema_extra=DEFAULT_DISPLAY
    )
    n_undefined: int = Field(
        default=0, title="Undefined", description="Proxies with neither V nor rho defined (a pure Pareto front)"
    )
    n_faithful: int = Field(
        title="Faithful",
        description="Proxies with V < 0.5 and permutation p < alpha",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    n_inverted: int = Field(
        title="Inverted",
        description="Proxies with V > 0.5 and permutation p < alpha",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    n_no_clear_trend: int = Field(title="No Clear Trend", description="Proxies with permutation p >= alpha")
    median_violation_rate: float | None = Field(
        default=None, title="Median V", description="Median violation rate over audited proxies"
    )
    median_rank_correlation: float | None = Field(
        default=None, title="Median rho", description="Median rank correlation over audited proxies"
    )


@dataclass
class RdpAuditMetricCategories(BaseMetricCategories):
    sweep: RdpAuditSweepMetrics = Field(
        title="Sweep", description="The sweep's rate-distortion geometry", json_schema_extra=DEFAULT_DISPLAY
    )
    summary: RdpAuditSummaryMetrics = Field(
        title="Summary", description="Verdicts over proxies", json_schema_extra=DEFAULT_DISPLAY
    )


@dataclass
class RdpAuditResultDetail(BaseResultDetail):
    proxy: str = Field(title="Proxy", description="Metric column audited")
    orientation: int = Field(
        title="Orientation", description="Pi = orientation * value (+1: higher = more polysemantic)"
    )
    role: str = Field(title="Role", description="'proxy' (interpretability metric) or 'control' (reconstruction-side)")
    n_saes: int = Field(title="SAEs", description="SAEs of the sweep that have this proxy")
    n_missing: int = Field(title="Missing", description="SAEs of the sweep lacking this proxy (excluded)")
    n_dominated_pairs: int = Field(title="Dominated Pairs", description="Dominated pairs among those SAEs")
    violation_rate: float | None = Field(
        default=None,
        title="V",
        description="Definition 3: 0 faithful, 0.5 random, 1 inverted (None: no dominated pair)",
    )
    violation_rate_ci_low: float | None = Field(
        default=None, title="V CI Low", description="Bootstrap percentile interval (SAEs resampled)"
    )
    violation_rate_ci_high: float | None = Field(
        default=None, title="V CI High", description="Bootstrap percentile interval (SAEs resampled)"
    )
    rank_correlation: float | None = Field(
        default=None, title="rho", description="Definition 4: +1 faithful, -1 inverted (None if constant)"
    )
    rank_correlation_ci_low: float | None = Field(
        default=None, title="rho CI Low", description="Bootstrap percentile interval"
    )
    rank_correlation_ci_high: float | None = Field(
        default=None, title="rho CI High", description="Bootstrap percentile interval"
    )
    p_value_violation: float | None = Field(
        default=None, title="p (V)", description="Two-sided permutation p-value of V around 0.5"
    )
    p_value_rank_correlation: float | None = Field(
        default=None, title="p (rho)", description="Two-sided permutation p-value of rho around 0"
    )
    verdict: str = Field(
        title="Verdict",
        description=(
            "faithful / inverted / no clear trend (permutation p of V vs alpha; of rho when V is undefined) / undefined"
        ),
    )


@dataclass(config=ConfigDict(title="RDP Audit"))
class RdpAuditEvalOutput(BaseEvalOutput[RdpAuditEvalConfig, RdpAuditMetricCategories, RdpAuditResultDetail]):
    """
    Audits interpretability metrics against the Rate-Distortion-Polysemanticity ordering: across a sweep, an SAE
    under a tighter joint (rate, distortion) budget must not look more monosemantic. Reports the violation rate V
    and the rank correlation rho of each proxy with bootstrap intervals and permutation p-values.
    """

    eval_config: RdpAuditEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: RdpAuditMetricCategories
    eval_result_details: list[RdpAuditResultDetail] = Field(
        default_factory=list, title="Per-Proxy Audit", description="One entry per audited proxy."
    )
    eval_type_id: str = Field(default=EVAL_TYPE_ID_RDP_AUDIT)
