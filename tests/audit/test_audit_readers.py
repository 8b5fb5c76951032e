"""Readers of SAEBench outputs: acceptance fixtures, old formats, CSV, shipped tables, errors."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from sae_rdp_plugin.audit.readers import BUNDLED_DIR, _dl_key, read_bundled, read_results
from sae_rdp_plugin.errors import SaeRdpError

SHARED = Path("/work/shared/data/saebench")
ACC = SHARED / "SAEBench_acceptance_test_data_v0.6.0"
OLD = SHARED / "SAE_Bench_Template_sae_bench_data_2024-09"
OLD_SP = SHARED / "SAE_Bench_Template_sparse_probing_2024-09"
needs_shared = pytest.mark.skipif(not ACC.exists(), reason="shared SAEBench data not present")


def _outputs(obj):
    """Independent walk: every BaseEvalOutput in a fixture file (top-level or wrapped by name)."""
    if "eval_result_metrics" in obj:
        yield obj
    elif all(isinstance(v, dict) and "eval_result_metrics" in v for v in obj.values()):
        yield from obj.values()


@needs_shared
def test_acceptance_fixtures_every_metric():
    t = read_results(ACC, warn=False)
    n_checked = 0
    for f in ACC.rglob("*.json"):
        obj = json.loads(f.read_text())
        outs = list(_outputs(obj))
        if not outs:
            assert any(str(f) in r and r.startswith("skipped") for r in t.report)
            continue
        for o in outs:
            key = f"{o['sae_lens_release_id']}/{o['sae_lens_id']}"
            i = t.keys.index(key)
            for cat, ms in o["eval_result_metrics"].items():
                for m, v in ms.items():
                    col = t.columns.get(f"{o['eval_type_id']}.{cat}.{m}")
                    if v is None:  # null metric = missing
                        assert col is None or np.isnan(col[i])
                    else:
                        assert col[i] == v
                        n_checked += 1
    assert n_checked >= 50
    # the meta_structure fixture's category is kept as written (meta_sae), unknown evals are not rejected
    assert "meta_sae_decoder_variance.meta_sae.decoder_fraction_variance_explained" in t.columns
    # RAVEL only for one SAE: the others are listed as missing, not dropped
    miss = t.missing("RAVEL.ravel.disentanglement_score")
    assert len(miss) == len(t) - 1
    assert any(r.startswith("metric RAVEL.ravel.disentanglement_score missing for 3 of 4") for r in t.report)
    with pytest.raises(SaeRdpError, match="mdl_expected_results.json"):
        read_results(ACC, strict=True, warn=False)
    with pytest.warns(UserWarning, match="reader note"):
        read_results(ACC)


@needs_shared
def test_join_current_and_old_formats():
    """The acceptance sparse-probing output of pythia topk trainer_10 joins the 2024 core data."""
    t = read_results([ACC / "sparse_probing", OLD / "sae_bench_pythia70m_sweep_topk_ctx128_0730_data.json"], warn=False)
    key = "sae_bench_pythia70m_sweep_topk_ctx128_0730/blocks.4.hook_resid_post__trainer_10"
    i = t.keys.index(key)
    raw = json.loads((OLD / "sae_bench_pythia70m_sweep_topk_ctx128_0730_data.json").read_text())
    raw_core = raw["basic_eval_results"]["pythia70m_sweep_topk_ctx128_0730/resid_post_layer_4/trainer_10"]
    assert t.column("sparsity.l0")[i] == raw_core["l0"]
    assert t.column("1-explained_variance")[i] == pytest.approx(1 - raw_core["frac_variance_explained"])
    sp = json.loads((ACC / "sparse_probing/sparse_probing_expected_results.json").read_text())
    assert t.column("sae_top_1_test_accuracy")[i] == sp["eval_result_metrics"]["sae"]["sae_top_1_test_accuracy"]
    assert (
        t.meta["k"][i]
        == raw["sae_config_dictionary_learning"]["pythia70m_sweep_topk_ctx128_0730/resid_post_layer_4/trainer_10"][
            "trainer"
        ]["k"]
    )


def test_old_keys_match_saelens_registry():
    """Our renaming of dictionary_learning keys reproduces SAELens' own release ids (from its yaml)."""
    text = (Path(importlib.util.find_spec("sae_lens").origin).parent / "pretrained_saes.yaml").read_text()
    for release in ("sae_bench_pythia70m_sweep_topk_ctx128_0730", "sae_bench_pythia70m_sweep_standard_ctx128_0712"):
        block = text.split(f"\n{release}:\n", 1)[1].split("\n\n", 1)[0]
        block = re.split(r"\n\S", block, maxsplit=1)[0]
        pairs = re.findall(r"- id: (\S+)\n(?:\s+\w+: .*\n)*?\s+path: (\S+)", block)
        assert len(pairs) >= 20
        for sid, path in pairs:
            rel, got, _ = _dl_key(path, None)
            assert (rel, got) == (release, sid)


