"""Identifiability toy model: data, activations, metrics, the gap identity, vectorised training."""

from __future__ import annotations

import json

import pytest
import torch

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.experiments.identifiability import (
    ToyConfig,
    apply_activation,
    evaluate_sae,
    feats_per_latent,
    gap_at_ground_truth,
    input_gamma,
    run_grid,
    sample_features,
    train_tied_saes,
)


def test_sample_features_distribution():
    g = torch.Generator().manual_seed(0)
    S = torch.tensor([0.2, 0.9])
    x = sample_features(S, 20000, 50, g)
    for m, s in enumerate([0.2, 0.9]):
        nz = x[m][x[m] > 0]
        assert (x[m] == 0).float().mean().item() == pytest.approx(s, abs=0.01)
        assert nz.mean().item() == pytest.approx(0.5, abs=0.01)  # Uniform(0, 1) when firing
        assert nz.var().item() == pytest.approx(1 / 12, abs=0.005)
        assert nz.max() < 1


def test_activations_against_brute_force():
    z = torch.randn(7, 11)
    tk = apply_activation(z, "topk", k=3)
    for r in range(7):
        top = sorted(range(11), key=lambda j: -float(z[r, j]))[:3]
        for j in range(11):
            want = max(float(z[r, j]), 0.0) if j in top else 0.0
            assert float(tk[r, j]) == pytest.approx(want)
    jr = apply_activation(z, "jumprelu", threshold=0.3)
    assert torch.equal(jr, torch.where(z > 0.3, z, torch.zeros(())))
    assert torch.equal(apply_activation(z, "none"), z)
    with pytest.raises(SaeRdpError, match="unknown activation"):
        apply_activation(z, "gelu")


def test_ground_truth_sae_is_monosemantic_for_orthonormal_features():
    cfg = ToyConfig(n=10, n_p=20)
    q, _ = torch.linalg.qr(torch.randn(20, 10))
    Wp = q  # orthonormal columns: zero interference
    for act in ("relu", "topk", "jumprelu"):
        fpl, live, rel = feats_per_latent(Wp.T, Wp, act, cfg)
        assert fpl == 1.0 and rel == 1.0 and live == 10
    fpl, live, _ = feats_per_latent(torch.randn(30, 20), torch.randn(20, 10), "none", cfg)
    assert fpl > 3  # identity: every latent responds (positively) to about half the features
    res = evaluate_sae(Wp.T, Wp, torch.ones(20), 0.5, "relu", cfg, torch.Generator().manual_seed(0))
    assert res["mcc"] == pytest.approx(1.0, abs=1e-6)
    assert res["loss_gt"] == pytest.approx(0.0, abs=1e-10)  # W_m = W_p^T recovers x exactly
    assert res["loss_sae"] == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("act", ["relu", "topk", "none"])
def test_gap_identity_closed_form_vs_brute_force(act):
    """L_SAE - L_GT at W_m = W_p^T equals E[e^T (W_p^T G^2 W_p - I) e]: per-sample brute force."""
    torch.manual_seed(0)
    n, n_p = 12, 5
    Wp = torch.randn(n_p, n, dtype=torch.float64)
    Wp /= Wp.norm(dim=0)
    gamma = torch.rand(n_p, dtype=torch.float64) + 0.5
    x = sample_features(torch.tensor([0.7]), 50, n, torch.Generator().manual_seed(1))[0].double()
    for xi in x:
        xp = Wp @ xi
        xm = apply_activation((Wp.T @ xp)[None], act, k=2)[0]
        l_sae = float(((gamma * (xp - Wp @ xm)) ** 2).sum())
        l_gt = float(((xi - xm) ** 2).sum())
        e = xi - xm
        cf = float(e @ (Wp.T @ torch.diag(gamma**2) @ Wp - torch.eye(n, dtype=torch.float64)) @ e)
        assert l_sae - l_gt == pytest.approx(cf, abs=1e-10)
    cfg = ToyConfig(n=n, n_p=n_p, eval_samples=40000)
    out = gap_at_ground_truth(Wp.float(), gamma.float(), 0.7, act, cfg, torch.Generator().manual_seed(3))
    se = (out["gap_measured_se"] ** 2 + out["gap_closed_form_se"] ** 2) ** 0.5
    assert abs(out["gap_measured"] - out["gap_closed_form"]) < 4 * se + 1e-9


