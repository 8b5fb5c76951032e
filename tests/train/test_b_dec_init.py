"""TrainConfig.b_dec_init: "mean" sets b_dec to the float64 mean of the normalised rows of the batches before
training (checked against an independent computation, on SAELens's step and the fast step), "zeros" leaves
training as it was, "mean" helps where it should (a large constant offset), the saved SAE reads raw
activations, resume keeps the checkpoint's b_dec, and the other trainers and the CLI refuse what they
cannot honour."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_lm import B, D, cfg, make_batches, reference_fit

import sae_rdp_plugin.train.lm as lm
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.train.config import TrainConfig
from sae_rdp_plugin.train.lm import SAESpec, latest_checkpoint, train_saes

NORM = "expected_average_only_in"


@pytest.fixture
def first_step_b_dec(monkeypatch):
    """b_dec of every SAE (and of its fast step's own copy, if any) when its first training step starts."""
    seen: dict[int, dict[str, torch.Tensor]] = {}
    real = lm.SteppedFit.step

    def step(self, batch):
        if id(self) not in seen:
            ft = getattr(self.trainer, "fast_step", None)
            seen[id(self)] = {
                "sae": self.trainer.sae.b_dec.detach().clone(),
                "fast": None if ft is None else ft.b_dec.detach().clone(),
            }
        return real(self, batch)

    monkeypatch.setattr(lm.SteppedFit, "step", step)
    return seen


def normalised_mean(xs: list[torch.Tensor], norm: bool) -> torch.Tensor:
    """Brute force: rows x * sqrt(d) / mean_rows ||x|| (or x), averaged, in float64."""
    x = torch.cat(xs).double()
    if norm:
        x = x * x.shape[1] ** 0.5 / x.norm(dim=1).mean()
    return x.mean(0)


@pytest.mark.parametrize("fast", [False, True])
def test_mean_init_is_the_float64_mean_of_the_normalised_batches(tmp_path, first_step_b_dec, fast):
    data = make_batches(12)
    mean = {"b_dec_init": "mean"}
    specs = [
        SAESpec("h.a", cfg("topk", normalize_activations=NORM, n_batches_for_norm_estimate=3, **mean), tmp_path / "a"),
        SAESpec(
            "h.a",
            cfg("weighted_topk", gamma_estimation_batches=2, n_batches_for_norm_estimate=2, **mean),
            tmp_path / "w",
        ),
        SAESpec("h.b", cfg("standard", d_sae=24, normalize_activations=NORM, **mean), tmp_path / "s"),
        SAESpec("h.b", cfg("topk"), tmp_path / "z"),
    ]
    res = train_saes(iter(data), specs, tokens=2 * B, fast=fast, progress=False)
    # the stream: 2 gamma batches, then the 4 batches of the normalisation / mean estimates, then training
    assert res[0]["gamma_batches"] == 2 and res[0]["norm_batches"] == 4 and res[0]["stream_batches"] == 2 + 4 + 2
    assert lm.batches_before_training(specs) == 2 + 4  # what the stream gave before training, told beforehand
    expect = [
        normalised_mean([b["h.a"] for b in data[2:5]], norm=True),
        normalised_mean([b["h.a"] for b in data[2:4]], norm=False),
        normalised_mean([b["h.b"] for b in data[2:6]], norm=True),
        torch.zeros(D, dtype=torch.float64),
    ]
    got = list(first_step_b_dec.values())
    assert len(got) == 4
    for spec, g, e in zip(specs, got, expect):
        assert e.abs().max() > 0.1 or spec.cfg.b_dec_init == "zeros"  # a real offset to find
        torch.testing.assert_close(g["sae"].double(), e, rtol=1e-6, atol=1e-6, msg=spec.out.name)
        if g["fast"] is not None:  # the fast step's parameters start from it too
            torch.testing.assert_close(g["fast"].double(), e, rtol=1e-6, atol=1e-6, msg=spec.out.name)
    assert [g["fast"] is not None for g in got] == [fast, fast, False, fast]
    assert [r["b_dec_init"] for r in res] == ["mean", "mean", "mean", "zeros"]
    for spec in specs:
        md = json.loads((spec.out / "cfg.json").read_text())["metadata"]
        assert md["b_dec_init"] == spec.cfg.b_dec_init


@pytest.mark.parametrize("fast", [False, True])
def test_zeros_is_todays_training(tmp_path, fast):
    """A "zeros" SAE is bit-identical whether its neighbour initialises b_dec by the mean or not, and (SAELens's
    step) equals SAELens's own SAETrainer.fit on the same batches; the neighbour's "mean" does change it."""
    data = make_batches(20)
    zero = SAESpec("h.a", cfg("topk", tokens=8 * B), tmp_path / "run0" / "z")

    def run(name, b_dec_init):
        other = cfg("weighted_topk", gamma_estimation_batches=3, normalize_activations=NORM, b_dec_init=b_dec_init)
        specs = [SAESpec("h.a", zero.cfg, tmp_path / name / "z"), SAESpec("h.a", other, tmp_path / name / "w")]
        train_saes(iter(data), specs, tokens=8 * B, fast=fast, progress=False)
        return [load_file(s.out / "sae_weights.safetensors") for s in specs]

    (z0, w0), (z1, w1) = run("run0", "zeros"), run("run1", "mean")
    for k in z0:
        assert torch.equal(z0[k], z1[k]), k
    assert not torch.equal(w0["b_dec"], w1["b_dec"])
    if not fast:  # the stream: 3 gamma batches, 4 normalisation batches, then training
        hb = [b["h.a"] for b in data]
        reference_fit(zero.cfg, hb[7:]).save_inference_model(tmp_path / "ref")
        ref = load_file(tmp_path / "ref" / "sae_weights.safetensors")
        for k in z0:
            assert torch.equal(z0[k], ref[k]), k


def offset_batches(n: int, seed: int, offset: float = 20.0) -> list[dict[str, torch.Tensor]]:
    """Sparse codes times a unit-norm dictionary (row norms ~0.5) plus ``offset`` in dimension 0: a massive,
    nearly constant dimension, as in Gemma-3's residual stream."""
    g = torch.Generator().manual_seed(seed)
    dic = torch.randn(4 * D, D, generator=torch.Generator().manual_seed(100))
    dic /= dic.norm(dim=1, keepdim=True)
    out = []
    for _ in range(n):
        codes = torch.rand(B, 4 * D, generator=g) * (torch.rand(B, 4 * D, generator=g) < 0.05)
        x = codes @ dic
        x[:, 0] += offset
        out.append({"h.a": x})
    return out


def test_mean_init_learns_a_constant_offset_that_zeros_does_not(tmp_path):
    """300 Adam steps at lr 3e-3 cannot move b_dec by the offset (~4 in normalised units) from zero: the
    "zeros" SAE spends its latents on the offset (most die, FVU ~1); "mean" starts at it."""
    steps = 300
    held = offset_batches(4, seed=99)
    x_mean = torch.cat([b["h.a"] for b in held]).mean(0)
    out: dict[str, dict] = {}
    for init in ("zeros", "mean"):
        c = cfg("topk", d_sae=64, tokens=steps * B, normalize_activations=NORM, b_dec_init=init, seed=0)
        spec = SAESpec("h.a", c, tmp_path / init)
        (r,) = train_saes(
            iter(offset_batches(steps + 4, seed=0)), [spec], tokens=steps * B, heldout=iter(held), progress=False
        )
        b_dec = load_file(spec.out / "sae_weights.safetensors")["b_dec"]
        out[init] = {"b_dec_error": float((b_dec - x_mean).norm()), **r}
    z, m = out["zeros"], out["mean"]
    assert m["b_dec_error"] < 0.05 * z["b_dec_error"], (m["b_dec_error"], z["b_dec_error"])
    assert m["heldout_dead_fraction"] + 0.3 < z["heldout_dead_fraction"], out
    assert m["heldout_fvu"] < 0.5 < 0.9 < z["heldout_fvu"], out


def test_saved_mean_sae_reconstructs_raw_activations(tmp_path, monkeypatch):
    """The stock-loaded SAE (scaling factor folded in) on raw held-out rows has the FVU the training SAE had on
    the same rows normalised, just before the fold."""
    from sae_lens import SAE

    held = torch.cat([b["h.a"] for b in offset_batches(4, seed=99)])
    in_training = {}
    real_finish = lm.SteppedFit.finish

    @torch.no_grad()
    def finish(self):
        sae, u = self.trainer.sae, self.trainer.activation_scaler.scale(held)
        err = u - sae.decode(sae.encode(u))
        in_training["fvu"] = float(err.pow(2).sum() / (u - u.mean(0)).pow(2).sum())
        return real_finish(self)

    monkeypatch.setattr(lm.SteppedFit, "finish", finish)
    c = cfg("topk", d_sae=64, tokens=200 * B, normalize_activations=NORM, b_dec_init="mean")
    spec = SAESpec("h.a", c, tmp_path / "m")
    train_saes(iter(offset_batches(204, seed=0)), [spec], tokens=200 * B, progress=False)
    sae = SAE.load_from_disk(spec.out)
    assert sae.cfg.normalize_activations == "none" and sae.cfg.metadata.b_dec_init == "mean"
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(held))
    fvu = float((held - x_hat).pow(2).sum() / (held - held.mean(0)).pow(2).sum())
    assert fvu < 0.5 and fvu == pytest.approx(in_training["fvu"], abs=1e-3), (fvu, in_training)


