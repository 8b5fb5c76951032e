"""TrainConfig.normalize_activations="standardize": per-dimension (x - mean) / sd from the norm-estimate batches
(checked against a float64 reference), trained through SAELens's activation scaler, folded into the saved SAE so
that the stock loader's SAE on raw x equals the trained SAE on standardised x mapped back (float64 reference
from the weights before the fold); checkpoints carry it; the paths that cannot honour it refuse it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_lm import B, cfg, make_batches

import sae_rdp_plugin.train.lm as lm
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.train.lm import SAESpec, standardization, train_saes

STD = {"normalize_activations": "standardize", "n_batches_for_norm_estimate": 3}


def massive(batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The test batches with one dimension holding most of the variance (a large offset and rare outliers)."""
    g = torch.Generator().manual_seed(7)
    out = []
    for b in batches:
        x = b["h.a"].clone()
        x[:, 3] = 60.0 + 400.0 * (torch.rand(B, generator=g) < 0.05)
        out.append({"h.a": x, "h.b": b["h.b"]})
    return out


def test_standardization_matches_float64_reference():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(50, 6, generator=g) * torch.tensor([1.0, 10, 0.1, 1e3, 3, 0.0]) + 5 for _ in range(3)]
    w = standardization(iter(xs))
    x = torch.cat(xs).double()
    sd = (x.var(0, unbiased=True) + 1e-3).sqrt()  # the constant dimension: sd = sqrt(1e-3), no division by zero
    torch.testing.assert_close(w.mean, x.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.diagonal(w.matrix), 1 / sd, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w.matrix @ w.inverse_matrix, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (w.matrix - torch.diag(torch.diagonal(w.matrix))).abs().max() == 0  # diagonal: no rotation
    with pytest.raises(SaeRdpError, match="two rows"):
        standardization(iter([torch.zeros(1, 6)]))


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_saved_sae_on_raw_x_is_the_trained_sae_on_standardised_x(tmp_path, monkeypatch, arch):
    """The fold (SAELens's) and our diagonal whitening together: stock SAE(x) == unstandardise(SAE_z(z(x)))."""
    from sae_lens import SAE

    seen: dict[str, object] = {}
    real_finish = lm.SteppedFit.finish

    def finish(self):  # the trained SAE and its whitening just before SAELens folds them
        w = self.trainer.activation_scaler.whitening
        seen["whitening"] = (w.mean.clone(), w.matrix.clone())
        seen["state"] = {k: v.detach().double().clone() for k, v in self.trainer.sae.state_dict().items()}
        seen["standardize"] = self.standardize
        return real_finish(self)

    monkeypatch.setattr(lm.SteppedFit, "finish", finish)
    data = massive(make_batches(10))
    kw = {"k": 4} if arch == "topk" else {}
    spec = SAESpec("h.a", cfg(arch, **kw, **STD), tmp_path / arch)
    res = train_saes(iter(data), [spec], tokens=4 * B, fast=False, progress=False)
    assert seen["standardize"] and res[0]["norm_batches"] == 3
    mean, mat = seen["whitening"]
    ref = standardization(iter([b["h.a"] for b in data[:3]]))  # the first three batches are the estimate's
    torch.testing.assert_close(mean, ref.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mat, ref.matrix, rtol=1e-12, atol=1e-12)

    sae = SAE.load_from_disk(str(tmp_path / arch), device="cpu")
    assert sae.cfg.normalize_activations == "none"
    x = torch.cat([b["h.a"] for b in data[6:8]])
    st = seen["state"]
    sd = 1 / torch.diagonal(mat)
    z = (x.double() - mean) / sd
    pre = (z - st["b_dec"]) @ st["W_enc"] + st["b_enc"]
    if arch == "standard":
        f = torch.relu(pre)
    elif arch == "jumprelu":
        f = pre * (pre > st["threshold"])
    else:  # SAELens's TopK training SAE: rescale_acts_by_decoder_norm (selection on pre * ||W_dec_i||)
        norms = st["W_dec"].norm(dim=1)
        top = torch.topk(pre * norms, 4, dim=1)
        f = torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values)) / norms
    x_hat = (f @ st["W_dec"] + st["b_dec"]) * sd + mean
    with torch.no_grad():
        got = sae.decode(sae.encode(x))
    scale = x.abs().max()
    torch.testing.assert_close(got.double() / scale, x_hat / scale, rtol=0, atol=2e-5)


def test_checkpoint_keeps_the_standardisation(tmp_path):
    data = massive(make_batches(12))
    spec = SAESpec("h.a", cfg("standard", n_checkpoints=1, **STD), tmp_path / "s")
    train_saes(iter(data), [spec], tokens=6 * B, fast=False, progress=False)
    ckpts = [p for p in (tmp_path / "s" / "checkpoints").rglob("activation_whitening.safetensors")]
    assert ckpts, "the checkpoint lacks SAELens's whitening file"
    w = load_file(str(ckpts[0]))
    ref = standardization(iter([b["h.a"] for b in data[:3]]))
    torch.testing.assert_close(w["matrix"].double(), ref.matrix, rtol=1e-6, atol=1e-9)


def test_refused_where_it_cannot_be_honoured(tmp_path):
    with pytest.raises(SaeRdpError, match="not supported for weighted_topk"):
        cfg("weighted_topk", **STD)
    with pytest.raises(SaeRdpError, match="normalize_activations must be one of"):
        cfg("topk", normalize_activations="zscore")
    from sae_rdp_plugin.train.saelens import train_synthetic

    with pytest.raises(SaeRdpError, match="standardize.*needs sae-rdp train --model"):
        train_synthetic(cfg("standard", **STD), tmp_path / "syn")
    assert not (tmp_path / "syn").exists()
    r = subprocess.run(
        [sys.executable, "-m", "sae_rdp_plugin", "train", "--synthetic", "--architecture", "standard", "--d-in", "8",
         "--d-sae", "16", "--tokens", "2048", "--normalize-activations", "standardize", "--out", str(tmp_path / "c")],
        capture_output=True, text=True,
    )  # fmt: skip
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("error: ") and "standardize" in err[0]
    assert not (tmp_path / "c").exists()
