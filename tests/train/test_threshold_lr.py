"""TrainConfig.threshold_lr_scale: the JumpReLU threshold in its own Adam group at scale x lr through warm-up and
decay (read from the optimizer at every step), the other parameters at lr; the threshold then moves further; a
checkpoint's Adam state (two groups) resumes; the paths that keep SAELens's single rate refuse it."""

from __future__ import annotations

import shutil

import pytest
from test_lm import B, cfg, make_batches

import sae_rdp_plugin.train.lm as lm
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.train.lm import SAESpec, latest_checkpoint, train_saes

JR = {"normalize_activations": "standardize", "n_batches_for_norm_estimate": 2, "sparsity_coefficient": 2.0}


@pytest.fixture
def rates(monkeypatch):
    """(lr of group 0, lr of each later group) at every training step, and the final thresholds."""
    seen: dict[str, list] = {"lrs": [], "thr": []}
    real_step, real_finish = lm.SteppedFit.step, lm.SteppedFit.finish

    def step(self, batch):
        seen["lrs"].append([g["lr"] for g in self.trainer.optimizer.param_groups])
        return real_step(self, batch)

    def finish(self):
        seen["thr"].append(self.trainer.sae.threshold.detach().clone())
        return real_finish(self)

    monkeypatch.setattr(lm.SteppedFit, "step", step)
    monkeypatch.setattr(lm.SteppedFit, "finish", finish)
    return seen


def test_threshold_group_runs_at_scale_times_lr(tmp_path, rates):
    data = make_batches(14)
    c = cfg("jumprelu", lr=1e-3, lr_warm_up_steps=3, lr_decay_steps=3, threshold_lr_scale=50.0, **JR)
    train_saes(iter(data), [SAESpec("h.a", c, tmp_path / "fast")], tokens=10 * B, fast=False, progress=False)
    lrs = rates["lrs"]
    assert len(lrs) == 10 and all(len(g) == 2 for g in lrs)
    assert min(g[0] for g in lrs) < 1e-3 * 0.5  # the schedule is active: warm-up and decay below lr
    for g in lrs:
        assert g[1] == pytest.approx(50.0 * g[0], rel=1e-9)
    c1 = cfg("jumprelu", lr=1e-3, lr_warm_up_steps=3, lr_decay_steps=3, **JR)
    train_saes(iter(data), [SAESpec("h.a", c1, tmp_path / "plain")], tokens=10 * B, fast=False, progress=False)
    assert all(len(g) == 1 for g in rates["lrs"][10:])  # default: SAELens's single group, untouched
    init = 0.01  # SAELens's jumprelu_init_threshold
    moved_fast, moved_plain = ((t - init).abs().mean().item() for t in rates["thr"])
    assert moved_fast > 10 * moved_plain > 0


def test_checkpoint_with_two_groups_resumes(tmp_path, rates):
    data = make_batches(16)
    c = cfg("jumprelu", n_checkpoints=1, threshold_lr_scale=30.0, **JR)
    out = tmp_path / "r"
    train_saes(iter(data), [SAESpec("h.a", c, out)], tokens=8 * B, fast=False, progress=False)
    # a run interrupted after its checkpoint: the staging sibling holds it; resume loads its Adam state
    ck = next((out / "checkpoints").iterdir())
    staging = out.parent / f".{out.name}.resume-test.partial"
    (staging / "checkpoints").mkdir(parents=True)
    shutil.copytree(ck, staging / "checkpoints" / ck.name)
    shutil.rmtree(out)
    assert latest_checkpoint(out) is not None
    res = train_saes(iter(data), [SAESpec("h.a", c, out)], tokens=8 * B, fast=False, progress=False, resume=True)
    assert res[0]["resumed_from"] is not None
    assert all(len(g) == 2 and g[1] == pytest.approx(30.0 * g[0]) for g in rates["lrs"])


def test_refused_where_it_cannot_be_honoured(tmp_path):
    with pytest.raises(SaeRdpError, match="needs a JumpReLU architecture"):
        cfg("standard", threshold_lr_scale=10.0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(SaeRdpError, match="threshold_lr_scale"):
            cfg("jumprelu", threshold_lr_scale=bad)
    from sae_rdp_plugin.train.saelens import train_synthetic

    with pytest.raises(SaeRdpError, match="keeps SAELens's single learning rate"):
        train_synthetic(cfg("jumprelu", threshold_lr_scale=10.0), tmp_path / "syn")
    assert not (tmp_path / "syn").exists()
