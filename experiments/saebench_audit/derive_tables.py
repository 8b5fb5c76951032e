"""Derive the small SAEBench tables shipped in sae_rdp_plugin/audit/data/saebench/ from the raw public files.

Reads /work/shared/data/saebench (or --src) with sae_rdp_plugin.audit.readers, keeps the final SAEs (no training
checkpoints) and only the fields the audit uses, and writes CSVs + PROVENANCE.md.

    python experiments/saebench_audit/derive_tables.py [--src DIR] [--out sae_rdp_plugin/audit/data/saebench]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sae_rdp_plugin.audit.readers import read_results
from sae_rdp_plugin.io import atomic_write_text

CORE_FIELDS = [
    "core.sparsity.l0",
    "core.sparsity.l1",
    "core.reconstruction_quality.explained_variance",
    "core.reconstruction_quality.cossim",
    "core.model_performance_preservation.ce_loss_score",
    "core.shrinkage.l2_ratio",
    "basic.l2_loss",
    "basic.frac_alive",
]
PROBE_FIELDS = ["sparse_probing.sae.sae_test_accuracy"] + [
    f"sparse_probing.sae.sae_top_{k}_test_accuracy" for k in (1, 2, 5, 10, 20, 50, 100)
]
RUNS = {
    # run A: the later format (llm_top_k baselines, selected_saes_dict), final SAEs only
    "A": ["example_gemma-2-2b_layer_19_eval_results.json", "example_pythia-70m-deduped_layer_4_eval_results.json"],
    # run A2: the same code and config as A, run again with checkpoints; its final SAEs (Gemma L19 ef8)
    "A2": ["example_gemma-2-2b_layer_19_with_checkpoints_eval_results.json"],
    # run B: the earlier format (probe epochs/lr/bfloat16 in the config), one release per file
    "B": [
        "example_results_sae_bench_gemma-2-2b_sweep_topk_ctx128_ef8_0824_eval_results.json",
        "example_results_sae_bench_pythia70m_sweep_topk_ctx128_0730_eval_results.json",
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--src", type=Path, default=Path("/work/shared/data/saebench"))
    ap.add_argument("--out", type=Path, default=Path("sae_rdp_plugin/audit/data/saebench"))
    a = ap.parse_args()
    core = read_results(a.src / "SAE_Bench_Template_sae_bench_data_2024-09", include_checkpoints=False, warn=False)
    core.to_csv(a.out / "core_2024-09_final.csv", CORE_FIELDS)
    print(f"core: {len(core)} final SAEs")
    sp = a.src / "SAE_Bench_Template_sparse_probing_2024-09"
    for run, files in RUNS.items():
        t = read_results([sp / f for f in files], include_checkpoints=False, warn=False)
        cols = [c for c in PROBE_FIELDS if c in t.columns]
        t.to_csv(a.out / f"sparse_probing_run_{run}.csv", cols)
        print(f"sparse probing run {run}: {len(t)} final SAEs, {len(cols)} fields")
    sources = (a.src / "SOURCES.md").read_text()
    atomic_write_text(
        a.out / "PROVENANCE.md",
        "# Provenance of the shipped SAEBench tables\n\n"
        "Derived by `experiments/saebench_audit/derive_tables.py` from public SAEBench result files (written by the "
        "SAEBench authors, not by this project): final SAEs only (training checkpoints dropped), only the fields "
        "the audit uses. dictionary_learning `evaluate()` fields are renamed to their SAEBench core equivalents "
        "(l0 -> core.sparsity.l0, l1_loss -> core.sparsity.l1, frac_variance_explained -> "
        "core.reconstruction_quality.explained_variance, cossim -> core.reconstruction_quality.cossim, "
        "frac_recovered -> core.model_performance_preservation.ce_loss_score, l2_ratio -> core.shrinkage.l2_ratio; "
        "l2_loss and frac_alive keep basic.*). Old keys `<sweep>/resid_post_layer_<L>/trainer_<i>` are renamed to "
        "SAELens' release `sae_bench_<sweep>` and id `blocks.<L>.hook_resid_post__trainer_<i>`.\n\n"
        "- `core_2024-09_final.csv`: all files of SAE_Bench_Template_sae_bench_data_2024-09/.\n"
        "- `sparse_probing_run_A.csv`: example_gemma-2-2b_layer_19_eval_results.json + "
        "example_pythia-70m-deduped_layer_4_eval_results.json (bias_in_bios, 5 classes).\n"
        "- `sparse_probing_run_A2.csv`: final SAEs of example_gemma-2-2b_layer_19_with_checkpoints_eval_results.json "
        "(same config as A, a separate run).\n"
        "- `sparse_probing_run_B.csv`: "
        "example_results_sae_bench_gemma-2-2b_sweep_topk_ctx128_ef8_0824_eval_results.json + "
        "example_results_sae_bench_pythia70m_sweep_topk_ctx128_0730_eval_results.json (earlier probe code).\n\n"
        "The runs evaluate the same SAEs and disagree (run-to-run noise of the probe), so they are never mixed.\n\n"
        "## The source note (SOURCES.md), verbatim\n\n" + sources.replace("\n# ", "\n### "),
    )


if __name__ == "__main__":
    main()
