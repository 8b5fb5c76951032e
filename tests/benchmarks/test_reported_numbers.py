"""The numbers the docs quote from this session's GPU runs are the committed result files' numbers: each
quoted string is formatted here from the JSON, so a re-run that changes the JSON without the text (or a
typo in the text) fails."""

import json
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _flat(rel: str, after: str | None = None) -> str:
    """A doc's text with every run of whitespace one space (lines wrap anywhere in a quoted number's phrase);
    ``after``: only from that heading or phrase on."""
    text = " ".join((ROOT / rel).read_text().split())
    return text[text.index(after) :] if after else text


def _assert_quoted(quoted: list[str], text: str) -> None:
    missing = [q for q in quoted if q not in text]
    assert not missing, missing


def _rng(values, f: str = ".1f") -> str:
    """``min-max`` of ``values`` as the docs quote a range."""
    return f"{min(values):{f}}-{max(values):{f}}"


def _v(r: dict) -> str:
    """``V [lo, hi]`` of an audit row, as the docs quote it."""
    return f"{r['V']:.3f} [{r['V_ci'][0]:.3f}, {r['V_ci'][1]:.3f}]"


def _replicate_rows(replicate: str, grouping: str = "architecture") -> dict[str, dict]:
    """table2.json's audit rows of one replicate (or pooled line: grouping ``pooled``) under D = 1-EV, the proxies'
    only, by proxy (one row each)."""
    rows = [
        r
        for r in json.loads((ROOT / "experiments/table2/table2.json").read_text())["replicates"]
        if (r["replicate"], r["grouping"], r["distortion"], r["role"]) == (replicate, grouping, "1-EV", "proxy")
    ]
    by_proxy = {r["proxy"]: r for r in rows}
    assert len(by_proxy) == len(rows), replicate
    return by_proxy


def _saes_with_every_eval(folder: Path, architecture: str = "") -> int:
    """The SAEs of a table2 results folder (of one ``architecture``, the file names' prefix, if given) with a JSON
    of every offline eval (core, our proxies, absorption, sparse probing): the eval folders' common file names."""
    evals = ("core", "rdp_proxies", "absorption_first_letter", "sparse_probing_sae_probes")
    pattern = f"{architecture}__*.json" if architecture else "*.json"
    return len(set.intersection(*({f.name for f in (folder / ev).glob(pattern)} for ev in evals)))


def _core_pairs(folder: Path, pattern: str) -> tuple[list[tuple[str, float, float]], list]:
    """(file name, L0, 1 - EV legacy) of the core JSONs of ``folder`` matching ``pattern``, and their dominated
    pairs (``audit.stats.dominated_pairs``, as the audit counts them)."""
    from sae_rdp_plugin.audit.stats import dominated_pairs

    pts = []
    for f in sorted((folder / "core").glob(pattern)):
        m = json.loads(f.read_text())["eval_result_metrics"]
        pts.append((f.name, m["sparsity"]["l0"], 1 - m["reconstruction_quality"]["explained_variance_legacy"]))
    return pts, dominated_pairs([p[1] for p in pts], [p[2] for p in pts]).tolist()


def _session_records(folder: Path, device_calls: str, train: str, evals: str, trained: list[int]) -> tuple:
    """A table2 session's records in ``folder``: the device calls, the training stage's calls (checked to have
    trained ``trained`` SAEs per call, none left), the E stage's calls, and the E calls' two sparse-probing parts
    and absorption part."""
    dev, t, e = (json.loads((folder / f).read_text())["calls"] for f in (device_calls, train, evals))
    assert [len(c["trained"]) for c in t] == trained and not t[-1]["left_for_later"]
    return dev, t, e, (e[0]["sparse_probing"], e[1]["sparse_probing"], e[2]["absorption"])


def _final_over_target(folder: Path, calibration: dict, pattern: str = "standard__*_step_final.json") -> list[float]:
    """Core L0 of each final ReLU-L1 SAE of a table2 results folder (core JSONs matching ``pattern``) over its
    level's target L0 in ``calibration`` (the level from the file name's ``_cal<N>_``), sorted."""
    return sorted(
        json.loads(f.read_text())["eval_result_metrics"]["sparsity"]["l0"]
        / calibration["target_l0"][int(re.search(r"_cal(\d)_", f.name).group(1))]
        for f in (folder / "core").glob(pattern)
    )


def _x10_sparsify(row: dict, sp: dict) -> tuple[float, float, float, float]:
    """What 10x sparsify's rate would take for an e2e ``row``: that rate, the seconds for the row's tokens, the
    forward's seconds past its first (compiling) call, and the seconds left for the SAE steps after the forward and
    the rest."""
    ts = row["time_split"]
    need = 10 * sp["tokens_per_s"]
    budget = row["tokens"] / need
    fwd = ts["forward_s"] - ts["first_forward_s"]
    return need, budget, fwd, budget - fwd - ts["other_s"]


def _step_ms(rel: str) -> dict[tuple[str, str], float]:
    """{(config, impl): median ms} of a bench_training_speed.py result file."""
    return {(x["config"], x["impl"]): x["median_ms"] for x in json.loads((ROOT / rel).read_text())["rows"]}


def _e2e() -> tuple[dict, dict]:
    d = json.loads((ROOT / "benchmarks/e2e/latest.json").read_text())
    return d, {r["row"]: r for r in d["rows"]}


def test_e2e_readme_quotes_latest_json():
    d, r = _e2e()
    latest = _flat("benchmarks/e2e/README.md", after="## Latest result")
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
    _assert_quoted(quoted, latest)


def test_aux_graph_numbers_quoted():
    ms = _step_ms("benchmarks/training_speed/aux_graph/training_speed.json")
    text = _flat("benchmarks/training_speed/README.md")
    small, large = "640x16384_k32", "2304x65536_k64"
    sl, fast, via = "saelens_weighted_topk+aux", "fast_weighted_topk+aux", "fast_weighted_topk+aux[SAETrainer]"
    quoted = [
        f"SAELens {ms[small, sl]:.2f} ms, fast {ms[small, fast]:.2f} ms ({ms[small, sl] / ms[small, fast]:.2f}x)",
        f"via `SAETrainer` {ms[small, via]:.2f} ms ({ms[small, sl] / ms[small, via]:.2f}x)",
        f"{ms[large, sl]:.2f} / {ms[large, fast]:.2f} ({ms[large, sl] / ms[large, fast]:.2f}x)"
        f" / {ms[large, via]:.2f} ms",
    ]
    _assert_quoted(quoted, text)


