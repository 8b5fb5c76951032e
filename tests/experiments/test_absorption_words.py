"""experiments/table2/absorption_stage.py's absorption experiment with host copies per batch
(``calculate_absorption_host_batches``, swapped in for SAEBench's ``FeatureAbsorptionCalculator.calculate_absorption``)
against SAEBench's own method, the independent reference: the same ``AbsorptionResults`` (dataclass equality and a
field-by-field comparison of every float's type and value) on the tiny model's real prompts with TopK, standard
(ReLU) and JumpReLU SAELens SAEs, probe directions built from some latents' decoder rows so that every branch of
the absorption fraction and both full-absorption outcomes occur; the comparison catching a one-ulp change; the
run-time check (its draws of in-context examples leave the run's as SAEBench's alone would draw them), its
fallback to SAEBench's method with the record saying why, the environment switch, the stage's swap and restore."""

from __future__ import annotations

import importlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("sae_bench")

EXP = Path(__file__).resolve().parents[2] / "experiments" / "table2"


@pytest.fixture
def ab(monkeypatch):
    monkeypatch.syspath_prepend(str(EXP))
    monkeypatch.delenv("SAE_RDP_ABSORPTION_WORDS", raising=False)
    return importlib.import_module("absorption_stage")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import sys

    sys.path.insert(0, str(EXP))
    from test_table2_evals import _tiny_hooked, _word_tokenizer

    rs = importlib.import_module("run_stage")
    wtok = tmp_path_factory.mktemp("wtok")
    _word_tokenizer().save_pretrained(str(wtok))
    return _tiny_hooked(rs, wtok)


def _sae(arch: str, d_in: int, d_sae: int, seed: int) -> Any:
    """test_absorption_scoring's tiny SAELens SAE with random weights, from a seeded generator."""
    from test_absorption_scoring import _sae as random_sae

    torch.manual_seed(seed)
    return random_sae(arch, d_in, d_sae)


def _calculator(model: Any, **kw: Any) -> Any:
    import sae_bench.evals.absorption.feature_absorption_calculator as fac
    from sae_bench.evals.absorption.prompting import first_letter_formatter

    words = [w for w in model.tokenizer.get_vocab() if len(w) > 2 and w.isalpha() and w.islower()]
    return fac.FeatureAbsorptionCalculator(
        model=model, icl_word_list=sorted(words), max_icl_examples=3, base_template="{word} has the first letter:",
        answer_formatter=first_letter_formatter(), word_token_pos=-6, batch_size=kw.pop("batch_size", 7), **kw,
    )  # fmt: skip


def _words(model: Any, n: int) -> list[str]:
    words = sorted(w for w in model.tokenizer.get_vocab() if len(w) > 2 and w.isalpha() and w.islower())
    return random.Random(1).sample(words, n)


def _both(ab: Any, calc: Any, sae: Any, words: list[str], direction: torch.Tensor, main: list[int]) -> tuple:
    """SAEBench's method and the host-batch one from the same generator state (their in-context examples)."""
    kw = {"words": words, "probe_direction": direction, "main_feature_ids": main, "layer": 1, "show_progress": False}
    random.seed(5)
    want = type(calc).calculate_absorption(calc, sae, **kw)
    random.seed(5)
    got = ab.calculate_absorption_host_batches(calc, sae, **kw)
    return got, want


def _mean_direction(model: Any, words: list[str]) -> torch.Tensor:
    """The mean activation at the calculator's position over the words' prompts: most words project positively."""
    random.seed(0)
    prompts = _calculator(model)._build_prompts(words)
    hook = "blocks.1.hook_resid_post"
    return model.run_with_cache([p.base for p in prompts], names_filter=[hook])[1][hook][:, -6, :].mean(0)


