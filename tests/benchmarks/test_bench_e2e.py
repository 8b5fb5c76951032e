"""benchmarks/e2e/bench_e2e.py: its SAELens model is the HF model (same activations), its driver records
failing rows and resumes, its summary computes the issue's targets, and --quick runs end to end on CPU."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "e2e" / "bench_e2e.py"
ALL_ROWS = [
    "forward_only",
    "step_only",
    "ours",
    "ours_noaux",
    "ours_noaux_mean",
    "ours_overlap",
    "ours_radix",
    "ours_mask",
    "ours_lagged",
    "ours_profile",
    "ours_first_profile",
    "ours_3hooks",
    "ours_4saes",
    "ours_3hooks_streams",
    "ours_4saes_streams",
    "ours_3hooks_streams_noaux",
    "sparsify",
    "saelens_speed",
    "saelens",
    "sparsify_full",
    "ce_recovered",
]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_e2e", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_e2e"] = mod  # its dataclass looks its module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("bench_e2e", None)


def test_hooked_transformer_has_the_hf_models_activations(bench):
    """The SAELens rows train on a TransformerLens copy of the HF model: every residual stream must match
    (float32), else SAELens and ours would not train on the same data."""
    from sae_rdp_plugin.lm.models import hf_model

    model, _ = hf_model("tiny-gemma3", n_layers=7, dtype="float32")
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(7)] + ["blocks.3.hook_resid_pre"]
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, model.config.vocab_size, (2, 40), generator=g).numpy()
    tokens[:, 0] = model.config.bos_token_id
    ref = bench.hook_activations(model, tokens, hooks, "cpu", exclude=[model.config.bos_token_id])
    hooked = bench.hooked_transformer(model, None, "cpu")
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is left as it was
    _, cache = hooked.run_with_cache(torch.as_tensor(tokens, dtype=torch.long), names_filter=lambda n: n in hooks)
    for h in hooks:
        tl = cache[h][:, 1:].reshape(-1, ref[h].shape[1])  # BOS positions dropped, as in hook_activations
        assert tl.shape == ref[h].shape
        assert ((tl - ref[h]).norm() / ref[h].norm()).item() < 1e-4, h
    # resid_pre of block 3 is resid_post of block 2
    assert torch.equal(ref["blocks.3.hook_resid_pre"], ref["blocks.2.hook_resid_post"])


def test_hooked_transformer_of_a_model_that_refuses_float(bench):
    """transformers refuses ``model.float()`` for a model loaded from a GGUF file (it counts as quantized): the
    conversion must not call it (it did, and SAELens's rows failed on the real weights), and must leave the
    model's dtype as it was."""
    from sae_rdp_plugin.lm.models import hf_model

    model, _ = hf_model("tiny-gemma3", n_layers=3, dtype="bfloat16")

    def refuse(*a, **kw):
        raise ValueError("`.float()` is not supported for quantized model")

    model.float = refuse
    hooked = bench.hooked_transformer(model, None, "cpu")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    tokens = torch.randint(4, model.config.vocab_size, (1, 12))
    tokens[:, 0] = model.config.bos_token_id
    ref = bench.hook_activations(model, tokens.numpy(), ["blocks.2.hook_resid_post"], "cpu", exclude=[])
    _, cache = hooked.run_with_cache(tokens, names_filter=lambda n: n == "blocks.2.hook_resid_post")
    got = cache["blocks.2.hook_resid_post"].reshape(-1, ref["blocks.2.hook_resid_post"].shape[1])
    want = ref["blocks.2.hook_resid_post"].float()
    assert ((got - want).norm() / want.norm()).item() < 2e-2  # bf16 model against the fp32 copy


def _row(name, impl, tps, **kw):
    return {"row": name, "impl": impl, "tokens_per_s": tps, "tokens": 100, **kw}


def test_summary_targets(bench):
    rows = [
        _row("forward_only", "ours", 3.0e6),
        _row("step_only", "ours", 2.0e6),
        _row("ours", "ours", 1.0e6, heldout_fvu=0.101),
        _row("saelens", "saelens", 0.8e5, heldout_fvu=0.100),
        _row("sparsify", "sparsify", 1.25e5),
    ]
    s = bench.summary(rows)
    assert s["ours_x_saelens"] == pytest.approx(12.5)
    assert s["ours_x_sparsify"] == pytest.approx(8.0)
    assert s["fvu_rel_diff_vs_saelens"] == pytest.approx(0.01)
    # 1 us per token against 1/3 + 1/2 us: 1.2x
    assert s["ours_time_over_forward_plus_step"] == pytest.approx(1.2)
    assert s["targets_met"] == {
        "x10_saelens": True,
        "x10_sparsify": False,
        "x10_sparsify_same_objective": None,
        "fvu_within_2pct": True,
        "within_1p5x_forward_plus_step": True,
        "three_hooks_0p6M": None,
        "three_hooks_0p6M_noaux": None,
    }
    # three hooks: the faster of the sequential and the streams row at SAELens's objective; without the aux
    # loss apart
    h3 = bench.summary(
        [
            *rows,
            _row("ours_3hooks", "ours", 4.5e5),
            _row("ours_3hooks_streams", "ours", 5.5e5),
            _row("ours_3hooks_streams_noaux", "ours", 6.5e5),
        ]
    )
    assert h3["three_hooks_tokens_per_s"] == 5.5e5 and h3["three_hooks_noaux_tokens_per_s"] == 6.5e5
    assert h3["targets_met"]["three_hooks_0p6M"] is False and h3["targets_met"]["three_hooks_0p6M_noaux"] is True
    h3 = bench.summary([*rows, _row("ours_3hooks", "ours", 6.1e5)])
    assert h3["targets_met"]["three_hooks_0p6M"] is True and h3["targets_met"]["three_hooks_0p6M_noaux"] is None
    over = bench.summary([*rows, _row("ours_overlap", "ours", 1.2e6)])
    assert over["overlap_x_ours"] == pytest.approx(1.2) and over["ours_overlap_x_saelens"] == pytest.approx(15.0)
    assert "overlap_x_ours" not in s
    assert bench.summary([*rows, _row("ours_radix", "ours", 1.1e6)])["radix_x_ours"] == pytest.approx(1.1)
    m = bench.summary([*rows, _row("ours_mask", "ours", 1.3e6)])
    assert m["mask_x_ours"] == pytest.approx(1.3) and m["ours_mask_x_saelens"] == pytest.approx(1.3e6 / 0.8e5)
    assert bench.summary([*rows, _row("ours_lagged", "ours", 1.1e6)])["lagged_x_ours"] == pytest.approx(1.1)
    # ours without the aux loss against sparsify (whose defaults compute none): the same-objective ratio
    na = bench.summary([*rows, _row("ours_noaux", "ours", 1.3e6)])
    assert na["noaux_x_ours"] == pytest.approx(1.3) and na["ours_noaux_x_sparsify"] == pytest.approx(10.4)
    assert na["targets_met"]["x10_sparsify_same_objective"] is True and na["targets_met"]["x10_sparsify"] is False
    assert "ours_noaux_mean_x_sparsify" not in na
    nm = bench.summary([*rows, _row("ours_noaux_mean", "ours", 1.1e6)])  # sparsify's recipe: b_dec from the mean
    assert nm["ours_noaux_mean_x_sparsify"] == pytest.approx(8.8) and "ours_noaux_x_sparsify" not in nm
    assert "heldout_dead_fraction" not in nm  # rows without it (earlier runs) add nothing
    sp_dead = {**rows[4], "heldout_dead_fraction_common": 0.1}
    dd = bench.summary([*rows[:4], sp_dead, _row("ours_noaux", "ours", 1.3e6, heldout_dead_fraction=0.95)])
    assert dd["heldout_dead_fraction"] == {"ours_noaux": 0.95, "sparsify": 0.1}
    # FVU against sparsify at the same tokens (up to its whole batches of 4 x 1023), on the common held-out rows
    settings = {"batch_seqs": 4, "context": 1024}
    full = _row("sparsify_full", "sparsify", 1e5, tokens=100 + 4091, heldout_fvu_common=0.02, settings=settings)
    eq = bench.summary([*rows, full, _row("ours_noaux", "ours", 1.3e6, heldout_fvu=0.03)])
    assert eq["fvu_rel_diff_vs_sparsify_full"] == {"ours": pytest.approx(4.05), "ours_noaux": pytest.approx(0.5)}
    full["tokens"] = 100 + 4092  # a whole batch more: not the same tokens
    assert "fvu_rel_diff_vs_sparsify_full" not in bench.summary([*rows, full])
    rows[2]["heldout_fvu"] = 0.103  # 3% above SAELens's
    assert bench.summary(rows)["targets_met"]["fvu_within_2pct"] is False
    # FVU is compared only at equal tokens; failed rows count for nothing
    rows[3] = _row("saelens", "saelens", 0.8e5, heldout_fvu=0.05, tokens=50)
    rows[4]["error"] = "RuntimeError: boom"
    s = bench.summary(rows)
    assert "fvu_rel_diff_vs_saelens" not in s and "ours_x_sparsify" not in s
    assert s["targets_met"]["fvu_within_2pct"] is None


def test_failing_row_is_recorded_and_resume_reruns_only_it(bench, tmp_path, monkeypatch):
    calls = []

    def ok(b):
        calls.append("ours")
        return {"hooks": [b.hook], "n_saes": 1, "tokens": 10, "tokens_per_s": 5.0, "heldout_fvu": 0.5}

    def boom(b):
        calls.append("saelens")
        raise RuntimeError("no luck\nsecond line")

    monkeypatch.setitem(bench.ROW_FNS, "ours", ok)
    monkeypatch.setitem(bench.ROW_FNS, "saelens", boom)
    out = tmp_path / "out"
    argv = ["--quick", "--in-process", "--out", str(out), "--work", str(tmp_path / "w"), "--only", "ours", "saelens"]
    assert bench.main(argv) == 0
    res = json.loads((out / "latest.json").read_text())
    rows = {r["row"]: r for r in res["rows"]}
    assert rows["ours"]["tokens_per_s"] == 5.0 and "error" not in rows["ours"]
    assert rows["saelens"]["error"] == "RuntimeError: no luck" and rows["saelens"]["impl"] == "saelens"
    assert {"device", "date", "versions", "summary"} <= set(res)
    assert "| saelens |" in (out / "latest.md").read_text()
    calls.clear()

    def ok_now(b):
        calls.append("saelens again")
        return ok(b)

    monkeypatch.setitem(bench.ROW_FNS, "saelens", ok_now)
    assert bench.main([*argv, "--resume"]) == 0
    assert calls == ["saelens again", "ours"]  # only the failed row ran again (through ok)
    rows = {r["row"]: r for r in json.loads((out / "latest.json").read_text())["rows"]}
    assert set(rows) == {"ours", "saelens"} and "error" not in rows["saelens"]


def test_isolated_row_reports_the_childs_error(bench, tmp_path):
    """A row in its own process: the child's exception comes back as the row's error (ce_recovered
    with no trained SAEs in OUT/latest.json fails before any model is built)."""
    args = bench.parse_args(["--quick", "--out", str(tmp_path), "--work", str(tmp_path / "w")])
    row = bench.run_row_isolated("ce_recovered", args)
    assert row["row"] == "ce_recovered"
    assert row["error"] == "RuntimeError: ce_recovered needs the SAEs of rows ours / saelens of this run (none found)"


@pytest.mark.slow
def test_bench_quick_runs_every_row(tmp_path):
    """The whole --quick run, one process per row (~1-2 min on 2 cores): latest.json has the issue's shape,
    finite held-out FVU for ours and SAELens, sparsify's row either ran or says it is not installed, and
    the CE row evaluated both SAEs (random tiny model: the values are only checked to be finite)."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path), "--profile", "3", "4", "--only", *ALL_ROWS]
    subprocess.run(cmd, check=True, env=env, timeout=900)
    res = json.loads((tmp_path / "latest.json").read_text())
    assert isinstance(res["device"], str) and isinstance(res["date"], str)
    rows = {r["row"]: r for r in res["rows"]}
    assert list(rows) == ALL_ROWS
    for name in (
        "forward_only", "step_only", "ours", "ours_noaux", "ours_noaux_mean", "ours_overlap", "ours_radix",
        "ours_mask", "ours_lagged", "ours_3hooks", "ours_4saes", "saelens_speed", "saelens",
    ):  # fmt: skip
        r = rows[name]
        assert "error" not in r, (name, r.get("error"))
        assert r["impl"] in ("ours", "saelens") and r["model"] == "tiny-gemma3"
        assert isinstance(r["hooks"], list) and isinstance(r["n_saes"], int) and isinstance(r["tokens"], int)
        assert r["tokens_per_s"] > 0
    for name, n in (("ours", 1), ("ours_3hooks", 3), ("ours_4saes", 4), ("saelens", 1), ("saelens_speed", 1)):
        fvu = rows[name]["heldout_fvu"]
        fvus = fvu if isinstance(fvu, list) else [fvu]
        assert len(fvus) == n and all(math.isfinite(f) and f > 0 for f in fvus), (name, fvu)
        assert set(rows[name]["time_split"]) >= {"forward_s", "sae_step_s", "other_s"}
    assert rows["ours_radix"]["fast_options"] == {"aux_topk": "radix"} and rows["ours"]["fast_options"] is None
    assert rows["ours_mask"]["fast_options"] == {"aux_topk": "mask"}
    assert rows["ours_lagged"]["fast_options"] == {"dead_count": "lagged"}
    # ours_noaux trains SAELens's TopK with aux_loss_coefficient 0 (its effect on the step: tests/fast)
    assert rows["ours_noaux"]["sae_kwargs"] == {"aux_loss_coefficient": 0.0} and rows["ours"]["sae_kwargs"] is None
    nm = rows["ours_noaux_mean"]
    assert nm["sae_kwargs"] == {"aux_loss_coefficient": 0.0} and nm["b_dec_init"] == "mean"
    assert rows["ours_noaux"]["b_dec_init"] == "zeros"
    for name in ("ours", "ours_noaux_mean"):  # b_dec's mean batches inside the warm-up: the last mark on the last step
        c = rows[name]["clock"]
        assert c["ticks"] == c["total"] and c["warmup"] >= (4 if name == "ours_noaux_mean" else 0), (name, c)
    for name in ("ours", "ours_noaux_mean", "ours_4saes", "saelens"):  # held-out dead fraction per SAE
        dead = rows[name]["heldout_dead_fraction"]
        assert all(0 <= d <= 1 for d in (dead if isinstance(dead, list) else [dead])), (name, dead)
    h3 = rows["ours_3hooks_streams_noaux"]
    assert "error" not in h3, h3.get("error")
    assert h3["n_saes"] == 3 and h3["sae_kwargs"] == {"aux_loss_coefficient": 0.0}
    assert {s["aux_loss_coefficient"] for s in h3["saes"]} == {0.0}
    assert {s["aux_loss_coefficient"] for s in rows["ours_3hooks_streams"]["saes"]} == {1.0}
    assert (
        rows["ours_noaux"]["saes"][0]["aux_loss_coefficient"] == 0.0
        and rows["ours"]["saes"][0]["aux_loss_coefficient"] == 1.0
    )
    # --profile 3 4: the ours_profile row's profiler window, 4 steps from step 3 (a CPU run: CPU ops, no GPU share);
    # no measured row is profiled
    assert "error" not in rows["ours_profile"], rows["ours_profile"].get("error")
    prof = rows["ours_profile"]["profile"]
    assert prof["start_step"] == 3 and prof["steps"] == 4 and prof["gpu_busy_fraction"] is None, prof
    assert prof["wall_ms_per_step"] > 0 and prof["host_syncs_per_step"] >= 0 and prof["top"], prof
    assert all(r["ms_per_step"] >= 0 for r in prof["top"])
    assert rows["ours"]["profile"] is None and rows["ours_4saes"]["profile"] is None
    # ours_first_profile: the first step at each aux width profiled (on the CPU too); ours has no such profile
    firsts = rows["ours_first_profile"]["saes"][0]["first_steps_profile_by_width"]
    assert rows["ours_first_profile"]["fast_options"] == {"profile_first_steps": True} and "0" in firsts, firsts
    assert all(p["top"] and p["wall_s"] > 0 for p in firsts.values())
    assert rows["ours"]["saes"][0]["first_steps_profile_by_width"] is None
    assert "profile" not in rows["saelens"]
    assert rows["ours"]["saes"][0]["cuda_graph_failed"] is None  # (no graphs on a CPU)
    for sae in rows["ours"]["saes"]:  # the fast step's steps per aux width add up to the row's steps
        assert sum(sae["aux_steps_by_width"].values()) == sae["steps"], sae
    for name, r in rows.items():  # the time outside the timed loop, by phase, inside the row's own time
        ph = r["phase_s"]
        if name != "sparsify" or "error" not in r:
            assert ph["load_model"] > 0 and ph["tokens"] >= 0, (name, ph)
        assert sum(ph.values()) <= r["row_s"] + 0.05, (name, ph, r["row_s"])
    for name in ("ours", "saelens", "sparsify"):
        if "error" not in rows[name]:
            assert rows[name]["phase_s"]["heldout"] > 0, name
    assert rows["saelens"]["phase_s"]["convert_model"] > 0
    assert rows["ours_3hooks"]["hooks"] == [f"blocks.{i}.hook_resid_post" for i in (2, 4, 6)]
    # the overlap moves forwards earlier, not batches: on the CPU the same SAE comes out
    assert rows["ours_overlap"]["heldout_fvu"] == pytest.approx(rows["ours"]["heldout_fvu"], rel=1e-6)
    assert rows["ours"]["tokens"] == rows["saelens"]["tokens"]  # FVU at equal tokens
    sp = rows["sparsify"]
    if importlib.util.find_spec("sparsify") is None:
        assert "not installed" in sp["error"]
    else:
        assert math.isfinite(sp["heldout_fvu"]) and sp["tokens_per_s"] > 0
        full = rows["sparsify_full"]  # --tokens in its whole batches: the same tokens as ours, FVU compared
        assert full["impl"] == "sparsify" and 0 <= full["tokens"] - rows["ours"]["tokens"] < 4 * 63
        assert not full["short_of_tokens"] and set(res["summary"]["fvu_rel_diff_vs_sparsify_full"]) == {
            "ours", "ours_noaux", "ours_noaux_mean",
        }  # fmt: skip
    ce = rows["ce_recovered"]
    assert "error" not in ce, ce.get("error")
    assert ce["n_saes"] == 2 and all(math.isfinite(v["ce_recovered"]) for v in ce["saes"].values())
    assert "ours_x_saelens" in res["summary"] and "fvu_rel_diff_vs_saelens" in res["summary"]
    assert "| ours |" in (tmp_path / "latest.md").read_text()


@pytest.mark.parametrize("bad", [["-1", "4"], ["3", "0"]])
def test_bad_profile_window_is_one_error_line(bench, bad, tmp_path, capsys):
    assert bench.main(["--quick", "--out", str(tmp_path / "o"), "--profile", *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --profile") and not (tmp_path / "o").exists()


def test_profiler_window_cut_short_by_the_run_end(bench):
    """A window the run ends inside is stopped by finish() and counts the steps that ran in it."""
    p = bench.StepProfiler("cpu", start=1, count=50)
    for n in range(4):
        p.tick(n)
        torch.ones(64, 64) @ torch.ones(64, 64)
    p.finish(4)
    r = p.result()
    assert r["steps"] == 3 and r["start_step"] == 1 and r["top"] and r["gpu_busy_fraction"] is None


def test_clock_leaves_the_profiler_window_out(bench, monkeypatch):
    """10 steps between the marks, 4 of them profiled in 3 of the 6 seconds: 6 steps in 3 s."""
    p = bench.StepProfiler("cpu", start=3, count=4)
    c = bench.StepClock("cpu", warmup=1, total=12, profiler=p)
    c.t_warm, c.t_last = 100.0, 106.0
    assert c.steps_per_s() == pytest.approx(10 / 6)
    p.window = (3, 4, 3.0)
    assert c.steps_per_s() == pytest.approx(6 / 3)
    p.window = (9, 4, 3.0)  # past the last mark: not inside the timed steps, nothing left out
    assert c.steps_per_s() == pytest.approx(10 / 6)


def test_write_results_copies_to_a_second_folder(bench, tmp_path):
    """--copy-to: every write also lands in a second folder (a device's $OUT), identical to the first."""
    res = {"device": "cpu", "date": "2026-12-03 00:00 UTC", "model": "m", "versions": {}, "settings": {},
           "rows": [_row("ours", "ours", 1.0e6, heldout_fvu=0.1)]}  # fmt: skip
    bench.write_results(tmp_path / "work", res, tmp_path / "out")
    for f in ("latest.json", "latest.md"):
        assert (tmp_path / "work" / f).read_text() == (tmp_path / "out" / f).read_text()
    assert json.loads((tmp_path / "out" / "latest.json").read_text())["rows"][0]["tokens_per_s"] == 1.0e6
    bench.write_results(tmp_path / "only", res)  # without a second folder: only the first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["only", "out", "work"]


def test_corpus_rows_are_cut_to_the_context(bench, monkeypatch):
    """--corpus rows (1024 tokens) are cut into rows of --context for ours and the held-out rows, the same rows
    SAELens's runner gets (the 2026-12-03 real-weight run trained ours on rows of 1024 while --context said 128)."""
    import numpy as np

    import sae_rdp_plugin.lm.corpus as corpus

    train = np.arange(3 * 1030, dtype=np.int32).reshape(3, 1030)
    held = np.arange(2 * 1030, dtype=np.int32).reshape(2, 1030) + 10**6
    monkeypatch.setattr(corpus, "load_tokens", lambda path, split: train if split == "train" else held)
    b = bench.make_bench(bench.parse_args(["--quick", "--corpus", "x", "--context", "128", "--work", "w"]))
    t, h = bench.token_rows(b, None, 2, 1000)
    assert t.shape == (3 * 8, 128) and h.shape == (2 * 8, 128)
    assert np.array_equal(t[:8].reshape(-1), train[0, :1024]) and np.array_equal(t[8], train[1, :128])
    assert np.array_equal(h[9], held[1, 128:256])
    assert bench.cut_rows(train, 2000) is train  # rows not longer than the context stay as they are


def test_heldout_stats_against_hand_counts(bench):
    """FVU, dead fraction and L0 of an SAE whose codes and reconstructions are known: latents 0 and 2 of 6 fire
    (latent 2 on one token only), the reconstruction misses x by a known residual."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64).float()
    r = 0.1 * torch.randn(40, 5, generator=g, dtype=torch.float64).float()

    def encode(v):
        z = torch.zeros(v.shape[0], 6)
        z[:, 0] = 1.0
        if v.shape[0] == x.shape[0]:
            z[7, 2] = 3.0
        return z

    stats = bench.heldout_stats(encode, x, 6, decode=lambda z: x - r)
    xd, rd = x.double(), r.double()
    fvu = (rd**2).sum() / ((xd - xd.mean(0)) ** 2).sum()
    assert stats["fvu"] == pytest.approx(float(fvu), rel=1e-6)  # (x - r) rounds in float32
    assert stats["dead_fraction"] == pytest.approx(4 / 6)
    assert stats["l0"] == pytest.approx(41 / 40)


def test_sparsify_row_is_also_evaluated_on_the_common_rows(bench, tmp_path):
    """sparsify trains on its own rows (64 tokens in --quick); with --context 32 every other row is evaluated on
    rows of 32, and sparsify's row gives its FVU there too (``heldout_fvu_common``), checked here against the
    saved SAE through sparsify's own encoder and a float64 FVU on those rows' activations."""
    pytest.importorskip("sparsify")
    from sparsify import SparseCoder

    out = tmp_path / "o"
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    argv = ["--quick", "--context", "32", "--out", str(out), "--work", str(tmp_path / "w")]
    assert bench.main([*argv, "--only", "sparsify"]) == 0
    row = json.loads((out / "latest.json").read_text())["rows"][0]
    assert "error" not in row, row.get("error")
    assert row["settings"]["context"] == 64 and row["heldout_fvu_common"] != row["heldout_fvu"]
    b = bench.make_bench(bench.parse_args(argv))
    model, tok = bench.load_hf(b)
    bos, pad = bench.special_ids(model, tok)
    held = bench.heldout_rows(b, model, bos)
    assert held.shape[1] == 32
    x = bench.hook_activations(model, held, [b.hook], "cpu", [i for i in (bos, pad) if i is not None])[b.hook]
    sae = SparseCoder.load_from_disk(tmp_path / "w" / "sparsify" / "run" / "layers.6", device="cpu")
    with torch.no_grad():
        e = sae.encode(x.to(sae.dtype))
        xh = sae.decode(e.top_acts, e.top_indices).double()
    xd = x.double()
    fvu = float(((xd - xh) ** 2).sum() / ((xd - xd.mean(0)) ** 2).sum())
    assert row["heldout_fvu_common"] == pytest.approx(fvu, rel=1e-3)
    fired = torch.zeros(sae.num_latents, dtype=torch.bool)
    fired[e.top_indices[e.top_acts > 0].unique()] = True
    assert row["heldout_dead_fraction_common"] == pytest.approx(1 - fired.float().mean().item())
    assert "on the other rows' held-out rows" in (out / "latest.md").read_text()
