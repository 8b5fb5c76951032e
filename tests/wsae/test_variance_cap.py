"""The massive-activation rule of WSAE gamma: ``variance_cap_quantile`` (s_i <- min(s_i, Q_q(s)) after the
floor, before the power). Expected values are computed by hand in the comments, not by the code under test."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig

import sae_rdp_plugin  # noqa: F401  (registers the architectures)
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.wsae.gamma import gamma_from_variance, load_gamma_file

F64 = torch.float64
D_IN, D_SAE = 12, 40


def t64(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=F64)


def make(**kw) -> TrainingSAE:
    cfg = TrainingSAEConfig.from_dict({"architecture": "weighted_topk", "d_in": D_IN, "d_sae": D_SAE, "k": 4, **kw})
    return TrainingSAE.from_dict(cfg.to_dict())


def massive_data(n: int = 256, seed: int = 0) -> torch.Tensor:
    """Activations whose dimension 5 holds most of the variance (std 300 against 0.1 .. 2)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.1, 2.0, D_IN)
    scales[5] = 300.0
    return torch.randn(n, D_IN, generator=g) * scales + 1.0


def test_closed_form_cap_of_one_massive_dimension():
    # d = 5, q = 0.75: h = 0.75 * 4 = 3, an order statistic, so Q = 4 and the variances become [1, 2, 3, 4, 4]
    s = t64(1, 2, 3, 4, 1000)
    assert torch.equal(gamma_from_variance(s, 1.0, "none", variance_cap_quantile=0.75), t64(1, 2, 3, 4, 4))
    # mean_square: divide by sqrt(mean([1, 4, 9, 16, 16])) = sqrt(46 / 5)
    g = gamma_from_variance(s, 1.0, variance_cap_quantile=0.75)
    torch.testing.assert_close(g, t64(1, 2, 3, 4, 4) / math.sqrt(46 / 5), rtol=1e-14, atol=0)
    # the massive dimension's share of sum(gamma^2): 16 / 46 with the cap, 1e6 / (1e6 + 30) without
    assert float(g[4] ** 2 / g.pow(2).sum()) == pytest.approx(16 / 46, rel=1e-12)
    g0 = gamma_from_variance(s, 1.0)
    assert float(g0[4] ** 2 / g0.pow(2).sum()) == pytest.approx(1e6 / (1e6 + 30), rel=1e-12)
    # alpha = 0.5: gamma^2 = [1, 2, 3, 4, 4] / mean = [1, 2, 3, 4, 4] / 2.8
    g = gamma_from_variance(s, 0.5, variance_cap_quantile=0.75)
    torch.testing.assert_close(g.pow(2), t64(1, 2, 3, 4, 4) / 2.8, rtol=1e-14, atol=0)


def test_cap_interpolates_between_order_statistics():
    # d = 4, q = 0.5: h = 1.5, Q = 2 + 0.5 * (3 - 2) = 2.5 (the input order does not matter)
    s = t64(100, 3, 1, 2)
    assert torch.equal(gamma_from_variance(s, 1.0, "none", variance_cap_quantile=0.5), t64(2.5, 2.5, 1, 2))


def test_cap_is_taken_after_the_floor():
    # mean(s) = 1005 / 5 = 201, floor 0.01 * 201 = 2.01 -> [2.01, 2.01, 2.01, 5, 1000]; q = 0.25: h = 1, Q = 2.01
    # (over the unfloored variances Q would be 0 and every gamma 0)
    s = t64(0, 0, 0, 5, 1000)
    g = gamma_from_variance(s, 1.0, "none", variance_floor=0.01, variance_cap_quantile=0.25)
    torch.testing.assert_close(g, torch.full((5,), 2.01, dtype=F64), rtol=1e-14, atol=0)