def test_input_gamma_rule():
    cfg = ToyConfig(n=30, n_p=6, eval_samples=5000)
    Wp = torch.randn(6, 30)
    g0 = input_gamma(Wp, 0.0, 0.8, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(g0, torch.ones(6))
    g1 = input_gamma(Wp, 1.0, 0.8, cfg, torch.Generator().manual_seed(0))
    assert g1.pow(2).mean().item() == pytest.approx(1.0, rel=1e-5)
    # higher-variance input dims get larger weights: compare with the analytic variance of x_p
    p = 0.2
    var_x = p * (1 / 3) - (p * 0.5) ** 2
    var_p = (Wp**2).sum(1) * var_x
    assert torch.corrcoef(torch.stack([g1, var_p]))[0, 1] > 0.95


def test_vectorised_models_train_independently():
    cfg = ToyConfig(n=20, n_p=8, steps=30, batch=32)
    Wp = torch.randn(2, 8, 20)
    S = torch.tensor([0.8, 0.9])
    gamma = torch.ones(2, 8)
    init_a = torch.randn(2, 16, 8)
    init_b = init_a.clone()
    init_b[1] = torch.randn(16, 8)  # change only model 1
    Wa, _ = train_tied_saes(Wp, S, gamma, init_a, cfg, "topk", torch.Generator().manual_seed(5))
    Wb, _ = train_tied_saes(Wp, S, gamma, init_b, cfg, "topk", torch.Generator().manual_seed(5))
    assert torch.allclose(Wa[0], Wb[0], atol=1e-6)  # model 0 unaffected by model 1
    assert not torch.allclose(Wa[1], Wb[1])


def test_run_grid_small_and_resume(tmp_path):
    cfg = ToyConfig(
        n=16,
        n_p=6,
        sparsities=(0.5, 0.95),
        activations=("relu_bias", "topk"),
        n_ms=(16,),
        alphas=(0.0, 1.0),
        seeds=(0, 1),
        steps=20,
        batch=32,
        eval_samples=256,
    )
    ck = tmp_path / "ck.json"
    res = run_grid(cfg, progress=False, checkpoint=ck)
    assert len(res["rows"]) == 2 * 2 * 2 * 2
    for r in res["rows"]:
        assert 0 <= r["mcc"] <= 1 and r["loss_sae"] >= 0 and r["loss_gt"] >= 0
    saved = json.loads(ck.read_text())
    assert set(saved["groups"]) == {"relu_bias/16", "topk/16"}
    saved["groups"]["topk/16"][0]["mcc"] = -123.0  # a resumed run must reuse the checkpointed groups
    ck.write_text(json.dumps(saved))
    res2 = run_grid(cfg, progress=False, checkpoint=ck)
    assert any(r["mcc"] == -123.0 for r in res2["rows"])


def test_config_validation():
    with pytest.raises(SaeRdpError, match="activation"):
        ToyConfig(activations=("gelu",)).validate()
    with pytest.raises(SaeRdpError, match="sparsity"):
        ToyConfig(sparsities=(1.0,)).validate()
    with pytest.raises(SaeRdpError, match="alpha"):
        ToyConfig(alphas=(-1.0,)).validate()


def test_mixed_wp_has_monosemantic_dims_and_variance_gamma_downweights_them():
    from sae_rdp_plugin.experiments.identifiability import make_wp

    cfg = ToyConfig(n=40, n_p=8, wp_init="mixed", eval_samples=4000)
    W = make_wp([0], cfg)[0]
    assert torch.equal(W[:4, :4], torch.eye(4)) and torch.all(W[:4, 4:] == 0) and torch.all(W[4:, :4] == 0)
    assert torch.allclose(W.norm(dim=0), torch.ones(40))
    g = input_gamma(W, 1.0, 0.9, cfg, torch.Generator().manual_seed(0))
    assert g[:4].max() < g[4:].min()  # a monosemantic dim carries one feature: least variance


def test_run_experiment_report_states_the_active_count(tmp_path):
    from sae_rdp_plugin.experiments.identifiability import run_experiment

    cfg = ToyConfig(sparsities=(0.9, 0.99), activations=("topk",), alphas=(0.0,), seeds=(0,), steps=5, batch=16)
    cfg.eval_samples = 64
    run_experiment(tmp_path, configs={"tiny": cfg}, progress=False)
    md = (tmp_path / "RESULTS_tiny.md").read_text()
    # n(1 - S) for n = 200: 20 and 2 active features per sample against TopK k = 2
    assert "TopK k = 2 (a sample has n(1 - S) = 20, 2 active features on average)" in md
