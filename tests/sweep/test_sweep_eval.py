"""rdp_synthetic SAEBench eval: SAEBench's own validators, exact values on a hand-built monosemantic
TopK SAE (closed forms of the toy theory), SAELens SyntheticModel input, and the sweep CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_rdp_plugin.evals.rdp_synthetic.eval_config import RDPSyntheticEvalConfig
from sae_rdp_plugin.evals.rdp_synthetic.eval_output import RDPSyntheticEvalOutput
from sae_rdp_plugin.evals.rdp_synthetic.main import arg_parser, run_eval
from sae_rdp_plugin.sweep.config import DGPSpec
from sae_rdp_plugin.sweep.data import build_dgp

SPEC = {"name": "pairs", "kind": "pairs", "m": 6, "d": 10, "rho": 0.5, "q": 0.1}


def _mono_topk(built, k):
    from sae_lens import TopKSAE, TopKSAEConfig

    sae = TopKSAE(TopKSAEConfig(d_in=built.d, d_sae=built.m, k=k, apply_b_dec_to_input=True))
    with torch.no_grad():
        sae.W_dec.copy_(built.concepts)
        sae.W_enc.copy_(built.concepts.T)
        sae.b_enc.fill_(-1e-3)  # inactive concepts give pre = +-1e-8 float noise: keep it out of L0
        sae.b_dec.zero_()
    return sae


def test_outputs_validate_and_match_closed_forms(tmp_path):
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_cli_interface, validate_eval_output_format_file

    built = build_dgp(DGPSpec(**SPEC))
    cfg = RDPSyntheticEvalConfig(dgp=dict(SPEC), n_samples=20000)
    saes = [("mono_k1", _mono_topk(built, 1)), ("mono_k2", _mono_topk(built, 2))]
    out = run_eval(cfg, saes, "cpu", str(tmp_path))
    assert len(out) == 2
    sizes = built.pmf.size_distribution()  # exact Pr[|S| = j]
    for path, res in out.items():
        validate_eval_output_format_file(path, RDPSyntheticEvalOutput)
        assert Path(path).name.endswith("_custom_sae_eval_results.json")
        k = 1 if "mono_k1" in path else 2
        j = np.arange(len(sizes))
        R_th = float((np.minimum(j, k) * sizes).sum())  # E min(|S|, K)
        D_th = float((np.maximum(j - k, 0) * sizes).sum())  # E (|S| - K)_+
        m = res["eval_result_metrics"]
        assert m["rate_distortion"]["rate"] == pytest.approx(R_th, abs=0.02)
        assert m["rate_distortion"]["distortion"] == pytest.approx(D_th, abs=0.02)
        assert m["rate_distortion"]["mono_line_gap"] == pytest.approx(0.0, abs=0.03)  # on the line R + D = E|S|
        assert m["polysemanticity"]["P_dec"] == pytest.approx(0.0, abs=1e-6)
        assert m["polysemanticity"]["P_ED"] == pytest.approx(0.0, abs=1e-6)
        assert m["ground_truth"]["mcc"] == pytest.approx(1.0, abs=1e-6)
        assert res["eval_type_id"] == "rdp_synthetic"
    validate_eval_cli_interface(arg_parser(), eval_config_cls=RDPSyntheticEvalConfig)
    # existing outputs are kept unless force_rerun
    assert run_eval(cfg, saes, "cpu", str(tmp_path)) == {}
    assert len(run_eval(cfg, saes[:1], "cpu", str(tmp_path), force_rerun=True)) == 1


def test_shape_mismatch_is_an_error(tmp_path):
    from sae_rdp_plugin.errors import SaeRdpError

    built = build_dgp(DGPSpec(**{**SPEC, "d": 12}))
    cfg = RDPSyntheticEvalConfig(dgp=dict(SPEC))
    with pytest.raises(SaeRdpError, match="shape mismatch"):
        run_eval(cfg, [("x", _mono_topk(built, 1))], "cpu", str(tmp_path))
    assert not list(tmp_path.glob("*.json"))


def test_saelens_synthetic_model(tmp_path):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.synthetic import SyntheticModel, SyntheticModelConfig

    model = SyntheticModel(SyntheticModelConfig(num_features=12, hidden_dim=8, bias=False, seed=1))
    model.save(tmp_path / "synth")
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=12))
    with torch.no_grad():
        sae.W_dec.copy_(model.feature_dict.feature_vectors)
        sae.W_enc.copy_(model.feature_dict.feature_vectors.T)
        sae.b_dec.zero_()
        sae.b_enc.fill_(-0.3)
    cfg = RDPSyntheticEvalConfig(synthetic_model_path=str(tmp_path / "synth"), n_samples=3000)
    out = run_eval(cfg, [("synth_sae", sae)], "cpu", str(tmp_path / "res"))
    res = next(iter(out.values()))["eval_result_metrics"]
    assert res["polysemanticity"]["P_dec"] == pytest.approx(0.0, abs=1e-5)
    assert res["ground_truth"]["mcc"] == pytest.approx(1.0, abs=1e-5)
    assert 0 < res["rate_distortion"]["rate"] < 12


def test_sweep_cli_run_eval_export(tmp_path):
    from sae_lens import SAE

    from sae_rdp_plugin.cli import main

    cfg = {
        "dgps": [SPEC],
        "architectures": ["topk"],
        "widths": [6],
        "ks": [1, 2],
        "seeds": [0],
        "steps": 40,
        "batch_size": 64,
        "lr": 3e-3,
        "eval_samples": 500,
        "checkpoint_every": 20,
    }
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    out = tmp_path / "sw"
    assert main(["sweep", "run", "--config", str(tmp_path / "c.json"), "--out", str(out), "--no-plots"]) == 0
    res = json.loads((out / "results.json").read_text())["members"]
    assert len(res) == 2
    assert main(["sweep", "eval", "--sweep", str(out), "--out", str(tmp_path / "ev"), "--n-samples", "500"]) == 0
    files = sorted((tmp_path / "ev").glob("*_eval_results.json"))
    assert len(files) == 2
    mid = res[0]["member_id"]
    assert main(["sweep", "export", "--sweep", str(out), "--member", mid, "--dest", str(tmp_path / "exp")]) == 0
    assert SAE.load_from_disk(tmp_path / "exp").cfg.d_sae == 6
    # a SAE folder evaluated against a DGP of a sweep config
    assert (
        main(
            [
                "sweep",
                "eval",
                "--sae-path",
                str(tmp_path / "exp"),
                "--config",
                str(tmp_path / "c.json"),
                "--out",
                str(tmp_path / "ev2"),
                "--n-samples",
                "500",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "ev2").glob("*.json"))) == 1
    assert main(["sweep", "eval", "--out", str(tmp_path / "ev3")]) == 2
