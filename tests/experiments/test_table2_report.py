"""experiments/table2/report.py: table2.json rows checked against a brute-force V on synthetic SAEBench JSONs."""

import json
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from script_loader import load_script


def _report():
    return load_script("t2_report", "experiments/table2/report.py")


def _write(folder: Path, eval_type: str, release: str, sae_id: str, width: int, metrics: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    obj = {
        "eval_type_id": eval_type,
        "eval_config": {"model_name": "gemma3-270m"},
        "eval_id": "x",
        "datetime_epoch_millis": 0,
        "eval_result_metrics": metrics,
        "eval_result_details": [],
        "sae_bench_commit_hash": "x",
        "sae_lens_id": sae_id,
        "sae_lens_release_id": release,
        "sae_lens_version": "6.54.12",
        "sae_cfg_dict": {"d_sae": width, "model_name": "gemma3-270m", "hook_name": "blocks.9.hook_resid_post"},
    }
    (folder / f"{release}__{sae_id}.json").write_text(json.dumps(obj))


def _brute_v(r: np.ndarray, d: np.ndarray, pi: np.ndarray) -> tuple[float, int]:
    """THEORY.md Definition 3 by enumeration: pairs (i, j), R_i <= R_j, D_i <= D_j, not equal; Pi_i < Pi_j
    violates, ties count 1/2."""
    viol, n = 0.0, 0
    for i, j in product(range(len(r)), repeat=2):
        if i != j and r[i] <= r[j] and d[i] <= d[j] and (r[i], d[i]) != (r[j], d[j]):
            n += 1
            viol += 1.0 if pi[i] < pi[j] else (0.5 if pi[i] == pi[j] else 0.0)
    return viol / n, n


def _write_sae(folder: Path, release: str, sid: str, w: int, l0: float, ev: float, acc: float, **q: float) -> None:
    """One SAE's core JSON (L0, EV legacy, ``mse``, ``ce_loss_score``) and sparse-probing JSON (top-1 accuracy)."""
    core = {
        "sparsity": {"l0": l0},
        "reconstruction_quality": {
            "explained_variance": 1.0,
            "explained_variance_legacy": ev,
            "mse": q.get("mse", 1.0),
        },
        "model_performance_preservation": {"ce_loss_score": q.get("ce", 0.9)},
    }
    _write(folder / "core", "core", release, sid, w, core)
    probe = {"sae": {"sae_top_1_test_accuracy": acc}, "llm": {"llm_test_accuracy": 0.95}}
    _write(folder / "sparse_probing_sae_probes", "sparse_probing_sae_probes", release, sid, w, probe)


def _report_into(rep, tmp: Path) -> tuple[Path, list[str], dict]:
    """report.py on ``tmp/results`` into ``tmp/t2`` (with a FINDINGS.md to fill): (that folder, argv, table2.json)."""
    out = tmp / "t2"
    out.mkdir()
    (out / "FINDINGS.md").write_text(f"head\n{rep.BEGIN}\n{rep.END}\n")
    argv = ["--results", str(tmp / "results"), "--out", str(out), "--n-boot", "50", "--n-perm", "50"]
    assert rep.main(argv) == 0
    return out, argv, json.loads((out / "table2.json").read_text())


@pytest.fixture
def results(tmp_path):
    rng = np.random.default_rng(3)
    truth = {}
    for arch in ("topk", "standard"):
        release = f"table2-gemma3-270m-L9-{arch}"
        rows = []
        for w, lev, step in product((4096, 16384), range(3), ("final", "5000")):
            sid = f"blocks.9.hook_resid_post__w{w}_lev{lev}_s0_step_{step}"
            l0, ev, acc = float(rng.uniform(10, 200)), float(rng.uniform(0.5, 0.95)), float(rng.uniform(0.6, 0.9))
            mse = float(rng.uniform(5, 80))
            base = tmp_path / "results" / "gemma3-270m-L9"
            # SAEBench 0.6's saturated explained_variance must not be the distortion: a constant here
            quality = {"explained_variance": 1.0, "explained_variance_legacy": ev, "mse": mse}
            ce = float(rng.uniform(0.6, 0.95)) if arch == "topk" else float(rng.uniform(0.2, 0.45))
            core = {
                "sparsity": {"l0": l0},
                "reconstruction_quality": quality,
                "model_performance_preservation": {"ce_loss_score": ce},
            }
            _write(base / "core", "core", release, sid, w, core)
            probe = {"sae": {"sae_top_1_test_accuracy": acc}, "llm": {"llm_test_accuracy": 0.95}}
            _write(base / "sparse_probing_sae_probes", "sparse_probing_sae_probes", release, sid, w, probe)
            rows.append((l0, 1 - ev, -acc, mse, ce))  # Pi = -accuracy (higher accuracy = more monosemantic)
        truth[arch] = np.array(rows)
    return tmp_path, truth


def test_rows_match_brute_force_v(results):
    tmp, truth = results
    rep = _report()
    assert (
        rep.main(["--results", str(tmp / "results"), "--out", str(tmp / "t2"), "--n-boot", "50", "--n-perm", "50"]) == 0
    )
    rows = json.loads((tmp / "t2" / "table2.json").read_text())["rows"]
    col = "sparse_probing_sae_probes.sae.sae_top_1_test_accuracy"
    for (arch, t), (dist, dcol) in product(truth.items(), (("1-EV", 1), ("MSE", 3))):
        (row,) = [
            r
            for r in rows
            if r["grouping"] == "architecture"
            and r["architecture"] == arch
            and r["proxy"] == col
            and r["distortion"] == dist
        ]
        v, n = _brute_v(t[:, 0], t[:, dcol], t[:, 2])
        assert row["n_saes"] == 12 and row["n_pairs"] == n and row["V"] == pytest.approx(v, abs=1e-12)
        assert row["paper_proxy"] == "Sparse Probing" and row["V_ci"][0] <= row["V"] <= row["V_ci"][1]
    pooled = [r for r in rows if r["grouping"] == "pooled" and r["proxy"] == col and r["distortion"] == "1-EV"]
    allt = np.concatenate(list(truth.values()))
    assert len(pooled) == 1 and pooled[0]["n_saes"] == 24
    assert pooled[0]["V"] == pytest.approx(_brute_v(allt[:, 0], allt[:, 1], allt[:, 2])[0], abs=1e-12)
    widths = {
        (r["architecture"], r["width"])
        for r in rows
        if r["grouping"] == "width" and r["proxy"] == col and r["distortion"] == "1-EV"
    }
    assert widths == {(a, w) for a in truth for w in (4096, 16384)}
    md = (tmp / "t2" / "table2.md").read_text()
    assert "| gemma3-270m | 9 | topk | `" + col in md and "paper 0.351 is" in md
    # the standard sweep's CE loss recovered (0.2-0.45) is below the working-SAE bar: no comparison with 0.709
    for arch, t in truth.items():
        (row,) = [
            r
            for r in rows
            if r["grouping"] == "architecture"
            and r["architecture"] == arch
            and r["proxy"] == col
            and r["distortion"] == "1-EV"
        ]
        assert row["median_ce_loss_score"] == pytest.approx(float(np.median(t[:, 4])), abs=1e-12)
        assert row["median_explained_variance_legacy"] == pytest.approx(float(np.median(1 - t[:, 1])), abs=1e-12)
    assert "paper 0.709 is" not in md
    assert "not compared with the paper's 0.709: median CE loss recovered" in md
    qual = rep.quality(next((tmp / "results").iterdir()))
    for arch, t in truth.items():
        q = qual[(arch, None)]
        assert q["n"] == len(t) and q["median_l0"] == pytest.approx(float(np.median(t[:, 0])), abs=1e-9)
        assert (q["min_l0"], q["max_l0"]) == pytest.approx((t[:, 0].min(), t[:, 0].max()), abs=1e-9)
        assert f"L0 median {np.median(t[:, 0]):.1f} ({t[:, 0].min():.1f}-{t[:, 0].max():.1f})" in rep.quality_text(q)


def test_compare_text_follows_the_interval():
    rep = _report()
    row = {"paper_proxy": "Sparse Probing", "architecture": "topk", "V": 0.5, "V_ci": [0.4, 0.6]}
    assert rep.compare(row) == "paper 0.351 is below our interval"
    assert rep.compare({**row, "V_ci": [0.3, 0.6]}) == "paper 0.351 is inside our interval"
    assert rep.compare({**row, "V_ci": [0.1, 0.3]}) == "paper 0.351 is above our interval"
    assert rep.compare({**row, "architecture": "jumprelu"}) == "no paper value"
    assert rep.compare({**row, "median_ce_loss_score": 0.9}) == "paper 0.351 is below our interval"
    assert rep.compare({**row, "median_ce_loss_score": 0.3}).startswith("not compared with the paper's 0.351")
    # an interval over all of [0, 1] (a few pairs) holds any value: no agreement to report
    assert rep.compare({**row, "V_ci": [0.0, 1.0]}) == "paper 0.351; our interval [0, 1] holds any value: no comparison"
    assert rep.compare({**row, "V_ci": [0.0, 0.99]}) == "paper 0.351 is inside our interval"


def test_direction_needs_the_interval_and_the_permutation_test():
    """A bootstrap interval of [1, 1] from two dominated pairs with p = 0.52 (the BatchTopK sweep) names no
    direction; the same interval with p < 0.05 does; an interval holding 0.5 never does."""
    rep = _report()
    assert rep.direction_text(1.0, 1.0, 0.518).endswith("no direction")
    assert "(inverted)" in rep.direction_text(0.6, 1.0, 0.01)
    assert "(faithful)" in rep.direction_text(0.0, 0.2, 0.001)
    assert rep.direction_text(0.0, 0.2, 0.2).endswith("no direction")
    assert rep.direction_text(0.2, 0.9, 0.0001) == "0.5 (random) lies inside the interval"


def test_calibration_fix_names_the_side_the_grid_misses():
    rep = _report()
    targets = [256, 128, 64, 32, 16]
    assert "extend the grid to larger values" in rep._cal_fix([[0.25, 2700.0], [32, 2336.0]], targets)
    assert "extend the grid to smaller values" in rep._cal_fix([[2, 12.0], [128, 4.0]], targets)
    assert rep._cal_fix([[2, 795.0], [16, 48.0], [128, 4.0]], targets) == "redo with a finer grid"


def test_no_results_is_one_error_line(tmp_path, capsys):
    rep = _report()
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "missing", tmp_path / "empty"):
        with pytest.raises(SystemExit) as e:
            rep.main(["--results", str(bad), "--out", str(tmp_path / "o")])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "o").exists()


