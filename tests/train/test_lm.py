"""train_saes: several SAEs of several hooks from one stream, in lockstep; checked against SAELens's own
SAETrainer.fit on the same batches, gamma against a float64 reference, outputs against stock loading."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

import sae_rdp_plugin.train.lm as lm
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.train.config import TrainConfig
from sae_rdp_plugin.train.lm import SAESpec, SteppedFit, check_out_dir, grid_specs, train_saes
from sae_rdp_plugin.train.saelens import build_training_sae
from sae_rdp_plugin.wsae.gamma import gamma_from_variance, load_gamma_file

D, B = 16, 64


def make_batches(n: int, seed: int = 0, hooks: dict[str, int] | None = None) -> list[dict[str, torch.Tensor]]:
    """Sparse non-negative codes times a random dictionary, with per-dimension scales (so gamma is not flat)."""
    hooks = hooks or {"h.a": D, "h.b": D}
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        b = {}
        for i, (h, d) in enumerate(hooks.items()):
            codes = torch.rand(B, 4 * d, generator=g) * (torch.rand(B, 4 * d, generator=g) < 0.05)
            dic = torch.randn(4 * d, d, generator=torch.Generator().manual_seed(100 + i))
            b[h] = codes @ dic * torch.linspace(0.3, 3.0, d)
        out.append(b)
    return out


def cfg(arch: str = "topk", **kw) -> TrainConfig:
    base = {"d_in": D, "d_sae": 32, "k": 4, "batch_size": B, "tokens": 12 * B, "lr": 3e-3, "seed": 1}
    base.update(kw)
    return TrainConfig(arch, **base)


@pytest.fixture
def captured(monkeypatch):
    """The training SAEs train_saes builds (in spec order)."""
    saes = []

    def build(d):
        sae = build_training_sae(d)
        saes.append(sae)
        return sae

    monkeypatch.setattr(lm, "build_training_sae", build)
    return saes


def three_specs(tmp_path, **kw):
    return [
        SAESpec("h.a", cfg("topk", **kw), tmp_path / "a_topk"),
        SAESpec("h.a", cfg("weighted_topk", alpha=1.0, gamma_estimation_batches=3, d_sae=24, **kw), tmp_path / "a_w"),
        SAESpec("h.b", cfg("topk", k=3, seed=2, **kw), tmp_path / "b_topk"),
    ]


def test_train_saes_saves_stock_loadable_saes(tmp_path, captured):
    from sae_lens import SAE

    specs = three_specs(tmp_path)
    res = train_saes(
        iter(make_batches(40)), specs, tokens=12 * B, heldout=iter(make_batches(3, seed=9)), heldout_batches=2
    )
    assert [r["name"] for r in res] == ["a_topk", "a_w", "b_topk"]
    x = make_batches(1, seed=5)[0]
    for spec, r, trained in zip(specs, res, captured):
        assert r["tokens"] == 12 * B and r["steps"] == 12 and r["fast_step"] is True
        assert r["fast_deterministic"] is (os.environ.get("SAE_RDP_FAST_DETERMINISTIC") == "1")
        assert r["heldout_tokens"] == 2 * B and 0 < r["heldout_fvu"] < 1.5
        assert r["heldout_l0"] <= spec.cfg.k + 1e-9 and 0 <= r["heldout_dead_fraction"] <= 1
        assert r["forward_s"] >= 0 and r["sae_step_s"] > 0 and r["tokens_per_s"] > 0
        assert r["gamma_batches"] == 3 and r["stream_batches"] == 3 + 12 + 0
        summary = json.loads((spec.out / "train_summary.json").read_text())
        assert summary["heldout_fvu"] == r["heldout_fvu"]
        loaded = SAE.load_from_disk(spec.out)
        trained.eval()
        xs = x[spec.hook]
        torch.testing.assert_close(loaded(xs), trained(xs), rtol=1e-6, atol=1e-6)
        assert torch.equal(loaded.encode(xs) != 0, trained.encode(xs) != 0)
    assert load_gamma_file(specs[1].out).gamma.shape == (D,)
    assert not (specs[0].out / "gamma.safetensors").exists()
    assert not list(tmp_path.glob(".*"))  # no staging folder left behind


def reference_fit(c: TrainConfig, batches: list[torch.Tensor], n_gamma: int = 0) -> torch.nn.Module:
    """SAELens's own SAETrainer.fit (gamma first for weighted SAEs), as train_synthetic runs it."""
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(c.seed)
    sae = build_training_sae(c.sae_config_dict())
    it = iter(batches)
    if n_gamma:
        sae.estimate_gamma(it, n_gamma)
    SAETrainer(cfg=c.trainer_config(), sae=sae, data_provider=it).fit()
    return sae


