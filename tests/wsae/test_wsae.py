"""Weighted SAE architectures: loss against float64 references, alpha = 0 against stock SAELens,
stock-loader round trip, checkpoint resume, bad input, registration."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY  # noqa: E402
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig, TrainStepInput  # noqa: E402

import sae_rdp_plugin  # noqa: F401  (registers the architectures)
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.wsae.registry import register, register_now

D_IN, D_SAE = 12, 40
STOCK = {
    "weighted_standard": "standard",
    "weighted_topk": "topk",
    "weighted_jumprelu": "jumprelu",
    "weighted_batchtopk": "batchtopk",
}
EXTRA = {
    "standard": {"l1_coefficient": 0.3},
    "topk": {"k": 4},
    "jumprelu": {"jumprelu_init_threshold": 0.02, "l0_coefficient": 0.5, "pre_act_loss_coefficient": 0.1},
    "batchtopk": {"k": 4},
}


def make(arch: str, dtype: str = "float32", seed: int = 0, **kw) -> TrainingSAE:
    stock = STOCK.get(arch, arch)
    d = {"architecture": arch, "d_in": D_IN, "d_sae": D_SAE, "dtype": dtype, **EXTRA[stock], **kw}
    torch.manual_seed(seed)
    cfg = TrainingSAEConfig.from_dict(d)
    return TrainingSAE.from_dict(cfg.to_dict())


def data(n: int = 64, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.2, 3.0, D_IN)
    return (torch.randn(n, D_IN, generator=g) * scales + 0.5).to(dtype)


def step(sae: TrainingSAE, x: torch.Tensor, dead: torch.Tensor | None):
    coeffs = {name: (c.value if hasattr(c, "value") else c) for name, c in sae.get_coefficients().items()}
    return sae.training_forward_pass(
        TrainStepInput(sae_in=x, coefficients=coeffs, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False)
    )


def dead_mask() -> torch.Tensor:
    m = torch.zeros(D_SAE, dtype=torch.bool)
    m[::3] = True
    return m


def test_registered_and_idempotent():
    for name in STOCK:
        assert name in SAE_TRAINING_CLASS_REGISTRY
    before = dict(SAE_TRAINING_CLASS_REGISTRY)
    register()
    register()
    register_now()
    assert dict(SAE_TRAINING_CLASS_REGISTRY) == before


def test_registration_via_import_hook_in_fresh_process():
    code = textwrap.dedent(
        """
        import sys
        import sae_rdp_plugin
        assert "sae_lens" not in sys.modules, "plugin import must not import sae_lens"
        from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
        names = sorted(n for n in SAE_TRAINING_CLASS_REGISTRY if n.startswith("weighted_"))
        print(",".join(names))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "weighted_batchtopk,weighted_jumprelu,weighted_standard,weighted_topk"


@pytest.mark.parametrize("arch", list(STOCK))
def test_alpha0_reproduces_stock_loss_and_gradients(arch):
    stock = make(STOCK[arch])
    weighted = make(arch, alpha=0.0)
    weighted.load_state_dict(stock.state_dict())
    x = data()
    dead = dead_mask()
    out_s = step(stock, x, dead)
    out_w = step(weighted, x, dead)
    assert set(out_s.losses) == set(out_w.losses)
    for k in out_s.losses:
        assert torch.equal(out_s.losses[k], out_w.losses[k]), k
    assert torch.equal(out_s.loss, out_w.loss)
    out_s.loss.backward()
    out_w.loss.backward()
    ps, pw = dict(stock.named_parameters()), dict(weighted.named_parameters())
    assert set(ps) == set(pw)
    for name in ps:
        assert ps[name].grad is not None or pw[name].grad is None
        if ps[name].grad is not None:
            assert torch.equal(ps[name].grad, pw[name].grad), name
    if arch in ("weighted_topk", "weighted_batchtopk"):
        assert out_w.losses["auxiliary_reconstruction_loss"] > 0  # the aux path really ran


def _reference_topk_aux(sae, x, x_hat, hidden_pre, dead, g2):
    """Float64 brute force of the weighted TopK dead-latent auxiliary loss."""
    k_aux = D_IN // 2
    n_dead = int(dead.sum())
    scale = min(n_dead / k_aux, 1.0)
    k_aux = min(k_aux, n_dead)
    W = sae.W_dec.detach().double()
    norms = W.norm(dim=-1)
    total = 0.0
    for b in range(x.shape[0]):
        cand = sorted([(float(hidden_pre[b, j]), j) for j in range(D_SAE) if dead[j]], reverse=True)[:k_aux]
        z = torch.zeros(D_SAE, dtype=torch.float64)
        for v, j in cand:
            z[j] = v
        recons = (z / norms) @ W
        resid = (x[b] - x_hat[b]).double()
        total += float((g2 * (recons - resid) ** 2).sum())
    return sae.cfg.aux_loss_coefficient * scale * total / x.shape[0]