def test_top_readme_table2_row_quotes_table2_json():
    """The README row: SAE counts and the ReLU-L1 CE median from the committed core JSONs; TopK's sparse-probing
    row of table2.json (the only architecture redone with the checked tokenizer); the others' withdrawn (archived)."""
    rows = json.loads((ROOT / "experiments/table2/table2.json").read_text())["rows"]
    probing = [x for x in rows if "sparse_probing" in x["proxy"] and x["model"] == "gemma3-270m"]
    assert {x["architecture"] for x in probing} == {"topk", "pooled"}  # pooled: TopK's are Gemma's only ones
    (sp,) = [
        x
        for x in probing
        if x["paper_proxy"] == "Sparse Probing"
        and x["grouping"] == "architecture"
        and x["distortion"] == "1-EV"
        and x["model"] == "gemma3-270m"  # SmolLM2's TopK row: its own test (2026-12-07)
    ]
    lo, hi = sp["V_ci"]
    assert lo < 0.351 < hi and lo < 0.5 < hi  # "paper 0.351 inside the interval, and so is 0.5"
    base = ROOT / "experiments/table2/results"
    assert list(
        (base / "archive/gemma3-270m-L9-sparse-probing-device-tokenizer/sparse_probing_sae_probes").glob("*.json")
    )
    core = base / "gemma3-270m-L9/core"
    ce = sorted(
        json.loads(f.read_text())["eval_result_metrics"]["model_performance_preservation"]["ce_loss_score"]
        for f in core.glob("*l1_coefficient*.json")
    )
    median = ce[len(ce) // 2] if len(ce) % 2 else (ce[len(ce) // 2 - 1] + ce[len(ce) // 2]) / 2
    plan = json.loads((ROOT / "experiments/table2/plan.json").read_text())["saes"]
    planned = [x for x in plan if x["stage"].startswith("T-gemma3-270m-9-")]  # finals and their checkpoints
    trained = set()
    for f in base.glob("gemma3-270m-L9/stage_T-*.json"):
        trained |= {i for c in json.loads(f.read_text())["calls"] for i in c["trained"]}
    assert {x["id"].rsplit("/", 1)[0] for x in planned} <= trained  # every planned SAE's family was trained
    line = next(
        x
        for x in (ROOT / "README.md").read_text().splitlines()
        if "our Table 2 (Gemma-3-270M L9, SmolLM2-135M L15)" in x
    )
    for q in (
        f"{len(planned)} SAEs trained",
        f"SAEBench core on {len(list(core.glob('*.json')))}",
        f"the {len(ce)} ReLU-L1 SAEs on standardised inputs recover a median {median:.2f} of the CE loss",
        f"Sparse Probing V {sp['V']:.3f} [{lo:.3f}, {hi:.3f}] over {sp['n_saes']} SAEs and {sp['n_pairs']} "
        "dominated pairs (paper 0.351",
        "the other architectures' sparse probing withdrawn",
    ):
        assert q in line, q
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("t2_report_numbers", ROOT / "experiments/table2/report.py")
    report = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = report
    spec.loader.exec_module(report)
    top1 = "sparse_probing_sae_probes.sae.sae_top_1_test_accuracy"
    fl = report.pair_flips(
        base / "gemma3-270m-L9", base / "replicates/gemma3-270m-L9-topk-r2", "table2-gemma3-270m-L9-topk", [top1]
    )
    assert fl["shared"] == sp["n_pairs"] == fl["flips"][top1]["pairs"]
    assert f"(same seed) orders {fl['flips'][top1]['flipped']} of those {fl['shared']} pairs the other way" in line
    ce_w = {}
    for f in core.glob("weighted_topk__*_s0_step_final.json"):
        d = json.loads(f.read_text())
        ce_w[d["sae_lens_id"].split("__w16384_")[1].rsplit("_s0", 1)[0]] = d["eval_result_metrics"][
            "model_performance_preservation"
        ]["ce_loss_score"]
    assert (
        f"CE loss recovered {ce_w['k32_alpha0']:.3f} unweighted, {ce_w['k32_alpha1_capq0.99']:.3f} capped, "
        f"{ce_w['k32_alpha1']:.3f} uncapped alpha 1" in line
    )


def test_top_readme_table2_row_quotes_the_replicates():
    """The README row's replicate part: the SAEs with every offline eval (counted from the eval folders), the
    comparisons with the paper's V (each row's interval against PAPER_V, recomputed here from table2.json), and the
    pooled audit of the replicates (table2.json's pooled rows; the cross-architecture pairs from FINDINGS.md)."""
    import re

    t2 = ROOT / "experiments/table2"
    table = json.loads((t2 / "table2.json").read_text())
    reps = t2 / "results/replicates"
    full = {r.name: _saes_with_every_eval(r) for r in reps.iterdir()}
    assert full["gemma3-270m-L9-standard-r2"] == 20 and full["gemma3-270m-L9-jumprelu-r2"] == 10
    paper = table["sources"]["paper_V"]
    cands = [
        r
        for r in [*table["rows"], *table["replicates"]]
        if r["grouping"] == "architecture"
        and r["distortion"] == "1-EV"
        and r["model"] == "gemma3-270m"  # the row's Gemma part (SmolLM2's: its own test)
        and r["paper_proxy"]
        and paper.get(r["paper_proxy"], {}).get(r["architecture"]) is not None
        and r["V"] is not None
        and r["median_ce_loss_score"] >= table["sources"]["min_ce_loss_score"]
    ]
    inside = [r for r in cands if r["V_ci"][0] <= paper[r["paper_proxy"]][r["architecture"]] <= r["V_ci"][1]]
    assert all(r["V_ci"][0] <= 0.5 <= r["V_ci"][1] for r in inside)
    (out,) = [r for r in cands if r not in inside]
    assert (out["architecture"], out["paper_proxy"]) == ("standard", "Splitting")
    pooled = _replicate_rows("pooled-gemma3-270m-L9", "pooled")
    frac = pooled["absorption_first_letter.mean.mean_absorption_fraction_score"]
    sp1 = pooled["sparse_probing_sae_probes.sae.sae_top_1_test_accuracy"]
    cos = pooled["rdp_proxies.proxies.decoder_max_cos"]
    assert frac["V_ci"][1] < 0.5 and sp1["V_ci"][1] < 0.5 and cos["V_ci"][0] > 0.5
    pooled_line = _flat("experiments/table2/FINDINGS.md", after="- pooled, the replicates of gemma3-270m-L9")
    n_cross = int(
        re.match(r"[^:]*: \d+ SAEs with a core JSON, \d+ dominated pairs under D = 1-EV, (\d+)", pooled_line)[1]
    )

    # the replicates pooled (FINDINGS names them), and so the SAEs with every eval on the same weights
    pooled_names = re.findall(r"`(gemma3-270m-L9-[a-z_]+-r\d+)`", pooled_line.split(":")[0])
    n_full = sum(full[name] for name in pooled_names)
    n_word = {3: "three", 4: "four", 5: "five", 6: "six"}[len(pooled_names)]
    btk = _replicate_rows("gemma3-270m-L9-batchtopk-r2")

    _assert_quoted(
        [
            f"on the same weights for {n_full} SAEs",
            f"ReLU-L1 {full['gemma3-270m-L9-standard-r2']}, its training equal to the committed sweep's; BatchTopK "
            f"{full['gemma3-270m-L9-batchtopk-r2']}",
            f"BatchTopK's replicate alone has {btk[frac['proxy']]['n_pairs']} dominated pairs",
            f"the paper's V is inside our interval in {len(inside)} of {len(cands)} comparisons, 0.5 inside each of "
            f"those {len(inside)} too; outside: ReLU-L1 splitting V {_v(out)} "
            f"(paper {paper['Splitting']['standard']:.3f})",
            f"the {n_word} replicates as one sweep ({frac['n_saes']} SAEs, {frac['n_pairs']} dominated pairs, "
            f"{n_cross} across architectures and so across L0): absorption fraction V {_v(frac)} and sparse "
            f"probing {_v(sp1)} (with the RDP direction), decoder cosine {_v(cos)} (against it)",
        ],
        _flat("README.md"),
    )
    # the split by pair kind, from FINDINGS' generated pooled lines (report.v_by_pair_kind, tested by brute force)
    within = {}
    for name in (frac, sp1, cos):
        m = re.search(
            rf"`{re.escape(name['proxy'])}`: V = [^;]*; within architectures ([0-9.]+) over (\d+) pairs"
            rf"(?: \(\d+ tied\))?, across architectures ([0-9.]+) over (\d+) pairs",
            pooled_line,
        )
        within[name["proxy"]] = m
        assert int(m[2]) + int(m[4]) == name["n_pairs"] and int(m[4]) == n_cross
    assert float(within[cos["proxy"]][3]) > 0.5 > float(within[frac["proxy"]][3])
    _assert_quoted(
        [
            f"each direction from the pairs across architectures (within one architecture, "
            f"{within[frac['proxy']][2]} pairs: absorption fraction {within[frac['proxy']][1]}, sparse probing "
            f"{within[sp1['proxy']][1]}, decoder cosine {within[cos['proxy']][1]})"
        ],
        _flat("README.md"),
    )


def test_top_readme_table2_row_quotes_the_wsae_replicate():
    """The README row's WSAE part: the replicate's pair kinds (FINDINGS' generated line), its V for sparse probing
    and absorption fraction and the pooled-with-WSAE sparse probing V (table2.json), with the directions it names."""
    import re

    rep, pooled = "gemma3-270m-L9-weighted_topk-r2", "pooled-gemma3-270m-L9-with-wsae"
    sp1, frac = (
        "sparse_probing_sae_probes.sae.sae_top_1_test_accuracy",
        "absorption_first_letter.mean.mean_absorption_fraction_score",
    )
    w_rows = _replicate_rows(rep)
    w_sp, w_frac, p_sp = w_rows[sp1], w_rows[frac], _replicate_rows(pooled, "pooled")[sp1]
    assert w_sp["V_ci"][0] > 0.5 > w_frac["V_ci"][1]  # against / with the RDP direction
    assert p_sp["V_ci"][0] <= 0.5 <= p_sp["V_ci"][1]
    kinds = re.search(
        r"its (\d+) dominated pairs under D = 1-EV: \d+ sparsity level, (\d+) WSAE variant",
        _flat("experiments/table2/FINDINGS.md", after=f"- `{rep}`"),
    )
    assert int(kinds[1]) == w_sp["n_pairs"]
    _assert_quoted(
        [
            f"({w_sp['n_saes']} SAEs, new SAEs of the same recipe): {kinds[2]} of its {kinds[1]} dominated pairs join "
            f"two weightings, sparse probing V {_v(w_sp)} (against the RDP direction) and absorption fraction V "
            f"{_v(w_frac)} (with it)",
            f"({p_sp['n_saes']} SAEs, {p_sp['n_pairs']} dominated pairs) sparse probing's V is {_v(p_sp)}",
        ],
        _flat("README.md"),
    )


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


def test_real_weight_run_numbers_quoted():
    run = ROOT / "benchmarks/e2e/runs/2026-12-03-real-weights/latest.json"
    d = json.loads(run.read_text())
    r = {x["row"]: x for x in d["rows"]}
    ours, over, sp = r["ours"], r["ours_overlap"], r["sparsify"]
    section = _flat("benchmarks/e2e/README.md", after="## Runs of 2026-12-03")
    ce = d["summary"]["ce_recovered"]["ours:blocks.6.hook_resid_post-k32"]
    quoted = [
        f"ours {ours['tokens_per_s']:,.0f} tokens/s",
        f"forward only {r['forward_only']['tokens_per_s']:,.0f}",
        f"step only {r['step_only']['tokens_per_s']:,.0f}",
        f"{d['summary']['ours_time_over_forward_plus_step']:.3f}x the sum",
        f"{over['tokens_per_s']:,.0f} ({d['summary']['overlap_x_ours']:.3f}x ours",
        f"{sp['tokens_per_s']:,.0f} tokens/s; ours is {d['summary']['ours_x_sparsify']:.1f}x",
        f"ours FVU {ours['heldout_fvu']:.4f}",
        f"sparsify at 2M tokens {sp['heldout_fvu']:.4f}",
        f"whole model: {ce:.3f}",
    ]
    assert "error" in r["saelens"] and "error" in r["saelens_speed"]  # the text says they failed
    _assert_quoted(quoted, section)
    over_x = f"{d['summary']['overlap_x_ours']:.3f}x"
    for doc in ("docs/models.md", "docs/limitations.md"):
        assert over_x in _flat(doc), (doc, over_x)


def test_aux_compact_numbers_quoted():
    ms = _step_ms("benchmarks/training_speed/aux_compact/training_speed.json")
    text = _flat("benchmarks/training_speed/README.md")
    small, large = "640x16384_k32", "2304x65536_k64"
    sl, full, comp = "saelens_weighted_topk+aux", "fast_weighted_topk+aux", "fast_weighted_topk+aux[compact]"
    f2, c2 = "fast_weighted_topk+aux[dead0.2]", "fast_weighted_topk+aux[compact,dead0.2]"
    f85, c85 = "fast_weighted_topk+aux[dead0.85]", "fast_weighted_topk+aux[compact,dead0.85]"
    rt = "fast_weighted_topk+aux[rowtopk]"
    seq, st = "fast_topk[x4,seq]", "fast_topk[x4,streams]"
    quoted = [
        f"half the latents dead {ms[small, comp]:.2f} vs {ms[small, full]:.2f} ms (SAELens {ms[small, sl]:.2f} ms: "
        f"{ms[small, sl] / ms[small, comp]:.2f}x)",
        f"a fifth dead {ms[small, c2]:.2f} vs {ms[small, f2]:.2f} ms ({ms[small, sl] / ms[small, c2]:.2f}x)",
        f"{ms[large, comp]:.2f} vs {ms[large, full]:.2f} ms ({ms[large, sl] / ms[large, comp]:.2f}x SAELens's "
        f"{ms[large, sl]:.2f})",
        f"{ms[large, c2]:.2f} vs {ms[large, f2]:.2f} ms ({ms[large, sl] / ms[large, c2]:.2f}x)",
        f"{ms[small, c85]:.2f} vs {ms[small, f85]:.2f} ms ({ms[small, sl] / ms[small, c85]:.1f}x",
        f"({ms[small, rt]:.2f} vs {ms[small, full]:.2f} ms at half dead, {ms[large, rt]:.2f} vs {ms[large, full]:.2f}",
        f"{ms[small, st]:.2f} vs {ms[small, seq]:.2f} ms one after the other ({ms[small, seq] / ms[small, st]:.2f}x)",
        f"{ms[large, st]:.2f} vs {ms[large, seq]:.2f} ms ({ms[large, seq] / ms[large, st]:.2f}x)",
    ]
    _assert_quoted(quoted, text)
    fast_doc = _flat("docs/fast_training.md")
    for q in (
        f"{ms[small, full] / ms[small, comp]:.2f}x faster with half the latents dead and "
        f"{ms[small, f2] / ms[small, c2]:.2f}x with a fifth",
        f"({ms[large, full] / ms[large, comp]:.2f}x / {ms[large, f2] / ms[large, c2]:.2f}x",
    ):
        assert q in fast_doc, q


def test_random_init_rerun_numbers_quoted_from_its_log():
    """That call ran out of device time before writing its JSON: its log's per-row result lines are the record."""
    log = (ROOT / "benchmarks/e2e/runs/2026-12-03-random-init/log.txt").read_text().splitlines()
    r = {}
    for line in log:
        if line.startswith("=== row ") and ": {" in line:
            name, payload = line[len("=== row ") :].split(": ", 1)
            r[name] = json.loads(payload)
    section = _flat("benchmarks/e2e/README.md", after="**Random init**")
    ours, sl, opt = r["ours"], r["saelens_speed"], r["ours_opt"]
    quoted = [
        f"step only {r['step_only']['tokens_per_s']:,.0f} tokens/s",
        f"ours {ours['tokens_per_s']:,.0f} (held-out FVU {ours['heldout_fvu']:.4f})",
        f"2M tokens {sl['tokens_per_s']:,.0f} (FVU {sl['heldout_fvu']:.3f})",
        f"ours is {ours['tokens_per_s'] / sl['tokens_per_s']:.1f}x that row",
        f"ran at {opt['tokens_per_s']:,.0f} ({opt['tokens_per_s'] / ours['tokens_per_s']:.2f}x ours",
    ]
    _assert_quoted(quoted, section)


def test_real_weight_ctx128_run_numbers_quoted():
    d = json.loads((ROOT / "benchmarks/e2e/runs/2026-12-03-real-weights-ctx128/latest.json").read_text())
    r = {x["row"]: x for x in d["rows"]}
    ours, sp, sl, ce = r["ours"], r["sparsify"], r["saelens_speed"], r["ce_recovered"]
    s = d["summary"]
    rec = s["ce_recovered"]["ours:blocks.6.hook_resid_post-k32"]
    (sae,) = ours["saes"]
    outside = [x["row_s"] - x["wall_s"] for x in d["rows"] if x.get("wall_s")]
    section = _flat("benchmarks/e2e/README.md", after="## Real weights at context 128")
    quoted = [
        f"ours {ours['tokens_per_s']:,.0f} tokens/s; forward only {r['forward_only']['tokens_per_s']:,.0f}; "
        f"step only {r['step_only']['tokens_per_s']:,.0f}; ours' time per token "
        f"{s['ours_time_over_forward_plus_step']:.3f}x the sum",
        f"end of training {sae['train_dead_fraction']:.3f}",
        f"SAELens's runner (2M tokens) {sl['tokens_per_s']:,.0f} tokens/s: ours is {s['ours_x_saelens']:.2f}x",
        f"sparsify (2M tokens, its own rows) {sp['tokens_per_s']:,.0f}: ours is {s['ours_x_sparsify']:.2f}x",
        f"the step-only rate, {r['step_only']['tokens_per_s'] / sl['tokens_per_s']:.1f}x this SAELens row",
        f"ours {ours['heldout_fvu']:.4f} (rows of 128); SAELens's 2M-token SAE {sl['heldout_fvu']:.3f}",
        f"sparsify's {sp['heldout_fvu']:.4f}",
        f"rows of 128: {rec:.3f} (clean {ce['ce_clean']:.3f}, zero-ablated {ce['ce_zero_ablation']:.3f}, with the SAE "
        f"{ce['saes']['ours:blocks.6.hook_resid_post-k32']['ce']:.3f})",
        f"spends {min(outside):.0f}-{max(outside):.0f} s outside it",
    ]
    _assert_quoted(quoted, section)
    assert d["settings"]["context"] == 128 and sp["settings"]["context"] == 1024
    assert "saelens" not in r  # the text says the 20M-token row did not finish
    old = json.loads((ROOT / "benchmarks/e2e/runs/2026-12-03-real-weights/latest.json").read_text())
    assert f"({next(x for x in old['rows'] if x['row'] == 'ours')['heldout_fvu']:.4f}, trained" in section
    # the top README row and the limitations now quote the 2026-12-05 same-run sparsify ratio (test below)

    f = json.loads((ROOT / "benchmarks/e2e/runs/2026-12-03-real-weights-4saes/latest.json").read_text())
    four = {x["row"]: x for x in f["rows"]}
    o4 = four["ours_4saes"]
    fv = " / ".join(f"{v:.4f}" for v in o4["heldout_fvu"])
    sec4 = _flat("benchmarks/e2e/README.md", after="**Four SAEs from one stream, real weights**")
    _assert_quoted(
        [
            f"{o4['tokens_per_s']:,.0f} tokens/s, SAE steps {o4['time_split']['sae_step_s']:.1f} s of "
            f"{o4['wall_s']:.1f} s",
            f"held-out FVU {fv}",
        ],
        sec4,
    )
    assert "step 4" in four["ours_4saes_streams"]["error"] and "nan" in four["ours_4saes_streams"]["error"]

    t = _step_ms("benchmarks/training_speed/aux_compact/training_speed.json")
    per_step = ours["time_split"]["sae_step_s"] / sae["steps"]
    window, no_aux = 1000, t[("640x16384_k32", "fast_weighted_topk")]
    hi = t[("640x16384_k32", "fast_weighted_topk+aux[dead0.85]")]
    where = _flat("benchmarks/e2e/README.md", after="Where ours' step time went")
    _assert_quoted(
        [
            f"averaged {per_step * 1e3:.2f} ms over {sae['steps']:,} steps",
            f"measured {no_aux:.2f} ms without the dead-latent aux loss and {hi:.2f} ms with it at 85% dead",
            f"The first {window:,} steps",
        ],
        where,
    )
    # "the others averaged more than the 85%-dead row": the steps after the window, at no_aux ms before it
    assert (per_step * 1e3 * sae["steps"] - window * no_aux) / (sae["steps"] - window) > hi


def test_topk_hot_numbers_quoted():
    d = json.loads((ROOT / "benchmarks/training_speed/topk_hot/topk_hot.json").read_text())
    text = _flat("benchmarks/training_speed/README.md", after="* **Two-stage TopK, the aux selection")
    tk = {(r["d_sae"], r["dtype"]): r for r in d["topk"]}
    ax = {(r["d_sae"], r["dead_frac"]): r for r in d["aux_topk"]}
    hot = {r["d_sae"]: r for r in d["hot_rows"]}

    def best(r: dict, prefix: str) -> float:
        return min(v for k, v in r.items() if k.startswith(prefix) and k.endswith("_ms"))

    a, b = tk[16384, "bfloat16"], tk[65536, "bfloat16"]
    h, H = ax[16384, 0.5], ax[65536, 0.5]
    quoted = [
        d["env"]["date_utc"],
        f"{a['torch_topk_ms']:.3f} ms vs >= {best(a, 'chunks'):.3f} at 16384 columns, {b['torch_topk_ms']:.3f} vs >= "
        f"{best(b, 'chunks'):.3f} at 65536",
        f"{h['fill_topk_ms']:.3f} / {H['fill_topk_ms']:.3f} ms at half dead, of which the fill is {h['fill_ms']:.3f} / "
        f"{H['fill_ms']:.3f} ms; in fp32 {h['fill_topk_fp32_ms']:.3f} / {H['fill_topk_fp32_ms']:.3f} ms; two-stage "
        f">= {best(h, 'fill_chunks'):.3f} / {best(H, 'fill_chunks'):.3f}",
        f"{hot[16384]['unique_True_ms']:.3f} vs {hot[16384]['unique_False_ms']:.3f} ms (16384 latents) and "
        f"{hot[65536]['unique_True_ms']:.3f} vs {hot[65536]['unique_False_ms']:.3f} ms (65536)",
    ]
    _assert_quoted(quoted, text)
    assert all(r["max_abs_diff"] == 0 for r in d["hot_rows"])
    for n in (16384, 65536):  # "the dead fraction does not change these times"
        assert abs(ax[n, 0.5]["fill_topk_ms"] - ax[n, 0.85]["fill_topk_ms"]) < 0.05 * ax[n, 0.5]["fill_topk_ms"]


def test_model_load_numbers_quoted():
    d = json.loads((ROOT / "benchmarks/e2e/model_load/model_load.json").read_text())
    t = {r["row"]: r["median_s"] for r in d["rows"]}
    text = _flat("benchmarks/e2e/README.md", after="Most of the time outside the timed loops")
    quoted = [
        f"median of {d['repeats']} fresh processes, Gemma-3-270M cut to {d['n_layers']} blocks",
        f"`gguf.GGUFReader` {t['ggufreader_block_count']:.2f} s and transformers' GGUF route "
        f"{t['transformers_gguf']:.2f} s",
        f"from the header ({t['gguf_block_count']:.2f} s)",
        f"(first load {t['cache_first']:.2f} s, later loads {t['cache_hit']:.2f} s)",
    ]
    _assert_quoted(quoted, text)
    assert d["machine"].endswith("2 CPUs") and d["date_utc"].startswith("2026-12-03")


@pytest.mark.parametrize(
    "call, heading",
    [
        (-2, "`runprobe T-*-jumprelu --max-saes 5` (2026-12-03"),
        (-1, "`runprobe T-*-jumprelu --widths 16384` (2026-12-04)"),
    ],
)
def test_table2_runprobe_times_quoted_from_the_stage_records(call, heading):
    """The two runprobe calls of the JumpReLU SAEs (width 4k, then 16k): the last two records of the JumpReLU T
    stage file, and the E records that probed those SAEs."""
    base = ROOT / "experiments/table2/results/gemma3-270m-L9"
    t = json.loads((base / "stage_T-gemma3-270m-9-jumprelu.json").read_text())["calls"][call]
    width = "w4096" if call == -2 else "w16384"
    calls = json.loads((base / "stage_E-gemma3-270m-9.json").read_text())["calls"]
    (e,) = [
        c
        for c in calls
        if c.get("sparse_probing", {}).get("evaluated")
        and all(f"/jumprelu/{width}/" in i for i in c["sparse_probing"]["evaluated"])
    ]
    assert all(f"/{width}/" in i for i in t["trained"])
    text = _flat("experiments/table2/README.md", after=heading)
    assert f"its T part {t['wall_s']:.0f} s ({len(t['trained'])} SAEs" in text
    sp = e["sparse_probing"]
    assert f"its E part {e['wall_s']:.0f} s ({len(sp['evaluated'])} SAEs, {len(sp['datasets'])} datasets" in text


def test_findings_absorption_probe_reading_holds_in_its_jsons():
    """FINDINGS.md: at Gemma's layer 9 the larger vocabulary sample passes more letters than either smaller one."""
    folder = ROOT / "experiments/table2/diagnostics"
    runs = [json.loads(p.read_text()) for p in folder.glob("absorption_probe_*.json")]
    gemma = [r for r in runs if r["model"] == "gemma3-270m" and r["hook"] == "blocks.9.hook_resid_post"]
    big = max(r["words"] for r in gemma)
    small = [r["letters_passing"] for r in gemma if r["words"] < big]
    assert len(small) >= 2
    assert all(r["letters_passing"] > max(small) for r in gemma if r["words"] == big)
    assert "the larger sample passes more letters than either smaller one" in _flat("experiments/table2/FINDINGS.md")


def test_real_weight_equal_token_run_numbers_quoted():
    """benchmarks/e2e/runs/2026-12-04-*: ours vs SAELens's runner at the same 20M tokens (real weights, context 128),
    the radix aux row, and the three-hook rows; quoted in the e2e README, the top README row and the limitations."""
    d = json.loads((ROOT / "benchmarks/e2e/runs/2026-12-04-real-weights-ctx128/latest.json").read_text())
    r = {x["row"]: x for x in d["rows"]}
    ours, sl, rx, ce = r["ours"], r["saelens"], r["ours_radix"], r["ce_recovered"]
    s = d["summary"]
    assert ours["tokens"] == sl["tokens"] == 20_000_000 and d["settings"]["context"] == 128
    assert s["targets_met"]["x10_saelens"] is False and s["targets_met"]["fvu_within_2pct"] is True
    (sae,) = ours["saes"]
    w = sae["aux_steps_by_width"]
    rec = {k.split(":")[0]: v for k, v in s["ce_recovered"].items()}
    wall_x = ours["tokens_per_s_wall"] / sl["tokens_per_s_wall"]
    hot = json.loads((ROOT / "benchmarks/training_speed/aux_radix/topk_hot.json").read_text())["aux_topk"][0]
    best = min(v for k, v in hot.items() if k.startswith("radix_"))
    ms = _step_ms("benchmarks/training_speed/aux_radix/training_speed.json")
    small = "640x16384_k32"
    step_x = ms[small, "fast_weighted_topk+aux"] / ms[small, "fast_weighted_topk+aux[radix]"]
    section = _flat("benchmarks/e2e/README.md", after="## Real weights at equal tokens")
    quoted = [
        f"ours {ours['tokens_per_s']:,.0f} tokens/s after warm-up; SAELens's runner {sl['tokens_per_s']:,.0f} "
        f"tokens/s over the same 20M tokens: ours is {s['ours_x_saelens']:.2f}x",
        f"ours {ours['tokens_per_s_wall']:,.0f}, SAELens {sl['tokens_per_s_wall']:,.0f} ({wall_x:.2f}x)",
        f"({ours['time_split']['first_forward_s']:.1f} s here",
        f"ours {ours['heldout_fvu']:.4f}, SAELens {sl['heldout_fvu']:.4f} "
        f"(ours {-s['fvu_rel_diff_vs_saelens']:.1%} lower",
        f"ours {rec['ours']:.3f}, SAELens {rec['saelens']:.3f} (clean {ce['ce_clean']:.3f}, zero-ablated "
        f"{ce['ce_zero_ablation']:.3f})",
        f"{w['0']:,} steps without the aux loss",
        f"{w['4096']:,} / {w['8192']:,} / {w['12288']:,} / {w['16384']:,} steps",
        f"{sae['mean_dead_fraction_aux_steps']:.3f} of the latents dead on average over the aux steps, "
        f"{sae['train_dead_fraction']:.3f} at the end",
        f"{rx['tokens_per_s']:,.0f} tokens/s after warm-up, {s['radix_x_ours']:.2f}x ours; whole call "
        f"{rx['tokens_per_s_wall']:,.0f} (ours {ours['tokens_per_s_wall']:,.0f})",
        f"({best:.3f} vs {hot['fill_topk_ms']:.3f} ms at {hot['d_sae']:,} columns, k_aux {hot['k_aux']}, bf16)",
        f"the step with it {step_x:.2f}x",
    ]
    _assert_quoted(quoted, section)
    no_aux, aux = ms[small, "fast_weighted_topk"], ms[small, "fast_weighted_topk+aux"]
    assert f"The aux term adds {aux - no_aux:.2f} ms to a {no_aux:.2f} ms step at half the latents dead" in _flat(
        "benchmarks/e2e/README.md"
    )
    old = json.loads((ROOT / "benchmarks/e2e/runs/2026-12-03-real-weights-ctx128/latest.json").read_text())
    sp_old = next(x for x in old["rows"] if x["row"] == "sparsify")
    assert f"({sp_old['tokens_per_s']:,.0f} tokens/s, another session) ours would be " in section
    assert f"{ours['tokens_per_s'] / sp_old['tokens_per_s']:.1f}x. Not a same-run ratio" in section

    t = json.loads((ROOT / "benchmarks/e2e/runs/2026-12-04-real-weights-3hooks/latest.json").read_text())
    h = {x["row"]: x for x in t["rows"]}
    seq, st = h["ours_3hooks"], h["ours_3hooks_streams"]
    assert st["sae_streams"] is True and seq["sae_streams"] is False
    fv = [" / ".join(f"{v:.4f}" for v in x["heldout_fvu"]) for x in (st, seq)]
    assert max(abs(a / b - 1) for a, b in zip(st["heldout_fvu"], seq["heldout_fvu"])) < 0.01  # "within 1%"
    three = _flat("benchmarks/e2e/README.md", after="**Three hooks, real weights**")
    _assert_quoted(
        [
            f"{seq['tokens_per_s']:,.0f} input tokens/s",
            f"(`ours_3hooks_streams`) {st['tokens_per_s']:,.0f} ({st['tokens_per_s'] / seq['tokens_per_s']:.2f}x",
            f"({fv[0]} vs {fv[1]})",
        ],
        three,
    )
    row = next(x for x in (ROOT / "README.md").read_text().splitlines() if "sae-rdp train --model`, end to" in x)
    for q in (
        f"{ours['tokens_per_s']:,.0f} tokens/s after warm-up, {s['ours_x_saelens']:.1f}x SAELens's runner at the "
        f"same 20M tokens ({wall_x:.1f}x over the whole call",
        f"held-out FVU {ours['heldout_fvu']:.4f} vs {sl['heldout_fvu']:.4f}, CE loss recovered {rec['ours']:.3f} vs "
        f"{rec['saelens']:.3f}",
        f"three hooks from one forward {st['tokens_per_s']:,.0f} tokens/s",
    ):
        assert q in row, q
    readme_lim = _flat("README.md", after="## Main limitations")
    assert f"we measured {s['ours_x_saelens']:.1f}x SAELens's runner (real Gemma-3-270M weights" in readme_lim
    lim = _flat("docs/limitations.md")
    _assert_quoted(
        [
            f"{s['ours_x_saelens']:.1f}x SAELens's runner at the same 20M tokens after warm-up ({wall_x:.1f}x",
            f"reach {st['tokens_per_s']:,.0f} input tokens/s (H200, 2026-12-04)",
            f"real weights: {-s['fvu_rel_diff_vs_saelens']:.1%} lower",
        ],
        lim,
    )


def test_aux_mask_numbers_are_quoted():
    """benchmarks/training_speed/README.md's topk_mask paragraph quotes aux_mask/'s JSONs."""
    ms = _step_ms("benchmarks/training_speed/aux_mask/training_speed.json")
    s = "640x16384_k32"
    f = "fast_weighted_topk+aux"
    sl = ms[s, "saelens_weighted_topk+aux"]
    prof = json.loads((ROOT / "benchmarks/training_speed/aux_mask/profile_fast_step.json").read_text())["runs"]
    kern = next(r for r in prof["fast_weighted_topk[mask]@640x16384k32_dead0.5"]["kernels"] if "topk_mask" in r["name"])
    tm = json.loads((ROOT / "benchmarks/training_speed/aux_mask/topk_mask.json").read_text())["rows"]

    def sel(width: int, impl: str | None = None) -> float:
        rows = [r["ms"] for r in tm if r["width"] == width and (r["impl"] == impl if impl else "bisect" in r["impl"])]
        return min(rows)

    quoted = [
        f"{ms[s, f + '[mask]']:.2f} ms with the mask kernel vs {ms[s, f]:.2f} ms at half the latents dead "
        f"({ms[s, f] / ms[s, f + '[mask]']:.2f}x; no aux: {ms[s, 'fast_weighted_topk']:.2f} ms)",
        f"{ms[s, f + '[mask,dead0.2]']:.2f} vs {ms[s, f + '[dead0.2]']:.2f} ms at a fifth dead "
        f"({ms[s, f + '[dead0.2]'] / ms[s, f + '[mask,dead0.2]']:.2f}x)",
        f"{ms[s, f + '[mask,dead0.85]']:.2f} vs {ms[s, f + '[dead0.85]']:.2f} ms at 85% dead "
        f"({ms[s, f + '[dead0.85]'] / ms[s, f + '[mask,dead0.85]']:.2f}x)",
        f"{ms[s, f + '[mask,nocompact]']:.2f} vs {ms[s, f + '[nocompact]']:.2f} ms over all columns",
        f"({sl:.2f} ms) that is {sl / ms[s, f + '[mask]']:.2f}x at half dead ({sl / ms[s, f]:.2f}x before) and "
        f"{sl / ms[s, f + '[mask,dead0.85]']:.2f}x at 85% dead ({sl / ms[s, f + '[dead0.85]']:.2f}x before)",
        f"({kern['ms_per_step']:.3f} ms per step at 8,192 columns",
        f"{sel(4096):.3f} vs {sel(4096, 'torch'):.3f} ms for the PyTorch selection at 4,096 columns, but "
        f"{sel(12288):.3f} vs {sel(12288, 'torch'):.3f} ms at 12,288 and {sel(16384):.3f} vs "
        f"{sel(16384, 'torch'):.3f} ms at 16,384",
    ]
    _assert_quoted(quoted, _flat("benchmarks/training_speed/README.md"))
    hot = next(r for r in prof["fast_weighted_topk@640x16384k32_dead0.5"]["kernels"] if "gatherTopK<long" in r["name"])
    assert f"`sbtopk::gatherTopK<long>`, at {hot['ms_per_step']:.3f} ms of the step" in _flat(
        "benchmarks/training_speed/README.md"
    )
    assert (
        f"{hot['ms_per_step']:.3f} ms per step, against {ms[s, 'fast_weighted_topk']:.2f} ms for the whole step"
        in _flat("docs/fast_training.md")
    )
    text = (ROOT / "benchmarks/training_speed/aux_mask/pytest.txt").read_text()
    assert "failed" not in text and "6 passed" in text and "14 passed" in text
    assert "1 failed, 13 passed" in (ROOT / "benchmarks/training_speed/aux_mask/pytest_topk_mask.txt").read_text()


def test_table2_wsae_runprobe_and_e0_quoted_from_the_stage_records():
    """The W-wsae runprobe (T and E parts) and the E0 absorption call of 2026-12-04 in table2's README."""
    base = ROOT / "experiments/table2/results/gemma3-270m-L9"
    (t,) = json.loads((base / "stage_W-wsae.json").read_text())["calls"]
    calls = json.loads((base / "stage_E-gemma3-270m-9.json").read_text())["calls"]
    (e,) = [c for c in calls if any("/weighted_topk/" in i for i in c.get("sparse_probing", {}).get("evaluated", []))]
    a = [c for c in calls if "absorption" in c][0]  # the first absorption call (2026-12-04)
    sp, ab = e["sparse_probing"], a["absorption"]
    text = _flat("experiments/table2/README.md", after="`runprobe W-wsae` (2026-12-04, third session)")
    quoted = [
        f"its T part {t['wall_s']:.0f} s ({len(t['trained'])} SAEs x 20M tokens in lockstep",
        f"its E part {e['wall_s']:.0f} s ({len(sp['evaluated'])} SAEs, {len(sp['datasets'])} datasets)",
        f"took {sum(sp['baseline_s'].values()):.0f} s summed over the part's workers",
        f"stopped at {a['wall_s']:.0f} s before any SAE finished: the child's start {ab['child_start_s']:.0f} s, "
        f"SAEBench's first-letter probe {ab['probe_s']:.0f} s (its activations "
        f"{ab['probe_parts_s']['activations']:.0f} s), then {ab['cut']['ran_s']:.0f} s into the first SAE",
    ]
    _assert_quoted(quoted, text)
    assert e["tokenizer"]["probe_ok"] is True and e["tokenizer"]["dir"] == "/tmp/t2/tokenizer"
    assert not ab["evaluated"] and ab["cut"]["phase"] == "sae"


def test_table2_readme_quotes_the_cpu_smoke_records():
    """The table2 README's CPU smoke sentences quote the committed stage records of those runs."""
    d = ROOT / "experiments/table2/diagnostics/cpu_smoke_2026-12-04"
    rec = {p.stem: json.loads(p.read_text())["calls"] for p in d.glob("stage_*.json")}
    st, se = rec["stage_T-smollm2-135m-15-topk"], rec["stage_E-smollm2-135m-15"]
    gt, ge = rec["stage_T-gemma3-270m-9-topk"], rec["stage_E-gemma3-270m-9"]
    assert all(c["device"] == "cpu" for calls in rec.values() for c in calls)
    probe_call, abs_call = se[1]["absorption"], se[2]["absorption"]
    assert "not_evaluable" in probe_call and abs_call["complete"] and abs_call["vocab_sample"] == 1500
    g = ge[0]["absorption"]
    assert g["complete"] and g["vocab_sample"] == 1200 and g["workers"] == 2
    sae_s = sorted(g["sae_s"].values())
    _assert_quoted(
        [
            f"--max-saes 1` (training, SAEBench core and our proxies; {st[0]['wall_s']:.0f} s",
            f"sparse probing on one dataset ({se[0]['wall_s']:.0f} s;",
            f"the probe {probe_call['probe_s']:.0f} s, then both SAEs in one call of {se[2]['wall_s']:.0f} s",
            f"--buffer-tokens 8192`, {gt[0]['wall_s']:.0f} s; 1,200 words",
            f"probe {g['probe_s']:.0f} s, both SAEs in parallel ({sae_s[0]:.0f} s and {sae_s[1]:.0f} s)",
        ],
        _flat("experiments/table2/README.md"),
    )


def test_real_weight_run_of_2026_12_05_quoted():
    """benchmarks/e2e/runs/2026-12-05-*: ours, SAELens's runner and sparsify in one call (real weights, context 128);
    quoted in the e2e README's section, the top README row and the limitations."""
    runs = ROOT / "benchmarks/e2e/runs"
    d = json.loads((runs / "2026-12-05-real-weights-ctx128/latest.json").read_text())
    r = {x["row"]: x for x in d["rows"]}
    ours, mask, sp, sl, prof = (r[k] for k in ("ours", "ours_mask", "sparsify", "saelens_speed", "ours_profile"))
    s = d["summary"]
    assert d["settings"]["context"] == 128 and ours["tokens"] == 20_000_000 and sl["tokens"] == 2_000_000
    assert s["targets_met"]["x10_saelens"] is True and s["targets_met"]["x10_sparsify"] is False
    first = ours["saes"][0]["first_steps_s_by_width"]
    first_prof = prof["saes"][0]["first_steps_s_by_width"]
    first_mask = [v[0] for w, v in mask["saes"][0]["first_steps_s_by_width"].items() if w != "0"]
    old = {
        day: {x["row"]: x for x in json.loads((runs / f"{day}-real-weights-ctx128/latest.json").read_text())["rows"]}
        for day in ("2026-12-03", "2026-12-04")
    }
    ratios = [
        json.loads((runs / f"{day}-real-weights-ctx128/latest.json").read_text())["summary"]["ours_x_saelens"]
        for day in ("2026-12-03", "2026-12-04", "2026-12-05")
    ]
    p = prof["profile"]
    section = _flat("benchmarks/e2e/README.md", after="## Real weights, SAELens and sparsify in one run")
    wall = ours["tokens_per_s_wall"]
    quoted = [
        f"ours {ours['tokens_per_s']:,.0f} tokens/s after warm-up; SAELens's runner {sl['tokens_per_s']:,.0f} (2M "
        f"tokens): ours is {s['ours_x_saelens']:.2f}x",
        f"sparsify (its own rows of 4 x 1024) {sp['tokens_per_s']:,.0f}: ours is {s['ours_x_sparsify']:.2f}x",
        f"ours {wall:,.0f}, SAELens {sl['tokens_per_s_wall']:,.0f}, sparsify {sp['tokens_per_s_wall']:,.0f} "
        f"({wall / sl['tokens_per_s_wall']:.2f}x and {wall / sp['tokens_per_s_wall']:.2f}x)",
        f"truncated model for {ours['time_split']['first_forward_s']:.1f} s and its first step the fast step's "
        f"kernels for {first['0'][0]:.1f} s",
        f"against {old['2026-12-04']['saelens']['tokens_per_s']:,.0f} at 20M tokens on 2026-12-04 and "
        f"{old['2026-12-03']['saelens_speed']['tokens_per_s']:,.0f} at 2M on 2026-12-03",
        f"than on 2026-12-04 ({old['2026-12-04']['ours']['tokens_per_s']:,.0f})",
        "real-weight sessions: " + ", ".join(f"{x:.2f}x" for x in ratios),
        f"took {first['12288'][0]:.2f} s and {first['16384'][0]:.2f} s (`first_steps_s_by_width`; "
        f"{first['4096'][0]:.2f} s at 4,096 and 8,192)",
        f"spent {first_prof['12288'][0]:.2f} s and {first_prof['16384'][0]:.2f} s there",
        f"{mask['tokens_per_s']:,.0f} tokens/s, {s['mask_x_ours']:.2f}x ours",
        f"first steps took {min(first_mask):.2f}-{max(first_mask):.2f} s at every aux width",
        f"ours {ours['heldout_fvu']:.4f}, `ours_mask` {mask['heldout_fvu']:.4f} (20M tokens); SAELens "
        f"{sl['heldout_fvu']:.4f} and sparsify {sp['heldout_fvu']:.4f} at 2M tokens",
        f"{p['wall_ms_per_step']:.2f} ms per step under the profiler, the GPU busy {p['gpu_busy_fraction']:.3f} of "
        f"the window, {p['host_syncs_per_step']:.3f} host syncs per step",
    ]
    assert f"{first['8192'][0]:.2f}" == f"{first['4096'][0]:.2f}"  # "at 4,096 and 8,192" quotes one value for both
    _assert_quoted(quoted, section)
    row = next(x for x in (ROOT / "README.md").read_text().splitlines() if "sae-rdp train --model`, end to" in x)
    assert f"in one later run {s['ours_x_saelens']:.2f}x SAELens's runner (2M tokens" in row
    assert f"and {s['ours_x_sparsify']:.2f}x sparsify; on an H100 (2026-12-06)" in row
    h100 = json.loads((runs / "2026-12-06-h100-real-weights/latest.json").read_text())
    assert h100["device"].startswith("NVIDIA H100") and d["device"] == "NVIDIA H200"
    lo, hi = min([*ratios, h100["summary"]["ours_x_saelens"]]), max([*ratios, h100["summary"]["ours_x_saelens"]])
    assert (
        f"; {lo:.1f}-{hi:.1f}x over four sessions' runs, three H200 and one H100) and {s['ours_x_sparsify']:.2f}x "
        "sparsify"
    ) in _flat("README.md", after="## Main limitations")
    assert (
        f"in a later run {s['ours_x_saelens']:.2f}x SAELens's runner (whose speed was lower than in the earlier runs)"
        f" and {s['ours_x_sparsify']:.2f}x sparsify in the same call" in _flat("docs/limitations.md")
    )
    assert f"ran at {s['mask_x_ours']:.2f}x end to end" in _flat("docs/limitations.md")
    assert f"pays off ({s['mask_x_ours']:.2f} on the H200, 2026-12-05: below)" in _flat("benchmarks/e2e/README.md")


def test_table2_session_of_2026_12_05_quoted():
    """table2 README section 6: the 2026-12-05 calls, from the committed stage records and the session's device
    call list."""
    base = ROOT / "experiments/table2/results/gemma3-270m-L9"
    dev = json.loads((base / "device_calls_2026-12-05.json").read_text())["calls"]
    (t,) = json.loads((base / "stage_T-gemma3-270m-9-topk.json").read_text())["calls"]
    calls = json.loads((base / "stage_E-gemma3-270m-9.json").read_text())["calls"]
    sp, ab = calls[-2], calls[-1]
    a, s = ab["absorption"], sp["sparse_probing"]
    assert len(t["trained"]) == 10 and len(t["core_evaluated"]) == len(t["proxies_evaluated"]) == 20
    assert len(s["evaluated"]) == 20 and not s["baseline_s"] and not a["evaluated"]
    parts = a["probe_parts_s"]
    text = _flat("experiments/table2/README.md", after="**Session of 2026-12-05**")
    _assert_quoted(
        [
            f"`stage.sh wheels` {dev[0]['wall_s']:.0f} s",
            f"in one call, the stage's record {t['wall_s']:.0f} s",
            f"{dev[3]['wall_s']:.0f} s in one call",
            f"sparse probing of the 20 in {sp['wall_s']:.0f} s ({s['sae_workers']} workers",
            f"--time-budget 380`: {ab['wall_s']:.0f} s, the first-letter probe {a['probe_s']:.0f} s (vocabulary "
            f"{parts['vocabulary']:.1f} s, activations {parts['activations']:.1f} s, probe training "
            f"{parts['probe_training']:.1f} s, saving {parts['probe_save']:.1f} s)",
            f"then the {a['workers']} workers started and each spent the remaining {a['cut']['ran_s']:.0f} s",
        ],
        text,
    )
    assert f"{dev[3]['wall_s']:.0f}" == "472" and a["mode"] == "child"


def test_table2_second_session_of_2026_12_05_quoted():
    """table2 README section 6 on the second 2026-12-05 session: its device calls, the replicate's stage records
    and the split of the core evals' seconds."""
    rep = ROOT / "experiments/table2/results/replicates/gemma3-270m-L9-topk-r2"
    record = json.loads((rep / "device_calls_2026-12-05-s2.json").read_text())
    dev, refused = record["calls"], record["refused"]
    (t,) = json.loads((rep / "stage_T-gemma3-270m-9-topk.json").read_text())["calls"]
    (e,) = json.loads((rep / "stage_E-gemma3-270m-9.json").read_text())["calls"]
    assert len(t["trained"]) == 10 and len(t["core_evaluated"]) == len(t["proxies_evaluated"]) == 20
    assert len(e["sparse_probing"]["evaluated"]) == 20 and dev[4]["wall_s"] is None
    secs = t["eval_seconds"].values()
    run = [x["core_phases"]["run_evals"] for x in secs]
    core = [x["core"] for x in secs]
    other = [v for x in secs for k, v in x["core_phases"].items() if k != "run_evals"]
    text = _flat("experiments/table2/README.md", after="Still missing for Gemma-3-270M layer 9")
    _assert_quoted(
        [
            f"T with `probes.sh` {dev[2]['wall_s']:.0f} s (the stage's record {t['wall_s']:.0f} s), E sparse probing "
            f"{dev[3]['wall_s']:.0f} s for 20",
            f"{refused['calls']} calls before it had been refused, which cost "
            f"{refused['budget_left_s_before'] - refused['budget_left_s_after']} s",
            f"absorption with {dev[4]['command'].split()[-1]} s",
            f"{min(run):.1f}-{max(run):.1f} s per SAE (16 batches of 8 x 128 tokens) of the "
            f"{min(core):.1f}-{max(core):.1f} s",
        ],
        text,
    )
    assert max(other) < 0.1  # "loading, SAELens's ActivationsStore and saving take hundredths"


def test_table2_absorption_memory_numbers_quoted():
    """table2 README section 5 (host memory) and section 6: the k-sparse scoring's peak memory and seconds at
    Gemma-3's scale, from diagnostics/absorption_memory.json; the garbage collector changes no value."""
    d = json.loads((ROOT / "experiments/table2/diagnostics/absorption_memory.json").read_text())
    runs = {(r["rows"], r["gc"]): r for r in d["runs"]}
    on, off = runs[(28000, "on")], runs[(28000, "off")]
    assert all(d["same_values_in_every_gc_mode"].values()) and on["values_sha256"] == off["values_sha256"]
    sizes = sorted({n for n, _ in runs})
    gib = [runs[(n, "on")]["peak_growth_bytes"] / 2**30 for n in sizes]
    quoted = [
        f"{' / '.join(f'{n:,}' for n in sizes)} words: {' / '.join(f'{g:.2f}' for g in gib)} GiB",
        f"{on['seconds']:.0f} s with Python's garbage collector on, {off['seconds']:.0f} s off",
    ]
    readme = "experiments/table2/README.md"
    _assert_quoted(quoted, _flat(readme, after="* host memory:"))


def test_deterministic_mode_cost_quoted():
    ms = _step_ms("benchmarks/training_speed/deterministic/training_speed.json")
    c = "640x16384_k32"
    fast, det = ms[(c, "fast_topk")], ms[(c, "fast_topk[deterministic]")]
    via, via_det = (
        ms[(c, "fast_weighted_topk[SAETrainer,graph]")],
        ms[(c, "fast_weighted_topk[SAETrainer,deterministic]")],
    )
    for rel in ("docs/fast_training.md", "benchmarks/training_speed/README.md"):
        text = _flat(rel)
        _assert_quoted(
            [f"{fast:.2f}", f"{det:.2f} ms", f"{det / fast:.2f}x slower", f"{via:.2f}", f"{via_det:.2f} ms"], text
        )
        assert f"({via_det / via:.2f}x)" in text
    assert f"{det / fast:.2f}x slower" in _flat("docs/limitations.md")
    assert "1 passed" in (ROOT / "benchmarks/training_speed/deterministic/pytest.txt").read_text()


def test_e2e_h100_lagged_run_quoted():
    d = json.loads((ROOT / "benchmarks/e2e/runs/2026-12-05-h100-lagged/latest.json").read_text())
    r = {x["row"]: x for x in d["rows"]}
    text = _flat("benchmarks/e2e/README.md", after="## Random init, `ours_lagged`")
    lagged = d["summary"]["lagged_x_ours"]
    _assert_quoted(
        [
            f"{r['ours_lagged']['tokens_per_s']:,.0f} vs {r['ours']['tokens_per_s']:,.0f} tokens/s ({lagged:.2f}x",
            f"{d['summary']['ours_x_sparsify']:.2f}x sparsify ({r['sparsify']['tokens_per_s']:,.0f})",
            f"{d['summary']['ours_x_saelens']:.2f}x SAELens ({r['saelens_speed']['tokens_per_s']:,.0f})",
            f"{r['ours_3hooks']['tokens_per_s']:,.0f} input tokens/s",
        ],
        text,
    )
    assert f"{lagged:.2f}x the default" in _flat("docs/fast_training.md")


def test_table2_third_session_of_2026_12_05_quoted():
    """table2 README section 6 on the third 2026-12-05 session (H100): its device calls and r3's train summaries."""
    reps = ROOT / "experiments/table2/results/replicates"
    rec = json.loads((reps / "gemma3-270m-L9-topk-r3/device_calls_2026-12-05-s3.json").read_text())
    tp = rec["calls"][3]
    name = "gemma3-270m__blocks.9.hook_resid_post__topk__w16384__k-32__s0.json"
    r2, r3 = (json.loads((reps / f"gemma3-270m-L9-topk-{r}/train_summaries/{name}").read_text()) for r in ("r2", "r3"))
    assert tp["rc"] == 1 and tp["train"]["sae_steps_s"] == round(r3["sae_steps_s"], 2)
    text = _flat("experiments/table2/README.md", after="Still missing for Gemma-3-270M layer 9")
    parts = tp["probe"]["parts_s"]
    _assert_quoted(
        [
            f"--core-workers 4`: {tp['wall_s']:.1f} s, exit 1",
            f"SAE steps {r3['sae_steps_s']:.1f} s against r2's {r2['sae_steps_s']:.1f} s",
            f"({tp['probe']['probe_s']:.1f} s on the shared H100: activations {parts['activations']:.1f} s, training "
            f"{parts['probe_training']:.1f} s)",
            f"four refused calls first cost {sum(rec['calls'][0]['refused_cost_s'])} s",
        ],
        text,
    )


def test_table2_session_of_2026_12_06_quoted():
    """table2 README section 6 on the session of 2026-12-06: its device calls, r3's stage records and the rerun's
    train summaries."""
    rep = ROOT / "experiments/table2/results/replicates/gemma3-270m-L9-topk-r3"
    record = json.loads((rep / "device_calls_2026-12-06.json").read_text())
    dev = record["calls"]
    t1, t2 = json.loads((rep / "stage_T-gemma3-270m-9-topk.json").read_text())["calls"][:2]  # that session's
    e = json.loads((rep / "stage_E-gemma3-270m-9.json").read_text())["calls"][1]["absorption"]
    ts = json.loads(
        (rep / "rerun_2026-12-06/train_summaries/gemma3-270m__blocks.9.hook_resid_post__topk__w4096__k-32__s0.json")
        .read_text()
    )  # fmt: skip
    assert len(t1["trained"]) == 5 and not e["evaluated"] and e["probe_source"] == "carried"
    first, second = (t1["eval_seconds"][sid] for sid in t1["core_evaluated"])
    assert list(t1["core_profile"]) == t1["core_evaluated"][:1] and t1["core_workers"]["started"] == 0
    peaks = list(t1["core_peak_gib"].values())
    ksp = [p["k_sparse_probing"] for p in e["sae_parts_s"].values() if "k_sparse_probing" in p]
    train = [p["k_sparse_probing.training"] for p in e["sae_parts_s"].values()]
    score = [p["k_sparse_probing.scoring"] for p in e["sae_parts_s"].values() if "k_sparse_probing.scoring" in p]
    (prof,) = t2["eval_seconds"].values()
    text = _flat("experiments/table2/README.md", after="**Session of 2026-12-06**")
    _assert_quoted(
        [
            f"six refused calls first cost {sum(dev[0]['refused_cost_s'])} s of the 1800 s budget",
            f"{dev[3]['wall_s']:.1f} s call, stage {t1['wall_s']:.1f} s. Training {ts['train_seconds']:.1f} s",
            f"SAE steps {ts['sae_steps_s']:.1f} s, forward {ts['forward_s']:.1f} s",
            f"ran under the profiler in {first['core']:.1f} s (SAEBench's `run_evals` "
            f"{first['core_phases']['run_evals']:.1f} s of it), the second in {second['core']:.1f} s",
            f"with 8 evals left at {t1['wall_s']:.0f} s of its 380",
            f"{min(peaks):.1f}-{max(peaks):.1f} GiB",
            f"{dev[4]['wall_s']:.1f} s call, **no SAE finished**",
            f"{e['child_start_s']:.1f} s after the start",
            f"{e['probe_s']:.1f} s: activations {e['probe_parts_s']['activations']:.1f} s",
            f"k-sparse probing took {min(ksp):.0f}-{max(ksp):.0f} s",
            f"its probes' training {min(train):.0f}-{max(train):.0f} s, SAEBench's row-by-row scoring "
            f"{min(score):.0f}-{max(score):.0f} s",
            f"profiled again: {prof['core']:.1f} s",
        ],
        text,
    )
    assert e["workers"] == 9 and len(t1["evals_left_for_later"]) == 8


def test_table2_batched_scoring_numbers_quoted():
    """table2 README section 5: the batched k-sparse scoring's dev-CPU measurement, from its committed JSON."""
    d = json.loads((ROOT / "experiments/table2/diagnostics/absorption_scoring_28000.json").read_text())
    t = d["timing"]
    assert t["bitwise_equal"] and t["record"]["fast"] and t["rows"] == 28000
    text = _flat("experiments/table2/README.md", after="* the k-sparse scoring")
    _assert_quoted(
        [
            f"{d['date'][:10]}): {t['rows']:,} words {t['saebench_s']:.1f} s with SAEBench's function, "
            f"{t['batched_s']:.1f} s batched ({t['ratio']:.1f}x; {t['record']['check_s']:.1f} s of it the run-time "
            "check), bitwise equal",
        ],
        text,
    )


def test_table2_batched_scoring_memory_quoted():
    """table2 README section 5 (host memory): the batched scoring's peak memory, from
    diagnostics/absorption_memory_batched.json."""
    d = json.loads((ROOT / "experiments/table2/diagnostics/absorption_memory_batched.json").read_text())
    runs = sorted(d["runs"], key=lambda r: r["rows"])
    assert d["scoring"] == "batched" and all(r["scoring"] == "batched" for r in runs)
    big = runs[-1]
    sizes = " / ".join(f"{r['rows']:,}" for r in runs)
    gib = " / ".join(f"{r['peak_growth_bytes'] / 2**30:.2f}" for r in runs)
    per_word = big["peak_growth_bytes"] / big["rows"] / 1024
    text = _flat("experiments/table2/README.md", after="* host memory:")
    _assert_quoted([f"{sizes} words: {gib} GiB, about {per_word:.0f} KiB per word"], text)


def test_table2_second_session_of_2026_12_06_quoted():
    """table2 README section 6 on the second session of 2026-12-06: its device calls and r3's stage records."""
    rep = ROOT / "experiments/table2/results/replicates/gemma3-270m-L9-topk-r3"
    record = json.loads((rep / "device_calls_2026-12-06-s2.json").read_text())
    dev = record["calls"]
    t = json.loads((rep / "stage_T-gemma3-270m-9-topk.json").read_text())["calls"]
    e = json.loads((rep / "stage_E-gemma3-270m-9.json").read_text())["calls"]
    t1, t2, a9, a1, sp = t[2], t[3], e[2]["absorption"], e[3]["absorption"], e[4]["sparse_probing"]
    assert len(a9["evaluated"]) == 9 and len(a1["evaluated"]) == 1 and a1["complete"] and sp["complete"]
    assert len(t1["core_evaluated"]) == 7 and len(t2["core_evaluated"]) == 3 and not t1["core_profile"]
    assert all(v["fast"] and v["mismatch"] is None for v in a9["ksp_scoring"].values())

    parts = list(a9["sae_parts_s"].values())
    (one,) = a1["sae_parts_s"].values()
    gib = [v / 2**30 for v in a9["host_memory"]["worker_peak_rss_bytes"].values()]
    old = [v / 2**30 for v in e[1]["absorption"]["host_memory"]["worker_peak_rss_bytes"].values()]
    text = _flat("experiments/table2/README.md", after="**Second session of 2026-12-06**")
    _assert_quoted(
        [
            f"{dev[2]['wall_s']:.1f} s call, stage {t1['wall_s']:.1f} s, 7 core evals "
            f"({_rng([v['core'] for v in t1['eval_seconds'].values()])} s each, none profiled)",
            f"(stage {t2['wall_s']:.1f} s)",
            f"{dev[3]['wall_s']:.1f} s call, stage {e[2]['wall_s']:.1f} s, **absorption on 9 SAEs**",
            f"started in {a9['workers_start_s']:.1f} s (from threads; {e[1]['absorption']['child_start_s']:.1f} s",
            f"the carried probe {a9['probe_s']:.1f} s, then per SAE {_rng(list(a9['sae_s'].values()), '.0f')} s",
            f"its k-sparse probing {_rng([p['k_sparse_probing'] for p in parts])} s (data "
            f"{_rng([p['k_sparse_probing.data'] for p in parts])} s, the probes' training "
            f"{_rng([p['k_sparse_probing.training'] for p in parts])} s, the batched scoring "
            f"{_rng([p['k_sparse_probing.scoring'] for p in parts])} s, its save "
            f"{_rng([p['k_sparse_probing.save'] for p in parts])} s, metrics "
            f"{_rng([p['k_sparse_probing.metrics'] for p in parts])} s) and the absorption experiment "
            f"{_rng([p['absorption_experiment'] for p in parts])} s",
            f"peak resident memory {_rng(gib, '.2f')} GiB",
            f"row-by-row scoring: {_rng(old, '.2f')} GiB",
            f"alone: {e[3]['absorption']['sae_s'][a1['evaluated'][0]]:.1f} s, of which the probes' training "
            f"{one['k_sparse_probing.training']:.1f} s",
            f"the absorption experiment {one['absorption_experiment']:.1f} s",
            f"{dev[5]['wall_s']:.1f} s call, sparse probing of all 10 SAEs in {e[4]['wall_s']:.1f} s "
            f"({sp['sae_workers']} workers, {_rng(list(sp['sae_s'].values()))} s per SAE",
            f"{record['given_back_budget_left_s']} s of the budget were left",
        ],
        text,
    )
    # section 5 gives the same seconds as the reason for the absorption experiment's host copies, and its check size
    import importlib
    import sys

    sys.path.insert(0, str(ROOT / "experiments/table2"))
    ab = importlib.import_module("absorption_stage")
    _assert_quoted(
        [
            f"the experiment took {one['absorption_experiment']:.1f} s for an SAE alone and "
            f"{_rng([p['absorption_experiment'] for p in parts])} s with nine workers",
            f"first {ab.ABSORPTION_CHECK_WORDS} words of its first letter with words",
        ],
        _flat("experiments/table2/README.md", after="* the absorption experiment (since 2026-12-06"),
    )
    # section 5's memory cap: the estimate from the constants against the device's peaks; 14 workers fit at the peak
    est = ab.worker_peak_bytes(a9["workers_memory"]["eval_rows_estimate"], 10, "batched") / 2**30
    assert 14 * max(gib) < 0.8 * 128
    _assert_quoted(
        [f"~{est:.1f} GiB per worker for Gemma, against {_rng(gib, '.2f')} GiB peak resident memory per worker"],
        _flat("experiments/table2/README.md", after="* host memory:"),
    )
    # the audit of these SAEs then: the dominated pairs among the ten 4k SAEs, each a final against its checkpoint
    pts, pairs = _core_pairs(rep, "*__w4096_*.json")
    assert len(pts) == 10
    assert all(pts[i][0].split("_step_")[0] == pts[j][0].split("_step_")[0] for i, j in pairs)
    assert f"audited them then ({len(pairs)} dominated pairs, each a final SAE against its own checkpoint" in text


def test_table2_core_memory_quoted():
    """table2 README section 6 (core workers): the core eval's memory per token on the CPU and what it makes of the
    stage's batches, from diagnostics/core_memory_gemma3-270m.json."""
    d = json.loads((ROOT / "experiments/table2/diagnostics/core_memory_gemma3-270m.json").read_text())
    rows, bpt, runs = d["logit_rows_per_token"], d["bytes_per_token"], d["runs"]
    assert len(runs) == 2 and all(r["tokens"] == r["prompts"] * r["context"] for r in runs)
    peak = [b * 8 * 1024 / 2**30 for b in bpt]  # the stage's 8 prompts of 1,024 tokens
    text = _flat("experiments/table2/README.md", after="Why so much: the eval's CE loss and KL")
    _assert_quoted(
        [
            f"about {min(rows):.1f}-{max(rows):.1f} float32 rows of Gemma-3's {runs[0]['vocab']:,}-token vocabulary",
            f"{min(bpt) / 2**20:.1f}-{max(bpt) / 2**20:.1f} MiB per token",
            f"{runs[0]['prompts']} and {runs[1]['prompts']} prompts of {runs[0]['context']} tokens",
            f"need about {min(peak):.0f}-{max(peak):.0f} GiB",
        ],
        text,
    )


def test_table2_third_session_of_2026_12_06_quoted():
    """table2 README section 6, the third session of 2026-12-06: r3's 16k SAEs (T call, absorption on ten SAEs in
    one wave, sparse probing), quoted from the device calls and the stage records; the replicate's pairs all of equal
    L0; the results row's r3 audit from table2.json."""
    rep = ROOT / "experiments/table2/results/replicates/gemma3-270m-L9-topk-r3"
    dev = json.loads((rep / "device_calls_2026-12-06-s3.json").read_text())["calls"]
    t = json.loads((rep / "stage_T-gemma3-270m-9-topk.json").read_text())["calls"][-1]
    e = json.loads((rep / "stage_E-gemma3-270m-9.json").read_text())["calls"]
    ab, sp = e[-2]["absorption"], e[-1]["sparse_probing"]
    assert t["fast_deterministic"] and len(t["core_evaluated"]) == 10 and not t["evals_left_for_later"]
    assert len(ab["evaluated"]) == 10 and not ab["left"] and len(sp["evaluated"]) == 10
    assert all(w["host_batches"] for w in ab["absorption_words"].values())
    assert all(v["fast"] and v["mismatch"] is None for v in ab["ksp_scoring"].values())

    ev = t["eval_seconds"]
    parts = list(ab["sae_parts_s"].values())
    rss = [b / 2**30 for b in ab["host_memory"]["worker_peak_rss_bytes"].values()]
    before = json.loads((rep / "device_calls_2026-12-06-s2.json").read_text())
    nine = e[2]["absorption"]  # the second session's nine-worker call
    text = _flat("experiments/table2/README.md", after="**Third session of 2026-12-06**")
    _assert_quoted(
        [
            f"--time-budget 420`: {dev[2]['wall_s']:.1f} s call, stage {t['wall_s']:.1f} s",
            f"all 10 core evals ran ({_rng([v['core'] for v in ev.values()])} s each, peak GPU memory "
            f"{_rng(list(t['core_peak_gib'].values()))} GiB) with our proxies, "
            f"{sum(v['core'] + v['proxies'] for v in ev.values()):.1f} s of evals in all",
            f"--time-budget 540`: {dev[3]['wall_s']:.1f} s\n     call, stage {e[-2]['wall_s']:.1f} s".replace(
                "\n     ", " "
            ),
            f"({ab['workers']} workers, the memory cap allowing {ab['workers_memory']['workers']}, one\n     thread "
            "each)".replace("\n     ", " "),
            f"the workers started in {ab['workers_start_s']:.1f} s, the carried probe {ab['probe_s']:.1f} s, then per "
            f"SAE {_rng(list(ab['sae_s'].values()), '.0f')} s",
            f"its k-sparse probing {_rng([p['k_sparse_probing'] for p in parts])} s (the probes' training "
            f"{_rng([p['k_sparse_probing.training'] for p in parts])} s, the batched scoring "
            f"{_rng([p['k_sparse_probing.scoring'] for p in parts])} s, no mismatch) and the absorption experiment "
            f"{_rng([p['absorption_experiment'] for p in parts])} s, of which the batches' forward and host copies "
            f"{_rng([p['absorption_experiment.forward'] for p in parts])} s and the per-word loop "
            f"{_rng([p['absorption_experiment.words'] for p in parts])} s",
            f"peak resident memory {_rng(rss, '.2f')} GiB, the machine's "
            f"{ab['host_memory']['peak_used_bytes'] / 2**30:.1f} GiB",
            f"--time-budget 250`: {dev[4]['wall_s']:.1f} s call, sparse probing of all 10 SAEs in "
            f"{e[-1]['wall_s']:.1f} s ({sp['sae_workers']} workers, {_rng(list(sp['sae_s'].values()))} s per SAE)",
            f"The {dev[4]['budget_left_s']} s left",
            f"({_rng([p['absorption_experiment'] for p in parts])} s with ten workers on 16k SAEs against "
            f"{_rng([p['absorption_experiment'] for p in nine['sae_parts_s'].values()])} s with nine on 4k SAEs",
        ],
        text,
    )
    assert len(nine["evaluated"]) == 9 and before["calls"][3]["wall_s"] == 443.2
    # the replicate's dominated pairs are all of equal k (one L0), across widths and steps
    pts, pairs = _core_pairs(rep, "*.json")
    assert len(pts) == 20
    k_of = [p[0].split("_k")[1].split("_")[0] for p in pts]
    assert len(pairs) == 30 and all(k_of[i] == k_of[j] for i, j in pairs)
    # the results row: r3's audit over its 30 pairs
    rows = _replicate_rows("gemma3-270m-L9-topk-r3")
    full, frac, split = (
        rows[f"absorption_first_letter.mean.mean_{k}"]
        for k in ("full_absorption_score", "absorption_fraction_score", "num_split_features")
    )
    assert full["V_ci"][0] > 0.5 and full["p_value_V"] < 0.05
    _assert_quoted(
        [
            f"TopK {full['n_saes']}, deterministic",
            f"TopK's full absorption V {full['V']:.3f} [{full['V_ci'][0]:.3f}, {full['V_ci'][1]:.3f}] (p "
            f"{full['p_value_V']:.3f}: against the RDP direction) over its {full['n_pairs']} dominated pairs, all of "
            "equal L0",
        ],
        _flat("README.md"),
    )
    assert frac["V_ci"][0] <= 0.480 <= frac["V_ci"][1] and split["V_ci"][0] <= 0.441 <= split["V_ci"][1]


def _replicate_records(name: str, calls_file: str, arch: str) -> tuple[Path, Path, list, list, list]:
    """A table2 replicate's folder, the committed sweep's folder, and the calls of its device-calls record, its T
    stage record (``T-gemma3-270m-9-<arch>``) and its E stage record."""
    t2 = ROOT / "experiments/table2/results"
    rep = t2 / "replicates" / name

    def calls(f: str) -> list:
        return json.loads((rep / f).read_text())["calls"]

    return (
        rep,
        t2 / "gemma3-270m-L9",
        calls(calls_file),
        calls(f"stage_T-gemma3-270m-9-{arch}.json"),
        calls("stage_E-gemma3-270m-9.json"),
    )


def test_table2_fourth_session_of_2026_12_06_quoted():
    """table2 README section 6, the fourth session of 2026-12-06: JumpReLU's replicate r2 (two T calls, absorption on
    ten SAEs in one wave, sparse probing), quoted from the device calls, the stage records and the train summaries;
    the 4k SAEs equal to the committed sweep's, the 16k ones close; the SAEs with every offline eval counted."""
    rep, committed, dev, t, e = _replicate_records(
        "gemma3-270m-L9-jumprelu-r2", "device_calls_2026-12-06-s4.json", "jumprelu"
    )
    reps = rep.parent
    ab, sp = e[0]["absorption"], e[1]["sparse_probing"]
    assert [len(c["trained"]) for c in t] == [5, 5] and not t[1]["left_for_later"] and not t[1]["evals_left_for_later"]
    assert len(ab["evaluated"]) == 10 and not ab["left"] and len(sp["evaluated"]) == 10
    assert all(c["device"] == "NVIDIA H100 80GB HBM3" for c in (*t, *e))

    ev = t[0]["eval_seconds"].values()
    parts = list(ab["sae_parts_s"].values())

    def part(k, f=".1f"):
        return _rng([p[k] for p in parts], f)

    r3 = json.loads((reps / "gemma3-270m-L9-topk-r3/stage_E-gemma3-270m-9.json").read_text())["calls"][-2]
    r3_exp = [p["absorption_experiment"] for p in r3["absorption"]["sae_parts_s"].values()]
    text = _flat("experiments/table2/README.md", after="**Fourth session of 2026-12-06**")
    _assert_quoted(
        [
            f"--max-saes 5`: {dev[2]['wall_s']:.1f} s call, stage {t[0]['wall_s']:.1f} s",
            f"core ({max(v['core'] for v in ev):.1f} s each, SAEBench's batches "
            f"{max(v['core_phases']['run_evals'] for v in ev):.1f} s; peak "
            f"{min(t[0]['core_peak_gib'].values()):.0f}-{max(t[0]['core_peak_gib'].values()):.0f} GiB)",
            f"--widths 16384 --max-saes 5`: {dev[3]['wall_s']:.1f} s call, stage {t[1]['wall_s']:.1f} s",
            f"--time-budget 540`: {dev[4]['wall_s']:.1f} s call, stage {e[0]['wall_s']:.1f} s",
            f"({ab['workers']} workers, one thread each; started in {ab['workers_start_s']:.1f} s, the carried probe "
            f"{ab['probe_s']:.1f} s); per SAE {_rng(list(ab['sae_s'].values()))} s",
            f"k-sparse probing {part('k_sparse_probing')} s (the probes' training {part('k_sparse_probing.training')} "
            f"s, of which the L1 probe over all latents {part('k_sparse_probing.training.l1_probe')} s)",
            f"the absorption experiment {part('absorption_experiment')} s",
            f"forward {part('absorption_experiment.forward')} s, SAEBench's prompt-length check on the host "
            f"{part('absorption_experiment.validate')} s, the per-word loop {part('absorption_experiment.words')} s",
            f"probe {part('absorption_experiment.load')} s, the prompts {part('absorption_experiment.prompts')} s, "
            f"the run-time check {part('absorption_experiment.check')} s",
            f"r3's TopK experiment took {_rng(r3_exp)} s",
            f"--time-budget 250`: {dev[7]['wall_s']:.1f} s call, sparse probing of the ten SAEs in "
            f"{e[1]['wall_s']:.1f} s ({_rng(list(sp['sae_s'].values()))} s per SAE)",
            f"The {dev[8]['budget_left_s']} s left",
        ],
        text,
    )
    assert "refused" in dev[5] and dev[7]["carry"] == [".carry/pw_b"]
    # all of the experiment's time is in its timed parts (to the rounding of each)
    for p in parts:
        inner = sum(v for k, v in p.items() if k.startswith("absorption_experiment."))
        assert abs(inner - p["absorption_experiment"]) < 0.1 * p["absorption_experiment"]
    # the 4k SAEs: the committed sweep's train summaries digit for digit; the 16k ones: within the quoted bounds
    fvu, l0 = [], []
    for f in sorted((rep / "train_summaries").glob("*.json")):
        a, b = (json.loads(x.read_text()) for x in (f, committed / "train_summaries" / f.name))
        keys = ("final_loss", "heldout_fvu", "heldout_l0")
        if "__w4096__" in f.name:
            assert all(a[k] == b[k] for k in keys), f.name
        else:
            assert a["heldout_fvu"] != b["heldout_fvu"]
            fvu.append(abs(a["heldout_fvu"] / b["heldout_fvu"] - 1))
            l0.append(abs(a["heldout_l0"] / b["heldout_l0"] - 1))
    assert len(fvu) == 5
    dce, dl0 = [], []
    for f in sorted((rep / "core").glob("*w4096*.json")):
        a, b = (json.loads(x.read_text())["eval_result_metrics"] for x in (f, committed / "core" / f.name))
        dce.append(
            abs(
                a["model_performance_preservation"]["ce_loss_score"]
                - b["model_performance_preservation"]["ce_loss_score"]
            )
        )
        dl0.append(abs(a["sparsity"]["l0"] - b["sparsity"]["l0"]))
    assert len(dce) == 5 and max(dce) <= 1.3e-7 and max(dl0) <= 7e-5
    _assert_quoted(
        [
            f"their held-out FVU within {100 * max(fvu):.1f}% (relative)",
            f"their held-out L0 within {100 * max(l0):.1f}%",
        ],
        text,
    )
    # SAEs with every offline eval across the replicates; the replicate's dominated pairs
    full = sum(_saes_with_every_eval(r) for r in (reps / "gemma3-270m-L9-topk-r3", rep))  # those done at the time
    jr = list(_replicate_rows("gemma3-270m-L9-jumprelu-r2").values())
    assert len(jr) == 8 and len({r["n_pairs"] for r in jr}) == 1 and len({r["n_saes"] for r in jr}) == 1
    assert all(r["V_ci"][0] <= 0.5 <= r["V_ci"][1] for r in jr)
    _assert_quoted([f"JumpReLU {jr[0]['n_saes']};"], _flat("README.md"))
    findings = _flat("experiments/table2/FINDINGS.md", after="- `table2-gemma3-270m-L9-standard`: ")
    std = re.match(r"- `[^`]+`: \d+ dominated pairs under D = 1-EV: (\d+) sparsity level, (\d+) width", findings)
    std_level, std_width = int(std[1]), int(std[2])
    pts, pairs = _core_pairs(rep, "*.json")
    level = [p[0].split("_cal")[1].split("_")[0] for p in pts]
    assert len(pts) == 10 and all(level[i] == level[j] and "__w16384_" in pts[i][0] for i, j in pairs)
    assert all("__w4096_" in pts[j][0] for _, j in pairs)
    _assert_quoted(
        [
            f"{full} SAEs of this model-layer now have every offline eval (r3's 20 TopK, these 10)",
            f"Their {len(pairs)} dominated pairs are each a 16k SAE against the 4k SAE of the same calibration target",
            f'turns {std_width} of the committed ReLU-L1 sweep\'s {std_level + std_width} "sparsity level" pairs into '
            "width pairs",
        ],
        text,
    )


def test_e2e_first_step_profile_of_2026_12_06_quoted():
    """benchmarks/e2e README's first-step profile section and docs/fast_training.md, from that run's latest.json."""
    d = json.loads((ROOT / "benchmarks/e2e/runs/2026-12-06-h100-first-profile/latest.json").read_text())
    assert "H100" in d["device"] and [r["row"] for r in d["rows"]] == ["ours_first_profile"]
    row = d["rows"][0]
    prof = row["saes"][0]["first_steps_profile_by_width"]
    p16, p0 = prof["16384"], prof["0"]
    top = {t["name"]: t for t in p16["top"]}
    others = [p["wall_s"] for w, p in prof.items() if w not in ("0", "16384")]
    assert p16["host_syncs"] == 0 and p16["unattributed_s"] > 0.9 * p16["wall_s"]
    _assert_quoted(
        [
            f"At 16,384: {p16['wall_s']:.3f} s, of which the ops' self CPU time {p16['ops_cpu_s']:.3f} s and "
            f"{p16['unattributed_s']:.3f} s in no op, with no host synchronisation",
            f"`aten::scatter_` ({top['aten::scatter_']['calls']:.0f} calls, {top['aten::scatter_']['ms']:.1f} ms), "
            f"`aten::topk` ({top['aten::topk']['ms']:.1f} ms), `aten::mm` ({top['aten::mm']['ms']:.1f} ms), "
            f"{top['cuLaunchKernelEx']['calls']:.0f} Triton launches (`cuLaunchKernelEx`) and "
            f"{top['Lazy Function Loading']['calls']:.0f} lazy CUDA function loads",
            f"the first step took {min(others):.4f}-{max(others):.4f} s",
            f"took {p0['wall_s']:.3f} s, {p0['unattributed_s']:.3f} s of it in no op",
            f"Its steady-state rate, {row['tokens_per_s']:,.0f} tokens/s",
        ],
        _flat("benchmarks/e2e/README.md", after="## First-step profile, real weights"),
    )
    lag = json.loads((ROOT / "benchmarks/e2e/runs/2026-12-05-h100-lagged/latest.json").read_text())
    firsts = [
        {r["row"]: r for r in lag["rows"]}[k]["saes"][0]["first_steps_s_by_width"] for k in ("ours", "ours_lagged")
    ]
    assert all(min(int(w) for w in f if w != "0") == 2048 for f in firsts)  # its smallest (first) aux width
    assert all(max(t[0] for w, t in f.items() if w not in ("0", "2048")) < 0.01 for f in firsts)
    _assert_quoted(
        [
            f"found {p16['unattributed_s']:.3f} of the {p16['wall_s']:.3f} s at 16,384 outside any op",
            f"(2,048, the narrowest, on random-init activations, {firsts[0]['2048'][0]:.2f} s and "
            f"{firsts[1]['2048'][0]:.2f} s;",
        ],
        _flat("docs/fast_training.md"),
    )


def test_e2e_warm_aux_run_of_2026_12_06_quoted():
    """benchmarks/e2e README's warm_aux section and docs/fast_training.md, from that run's latest.json."""
    runs = ROOT / "benchmarks/e2e/runs"
    d = json.loads((runs / "2026-12-06-h100-warm-aux/latest.json").read_text())
    before = json.loads((runs / "2026-12-06-h100-first-profile/latest.json").read_text())["rows"][0]["saes"][0]
    ours = {r["row"]: r for r in json.loads((runs / "2026-12-06-h100-real-weights/latest.json").read_text())["rows"]}
    assert "H100" in d["device"] and [r["row"] for r in d["rows"]] == ["ours_first_profile"]
    row = d["rows"][0]
    sae = row["saes"][0]
    order, first, prof = sae["aux_widths_in_order"], sae["first_steps_s_by_width"], sae["first_steps_profile_by_width"]
    p16, p0 = prof["16384"], prof["0"]
    assert order[:2] == [0, 16384] and [c["name"].split(".")[-1] for c in p16["triton_compiled"]] == [
        "_sparse_adam_kernel"
    ]
    others = [t[0] for w, t in first.items() if w not in ("0", "16384")]
    assert all(prof[w]["triton_compiled"] == [] for w in prof if w not in ("0", "16384"))
    b16 = before["first_steps_profile_by_width"]["16384"]["wall_s"]
    b0 = before["first_steps_profile_by_width"]["0"]["wall_s"]
    o16 = ours["ours"]["saes"][0]["first_steps_s_by_width"]["16384"][0]
    _assert_quoted(
        [
            "first ran in the order " + ", ".join(f"{w:,}" for w in order[:-1]) + f", {order[-1]:,}",
            f"Its first step took {p16['wall_s']:.3f} s ({b16:.3f} s in the run below, {o16:.3f} s in `ours` before "
            f"it), {p16['triton_compile_s']:.3f} s of it compiling one variant of the fused Adam kernel",
            f"the other widths' first steps {min(others):.4f}-{max(others):.4f} s, none compiling",
            f"The run's first step (no aux loss) {p0['wall_s']:.3f} s, {p0['triton_compile_s']:.3f} s of it "
            f"four fused-Adam variants ({b0:.3f} s",
            f"Steady-state {row['tokens_per_s']:,.0f} tokens/s",
        ],
        _flat("benchmarks/e2e/README.md", after="## `warm_aux`, first version"),
    )
    assert len(p0["triton_compiled"]) == 4
    _assert_quoted(
        [
            f"from {b16:.3f} s to {p16['wall_s']:.3f} s; the {p16['triton_compile_s']:.3f} s left were one "
            "fused-Adam variant"
        ],
        _flat("docs/fast_training.md"),
    )


def test_e2e_h100_real_weight_run_of_2026_12_06_quoted():
    """benchmarks/e2e README's 2026-12-06 section and the top README's e2e row, from that run's latest.json; the
    same-run ratios of the four real-weight sessions from their runs' summaries."""
    runs = ROOT / "benchmarks/e2e/runs"
    d = json.loads((runs / "2026-12-06-h100-real-weights/latest.json").read_text())
    r = {x["row"]: x for x in d["rows"]}
    ours, lag, sp, sl = (r[k] for k in ("ours", "ours_lagged", "sparsify", "saelens_speed"))
    s = d["summary"]
    assert d["settings"]["context"] == 128 and d["settings"]["gguf"] and ours["tokens"] == 20_000_000
    assert sl["tokens"] == 2_000_000 and not s["targets_met"]["x10_saelens"] and not s["targets_met"]["x10_sparsify"]
    first, first_lag = (x["saes"][0]["first_steps_s_by_width"] for x in (ours, lag))
    ratios = [
        json.loads((runs / f"{day}-real-weights-ctx128/latest.json").read_text())["summary"]["ours_x_saelens"]
        for day in ("2026-12-03", "2026-12-04", "2026-12-05")
    ] + [s["ours_x_saelens"]]
    old = json.loads((runs / "2026-12-05-real-weights-ctx128/latest.json").read_text())
    assert old["device"] == "NVIDIA H200"
    old_first = {x["row"]: x for x in old["rows"]}["ours"]["saes"][0]["first_steps_s_by_width"]
    prev_lag = json.loads((runs / "2026-12-05-h100-lagged/latest.json").read_text())["summary"]["lagged_x_ours"]
    section = _flat("benchmarks/e2e/README.md", after="## Real weights, `ours_lagged`, after a table2 session's calls")
    # the step time 10x sparsify would allow, from this run's split (the forward after its first, compiling call)
    ts, steps = ours["time_split"], ours["saes"][0]["steps"]
    need, budget, fwd, left = _x10_sparsify(ours, sp)
    _assert_quoted(
        [
            f"ours {ours['tokens_per_s']:,.0f} tokens/s after warm-up = {s['ours_x_saelens']:.2f}x SAELens's runner "
            f"({sl['tokens_per_s']:,.0f}) and {s['ours_x_sparsify']:.2f}x sparsify ({sp['tokens_per_s']:,.0f}",
            f"ours {ours['tokens_per_s_wall']:,.0f} (its first forward compiled the truncated model for "
            f"{ours['time_split']['first_forward_s']:.1f} s), `ours_lagged` (run second) "
            f"{lag['tokens_per_s_wall']:,.0f} (first forward {lag['time_split']['first_forward_s']:.1f} s)",
            f"`ours_lagged` {lag['tokens_per_s']:,.0f} tokens/s, {s['lagged_x_ours']:.2f}x ours ({prev_lag:.2f}x",
            f"{first['12288'][0]:.4f} s at 12,288 ({old_first['12288'][0]:.2f} s on 2026-12-05, on the H200",
            f"{first['16384'][0]:.3f} s at 16,384 ({first_lag['16384'][0]:.3f} s in `ours_lagged`)",
            f"{100 * first['16384'][0] / ours['time_split']['sae_step_s']:.0f}%\n  of ours' "
            f"{ours['time_split']['sae_step_s']:.1f} s of SAE steps".replace("\n  ", " "),
            f"ours {ours['heldout_fvu']:.4f}, `ours_lagged` {lag['heldout_fvu']:.4f} (20M tokens); sparsify "
            f"{sp['heldout_fvu']:.4f} and SAELens {sl['heldout_fvu']:.4f} at 2M tokens",
            "sessions: " + ", ".join(f"{x:.2f}x" for x in ratios) + ".",
            f"10x sparsify would take here: {need:,.0f} tokens/s, i.e. {budget:.1f} s for ours' 20M tokens. Its "
            f"forward took {fwd:.1f} s after the first (compiling) one and the rest {ts['other_s']:.1f} s, which "
            f"leaves {left:.1f} s for the {steps:,} SAE steps: {1e3 * left / steps:.2f} ms per step of "
            f"{d['settings']['batch']:,} tokens against the {1e3 * ts['sae_step_s'] / steps:.2f} ms measured",
            f"a {ts['sae_step_s'] / left:.1f}x faster step",
        ],
        section,
    )
    _assert_quoted(
        [
            f"on an H100 (2026-12-06) {s['ours_x_saelens']:.2f}x SAELens's runner and {s['ours_x_sparsify']:.2f}x "
            "sparsify (2M tokens each)"
        ],
        _flat("README.md"),
    )
    _assert_quoted(
        [
            f"it did not pay: {prev_lag:.2f}x the default in one run",
            f"and {s['lagged_x_ours']:.2f}x in one more (2026-12-06, real weights",
            f"on that H100 run {first['12288'][0]:.4f} s at 12,288 but {first['16384'][0]:.3f} s at 16,384",
        ],
        _flat("docs/fast_training.md"),
    )
    assert f"H100 (2026-12-06) {s['ours_x_saelens']:.2f}x and {s['ours_x_sparsify']:.2f}x" in _flat(
        "docs/limitations.md"
    )
    _assert_quoted(
        [f"the first step at 12,288 took {first['12288'][0]:.4f} s, at 16,384 still {first['16384'][0]:.3f} s"],
        _flat("benchmarks/training_speed/README.md"),
    )


def test_deterministic_mode_cost_with_the_aux_loss_quoted():
    """The deterministic mode's cost with the aux loss (2026-12-06), from its JSON; its GPU tests' summary."""
    ms = _step_ms("benchmarks/training_speed/deterministic_aux/training_speed.json")
    c = "640x16384_k32"
    fast, det = ms[(c, "fast_topk")], ms[(c, "fast_topk[deterministic]")]
    aux, aux_det = ms[(c, "fast_weighted_topk+aux")], ms[(c, "fast_weighted_topk+aux[deterministic]")]
    assert aux_det > aux and det > fast
    for rel in ("docs/fast_training.md", "benchmarks/training_speed/README.md"):
        _assert_quoted(
            [f"{aux:.2f}", f"{aux_det:.2f} ms", f"({aux_det / aux:.2f}x slower)", f"({det / fast:.2f}x"], _flat(rel)
        )
    _assert_quoted([f"{fast:.2f} -> {det:.2f} ms"], _flat("docs/fast_training.md"))
    _assert_quoted([f"{fast:.2f} vs {det:.2f} ms"], _flat("benchmarks/training_speed/README.md"))
    assert f"{aux_det / aux:.2f}x slower with the aux loss" in _flat("docs/limitations.md")
    pt = (ROOT / "benchmarks/training_speed/deterministic_aux/pytest.txt").read_text()
    assert pt.count("2 passed") == 2 and "failed" not in pt and "(aux True)" in pt


def test_e2e_warm_aux_fixed_and_streams_runs_of_2026_12_06_quoted():
    """benchmarks/e2e README's fifth-session section, docs and the top README's e2e row, from the two runs' JSONs."""
    runs = ROOT / "benchmarks/e2e/runs"
    d = json.loads((runs / "2026-12-06-h100-warm-aux-fixed/latest.json").read_text())
    r = {x["row"]: x for x in d["rows"]}
    ours, prof, sp, sl = (r[k] for k in ("ours", "ours_first_profile", "sparsify", "saelens_speed"))
    s = d["summary"]
    assert "H100" in d["device"] and d["settings"]["context"] == 128 and d["settings"]["gguf"]
    assert not s["targets_met"]["x10_saelens"] and not s["targets_met"]["x10_sparsify"]
    sae = ours["saes"][0]
    warm, first = sae["aux_warm"], sae["first_steps_s_by_width"]
    assert sae["aux_widths_in_order"][:2] == [0, 16384]
    pf = prof["saes"][0]["first_steps_s_by_width"]
    pprof = prof["saes"][0]["first_steps_profile_by_width"]
    assert all(pprof[w]["triton_compiled"] == [] for w in pprof if w != "0")
    aux_first = [pf[w][0] for w in pf if w != "0"]
    before = json.loads((runs / "2026-12-06-h100-real-weights/latest.json").read_text())
    b_ours = {x["row"]: x for x in before["rows"]}["ours"]
    v1 = json.loads((runs / "2026-12-06-h100-warm-aux/latest.json").read_text())["rows"][0]["saes"][0]
    ts, steps = ours["time_split"], sae["steps"]
    need, budget, fwd, left = _x10_sparsify(ours, sp)
    e3 = {x["row"]: x for x in json.loads((runs / "2026-12-06-h100-3hooks-streams/latest.json").read_text())["rows"]}
    seq, st = e3["ours_3hooks"], e3["ours_3hooks_streams"]
    assert st["sae_streams"] is True and seq["sae_streams"] is False
    old = [x for x in json.loads((runs / "2026-12-04-real-weights-3hooks/latest.json").read_text())["rows"]]
    old = {x["row"]: x["tokens_per_s"] for x in old}
    section = _flat("benchmarks/e2e/README.md", after="## `warm_aux` fixed, same-run ratios")
    _assert_quoted(
        [
            f"ours {ours['tokens_per_s']:,.0f} tokens/s after warm-up = {s['ours_x_saelens']:.2f}x SAELens's runner "
            f"({sl['tokens_per_s']:,.0f}) and {s['ours_x_sparsify']:.2f}x sparsify ({sp['tokens_per_s']:,.0f})",
            f"`ours_first_profile` (the same training, its first steps profiled) {prof['tokens_per_s']:,.0f}",
            f"compiled at step 0 in {warm['s']:.3f} s (`aux_warm`, widths "
            + " and ".join(f"{w:,}" for w in warm["widths"]),
            f"took {first['16384'][0]:.4f} s, against {b_ours['saes'][0]['first_steps_s_by_width']['16384'][0]:.3f} s "
            f"in the section below's `ours` and {v1['first_steps_profile_by_width']['16384']['wall_s']:.3f} s with the "
            "first version",
            f"({min(aux_first):.4f}-{max(aux_first):.4f} s)",
            f"Ours' SAE steps took {ts['sae_step_s']:.1f} s in all ({b_ours['time_split']['sae_step_s']:.1f} s in "
            f"the section below's run): {1e3 * ts['sae_step_s'] / steps:.2f} ms per step",
            f"10x sparsify would take {need:,.0f} tokens/s here, i.e. {budget:.1f} s for the 20M tokens: after the "
            f"forward ({fwd:.1f} s past its first, compiling call) and the rest ({ts['other_s']:.1f} s), "
            f"{left:.1f} s for the {steps:,} steps, {1e3 * left / steps:.2f} ms per step, a "
            f"{ts['sae_step_s'] / left:.1f}x faster step",
            f"ours {ours['heldout_fvu']:.4f} (20M tokens); sparsify {sp['heldout_fvu']:.4f} and SAELens "
            f"{sl['heldout_fvu']:.4f} at 2M tokens",
            f"`ours_3hooks` {seq['tokens_per_s']:,.0f} input tokens/s, `ours_3hooks_streams` (each SAE on a CUDA "
            f"stream of its own) {st['tokens_per_s']:,.0f} ({st['tokens_per_s'] / seq['tokens_per_s']:.2f}x; the "
            f"2026-12-04 run on the H200: {old['ours_3hooks_streams'] / old['ours_3hooks']:.2f}x)",
            "Held-out FVUs "
            + " / ".join(f"{x:.4f}" for x in seq["heldout_fvu"])
            + " sequential, "
            + " / ".join(f"{x:.4f}" for x in st["heldout_fvu"])
            + " on streams",
        ],
        section,
    )
    _assert_quoted(
        [
            f"the warm-up took {warm['s']:.3f} s at step 0 and the first aux step (at 16,384 again) "
            f"{first['16384'][0]:.4f} s"
        ],
        _flat("docs/fast_training.md"),
    )
    _assert_quoted([f"in a later run {s['ours_x_saelens']:.2f}x and {s['ours_x_sparsify']:.2f}x"], _flat("README.md"))
    lim = _flat("docs/limitations.md")
    assert f"then {s['ours_x_saelens']:.2f}x and {s['ours_x_sparsify']:.2f}x" in lim
    assert f"and {st['tokens_per_s']:,.0f} (H100, 2026-12-06) with each SAE on its own CUDA stream" in lim
    assert f"ran {st['tokens_per_s'] / seq['tokens_per_s']:.2f}x faster on streams" in _flat("docs/wsae.md")


def test_table2_sixth_session_of_2026_12_06_quoted():
    """table2 README section 6, the sixth session of 2026-12-06: ReLU-L1's replicate r2, quoted from the device
    calls and the stage records; its train summaries equal to the committed sweep's and its core metrics within the
    quoted relative bounds (SAEBench's L1 aside: the decoder-norm folding changes it)."""
    rep, committed, dev, t, e = _replicate_records(
        "gemma3-270m-L9-standard-r2", "device_calls_2026-12-06-s6.json", "standard"
    )
    assert [len(c["trained"]) for c in t] == [5, 5] and all(c["device"] == "NVIDIA H100 80GB HBM3" for c in (*t, *e))
    ab4, sp4, sp16, ab16 = e[0]["absorption"], e[1]["sparse_probing"], e[2]["sparse_probing"], e[3]["absorption"]
    assert all(len(x["evaluated"]) == 10 and not x["left"] for x in (ab4, sp4, sp16, ab16))

    def part(ab, k):
        return _rng([p[k] for p in ab["sae_parts_s"].values()])

    peaks = t[0]["core_peak_gib"].values()
    text = _flat("experiments/table2/README.md", after="**Sixth session of 2026-12-06**")
    _assert_quoted(
        [
            f"The first call got no machine ({1800 - dev[0]['budget_left_s']} s of the budget)",
            f"--max-saes 5`: {dev[4]['wall_s']:.1f} s call, stage {t[0]['wall_s']:.1f} s",
            f"at most {max(v['core'] for v in t[0]['eval_seconds'].values()):.1f} s each, peak "
            f"{min(peaks):.0f}-{max(peaks):.0f} GiB",
            f"--widths 16384 --max-saes 5`: {dev[8]['wall_s']:.1f} s call, its T stage {t[1]['wall_s']:.1f} s and its "
            f"sparse probing {e[2]['wall_s']:.1f} s",
            f"4k {dev[5]['wall_s']:.1f} s call, stage {e[0]['wall_s']:.1f} s, per SAE {_rng(ab4['sae_s'].values())} s "
            f"(k-sparse probing {part(ab4, 'k_sparse_probing')} s, its L1 probe "
            f"{part(ab4, 'k_sparse_probing.training.l1_probe')} s; the experiment {part(ab4, 'absorption_experiment')}"
            f" s, SAEBench's prompt-length check on the host {part(ab4, 'absorption_experiment.validate')} s)",
            f"16k {dev[9]['wall_s']:.1f} s call (`--time-budget 330`, to fit the {dev[8]['budget_left_s']} s left), "
            f"stage {e[3]['wall_s']:.1f} s, per SAE {_rng(ab16['sae_s'].values())} s (k-sparse probing "
            f"{part(ab16, 'k_sparse_probing')} s, its L1 probe {part(ab16, 'k_sparse_probing.training.l1_probe')} s)",
            f"4k {dev[7]['wall_s']:.1f} s call with `probes.sh`, stage {e[1]['wall_s']:.1f} s "
            f"({_rng(sp4['sae_s'].values())} s per SAE)",
        ],
        text,
    )
    # reproduction: train summaries equal; core metrics within the quoted relative bounds, L1 aside
    for f in sorted((rep / "train_summaries").glob("*.json")):
        a, b = (json.loads(x.read_text()) for x in (f, committed / "train_summaries" / f.name))
        assert all(a[k] == b[k] for k in ("final_loss", "heldout_fvu", "train_l0")), f.name
    rel, worst, n = 0.0, None, 0
    for f in sorted((rep / "core").glob("*.json")):
        a, b = (json.loads(x.read_text())["eval_result_metrics"] for x in (f, committed / "core" / f.name))
        n += 1
        for group, vals in a.items():
            for k, x in vals.items():
                y = b[group][k]
                if not isinstance(x, (int, float)) or (group, k) == ("sparsity", "l1"):
                    continue
                r = abs(x - y) / max(abs(y), 1e-12)
                if r > rel:
                    rel, worst = r, k
    assert n == 20 and worst == "l0"
    _assert_quoted([f"differ by at most {rel:.1e} (relative, L0's;"], text)


def test_aux_rowsat_run_of_2026_12_06_quoted():
    """benchmarks/training_speed/README.md's paragraph on the hot-row sort, RowsAt and the topk_mask layouts quotes
    aux_rowsat/'s JSONs (the step rows, the selection rows) and its pytest record."""
    d = "benchmarks/training_speed/aux_rowsat/"
    ms = _step_ms(d + "training_speed.json")
    s, f, h = "640x16384_k32", "fast_weighted_topk+aux", "fast_weighted_topk[hot_topk]"
    sl = ms[s, "saelens_weighted_topk+aux"]
    tm = json.loads((ROOT / d / "topk_mask.json").read_text())
    assert tm["device"] == "NVIDIA H100 80GB HBM3" and tm["date_utc"].startswith("2026-12-06")

    def sel(width: int, impl: str) -> float:
        return next(r["ms"] for r in tm["rows"] if r["width"] == width and r["impl"] == impl)

    def warps(width: int) -> int:  # topk_mask's default warps: next power of two of the width / 1024, in 4..16
        return max(4, min(16, max(128, 1 << (width - 1).bit_length()) // 1024))

    widths = sorted({r["width"] for r in tm["rows"]})
    assert widths == [4096, 12288, 16384]
    regs = [sel(w, f"regs_w{warps(w)}") for w in widths]
    lean = [sel(w, f"lean_w{warps(w)}") for w in widths]
    assert all(r < lo for r, lo in zip(regs, lean))  # the claim behind the default layout
    quoted = [
        f"{ms[s, 'fast_weighted_topk']:.2f} vs {ms[s, h]:.2f} ms without the aux loss, {ms[s, f]:.2f} vs "
        f"{ms[s, h + '+aux']:.2f} ms with it",
        f"{ms[s, f]:.2f} vs {ms[s, f + '[dense_x]']:.2f} ms ({ms[s, f + '[dense_x]'] / ms[s, f]:.2f}x)",
        f"{ms[s, f + '[mask]']:.2f} vs {ms[s, f]:.2f} ms at half the latents dead, "
        f"{ms[s, f + '[mask,dead0.2]']:.2f} vs {ms[s, f + '[dead0.2]']:.2f} ms at a fifth, "
        f"{ms[s, f + '[mask,dead0.85]']:.2f} vs {ms[s, f + '[dead0.85]']:.2f} ms at 85%",
        f"({sl:.2f} ms in this run;",
        f"{sl / ms[s, f]:.2f}x at half dead and {sl / ms[s, f + '[dead0.85]']:.2f}x at 85% dead",
        f"{regs[0]:.3f} vs {lean[0]:.3f} ms at 4,096 columns, {regs[1]:.3f} vs {lean[1]:.3f} ms at 12,288, "
        f"{regs[2]:.3f} vs {lean[2]:.3f} ms at 16,384 (PyTorch's selection: "
        + ", ".join(f"{sel(w, 'torch'):.3f}" for w in widths)
        + " ms)",
    ]
    assert sl / ms[s, f + "[dead0.85]"] >= 3 and ms[s, f + "[mask]"] > ms[s, f]  # the README's conclusions
    _assert_quoted(quoted, _flat("benchmarks/training_speed/README.md"))
    _assert_quoted(
        [
            f"{ms[s, 'fast_weighted_topk']:.2f} vs {ms[s, h]:.2f} ms per step without the aux loss, {ms[s, f]:.2f} vs "
            f"{ms[s, h + '+aux']:.2f} ms with it",
            f"{ms[s, f]:.2f} vs {ms[s, f + '[dense_x]']:.2f} ms per step with half the latents dead on an H100",
        ],
        _flat("docs/fast_training.md"),
    )
    gains = [ms[s, h] / ms[s, "fast_weighted_topk"], ms[s, h + "+aux"] / ms[s, f], ms[s, f + "[dense_x]"] / ms[s, f]]
    _assert_quoted(
        [
            f"{sl / ms[s, f + '[dead0.85]']:.2f}x on an H100 of 2026-12-06",
            f"measured {min(gains):.2f}-{max(gains):.2f}x faster than the paths they replaced",
        ],
        _flat("docs/limitations.md"),
    )
    text = (ROOT / d / "pytest.txt").read_text()
    assert "1 failed, 16 passed" in text and "FAILED tests/fast/test_topk_mask.py::test_bench_script_quick" in text
    assert "6 passed" in text and "21 passed" in text


def test_table2_ninth_session_of_2026_12_06_quoted():
    """table2 README section 6, the ninth session of 2026-12-06 (the WSAE arm's replicate): the call and stage times
    quoted from the device-calls record and the stage records; the SAEs with every offline eval counted."""
    rep = ROOT / "experiments/table2/results/replicates/gemma3-270m-L9-weighted_topk-r2"
    dev, w, e, (sp0, sp1, ab) = _session_records(
        rep, "device_calls_2026-12-06-s9.json", "stage_W-wsae.json", "stage_E-gemma3-270m-9.json", [4, 4]
    )
    assert len(ab["evaluated"]) == 8 and not ab["left"] and len(sp0["evaluated"]) + len(sp1["evaluated"]) == 8
    assert all(c["device"] == "NVIDIA H100 80GB HBM3" for c in (*w, *e))

    reps = rep.parent
    full = sum(_saes_with_every_eval(r) for r in reps.iterdir() if r.name != "gemma3-270m-L9-topk-r2")
    assert _saes_with_every_eval(reps / "gemma3-270m-L9-topk-r2") == 0  # r2 has no absorption: not counted
    text = _flat("experiments/table2/README.md", after="**Ninth session of 2026-12-06")
    _assert_quoted(
        [
            f"the wheels' halves ({dev[0]['wall_s']:.1f} s and {dev[1]['wall_s']:.1f} s), the thirteen puts "
            f"({_rng(dev[2]['wall_s'])} s each), the probes' first half ({dev[3]['wall_s']:.1f} s)",
            f"--max-saes 4`: {dev[4]['wall_s']:.1f} s call, stage {w[0]['wall_s']:.1f} s",
            f"sparse probing {e[0]['wall_s']:.1f} s ({_rng(list(sp0['sae_s'].values()))} s per SAE)",
            f"--max-saes 4`: {dev[5]['wall_s']:.1f} s call, stage {w[1]['wall_s']:.1f} s",
            f"sparse probing {e[1]['wall_s']:.1f} s ({_rng(list(sp1['sae_s'].values()))} s per SAE)",
            f"--time-budget 420`: {dev[6]['wall_s']:.1f} s call, stage {e[2]['wall_s']:.1f} s ({ab['workers']} "
            f"workers; {_rng(list(ab['sae_s'].values()))} s per SAE)",
            f"`aux_rowsat/`), {dev[7]['wall_s']:.1f} s; the machine given back with 279 s left",
            f"{full} SAEs of this model-layer now have every offline eval",
        ],
        text,
    )
    assert len(dev[2]["wall_s"]) == 13 and dev[7]["budget_left_s"] - 279 < 10


def test_table2_smollm2_topk_session_of_2026_12_07_quoted():
    """table2 README section 6, the session of 2026-12-07 (SmolLM2-135M layer 15, TopK): call and stage times from
    the device-calls record and the stage records; the top README's SmolLM2 V from table2.json."""
    res = ROOT / "experiments/table2/results/smollm2-135m-L15"
    dev, t, e, (sp0, sp1, ab) = _session_records(
        res, "device_calls_2026-12-07.json", "stage_T-smollm2-135m-15-topk.json", "stage_E-smollm2-135m-15.json", [5, 5]
    )
    assert len(ab["evaluated"]) == 20 and not ab["left"] and ab["probe_source"] == "trained"
    assert len(sp0["evaluated"]) + len(sp1["evaluated"]) == 20 and sp1["complete"]
    assert all(c["device"] == "NVIDIA H100 80GB HBM3" and c["tokenizer"]["probe_ok"] for c in e)
    assert _saes_with_every_eval(res, "topk") == 20
    assert not (res / "probe_baselines" / "baseline_results_gemma3-270m").exists()
    assert not list(res.glob("calibration_*gemma*.json"))  # Gemma's, carried in the bundles, stay out
    assert {f.name for f in res.glob("calibration_*.json")} <= {
        f"calibration_C-smollm2-135m-15-{a}.json" for a in ("standard", "jumprelu")
    }
    text = _flat("experiments/table2/README.md", after="**Session of 2026-12-07 (an H100")
    _assert_quoted(
        [
            f"the wheels' halves ({dev[0]['wall_s']:.1f} s and {dev[1]['wall_s']:.1f} s), the seven puts "
            f"({_rng(dev[2]['wall_s'])} s each), the probes' first half ({dev[3]['wall_s']:.1f} s)",
            f"5`: {dev[4]['wall_s']:.1f} s call, stage {t[0]['wall_s']:.1f} s",
            f"sparse probing {e[0]['wall_s']:.1f} s (its LLM baselines and activations first; "
            f"{_rng(list(sp0['sae_s'].values()))} s per SAE)",
            f"--max-saes 5`: {dev[5]['wall_s']:.1f} s call, stage {t[1]['wall_s']:.1f} s",
            f"sparse probing {e[1]['wall_s']:.1f} s ({_rng(list(sp1['sae_s'].values()))} s per SAE)",
            f"--time-budget 420`: {dev[6]['wall_s']:.1f} s call, stage {e[2]['wall_s']:.1f} s ({ab['workers']} "
            f"workers; the first-letter probe trained in {ab['probe_s']:.1f} s, the twenty SAEs "
            f"{_rng(list(ab['sae_s'].values()))} s each)",
            f"random-init architecture ({dev[7]['wall_s']:.1f} s,",
        ],
        text,
    )
    assert len(dev[2]["wall_s"]) == 7
    rows = {
        r["proxy"]: r
        for r in json.loads((ROOT / "experiments/table2/table2.json").read_text())["rows"]
        if (r["model"], r["grouping"], r["distortion"], r["architecture"])
        == ("smollm2-135m", "architecture", "1-EV", "topk")
    }
    sp = rows["sparse_probing_sae_probes.sae.sae_top_1_test_accuracy"]
    af = rows["absorption_first_letter.mean.mean_absorption_fraction_score"]
    spl = rows["absorption_first_letter.mean.mean_num_split_features"]
    assert {r["n_saes"] for r in (sp, af, spl)} == {20} and {r["n_pairs"] for r in (sp, af, spl)} == {31}
    assert sp["V_ci"][0] > 0.351 and af["V_ci"][0] < 0.480 < af["V_ci"][1] and spl["V_ci"][0] < 0.441 < spl["V_ci"][1]
    assert all(r["V_ci"][0] < 0.5 < r["V_ci"][1] for r in (sp, af, spl))
    _assert_quoted(
        [
            f"TopK (20 SAEs, {sp['n_pairs']} dominated pairs): Sparse Probing V {_v(sp)} "
            f"(paper 0.351 below the interval), absorption fraction {_v(af)} and splitting {_v(spl)} (paper inside); "
            "0.5 inside all three"
        ],
        _flat("README.md"),
    )


def test_e2e_random_init_run_of_2026_12_07_quoted():
    """benchmarks/e2e README's section of 2026-12-07 (random init, H100), the top README's e2e row and
    docs/limitations.md, from the run's JSON."""
    d = json.loads((ROOT / "benchmarks/e2e/runs/2026-12-07-h100-random-init/latest.json").read_text())
    r = {x["row"]: x for x in d["rows"]}
    o, n, sp, sl = (r[k] for k in ("ours", "ours_noaux", "sparsify", "saelens_speed"))
    s = d["summary"]
    assert "H100" in d["device"] and d["settings"]["gguf"] is None and d["settings"]["corpus"] is None
    assert d["versions"]["commit"] == "29704fe" and not any(x.get("error") for x in d["rows"])
    assert n["saes"][0]["aux_loss_coefficient"] == 0 and o["saes"][0]["aux_loss_coefficient"] > 0
    assert s["targets_met"]["x10_saelens"] and not s["targets_met"]["x10_sparsify_same_objective"]
    steps = n["saes"][0]["steps"]
    assert steps == o["saes"][0]["steps"]
    tn, to = n["time_split"], o["time_split"]
    need, budget, fwd, left = _x10_sparsify(n, sp)
    _assert_quoted(
        [
            f"ours (aux loss on) {o['tokens_per_s']:,.0f} tokens/s after warm-up = {s['ours_x_saelens']:.2f}x "
            f"SAELens's runner ({sl['tokens_per_s']:,.0f}) and {s['ours_x_sparsify']:.2f}x sparsify "
            f"({sp['tokens_per_s']:,.0f})",
            f"{n['tokens_per_s']:,.0f} tokens/s = {s['ours_noaux_x_sparsify']:.2f}x sparsify",
            f"the aux loss costs ours {s['noaux_x_ours']:.2f}x (SAE steps {to['sae_step_s']:.1f} s with it, "
            f"{tn['sae_step_s']:.1f} s without, {1e3 * to['sae_step_s'] / steps:.2f} vs "
            f"{1e3 * tn['sae_step_s'] / steps:.2f} ms per step of 4,096 tokens)",
            f"{need:,.0f} tokens/s, i.e. {budget:.2f} s for the 20M tokens. The forward took {fwd:.2f} s past its "
            f"first, compiling call and the rest {tn['other_s']:.2f} s, which leaves {left:.2f} s for the {steps:,} "
            f"steps: {1e3 * left / steps:.2f} ms per step against the {1e3 * tn['sae_step_s'] / steps:.2f} ms "
            f"measured, a {tn['sae_step_s'] / left:.1f}x faster step",
            f"ours {o['heldout_fvu']:.4f}, `ours_noaux` {n['heldout_fvu']:.4f} (20M tokens); sparsify "
            f"{sp['heldout_fvu']:.4f} and SAELens {sl['heldout_fvu']:.4f} at 2M tokens",
        ],
        _flat("benchmarks/e2e/README.md", after="## Random init, the same-objective ratio"),
    )
    # sparsify ran faster here than on the real weights of 2026-12-06 (the README says so)
    real = {
        x["row"]: x
        for x in json.loads((ROOT / "benchmarks/e2e/runs/2026-12-06-h100-real-weights/latest.json").read_text())["rows"]
    }
    assert sp["tokens_per_s"] > real["sparsify"]["tokens_per_s"]
    trio = (
        f"{s['ours_x_saelens']:.2f}x SAELens's runner, {s['ours_x_sparsify']:.2f}x sparsify, "
        f"{s['ours_noaux_x_sparsify']:.2f}x sparsify without the"
    )
    _assert_quoted([trio], _flat("README.md"))
    _assert_quoted(
        [
            f"{s['ours_x_saelens']:.2f}x SAELens's runner and {s['ours_x_sparsify']:.2f}x sparsify, and without the "
            f"aux loss (sparsify's default objective) {s['ours_noaux_x_sparsify']:.2f}x sparsify",
            f"would have to run {tn['sae_step_s'] / left:.1f}x faster",
        ],
        _flat("docs/limitations.md"),
    )


def test_aux_heavy_anchor_run_of_2026_12_07_quoted():
    """benchmarks/training_speed/README.md's paragraph on issue 14's aux-loss anchor quotes aux_heavy/'s JSON;
    docs/limitations.md its ratio."""
    ms = _step_ms("benchmarks/training_speed/aux_heavy/training_speed.json")
    h, s, f = "768x16384_k32_heavy", "640x16384_k32", "fast_weighted_topk+aux"
    sl, sl6 = ms[h, "saelens_weighted_topk+aux"], ms[s, "saelens_weighted_topk+aux"]
    f85, f856 = ms[h, f + "[dead0.85]"], ms[s, f + "[dead0.85]"]
    hd, sd = ms[h, f + "[deterministic]"], ms[s, f + "[deterministic]"]
    rowsat = _step_ms("benchmarks/training_speed/aux_rowsat/training_speed.json")
    assert sl / f85 < 3 <= sl / ms[h, f]  # the README's reading: missed at 85% dead, met at half
    _assert_quoted(
        [
            f"{f85:.2f} ms against SAELens's step with the aux loss {sl:.2f} ms, {sl / f85:.2f}x",
            f"With half the latents dead {ms[h, f]:.2f} ms ({sl / ms[h, f]:.2f}x); without the aux loss "
            f"{ms[h, 'fast_weighted_topk']:.2f} ms",
            f"{f856:.2f} ms at 85% dead against {sl6:.2f} ms ({sl6 / f856:.2f}x; "
            f"{rowsat[s, 'saelens_weighted_topk+aux'] / rowsat[s, f + '[dead0.85]']:.2f}x in the run above), "
            f"{ms[s, f]:.2f} ms at half dead ({sl6 / ms[s, f]:.2f}x)",
            f"{hd:.2f} ms at (768, 16384, k32) heavy-tailed, half dead ({hd / ms[h, f]:.2f}x slower than the "
            f"default), {sd:.2f} ms at (640, 16384, k32) ({sd / ms[s, f]:.2f}x)",
        ],
        _flat("benchmarks/training_speed/README.md"),
    )
    _assert_quoted([f"{sl / f85:.2f}x and "], _flat("docs/limitations.md"))


def test_aux_heavy78_run_of_2026_12_07_quoted():
    """benchmarks/training_speed/README.md's paragraph on the 7/8 aux bucket quotes aux_heavy78/'s JSON (each
    bucket row selected over the columns it names); docs/limitations.md the anchor's ratio over all columns."""
    rel = "benchmarks/training_speed/aux_heavy78/training_speed.json"
    ms = _step_ms(rel)
    width = {(x["config"], x["impl"]): x.get("aux_width") for x in json.loads((ROOT / rel).read_text())["rows"]}
    h, s, f = "768x16384_k32_heavy", "640x16384_k32", "fast_weighted_topk+aux"
    b, a = f + "[dead0.85]", f + "[nocompact,dead0.85]"
    assert {width[c, b] for c in (h, s)} == {14336} and {width[c, a] for c in (h, s)} == {16384}
    assert all(abs(ms[c, b] / ms[c, a] - 1) < 0.02 for c in (h, s))  # "within about 1%"
    assert (ms[s, b] < ms[s, a]) != (ms[h, b] < ms[h, a])  # faster at one shape, slower at the other
    sl, sl6 = ms[h, "saelens_weighted_topk+aux"], ms[s, "saelens_weighted_topk+aux"]
    first = _step_ms("benchmarks/training_speed/aux_heavy/training_speed.json")
    r1 = first[h, "saelens_weighted_topk+aux"] / first[h, f + "[dead0.85]"]
    assert max(r1, sl / ms[h, a]) < 3 <= sl / ms[h, f]
    _assert_quoted(
        [
            f"At 85% dead: {ms[s, b]:.2f} ms with the bucket against {ms[s, a]:.2f} ms over all columns at (640, "
            f"16384, k32), and {ms[h, b]:.2f} against {ms[h, a]:.2f} ms at (768, 16384, k32) heavy-tailed",
            f"took {sl:.2f} ms at the anchor: {sl / ms[h, a]:.2f}x at 85% dead over all columns ({r1:.2f}x in the "
            f"run above), {sl / ms[h, f]:.2f}x with half dead ({ms[h, f]:.2f} ms); at (640, 16384, k32) {sl6:.2f} "
            f"ms, {sl6 / ms[s, a]:.2f}x at 85% dead over all columns",
            f"missed at the anchor in both runs ({r1:.2f}x, {sl / ms[h, a]:.2f}x)",
        ],
        _flat("benchmarks/training_speed/README.md"),
    )
    _assert_quoted([f"{r1:.2f}x and {sl / ms[h, a]:.2f}x in two runs on an H100"], _flat("docs/limitations.md"))


def test_table2_smollm2_second_session_of_2026_12_07_quoted():
    """table2 README section 6, the second session of 2026-12-07 (SmolLM2-135M layer 15: BatchTopK, both
    calibrations, ReLU-L1's first four): call and stage times from the device-calls and stage records; the
    ReLU-L1 final / target L0 and the pooled V quoted in the top README, docs/limitations.md and recipe.json, from
    the core JSONs, the calibration and table2.json."""
    res = ROOT / "experiments/table2/results/smollm2-135m-L15"
    dev = json.loads((res / "device_calls_2026-12-07b.json").read_text())["calls"]
    rec = {
        s: json.loads((res / f"stage_{s}.json").read_text())["calls"]
        for s in (
            "T-smollm2-135m-15-batchtopk",
            "E-smollm2-135m-15",
            "C-smollm2-135m-15-standard",
            "C-smollm2-135m-15-jumprelu",
            "T-smollm2-135m-15-standard",
        )
    }
    tb, (cs,), (cj,) = (
        rec[s]
        for s in (
            "T-smollm2-135m-15-batchtopk",
            "C-smollm2-135m-15-standard",
            "C-smollm2-135m-15-jumprelu",
        )
    )
    ts = rec["T-smollm2-135m-15-standard"][0]  # this session's; later sessions' calls follow
    e = rec["E-smollm2-135m-15"][3:7]  # the first session's three E calls come first
    assert [len(c["trained"]) for c in tb] == [5, 5] and not tb[-1]["left_for_later"]
    assert [next(k for k in ("sparse_probing", "absorption") if k in c) for c in e] == [
        "sparse_probing",
        "sparse_probing",
        "absorption",
        "sparse_probing",
    ]
    ab = e[2]["absorption"]
    assert ab["probe_source"] == "carried" and len(ab["evaluated"]) == 10 and not ab["left"]
    assert len(ts["trained"]) == 4 and _saes_with_every_eval(res, "batchtopk") == 10
    text = _flat("experiments/table2/README.md", after="**Second session of 2026-12-07")
    _assert_quoted(
        [
            f"the probes' first half ({_rng([dev[0]['wall_s'], dev[1]['wall_s']])} s each)",
            f"--max-saes 5`: {dev[4]['wall_s']:.1f} s call, stage {tb[0]['wall_s']:.1f} s",
            f"sparse probing {e[0]['wall_s']:.1f} s;",
            f"--max-saes 5`: {dev[5]['wall_s']:.1f} s call, stage {tb[1]['wall_s']:.1f} s, sparse probing "
            f"{e[1]['wall_s']:.1f} s;",
            f"--time-budget 420`: {dev[6]['wall_s']:.1f} s call, stage {e[2]['wall_s']:.1f} s (the carried "
            f"first-letter probe loaded in {ab['probe_s']:.1f} s",
            f"({dev[7]['wall_s']:.1f} s call, stage {cs['wall_s']:.1f} s, {len(cs['trained'])} short runs)",
            f"({dev[8]['wall_s']:.1f} s, {cj['wall_s']:.1f} s, {len(cj['trained'])} runs)",
            f"--max-saes 4`: {dev[9]['wall_s']:.1f} s call, stage {ts['wall_s']:.1f} s",
            f"({dev[10]['wall_s']:.1f} s call, {e[3]['wall_s']:.1f} s)",
        ],
        text,
    )
    assert 100 < dev[-1]["budget_left_s"] < 120  # "given back with 111 s left" (two lease reads apart)
    # final / target L0 of the ReLU-L1 finals (core L0 over the calibration's target of the level)
    cal = json.loads((res / "calibration_C-smollm2-135m-15-standard.json").read_text())
    ratios = _final_over_target(res, cal, "standard__*__w4096_*_cal[0-3]_s0_step_final.json")  # the first four
    assert len(ratios) == 4 and cal["final_over_calibration_l0"] == 0.133
    median = (ratios[1] + ratios[2]) / 2
    _assert_quoted(
        [
            f"ended at {ratios[0]:.1f}-{ratios[-1]:.1f} times their target L0 (median {median:.2f})",
            f"at the same coefficient is {cal['final_over_calibration_l0'] * median:.3f}",
        ],
        text,
    )


def test_table2_smollm2_third_session_of_2026_12_07_quoted():
    """table2 README section 6, the third session of 2026-12-07 (SmolLM2-135M layer 15, ReLU-L1 to 16 of 20
    SAEs): call and stage times from the device-calls and stage records, and the eight finals' L0 over their
    targets then (the 4,096-wide five and the 16,384-wide cal0-cal2) from their core JSONs and the calibration."""
    res = ROOT / "experiments/table2/results/smollm2-135m-L15"
    rec = json.loads((res / "device_calls_2026-12-07c.json").read_text())
    dev = rec["calls"]
    ts = json.loads((res / "stage_T-smollm2-135m-15-standard.json").read_text())["calls"][1:3]
    e = json.loads((res / "stage_E-smollm2-135m-15.json").read_text())["calls"][7:11]
    assert [len(c["trained"]) for c in ts] == [6, 2] and len(e) == 4
    assert [next(k for k in ("sparse_probing", "absorption") if k in c) for c in e] == [
        "sparse_probing",
        "absorption",
        "sparse_probing",
        "absorption",
    ]
    assert [len(c[k]["evaluated"]) for c, k in zip(e, ("sparse_probing", "absorption") * 2)] == [12, 12, 4, 4]
    text = _flat("experiments/table2/README.md", after="**Third session of 2026-12-07")
    _assert_quoted(
        [
            f"{['One', 'Two', 'Three', 'Four'][rec['failed_starts'] - 1]} requests got no machine and cost "
            f"{rec['failed_starts_budget_s']} s",
            f"aux-loss benchmark ({dev[2]['wall_s']:.1f} s",
            f"--max-saes 6`: {dev[11]['wall_s']:.1f} s call, stage {ts[0]['wall_s']:.1f} s",
            f"sparse probing {e[0]['wall_s']:.1f} s",
            f"--time-budget 420`: {dev[12]['wall_s']:.1f} s call, stage {e[1]['wall_s']:.1f} s",
            f"--max-saes 2`: {dev[13]['wall_s']:.1f} s call, stage {ts[1]['wall_s']:.1f} s",
            f"({dev[14]['wall_s']:.1f} s call, {e[2]['wall_s']:.1f} s)",
            f"({dev[15]['wall_s']:.1f} s call, {e[3]['wall_s']:.1f} s)",
            f"Given back with {rec['given_back_budget_left_s']} s left",
        ],
        text,
    )
    cal = json.loads((res / "calibration_C-smollm2-135m-15-standard.json").read_text())
    n4 = _final_over_target(res, cal, "standard__*__w4096_*_step_final.json")
    n16 = _final_over_target(res, cal, "standard__*__w16384_*_cal[0-2]_*_step_final.json")
    both = sorted(n4 + n16)
    assert (len(n4), len(n16)) == (5, 3) and n16[1] < n4[2]  # "the wider SAEs land nearer their targets"
    median = (both[3] + both[4]) / 2
    w4, w16 = f"{n4[0]:.2f}-{n4[-1]:.2f}", f"{n16[0]:.2f}-{n16[-1]:.2f}"
    _assert_quoted(
        [
            f"ended at {w4} times their target L0 at width 4,096 and {w16} at 16,384 (medians {n4[2]:.2f} and "
            f"{n16[1]:.2f}; {median:.2f} over the eight)",
            f"at the same coefficient is {cal['final_over_calibration_l0'] * median:.3f}",
        ],
        text,
    )


def test_table2_smollm2_fourth_session_of_2026_12_07_quoted():
    """table2 README section 6, the fourth session of 2026-12-07 (SmolLM2-135M layer 15: ReLU-L1's last two
    finals, JumpReLU's ten; 60 SAEs): call and stage times from the device-calls and stage records; the current
    SmolLM2 state quoted in the top README, FINDINGS.md, docs/limitations.md and recipe.json, from the core JSONs,
    the calibrations and table2.json."""
    res = ROOT / "experiments/table2/results/smollm2-135m-L15"
    rec = json.loads((res / "device_calls_2026-12-07d.json").read_text())
    dev = rec["calls"]
    ts = json.loads((res / "stage_T-smollm2-135m-15-standard.json").read_text())["calls"][3]
    tj = json.loads((res / "stage_T-smollm2-135m-15-jumprelu.json").read_text())["calls"]
    e = json.loads((res / "stage_E-smollm2-135m-15.json").read_text())["calls"][11:]
    kinds = ("sparse_probing", "absorption", "sparse_probing", "sparse_probing", "absorption")
    assert [next(k for k in ("sparse_probing", "absorption") if k in c) for c in e] == list(kinds)
    assert [len(c[k]["evaluated"]) for c, k in zip(e, kinds)] == [4, 4, 5, 5, 10]
    assert len(ts["trained"]) == 2 and len(ts["skipped_committed"]) == 8 and [len(c["trained"]) for c in tj] == [5, 5]
    assert len(dev) == 15 and all(c["rc"] == 0 for c in dev)
    small = [c["wall_s"] for c in dev[:10]]
    text = _flat("experiments/table2/README.md", after="**Fourth session of 2026-12-07")
    _assert_quoted(
        [
            f"{['One', 'Two', 'Three', 'Four'][rec['failed_starts'] - 1]} requests got no machine and cost "
            f"{rec['failed_starts_budget_s']} s",
            f"first half ({min(small):.1f}-{max(small):.1f} s each)",
            f"--max-saes 2`: {dev[10]['wall_s']:.1f} s call, stage {ts['wall_s']:.1f} s",
            f"`+{len(ts['skipped_committed'])} committed`",
            f"sparse probing {e[0]['wall_s']:.1f} s (four SAEs",
            f"--time-budget 200`: {dev[11]['wall_s']:.1f} s call, stage {e[1]['wall_s']:.1f} s (four SAEs)",
            f"--max-saes 5`: {dev[12]['wall_s']:.1f} s call, stage {tj[0]['wall_s']:.1f} s",
            f"sparse probing {e[2]['wall_s']:.1f} s;",
            f"--max-saes 5`: {dev[13]['wall_s']:.1f} s call, stage {tj[1]['wall_s']:.1f} s",
            f"{dev[14]['wall_s']:.1f} s call, stages {e[3]['wall_s']:.1f} s (five SAEs) and {e[4]['wall_s']:.1f} s "
            "(all ten",
            f"Given back with {rec['given_back_budget_left_s']} s left",
        ],
        text,
    )
    counts = {a: _saes_with_every_eval(res, a) for a in ("topk", "standard", "batchtopk", "jumprelu")}
    assert counts == {"topk": 20, "standard": 20, "batchtopk": 10, "jumprelu": 10}
    assert _saes_with_every_eval(res) == sum(counts.values()) == 60
    cal = json.loads((res / "calibration_C-smollm2-135m-15-standard.json").read_text())
    jcal = json.loads((res / "calibration_C-smollm2-135m-15-jumprelu.json").read_text())
    n4, n16 = (_final_over_target(res, cal, f"standard__*__w{w}_*_step_final.json") for w in (4096, 16384))
    j4, j16 = (_final_over_target(res, jcal, f"jumprelu__*__w{w}_*_step_final.json") for w in (4096, 16384))
    assert [len(x) for x in (n4, n16, j4, j16)] == [5] * 4
    med, jmed = (statistics.median(a + b) for a, b in ((n4, n16), (j4, j16)))
    q = {k: f"{x[0]:.2f}-{x[-1]:.2f}" for k, x in (("n4", n4), ("n16", n16), ("j4", j4), ("j16", j16))}
    c_n, c_j = cal["final_over_calibration_l0"], jcal["final_over_calibration_l0"]
    _assert_quoted(
        [
            f"Its finals ended at {q['j4']} times their target L0 at width 4,096 and {q['j16']} at 16,384 (median "
            f"{jmed:.2f} over the ten; final / calibration L0 at the same coefficient {c_j * jmed:.3f}, where "
            f"Gemma's sweep gave {c_j}), ReLU-L1's ten at {q['n4']} and {q['n16']} (median {med:.2f}; "
            f"{c_n * med:.3f} where Gemma gave {c_n})",
        ],
        text,
    )
    _assert_quoted(
        [
            f"so final / calibration L0 at the same coefficient is {c_n * med:.3f}",
            f"so final / calibration L0 at the same coefficient is {c_j * jmed:.3f}",
        ],
        _flat("experiments/table2/FINDINGS.md"),
    )
    rows = {
        (r["architecture"], r["proxy"]): r
        for r in json.loads((ROOT / "experiments/table2/table2.json").read_text())["rows"]
        if (r["model"], r["distortion"]) == ("smollm2-135m", "1-EV") and r["grouping"] in ("architecture", "pooled")
    }
    sp1, ab, spl = (
        "sparse_probing_sae_probes.sae.sae_top_1_test_accuracy",
        "absorption_first_letter.mean.mean_absorption_fraction_score",
        "absorption_first_letter.mean.mean_num_split_features",
    )
    bt, jr = rows["batchtopk", sp1], rows["jumprelu", sp1]
    tk, tka, tks = (rows["topk", p] for p in (sp1, ab, spl))
    ra, rs, rp = (rows["standard", p] for p in (ab, spl, sp1))
    sp, af = rows["pooled", sp1], rows["pooled", ab]
    assert (bt["n_pairs"], jr["n_pairs"]) == (1, 3) and sp["n_saes"] == af["n_saes"] == 60
    assert ra["n_saes"] == tk["n_saes"] == 20 and rp["V_ci"] == [0.0, 1.0]
    assert all(r["V_ci"][0] < 0.5 < r["V_ci"][1] for r in (sp, af, ra, rs, tk, tka, tks))
    assert ra["V_ci"][1] < 0.766 and rs["V_ci"][0] <= 0.411 <= rs["V_ci"][1] and tk["V_ci"][0] > 0.351
    assert all(r["V_ci"][0] <= paper <= r["V_ci"][1] for r, paper in ((tka, 0.480), (tks, 0.441)))
    _assert_quoted(
        [
            f"SmolLM2-135M L15, the recipe's {sp['n_saes']} SAEs with every offline eval (one seed): TopK "
            f"({tk['n_saes']} SAEs, {tk['n_pairs']} dominated pairs): Sparse Probing V {_v(tk)} (paper 0.351 below "
            f"the interval), absorption fraction {_v(tka)} and splitting {_v(tks)} (paper inside)",
            f"BatchTopK's {bt['n_saes']} SAEs give {bt['n_pairs']} dominated pair and JumpReLU's {jr['n_saes']} give "
            f"{jr['n_pairs']}, too few",
            f"ReLU-L1 ({ra['n_saes']} SAEs with checkpoints, {ra['n_pairs']} dominated pairs): absorption fraction V "
            f"{_v(ra)} (paper 0.766 above the interval) and splitting {_v(rs)} (paper inside), 0.5 inside both, "
            f"sparse probing's interval {_v(rp).split(' ', 1)[1]} (no comparison); its finals ended at {q['n4']} "
            f"times their target L0 at width 4,096 and {q['n16']} at 16,384",
            f"pooled over the model's {sp['n_saes']} SAEs ({sp['n_pairs']} dominated pairs): sparse probing V "
            f"{_v(sp)}, absorption fraction {_v(af)} (permutation p {af['p_value_V']:.3f}), 0.5 inside both",
        ],
        _flat("README.md"),
    )
    gem = ROOT / "experiments/table2/results/gemma3-270m-L9"
    gcal = json.loads((gem / "calibration_C-gemma3-270m-9-standard.json").read_text())
    assert "final_over_calibration_l0" not in gcal  # Gemma's calibration predates the ratio: made with 1
    g = _final_over_target(gem, gcal)
    assert len(g) == 10
    _assert_quoted(
        [
            f"ReLU-L1 finals ended at {q['n4']} times their target L0 with it at width 4,096 and {q['n16']} at "
            f"16,384 (Gemma's at {min(g):.2f}-{max(g):.2f} without it), its JumpReLU finals at {q['j4']} and "
            f"{q['j16']}",
            f"SmolLM2-135M layer 15 ({sum(counts.values())} SAEs with every offline eval: TopK {counts['topk']}, "
            f"ReLU-L1 {counts['standard']}, BatchTopK {counts['batchtopk']}, JumpReLU {counts['jumprelu']}",
        ],
        _flat("docs/limitations.md"),
    )
    _assert_quoted(
        [
            f"ended at {q['n4']} of its targets at width 4,096 and {q['n16']} at 16,384",
            f"ended at {q['j4']} of its targets at width 4,096 and {q['j16']} at 16,384",
        ],
        _flat("experiments/table2/recipe.json"),
    )


def test_aux_copy_run_of_2026_12_07_quoted():
    """benchmarks/training_speed/README.md's paragraph on the aux selection's masked copy written by row_topk quotes
    aux_copy/'s JSON and its two profiles (the masked_fill's and G's kernels before and after)."""
    rel = "benchmarks/training_speed/aux_copy/training_speed.json"
    ms = _step_ms(rel)
    h, c, f = "768x16384_k32_heavy", "640x16384_k32", "fast_weighted_topk+aux"

    def cmp(cfg: str, a: str, b: str) -> str:
        return f"{ms[cfg, a]:.2f} against {ms[cfg, b]:.2f} ms ({ms[cfg, b] / ms[cfg, a]:.2f}x)"

    sl, sl6 = ms[h, "saelens_weighted_topk+aux"], ms[c, "saelens_weighted_topk+aux"]
    d85, m85, k85 = f + "[dead0.85]", f + "[maskfill,dead0.85]", f + "[mask,dead0.85]"
    assert sl / ms[h, m85] < 3 <= sl / ms[h, d85]  # "met at the anchor in this run", not with the separate copy
    assert ms[h, k85] < ms[h, d85] and ms[c, k85] < ms[c, d85]  # "faster still in this call"

    def kernels(name: str) -> tuple[float, dict[str, float]]:
        runs = json.loads((ROOT / "benchmarks/training_speed/aux_copy" / name).read_text())["runs"]
        run = runs["fast_weighted_topk@768x16384k32_heavy_dead0.85"]
        by = {}
        for r in run["kernels"]:  # names cut at 110 characters: kernels of one name prefix summed
            key = next((t for t in KERNELS if r["name"].startswith(t)), r["name"])
            by[key] = by.get(key, 0.0) + r["ms_per_step"]
        return run["total_kernel_ms_per_step"], by

    KERNELS = (
        "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::(anonymous",
        "void at::native::vectorized_elementwise_kernel<8, at::native::(anonymous namespace)::masked_fill_kernel",
        "void at::native::vectorized_elementwise_kernel<4, at::native::bitwise_not_kernel_cuda",
    )
    nocast, mfill, bnot = KERNELS
    tot0, k0 = kernels("profile_before.json")
    tot1, k1 = kernels("profile_after.json")
    assert mfill not in k1 and bnot not in k1 and "memcpy128" not in k1
    _assert_quoted(
        [
            f"{sl / ms[h, d85]:.2f}x at the anchor in one later run on an H100 ({sl / ms[h, m85]:.2f}x with the "
            "separate copy in the same run)",
            f"faster at 85% dead in one H100 run ({sl / ms[h, k85]:.2f}x SAELens's at the anchor)",
        ],
        _flat("docs/limitations.md"),
    )
    _assert_quoted(
        [
            f"at {k0[nocast]:.3f} ms of {tot0:.2f} ms of kernels per step",
            f"at the anchor, 85% dead: {cmp(h, d85, m85)} with the copy written by `row_topk`;",
            f"at (640, 16384, k32), 85% dead: {cmp(c, d85, m85)};",
            f"(`nocompact`): {cmp(h, f + '[nocompact]', f + '[maskfill,nocompact]')} at the anchor, "
            f"{cmp(c, f + '[nocompact]', f + '[maskfill,nocompact]')} at (640, 16384, k32);",
            f"({sl:.2f} ms at the anchor, {sl6:.2f} ms at (640, 16384, k32) in this call): "
            f"{sl / ms[h, d85]:.2f}x at the anchor with 85% dead ({sl / ms[h, m85]:.2f}x with the separate copy), "
            f"{sl6 / ms[c, d85]:.2f}x at (640, 16384, k32) ({sl6 / ms[c, m85]:.2f}x)",
            f"{ms[h, k85]:.2f} ms at the anchor ({sl / ms[h, k85]:.2f}x SAELens's) and {ms[c, k85]:.2f} ms at "
            f"(640, 16384, k32), against {ms[h, d85]:.2f} and {ms[c, d85]:.2f} ms by default",
            f"`row_topk` {k0['_row_topk_kernel']:.3f} -> {k1['_row_topk_kernel']:.3f} ms with the copy's stores and "
            f"the `masked_fill` gone (with it the `memcpy128` kernels, {k0['memcpy128']:.3f} ms, and the "
            f"`bitwise_not` ones, {k0[bnot]:.3f} ms; kernels {tot0:.2f} -> {tot1:.2f} ms per step), but a "
            f"`torch.where` of {k1[nocast]:.3f} ms in place of the {k0[mfill]:.3f} ms `masked_fill_`",
        ],
        _flat("benchmarks/training_speed/README.md"),
    )


def test_fast_training_doc_quotes_the_aux_copy_range():
    """docs/fast_training.md's range for the masked copy written by row_topk: the four same-run ratios of aux_copy/
    (85% dead and half dead over all columns, at both shapes)."""
    ms = _step_ms("benchmarks/training_speed/aux_copy/training_speed.json")
    f = "fast_weighted_topk+aux"
    ratios = [
        ms[c, f"{f}[maskfill,{t}]"] / ms[c, f"{f}[{t}]"]
        for c in ("768x16384_k32_heavy", "640x16384_k32")
        for t in ("dead0.85", "nocompact")
    ]
    _assert_quoted([f"all columns {_rng(ratios, '.2f')}x faster at two shapes"], _flat("docs/fast_training.md"))


def test_e2e_three_hooks_noaux_run_of_2026_12_07_quoted():
    """benchmarks/e2e/README.md's section on three hooks with and without the aux loss quotes its run's JSON."""
    d = json.loads((ROOT / "benchmarks/e2e/runs/2026-12-07-h100-3hooks-noaux/latest.json").read_text())
    r = {x["row"]: x for x in d["rows"]}
    a, b = r["ours_3hooks_streams"], r["ours_3hooks_streams_noaux"]
    assert a["tokens_per_s"] < 6e5 <= b["tokens_per_s"]
    assert d["summary"]["targets_met"]["three_hooks_0p6M_noaux"] and not d["summary"]["targets_met"]["three_hooks_0p6M"]
    widths = {w for s in a["saes"] for w in s["aux_widths_in_order"] if w}
    assert min(widths) == 2048 and max(widths) == 8192 < d["settings"]["d_sae"]
    fv = lambda x: "/".join(f"{v:.4f}" for v in x["heldout_fvu"])  # noqa: E731
    _assert_quoted(
        [
            f"With the aux loss (SAELens's objective): {a['tokens_per_s']:,.0f} input tokens/s: the 0.6M target is "
            f"missed ({a['tokens_per_s'] / 6e5:.2f} of it;",
            f"{b['tokens_per_s']:,.0f} tokens/s, the target met ({b['tokens_per_s'] / 6e5:.2f}x it); the aux loss "
            f"costs the three SAEs {b['tokens_per_s'] / a['tokens_per_s']:.2f}x",
            f"per hook 2/4/6: {fv(a)} with the aux loss, {fv(b)} without",
        ],
        _flat("benchmarks/e2e/README.md"),
    )
    _assert_quoted(
        [
            f"and {a['tokens_per_s']:,.0f} on the random-init architecture (H100, 2026-12-07): not the 0.6M target, "
            f"which without the aux loss (sparsify's default objective) they meet, {b['tokens_per_s']:,.0f} in the "
            "same call"
        ],
        _flat("docs/limitations.md"),
    )
    _assert_quoted(
        [f"three hooks {a['tokens_per_s']:,.0f} tokens/s ({b['tokens_per_s']:,.0f} without the aux loss)"],
        _flat("README.md"),
    )


def test_e2e_real_weights_noaux_run_of_2026_12_07_quoted():
    """benchmarks/e2e README's real-weight same-objective section (H100, 2026-12-07, thirty-fifth session), the top
    README's e2e row and docs/limitations.md, from the two runs' JSONs."""
    d = json.loads((ROOT / "benchmarks/e2e/runs/2026-12-07-h100-real-weights-noaux/latest.json").read_text())
    r = {x["row"]: x for x in d["rows"]}
    o, n, sp, sl = (r[k] for k in ("ours", "ours_noaux", "sparsify", "saelens_speed"))
    s = d["summary"]
    assert "H100" in d["device"] and d["settings"]["gguf"] and d["settings"]["context"] == 128
    assert not any(x.get("error") for x in d["rows"])
    assert n["saes"][0]["aux_loss_coefficient"] == 0 and o["saes"][0]["aux_loss_coefficient"] > 0
    assert s["targets_met"]["x10_sparsify_same_objective"] and s["targets_met"]["x10_saelens"]
    assert not s["targets_met"]["x10_sparsify"]
    steps = n["saes"][0]["steps"]
    assert steps == o["saes"][0]["steps"]
    tn, to = n["time_split"], o["time_split"]
    earlier = json.loads((ROOT / "benchmarks/e2e/runs/2026-12-06-h100-warm-aux-fixed/latest.json").read_text())
    sp6 = next(x for x in earlier["rows"] if x["row"] == "sparsify")["tokens_per_s"]
    assert sp6 > sp["tokens_per_s"]  # the README: sparsify ran slower here
    rand = json.loads((ROOT / "benchmarks/e2e/runs/2026-12-07-h100-random-init/latest.json").read_text())
    rn, ro = (next(x for x in rand["rows"] if x["row"] == k) for k in ("ours_noaux", "ours"))
    assert "heldout_dead_fraction" not in sp  # "Sparsify's dead fraction was not recorded"
    three = json.loads((ROOT / "benchmarks/e2e/runs/2026-12-07-h100-real-weights-3hooks-aux/latest.json").read_text())
    t3 = three["rows"][0]
    assert t3["row"] == "ours_3hooks_streams" and not three["summary"]["targets_met"]["three_hooks_0p6M"]
    _assert_quoted(
        [
            f"`ours_noaux` (sparsify's default objective: no aux loss) {n['tokens_per_s']:,.0f} tokens/s after "
            f"warm-up = {s['ours_noaux_x_sparsify']:.2f}x sparsify ({sp['tokens_per_s']:,.0f})",
            f"Sparsify ran slower here than on 2026-12-06 ({sp6:,.0f}); against that rate the same `ours_noaux` "
            f"would be {n['tokens_per_s'] / sp6:.2f}x",
            f"ours (aux loss on, SAELens's objective) {o['tokens_per_s']:,.0f} tokens/s = {s['ours_x_saelens']:.2f}x "
            f"SAELens's runner ({sl['tokens_per_s']:,.0f}) and {s['ours_x_sparsify']:.2f}x sparsify at its own "
            f"default; the aux loss costs ours {s['noaux_x_ours']:.2f}x here (SAE steps {to['sae_step_s']:.1f} s "
            f"with it, {tn['sae_step_s']:.1f} s without: {1e3 * to['sae_step_s'] / steps:.2f} vs "
            f"{1e3 * tn['sae_step_s'] / steps:.2f} ms per step",
            f"Held-out FVU: ours {o['heldout_fvu']:.4f}, `ours_noaux` {n['heldout_fvu']:.4f} (20M tokens); sparsify "
            f"{sp['heldout_fvu']:.4f} and SAELens {sl['heldout_fvu']:.4f} at 2M tokens",
            f"{t3['tokens_per_s']:,.0f} input tokens/s with the aux loss (target 0.6M: not met",
            f"`ours_noaux` ended with {100 * n['saes'][0]['train_dead_fraction']:.1f}% of its latents dead",
            f"ours with the aux loss {100 * o['saes'][0]['train_dead_fraction']:.1f}%; on the random-init "
            f"architecture {100 * rn['saes'][0]['train_dead_fraction']:.1f}% against "
            f"{100 * ro['saes'][0]['train_dead_fraction']:.1f}%",
            f"so the {s['ours_noaux_x_sparsify']:.2f}x compares two runs of one objective",
            f"SAE steps {t3['time_split']['sae_step_s']:.1f} s",
        ],
        _flat("benchmarks/e2e/README.md", after="## Real weights, the same-objective ratio"),
    )
    quote = (
        f"real weights (H100, 2026-12-07): {s['ours_noaux_x_sparsify']:.2f}x sparsify without the aux loss, "
        f"{s['ours_x_saelens']:.2f}x SAELens's runner with it"
    )
    _assert_quoted(
        [quote, f"our SAE {100 * n['saes'][0]['train_dead_fraction']:.1f}% dead at the end without the aux loss"],
        _flat("README.md"),
    )
    _assert_quoted(
        [
            quote,
            f"three hooks {t3['tokens_per_s']:,.0f}",
            f"without the aux loss {100 * n['saes'][0]['train_dead_fraction']:.1f}% of our SAE's latents were dead",
        ],
        _flat("docs/limitations.md"),
    )


def test_aux_copy_second_run_of_2026_12_07_quoted():
    """benchmarks/training_speed/README.md's second run of the aux-copy rows quotes aux_copy_2/'s JSON, and the
    decisions it states follow from the numbers."""
    ms = _step_ms("benchmarks/training_speed/aux_copy_2/training_speed.json")
    h, s, f = "768x16384_k32_heavy", "640x16384_k32", "fast_weighted_topk+aux"
    sl, sl6 = ms[h, "saelens_weighted_topk+aux"], ms[s, "saelens_weighted_topk+aux"]
    d85, d856 = ms[h, f + "[dead0.85]"], ms[s, f + "[dead0.85]"]
    assert sl / d85 >= 3  # "holds in a second run"
    for c in (h, s):  # copyall slower at half and a fifth dead; mask faster at 85% dead
        assert ms[c, f + "[copyall]"] > ms[c, f] and ms[c, f + "[copyall,dead0.2]"] > ms[c, f + "[dead0.2]"]
        assert ms[c, f + "[mask,dead0.85]"] < ms[c, f + "[dead0.85]"]
    text = _flat("benchmarks/training_speed/README.md", after="Second run of these rows")
    _assert_quoted(
        [
            f"at the anchor, 85% dead: {d85:.2f} against SAELens's {sl:.2f} ms, {sl / d85:.2f}x "
            f"({sl / ms[h, f + '[maskfill,dead0.85]']:.2f}x with the separate copy, "
            f"{ms[h, f + '[maskfill,dead0.85]']:.2f} ms)",
            f"at (640, 16384, k32) {sl6 / d856:.2f}x ({d856:.2f} against {sl6:.2f} ms)",
            f"({ms[h, f + '[copyall]']:.2f} vs {ms[h, f]:.2f} ms at the anchor, {ms[s, f + '[copyall]']:.2f} vs "
            f"{ms[s, f]:.2f} at (640, 16384, k32)) and at a fifth dead ({ms[h, f + '[copyall,dead0.2]']:.2f} vs "
            f"{ms[h, f + '[dead0.2]']:.2f}, {ms[s, f + '[copyall,dead0.2]']:.2f} vs {ms[s, f + '[dead0.2]']:.2f})",
            f"{ms[h, f + '[mask,dead0.85]']:.2f} vs {d85:.2f} ms at the anchor "
            f"({sl / ms[h, f + '[mask,dead0.85]']:.2f}x SAELens's), {ms[s, f + '[mask,dead0.85]']:.2f} vs "
            f"{d856:.2f} at (640, 16384, k32)",
        ],
        text,
    )
    pt = (ROOT / "benchmarks/training_speed/aux_copy_2/pytest.txt").read_text()
    assert "3 failed, 23 passed" in pt and "8 passed" in pt