def test_findings_block_is_rewritten_between_markers(results):
    tmp, truth = results
    rep = _report()
    out = tmp / "t2"
    out.mkdir()
    (out / "FINDINGS.md").write_text(f"head\n{rep.BEGIN}\nold text\n{rep.END}\ntail\n")
    assert rep.main(["--results", str(tmp / "results"), "--out", str(out), "--n-boot", "50", "--n-perm", "50"]) == 0
    doc = (out / "FINDINGS.md").read_text()
    assert doc.startswith("head\n") and doc.endswith("tail\n") and "old text" not in doc
    rows = json.loads((out / "table2.json").read_text())["rows"]
    (topk,) = [
        r
        for r in rows
        if r["grouping"] == "architecture"
        and r["architecture"] == "topk"
        and r["distortion"] == "1-EV"
        and r["proxy"] == "sparse_probing_sae_probes.sae.sae_top_1_test_accuracy"
    ]
    assert f"V = {topk['V']:.3f} [{topk['V_ci'][0]:.3f}, {topk['V_ci'][1]:.3f}] over 12 SAEs" in doc
    kinds = rep.pair_kinds(rep._core_points(tmp / "results" / "gemma3-270m-L9"))
    assert sum(kinds.values()) == sum(_brute_v(t[:, 0], t[:, 1], t[:, 2])[1] for t in truth.values())
    (out / "FINDINGS.md").write_text("no markers\n")
    (out / "table2.json").unlink()
    with pytest.raises(SystemExit) as e:
        rep.main(["--results", str(tmp / "results"), "--out", str(out), "--n-boot", "50", "--n-perm", "50"])
    assert e.value.code == 2 and (out / "FINDINGS.md").read_text() == "no markers\n"
    assert not (out / "table2.json").exists()  # nothing written