def test_no_cap_is_todays_gamma_bit_for_bit_and_q1_is_no_cap():
    g = torch.Generator().manual_seed(3)
    s = torch.rand(640, generator=g, dtype=F64) ** 6
    s[163] = 1e4  # a massive dimension
    s[7] = 0.0  # a floored one
    for alpha in (0.0, 0.5, 1.0, 2.0):
        for norm in ("mean_square", "none"):
            # the rule before the cap existed: floor, power, normalise
            t = torch.clamp(s, min=1e-6 * s.mean()).pow(alpha)
            ref = torch.ones_like(s) if alpha == 0 else (t / t.pow(2).mean().sqrt() if norm == "mean_square" else t)
            assert torch.equal(gamma_from_variance(s, alpha, norm), ref)
            assert torch.equal(gamma_from_variance(s, alpha, norm, variance_cap_quantile=None), ref)
            assert torch.equal(gamma_from_variance(s, alpha, norm, variance_cap_quantile=1.0), ref)
    # below 1 the cap does change gamma here, and it is scale free like the floor
    capped = gamma_from_variance(s, 1.0, variance_cap_quantile=0.99)
    assert not torch.equal(capped, gamma_from_variance(s, 1.0))
    torch.testing.assert_close(
        gamma_from_variance(s * 37.0, 1.0, variance_cap_quantile=0.99), capped, rtol=1e-12, atol=0
    )


@pytest.mark.parametrize("q", [0, 0.0, -0.1, 1.5, math.nan, math.inf, "abc", True])
def test_bad_quantile_rejected(q):
    s = t64(1, 2, 3)
    with pytest.raises(SaeRdpError, match=r"variance_cap_quantile must be a number in \(0, 1\]") as e:
        gamma_from_variance(s, 1.0, variance_cap_quantile=q)
    assert "\n" not in str(e.value)
    with pytest.raises(SaeRdpError, match="variance_cap_quantile"):
        gamma_from_variance(s, 0.0, variance_cap_quantile=q)  # checked even where alpha = 0 needs no variance
    with pytest.raises(SaeRdpError, match="variance_cap_quantile"):
        make(variance_cap_quantile=q)


def test_sae_uses_the_cap_and_saved_sae_records_it(tmp_path):
    x = massive_data()
    sae = make(alpha=1.0, variance_cap_quantile=0.5)
    stats = sae.estimate_gamma(iter([x]), 1)
    var = ((x.to(F64) - x.to(F64).mean(0)) ** 2).mean(0)
    v = var.sort().values  # d = 12, q = 0.5: h = 5.5, Q = (v_(5) + v_(6)) / 2
    ref = torch.clamp(var, max=float((v[5] + v[6]) / 2))
    torch.testing.assert_close(sae.gamma_float64, ref / ref.pow(2).mean().sqrt(), rtol=1e-10, atol=0)
    torch.testing.assert_close(stats.variance, var, rtol=1e-10, atol=0)

    # training checkpoint: the cfg field and the gamma come back through SAELens's TrainingSAE loader
    sae.save_model(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "cfg.json").read_text())["variance_cap_quantile"] == 0.5
    back = TrainingSAE.load_from_disk(tmp_path / "ckpt")
    assert back.cfg.variance_cap_quantile == 0.5 and torch.equal(back.gamma_float64, sae.gamma_float64)
    # gamma.safetensors metadata
    for run in ("ckpt", "final"):
        if run == "final":
            sae.save_inference_model(tmp_path / "final")
        assert load_gamma_file(tmp_path / run).metadata["variance_cap_quantile"] == "0.5"
    # gamma_path re-powers the stored variance with the reading config's own cap
    other = make(alpha=1.0, variance_cap_quantile=1.0, gamma_path=str(tmp_path / "final"))
    torch.testing.assert_close(other.gamma_float64, var / var.pow(2).mean().sqrt(), rtol=1e-10, atol=0)
    assert make(alpha=1.0).cfg.variance_cap_quantile is None
    assert load_gamma_file(_saved_default(tmp_path / "default")).metadata["variance_cap_quantile"] == ""

    # the final (stock TopK) SAE: stock SAELens, in a process that never imports the plugin, reads the field
    code = textwrap.dedent(
        f"""
        import sys
        from sae_lens import SAE
        sae = SAE.load_from_disk({str(tmp_path / "final")!r})
        assert not any(m.startswith("sae_rdp_plugin") for m in sys.modules), "plugin was imported"
        print(type(sae).__name__, sae.cfg.metadata.training_architecture_details["variance_cap_quantile"])
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["TopKSAE", "0.5"]


def _saved_default(path):
    sae = make(alpha=1.0)
    sae.estimate_gamma(iter([massive_data(32)]), 1)
    sae.save_inference_model(path)
    return path
