"""Batched sweep trainer: step-by-step parity with SAELens's own SAETrainer, statistical parity with
train_toy_sae, checkpoint/resume after a kill, SAELens export, config errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.sweep.core import (
    DGPSpec,
    StackedSAEs,
    SweepConfig,
    _saelens_training_sae,
    build_dgp,
    enumerate_members,
    export_member,
    load_config,
    saelens_toy_data,
    train_sweep,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the dev machine is shared; tiny matmuls are faster on one thread
    yield
    torch.set_num_threads(n)


def _trainer_cfg(steps, batch, lr, dead_window):
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    return SAETrainerConfig(
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        total_training_samples=steps * batch,
        device="cpu",
        autocast=False,
        lr=lr,
        lr_end=lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        lr_decay_steps=0,
        n_restart_cycles=1,
        train_batch_size_samples=batch,
        dead_feature_window=dead_window,
        feature_sampling_window=2000,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
        n_batches_for_norm_estimate=10,
    )


@pytest.mark.parametrize(
    "arch, knob",
    [
        ("topk", {"ks": [2]}),
        ("batchtopk", {"ks": [1.5]}),
        ("standard", {"l1_coefficients": [0.3]}),
        ("jumprelu", {"l0_coefficients": [0.05]}),
    ],
)
def test_step_parity_with_saelens_trainer(arch, knob):
    """Same init, same batches: the stacked trainer and SAELens's SAETrainer give the same weights."""
    from sae_lens.training.sae_trainer import SAETrainer

    steps, batch, lr, window = 40, 64, 3e-3, 5  # window 5: the AuxK dead-latent loss is exercised
    spec = DGPSpec(name="p", m=6, d=10, rho=0.4, q=0.2)
    cfg = SweepConfig(
        dgps=[spec],
        architectures=[arch],
        widths=[8],
        seeds=[3, 4],
        steps=steps,
        batch_size=batch,
        lr=lr,
        dead_feature_window=window,
        **knob,
    )
    built = build_dgp(spec, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    batches = [built.sample(batch, g)[0].float() for _ in range(steps)]
    mbs = enumerate_members(cfg)
    model = StackedSAEs(cfg, arch, 8, 10, mbs, {"p": built.concepts}, torch.device("cpu"))
    ref = _saelens_training_sae(cfg, mbs[0], 10)
    ref.load_state_dict(model.member_state(0))
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    for s, xb in enumerate(batches):
        loss, _ = model.loss(xb.unsqueeze(0).expand(len(mbs), -1, -1), s)
        loss.sum().backward()
        model.clip_grads_(1.0)
        opt.step()
        opt.zero_grad()
    trainer = SAETrainer(cfg=_trainer_cfg(steps, batch, lr, window), sae=ref, data_provider=iter(batches))
    trainer.fit()
    got = model.member_state(0)
    for k, v in ref.state_dict().items():
        assert torch.allclose(got[k].to(v.dtype), v, atol=2e-4, rtol=1e-3), (arch, k, (got[k] - v).abs().max())
    assert (model.since_fired[0] > window).sum() == trainer.dead_neurons.sum()


def test_statistical_parity_with_train_toy_sae(tmp_path):
    """One grid member vs the same SAE trained alone by sae_lens.synthetic.train_toy_sae on the same DGP
    (different random streams): final rate, distortion and P agree within seed noise.
    Tolerances: rate within 0.05 (TopK: L0 = K unless a ReLU zeroes a pick), distortion within
    0.03 + 3 x (seed std of the batched members), P_dec within 0.1 + 3 x std."""
    from sae_lens.synthetic import train_toy_sae

    from sae_rdp_plugin.rdp.metrics import polysemanticity, rate_distortion

    steps, batch, lr = 300, 256, 3e-3
    spec = DGPSpec(name="p", m=6, d=10, rho=0.3, q=0.15)
    cfg = SweepConfig(
        dgps=[spec],
        architectures=["topk"],
        widths=[6],
        ks=[2],
        seeds=[0, 1, 2, 3],
        steps=steps,
        batch_size=batch,
        lr=lr,
        eval_samples=4000,
    )
    res = train_sweep(cfg, tmp_path / "sw", progress=False)
    built = build_dgp(spec)
    fd, gen = saelens_toy_data(built, seed=99)
    torch.manual_seed(0)
    sae = _saelens_training_sae(cfg, enumerate_members(cfg)[0], 10)
    train_toy_sae(sae, fd, gen, training_samples=steps * batch, batch_size=batch, lr=lr)
    x, _ = built.sample(4000, torch.Generator().manual_seed(cfg.eval_seed))
    rd = rate_distortion(sae, x)
    p = polysemanticity(sae.W_dec.detach(), built.concepts)
    D = torch.tensor([r["distortion"] for r in res])
    P = torch.tensor([r["P_dec"] for r in res])
    R = torch.tensor([r["rate"] for r in res])
    assert abs(rd.rate - float(R.mean())) < 0.05
    assert abs(rd.distortion - float(D.mean())) < 0.03 + 3 * float(D.std())
    assert abs(p - float(P.mean())) < 0.1 + 3 * float(P.std())
    # and the batched members match the theory's TopK point when they are monosemantic
    es = built.expected_size
    assert es == pytest.approx(float(built.pmf.marginals().sum()))


_KILL_SCRIPT = r"""
import sys, torch
torch.set_num_threads(1)
from sae_rdp_plugin.sweep.core import load_config, train_sweep
train_sweep(load_config(sys.argv[1]), sys.argv[2], resume=True, progress=False)
"""


def _small_cfg(**kw):
    base = dict(
        dgps=[{"name": "a", "m": 4, "d": 8, "rho": 0.5, "q": 0.2}, {"name": "b", "m": 4, "d": 8, "rho": 0.0, "q": 0.2}],
        architectures=["topk", "standard"],
        widths=[4],
        ks=[1, 2],
        l1_coefficients=[0.1],
        seeds=[0],
        steps=300,
        batch_size=64,
        lr=3e-3,
        eval_samples=500,
        checkpoint_every=50,
    )
    base.update(kw)
    return base


def test_interrupt_and_resume_in_process(tmp_path):
    """Interrupt (KeyboardInterrupt) mid-way through the second group; resume keeps the first group's
    results and continues the second from its last checkpoint."""
    cfg = SweepConfig.from_dict(_small_cfg(steps=120, checkpoint_every=40))
    out = tmp_path / "sw"

    def boom(gid, step):
        if gid.startswith("standard") and step == 90:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sweep(cfg, out, progress=False, on_step=boom)
    state = json.loads((out / "state.json").read_text())
    done = [g for g, v in state["groups"].items() if v["status"] == "done"]
    assert (
        len(done) == 1 and state["groups"][next(g for g in state["groups"] if g.startswith("standard"))]["step"] == 80
    )
    finished = {m: (out / "members" / f"{m}.json").read_text() for m, g in state["members"].items() if g in done}
    seen = []
    res = train_sweep(cfg, out, resume=True, progress=False, on_step=lambda gid, s: seen.append((gid, s)))
    assert len(res) == len(enumerate_members(cfg))
    assert all(g.startswith("standard") for g, _ in seen) and seen[0][1] == 81
    for m, text in finished.items():
        assert (out / "members" / f"{m}.json").read_text() == text


@pytest.mark.slow
def test_kill_and_resume(tmp_path):
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(_small_cfg(steps=3000)))
    out = tmp_path / "sw"
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, str(script), str(cfg_path), str(out)], env=env)
    # wait until the first group is finished and the second has a checkpoint, then kill -9
    deadline = time.time() + 240
    while time.time() < deadline:
        st = out / "state.json"
        if st.exists():
            try:
                groups = json.loads(st.read_text())["groups"]
            except (json.JSONDecodeError, KeyError):
                groups = {}
            done = [g for g, v in groups.items() if v["status"] == "done"]
            running = [g for g, v in groups.items() if v["status"] == "running"]
            if done and running:
                break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("sweep did not reach the kill point in time")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((out / "state.json").read_text())
    done_group = next(g for g, v in state["groups"].items() if v["status"] == "done")
    finished = {m: (out / "members" / f"{m}.json").read_text() for m, g in state["members"].items() if g == done_group}
    assert finished and all(finished.values())
    running_step = next(v["step"] for v in state["groups"].values() if v["status"] == "running")
    assert 0 < running_step < 3000
    # resume: finished members untouched, the rest completes
    cfg = load_config(cfg_path)
    seen_steps = []
    res = train_sweep(cfg, out, resume=True, progress=False, on_step=lambda gid, s: seen_steps.append(s))
    assert len(res) == len(enumerate_members(cfg))
    for m, text in finished.items():
        assert (out / "members" / f"{m}.json").read_text() == text
    assert min(seen_steps) == running_step + 1  # continued from the checkpoint, not from step 0
    with pytest.raises(SaeRdpError, match="already holds"):
        train_sweep(cfg, out, resume=False, progress=False)


