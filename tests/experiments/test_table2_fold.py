"""Every SAEBench eval of experiments/table2 receives the SAE as SAEBench's own loader would make it: SAEBench's
``load_and_format_sae`` folds the decoder norms of an SAE it loads by name (``fold_W_dec_norm``, catching
NotImplementedError) but only warns about an SAE object, which is what the stages pass.

Tiny SAEs of every architecture the table2 recipe trains (topk with a checkpoint, batchtopk, standard with a
checkpoint and jumprelu on standardised inputs, weighted_topk) are trained on CPU through run_stage.py and loaded
as the E stages load them. Checked in float64, independently of the rule (``fold_W_dec_norm`` on a copy): the
facts experiments/table2/README.md reports per architecture (which SAEs have non-unit decoder rows, and where
the fold changes ``encode``); and, through the stages' own hand-offs (sparse probing's ``_probe_one``,
absorption's ``_work``, core in ``run_stage.main``) with SAEBench's ``run_eval`` / ``core_eval`` replaced by a
stub that runs SAEBench's own loader and keeps what it got: unit rows by SAEBench's ``check_decoder_norms``,
reconstructions equal to those of the SAE as saved, and the fold in each stage's record."""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from test_table2_stage import plan_entry, tiny_corpus

ROOT = Path(__file__).resolve().parents[2]
EXP = ROOT / "experiments" / "table2"
HOOK = "blocks.1.hook_resid_post"
TOKENS = 4096  # per final SAE: 64 steps of 64 tokens