def test_diagnostics_table_is_computed_from_its_json(tmp_path):
    rep = _report()
    assert rep.diagnostics(tmp_path / "missing.json") == ""
    stats = {
        "tokens_train": 1000, "tokens_heldout": 200, "massive_dim": 7, "massive_share_pooled": 0.9,
        "top3_var_share": [0.9, 0.01, 0.005], "massive_share_of_token_centred_energy": {"p50": 0.3},
    }  # fmt: skip
    fit = {"name": "a", "arch": "standard", "transform": "saelens", "l1_coefficient": 12, "steps": 800,
           "l1_warm_up_steps": 400, "l0": 46.12, "dead_fraction_heldout": 0.002, "ev_legacy_mean": 0.0181,
           "fvu_pooled": 0.1177, "fvu_other_639": 0.6543}  # fmt: skip
    jr = {**fit, "name": "j", "arch": "jumprelu", "l0_coefficient": 2, "jumprelu_init_threshold": 0.01,
          "threshold_lr_mult": 30.0, "l1_warm_up_steps": 0}  # fmt: skip
    del jr["l1_coefficient"]
    w = {**fit, "name": "w", "arch": "wtopk", "k": 32, "alpha": 1.0, "variance_cap_quantile": 0.99,
         "gamma_sq_share_of_massive_dim": 0.04567, "l1_warm_up_steps": 0}  # fmt: skip
    del w["l1_coefficient"]
    ce = {"rows": 8, "context": 256, "tokens_scored": 2040, "ce_clean": 4.2, "ce_zero_ablation": 22.6,
          "fits": {"w": {"ce_with_sae": 5.0, "ce_loss_recovered": (22.6 - 5.0) / (22.6 - 4.2)}}}  # fmt: skip
    (tmp_path / "d.json").write_text(
        json.dumps({"model": "m", "stats": stats, "fits": [fit, jr, w], "ce_loss_recovered": ce})
    )
    text = rep.diagnostics(tmp_path / "d.json")
    assert "dimension 7 holds 90.0% of the pooled variance" in text
    assert "| `a` | standard | saelens | 12 | 1 | 800 (L1 warm-up 400) | 46.1 | 0.002 | 0.018 | 0.118 | 0.654 |" in text
    assert "| `w` | weighted_topk (alpha 1, variance cap q 0.99; massive dimension's share of gamma^2 0.046) |" in text
    assert "2,040 held-out tokens of 8 rows x 256; CE clean 4.200, zero-ablated 22.600): `w` 0.957." in text
    assert "| `j` | jumprelu, init threshold 0.01 | saelens | 2 | 30 | 800 | 46.1 |" in text


def test_calibration_drift_pairs_each_target_with_its_final_sae(tmp_path):
    """Each calibrated level's target L0 is set against the core L0 of the final SAE at that level (checkpoints,
    other widths and other architectures ignored); levels without a final SAE are left out."""
    rep = _report()
    folder = tmp_path / "gemma3-270m-L9"
    folder.mkdir()
    cal = {"stage": "C-gemma3-270m-9-standard", "target_l0": [256, 128, 64],
           "levels": {"4096": {"cal0": 2.0, "cal1": 3.5, "cal2": 6.0}}}  # fmt: skip
    (folder / "calibration_C-gemma3-270m-9-standard.json").write_text(json.dumps(cal))
    rel = "table2-gemma3-270m-L9-standard"
    pts = [
        {"release": rel, "width": 4096, "level": "l1_coefficient2_cal0", "step": "final", "R": 64.0},
        {"release": rel, "width": 4096, "level": "l1_coefficient2_cal0", "step": "10002432", "R": 90.0},
        {"release": rel, "width": 4096, "level": "l1_coefficient3_5_cal1", "step": "final", "R": 16.0},
        {"release": rel, "width": 16384, "level": "l1_coefficient3_5_cal1", "step": "final", "R": 5.0},
        {"release": "table2-gemma3-270m-L9-topk", "width": 4096, "level": "k64_cal2", "step": "final", "R": 64.0},
    ]
    line, pooled = rep.calibration_drift(folder, pts)
    assert pooled.startswith("- `standard` final / target over its 2 final SAEs: median 0.188 ")  # (0.25+0.125)/2
    assert line == (
        "- `standard` width 4096, target L0 -> final SAE's core L0 (coefficient): 256 -> 64.0 (2), "
        "128 -> 16.0 (3.5); final / target 0.12-0.25."
    )
    assert "for later calibrations comes from this line" in pooled  # no ratio recorded: calibrated with 1
    # calibrated aiming at target / 0.5: the coefficients were set for L0 512 and 256 in the short runs, so the
    # finals' 64 and 16 are 0.125 and 0.0625 of those (median 0.094), while final / target stays 0.188
    cal["final_over_calibration_l0"] = 0.5
    (folder / "calibration_C-gemma3-270m-9-standard.json").write_text(json.dumps(cal))
    _, pooled = rep.calibration_drift(folder, pts)
    assert pooled == (
        "- `standard` final / target over its 2 final SAEs: median 0.188; the calibration aimed at target / 0.5, "
        "so final / calibration L0 at the same coefficient is 0.094 (the `final_over_calibration_l0` for this "
        "model-layer's later calibrations)."
    )