def test_lockstep_equals_saetrainer_fit(tmp_path, captured):
    specs = three_specs(tmp_path) + [
        SAESpec("h.b", cfg("topk", normalize_activations="expected_average_only_in", seed=3), tmp_path / "b_norm")
    ]
    data = make_batches(40)
    res = train_saes(iter(data), specs, tokens=12 * B, fast=False, progress=False)
    assert [r["fast_step"] for r in res] == [False] * 4
    assert [r["fast_deterministic"] for r in res] == [None] * 4  # SAELens's own step: the mode does not apply
    assert res[0]["gamma_batches"] == 3 and res[0]["norm_batches"] == 4
    n_gamma, n_norm = 3, 4  # every SAE skips the gamma batches, and the normalisation batches of any SAE
    for spec, ours in zip(specs, captured):
        hb = [b[spec.hook] for b in data]
        if spec.cfg.arch.weighted:
            ref = reference_fit(spec.cfg, hb[:n_gamma] + hb[n_gamma + n_norm :], n_gamma)
        elif spec.cfg.normalize_activations != "none":
            ref = reference_fit(spec.cfg, hb[n_gamma:])  # fit draws its own normalisation batches
        else:
            ref = reference_fit(spec.cfg, hb[n_gamma + n_norm :])
        for name, p in ref.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[name], p, rtol=0, atol=0, msg=f"{spec.out.name} {name}")
        assert ours.cfg.metadata.l0 == pytest.approx(ref.cfg.metadata.l0, abs=1e-6)
        if spec.cfg.arch.weighted:
            assert torch.equal(ours.gamma_float64, ref.gamma_float64)


def test_gamma_from_the_stream_equals_float64_reference(tmp_path):
    data = make_batches(8)
    specs = [SAESpec("h.b", cfg("weighted_topk", alpha=0.5, gamma_estimation_batches=5), tmp_path / "w")]
    train_saes(iter(data), specs, tokens=2 * B, progress=False)
    x = torch.cat([b["h.b"] for b in data[:5]]).double()
    expect = gamma_from_variance(x.var(0, unbiased=False), 0.5)
    got = load_gamma_file(tmp_path / "w").gamma
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=0)


