"""train_sweep: statistical parity with train_toy_sae, checkpoint/resume after an interrupt or a kill,
training a subset of groups (``groups=``) into one folder."""

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
from sae_rdp_plugin.sweep.config import DGPSpec, SweepConfig, load_config
from sae_rdp_plugin.sweep.data import build_dgp, saelens_toy_data
from sae_rdp_plugin.sweep.export import saelens_training_sae
from sae_rdp_plugin.sweep.members import enumerate_members, group_members
from sae_rdp_plugin.sweep.train import load_results, train_sweep


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
    sae = saelens_training_sae(cfg, enumerate_members(cfg)[0], 10)
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
from sae_rdp_plugin.sweep.config import load_config
from sae_rdp_plugin.sweep.train import train_sweep
train_sweep(load_config(sys.argv[1]), sys.argv[2], resume=True, progress=False)
"""


def test_interrupt_and_resume_in_process(tmp_path, small_cfg):
    """Interrupt (KeyboardInterrupt) mid-way through the second group; resume keeps the first group's
    results and continues the second from its last checkpoint."""
    cfg = SweepConfig.from_dict(small_cfg(steps=120, checkpoint_every=40))
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
def test_kill_and_resume(tmp_path, small_cfg):
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(small_cfg(steps=3000)))
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


def _member_texts(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((out / "members").glob("*.json"))}


def test_groups_in_parts_equal_one_full_run(tmp_path, small_cfg):
    """Groups trained one call at a time, last group first, into one folder: member results bit-identical
    to one full run; state.json only ever lists the groups trained so far; results.json once all are done."""
    cfg = SweepConfig.from_dict(small_cfg(steps=40, checkpoint_every=20, seeds=[0, 1], max_group_size=3))
    full = train_sweep(cfg, tmp_path / "full", progress=False)
    gids = [g for g, _ in group_members(cfg)]
    assert len(gids) == 5  # in chunks of 3: topk 2 DGPs x 2 ks x 2 seeds = 3 + 3 + 2, standard 2 x 2 = 3 + 1
    out = tmp_path / "parts"
    trained: list[str] = []
    for part in ([gids[4]], [gids[0], gids[2]], [gids[3], gids[1]]):
        assert not (out / "results.json").exists()
        res = train_sweep(cfg, out, resume=bool(trained), progress=False, groups=part)
        trained += part
        state = json.loads((out / "state.json").read_text())
        assert sorted(state["groups"]) == sorted(trained)
        assert all(v["status"] == "done" for v in state["groups"].values())
        assert len(state["members"]) == len(full)  # the grid's index is always whole
        mine = [m.member_id for g, ms in group_members(cfg) if g in part for m in ms]
        assert [r["member_id"] for r in res] == mine  # this call's members, grid order
        assert len(load_results(out, allow_partial=True)) == sum(
            len(ms) for g, ms in group_members(cfg) if g in trained
        )
    assert _member_texts(out) == _member_texts(tmp_path / "full")
    assert (
        json.loads((out / "results.json").read_text())["members"]
        == json.loads((tmp_path / "full" / "results.json").read_text())["members"]
    )
    for g in gids:  # weights, Adam moments and RNG states too
        assert (out / "groups" / f"{g}.safetensors").read_bytes() == (
            tmp_path / "full" / "groups" / f"{g}.safetensors"
        ).read_bytes()
    # a done group asked for again is kept as it is
    seen = []
    again = train_sweep(cfg, out, resume=True, progress=False, groups=[gids[0]], on_step=lambda g, s: seen.append(s))
    assert not seen and again == full[:3]
    assert _member_texts(out) == _member_texts(tmp_path / "full")


def test_groups_unknown_or_empty(tmp_path, small_cfg):
    cfg = SweepConfig.from_dict(small_cfg(steps=20))
    with pytest.raises(SaeRdpError, match="unknown sweep group id.*topk_w9_d8_c0"):
        train_sweep(cfg, tmp_path / "sw", progress=False, groups=["topk_w4_d8_c0", "topk_w9_d8_c0"])
    assert not (tmp_path / "sw").exists()  # refused before touching the folder
    assert train_sweep(cfg, tmp_path / "sw", progress=False, groups=[]) == []
    state = json.loads((tmp_path / "sw" / "state.json").read_text())
    assert state["groups"] == {} and not (tmp_path / "sw" / "results.json").exists()
