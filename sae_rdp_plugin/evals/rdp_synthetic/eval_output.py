"""Output schema of the ``rdp_synthetic`` SAEBench eval: one file per SAE."""

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

from sae_rdp_plugin.evals.rdp_synthetic.eval_config import RDPSyntheticEvalConfig

EVAL_TYPE_ID_RDP_SYNTHETIC = "rdp_synthetic"


@dataclass
class RDPRateDistortionMetrics(BaseMetrics):
    rate: float = Field(
        title="Rate", description="R = E||z||_0 (mean L0) on the DGP sample", json_schema_extra=DEFAULT_DISPLAY
    )
    distortion: float = Field(
        title="Distortion",
        description="D = E||x - x_hat||^2, summed over dimensions",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    explained_variance: float = Field(
        title="Explained Variance",
        description="1 - sum||x - x_hat||^2 / sum||x - mean x||^2",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    dead_latents: int = Field(title="Dead Latents", description="Latents never active on the sample")
    expected_size: float = Field(title="E|S|", description="Expected number of active concepts per sample (the DGP's)")
    mono_line_gap: float = Field(
        title="E|S| - R - D",
        description=(
            "Distance below the monosemantic conservation line R + D = E|S| "
            "(> 0: no monosemantic code reaches this point)"
        ),
    )


@dataclass
class RDPPolysemanticityMetrics(BaseMetrics):
    P_dec: float = Field(
        title="P (decoder)", description="Definition 1 on decoder rows", json_schema_extra=DEFAULT_DISPLAY
    )
    P_enc: float = Field(
        title="P (encoder)",
        description="Definition 1 on encoder rows (W_enc columns)",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    P_ED: float = Field(
        title="P (encoder-decoder)",
        description="1 - max_l |cos_enc| |cos_dec|, mean over live latents",
        json_schema_extra=DEFAULT_DISPLAY,
    )


@dataclass
class RDPGroundTruthMetrics(BaseMetrics):
    mcc: float = Field(
        title="MCC",
        description="SAELens mean_correlation_coefficient (Hungarian |cos| matching)",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    uniqueness: float = Field(title="Uniqueness", description="SAELens feature_uniqueness")
    precision: float = Field(title="Precision", description="SAELens latents-as-detectors mean precision")
    recall: float = Field(title="Recall", description="SAELens latents-as-detectors mean recall")
    f1: float = Field(title="F1", description="SAELens latents-as-detectors mean F1")


@dataclass
class RDPSyntheticMetricCategories(BaseMetricCategories):
    rate_distortion: RDPRateDistortionMetrics = Field(
        title="Rate and Distortion",
        description="Rate, distortion and reconstruction on the DGP",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    polysemanticity: RDPPolysemanticityMetrics = Field(
        title="Polysemanticity",
        description="Polysemanticity against the DGP's concepts",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    ground_truth: RDPGroundTruthMetrics = Field(
        title="Ground Truth", description="SAELens synthetic ground-truth metrics", json_schema_extra=DEFAULT_DISPLAY
    )


@dataclass
class RDPSyntheticResultDetail(BaseResultDetail):
    pass


@dataclass(config=ConfigDict(title="RDP Synthetic"))
class RDPSyntheticEvalOutput(
    BaseEvalOutput[RDPSyntheticEvalConfig, RDPSyntheticMetricCategories, RDPSyntheticResultDetail]
):
    """
    Rate, distortion and polysemanticity of an SAE on a synthetic model with known concepts (sae-rdp):
    R = E L0, D = E||x - x_hat||^2, P = mean over live latents of 1 - max_l |cos(w_j, v_l)| for the
    decoder, the encoder and both jointly, plus SAELens's MCC / uniqueness / precision / recall / F1.
    """

    eval_config: RDPSyntheticEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: RDPSyntheticMetricCategories
    eval_result_details: list[RDPSyntheticResultDetail] = Field(
        default_factory=list, title="Details", description="Unused (one file per SAE holds its metrics)."
    )
    eval_type_id: str = Field(default=EVAL_TYPE_ID_RDP_SYNTHETIC)