@pytest.mark.parametrize("arch", ["topk", "standard", "jumprelu"])
def test_host_batches_give_saebenchs_results(ab, model, arch):
    words = _words(model, 60)
    direction = _mean_direction(model, words)
    sae = _sae(arch, model.cfg.d_model, 96, seed=3)
    # main latents chosen by their mean projection on the direction: the top ones (no absorption), middle ones
    # (partial or full absorption) and the lowest (absorption fraction 1)
    random.seed(0)
    with torch.no_grad():
        acts = model.run_with_cache(
            [p.base for p in _calculator(model)._build_prompts(words)], names_filter=["blocks.1.hook_resid_post"]
        )[1]["blocks.1.hook_resid_post"][:, -6, :]
        cos = torch.nn.functional.cosine_similarity(direction, sae.W_dec, dim=-1)
        order = (sae.encode(acts) * cos).mean(0).argsort(descending=True).tolist()
    fractions, full = [], []
    cases = [(order[:3], {}), (order[10:12], {"batch_size": 60}), (order[-2:], {}), (order[:1], {"batch_size": 1})]
    for main, calc_kw in cases:
        got, want = _both(ab, _calculator(model, **calc_kw), sae, words, direction, main)
        assert ab._absorption_difference(got, want) is None
        assert got == want  # the dataclasses' own equality too
        fractions += [r.absorption_fraction for r in want.word_results]
        full += [r.is_full_absorption for r in want.word_results]
    # the comparison covered the absorption fraction's branches and both full-absorption outcomes: 0 and 1 with
    # every architecture; a fraction strictly between with the ReLU ones, full absorption with TopK
    assert any(f == 0.0 for f in fractions) and any(f == 1.0 for f in fractions), fractions
    if arch == "topk":
        assert any(full) and not all(full)
    else:
        assert any(0.0 < f < 1.0 for f in fractions), fractions


def test_difference_catches_one_ulp(ab, model):
    import dataclasses

    sae = _sae("topk", model.cfg.d_model, 96, seed=4)
    direction = sae.W_dec.detach()[:4].sum(0)
    got, want = _both(ab, _calculator(model), sae, _words(model, 20), direction, [0, 1])
    assert ab._absorption_difference(got, want) is None
    r = got.word_results[7]
    bumped = float(np.nextafter(np.float64(r.probe_projection), np.inf))
    got.word_results[7] = dataclasses.replace(r, probe_projection=bumped)
    assert "word 7" in ab._absorption_difference(got, want) and "probe_projection" in ab._absorption_difference(
        got, want
    )
    s = r.top_projection_feature_scores
    got.word_results[7] = dataclasses.replace(
        r, top_projection_feature_scores=[dataclasses.replace(s[0], activation=s[0].activation * (1 + 2**-20)), *s[1:]]
    )
    assert "top_projection_feature_scores activation" in ab._absorption_difference(got, want)
    got.word_results[7] = dataclasses.replace(r, absorption_fraction=np.float64(r.absorption_fraction))
    if type(r.absorption_fraction) is float:  # a numpy float where SAEBench had a Python one: a difference
        assert "absorption_fraction" in ab._absorption_difference(got, want)
    # -0.0 is not 0.0 (== would say it is), NaN is NaN
    got.word_results[7] = dataclasses.replace(r, probe_projection=-0.0)
    want.word_results[7] = dataclasses.replace(r, probe_projection=0.0)
    assert "probe_projection" in ab._absorption_difference(got, want)
    got.word_results[7] = want.word_results[7] = dataclasses.replace(r, probe_projection=float("nan"))
    assert ab._absorption_difference(got, want) is None


