"""The absorption stage's default worker count is bounded by host memory at SAEBench's k-sparse scoring peak
(absorption_stage.default_workers), with the per-word bytes taken from the committed CPU measurement."""

import importlib
import json
import types
from pathlib import Path

import pytest
from test_table2_evals import _word_tokenizer

pytest.importorskip("sae_bench")

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30


@pytest.fixture
def ab(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "table2"))  # absorption_stage imports its neighbours
    return importlib.import_module("absorption_stage")


def test_row_bytes_constant_is_the_measured_one(ab):
    rec = json.loads((ROOT / "experiments/table2/diagnostics/absorption_memory.json").read_text())
    assert rec["max_k"] == 10 and len(rec["bytes_per_row"]) >= 2
    for b in rec["bytes_per_row"]:
        assert abs(b - ab.EVAL_ROW_BYTES_K10) <= 0.1 * ab.EVAL_ROW_BYTES_K10, (b, ab.EVAL_ROW_BYTES_K10)


def test_batched_row_bytes_constant_is_the_measured_one(ab):
    """The batched scoring's bytes per word: the committed CPU measurement at its largest size (the fixed costs,
    its run-time check with SAEBench's function among them, spread over the most words)."""
    rec = json.loads((ROOT / "experiments/table2/diagnostics/absorption_memory_batched.json").read_text())
    assert rec["max_k"] == 10 and rec["scoring"] == "batched"
    largest = max(rec["runs"], key=lambda r: r["rows"])
    assert largest["rows"] >= 20000 and largest["scoring"] == "batched"
    per_row = largest["peak_growth_bytes"] / largest["rows"]
    assert abs(per_row - ab.EVAL_ROW_BYTES_K10_BATCHED) <= 0.1 * ab.EVAL_ROW_BYTES_K10_BATCHED, per_row
    # and well below SAEBench's row-by-row scoring, measured the same way
    assert per_row < 0.3 * ab.EVAL_ROW_BYTES_K10


def test_batched_scoring_lifts_the_worker_cap(ab, monkeypatch):
    monkeypatch.setattr(ab.os, "cpu_count", lambda: 16)
    rows = round(0.2 * 139585)  # Gemma-3's test words
    # by hand: 27,917 x 60 KiB = 1.60 GiB + 3 GiB base = 4.60 GiB per worker; 102.4 GiB holds 22: the CPU rule, 14
    assert ab.worker_peak_bytes(rows, 10, "batched") == 3 * GIB + rows * 60 * 1024
    assert ab.default_workers(rows, 10, 128 * GIB, "batched") == 14
    assert ab.default_workers(rows, 10, 31 * GIB, "batched") == 5  # 24.8 GiB / 4.60 GiB
    # the stage's scoring: batched unless SAEBench's function is forced, whose cap stays 9
    monkeypatch.delenv(ab.SCORING_ENV, raising=False)
    assert ab.stage_scoring() == "batched"
    monkeypatch.setenv(ab.SCORING_ENV, "SAEBench")
    assert ab.stage_scoring() == "saebench"
    assert ab.default_workers(rows, 10, 128 * GIB, ab.stage_scoring()) == 9


def test_workers_capped_by_memory(ab, monkeypatch):
    monkeypatch.setattr(ab.os, "cpu_count", lambda: 16)
    assert ab.default_workers() == 14  # no estimate: the CPU rule alone
    # Gemma-3's alphabetic vocabulary (139,585 words, 20% test): by hand, 27,917 x 300 KiB = 7.99 GiB + 3 GiB
    # base = 10.99 GiB per worker; 0.8 x 128 GiB = 102.4 GiB holds 9 of them
    rows = round(0.2 * 139585)
    assert ab.worker_peak_bytes(rows) == 3 * GIB + rows * 300 * 1024
    assert ab.default_workers(rows, 10, 128 * GIB) == 9
    assert ab.default_workers(rows, 5, 64 * GIB) == 7  # max_k 5: half the rows' bytes (4.0 GiB + 3 GiB each)
    assert ab.default_workers(rows, 10, 8 * GIB) == 1  # never fewer than one
    # the machine's memory from SAE_RDP_HOST_MEMORY_GIB where set (the device's RAM grows as it is used: MemTotal
    # starts far below it), as the stage reads it when no host_bytes is given
    monkeypatch.setenv("SAE_RDP_HOST_MEMORY_GIB", "128")
    assert ab.default_workers(rows, 10) == 9
    monkeypatch.setenv("SAE_RDP_HOST_MEMORY_GIB", "31")  # what MemTotal read at the start of a growing machine
    assert ab.default_workers(rows, 10) == 2
    assert ab.default_workers(100, 10, 1 << 50) == 14  # memory to spare: the CPU rule
    monkeypatch.setattr(ab.os, "cpu_count", lambda: 2)
    assert ab.default_workers(rows, 10, 128 * GIB) == 1


def test_eval_rows_estimate_counts_the_alphabetic_vocabulary(ab):
    # the word tokenizer: "has", "the", "first", "letter", 52 single letters and random words up to 10 longer
    # words per first letter (so 9 for h, t, f and l) are alphabetic, ":" and the special tokens are not:
    # 4 + 52 + 256 = 312 words, 20% of them the test split
    model = types.SimpleNamespace(tokenizer=_word_tokenizer(10))
    assert len(model.tokenizer.vocab) == 9 + 52 + 256
    assert ab.eval_rows_estimate(model) == round(0.2 * 312)
    assert ab.eval_rows_estimate(model, vocab_sample=50) == 10


def test_measurement_script_refuses_a_bad_out_before_measuring(tmp_path, capsys):
    """diagnostics/absorption_memory.py: --out in a missing folder or onto a folder exits 2 with one error line,
    before any measurement, writing nothing."""
    from tests.experiments.script_loader import load_script

    am = load_script("absorption_memory", "experiments/table2/diagnostics/absorption_memory.py")
    for out, words in ((tmp_path / "no" / "m.json", "its folder does not exist"), (tmp_path, "is a folder")):
        assert am.main(["--rows", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error: --out") and words in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_worker_threads(ab):
    """One thread per worker whatever the worker count and device (scikit-learn's small fits ran slower with all of
    them, and their bits depend on the count); the limits hold inside the block, torch's count is restored after."""
    import torch
    from threadpoolctl import threadpool_info

    assert ab.WORKER_THREADS == 1
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with ab._thread_limits(ab.WORKER_THREADS):
            assert torch.get_num_threads() == 1
            assert all(pool["num_threads"] == 1 for pool in threadpool_info())
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_sklearn_fit_bits_depend_on_blas_threads_or_not(ab):
    """Why the count is fixed: a k-sparse probe's fit (SAEBench's LogisticRegression on ~100k rows) under the
    stage's thread limit gives the same coefficients every time; under another count they may differ in their last
    bits (not asserted: it depends on the BLAS and the CPUs)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    x = (np.abs(rng.standard_normal((100_000, 10))) * (rng.random((100_000, 10)) < 0.3)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.standard_normal(100_000) > 0.5).astype(np.int64)
    with threadpool_limits(ab.WORKER_THREADS):
        fits = [LogisticRegression(max_iter=500, class_weight="balanced").fit(x, y).coef_ for _ in range(2)]
    assert fits[0].tobytes() == fits[1].tobytes()
