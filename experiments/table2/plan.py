#!/usr/bin/env python3
"""Expand ``recipe.json`` into the list of SAEs, the device stages and their GPU-time estimate.

Writes ``plan.json`` (every SAE with its stage, and the estimate's inputs) and ``PLAN.md`` (the same as
tables) next to this file. Nothing here trains: the lead's training driver runs the stages.

SAE count (per model-layer and seed): sum over architectures of widths x levels x checkpoints; a
checkpoint is the same run saved at a fraction of its tokens (SAEBench's suites keep such checkpoints as
separate SAEs), so it costs no extra training.

GPU-time model, every rate read from the committed benchmark files at run time:

* fast training step (``topk``, ``batchtopk``: ``sae_rdp_plugin.fast``): SAE-token rate of the
  ``ours_4saes`` row of ``benchmarks/e2e/latest.json`` (4 SAEs of 16,384 latents, k 16/32/64/128, on one
  Gemma-3-270M hook, H200): ``tokens x n_saes / sae_step_s``; without that row, the ``step_only`` row
  (one SAE, k 32);
* SAELens training step (``standard``, ``jumprelu``, no fast path): ``tokens_per_s`` of the
  ``640x16384_k32`` / ``saelens_topk`` row of ``benchmarks/training_speed/training_speed.json`` (H100; the
  dense encoder / decoder matmuls dominate this step for every SAELens architecture);
* model forward: ``forward_only`` row of ``benchmarks/e2e/latest.json`` (blocks 0..6 of Gemma-3-270M),
  scaled by 7 / (layer + 1) blocks; SmolLM2 blocks are counted as Gemma blocks (similar width);
* 4,096-latent SAEs are charged the 16,384-latent rate (an upper bound);
* one activation pass per (architecture, width) group of 5 SAEs (all levels trained on the same
  activations, as the ``ours_4saes`` row does);
* evals: ``core`` from ``eval_seconds`` of the SAELens ``run_evals`` + held-out pass of
  ``experiments/gemma3_270m/gpu_run/results.json`` (median, H100); ``sparse_probing_sae_probes`` per SAE
  from ``experiments/gemma3_270m/probing_run/results.json`` (median seconds per SAE for its 12 datasets,
  scaled to the subset size), plus its activation pass once per model-layer; ``absorption`` (with feature
  splitting) has no measurement in this repository: stage ``E0`` measures it on two SAEs before the rest is
  planned.

    .venv/bin/python experiments/table2/plan.py [--shards .carry/corpus_table2_gemma3/shards]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from sae_rdp_plugin.lm.activations import layer_of_hook

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MIB = 1 << 20


def load(p: Path) -> dict:
    return json.loads(p.read_text())


def expand(recipe: dict) -> list[dict]:
    """Every SAE of the recipe (optional hooks and seeds excluded), WSAE arm included."""
    saes = []
    for m in recipe["models"]:
        for hook in m["hooks"]:
            for seed in recipe["seeds"]:
                for arch, a in recipe["architectures"].items():
                    levels = a["levels"] if isinstance(a["levels"], list) else [f"cal{i}" for i in range(5)]
                    for width in recipe["widths"]:
                        for lev in levels:
                            for frac in a["checkpoint_fractions"]:
                                saes.append(
                                    {
                                        "id": f"{m['model']}/{hook}/{arch}/w{width}/{a['sparsity_field']}={lev}/"
                                        f"s{seed}/t{frac:g}",
                                        "model": m["model"],
                                        "hook": hook,
                                        "architecture": arch,
                                        "width": width,
                                        a["sparsity_field"]: lev,
                                        "seed": seed,
                                        "tokens": int(recipe["tokens_per_final_sae"] * frac),
                                        "checkpoint_of_final": frac < 1.0,
                                        "stage": f"T-{m['model']}-{layer_of(hook)}-{arch}",
                                    }
                                )
    w = recipe["wsae_arm"]
    for v in w["variants"]:
        cap = {"variance_cap_quantile": v["variance_cap_quantile"]} if "variance_cap_quantile" in v else {}
        for seed in w["seeds"]:
            saes.append(
                {
                    "id": f"{w['model']}/{w['hook']}/{v['architecture']}/w{w['width']}/alpha={v['alpha']}"
                    + (f"/capq={cap['variance_cap_quantile']:g}" if cap else "")
                    + f"/s{seed}",
                    "model": w["model"],
                    "hook": w["hook"],
                    "architecture": v["architecture"],
                    "width": w["width"],
                    "k": w["k"],
                    "alpha": v["alpha"],
                    **cap,
                    "seed": seed,
                    "tokens": w["tokens"],
                    "checkpoint_of_final": False,
                    "stage": "W-wsae",
                }
            )
    return saes


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def capped_dimensions(d: int, q: float) -> int:
    """How many of d variances lie above their q-quantile (torch.quantile's linear interpolation between the
    order statistics v_(0) <= ... <= v_(d-1) at h = q (d - 1)), i.e. are lowered by the cap: those above
    v_(floor(h)), d - 1 - floor(h) of them (distinct variances assumed)."""
    return d - 1 - math.floor(q * (d - 1))


def rates() -> dict:
    e2e = load(ROOT / "benchmarks/e2e/latest.json")
    rows = {r["row"]: r for r in e2e["rows"]}
    if "ours_4saes" in rows:  # several SAEs (k 16..128) on one stream: the mixed-k rate the sweep sees
        four = rows["ours_4saes"]
        fast = four["tokens"] * four["n_saes"] / four["time_split"]["sae_step_s"]
        fast_row = "ours_4saes"
    else:  # one SAE, k 32, step only
        fast, fast_row = rows["step_only"]["tokens_per_s"], "step_only"
    fwd = rows["forward_only"]
    ts = load(ROOT / "benchmarks/training_speed/training_speed.json")
    sl = next(r for r in ts["rows"] if r["config"] == "640x16384_k32" and r["impl"] == "saelens_topk")
    g = load(ROOT / "experiments/gemma3_270m/gpu_run/results.json")
    core_s = [x["eval_seconds"] for part in ("main", "sweep") for x in g[part].values()]
    pr = load(ROOT / "experiments/gemma3_270m/probing_run/results.json")["sparse_probing"]
    probe_s = [v["seconds"] for v in pr["saes"].values()]
    return {
        "fast_sae_tokens_per_s": fast,
        "fast_source": f"benchmarks/e2e/latest.json row {fast_row} ({e2e['device']}, {e2e['date']})",
        "saelens_tokens_per_s": sl["tokens_per_s"],
        "saelens_source": "benchmarks/training_speed/training_speed.json row 640x16384_k32 saelens_topk "
        f"({ts['env'].get('device', 'see file')})",
        "forward_tokens_per_s_7_blocks": fwd["tokens_per_s"],
        "forward_source": "benchmarks/e2e/latest.json row forward_only (blocks 0..6)",
        "core_eval_s_per_sae": statistics.median(core_s),
        "core_source": "experiments/gemma3_270m/gpu_run/results.json eval_seconds (median of 15 SAEs)",
        "probe_s_per_sae_per_dataset": statistics.median(probe_s) / len(pr["datasets_run"]),
        "probe_activation_s_per_dataset": sum(pr["activation_seconds"].values()) / len(pr["datasets_run"]),
        "probe_baseline_wall_s_per_dataset": pr["baseline_wall_s"] / len(pr["datasets_run"]),
        "probe_source": "experiments/gemma3_270m/probing_run/results.json sparse_probing (12 datasets)",
    }


def layer_of(hook: str) -> int:
    """The block of a recipe hook (``blocks.9.hook_resid_post`` -> 9); the recipe hooks only residual blocks."""
    layer = layer_of_hook(hook)
    if layer is None:
        raise SystemExit(f"error: recipe hook {hook!r} is not a block hook (blocks.N....)")
    return layer


def estimate(recipe: dict, saes: list[dict], r: dict, n_probe: int) -> list[dict]:
    stages = []
    fast = {"topk", "batchtopk", "weighted_topk"}
    by_stage: dict[str, list[dict]] = {}
    for s in saes:
        by_stage.setdefault(s["stage"], []).append(s)
    for m in recipe["models"]:
        for hook in m["hooks"]:
            fwd_rate = r["forward_tokens_per_s_7_blocks"] * 7 / (layer_of(hook) + 1)
            for arch, a in recipe["architectures"].items():
                if isinstance(a["levels"], str):
                    cal = a["calibration"]
                    n_cal = len(cal["grid"]) * len(recipe["widths"])
                    secs = n_cal * cal["tokens"] / r["saelens_tokens_per_s"] + len(recipe["widths"]) * (
                        cal["tokens"] / fwd_rate
                    )
                    stages.append(
                        {
                            "stage": f"C-{m['model']}-{layer_of(hook)}-{arch}",
                            "what": f"calibrate {a['sparsity_field']} ({n_cal} short runs of {cal['tokens']:,} tokens)",
                            "n_saes": n_cal,
                            "gpu_s": secs,
                        }
                    )
            for arch in recipe["architectures"]:
                group = by_stage.get(f"T-{m['model']}-{layer_of(hook)}-{arch}", [])
                finals = [s for s in group if not s["checkpoint_of_final"]]
                rate = r["fast_sae_tokens_per_s"] if arch in fast else r["saelens_tokens_per_s"]
                train = sum(s["tokens"] for s in finals) / rate
                passes = len(recipe["widths"])
                fwd = passes * recipe["tokens_per_final_sae"] / fwd_rate
                stages.append(
                    {
                        "stage": f"T-{m['model']}-{layer_of(hook)}-{arch}",
                        "what": f"train {len(finals)} {arch} SAEs x {recipe['tokens_per_final_sae']:,} tokens"
                        + (f" (+{len(group) - len(finals)} checkpoints)" if len(group) > len(finals) else ""),
                        "n_saes": len(group),
                        "gpu_s": train + fwd,
                    }
                )
            n = sum(1 for s in saes if s["model"] == m["model"] and s["hook"] == hook and s["stage"] != "W-wsae")
            stages.append(
                {
                    "stage": f"E-{m['model']}-{layer_of(hook)}",
                    "what": f"core + sparse_probing_sae_probes ({n_probe} datasets) on {n} SAEs; absorption: see E0",
                    "n_saes": n,
                    "gpu_s": n * (r["core_eval_s_per_sae"] + n_probe * r["probe_s_per_sae_per_dataset"])
                    + n_probe * r["probe_activation_s_per_dataset"],
                    "device_cpu_s": n_probe * r["probe_baseline_wall_s_per_dataset"],
                }
            )
    w = [s for s in saes if s["stage"] == "W-wsae"]
    if w:
        fwd_rate = r["forward_tokens_per_s_7_blocks"] * 7 / (layer_of(w[0]["hook"]) + 1)
        stages.append(
            {
                "stage": "W-wsae",
                "what": f"train {len(w)} weighted_topk SAEs (WSAE arm) + core + probing",
                "n_saes": len(w),
                "gpu_s": sum(s["tokens"] for s in w) / r["fast_sae_tokens_per_s"]
                + w[0]["tokens"] / fwd_rate
                + len(w) * (r["core_eval_s_per_sae"] + n_probe * r["probe_s_per_sae_per_dataset"]),
            }
        )
    stages.insert(
        0,
        {
            "stage": "E0",
            "what": "absorption + feature splitting on 2 SAEs (topk k=32, standard), to measure its cost",
            "n_saes": 2,
            "gpu_s": None,
        },
    )
    return stages


def cap_lines(recipe: dict) -> list[str]:
    """One PLAN.md line per WSAE variant with a variance cap: where the cap falls among the d_in variances."""
    w = recipe["wsae_arm"]
    d = next(m["d_in"] for m in recipe["models"] if m["model"] == w["model"])
    lines = []
    for v in w["variants"]:
        if "variance_cap_quantile" in v:
            q = v["variance_cap_quantile"]
            n = capped_dimensions(d, q)
            lines += [
                f"Massive-activation safe WSAE variant: {v['architecture']}, alpha {v['alpha']:g}, every variance "
                f"capped at its {q:g}-quantile before the power (variance_cap_quantile); with d_in = {d} the cap lies "
                f"between the {ordinal(n + 1)}- and {ordinal(n)}-largest variances "
                f"(h = q (d_in - 1) = {q * (d - 1):.2f}), so the {n} largest dimensions share one weight.",
                "",
            ]
    return lines


def spent(results: Path) -> dict[str, float]:
    """GPU seconds of every device call recorded so far per stage (``results/<model>-L<layer>/stage_*.json``'s
    ``gpu_s_total``; calls that were redone or whose SAEs were archived count too: it is what the stage cost)."""
    out: dict[str, float] = {}
    for f in sorted(results.glob("*-L*/stage_*.json")) if results.is_dir() else []:
        d = load(f)
        out[d["stage"]] = out.get(d["stage"], 0.0) + float(d.get("gpu_s_total", 0.0))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", default=".carry/corpus_table2_gemma3/shards", help="travel shards (for the call count)")
    ap.add_argument("--tree-mib", type=float, default=8.0, help="working tree carried by every device call")
    args = ap.parse_args(argv)
    recipe = load(HERE / "recipe.json")
    n_probe = len(load(HERE / "probe_datasets.json")["subset"])
    saes = expand(recipe)
    r = rates()
    stages = estimate(recipe, saes, r, n_probe)
    per_ml: dict[str, int] = {}
    for s in saes:
        if s["stage"] != "W-wsae":
            per_ml[f"{s['model']} {s['hook']}"] = per_ml.get(f"{s['model']} {s['hook']}", 0) + 1
    shards = ROOT / args.shards / "shards.json"
    travel = None
    if shards.is_file():
        from sae_rdp_plugin.lm.corpus import plan_calls

        idx = load(shards)
        calls = plan_calls(idx, int((64 - args.tree_mib - 1) * MIB))
        travel = {"shards": len(idx["shards"]), "mib": round(idx["total_bytes"] / MIB, 1), "calls": len(calls)}
    plan = {
        "n_saes": len(saes),
        "n_saes_per_model_layer": per_ml,
        "rates": r,
        "stages": stages,
        "total_gpu_s": sum(s["gpu_s"] for s in stages if s["gpu_s"] is not None),
        "corpus_travel": travel,
        "saes": saes,
    }
    (HERE / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    lines = [
        "# table2: SAEs, stages and GPU-time estimate (generated by plan.py from recipe.json)",
        "",
        f"{len(saes)} SAEs in all; per model-layer (seed 0, checkpoints included): "
        + ", ".join(f"{k}: {v}" for k, v in per_ml.items())
        + f"; WSAE arm: {sum(1 for s in saes if s['stage'] == 'W-wsae')}.",
        "",
        *cap_lines(recipe),
        "Rates used (read from the benchmark and result files named); the last column sums the device calls recorded "
        "in `results/<model>-L<layer>/stage_*.json` (redone calls count; `results/archive/` does not):",
        "",
        f"* fast step (topk, batchtopk, weighted_topk): {r['fast_sae_tokens_per_s'] / 1e6:.2f}M SAE-tokens/s "
        f"({r['fast_source']})",
        f"* SAELens step (standard, jumprelu): {r['saelens_tokens_per_s'] / 1e6:.2f}M tokens/s ({r['saelens_source']})",
        f"* forward, blocks 0..6: {r['forward_tokens_per_s_7_blocks'] / 1e6:.2f}M tokens/s ({r['forward_source']}), "
        "scaled by 7 / (layer + 1)",
        f"* core eval: {r['core_eval_s_per_sae']:.1f} s per SAE ({r['core_source']})",
        f"* sparse probing: {r['probe_s_per_sae_per_dataset']:.2f} s per SAE and dataset, "
        f"{r['probe_activation_s_per_dataset']:.1f} s of activations and "
        f"{r['probe_baseline_wall_s_per_dataset']:.0f} s of device-CPU baseline per dataset ({r['probe_source']})",
        "* absorption (+ feature splitting): no measurement in this repository; stage E0 measures it",
        "",
        "| stage | what | SAEs | GPU min (estimate) | GPU min spent so far |",
        "|---|---|---:|---:|---:|",
    ]
    used = spent(HERE / "results")
    for s in stages:
        est = "not measured" if s["gpu_s"] is None else f"{s['gpu_s'] / 60:.1f}"
        got = f"{used[s['stage']] / 60:.1f}" if s["stage"] in used else "-"
        lines.append(f"| {s['stage']} | {s['what']} | {s['n_saes']} | {est} | {got} |")
    lines += [
        "",
        f"Total: {plan['total_gpu_s'] / 60:.0f} GPU minutes (training + core + probing; absorption, model "
        "staging and start-up not included).",
    ]
    man = HERE / "corpus_manifest.json"
    if man.is_file():
        for b in load(man)["builds"]:
            m, per_sae = b["manifest"], recipe["tokens_per_final_sae"]
            lines.append(
                f"Corpus {m['tokenizer']}: {m['train_tokens']:,} training tokens; a final SAE's {per_sae:,} tokens "
                f"are {per_sae / m['train_tokens']:.2f} passes over them."
            )
    if travel:
        lines.append(
            f"Corpus travel: {travel['shards']} shards, {travel['mib']} MiB -> {travel['calls']} device call(s) "
            f"with a {args.tree_mib:g} MiB working tree."
        )
    (HERE / "PLAN.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