def test_checked_calculator_draws_as_saebench_and_falls_back(ab, model, monkeypatch):
    """The checked method returns SAEBench's results for the whole word list from the same generator state as
    SAEBench's own call (its check restores the draws); a host path that differs by one ulp is caught on the
    first call: that call and the later ones run SAEBench's method, the record says why."""
    import dataclasses

    import sae_bench.evals.absorption.feature_absorption_calculator as fac

    Calc = fac.FeatureAbsorptionCalculator
    orig = Calc.calculate_absorption
    sae = _sae("topk", model.cfg.d_model, 96, seed=6)
    direction = sae.W_dec.detach()[:5].sum(0)
    words = _words(model, 50)
    kw = {"probe_direction": direction, "main_feature_ids": [0, 2], "layer": 1, "show_progress": False}
    calc = _calculator(model)
    random.seed(9)
    want = [orig(calc, sae, words=words, **kw), orig(calc, sae, words=words[:20], **kw)]
    rec: list[dict] = []
    parts: list[dict] = []
    checked = ab.checked_absorption_calculator(orig, record=rec.append, check_words=16, parts=parts.append)
    random.seed(9)
    got = [checked(calc, sae, words=words, **kw), checked(calc, sae, words=words[:20], **kw)]
    assert got == want
    assert rec == [{"host_batches": True, "checked_words": 16}]
    # the check's seconds once, then each call's forward and per-word seconds
    assert [set(p) for p in parts] == [{"check"}, {"forward", "words"}, {"forward", "words"}]
    assert all(min(p.values()) >= 0 for p in parts)

    real = ab.calculate_absorption_host_batches

    def off_by_one_ulp(*a: Any, **k: Any) -> Any:
        out = real(*a, **k)
        r = out.word_results[3]
        out.word_results[3] = dataclasses.replace(r, probe_projection=float(np.nextafter(r.probe_projection, 0)))
        return out

    calls = []

    def spy(*a: Any, **k: Any) -> Any:
        calls.append(len(k["words"] if "words" in k else a[2]))
        return orig(*a, **k)

    monkeypatch.setattr(ab, "calculate_absorption_host_batches", off_by_one_ulp)
    rec.clear()
    checked = ab.checked_absorption_calculator(spy, record=rec.append, check_words=16)
    random.seed(9)
    got = [checked(calc, sae, words=words, **kw), checked(calc, sae, words=words[:20], **kw)]
    assert got == want
    assert len(rec) == 1 and rec[0]["host_batches"] is False and "word 3" in rec[0]["mismatch"], rec
    assert calls == [16, 50, 20]  # the check's, then SAEBench's for the whole call and the next

    # a letter without words (SAEBench's list of likely false negatives can be empty) checks nothing: the check
    # waits for the first call with words; an experiment with none records that nothing was checked
    monkeypatch.setattr(ab, "calculate_absorption_host_batches", real)
    rec.clear()
    calls.clear()
    checked = ab.checked_absorption_calculator(spy, record=rec.append, check_words=16)
    random.seed(9)
    empty = checked(calc, sae, words=[], **kw)
    assert empty.word_results == [] and rec == [] and calls == [0]
    random.seed(9)
    assert checked(calc, sae, words=words, **kw) == want[0]
    assert rec == [{"host_batches": True, "checked_words": 16}] and calls == [0, 16]
    checked.finish()
    assert len(rec) == 1
    rec.clear()
    none = ab.checked_absorption_calculator(spy, record=rec.append)
    none(calc, sae, words=[], **kw)
    none.finish()
    assert rec == [{"host_batches": False, "checked_words": 0, "reason": "no words"}]


def test_checked_calculator_error_falls_back(ab, model, monkeypatch):
    """The host path raising in the check: recorded, SAEBench's method runs for the call and the rest, from the
    generator state the call found (the same results as SAEBench's alone)."""
    import sae_bench.evals.absorption.feature_absorption_calculator as fac

    orig = fac.FeatureAbsorptionCalculator.calculate_absorption
    sae = _sae("standard", model.cfg.d_model, 96, seed=7)
    words = _words(model, 30)
    kw = {"probe_direction": sae.W_dec.detach()[:3].sum(0), "main_feature_ids": [1], "layer": 1, "show_progress": False}
    calc = _calculator(model)
    random.seed(4)
    want = orig(calc, sae, words=words, **kw)

    def broken(*a: Any, **k: Any) -> Any:
        random.random()  # draws before failing: the check must restore the state anyway
        raise RuntimeError("out of memory\nsecond line")

    monkeypatch.setattr(ab, "calculate_absorption_host_batches", broken)
    rec: list[dict] = []
    checked = ab.checked_absorption_calculator(orig, record=rec.append)
    random.seed(4)
    assert checked(calc, sae, words=words, **kw) == want
    assert rec == [{"host_batches": False, "checked_words": 30, "error": "RuntimeError: out of memory"}]


