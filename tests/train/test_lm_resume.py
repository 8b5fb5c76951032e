"""train_saes(resume=True): an interrupted run continues from its newest complete checkpoint (weights, gamma,
Adam state, schedules, dead-latent counters restored) and, fed the batches after that checkpoint, ends
with the same SAEs as an uninterrupted run."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_lm import B, cfg, make_batches

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.train.lm import SAESpec, latest_checkpoint, train_saes

N_PRE = 3  # gamma batches of the weighted SAE, drawn before training


def specs(root):
    return [
        SAESpec("h.a", cfg("topk", n_checkpoints=2, dead_feature_window=4), root / "t"),
        SAESpec("h.a", cfg("weighted_topk", alpha=1.0, gamma_estimation_batches=N_PRE, n_checkpoints=2), root / "w"),
    ]


@pytest.mark.parametrize("fast", [False, True])
def test_resumed_run_equals_uninterrupted(tmp_path, fast):
    batches = make_batches(N_PRE + 12, hooks={"h.a": 16})
    ref = train_saes(iter(batches), specs(tmp_path / "ref"), tokens=12 * B, fast=fast, progress=False)
    assert [r["resumed_from"] for r in ref] == [None, None]
    # the stream ends after 10 of 12 steps: the run fails, nothing is published, its checkpoints stay
    with pytest.raises(SaeRdpError, match="ended after"):
        train_saes(iter(batches[: N_PRE + 10]), specs(tmp_path / "run"), tokens=12 * B, fast=fast, progress=False)
    assert not (tmp_path / "run" / "t").exists()
    ck = latest_checkpoint(tmp_path / "run" / "t")
    assert ck is not None and ck[2] == 9 * B  # thresholds 256 / 512 samples: saved after steps 5 and 9
    res = train_saes(
        iter(batches[N_PRE + 9 :]), specs(tmp_path / "run"), tokens=12 * B, fast=fast, progress=False, resume=True
    )
    assert all(r["resumed_from"].endswith(str(9 * B)) for r in res)
    assert [r["steps"] for r in res] == [12, 12] and [r["tokens"] for r in res] == [12 * B, 12 * B]
    for name in ("t", "w"):
        a = load_file(tmp_path / "run" / name / "sae_weights.safetensors")
        b = load_file(tmp_path / "ref" / name / "sae_weights.safetensors")
        for k in b:
            assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), (name, k, (a[k] - b[k]).abs().max())
    assert not list(tmp_path.glob("run/.*.partial"))  # published: no staging folder left


def test_resume_needs_a_checkpoint_for_every_sae(tmp_path):
    with pytest.raises(SaeRdpError, match="cannot resume"):
        train_saes(iter(make_batches(20, hooks={"h.a": 16})), specs(tmp_path), tokens=12 * B, resume=True)


def test_train_command_resume_latest(tmp_path, monkeypatch, tiny_corpus):
    """`sae-rdp train --model ... --checkpoints 2 --resume latest` after a run that stopped: it continues from
    the newest checkpoint (train_summary records it); a wrong --resume value is one error line."""
    import json

    from sae_rdp_plugin.cli import main

    out = tmp_path / "run"
    args = ["train", "--model", "tiny-gemma3", "--dataset", str(tiny_corpus), "--out", str(out)]
    args += ["--hook", "blocks.1.hook_resid_post", "--architecture", "topk", "--d-sae", "64", "--k", "4"]
    args += ["--tokens", "1024", "--batch-size", "64", "--buffer-tokens", "256", "--model-dtype", "float32"]
    args += ["--checkpoints", "2"]
    import sae_rdp_plugin.train.lm as lm

    real_step = lm._Run.step
    calls = {"n": 0}

    def interrupted(self, x):  # the first run stops after 12 of 16 steps (a crash mid-run)
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt
        return real_step(self, x)

    monkeypatch.setattr(lm._Run, "step", interrupted)
    assert main(args) not in (0, 2)  # interrupted: an error exit, no traceback (cli.main)
    monkeypatch.setattr(lm._Run, "step", real_step)
    assert not out.exists() and latest_checkpoint(out)[2] == 11 * 64
    assert main([*args, "--resume", "latest"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith(str(11 * 64)) and summary["steps"] == 16
    assert main([*args, "--resume", "ck"]) == 2


@pytest.mark.parametrize("fast", [False, True])
def test_lr_warm_up_and_decay_reach_the_step(tmp_path, fast, monkeypatch):
    """TrainConfig's warm-up / decay become SAELens's schedule: the optimizer's rate at each step (which the
    fast step reads every step, install_fast_step) rises, stays at lr, then falls linearly to lr_end."""
    import sae_rdp_plugin.train.lm as lm

    seen = []
    real = lm._Run.step

    def spy(self, x):
        seen.append(self.trainer.optimizer.param_groups[0]["lr"])
        return real(self, x)

    monkeypatch.setattr(lm._Run, "step", spy)
    c = cfg("topk", lr=1e-2, lr_warm_up_steps=4, lr_decay_steps=4, lr_end=1e-3)
    train_saes(
        iter(make_batches(12, hooks={"h.a": 16})),
        [SAESpec("h.a", c, tmp_path / "t")],
        tokens=12 * B,
        fast=fast,
        progress=False,
    )
    assert len(seen) == 12
    assert seen[0] < seen[1] < seen[3] < 1e-2 + 1e-12 and seen[4] == pytest.approx(1e-2)  # warm-up, then flat
    assert seen[7] == pytest.approx(1e-2) and seen[8] > seen[9] > seen[11] > 1e-3 - 1e-12  # linear decay


def test_lr_schedule_longer_than_the_run_is_refused():
    with pytest.raises(SaeRdpError, match="exceed the run's 12 steps"):
        cfg("topk", lr_warm_up_steps=8, lr_decay_steps=8)