def test_resume_keeps_the_checkpoints_b_dec(tmp_path):
    """An interrupted "mean" run, resumed with the batches after its checkpoint, draws no mean batches again
    and ends where the uninterrupted run ends (a re-initialised b_dec, or a re-drawn estimate, would not)."""
    n_pre = 4  # the mean's batches (n_batches_for_norm_estimate), drawn before training
    batches = make_batches(n_pre + 12, hooks={"h.a": D})

    def specs(root):
        return [SAESpec("h.a", cfg("topk", n_checkpoints=2, b_dec_init="mean"), root / "t")]

    train_saes(iter(batches), specs(tmp_path / "ref"), tokens=12 * B, progress=False)
    with pytest.raises(SaeRdpError, match="ended after"):
        train_saes(iter(batches[: n_pre + 10]), specs(tmp_path / "run"), tokens=12 * B, progress=False)
    assert latest_checkpoint(tmp_path / "run" / "t")[2] == 9 * B
    (r,) = train_saes(iter(batches[n_pre + 9 :]), specs(tmp_path / "run"), tokens=12 * B, progress=False, resume=True)
    assert r["resumed_from"] and r["norm_batches"] == 0 and r["stream_batches"] == 3
    a = load_file(tmp_path / "run" / "t" / "sae_weights.safetensors")
    b = load_file(tmp_path / "ref" / "t" / "sae_weights.safetensors")
    for k in b:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), (k, (a[k] - b[k]).abs().max())