def test_reviewed_saebench_sources(ab, monkeypatch, tmp_path):
    """The installed SAEBench's absorption sources are the ones the host-batch copy was reviewed against (an upgrade
    fails here first); with another source the stage runs SAEBench's method and records why."""
    import sae_bench.evals.absorption.feature_absorption_calculator as fac
    import sae_bench.evals.absorption.main as am

    assert ab.unreviewed_saebench_source() is None
    monkeypatch.setitem(ab.REVIEWED_SAEBENCH_SOURCES, "_get_feature_scores", "0" * 64)
    assert ab.unreviewed_saebench_source() == "_get_feature_scores"
    seen, rec = [], []
    monkeypatch.setattr(
        am,
        "run_feature_absortion_experiment",
        lambda **kw: seen.append(fac.FeatureAbsorptionCalculator.calculate_absorption),
    )
    orig = fac.FeatureAbsorptionCalculator.calculate_absorption
    import types

    model = types.SimpleNamespace(tokenizer=types.SimpleNamespace(padding_side="right"))
    with ab.offline_absorption(model, "m", tmp_path / "w", absorption_stats=rec.append):
        am.run_feature_absortion_experiment(model=model, layer=1)
    assert seen == [orig]
    assert rec == [{"host_batches": False, "reason": "SAEBench's _get_feature_scores is not the reviewed source"}]


def test_stage_swaps_and_restores(ab, model, tmp_path, monkeypatch):
    """Inside ``offline_absorption`` SAEBench's experiment runs the checked method (a fresh check per SAE
    experiment) unless ``SAE_RDP_ABSORPTION_WORDS=saebench`` or ``host_batches=False``; SAEBench's method is back
    after the block."""
    import sae_bench.evals.absorption.feature_absorption_calculator as fac
    import sae_bench.evals.absorption.main as am

    Calc = fac.FeatureAbsorptionCalculator
    orig = Calc.calculate_absorption
    seen = []

    def experiment(**kw: Any) -> None:
        seen.append(Calc.calculate_absorption)

    monkeypatch.setattr(am, "run_feature_absortion_experiment", experiment)
    for env, kw, hosted in [(None, {}, True), ("SAEBench", {}, False), (None, {"host_batches": False}, False)]:
        if env is None:
            monkeypatch.delenv(ab.ABSORPTION_WORDS_ENV, raising=False)
        else:
            monkeypatch.setenv(ab.ABSORPTION_WORDS_ENV, env)
        seen.clear()
        with ab.offline_absorption(model, "m", tmp_path / "w", **kw):
            am.run_feature_absortion_experiment(model=model, layer=1)
            am.run_feature_absortion_experiment(model=model, layer=1)
            assert Calc.calculate_absorption is orig  # only during an experiment
        assert Calc.calculate_absorption is orig
        assert len(seen) == 2
        if hosted:
            assert seen[0] is not orig and seen[1] is not orig and seen[0] is not seen[1]
        else:
            assert seen == [orig, orig]