def _plan() -> list[dict]:
    def sae(arch: str, field: str, lev: float, frac: float, **extra) -> dict:
        s = {**plan_entry(arch, field, lev, frac, width=64), **extra}
        s["tokens"] = int(TOKENS * frac)
        return s

    return [
        sae("topk", "k", 4, 0.5),
        sae("topk", "k", 4, 1.0),
        sae("batchtopk", "k", 4, 1.0),
        sae("standard", "l1_coefficient", 2.0, 0.5),
        sae("standard", "l1_coefficient", 2.0, 1.0),
        sae("jumprelu", "l0_coefficient", 0.001, 1.0),  # small enough that latents stay alive in 64 steps
        {**sae("weighted_topk", "k", 4, 1.0, alpha=1.0), "id": f"tiny-gpt2/{HOOK}/weighted_topk/w64/k=4/a1/s0/t1"},
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny SAEs trained (T-tiny, no eval), the tiny model and held-out activations at the hook (BOS dropped)."""
    tmp = tmp_path_factory.mktemp("fold")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(EXP))
        rs = importlib.import_module("run_stage")
        ps = importlib.import_module("probing_stage")
        ps.gemma_probing().install_xgboost_stub()  # sae-probes imports xgboost (only its unused baseline needs it)
        ab = importlib.import_module("absorption_stage")
        corpus, held = tiny_corpus(tmp)
        saes = _plan()
        (tmp / "plan.json").write_text(json.dumps({"saes": saes}))
        out = tmp / "out"
        argv = ["--plan", str(tmp / "plan.json"), "--corpus", str(corpus), "--out", str(out), "--n-layers", "2"]
        train = ["--stage", "T-tiny", "--batch-size", "64", "--buffer-tokens", "128", "--no-eval"]
        assert rs.main([*argv, *train]) == 0
        fams: dict[str, list[dict]] = {}
        for s in saes:
            fams.setdefault(rs.family(s), []).append(s)
        trained = rs.trained_saes(out, fams)
        assert len(trained) == len(saes)
        args = types.SimpleNamespace(model_path=None, n_layers=2, random_init=False, device="cpu")
        _, hooked, _ = rs.load_models("tiny-gpt2", args)
        x, _ = rs.proxy_sample(hooked, held, HOOK, {1}, len(held))
        yield types.SimpleNamespace(rs=rs, ps=ps, ab=ab, out=out, argv=argv, trained=trained, x=x)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


def test_fold_per_architecture_as_measured(tiny):
    """The facts README.md section 4 reports: what each architecture is loaded as, its decoder row norms, and
    what ``fold_W_dec_norm`` changes (float64; the fold applied to a copy, not through the rule)."""
    x = tiny.x.double()
    seen = {}
    for s, path, step in tiny.trained:
        sae = tiny.rs.load_probe_sae(path, s, "cpu").double()
        n = sae.W_dec.norm(dim=-1)
        folded = copy.deepcopy(sae)
        folded.fold_W_dec_norm()  # SAELens allows it for every table2 architecture
        with torch.no_grad():
            z0, z1 = sae.encode(x), folded.encode(x)
            r0, r1 = sae.decode(z0), folded.decode(z1)
        assert torch.allclose(folded.W_dec.norm(dim=-1), torch.ones_like(n), atol=1e-12)
        assert _rel(r0, r1) < 1e-12  # reconstructions unchanged
        assert torch.equal(z0 != 0, z1 != 0)  # the same latents fire
        assert (z0 != 0).any()
        key = (s["architecture"], "checkpoint" if step != "final" else "final")
        seen[key] = type(sae).__name__
        unit = bool((n - 1).abs().max() < 1e-5)
        if s["architecture"] in ("topk", "weighted_topk"):
            # TopK inference SAE with rescale_acts_by_decoder_norm: encode already multiplies by the norms, so
            # the fold leaves it unchanged (results computed before the fold remain valid)
            assert type(sae).__name__ == "TopKSAE" and sae.cfg.rescale_acts_by_decoder_norm
            assert _rel(z0, z1) < 1e-12
            # the final is saved with unit rows; a checkpoint's rows carry the folded input scaling factor
            assert unit == (step == "final")
        elif s["architecture"] == "batchtopk":
            assert type(sae).__name__ == "JumpReLUSAE" and unit  # saved as JumpReLU with unit rows
            assert _rel(z0, z1) < 1e-6
        else:  # standard and jumprelu: standardisation folded into the decoder, rows far from unit
            assert not unit and (n - 1).abs().min() > 0.5
            assert _rel(z0, z1) > 0.5  # each latent scaled by its decoder norm
    assert seen == {
        ("topk", "checkpoint"): "TopKSAE",
        ("topk", "final"): "TopKSAE",
        ("batchtopk", "final"): "JumpReLUSAE",
        ("standard", "checkpoint"): "StandardSAE",
        ("standard", "final"): "StandardSAE",
        ("jumprelu", "final"): "JumpReLUSAE",
        ("weighted_topk", "final"): "TopKSAE",
    }


def test_the_rule_folds_where_saelens_allows_and_records_why_not(tiny):
    from sae_lens import TopKSAE, TopKSAEConfig
    from saebench_fold import fold_for_saebench

    s, path, _ = next(t for t in tiny.trained if t[0]["architecture"] == "standard")
    sae = tiny.rs.load_probe_sae(path, s, "cpu")
    n = sae.W_dec.norm(dim=-1)
    rec = fold_for_saebench(sae)
    assert rec["folded"] is True and "why" not in rec
    assert rec["W_dec_norm"] == pytest.approx([n.min().item(), n.max().item()], rel=1e-5)
    torch.manual_seed(0)
    plain = TopKSAE(TopKSAEConfig(d_in=8, d_sae=16, k=2, rescale_acts_by_decoder_norm=False))
    plain.W_dec.data *= 3.0
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    rec = fold_for_saebench(plain)  # SAELens refuses: the fold would change the top-k selection
    assert rec["folded"] is False and "rescale_acts_by_decoder_norm" in rec["why"]
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())


def _saebench_stub(got: list, x: torch.Tensor):
    """A stand-in for an eval's ``run_eval``: SAEBench's own loader on the SAE it is given, which is kept with
    SAEBench's ``check_decoder_norms`` verdict and its reconstructions of ``x``; then an empty output file."""
    from sae_bench.sae_bench_utils import general_utils

    def run_eval(cfg, selected, device, output_path, force_rerun=False):
        ((release, obj),) = selected
        _, sae, _ = general_utils.load_and_format_sae(release, obj, device)
        with torch.no_grad():
            got.append((general_utils.check_decoder_norms(sae.W_dec.data), sae.decode(sae.encode(x))))
        Path(output_path).mkdir(parents=True, exist_ok=True)
        (Path(output_path) / f"{release}_custom_sae_eval_results.json").write_text("{}")

    return run_eval


def _non_unit(tiny) -> list[tuple[dict, Path, str]]:
    """The trained SAEs whose decoder rows are not unit norm as loaded (standard, jumprelu, the TopK checkpoint)."""
    res = []
    for s, path, step in tiny.trained:
        n = tiny.rs.load_probe_sae(path, s, "cpu").W_dec.norm(dim=-1)
        if (n - 1).abs().max() > 0.1:
            res.append((s, path, step))
    assert {s["architecture"] for s, _, _ in res} == {"topk", "standard", "jumprelu"}
    return res


def _reference(tiny, s: dict, path: Path) -> torch.Tensor:
    with torch.no_grad():
        sae = tiny.rs.load_probe_sae(path, s, "cpu")
        return sae.decode(sae.encode(tiny.x))


@pytest.mark.skipif(importlib.util.find_spec("sae_probes") is None, reason="sae-probes not installed (extra [probes])")
def test_sparse_probing_hands_saebench_unit_rows(tiny, tmp_path, monkeypatch):
    import sae_bench.evals.sparse_probing_sae_probes.main as spm

    got: list = []
    monkeypatch.setattr(spm, "run_eval", _saebench_stub(got, tiny.x))
    for s, path, _ in _non_unit(tiny):
        load = functools.partial(tiny.rs.load_probe_sae, path, s, "cpu")
        cfg_kw = {"model_name": "tiny-gpt2", "results_path": str(tmp_path / "res")}
        res = tiny.ps._probe_one(cfg_kw, "rel", load, "cpu", str(tmp_path / "raw"))
        unit, recon = got.pop()
        assert unit, f"{s['id']}: SAEBench got non-unit decoder rows"
        torch.testing.assert_close(recon, _reference(tiny, s, path), rtol=1e-5, atol=1e-6)
        fold = res[2]  # the record run_probing keeps under saebench_fold
        assert fold["folded"] is True and abs(fold["W_dec_norm"][1] - 1) > 0.1


def test_absorption_hands_saebench_unit_rows(tiny, tmp_path, monkeypatch):
    import sae_bench.evals.absorption.main as am

    got: list = []
    monkeypatch.setattr(am, "run_eval", _saebench_stub(got, tiny.x))
    model = types.SimpleNamespace(tokenizer=types.SimpleNamespace(padding_side="right"))
    model.cfg = types.SimpleNamespace(model_name="tiny-gpt2")
    probe = tiny.ab.probe_folder(tmp_path, model, 1)  # a probe in place: the eval goes straight to the SAE
    probe.mkdir(parents=True)
    (probe / "probe.pth").write_bytes(b"")
    (probe / "data.npz").write_bytes(b"")
    items = _non_unit(tiny)
    jobs = [
        (s["id"], f"rel{i}", functools.partial(tiny.rs.load_probe_sae, p, s, "cpu"))
        for i, (s, p, _) in enumerate(items)
    ]
    events: list[tuple] = []
    tiny.ab._work(model, "tiny-gpt2", jobs, tmp_path, {"model_name": "tiny-gpt2"}, "cpu", 8, 1e18, events.append)
    assert not [e for e in events if e[0] == "error"], events
    assert len(got) == len(items)
    for (s, path, _), (unit, recon) in zip(items, got):
        assert unit, f"{s['id']}: SAEBench got non-unit decoder rows"
        torch.testing.assert_close(recon, _reference(tiny, s, path), rtol=1e-5, atol=1e-6)
    done = [e for e in events if e[0] == "sae_done"]  # the fold record goes to run_absorption's saebench_fold
    assert [e[1] for e in done] == [s["id"] for s, _, _ in items]
    assert all(ev[4]["folded"] is True and abs(ev[4]["W_dec_norm"][1] - 1) > 0.1 for ev in done)


def test_core_hands_saebench_unit_rows_and_records_it(tiny, monkeypatch):
    from sae_bench.sae_bench_utils import general_utils

    got: dict[str, tuple] = {}

    def core_eval(sae, hooked, held, ignore, s, step, args, phases=None):
        with torch.no_grad():
            got[s["id"]] = (general_utils.check_decoder_norms(sae.W_dec.data), sae.decode(sae.encode(tiny.x)))
        return {}

    monkeypatch.setattr(tiny.rs, "core_eval", core_eval)
    monkeypatch.setattr(tiny.rs, "validate_core", lambda obj: None)
    assert tiny.rs.main([*tiny.argv, "--stage", "T-tiny", "--eval-batches", "1", "--eval-batch-prompts", "4"]) == 0
    assert sorted(got) == sorted(s["id"] for s, _, _ in tiny.trained)
    for s, path, _ in tiny.trained:
        unit, recon = got[s["id"]]
        assert unit, f"{s['id']}: SAEBench got non-unit decoder rows"
        torch.testing.assert_close(recon, _reference(tiny, s, path), rtol=1e-5, atol=1e-6)
    call = json.loads((tiny.out / "stage_T-tiny.json").read_text())["calls"][-1]
    assert sorted(call["saebench_fold"]) == sorted(got)
    assert all(r["folded"] is True for r in call["saebench_fold"].values())
    assert np.isfinite([v for r in call["saebench_fold"].values() for v in r["W_dec_norm"]]).all()