def test_cross_pairs_count_dominance_between_architectures():
    """Pairs across releases only, keyed (dominating, dominated); equal points and same-release pairs skipped."""
    rep = _report()
    t, s = "table2-m-L9-topk", "table2-m-L9-standard"
    pts = [
        {"release": t, "R": 10.0, "D": 0.1},  # dominates (10, 0.3)
        {"release": t, "R": 20.0, "D": 0.05},  # dominates (30, 0.05)
        {"release": s, "R": 10.0, "D": 0.3},
        {"release": s, "R": 30.0, "D": 0.05},
        {"release": s, "R": 10.0, "D": 0.1},  # equals the first TopK point; dominates (10, 0.3): same release
    ]
    assert rep.cross_pairs(pts) == {("topk", "standard"): 2}
    pts.append({"release": s, "R": 5.0, "D": 0.01})  # dominates every TopK point
    assert rep.cross_pairs(pts) == {("topk", "standard"): 2, ("standard", "topk"): 2}


def test_eval_counts_keep_architectures_sharing_an_id_apart(tmp_path):
    """TopK and BatchTopK SAEs share SAE ids; the counts go by release and id, one SAE with two evals counts once."""
    rep = _report()
    sid = "blocks.9.hook_resid_post__w16_k4_s0_step_final"
    files = {
        "core/topk__a.json": ("table2-m-L9-topk", sid),
        "core/batchtopk__a.json": ("table2-m-L9-batchtopk", sid),
        "sparse_probing_sae_probes/batchtopk__a.json": ("table2-m-L9-batchtopk", sid),
        "sparse_probing_sae_probes/batchtopk__b.json": ("table2-m-L9-batchtopk", sid.replace("k4", "k8")),
    }
    for name, (rel, i) in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(json.dumps({"sae_lens_release_id": rel, "sae_lens_id": i}))
    (line,) = rep.eval_counts(tmp_path)
    assert line.startswith("- 3 SAEs (checkpoints included)")
    assert "batchtopk `core` 1, `sparse_probing_sae_probes` 2; topk `core` 1." in line
    assert rep.eval_counts(tmp_path / "nothing") == []


def test_absorption_probe_lines_are_computed_from_their_json(tmp_path):
    rep = _report()
    assert rep.absorption_probes(tmp_path) == ""
    letters = [{"letter": c, "n_train": 10, "n_test": 5, "f1": 0.9} for c in "abcdefghijklmnopqrstuvwxyz"]
    letters[21] = {**letters[21], "f1": 0.4, "n_test": 27}  # v
    letters[22] = {**letters[22], "f1": 0.6}  # w: exactly at the threshold fails (SAEBench: F1 > 0.6)
    d = {"model": "gemma3-270m", "hook": "blocks.9.hook_resid_post", "alpha_vocab": 139585, "words": 7500, "seed": 0,
         "n_train": 6000, "n_test": 1500, "min_GT_probe_f1": 0.6, "min_feats_for_eval": 20, "letters_passing": 24,
         "letters": letters, "seconds": {"probe": 425.5}, "machine": "x86_64, 2 CPU threads"}  # fmt: skip
    (tmp_path / "absorption_probe_g.json").write_text(json.dumps(d))
    (tmp_path / "absorption_probe_s.json").write_text(json.dumps({**d, "model": "s", "letters_passing": 3}))
    text = rep.absorption_probes(tmp_path)
    assert "- gemma3-270m `blocks.9.hook_resid_post`: 24 of 26 letters with probe F1 > 0.6 (enough:" in text
    assert "a sample of 7,500 of the model's 139,585 alphabetic tokens (6,000 train / 1,500 test words, seed 0)" in text
    assert "at or below 0.6: v 0.40 (27 test words), w 0.60 (5 test words); 426 s on x86_64" in text
    assert "- s `blocks.9.hook_resid_post`: 3 of 26 letters with probe F1 > 0.6 (too few:" in text
    (tmp_path / "absorption_probe_a.json").write_text(json.dumps({**d, "words": 15000, "letters_passing": 25}))
    lines = [x for x in rep.absorption_probes(tmp_path).splitlines() if x.startswith("- ")]
    assert [x.split(":")[1][:3] for x in lines] == [" 24", " 25", " 3 "]  # by model, then sample size


def test_pair_kinds_tell_seeds_and_wsae_variants_from_checkpoints_and_levels():
    """Dominated pairs are classed by what separates the two SAEs: a WSAE arm's alpha / cap variants are not
    sparsity levels and its seeds are not checkpoints (a first version counted them so)."""
    rep = _report()

    def pt(release, width, level, seed, step, R, D):
        return {"release": release, "width": width, "level": level, "seed": seed, "step": step, "R": R, "D": D}

    w = "table2-gemma3-270m-L9-weighted_topk"
    t = "table2-gemma3-270m-L9-topk"
    pts = [
        pt(w, 16384, "k32_alpha0", 0, "final", 32, 0.10),
        pt(w, 16384, "k32_alpha0", 1, "final", 32, 0.11),  # dominated by seed 0: a seed pair
        pt(w, 16384, "k32_alpha1", 0, "final", 32, 0.60),  # dominated by both alpha-0 SAEs: variant pairs
    ]
    assert rep.pair_kinds(pts) == {
        "sparsity level": 0,
        "WSAE variant (alpha / cap)": 2,
        "width (same level)": 0,
        "seed (same width, level)": 1,
        "checkpoint vs final (same width, level, seed)": 0,
    }
    pts = [
        pt(t, 4096, "k32", 0, "final", 32, 0.20),
        pt(t, 4096, "k32", 0, "10000000", 32, 0.25),  # its own half-way checkpoint
        pt(t, 16384, "k32", 0, "final", 32, 0.15),  # dominates both 4k SAEs: width pairs
        pt(t, 4096, "k64", 0, "final", 64, 0.30),  # dominated by all three: level pairs
    ]
    assert rep.pair_kinds(pts) == {
        "sparsity level": 3,
        "width (same level)": 2,
        "checkpoint vs final (same width, level, seed)": 1,
    }
    # calibrated levels: the coefficient reaching a target L0 differs by width; the target (cal<i>) is the level
    j = "table2-gemma3-270m-L9-jumprelu"
    pts = [
        pt(j, 16384, "l0_coefficient0_18_cal0", 0, "final", 198, 0.078),
        pt(j, 4096, "l0_coefficient0_218_cal0", 0, "final", 268, 0.088),  # same target, other width
        pt(j, 4096, "l0_coefficient0_46_cal1", 0, "final", 97, 0.157),  # another target: not dominated
        pt(j, 4096, "l0_coefficient0_5_cal10", 0, "final", 300, 0.090),  # dominated by the cal0 SAEs: level pairs
    ]
    assert rep.pair_kinds(pts) == {
        "sparsity level": 2,
        "width (same level)": 1,
        "checkpoint vs final (same width, level, seed)": 0,
    }