def test_bad_value_and_trainers_that_cannot_honour_mean(tmp_path):
    from sae_rdp_plugin.train.ddp import train_distributed
    from sae_rdp_plugin.train.distributed import DistContext
    from sae_rdp_plugin.train.grid import sweep_distributed
    from sae_rdp_plugin.train.saelens import runner_config, train_synthetic

    with pytest.raises(SaeRdpError, match=r"^b_dec_init must be one of zeros, mean, got 'median'$"):
        TrainConfig("topk", 8, 16, k=4, b_dec_init="median")
    c = TrainConfig("topk", 8, 16, k=4, tokens=256, batch_size=64, b_dec_init="mean")
    solo = DistContext()
    calls = [
        lambda: train_synthetic(c, tmp_path / "syn"),
        lambda: runner_config(c, model_name="m", hook_name="h", out=tmp_path / "rc"),
        lambda: train_distributed(c, tmp_path / "dist", solo),
        lambda: sweep_distributed(TrainConfig("topk", 8, 16, k=4), [{"b_dec_init": "mean"}], tmp_path / "g", solo),
    ]
    for call in calls:
        with pytest.raises(SaeRdpError, match=r"b_dec_init='mean' needs sae-rdp train --model") as e:
            call()
        assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "err"),
    [
        (["--synthetic", "--d-in", "8", "--b-dec-init", "median"], "argument --b-dec-init: invalid choice: 'median'"),
        (["--synthetic", "--d-in", "8", "--b-dec-init", "mean"], "--b-dec-init mean: only with --model and without"),
    ],
)
def test_cli_refuses_bad_b_dec_init(tmp_path, capsys, extra, err):
    from sae_rdp_plugin.cli import main

    argv = ["train", "--d-sae", "16", "--k", "4", "--tokens", "2048", "--out", str(tmp_path / "run"), *extra]
    with pytest.raises(SystemExit) as e:  # argparse's exit, or the handler's SaeRdpError
        raise SystemExit(main(argv))
    assert e.value.code == 2
    out = capsys.readouterr().err.strip()
    assert out.startswith("error:") and err in out and "\n" not in out
    assert list(tmp_path.iterdir()) == []


def test_cli_model_run_records_mean(tmp_path, tiny_corpus):
    from sae_lens import SAE

    from sae_rdp_plugin.cli import main

    out = tmp_path / "run"
    args = ["train", "--model", "tiny-gemma3", "--dataset", str(tiny_corpus), "--out", str(out)]
    args += ["--hook", "blocks.1.hook_resid_post", "--architecture", "topk", "--d-sae", "64", "--k", "4"]
    args += ["--tokens", "512", "--batch-size", "64", "--buffer-tokens", "256", "--model-dtype", "float32"]
    assert main([*args, "--b-dec-init", "mean"]) == 0
    assert json.loads((out / "train_summary.json").read_text())["b_dec_init"] == "mean"
    assert SAE.load_from_disk(out).cfg.metadata.b_dec_init == "mean"