def test_stepped_fit_is_fit(tmp_path):
    """SteppedFit.start/step/finish on one SAE is SAETrainer.fit (scaling-factor estimate and fold included)."""
    from sae_lens.training.sae_trainer import SAETrainer

    c = cfg("topk", normalize_activations="expected_average_only_in", tokens=6 * B)
    hb = [b["h.a"] for b in make_batches(10)]
    torch.manual_seed(c.seed)
    sae = build_training_sae(c.sae_config_dict())
    f = SteppedFit(SAETrainer(cfg=c.trainer_config(), sae=sae, data_provider=iter(())))
    assert f.norm_batches == c.n_batches_for_norm_estimate
    f.start(hb[:4])
    it = iter(hb[4:])
    while not f.done:
        f.step(next(it))
    f.finish()
    ref = reference_fit(c, hb)
    for name, p in ref.state_dict().items():
        torch.testing.assert_close(sae.state_dict()[name], p, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fast", [False, True])
def test_nan_batch_names_hook_sae_and_step(tmp_path, fast):
    data = make_batches(20)
    data[5]["h.a"][3, 2] = float("nan")
    specs = [SAESpec("h.b", cfg(), tmp_path / "b"), SAESpec("h.a", cfg(), tmp_path / "a", name="mine")]
    with pytest.raises(SaeRdpError, match=r"loss is nan for SAE 'mine' \(hook h.a\) at step 5"):
        train_saes(iter(data), specs, tokens=12 * B, fast=fast, progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing written, staging folders removed


def test_nan_in_gamma_batches_names_hook(tmp_path):
    data = make_batches(10)
    data[1]["h.a"][0, 0] = float("inf")
    specs = [SAESpec("h.a", cfg("weighted_topk", gamma_estimation_batches=3), tmp_path / "w")]
    with pytest.raises(SaeRdpError, match=r"h.a, gamma batch 1: activations contain NaN or Inf"):
        train_saes(iter(data), specs, tokens=4 * B, progress=False)


@pytest.mark.parametrize(
    ("spec_kw", "tokens", "match"),
    [
        ({"hook": "h.a", "d_in": 12}, 4 * B, r"d_in mismatch at h.a: the SAE config says d_in=12, the stream gives"),
        ({"hook": "h.zz"}, 4 * B, r"hook 'h.zz' is not in the activation stream \(it has \['h.a', 'h.b'\]\)"),
        ({"hook": "h.a"}, B - 1, r"tokens \(63\) must be at least one batch \(64 rows\)"),
        ({"hook": "h.a", "batch_size": 32}, 4 * B, r"h.a batch 1 has 64 rows, the SAEs' batch_size is 32"),
    ],
)
def test_bad_input(tmp_path, spec_kw, tokens, match):
    hook = spec_kw.pop("hook")
    spec = SAESpec(hook, cfg(**spec_kw), tmp_path / "x")
    with pytest.raises(SaeRdpError, match=match):
        train_saes(iter(make_batches(10)), [spec], tokens=tokens, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_stream_too_short_and_mixed_batch_sizes(tmp_path):
    with pytest.raises(SaeRdpError, match="the activation stream ended after 3 batches, during training"):
        train_saes(iter(make_batches(3)), [SAESpec("h.a", cfg(), tmp_path / "a")], tokens=4 * B, progress=False)
    two = [SAESpec("h.a", cfg(), tmp_path / "a"), SAESpec("h.b", cfg(batch_size=32), tmp_path / "b")]
    with pytest.raises(SaeRdpError, match=r"share its batch size; got batch_size \[32, 64\]"):
        train_saes(iter(make_batches(3)), two, tokens=4 * B)


def test_foreign_out_refused_and_left_intact(tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SaeRdpError, match="is not empty and holds no sae-rdp training run"):
        train_saes(iter(make_batches(10)), [SAESpec("h.a", cfg(), out)], tokens=4 * B)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(SaeRdpError, match="exists and is not a folder"):
        check_out_dir(f)


def test_earlier_output_is_replaced_and_checkpoints_written(tmp_path):
    out = tmp_path / "run"
    spec = SAESpec("h.a", cfg(n_checkpoints=2), out)
    train_saes(iter(make_batches(10)), [spec], tokens=4 * B, progress=False)
    assert len(list((out / "checkpoints").iterdir())) == 2
    (out / "notes.txt").write_text("a user's file")  # not a name training writes: the folder is not replaced
    with pytest.raises(SaeRdpError, match="is not empty and holds no sae-rdp training run"):
        train_saes(iter(make_batches(10, seed=1)), [spec], tokens=4 * B, progress=False)
    assert (out / "notes.txt").read_text() == "a user's file"
    (out / "notes.txt").unlink()
    (out / "checkpoints" / "stale").mkdir()  # inside a folder training writes: replaced with it
    train_saes(iter(make_batches(10, seed=1)), [spec], tokens=4 * B, progress=False)
    assert not (out / "checkpoints" / "stale").exists() and (out / "cfg.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_progress_bar_shows_rate_loss_l0(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(lm, "REFRESH_S", 0.0)
    train_saes(iter(make_batches(10)), [SAESpec("h.a", cfg(), tmp_path / "a")], tokens=4 * B, progress=True)
    err = capsys.readouterr().err
    assert "tok/s=" in err and "loss=" in err and "L0=4.0" in err


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(SaeRdpError, match="wandb_project needs wandb: pip install wandb"):
        train_saes(iter(make_batches(10)), [SAESpec("h.a", cfg(), tmp_path / "a")], tokens=4 * B, wandb_project="p")


def test_wandb_logging_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(lm, "REFRESH_S", 0.0)
    res = train_saes(
        iter(make_batches(10)), [SAESpec("h.a", cfg(), tmp_path / "a")], tokens=4 * B, wandb_project="p", progress=False
    )
    assert res[0]["steps"] == 4


def test_grid_specs_layout(tmp_path):
    one = grid_specs(["blocks.1.hook_resid_post"], [cfg()], tmp_path)
    assert one[0].out == tmp_path
    many = grid_specs(["h.a", "h.b"], [cfg(), cfg("weighted_topk", k=8)], tmp_path)
    assert [str(s.out.relative_to(tmp_path)) for s in many] == [
        "h.a/topk-d32-k4",
        "h.a/weighted_topk-d32-k8-a1",
        "h.b/topk-d32-k4",
        "h.b/weighted_topk-d32-k8-a1",
    ]
    with pytest.raises(SaeRdpError, match="duplicate SAEs"):
        grid_specs(["h.a"], [cfg(), cfg()], tmp_path)


def test_batchtopk_dense_fallbacks_are_counted_in_the_summary(tmp_path, monkeypatch):
    """BatchTopK keeps k x B activations per batch; with one candidate per row (fewer than k x B) the candidate
    selection can never be exact, so every step must take the dense fallback and the summary must say so.
    With the default 4k candidates the count lies between 0 and the steps; TopK reports None."""
    import sae_rdp_plugin.fast.step as fs

    real = fs.install_fast_step
    specs = [SAESpec("h.a", cfg("batchtopk"), tmp_path / "btk"), SAESpec("h.a", cfg("topk"), tmp_path / "tk")]
    res = train_saes(iter(make_batches(20)), specs, tokens=12 * B)
    assert 0 <= res[0]["batchtopk_dense_fallback_steps"] <= res[0]["steps"] == 12
    assert res[1]["batchtopk_dense_fallback_steps"] is None and res[1]["fast_step"] is True
    monkeypatch.setattr(fs, "install_fast_step", lambda tr, ctx=None: real(tr, ctx, batchtopk_candidates=0.25))
    (r,) = train_saes(iter(make_batches(20)), [SAESpec("h.a", cfg("batchtopk"), tmp_path / "btk1")], tokens=12 * B)
    assert r["fast_step"] is True and r["batchtopk_dense_fallback_steps"] == r["steps"] == 12
    summary = json.loads((tmp_path / "btk1" / "train_summary.json").read_text())
    assert summary["batchtopk_dense_fallback_steps"] == 12


def test_train_summary_records_the_deterministic_mode(tmp_path, monkeypatch):
    """SAE_RDP_FAST_DETERMINISTIC=1 reaches the fast step and its train summary says so (a later rerun is checked
    against SAEs trained in that mode)."""
    monkeypatch.setenv("SAE_RDP_FAST_DETERMINISTIC", "1")
    spec = SAESpec("h.a", cfg("topk"), tmp_path / "a")
    res = train_saes(iter(make_batches(8)), [spec], tokens=4 * B, progress=False)
    assert res[0]["fast_step"] is True and res[0]["fast_deterministic"] is True
    assert json.loads((spec.out / "train_summary.json").read_text())["fast_deterministic"] is True