def test_wsae_variant_lines_from_core_and_proxy_jsons(tmp_path):
    """One line per WSAE variant with each seed's CE score, EV (legacy) and the proxies' dead fraction."""
    rep = _report()
    for sub in ("core", "rdp_proxies"):
        (tmp_path / sub).mkdir()

    def write(level: str, seed: int, ce: float, ev: float, dead: float | None) -> None:
        name = f"weighted_topk__x__w16384_{level}_s{seed}_step_final.json"
        core = {
            "sae_lens_release_id": "table2-m-L9-weighted_topk",
            "sae_lens_id": f"blocks.9.hook_resid_post__w16384_{level}_s{seed}_step_final",
            "eval_result_metrics": {
                "model_performance_preservation": {"ce_loss_score": ce},
                "reconstruction_quality": {"explained_variance_legacy": ev, "explained_variance": 1.0},
                "sparsity": {"l0": 32.0},
            },
        }
        (tmp_path / "core" / name).write_text(json.dumps(core))
        if dead is not None:
            prox = {"eval_result_metrics": {"sample": {"dead_fraction": dead}}}
            (tmp_path / "rdp_proxies" / name).write_text(json.dumps(prox))

    write("k32_alpha1", 1, -0.0131, 0.3851, 0.971)
    write("k32_alpha1", 0, 0.0252, 0.3951, 0.9637)
    write("k32_alpha0", 0, 0.9634, 0.8912, None)
    assert rep.wsae_variants(tmp_path) == [
        "- WSAE `k32_alpha0` (s0): `ce_loss_score` 0.963; `explained_variance_legacy` 0.891.",
        "- WSAE `k32_alpha1` (s0, s1): `ce_loss_score` 0.025, -0.013; `explained_variance_legacy` 0.395, 0.385; "
        "held-out dead-latent fraction 0.96, 0.97.",
    ]