def test_host_validation_is_saebenchs_check(ab, model):
    """``validate_prompts_on_host`` raises exactly when SAEBench's prompt-length check does, with its message, and
    asks ``to_tokens`` for host tensors; the installed SAEBench's check is the reviewed source."""
    import dataclasses

    import sae_bench.evals.absorption.feature_absorption_calculator as fac

    assert ab.unreviewed_saebench_source(ab.REVIEWED_VALIDATE_SOURCE) is None
    calc = _calculator(model)
    random.seed(3)
    prompts = calc._build_prompts(_words(model, 25))
    longer = dataclasses.replace(prompts[4], base=prompts[4].base + " " + prompts[7].word)
    for case in (prompts, [*prompts[:10], longer]):
        errors = []
        for check in (fac.FeatureAbsorptionCalculator._validate_prompts_are_same_length, ab.validate_prompts_on_host):
            try:
                check(calc, case)
                errors.append(None)
            except ValueError as e:
                errors.append(str(e))
        assert errors[0] == errors[1]
        assert (errors[0] is None) == (case is prompts)
    calls = []
    to_tokens = model.to_tokens

    def spy(*a: Any, **k: Any) -> Any:
        calls.append(k.get("move_to_device", True))
        return to_tokens(*a, **k)

    calc.model = type("M", (), {"to_tokens": staticmethod(spy)})()
    ab.validate_prompts_on_host(calc, prompts)
    assert calls == [False] * len(prompts)


def test_stage_times_prompts_and_validation(ab, model, tmp_path, monkeypatch):
    """Inside ``offline_absorption`` the prompts' building and the length check are timed parts of the absorption
    experiment; the check asks for host tensors while SAEBench's source is the reviewed one, else it is SAEBench's
    own (tokens moved to the model's device); both are SAEBench's again after the block."""
    import sae_bench.evals.absorption.feature_absorption_calculator as fac

    Calc = fac.FeatureAbsorptionCalculator
    orig_build, orig_validate = Calc._build_prompts, Calc._validate_prompts_are_same_length
    calc = _calculator(model)
    words = _words(model, 12)
    to_tokens = model.to_tokens
    moved: list[bool] = []

    def spy(*a: Any, **k: Any) -> Any:
        moved.append(k.get("move_to_device", True))
        return to_tokens(*a, **k)

    calc.model = type("M", (), {"to_tokens": staticmethod(spy), "tokenizer": model.tokenizer})()
    for digest, host in [(None, True), ("0" * 64, False)]:
        if digest is not None:
            monkeypatch.setitem(ab.REVIEWED_VALIDATE_SOURCE, next(iter(ab.REVIEWED_VALIDATE_SOURCE)), digest)
        seen: list[str] = []
        with ab.offline_absorption(model, "m", tmp_path / "w", progress=lambda part, s: seen.append(part)):
            prompts = calc._build_prompts(words)
            moved.clear()
            calc._validate_prompts_are_same_length(prompts)
        assert seen == ["absorption_experiment.prompts", "absorption_experiment.validate"]
        assert moved == [not host] * len(words)
        assert Calc._build_prompts is orig_build and Calc._validate_prompts_are_same_length is orig_validate
    # the experiment's reads (the k-sparse results' parquet files, the probe) and the k-sparse step's L1 probe are
    # timed parts too, and SAEBench's own functions again after the block
    import pandas as pd
    import sae_bench.evals.absorption.feature_absorption as fa
    import sae_bench.evals.absorption.k_sparse_probing as ksp_mod

    orig_load = (fa.load_experiment_df, fa.load_probe, ksp_mod.train_sparse_multi_probe)
    pd.DataFrame({"a": [1, 2]}).to_parquet(tmp_path / "x.parquet")
    seen = []
    monkeypatch.setattr(ksp_mod, "train_sparse_multi_probe", lambda *a, **k: "probe")
    l1 = ksp_mod.train_sparse_multi_probe
    with ab.offline_absorption(model, "m", tmp_path / "w", progress=lambda part, s: seen.append(part)):
        assert fa.load_experiment_df("x", tmp_path / "x.parquet")["a"].tolist() == [1, 2]
        assert ksp_mod.train_sparse_multi_probe(1, 2) == "probe"  # the k-sparse step's L1 probe, timed
    assert seen == ["absorption_experiment.load", "k_sparse_probing.training.l1_probe"]
    assert (fa.load_experiment_df, fa.load_probe, ksp_mod.train_sparse_multi_probe) == (*orig_load[:2], l1)