@needs_shared
def test_shipped_tables_match_raw_files():
    for run in ("A", "A2", "B"):
        t = read_bundled(run)
        assert len(t) == 333  # all final SAEs of the 9 core files
    t = read_bundled(None)
    n_final = 0
    for f in OLD.glob("*.json"):
        raw = json.loads(f.read_text())
        for key, vals in raw["basic_eval_results"].items():
            if "checkpoints" in key:
                continue
            n_final += 1
            rel = f.stem[: -len("_data")]
            sid = key
            m = re.match(r"(.+)/resid_post_layer_(\d+)/trainer_(\d+)$", key)
            if m:
                sid = f"blocks.{m[2]}.hook_resid_post__trainer_{m[3]}"
            i = t.keys.index(f"{rel}/{sid}")
            assert t.columns["core.sparsity.l0"][i] == pytest.approx(vals["l0"], rel=1e-15)
            assert t.columns["core.model_performance_preservation.ce_loss_score"][i] == pytest.approx(
                vals["frac_recovered"], rel=1e-15
            )
    assert n_final == len(t) == 333
    a = read_bundled("A")
    raw = json.loads((OLD_SP / "example_pythia-70m-deduped_layer_4_eval_results.json").read_text())
    for key, vals in raw["custom_eval_results"].items():
        m = re.match(r"(.+)/resid_post_layer_(\d+)/trainer_(\d+)$", key)
        i = a.keys.index(f"sae_bench_{m[1]}/blocks.{m[2]}.hook_resid_post__trainer_{m[3]}")
        assert a.column("sae_top_5_test_accuracy")[i] == pytest.approx(vals["sae_top_5_test_accuracy"], rel=1e-15)


def test_shipped_data_small_and_documented():
    files = list(BUNDLED_DIR.iterdir())
    assert sum(f.stat().st_size for f in files) < 1 << 20
    prov = (BUNDLED_DIR / "PROVENANCE.md").read_text()
    assert "SAE_Bench_Template" in prov and "Licence" in prov
    t = read_bundled("A")
    # Gemma L19 ef8 TopK: 6 final SAEs with k = 20..640 and both probe and core metrics
    s = t.where(release="sae_bench_gemma-2-2b_sweep_topk_ctx128_ef8_0824", layer=19)
    assert sorted(s.meta["k"]) == [20, 40, 80, 160, 320, 640]
    assert np.isfinite(s.column("sae_top_1_test_accuracy")).all()


def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def _out(metric=0.5, rel="r", sid="s"):
    return {
        "eval_type_id": "my_eval",
        "eval_config": {},
        "eval_id": "x",
        "datetime_epoch_millis": 1,
        "eval_result_metrics": {"cat": {"m": metric}},
        "sae_bench_commit_hash": "h",
        "sae_lens_id": sid,
        "sae_lens_release_id": rel,
        "sae_lens_version": None,
        "sae_cfg_dict": None,
    }


def test_errors_name_the_file(tmp_path):
    bad = _write(tmp_path, "bad.json", "{not json")
    with pytest.raises(SaeRdpError, match="bad.json: malformed JSON"):
        read_results(bad)
    nn = _write(tmp_path / "x", "nonnum.json", _out(metric="high")) if (tmp_path / "x").mkdir() is None else None
    with pytest.raises(SaeRdpError, match="nonnum.json: metric cat.m is not a number"):
        read_results(nn)
    d = tmp_path / "dup"
    d.mkdir()
    _write(d, "a.json", _out(0.5))
    _write(d, "b.json", _out(0.7))
    with pytest.raises(SaeRdpError, match="duplicate SAE r/s"):
        read_results(d)
    with pytest.raises(SaeRdpError, match="no such file"):
        read_results(tmp_path / "nope")
    csvp = _write(tmp_path, "t.csv", "release,sae_id,score\nr,s,abc\n")
    with pytest.raises(SaeRdpError, match="t.csv: line 2, column 'score'"):
        read_results(csvp)
    csvp2 = _write(tmp_path, "u.csv", "name,score\nr,1\n")
    with pytest.raises(SaeRdpError, match="u.csv: CSV needs 'release' and 'sae_id'"):
        read_results(csvp2)


def test_unknown_eval_and_csv_roundtrip(tmp_path):
    d = tmp_path / "res"
    d.mkdir()
    for i in range(3):
        _write(d, f"{i}.json", _out(0.1 * i, sid=f"s{i}"))
    _write(d, "extra.csv", "release,sae_id,layer,other.score\nr,s0,3,1.5\nr,s1,3,\n")
    t = read_results(d, warn=False)
    assert t.keys == ["r/s0", "r/s1", "r/s2"]
    assert np.allclose(t.column("my_eval.cat.m"), [0.0, 0.1, 0.2])
    assert t.missing("other.score") == ["r/s1", "r/s2"]
    t.to_csv(tmp_path / "rt.csv")
    t2 = read_results(tmp_path / "rt.csv", warn=False)
    assert t2.keys == t.keys and t2.meta["layer"] == [3, 3, None]
    np.testing.assert_array_equal(t2.column("other.score"), t.column("other.score"))