@pytest.mark.parametrize("arch", list(STOCK))
@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_weighted_loss_matches_float64_reference(arch, alpha):
    sae = make(arch, dtype="float64", alpha=alpha)
    x = data(dtype=torch.float64)
    sae.estimate_gamma(iter([x[:20], x[20:45], x[45:]]), n_batches=3)
    # reference gamma: numpy-free float64 two-pass variance, power, mean-square normalisation
    var = ((x - x.mean(0)) ** 2).mean(0)
    g = var**alpha
    g = g / g.pow(2).mean().sqrt()
    assert torch.allclose(sae.gamma_float64, g, rtol=1e-12, atol=0)
    dead = dead_mask()
    out = step(sae, x, dead)
    x_hat = out.sae_out.detach()
    ref_mse = float(((g**2) * (x - x_hat) ** 2).sum(-1).mean())
    assert float(out.losses["mse_loss"]) == pytest.approx(ref_mse, rel=1e-12)
    if arch in ("weighted_topk", "weighted_batchtopk"):
        ref_aux = _reference_topk_aux(sae, x, x_hat, out.hidden_pre.detach(), dead, g**2)
        assert float(out.losses["auxiliary_reconstruction_loss"]) == pytest.approx(ref_aux, rel=1e-10)
        assert ref_aux > 0


def test_gamma_normalisation_choice_none_and_zero_variance():
    sae = make("weighted_topk", dtype="float64", alpha=1.0, gamma_normalization="none")
    x = data(dtype=torch.float64)
    x[:, 3] = 7.0  # zero-variance dimension
    sae.estimate_gamma(iter([x]), 1)
    var = ((x - x.mean(0)) ** 2).mean(0)
    g = sae.gamma_float64
    assert torch.isfinite(g).all()
    assert g[3] == pytest.approx(1e-6 * float(var.mean()))  # the documented floor
    other = [i for i in range(D_IN) if i != 3]
    assert torch.allclose(g[other], var[other], rtol=1e-12)
    const = make("weighted_topk", alpha=1.0)
    const.estimate_gamma(iter([torch.ones(10, D_IN)]), 1)
    assert torch.equal(const.gamma_float64, torch.ones(D_IN, dtype=torch.float64))


def test_bad_input_errors():
    with pytest.raises(SaeRdpError, match="alpha"):
        make("weighted_topk", alpha=-0.5)
    sae = make("weighted_topk")
    with pytest.raises(SaeRdpError, match="shape"):
        sae.set_gamma(torch.ones(D_IN + 1))
    with pytest.raises(SaeRdpError, match="NaN"):
        sae.set_gamma(torch.full((D_IN,), float("nan")))
    x = data()
    x[5, 2] = float("nan")
    with pytest.raises(SaeRdpError, match="NaN"):
        sae.estimate_gamma(iter([x]), 1)
    with pytest.raises(SaeRdpError, match="NaN"):  # lazy first-batch estimate
        with pytest.warns(UserWarning):
            step(sae, x, None)
    with pytest.raises(SaeRdpError, match=r"shape \(4, 11\): expected \(\.\.\., 12\)"):
        sae.estimate_gamma(iter([torch.ones(4, D_IN - 1)]), 1)
    with pytest.raises(SaeRdpError, match="gamma_normalization"):
        make("weighted_topk", gamma_normalization="max")


