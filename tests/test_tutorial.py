"""docs/tutorial.ipynb runs from top to bottom (in a fresh kernel, in an empty folder) and writes what it says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("sae_bench")

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"


def test_tutorial_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    out = tmp_path / "tutorial_out"
    printed = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream"
    )
    # flow 1: one line per audited metric, with a verdict
    assert "sae_top_1_test_accuracy: " in printed and "cossim: " in printed
    # flow 2: SAEBench-format outputs of both evals, and the audit figure shown inline
    audits = sorted((out / "eval_results" / "rdp_audit").glob("rdp_audit_gemma-2-2b_L*_eval_results.json"))
    assert len(audits) == 5
    assert json.loads(audits[0].read_text())["eval_type_id"] == "rdp_audit"
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    synth = sorted((out / "eval_results" / "rdp_synthetic").glob("*_eval_results.json"))
    assert len(synth) == 3 and all(json.loads(f.read_text())["eval_type_id"] == "rdp_synthetic" for f in synth)
    # flow 3: a stock SAELens SAE with its gamma
    cfg = json.loads((out / "wsae" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["d_in"] == 64
    assert (out / "wsae" / "gamma.safetensors").is_file()
    assert "TopKSAE: d_in 64, d_sae 256, k 8" in printed
