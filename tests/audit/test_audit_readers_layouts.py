"""Readers on the layouts a SAEBench user has: SAELens-6 cfgs (model and layer under metadata), .jsonl,
an unreadable file beside good ones, training checkpoints, rdp_audit's own outputs in the folder."""

import json
import warnings

import numpy as np
import pytest

from sae_rdp_plugin.audit.readers import filter_checkpoints, read_results
from sae_rdp_plugin.errors import SaeRdpError


def saelens6_output(layer: int, i: int, sid: str | None = None, metrics: dict | None = None) -> dict:
    """A SAEBench core output of a Gemma Scope SAE as SAEBench writes it with SAELens 6 (the cfg's model
    and hook sit under sae_cfg_dict.metadata; no hook_layer)."""
    return {
        "eval_type_id": "core",
        "eval_config": {},
        "eval_id": f"id{layer}_{i}",
        "datetime_epoch_millis": 1,
        "eval_result_metrics": metrics or {"sparsity": {"l0": 10.0 * (i + 1)}},
        "sae_bench_commit_hash": "h",
        "sae_lens_id": sid or f"layer_{layer}/width_16k/average_l0_{10 * (i + 1)}",
        "sae_lens_release_id": "gemma-scope-2b-pt-res",
        "sae_lens_version": "6.54.0",
        "sae_cfg_dict": {
            "architecture": "jumprelu",
            "d_in": 2304,
            "d_sae": 16384,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": False,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": {
                "sae_lens_version": "6.54.0",
                "model_name": "gemma-2-2b",
                "hook_name": f"blocks.{layer}.hook_resid_post",
                "hook_head_index": None,
                "prepend_bos": True,
                "context_size": 1024,
            },
        },
    }


def test_saelens6_metadata_gives_model_and_layer(tmp_path):
    for layer in (5, 12, 19):
        for i in range(6):
            (tmp_path / f"core_{layer}_{i}.json").write_text(json.dumps(saelens6_output(layer, i)))
    t = read_results(tmp_path, warn=False)
    assert len(t) == 18
    assert sorted(set(t.meta["layer"])) == [5, 12, 19]
    assert set(t.meta["model"]) == {"gemma-2-2b"}
    assert len(t.where(layer=12)) == 6
    # hook_layer, where a cfg has it, wins over the hook name
    o = saelens6_output(7, 0)
    o["sae_cfg_dict"]["metadata"]["hook_layer"] = 8
    (tmp_path / "x.json").write_text(json.dumps(o | {"sae_lens_id": "other"}))
    assert read_results(tmp_path / "x.json", warn=False).meta["layer"] == [8]


def test_jsonl_read_and_foreign_jsonl_skipped_with_warning(tmp_path):
    lines = [json.dumps(saelens6_output(5, i)) for i in range(3)]
    (tmp_path / "core.jsonl").write_text("\n".join(lines) + "\n\n")
    (tmp_path / "corpus.jsonl").write_text('{"text": "hello"}\n')
    with pytest.warns(UserWarning, match=r"skipped .*corpus\.jsonl: not a SAEBench result file"):
        t = read_results(tmp_path)
    assert len(t) == 3 and t.meta["layer"] == [5, 5, 5]
    np.testing.assert_array_equal(np.sort(t.column("sparsity.l0")), [10.0, 20.0, 30.0])


def test_unreadable_file_in_a_folder_warns_and_the_rest_is_read(tmp_path):
    (tmp_path / "good.csv").write_text("release,sae_id,layer,core.sparsity.l0\nr,a,3,1.5\nr,b,3,2.5\n")
    (tmp_path / "bad.csv").write_text("release,sae_id,core.sparsity.l0\nr,c,not-a-number\n")
    (tmp_path / "broken.json").write_text("{oops")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = read_results(tmp_path)
    msgs = [str(w.message) for w in caught]
    assert any("bad.csv" in m and "not a number" in m for m in msgs)
    assert any("broken.json" in m and "malformed JSON" in m for m in msgs)
    assert t.keys == ["r/a", "r/b"]
    assert any("bad.csv" in r for r in t.report)
    with pytest.raises(SaeRdpError, match="bad.csv"):  # named file, or strict: still an error
        read_results(tmp_path / "bad.csv")
    with pytest.raises(SaeRdpError, match="bad.csv"):
        read_results(tmp_path, strict=True, warn=False)


def test_checkpoint_filter(tmp_path):
    ids = ["blocks.19.hook_resid_post__trainer_3", "blocks.19.hook_resid_post__trainer_3_step_488"]
    ids += ["blocks.19.hook_resid_post__trainer_4_step_final"]
    for i, sid in enumerate(ids):
        (tmp_path / f"{i}.json").write_text(json.dumps(saelens6_output(19, i, sid=sid)))
    old = {
        "custom_eval_results": {
            "gemma-2-2b_sweep_topk_ctx128_ef8_0824/resid_post_layer_19_checkpoints/trainer_3_step_48": {
                "sae_top_1_test_accuracy": 0.7
            },
            "gemma-2-2b_sweep_topk_ctx128_ef8_0824/resid_post_layer_19/trainer_3": {"sae_top_1_test_accuracy": 0.8},
        },
        "custom_eval_config": {},
    }
    (tmp_path / "old_sp.json").write_text(json.dumps(old))
    full = read_results(tmp_path, checkpoints="all", warn=False)
    ck = {k for k, c in zip(full.keys, full.meta["checkpoint"]) if c}
    assert ck == {
        "gemma-scope-2b-pt-res/blocks.19.hook_resid_post__trainer_3_step_488",
        "sae_bench_gemma-2-2b_sweep_topk_ctx128_ef8_0824/blocks.19.hook_resid_post__trainer_3_step_48",
    }
    assert set(read_results(tmp_path, checkpoints="only", warn=False).keys) == ck
    final = read_results(tmp_path, checkpoints="exclude", warn=False)
    assert set(final.keys) == set(full.keys) - ck and len(final) == 3
    assert read_results(tmp_path, include_checkpoints=False, warn=False).keys == final.keys
    assert filter_checkpoints(full, "only").keys == sorted(ck)
    with pytest.raises(SaeRdpError, match="valid: exclude, only, all"):
        read_results(tmp_path, checkpoints="some")


def test_rdp_audit_outputs_in_the_folder_are_skipped_silently(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(saelens6_output(5, 0)))
    sub = tmp_path / "rdp_audit"
    sub.mkdir()
    own = saelens6_output(5, 0) | {"eval_type_id": "rdp_audit", "sae_lens_id": None, "sae_cfg_dict": None}
    own["eval_result_metrics"] = {"sweep": {"n_saes": 9}}
    (sub / "rdp_audit_L5_eval_results.json").write_text(json.dumps(own))
    (sub / "rdp_audit_summary.json").write_text(json.dumps({"rows": [], "skipped_sweeps": [], "reader_report": []}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = read_results(tmp_path)
    assert t.keys == ["gemma-scope-2b-pt-res/layer_5/width_16k/average_l0_10"] and t.report == []