def test_replicate_rows_and_lines_match_brute_force_v(results, capsys):
    """A replicate (results/replicates/<model>-L<layer>-<arch>-r<N>/): its own V by enumeration, tagged, in
    table2.json's "replicates" (not its "rows"), and a FINDINGS line setting it next to the committed sweep's V."""
    tmp, truth = results
    rep = _report()
    rng = np.random.default_rng(11)
    folder = tmp / "results" / "replicates" / "gemma3-270m-L9-topk-r2"
    release = "table2-gemma3-270m-L9-topk"
    rows_r2, widths_r2 = [], []
    for (w, lev, step), t in zip(product((4096, 16384), range(3), ("final", "5000")), truth["topk"]):
        sid = f"blocks.9.hook_resid_post__w{w}_lev{lev}_s0_step_{step}"
        ev, acc = 1 - t[1] + float(rng.normal(0, 0.01)), float(rng.uniform(0.6, 0.9))  # same L0, other accuracies
        _write_sae(folder, release, sid, w, t[0], ev, acc, mse=t[3], ce=t[4])
        rows_r2.append((t[0], 1 - ev, -acc, t[3]))
        widths_r2.append(w)
    r2, r2_width = np.array(rows_r2), np.array(widths_r2)
    out, argv, table = _report_into(rep, tmp)
    col = "sparse_probing_sae_probes.sae.sae_top_1_test_accuracy"
    (row,) = [
        r
        for r in table["replicates"]
        if r["proxy"] == col and r["grouping"] == "architecture" and r["distortion"] == "1-EV"
    ]
    v, n = _brute_v(r2[:, 0], r2[:, 1], r2[:, 2])
    assert row["replicate"] == "gemma3-270m-L9-topk-r2" and row["architecture"] == "topk"
    where = (row["model"], row["layer"], row["grouping"], row["distortion"])
    assert where == ("gemma3-270m", 9, "architecture", "1-EV")
    assert row["n_saes"] == 12 and row["n_pairs"] == n and row["V"] == pytest.approx(v, abs=1e-12)
    assert not any("replicate" in r for r in table["rows"])  # the committed sweeps' rows are unchanged in kind
    t = truth["topk"]
    v_main, n_main = _brute_v(t[:, 0], t[:, 1], t[:, 2])
    doc = (out / "FINDINGS.md").read_text()
    assert "`gemma3-270m-L9-topk-r2` (topk): 12 SAEs" in doc
    assert f"`{col}`: V = {v:.3f} [" in doc and f"over 12 SAEs and {n} pairs" in doc
    assert f"committed sweep {v_main:.3f} [" in doc
    # a paper proxy's line ends with the paper's V placed against the replicate's own interval
    lo, hi = row["V_ci"]
    where = "inside" if lo <= 0.351 <= hi else ("below" if 0.351 < lo else "above")
    assert f"difference {v - v_main:+.3f}; Sparse Probing: paper 0.351 is {where} our interval." in doc
    assert n_main > 0 and (out / "audit" / "replicates" / "gemma3-270m-L9-topk-r2" / "architecture_1EV").is_dir()
    # table2.md's replicate table: the replicate's own V (brute force) beside the paper's, after the committed rows
    md = (out / "table2.md").read_text()
    head, rest = md.split("## Paper's proxies on the training-run replicates")
    assert "## Every sweep" in rest and "`gemma3-270m-L9-topk-r2`" not in head
    v_mse, n_mse = _brute_v(r2[:, 0], r2[:, 3], r2[:, 2])
    line = (
        f"| `gemma3-270m-L9-topk-r2` | gemma3-270m | 9 | topk |  | `{col}` | Sparse Probing | 12 | {n} | "
        f"{v:.3f} [{lo:.3f}, {hi:.3f}] |"
    )
    tail = rest.split(line)[1].splitlines()[0]
    assert line in rest and tail.endswith(
        f"| {v_mse:.3f} ({n_mse} pairs) | {float(np.median(t[:, 4])):.2f} / {float(np.median(1 - r2[:, 1])):.2f} "
        f"| paper 0.351 is {where} our interval |"
    )
    # per width, under both distortions: the replicate's own V by enumeration over that width's SAEs
    for w in (4096, 16384):
        sel = r2_width == w
        for dist, dcol in (("1-EV", 1), ("MSE", 3)):
            (wr,) = [
                r
                for r in table["replicates"]
                if (r["grouping"], r["distortion"], r["width"], r["proxy"]) == ("width", dist, w, col)
            ]
            vw, nw = _brute_v(r2[sel, 0], r2[sel, dcol], r2[sel, 2])
            assert wr["n_saes"] == 6 and wr["n_pairs"] == nw and wr["V"] == pytest.approx(vw, abs=1e-12)
            assert (out / "audit" / "replicates" / "gemma3-270m-L9-topk-r2" / f"width_{dist.replace('-', '')}").is_dir()
        assert f"| `gemma3-270m-L9-topk-r2` | gemma3-270m | 9 | topk | {w} | `{col}` | Sparse Probing | 6 |" in rest
    # FINDINGS' comparison with the paper: the committed TopK row and the replicate's, each placed against its
    # own interval; the committed ReLU-L1 sweep (CE loss recovered under the working-SAE bar) counted, not compared
    (main_row,) = [
        r
        for r in table["rows"]
        if (r["grouping"], r["distortion"], r["architecture"], r["proxy"]) == ("architecture", "1-EV", "topk", col)
    ]
    places = []
    for r, src in ((main_row, "`gemma3-270m-L9` sweep"), (row, "`gemma3-270m-L9-topk-r2`")):
        a, b = r["V_ci"]
        place = "inside" if a <= 0.351 <= b else ("below" if 0.351 < a else "above")
        places.append((place, a <= 0.5 <= b))
        assert (
            f"- Sparse Probing, topk ({src}, 12 SAEs, {r['n_pairs']} pairs): ours {r['V']:.3f} [{a:.3f}, {b:.3f}], "
            f"paper 0.351: {place} our interval; 0.5 is {'inside' if a <= 0.5 <= b else 'outside'} it"
        ) in doc
    n_in = sum(p == "inside" for p, _ in places)
    assert (
        f"- 2 comparisons (D = 1-EV, one row per sweep or replicate and paper proxy): the paper's V is inside our 95% "
        f"interval in {n_in}, below it in {sum(p == 'below' for p, _ in places)}, above it in "
        f"{sum(p == 'above' for p, _ in places)}; {sum(p == 'inside' and h for p, h in places)} of the {n_in} "
        "intervals holding the paper's V hold 0.5 (random ordering) too; 1 not compared (median CE loss recovered "
        "< 0.5)."
    ) in doc
    # the pair line: dominated pairs of each run by enumeration (same SAE ids, index i in both), and the shared
    # ones whose accuracies the two runs order differently

    def dominated(rows):
        return {
            (i, j)
            for i, j in product(range(len(rows)), repeat=2)
            if i != j
            and rows[i][0] <= rows[j][0]
            and rows[i][1] <= rows[j][1]
            and tuple(rows[i][:2]) != tuple(rows[j][:2])
        }

    pm, pr = dominated(t[:, :2]), dominated(r2[:, :2])
    shared = pm & pr
    flips = sum(np.sign(t[i, 2] - t[j, 2]) != np.sign(r2[i, 2] - r2[j, 2]) for i, j in shared)
    assert 0 < flips < len(shared)  # (else the count below would prove little)
    ev_diff = float(np.abs(t[:, 1] - r2[:, 1]).max())  # the replicate's EV moved by noise; CE and L0 kept
    assert (
        ev_diff > 0
        and (
            f"the same SAE ids in both runs: 12; largest run-to-run difference of an SAE's `ce_loss_score` 0.0000, "
            f"`explained_variance_legacy` {ev_diff:.4f}, L0 0.00."
        )
        in doc
    )
    assert (
        f"{len(shared)} in both runs, {len(pm - pr)} in the committed sweep only, {len(pr - pm)} in the replicate "
        f"only; of the shared pairs, ordered the other way round by the replicate: `{col}` {flips} of {len(shared)}."
    ) in doc

    # a replicate named otherwise, or holding another architecture's SAEs: one error line, nothing written
    before = (out / "table2.json").read_bytes()
    audit_json = next((out / "audit" / "gemma3-270m-L9").rglob("*.json"))
    mtime = audit_json.stat().st_mtime_ns
    for bad, fix in (("topk-again", None), ("gemma3-270m-L9-standard-r3", "standard")):
        dst = folder.parent / bad
        folder.rename(dst)
        with pytest.raises(SystemExit) as e:
            rep.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and bad in err[0], err
        assert (out / "table2.json").read_bytes() == before and audit_json.stat().st_mtime_ns == mtime
        dst.rename(folder)
        assert fix is None or "not table2-gemma3-270m-L9-standard alone" in err[0]