def test_inference_save_loads_with_stock_saelens_in_clean_process(tmp_path):
    sae = make("weighted_topk", alpha=1.0)
    x = data()
    sae.estimate_gamma(iter([x]), 1)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, D_SAE)[:, None])  # non-unit decoder norms: folding matters
        sae.b_enc.add_(0.01)
    out_dir = tmp_path / "sae"
    sae.save_inference_model(out_dir)
    assert (out_dir / "gamma.safetensors").exists()
    from safetensors.torch import load_file

    assert set(load_file(out_dir / "sae_weights.safetensors")) == {"W_enc", "W_dec", "b_enc", "b_dec"}
    cfg = json.loads((out_dir / "cfg.json").read_text())
    assert cfg["architecture"] == "topk"
    assert cfg["metadata"]["wsae_gamma_file"] == "gamma.safetensors"
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = sae(x)
        expected_acts = sae.encode(x)
    code = textwrap.dedent(
        f"""
        import sys, torch
        from sae_lens import SAE
        sae = SAE.load_from_disk({str(out_dir)!r})
        assert not any(m.startswith("sae_rdp_plugin") for m in sys.modules), "plugin was imported"
        x = torch.load({str(tmp_path / "x.pt")!r})
        with torch.no_grad():
            res = {{"out": sae(x), "acts": sae.encode(x), "cls": type(sae).__name__}}
        torch.save(res, {str(tmp_path / "res.pt")!r})
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    got = torch.load(tmp_path / "res.pt")
    assert got["cls"] == "TopKSAE"
    assert torch.allclose(got["out"], expected, atol=1e-5, rtol=1e-5)
    assert torch.allclose(got["acts"], expected_acts, atol=1e-5, rtol=1e-5)
    assert torch.equal(got["acts"] != 0, expected_acts != 0)


@pytest.mark.parametrize("arch", list(STOCK))
def test_inference_weights_identical_to_stock_save(arch, tmp_path):
    """The weighted SAE saves exactly the weights and inference config that stock SAELens saves."""
    from safetensors.torch import load_file

    stock = make(STOCK[arch])
    weighted = make(arch, alpha=0.5)
    weighted.load_state_dict(stock.state_dict())
    weighted.set_gamma(torch.linspace(0.1, 2.0, D_IN))
    stock.save_inference_model(tmp_path / "s")
    weighted.save_inference_model(tmp_path / "w")
    ws, ww = (
        load_file(tmp_path / "s" / "sae_weights.safetensors"),
        load_file(tmp_path / "w" / "sae_weights.safetensors"),
    )
    assert set(ws) == set(ww)
    for k in ws:
        assert torch.equal(ws[k], ww[k]), k
    cs = json.loads((tmp_path / "s" / "cfg.json").read_text())
    cw = json.loads((tmp_path / "w" / "cfg.json").read_text())
    cs.pop("metadata"), cw.pop("metadata")
    assert cs == cw


def test_checkpoint_resume_keeps_gamma(tmp_path):
    sae = make("weighted_batchtopk", alpha=1.0)
    sae.estimate_gamma(iter([data(200)]), 1)
    g = sae.gamma_float64
    sae.save_model(tmp_path / "ckpt")
    assert "gamma" not in TrainingSAE.load_from_disk(tmp_path / "ckpt").state_dict()
    fresh = make("weighted_batchtopk", alpha=1.0, seed=5)
    fresh.set_gamma(torch.ones(D_IN))
    fresh.load_weights_from_checkpoint(tmp_path / "ckpt")
    assert torch.equal(fresh.gamma_float64, g)
    assert torch.equal(fresh.gamma, g.float())
    for k, v in sae.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k])
    (tmp_path / "ckpt" / "gamma.safetensors").unlink()
    with pytest.raises(SaeRdpError, match="gamma"):
        fresh.load_weights_from_checkpoint(tmp_path / "ckpt")


def test_gamma_path_recomputes_from_variance(tmp_path):
    a = make("weighted_topk", alpha=1.0)
    a.estimate_gamma(iter([data(100)]), 1)
    a.save_inference_model(tmp_path / "run")
    b = make("weighted_topk", alpha=0.5, gamma_path=str(tmp_path / "run"))
    var = a._gamma_stats.variance
    g = var**0.5
    g = g / g.pow(2).mean().sqrt()
    assert torch.allclose(b.gamma_float64, g, rtol=1e-12)
    with pytest.raises(SaeRdpError, match="not found"):
        make("weighted_topk", gamma_path=str(tmp_path / "nope.safetensors"))


def test_whitening_and_unweighted_alpha_rejected():
    with pytest.raises(SaeRdpError, match="covariance_whitening"):
        make("weighted_topk", normalize_activations="covariance_whitening")
    from sae_rdp_plugin.train.saelens import check_architecture, sae_config_dict

    with pytest.raises(SaeRdpError, match="weighted_topk"):
        sae_config_dict("topk", 8, 16, k=2, alpha=1.0)
    assert sae_config_dict("topk", 8, 16, k=2, alpha=0.0)["architecture"] == "topk"
    with pytest.raises(SaeRdpError, match="valid: weighted_standard, weighted_topk"):
        check_architecture("weighted_gated")


def test_weighted_architectures_registered_when_wsae_imports_saelens_first():
    """Importing sae_rdp_plugin.wsae.architectures before sae_lens (wsae's own import triggers sae_lens's import
    and the registration hook) must work and leave all four weighted_* architectures registered."""
    import subprocess
    import sys

    code = (
        "import sae_rdp_plugin\n"
        "from sae_rdp_plugin.wsae.architectures import WeightedTopKTrainingSAE\n"
        "from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY as R\n"
        "names = ['weighted_standard', 'weighted_topk', 'weighted_jumprelu', 'weighted_batchtopk']\n"
        "assert all(n in R for n in names), sorted(R)\n"
        "assert R['weighted_topk'][0] is WeightedTopKTrainingSAE\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]
