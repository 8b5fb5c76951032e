"""Configuration of the ``rdp_audit`` SAEBench eval."""

from __future__ import annotations

from pydantic import Field
from pydantic.dataclasses import dataclass
from sae_bench.evals.base_eval_output import BaseEvalConfig


@dataclass
class RdpAuditEvalConfig(BaseEvalConfig):
    results_paths: list[str] = Field(
        default_factory=list,
        title="Results Paths",
        description="SAEBench result folders or files (any eval type, 2024 sae_bench_data / sparse-probing "
        "files, or CSV with release and sae_id columns) holding the rate, distortion and proxy metrics.",
    )
    rate_field: str = Field(
        default="sparsity.l0",
        title="Rate Field",
        description="Metric used as the rate R (a column name or unique suffix, e.g. sparsity.l0).",
    )
    distortion_field: str = Field(
        default="1-reconstruction_quality.explained_variance",
        title="Distortion Field",
        description="Metric used as the distortion D; '1-NAME' means 1 - NAME (default: 1 - explained variance).",
    )
    proxies: list[str] = Field(
        default_factory=list,
        title="Proxies",
        description="Proxies to audit as NAME, NAME:+ (higher = more polysemantic) or NAME:- (higher = more "
        "monosemantic). NAME alone must be in the orientation table. Empty: every metric with a known orientation.",
    )
    group_by: list[str] = Field(
        default_factory=lambda: ["model", "layer", "d_sae", "architecture"],
        title="Group By",
        description="Metadata columns defining a sweep (one audit per group); [] pools all selected SAEs.",
    )
    checkpoints: str = Field(
        default="exclude",
        title="Checkpoints",
        description="Which SAEs to audit by training-checkpoint status (an id ending in _step_<N>, or an old "
        "key under resid_post_layer_<L>_checkpoints/): 'exclude' (final SAEs), 'only' (checkpoints) or 'all'.",
    )
    include_checkpoints: bool = Field(
        default=False,
        title="Include Checkpoints",
        description="Also audit training checkpoints: the same as checkpoints='all' (kept for older configs).",
    )
    include_controls: bool = Field(
        default=True,
        title="Include Controls",
        description="With an empty proxy list, also audit reconstruction-side core metrics as controls.",
    )
    min_saes: int = Field(
        default=3, title="Minimum SAEs", description="Skip sweeps (and proxies) with fewer SAEs than this."
    )
    n_bootstrap: int = Field(
        default=2000, title="Bootstrap Resamples", description="Bootstrap resamples over SAEs for the intervals."
    )
    n_permutations: int = Field(
        default=2000, title="Permutations", description="Permutations of the proxy across SAEs for the p-values."
    )
    ci_level: float = Field(default=0.95, title="Interval Level", description="Bootstrap percentile interval level.")
    tie_weight: float = Field(
        default=0.5, title="Tie Weight", description="Weight of a proxy tie in a dominated pair (Definition 3 CHOICE)."
    )
    aggregation: str = Field(
        default="sum",
        title="Budget Rank Aggregation",
        description="'sum' (Definition 4 CHOICE) or 'max' of the rate and distortion ranks.",
    )
    alpha: float = Field(
        default=0.05, title="Alpha", description="Permutation p-value threshold for calling a proxy faithful/inverted."
    )
    make_plots: bool = Field(default=True, title="Make Plots", description="Write scatter plots (PNG) per sweep.")
    random_seed: int = Field(default=42, title="Random Seed", description="Seed of the bootstrap and permutations.")
    model_name: str = Field(
        default="", title="Model Name", description="Optional: keep only SAEs of this model ('' = all)."
    )
