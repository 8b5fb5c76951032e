"""train_saes(fast_options=...): FastTopKConfig fields over the fast step's defaults reach the installed fast
step (and change nothing else); unknown fields and the fields train_saes takes from the SAE's own configs fail
with one SaeRdpError before anything is written."""

from __future__ import annotations

import pytest
from test_lm import B, cfg, make_batches

import sae_rdp_plugin.fast.step as step_mod
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.train.lm import SAESpec, train_saes


def test_fast_options_reach_the_fast_step(tmp_path, monkeypatch):
    installed = []
    real = step_mod.install_fast_step

    def spy(trainer, ctx=None, **kw):
        ft = real(trainer, ctx=ctx, **kw)
        installed.append(ft)
        return ft

    monkeypatch.setattr(step_mod, "install_fast_step", spy)
    specs = [SAESpec("h.a", cfg("topk"), tmp_path / "a"), SAESpec("h.a", cfg("topk"), tmp_path / "b")]
    opts = {"aux_compact": "off", "hot_rows": 0}
    train_saes(iter(make_batches(4)), specs[:1], tokens=2 * B, progress=False, fast_options=opts)
    train_saes(iter(make_batches(4)), specs[1:], tokens=2 * B, progress=False)
    on, off = installed
    assert (on.cfg.aux_compact, on.cfg.hot_rows) == ("off", 0)
    assert (off.cfg.aux_compact, off.cfg.hot_rows) == ("auto", -1)  # the defaults without options
    assert on.cfg.lr == off.cfg.lr and on.cfg.k == off.cfg.k  # the rest still from the SAE's configs


@pytest.mark.parametrize("opts,word", [({"aux_compactt": "auto"}, "aux_compactt"), ({"lr": 1.0}, "'lr'")])
def test_bad_fast_options_fail_before_writing(tmp_path, opts, word):
    with pytest.raises(SaeRdpError, match=word):
        train_saes(
            iter(make_batches(4)),
            [SAESpec("h.a", cfg("topk"), tmp_path / "a")],
            tokens=2 * B,
            progress=False,
            fast_options=opts,
        )
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("fast", [False, True])
def test_train_dead_fraction_in_the_summary(tmp_path, fast):
    """train_summary's train_dead_fraction: latents silent for more than dead_feature_window steps at the end.
    Window 1 with k=1 and 64-row batches: at most 2 x 64 of 1024 latents fired in the last two steps, so at
    least 7/8 are dead; a window longer than the run: none."""
    short = SAESpec("h.a", cfg("topk", d_sae=1024, k=1, dead_feature_window=1), tmp_path / "short")
    long = SAESpec("h.a", cfg("topk", d_sae=1024, k=1, dead_feature_window=10**6), tmp_path / "long")
    res = train_saes(iter(make_batches(8)), [short, long], tokens=6 * B, progress=False, fast=fast)
    assert 1 - 2 * B / 1024 <= res[0]["train_dead_fraction"] < 1.0
    assert res[1]["train_dead_fraction"] == 0.0


def test_aux_widths_in_the_summary(tmp_path):
    """aux_steps_by_width: the fast step's steps per padded aux width ("0": no aux loss). Window 1: the first two
    steps have no dead latent by definition (a latent is dead once silent for more than one step), the other four
    run the aux loss over at least the >= 7/8 x 1024 dead latents (a padded width holds every dead latent)."""
    short = SAESpec("h.a", cfg("topk", d_sae=1024, k=1, dead_feature_window=1), tmp_path / "short")
    long = SAESpec("h.a", cfg("topk", d_sae=1024, k=1, dead_feature_window=10**6), tmp_path / "long")
    res = train_saes(iter(make_batches(8)), [short, long], tokens=6 * B, progress=False, fast=True)
    widths = res[0]["aux_steps_by_width"]
    assert widths.pop("0") == 2 and sum(widths.values()) == 4
    assert all(1024 * 7 / 8 <= int(w) <= 1024 for w in widths)
    assert 7 / 8 <= res[0]["mean_dead_fraction_aux_steps"] < 1.0
    assert res[1]["aux_steps_by_width"] == {"0": 6} and res[1]["mean_dead_fraction_aux_steps"] is None
    # the order they first ran: no aux loss first (window 1), then the aux widths
    order = res[0]["aux_widths_in_order"]
    assert order[0] == 0 and sorted(map(str, order)) == sorted({"0", *widths})
    assert len(set(order)) == len(order) and res[1]["aux_widths_in_order"] == [0]
    assert res[0]["first_steps_s_by_width"] == {}  # timed on CUDA only (test below)
    assert res[0]["cuda_graph_failed"] is None  # (no graphs on a CPU)
    slow = train_saes(
        iter(make_batches(8)), [SAESpec("h.a", cfg("topk"), tmp_path / "s")], tokens=2 * B, progress=False, fast=False
    )
    assert slow[0]["aux_steps_by_width"] is None and slow[0]["mean_dead_fraction_aux_steps"] is None
    assert slow[0]["first_steps_s_by_width"] is None and slow[0]["cuda_graph_failed"] is None
    assert slow[0]["aux_widths_in_order"] is None


def test_first_steps_profiled_per_aux_width(tmp_path):
    """fast_options={"profile_first_steps": True}: the first step of each aux width that ran is profiled, on the CPU
    too (its seconds, the ops' self CPU time, the rest, the top ops), the step's results unchanged (the same weights
    as an unprofiled run of the same seed and data); off by default: no profile."""
    import torch
    from safetensors.torch import load_file

    def run(profile: bool, out: str) -> tuple[dict, dict]:
        spec = SAESpec("h.a", cfg("topk", d_sae=1024, k=1, dead_feature_window=1), tmp_path / out)
        opts = {"profile_first_steps": True} if profile else None
        (r,) = train_saes(iter(make_batches(8)), [spec], tokens=6 * B, progress=False, fast=True, fast_options=opts)
        return r, load_file(str(tmp_path / out / "sae_weights.safetensors"))

    (r, w), (r0, w0) = run(True, "p"), run(False, "q")
    prof, steps = r["first_steps_profile_by_width"], r["aux_steps_by_width"]
    assert set(prof) == set(steps) and "0" in prof and len(prof) >= 2
    for p in prof.values():
        assert p["wall_s"] > 0 and 0 <= p["ops_cpu_s"] and p["top"] and all(t["ms"] >= 0 for t in p["top"])
        assert p["unattributed_s"] == pytest.approx(p["wall_s"] - p["ops_cpu_s"], abs=2e-4)
        assert p["triton_compiled"] == [] and p["triton_compile_s"] == 0  # nothing compiles on the CPU
    assert set(r["first_steps_s_by_width"]) == set(steps)  # timed on the CPU when profiled
    assert r0["first_steps_profile_by_width"] == {} and r0["first_steps_s_by_width"] == {}
    assert w.keys() == w0.keys() and all(torch.equal(w[k], w0[k]) for k in w)


@pytest.mark.gpu
def test_first_steps_per_aux_width_are_timed_on_cuda(tmp_path):
    """first_steps_s_by_width: the first two steps of each width that ran (its compilation, its graph capture)."""
    spec = SAESpec("h.a", cfg("topk", d_sae=1024, k=1, dead_feature_window=1, device="cuda"), tmp_path / "g")
    (r,) = train_saes(iter(make_batches(8)), [spec], tokens=6 * B, progress=False, fast=True)
    first, steps = r["first_steps_s_by_width"], r["aux_steps_by_width"]
    assert set(first) == set(steps) and "0" in first
    assert all(len(t) == min(2, steps[w]) and all(s > 0 for s in t) for w, t in first.items())
