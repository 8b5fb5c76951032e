"""Weighted training checkpoints load through SAELens's own loaders; typed configs refuse unknown keys."""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig

import sae_rdp_plugin  # noqa: F401  (registers the architectures)
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.train.saelens import train_synthetic
from sae_rdp_plugin.wsae.gamma import load_gamma_file


def test_trainer_checkpoint_loads_with_saelens_loaders_and_gamma(tmp_path):
    res = train_synthetic(
        "weighted_topk", 16, 32, tmp_path / "a", k=3, alpha=1.0, tokens=2048, batch_size=256, n_checkpoints=1, seed=1
    )
    ckpt = sorted((tmp_path / "a" / "checkpoints").iterdir())[0]
    trained = load_gamma_file(res.out).gamma
    assert not torch.equal(trained, torch.ones_like(trained))

    t = TrainingSAE.load_from_disk(ckpt)
    assert type(t).__name__ == "WeightedTopKTrainingSAE"
    assert t.gamma_is_set
    assert torch.equal(t.gamma_float64, trained)
    assert torch.equal(t.gamma, trained.to(t.gamma.dtype))

    s = SAE.load_from_disk(ckpt)
    assert type(s).__name__ == "TopKSAE"
    x = torch.randn(64, 16)
    assert torch.allclose(s(x), t(x), atol=1e-6)


def test_batchtopk_checkpoint_loads_as_the_inference_save(tmp_path):
    cfg = TrainingSAEConfig.from_dict({"architecture": "weighted_batchtopk", "d_in": 12, "d_sae": 40, "k": 4})
    sae = TrainingSAE.from_dict(cfg.to_dict())
    sae.estimate_gamma(iter([torch.randn(200, 12) * torch.linspace(0.2, 3, 12)]), 1)
    sae.topk_threshold.fill_(0.25)
    sae.save_model(tmp_path / "ckpt")
    sae.save_inference_model(tmp_path / "final")
    a, b = SAE.load_from_disk(tmp_path / "ckpt"), SAE.load_from_disk(tmp_path / "final")
    for k, v in b.state_dict().items():
        assert torch.equal(a.state_dict()[k], v), k
    assert TrainingSAE.load_from_disk(tmp_path / "ckpt").gamma_is_set


def test_misspelled_key_and_unknown_architecture_refused():
    base = {"architecture": "weighted_topk", "d_in": 8, "d_sae": 16, "k": 2}
    with pytest.raises(SaeRdpError, match=r"'aplha'.*did you mean 'alpha'"):
        TrainingSAEConfig.from_dict({**base, "aplha": 0.5})
    with pytest.raises(SaeRdpError, match="'aplha'"):
        TrainingSAE.from_dict({**base, "aplha": 0.5})
    assert TrainingSAEConfig.from_dict({**base, "alpha": 0.5}).alpha == 0.5
    with pytest.raises(SaeRdpError, match="unknown architecture 'weighted_topkk'; valid: weighted_standard"):
        TrainingSAEConfig.from_dict({**base, "architecture": "weighted_topkk"})
    # stock architectures keep SAELens's behaviour (extra keys of a runner config are dropped)
    assert TrainingSAEConfig.from_dict({"architecture": "topk", "d_in": 8, "d_sae": 16, "k": 2, "lr": 1}).k == 2
