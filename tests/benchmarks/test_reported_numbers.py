"""The numbers the docs quote from this session's GPU runs are the committed result files' numbers: each
quoted string is formatted here from the JSON, so a re-run that changes the JSON without the text (or a
typo in the text) fails."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _e2e() -> tuple[dict, dict]:
    d = json.loads((ROOT / "benchmarks/e2e/latest.json").read_text())
    return d, {r["row"]: r for r in d["rows"]}


def test_e2e_readme_quotes_latest_json():
    d, r = _e2e()
    text = (ROOT / "benchmarks/e2e/README.md").read_text()
    latest = " ".join(text[text.index("## Latest result") :].split())  # lines wrap
    ours, sl = r["ours"], r["saelens"]
    quoted = [
        d["date"],
        f"{ours['tokens_per_s']:,.0f} tokens/s",
        f"{ours['tokens_per_s'] / sl['tokens_per_s']:.2f}x SAELens",
        f"({sl['tokens_per_s']:,.0f} tokens/s)",
        f"{d['summary']['ours_time_over_forward_plus_step']:.2f}x the sum",
        f"forward-only ({r['forward_only']['tokens_per_s'] / 1e6:.2f}M",
        f"step-only ({r['step_only']['tokens_per_s'] / 1e6:.2f}M",
        f"ours {ours['heldout_fvu']:.4f}, SAELens {sl['heldout_fvu']:.4f}",
        f"ours {-d['summary']['fvu_rel_diff_vs_saelens']:.1%} lower",
        f"{r['sparsify']['tokens_per_s']:,.0f} tokens/s",
        f"{r['ours_3hooks']['tokens_per_s']:,.0f} input tokens/s",
    ]
    missing = [q for q in quoted if q not in latest]
    assert not missing, missing


def test_top_readme_row_quotes_latest_json():
    d, r = _e2e()
    lines = (ROOT / "README.md").read_text().splitlines()
    row = next(line for line in lines if "sae-rdp train --model`, end to" in line)
    ours, sl = r["ours"], r["saelens"]
    for q in (
        f"{ours['tokens_per_s']:,.0f} tokens/s",
        f"{ours['tokens_per_s'] / sl['tokens_per_s']:.1f}x SAELens",
        f"held-out FVU {ours['heldout_fvu']:.3f} vs SAELens {sl['heldout_fvu']:.3f}",
        d["device"].split()[-1] + ", " + d["date"][:10],
    ):
        assert q in row, q


def test_aux_graph_numbers_quoted():
    rows = json.loads((ROOT / "benchmarks/training_speed/aux_graph/training_speed.json").read_text())["rows"]
    ms = {(x["config"], x["impl"]): x["median_ms"] for x in rows}
    text = " ".join((ROOT / "benchmarks/training_speed/README.md").read_text().split())  # lines wrap
    small, large = "640x16384_k32", "2304x65536_k64"
    sl, fast, via = "saelens_weighted_topk+aux", "fast_weighted_topk+aux", "fast_weighted_topk+aux[SAETrainer]"
    quoted = [
        f"SAELens {ms[small, sl]:.2f} ms, fast {ms[small, fast]:.2f} ms ({ms[small, sl] / ms[small, fast]:.2f}x)",
        f"via `SAETrainer` {ms[small, via]:.2f} ms ({ms[small, sl] / ms[small, via]:.2f}x)",
        f"{ms[large, sl]:.2f} / {ms[large, fast]:.2f} ({ms[large, sl] / ms[large, fast]:.2f}x)"
        f" / {ms[large, via]:.2f} ms",
    ]
    missing = [q for q in quoted if q not in text]
    assert not missing, missing


def test_top_readme_table2_row_quotes_table2_json():
    rows = json.loads((ROOT / "experiments/table2/table2.json").read_text())["rows"]

    def row(arch: str) -> dict:
        return next(
            x
            for x in rows
            if x["grouping"] == "architecture"
            and x["architecture"] == arch
            and x["distortion"] == "1-EV"
            and x["proxy"] == "sparse_probing_sae_probes.sae.sae_top_1_test_accuracy"
        )

    t, s = row("topk"), row("standard")
    core = ROOT / "experiments/table2/results/gemma3-270m-L9/core"
    ce = sorted(
        json.loads(f.read_text())["eval_result_metrics"]["model_performance_preservation"]["ce_loss_score"]
        for f in core.glob("*l1_coefficient*.json")
    )
    median = ce[len(ce) // 2] if len(ce) % 2 else (ce[len(ce) // 2 - 1] + ce[len(ce) // 2]) / 2
    line = next(x for x in (ROOT / "README.md").read_text().splitlines() if "our Table 2 (Gemma-3-270M L9)" in x)
    for q in (
        f"V {t['V']:.3f} [{t['V_ci'][0]:.3f}, {t['V_ci'][1]:.3f}] on {t['n_saes']} TopK SAEs",
        f"({t['n_pairs']} dominated pairs; paper's TopK V 0.351)",
        f"V {s['V']:.3f} [{s['V_ci'][0]:.3f}, {s['V_ci'][1]:.3f}] on {s['n_saes']} ReLU-L1 SAEs",
        f"({s['n_pairs']} dominated pairs; the {len(ce)} trained recover a median {median:.2f} of the CE loss",
    ):
        assert q in line, q


def test_recipe_calibration_drift_is_the_reported_median():
    """recipe.json's final_over_calibration_l0 of each calibrated architecture (ReLU-L1, JumpReLU) is the median
    final/target ratio that report.py prints for the Gemma sweep (FINDINGS.md), to the 3 decimals it prints."""
    import re

    recipe = json.loads((ROOT / "experiments/table2/recipe.json").read_text())
    text = (ROOT / "experiments/table2/FINDINGS.md").read_text()
    for arch in ("standard", "jumprelu"):
        got = recipe["architectures"][arch]["calibration"]["final_over_calibration_l0"]
        m = re.search(rf"`{arch}` final / target over its \d+ final SAEs: median ([0-9.]+)", text)
        assert m and float(m[1]) == got, arch


def test_findings_wsae_diagnostic_reading_holds_in_its_json():
    """FINDINGS.md's reading of the w_* CPU fits (no numbers typed there): uncapped alpha 1 puts almost all of
    gamma^2 on the massive dimension and leaves the other dimensions far worse reconstructed than alpha 0;
    alpha 0.5 uncapped goes the same way, less far; every capped fit has a few percent of gamma^2 there and
    reconstructs better than both uncapped ones; alpha 0 equals SAELens's own TopK fit on the same data; CE loss
    recovered orders them the same way."""
    fits = {
        f["name"]: f
        for f in json.loads((ROOT / "experiments/table2/diagnostics/l1_massive_dim.json").read_text())["fits"]
    }
    a0, a05, a1 = fits["w_a0"], fits["w_a0.5"], fits["w_a1"]
    assert a1["gamma_sq_share_of_massive_dim"] > 0.99 and a1["fvu_other_639"] > 2 * a0["fvu_other_639"]
    assert a1["dead_fraction_heldout"] > a0["dead_fraction_heldout"]
    assert a0["fvu_other_639"] < a05["fvu_other_639"] < a1["fvu_other_639"]
    capped = [f for n, f in fits.items() if n.startswith("w_") and f.get("variance_cap_quantile") is not None]
    assert {f["name"] for f in capped} >= {"w_a1_capq0.99", "w_a1_capq0.9", "w_a0.5_capq0.99"}
    for f in capped:
        assert f["gamma_sq_share_of_massive_dim"] < 0.05
        assert f["fvu_other_639"] < a05["fvu_other_639"] and f["ev_legacy_mean"] > a05["ev_legacy_mean"]
    for key in ("ev_legacy_mean", "fvu_pooled", "l0", "dead_fraction_heldout"):
        assert a0[key] == fits["c_topk32"][key]
    # CE loss recovered: uncapped alpha 1 < uncapped alpha 0.5 < every capped fit, each capped one close to alpha 0
    ce = json.loads((ROOT / "experiments/table2/diagnostics/l1_massive_dim.json").read_text())["ce_loss_recovered"]
    rec = {n: v["ce_loss_recovered"] for n, v in ce["fits"].items()}
    assert rec["w_a1"] < rec["w_a0.5"] < min(rec[f["name"]] for f in capped)
    assert all(abs(rec[f["name"]] - rec["w_a0"]) < 0.05 for f in capped)