def test_tied_pairs_are_counted_where_v_is_reported(results):
    """A replicate whose proxy takes few distinct values: its V line and its comparison with the paper say how many
    of its dominated pairs are ties (each counts 1/2 in V), counted here by enumeration."""
    tmp, truth = results
    rep = _report()
    folder = tmp / "results" / "replicates" / "gemma3-270m-L9-topk-r2"
    rows = []
    for i, ((w, lev, step), t) in enumerate(zip(product((4096, 16384), range(3), ("final", "5000")), truth["topk"])):
        sid = f"blocks.9.hook_resid_post__w{w}_lev{lev}_s0_step_{step}"
        acc = (0.6, 0.7)[i % 2]  # two values: many pairs tie
        _write_sae(folder, "table2-gemma3-270m-L9-topk", sid, w, t[0], 1 - t[1], acc, mse=t[3], ce=t[4])
        rows.append((t[0], t[1], -acc))
    r = np.array(rows)
    v, n = _brute_v(r[:, 0], r[:, 1], r[:, 2])
    ties = sum(
        1
        for i, j in product(range(len(r)), repeat=2)
        if i != j
        and r[i, 0] <= r[j, 0]
        and r[i, 1] <= r[j, 1]
        and tuple(r[i, :2]) != tuple(r[j, :2])
        and r[i, 2] == r[j, 2]
    )
    assert 0 < ties < n
    out, _, table = _report_into(rep, tmp)
    col = "sparse_probing_sae_probes.sae.sae_top_1_test_accuracy"
    (row,) = [
        x for x in table["replicates"] if (x["proxy"], x["grouping"], x["distortion"]) == (col, "architecture", "1-EV")
    ]
    assert row["V"] == pytest.approx(v, abs=1e-12) and row["n_pairs"] == n
    doc = (out / "FINDINGS.md").read_text()
    assert (
        f"over 12 SAEs and {n} pairs (p = {row['p_value_V']:.3f}); {ties} of the {n} pairs tied (each counts 1/2)"
        in doc
    )
    lo, hi = row["V_ci"]
    assert (
        f"- Sparse Probing, topk (`gemma3-270m-L9-topk-r2`, 12 SAEs, {n} pairs): ours {v:.3f} [{lo:.3f}, {hi:.3f}]"
    ) in doc
    line = doc.split("- Sparse Probing, topk (`gemma3-270m-L9-topk-r2`")[1].splitlines()[0]
    assert line.endswith(f"; {ties} of the {n} pairs tied (each counts 1/2).")


def test_replicates_of_two_architectures_are_also_audited_pooled(results):
    """Replicates of two architectures of one model-layer: besides each one's own rows, one pooled row per proxy
    over all their SAEs, whose V matches the brute force over the union (pairs across architectures included),
    and a FINDINGS line counting those cross pairs; a single replicate gets no pooled row (test above); of two
    runs of one architecture only the latest is pooled (they share SAE ids)."""
    tmp, _ = results
    rep = _report()
    rng = np.random.default_rng(21)
    union = []
    older = tmp / "results" / "replicates" / "gemma3-270m-L9-topk-r1"  # same ids as r2 below, other values
    for w, lev in product((4096, 16384), range(3)):
        sid = f"blocks.9.hook_resid_post__w{w}_lev{lev}_s0_step_final"
        core = {
            "sparsity": {"l0": 50.0 + lev + w / 1e4},
            "reconstruction_quality": {
                "explained_variance": 1.0,
                "explained_variance_legacy": 0.7 - lev / 10,
                "mse": 1.0,
            },
            "model_performance_preservation": {"ce_loss_score": 0.9},
        }
        _write(older / "core", "core", "table2-gemma3-270m-L9-topk", sid, w, core)
    for arch in ("topk", "jumprelu"):
        folder = tmp / "results" / "replicates" / f"gemma3-270m-L9-{arch}-r2"
        release = f"table2-gemma3-270m-L9-{arch}"
        for w, lev in product((4096, 16384), range(3)):
            sid = f"blocks.9.hook_resid_post__w{w}_lev{lev}_s0_step_final"
            l0, ev, acc = float(rng.uniform(10, 200)), float(rng.uniform(0.5, 0.95)), float(rng.uniform(0.6, 0.9))
            _write_sae(folder, release, sid, w, l0, ev, acc)
            union.append((l0, 1 - ev, -acc, arch))
    out, _, table = _report_into(rep, tmp)
    col = "sparse_probing_sae_probes.sae.sae_top_1_test_accuracy"
    (row,) = [r for r in table["replicates"] if r["replicate"] == "pooled-gemma3-270m-L9" and r["proxy"] == col]
    u = np.array([x[:3] for x in union])
    v, n = _brute_v(u[:, 0], u[:, 1], u[:, 2])
    assert row["grouping"] == "pooled" and row["n_saes"] == 12 and row["n_pairs"] == n
    assert row["V"] == pytest.approx(v, abs=1e-12)
    arch = [x[3] for x in union]
    cross = sum(
        1
        for i, j in product(range(12), repeat=2)
        if i != j and arch[i] != arch[j] and u[i, 0] <= u[j, 0] and u[i, 1] <= u[j, 1]
    )
    doc = (out / "FINDINGS.md").read_text()
    assert (
        "- pooled, the replicates of gemma3-270m-L9 audited as one sweep (`gemma3-270m-L9-jumprelu-r2`, "
        f"`gemma3-270m-L9-topk-r2`): 12 SAEs with a core JSON, {n} dominated pairs under D = 1-EV, {cross} of them "
        "joining two architectures"
    ) in doc
    assert 0 < cross < n and f"  - `{col}`: V = {v:.3f} [" in doc
    # the pooled V split by pair kind (brute force over the union: a pair of one architecture or of two)
    parts = {}
    for kind in ("within", "across"):
        viol = cnt = 0.0
        for i, j in product(range(12), repeat=2):
            dom = i != j and u[i, 0] <= u[j, 0] and u[i, 1] <= u[j, 1] and tuple(u[i, :2]) != tuple(u[j, :2])
            if dom and (arch[i] == arch[j]) == (kind == "within"):
                cnt += 1
                viol += 1.0 if u[i, 2] < u[j, 2] else (0.5 if u[i, 2] == u[j, 2] else 0.0)
        parts[kind] = (viol / cnt, int(cnt))
    (vw, nw), (va, na) = parts["within"], parts["across"]
    assert na == cross and nw + na == n and (vw * nw + va * na) / n == pytest.approx(v, abs=1e-12)
    assert f"within architectures {vw:.3f} over {nw} pairs, across architectures {va:.3f} over {na} pairs." in doc
    assert (out / "audit" / "replicates" / "pooled-gemma3-270m-L9" / "pooled_1EV").is_dir()