def test_export_loads_with_stock_saelens(tmp_path):
    from sae_lens import SAE

    cfg = SweepConfig.from_dict(
        _small_cfg(
            architectures=["topk", "standard", "jumprelu", "batchtopk"],
            ks=[2],
            l0_coefficients=[0.01],
            steps=60,
            dgps=[{"name": "a", "m": 4, "d": 8, "rho": 0.5, "q": 0.2}],
        )
    )
    out = tmp_path / "sw"
    res = train_sweep(cfg, out, progress=False)
    x, _ = build_dgp(cfg.dgps[0]).sample(cfg.eval_samples, torch.Generator().manual_seed(cfg.eval_seed))
    expected_arch = {"topk": "topk", "standard": "standard", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}
    for r in res:
        dest = export_member(out, r["member_id"], tmp_path / "export" / r["member_id"])
        assert json.loads((dest / "cfg.json").read_text())["architecture"] == expected_arch[r["architecture"]]
        sae = SAE.load_from_disk(dest)
        with torch.no_grad():
            z = sae.encode(x)
            xh = sae.decode(z)
        assert float((z != 0).float().sum(1).mean()) == pytest.approx(r["rate"], abs=1e-3)
        assert float((x - xh).pow(2).sum(1).mean()) == pytest.approx(r["distortion"], rel=1e-3, abs=1e-5)
    with pytest.raises(SaeRdpError, match="unknown member"):
        export_member(out, "nope", tmp_path / "x")


@pytest.mark.parametrize(
    "patch, msg",
    [
        ({"architectures": ["gated"]}, "unknown architecture"),
        ({"widths": [0]}, "widths"),
        ({"bogus": 1}, "unknown sweep config key"),
        ({"dgps": [{"name": "a", "kind": "zipf"}]}, "unknown kind"),
        ({"dgps": [{"m": 3}]}, "needs a 'name'"),
        ({"l1_coefficients": [-1.0], "architectures": ["standard"]}, ">= 0"),
        ({"steps": 0}, "steps"),
    ],
)
def test_bad_config(patch, msg):
    with pytest.raises(SaeRdpError, match=msg):
        SweepConfig.from_dict(_small_cfg(**patch))


def test_cli_bad_config(tmp_path):
    from sae_rdp_plugin.cli import main

    p = tmp_path / "c.json"
    p.write_text("{not json")
    assert main(["sweep", "run", "--config", str(p), "--out", str(tmp_path / "o")]) == 2
    p.write_text(json.dumps(_small_cfg(architectures=["gated"])))
    assert main(["sweep", "run", "--config", str(p), "--out", str(tmp_path / "o")]) == 2
