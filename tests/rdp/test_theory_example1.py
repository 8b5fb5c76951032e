"""Example 1 beyond its three named codes: the best of all dictionaries (brute force over every
dictionary with the pure-Python decoder), the paper's counterexample pmfs, and the inequalities that no
pmf can satisfy."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from theory_reference import ref_code

from sae_rdp_plugin.cli import main
from sae_rdp_plugin.rdp.dgp import ExplicitPMF
from sae_rdp_plugin.rdp.theory import EXAMPLE1_PRESETS, example1, ids_to_atoms

SETS = [frozenset(i for i in range(3) if (b >> i) & 1) for b in range(8)]


@st.composite
def pmfs(draw):
    w = draw(st.lists(st.integers(0, 6), min_size=8, max_size=8))
    if sum(w) == 0:
        w[0] = 1
    return ExplicitPMF(3, {s: x / sum(w) for s, x in zip(SETS, w) if x})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pmf=pmfs(), K=st.sampled_from([1, 2]))
def test_best_of_all_dictionaries_equals_bruteforce(pmf, K):
    res = example1(pmf, K)
    for w in (2, 3):
        every = [(ref_code(pmf, ids_to_atoms(ids), K, "binary"), ids) for ids in itertools.combinations(range(7), w)]
        d_best = min(rd[1] for rd, _ in every)
        d_mono = min(rd[1] for rd, ids in every if all(len(a) == 1 for a in ids_to_atoms(ids)))
        b = res["best_of_all_dictionaries"][f"width{w}"]
        assert abs(b["distortion"] - d_best) < 1e-12
        assert abs(b["rate"] - min(rd[0] for rd, _ in every if rd[1] < d_best + 1e-12)) < 1e-12
        assert abs(res["best_monosemantic"][f"width{w}"]["distortion"] - d_mono) < 1e-12
        named = res["codes"][res["winner"][f"width{w}"]]["distortion"]
        assert res["winner_is_best_of_all"][f"width{w}"] == (named < d_best + 1e-12)
        assert res["pair_code_is_best_monosemantic"][f"width{w}"] == (
            res["codes"][f"mono{w}"]["distortion"] < d_mono + 1e-12
        )


def test_the_named_winner_is_not_always_the_best_dictionary():
    # p(0) = p(1) = .2, p(2) = .55, p(01) = .05, K = 1, width 2: the hedged {v0+v1, v2} (D = p(0) + p(1) = 0.4)
    # wins among the named codes, but {v0, v2} misses only {1} and half of {0,1}: D = 0.2 + 0.05 = 0.25
    pmf = ExplicitPMF(3, {frozenset({0}): 0.2, frozenset({1}): 0.2, frozenset({2}): 0.55, frozenset({0, 1}): 0.05})
    res = example1(pmf, 1)
    assert res["winner"]["width2"] == "hedged2" and abs(res["codes"]["hedged2"]["distortion"] - 0.4) < 1e-12
    best = res["best_of_all_dictionaries"]["width2"]
    assert best["atoms"] == [[0], [2]] and abs(best["distortion"] - 0.25) < 1e-12
    assert res["winner_is_best_of_all"]["width2"] is False
    assert res["pair_code_is_best_monosemantic"]["width2"] is False  # {v0, v2} is monosemantic too


def test_paper_counterexample_presets():
    ind = ExplicitPMF.from_json(EXAMPLE1_PRESETS["hedging-zero-correlation"])
    assert abs(ind.table()[frozenset({0, 1})] - 0.8 * 0.8 * 0.5) < 1e-15  # independent q = (.8, .8, .5)
    cor = ExplicitPMF.from_json(EXAMPLE1_PRESETS["no-hedging-strong-correlation"])
    for K in (1, 2):
        a, b = example1(ind, K), example1(cor, K)
        assert abs(a["pair_correlation"]) < 1e-12 and abs(a["pair_cooccurrence"] - 0.64) < 1e-12
        # phi of concepts 0, 1: (0.015 - 0.035^2) / (0.035 * 0.965)
        assert abs(b["pair_correlation"] - (0.015 - 0.035**2) / (0.035 * 0.965)) < 1e-12
        assert a["inequalities"]["hedged2"]["holds"] and a["inequalities"]["hedged3"]["holds"]
        assert not b["inequalities"]["hedged2"]["holds"] and not b["inequalities"]["hedged3"]["holds"]


def test_splitting_can_never_win_at_k2():
    pmf = ExplicitPMF(3, {frozenset({0, 1}): 1.0})
    k1, k2 = example1(pmf, 1), example1(pmf, 2)
    assert all(q["can_hold"] for q in k1["inequalities"].values())
    assert [nm for nm, q in k2["inequalities"].items() if not q["can_hold"]] == ["split2", "split3"]
    # by hand, K = 2: mono2 {v0, v1} writes every set's part in {0,1} exactly; split2 {v0+v1, v0} writes
    # {0}, {0,1} exactly but misses 1 alone: D(split2) - D(mono2) = p({1}) + p({1,2}) >= 0
    assert k2["inequalities"]["split2"]["beats_monosemantic_in_distortion_iff"] == "0 > p({1}) + p({1,2})"


@pytest.mark.parametrize("preset", sorted(EXAMPLE1_PRESETS))
def test_cli_presets(preset, capsys):
    assert main(["theory", "example1", "--preset", preset, "--k", "2", "--check"]) == 0
    out = capsys.readouterr().out
    assert "best of all dictionaries" in out and "closed forms match enumeration: True" in out
    assert "split2 beats mono in distortion iff 0 > p({1}) + p({1,2})  [never holds" in out


def test_cli_pmf_or_preset_exactly_one(tmp_path, capsys):
    f = tmp_path / "p.json"
    f.write_text('{"concepts": 3, "pmf": {"": 1.0}}')
    for args in ([], ["--pmf", str(f), "--preset", "hedging-zero-correlation"]):
        with pytest.raises(SystemExit) as e:
            main(["theory", "example1", "--k", "1", *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert math.isclose(sum(EXAMPLE1_PRESETS["no-hedging-strong-correlation"]["pmf"].values()), 1.0)