def test_a_wsae_replicate_gets_its_own_pooled_line_and_leaves_the_paper_architectures_pooled_alone(results):
    """With replicates of TopK, JumpReLU and the WSAE arm (weighted_topk): ``pooled-<ml>`` pools TopK and JumpReLU
    only (the paper's architectures), ``pooled-<ml>-with-wsae`` all three; each row's V is the brute force over its
    own union, and FINDINGS has a line for each. With TopK and the WSAE arm alone there is no paper-architecture
    pooled row (one architecture), only the with-WSAE one."""
    tmp, _ = results
    rep = _report()
    rng = np.random.default_rng(5)
    pts: dict[str, list[tuple[float, float, float]]] = {}
    for arch in ("topk", "jumprelu", "weighted_topk"):
        folder = tmp / "results" / "replicates" / f"gemma3-270m-L9-{arch}-r2"
        for w, lev in product((4096, 16384), range(3)):
            sid = f"blocks.9.hook_resid_post__w{w}_lev{lev}_s0_step_final"
            l0, ev, acc = float(rng.uniform(10, 200)), float(rng.uniform(0.5, 0.95)), float(rng.uniform(0.6, 0.9))
            _write_sae(folder, f"table2-gemma3-270m-L9-{arch}", sid, w, l0, ev, acc)
            pts.setdefault(arch, []).append((l0, 1 - ev, -acc))
    out, _, table = _report_into(rep, tmp)
    col = "sparse_probing_sae_probes.sae.sae_top_1_test_accuracy"
    doc = (out / "FINDINGS.md").read_text()
    for tag, archs in (
        ("pooled-gemma3-270m-L9", ("topk", "jumprelu")),
        ("pooled-gemma3-270m-L9-with-wsae", ("topk", "jumprelu", "weighted_topk")),
    ):
        (row,) = [r for r in table["replicates"] if r["replicate"] == tag and r["proxy"] == col]
        u = np.array([x for a in archs for x in pts[a]])
        v, n = _brute_v(u[:, 0], u[:, 1], u[:, 2])
        assert (row["model"], row["layer"], row["n_saes"], row["n_pairs"]) == ("gemma3-270m", 9, 6 * len(archs), n)
        assert row["V"] == pytest.approx(v, abs=1e-12)
        assert (out / "audit" / "replicates" / tag / "pooled_1EV").is_dir()
    assert (
        "- pooled, the replicates of gemma3-270m-L9 audited as one sweep (`gemma3-270m-L9-jumprelu-r2`, "
        "`gemma3-270m-L9-topk-r2`): 12 SAEs with a core JSON"
    ) in doc
    assert (
        "- pooled with the WSAE arm: the replicates of gemma3-270m-L9 audited as one sweep "
        "(`gemma3-270m-L9-jumprelu-r2`, `gemma3-270m-L9-topk-r2`, `gemma3-270m-L9-weighted_topk-r2`): 18 SAEs"
    ) in doc
    # the WSAE replicate's variant lines (one per level, both widths' SAEs of it), under its own line only
    assert doc.count("  - WSAE `lev") == 3 and "  - WSAE `lev0` (s0, s0): `ce_loss_score` 0.900, 0.900;" in doc
    folders = [tmp / "results" / "replicates" / f"gemma3-270m-L9-{a}-r2" for a in ("topk", "weighted_topk")]
    assert rep.pooled_replicates(folders) == {"pooled-gemma3-270m-L9-with-wsae": folders}


def test_away_from_half_names_proxies_by_interval_and_permutation_test():
    """A replicate's direction sentence: a proxy is named inverted / faithful only when its interval is off 0.5 and
    p < 0.05 (direction_text's rule); off 0.5 with a large p it is listed apart; undefined intervals are not
    counted; all intervals holding 0.5 give the 'none' sentence."""
    rep = _report()

    def row(proxy, lo, hi, p):
        return {"proxy": proxy, "V_ci": [lo, hi], "p_value_V": p}

    rows = [
        row("a", 0.61, 1.0, 0.002),
        row("b", 0.0, 0.3, 0.01),
        row("c", 0.6, 1.0, 0.5),
        row("d", 0.2, 0.8, 0.9),
        row("e", None, None, None),
    ]
    text = rep.away_from_half(rows)
    assert text.startswith("of the 4 proxies")
    assert "inverted (against the RDP direction): `a`;" in text
    assert "faithful (with the RDP direction): `b`;" in text
    assert "interval off 0.5 but permutation p >= 0.05: `c`;" in text
    assert "`d`" not in text
    assert rep.away_from_half([rows[3], rows[4]]).startswith("every V interval of the 1 proxies contains 0.5")
