"""`sae-rdp theory frontier|example1`: JSON contents checked against brute force, figures written,
bad input gives one line on stderr, exit status 2 and no output file."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from theory_reference import ref_all_encoders, ref_code, ref_frontier

from sae_rdp_plugin.cli import main
from sae_rdp_plugin.rdp.dgp import ExplicitPMF

PMF = {"concepts": 3, "pmf": {"": 0.1, "0": 0.2, "1": 0.15, "2": 0.15, "0,1": 0.3, "0,1,2": 0.1}}


@pytest.fixture
def pmf_file(tmp_path):
    p = tmp_path / "pmf.json"
    p.write_text(json.dumps(PMF))
    return p


def test_frontier_json_and_plot(tmp_path, pmf_file, capsys):
    out, png = tmp_path / "f.json", tmp_path / "f.png"
    rc = main(
        [
            "theory",
            "frontier",
            "--pmf",
            str(pmf_file),
            "--width",
            "3",
            "--k",
            "1",
            "--out",
            str(out),
            "--plot",
            str(png),
            "--encoders",
            "optimal",
        ]
    )
    assert rc == 0
    assert "encoders optimal" in capsys.readouterr().out
    f = json.loads(out.read_text())
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pmf = ExplicitPMF.from_json(PMF)
    assert len(f["codes"]) == math.comb(7, 3)
    for c in f["codes"]:
        R, D = ref_code(pmf, c["atoms"], 1, "binary")
        assert abs(c["rate"] - R) < 1e-12 and abs(c["distortion"] - D) < 1e-12
        used = c["used"]  # P over the atoms the code fires
        assert all(a in c["atoms"] for a in used)
        assert abs(c["polysemanticity"] - (sum(1 - len(a) ** -0.5 for a in used) / len(used) if used else 0)) < 1e-12
    # Pareto indices: exactly the non-dominated codes
    pts = [(c["rate"], c["distortion"], c["polysemanticity"]) for c in f["codes"]]
    ref = [
        i
        for i, a in enumerate(pts)
        if not any(all(x <= y + 1e-12 for x, y in zip(b, a)) and any(x < y - 1e-12 for x, y in zip(b, a)) for b in pts)
    ]
    assert sorted(f["pareto"]) == ref
    # monosemantic staircase corners lie on R + D = E|S|
    es = sum(p * len(s) for s, p in pmf.table().items())
    assert all(abs(d + r - es) < 1e-12 for d, r in f["monosemantic_frontier"])
    assert abs(f["rate_tax"]["zero_distortion_closed_form"] - 0.5) < 1e-12  # E(|S|-1)_+ = 0.3*1 + 0.1*2
    assert f["inputs"]["width"] == 3 and f["inputs"]["k"] == 1 and f["inputs"]["coefficients"] == "binary"
    assert "date_utc" in f["metadata"] and f["checks"]["theorem3_nonincreasing_in_rate_budget"]
    assert f["inputs"]["encoders"] == "optimal" and f["inputs"]["mono_class"] == "omission"
    # Theorem 5 at width 3: every concept can be represented, so no distortion is forced by omission; K = 1
    # forces E(|S| - 1)_+ = 0.3 + 2 * 0.1 = 0.5 on top (the TopK overflow, reported separately)
    assert f["monosemantic_infeasible_below"] == 0.0
    assert abs(f["monosemantic_topk_overflow"] - 0.5) < 1e-12 and abs(f["monosemantic_d_min"] - 0.5) < 1e-12


def test_frontier_default_is_every_encoder(tmp_path, pmf_file, capsys):
    out = tmp_path / "f.json"
    assert main(["theory", "frontier", "--pmf", str(pmf_file), "--width", "2", "--k", "1", "--out", str(out)]) == 0
    assert "encoders all" in capsys.readouterr().out
    f = json.loads(out.read_text())
    assert f["inputs"]["encoders"] == "all" and f["stats"]["n_dictionaries"] == math.comb(7, 2)
    # Theorem 5 at width 2 (marginals 0.6, 0.55, 0.25): omitting concept 2 costs 0.25; with K = 1 the best
    # represented pair also loses one concept on {0,1} and {0,1,2}: + 0.4 (A = {0,1}; A = {0,2} ties)
    assert abs(f["monosemantic_infeasible_below"] - 0.25) < 1e-12
    assert abs(f["monosemantic_topk_overflow"] - 0.4) < 1e-12 and abs(f["monosemantic_d_min"] - 0.65) < 1e-12
    pmf = ExplicitPMF.from_json(PMF)
    by_dict: dict = {}
    for c in f["codes"]:
        by_dict.setdefault(tuple(map(tuple, c["atoms"])), []).append((c["rate"], c["distortion"], c["polysemanticity"]))
    assert len(by_dict) == math.comb(7, 2)
    for atoms, rows in by_dict.items():  # each dictionary's frontier over every encoder, by brute force
        ref = ref_frontier(*ref_all_encoders(pmf, atoms, 1))
        assert len(rows) == len(ref)
        assert all(abs(a - b) < 1e-9 for u, v in zip(sorted(rows), ref) for a, b in zip(u, v))
    R = [c["rate"] for c in f["codes"]]
    D = [c["distortion"] for c in f["codes"]]
    for b in f["best_unrestricted"]:  # the envelope: least D at each rate budget over every row
        assert abs(min(d for r, d in zip(R, D) if r <= b["rate"] + 1e-12) - b["distortion"]) < 1e-12


def test_example1_json(pmf_file, capsys):
    rc = main(["theory", "example1", "--pmf", str(pmf_file), "--k", "1", "--json", "--check"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    pmf = ExplicitPMF.from_json(PMF)
    for name, c in res["codes"].items():
        R, D = ref_code(pmf, c["atoms"], 1, "binary")
        assert abs(c["rate"] - R) < 1e-12 and abs(c["distortion"] - D) < 1e-12
    assert res["closed_forms_match_enumeration"] is True
    # by hand: split3 = {v0+v1, v0, v1}: D = p(2) + p(0,1,2) = 0.25 < mono3: p(0,1) + 2 p(0,1,2) = 0.5
    assert res["winner"]["width3"] == "split3"
    assert res["inequalities"]["split3"]["beats_monosemantic_in_distortion_iff"] == "p({0,1}) + p({0,1,2}) > p({2})"
    assert res["inequalities"]["split3"]["holds"] is True
    rc = main(["theory", "example1", "--pmf", str(pmf_file), "--k", "2"])
    assert rc == 0 and "winner at width2" in capsys.readouterr().out


BAD_PMFS = [
    ('{"concepts": 2, "pmf": {"": 0.5, "0": 0.4}}', "sum to"),
    ('{"concepts": 2, "pmf": {"0,1": 0.5, "1,0": 0.5}}', "duplicate set"),
    ('{"concepts": 2, "pmf": {"3": 1.0}}', "out of range"),
    ('{"concepts": 2, "pmf": {"x": 1.0}}', "malformed PMF key"),
    ('{"pmf": {"": 1.0}}', "missing 'concepts'"),
    ('{"concepts": 2, "pmf": {"": 1.5, "0": -0.5}}', "negative probability"),
    ("{oops", "malformed JSON"),
]


@pytest.mark.parametrize("text,msg", BAD_PMFS)
def test_bad_pmf_one_line_error_no_output(tmp_path, capsys, text, msg):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    out = tmp_path / "f.json"
    rc = main(["theory", "frontier", "--pmf", str(bad), "--width", "2", "--k", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and msg in err and err.count("\n") == 1
    assert not out.exists() and not any(tmp_path.glob(".f.json*"))


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--width", "0", "--k", "1"], "width"),
        (["--width", "9", "--k", "1"], "width"),
        (["--width", "2", "--k", "0"], "TopK K"),
    ],
)
def test_bad_frontier_args(tmp_path, pmf_file, capsys, args, msg):
    out = tmp_path / "f.json"
    rc = main(["theory", "frontier", "--pmf", str(pmf_file), *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize("flag", ["--encoders", "--mono-class"])
def test_bad_class_choice_one_line(tmp_path, pmf_file, capsys, flag):
    out = tmp_path / "f.json"
    with pytest.raises(SystemExit) as e:  # argparse: usage errors exit from the parser
        main(["theory", "frontier", "--pmf", str(pmf_file), "--width", "2", "--k", "1", flag, "x", "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and flag in err and err.count("\n") == 1
    assert not out.exists()


def test_bad_example1_args(tmp_path, pmf_file, capsys):
    four = tmp_path / "four.json"
    four.write_text(json.dumps({"concepts": 4, "pmf": {"": 1.0}}))
    assert main(["theory", "example1", "--pmf", str(four), "--k", "1"]) == 2
    assert "three-concept" in capsys.readouterr().err
    assert main(["theory", "example1", "--pmf", str(pmf_file), "--k", "3"]) == 2
    assert "K in" in capsys.readouterr().err
    assert main(["theory", "example1", "--pmf", str(pmf_file), "--k", "1", "--pair", "0;1"]) == 2
    assert "--pair" in capsys.readouterr().err


def test_missing_pmf_file_subprocess(tmp_path):
    out = tmp_path / "f.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sae_rdp_plugin",
            "theory",
            "frontier",
            "--pmf",
            str(tmp_path / "none.json"),
            "--width",
            "2",
            "--k",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.strip().startswith("error: PMF file not found")
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
