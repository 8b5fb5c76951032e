"""experiments/table2/collect.py: a device bundle merged into committed results without losing stage records."""

import io
import json
import tarfile
from pathlib import Path

import pytest
from script_loader import load_script


def _collect():
    return load_script("t2_collect", "experiments/table2/collect.py")


def _bundle(path: Path, files: dict[str, bytes], extra: tarfile.TarInfo | None = None) -> Path:
    with tarfile.open(path, "w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            tar.addfile(extra)
    return path


def _stage(*calls: dict) -> bytes:
    return json.dumps({"stage": "E-m-9", "calls": list(calls), "gpu_s_total": -1}).encode()


def test_stage_calls_are_appended_and_summed(tmp_path):
    col = _collect()
    into, results = tmp_path / "results" / "m-L9", tmp_path / "results"
    into.mkdir(parents=True)
    old = {"wall_s": 250.3, "gpu_s": 250.3, "device": "H200"}
    (into / "stage_E-m-9.json").write_text(_stage(old).decode())
    (into / "core").mkdir()
    (into / "core" / "topk__a.json").write_bytes(_core("table2-m-L9-topk", "a"))
    new = {"wall_s": 282.0, "gpu_s": 282.0, "device": "H200"}
    b = _bundle(
        tmp_path / "E.tar.xz",
        {
            "stage_E-m-9.json": _stage(new),
            "core/old_name_a.json": _core("table2-m-L9-topk", "a"),
            "core/b.json": _core("table2-m-L9-topk", "b"),
            "calibration_C-m-9-standard.json": b'{"levels": {}}',
        },
    )
    done = col.collect(b, into, results)
    st = json.loads((into / "stage_E-m-9.json").read_text())
    assert st["calls"] == [old, new] and st["gpu_s_total"] == pytest.approx(532.3)
    assert (into / "core" / "topk__b.json").read_bytes() == _core("table2-m-L9-topk", "b")
    assert (results / "calibration_C-m-9-standard.json").is_file() and (
        into / "calibration_C-m-9-standard.json"
    ).is_file()
    assert len(done["same"]) == 1 and len(done["new"]) == 2
    col.collect(b, into, results)  # the same bundle twice: no duplicated call
    assert json.loads((into / "stage_E-m-9.json").read_text())["calls"] == [old, new]


def test_complete_flags_merge_per_eval():
    """An E call that ran absorption only keeps the committed sparse-probing flag (a bundle's ``complete`` held
    only its own call's evals and replaced the committed one)."""
    col = _collect()
    old = {"stage": "E-m-9", "calls": [{"gpu_s": 1.0}], "complete": {"sparse_probing": False}}
    new = {"stage": "E-m-9", "calls": [{"gpu_s": 2.0}], "complete": {"absorption": False}}
    assert col.merge_stage(old, new)["complete"] == {"sparse_probing": False, "absorption": False}
    new["complete"] = {"sparse_probing": True}
    assert col.merge_stage(old, new)["complete"] == {"sparse_probing": True}


def test_bad_bundles_write_nothing(tmp_path, capsys):
    col = _collect()
    into = tmp_path / "into"
    link = tarfile.TarInfo("core/evil.json")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    bad = [
        _bundle(tmp_path / "link.tar.xz", {"core/ok.json": b"{}"}, extra=link),
        _bundle(tmp_path / "up.tar.xz", {"core/ok.json": b"{}", "../escape.json": b"{}"}),
        _bundle(tmp_path / "cal.tar.xz", {"core/ok.json": b"{}", "calibration_x.json": b"not json"}),
        tmp_path / "missing.tar.xz",
    ]
    (tmp_path / "notatar.tar.xz").write_bytes(b"plain text")
    bad.append(tmp_path / "notatar.tar.xz")
    for b in bad:
        assert col.main([str(b), "--into", str(into)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
        assert not into.exists() and not (tmp_path / "escape.json").exists()


def _core(release: str, sae_id: str = "blocks.9.hook_resid_post__w16_k4_s0_step_final") -> bytes:
    return json.dumps({"sae_lens_release_id": release, "sae_lens_id": sae_id, "eval_result_metrics": {}}).encode()


SAE_FILE = "topk__blocks_9_hook_resid_post__w16_k4_s0_step_final.json"


def test_model_layer_folder_is_read_from_the_bundle(tmp_path, capsys):
    col = _collect()
    results = tmp_path / "results"
    smol = _bundle(tmp_path / "s.tar.xz", {"core/a.json": _core("table2-smollm2-135m-L15-topk")})
    done = col.collect(smol, None, results)
    assert (results / "smollm2-135m-L15" / "core" / SAE_FILE).is_file() and len(done["new"]) == 1
    cal = _bundle(
        tmp_path / "c.tar.xz", {"calibration_C-gemma3-270m-9-jumprelu.json": b'{"stage": "C-gemma3-270m-9-jumprelu"}'}
    )
    col.collect(cal, None, results)
    assert (results / "gemma3-270m-L9" / "calibration_C-gemma3-270m-9-jumprelu.json").is_file()
    wsae = _bundle(tmp_path / "w.tar.xz", {"core/w.json": _core("table2-gemma3-270m-L9-weighted_topk")})
    col.collect(wsae, None, results)
    assert (results / "gemma3-270m-L9" / "core" / SAE_FILE.replace("topk", "weighted_topk", 1)).is_file()
    # refused, nothing written: another folder than --into, two model-layers, none at all without --into
    mixed = _bundle(
        tmp_path / "m.tar.xz",
        {"core/a.json": _core("table2-smollm2-135m-L15-topk"), "core/b.json": _core("table2-gemma3-270m-L9-topk")},
    )
    anon = _bundle(tmp_path / "n.tar.xz", {"train_summaries/x.json": b"{}"})
    for b, into, msg in (
        (smol, results / "gemma3-270m-L9", "holds smollm2-135m-L15 results"),
        (mixed, None, "spans model-layers"),
        (anon, None, "give --into"),
    ):
        before = sorted(p for p in results.rglob("*"))
        argv = [str(b)] + ([] if into is None else ["--into", str(into)])
        if into is None:
            with pytest.raises(ValueError, match=msg):
                col.collect(b, None, results)
        else:
            assert col.main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and msg in err[0]
        assert sorted(p for p in results.rglob("*")) == before


def test_llm_baselines_land_in_the_model_layer_folder(tmp_path):
    """probe_baselines/ (sae-probes' LLM baseline JSONs, no release id) follows the bundle's core JSONs into
    results/<model>-L<layer>/probe_baselines/, where stage.sh picks them up for the next fresh machine."""
    col = _collect()
    results = tmp_path / "results"
    name = "probe_baselines/baseline_results_m/normal_setting/ds_blocks.9.hook_resid_post_logreg.json"
    b = _bundle(tmp_path / "E.tar.xz", {"core/a.json": _core("table2-m-L9-topk"), name: b'{"test_auc": 0.9}'})
    col.collect(b, None, results)
    assert (results / "m-L9" / name).read_bytes() == b'{"test_auc": 0.9}'


def test_eval_jsons_are_named_from_their_ids(tmp_path, capsys):
    """TopK and BatchTopK SAEs share SAE ids (width, k, seed, step): a bundle of BatchTopK JSONs under the ids'
    old names must not replace the committed TopK ones; a JSON without ids, or two of one SAE, is refused."""
    col = _collect()
    results = tmp_path / "results"
    into = results / "m-L9"
    sid = "blocks.9.hook_resid_post__w16_k4_s0_step_final"
    old_name = "blocks_9_hook_resid_post__w16_k4_s0_step_final.json"  # the name before the architecture was in it
    topk = _bundle(tmp_path / "t.tar.xz", {f"core/{old_name}": _core("table2-m-L9-topk", sid)})
    col.collect(topk, None, results)
    btk = _bundle(
        tmp_path / "b.tar.xz",
        {
            f"core/{old_name}": _core("table2-m-L9-batchtopk", sid),
            f"sparse_probing_sae_probes/{old_name}": _core("table2-m-L9-batchtopk", sid),
        },
    )
    done = col.collect(btk, None, results)
    assert "replaced" not in done and len(done["new"]) == 2
    assert json.loads((into / "core" / f"topk__{old_name}").read_text())["sae_lens_release_id"] == "table2-m-L9-topk"
    assert json.loads((into / "core" / f"batchtopk__{old_name}").read_text())["sae_lens_release_id"].endswith(
        "-batchtopk"
    )
    assert (
        not (into / "core" / old_name).exists()
        and (into / "sparse_probing_sae_probes" / f"batchtopk__{old_name}").is_file()
    )
    before = sorted(results.rglob("*"))
    bad = {
        "no sae_lens_release_id / sae_lens_id": {"core/x.json": b'{"sae_lens_release_id": "table2-m-L9-topk"}'},
        "two core JSONs of one SAE": {
            "core/x.json": _core("table2-m-L9-topk", sid),
            "core/y.json": _core("table2-m-L9-topk", sid),
        },
    }
    for i, (msg, files) in enumerate(bad.items()):
        assert col.main([str(_bundle(tmp_path / f"bad{i}.tar.xz", files))]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], err
    assert sorted(results.rglob("*")) == before


def _eval(release: str, sae_id: str, metrics: dict, eval_id: str = "x") -> bytes:
    return json.dumps(
        {"sae_lens_release_id": release, "sae_lens_id": sae_id, "eval_id": eval_id, "eval_result_metrics": metrics}
    ).encode()


def test_replicate_takes_its_architecture_and_checks_retrained_saes(tmp_path, capsys, monkeypatch):
    """--replicate: only the named architecture's eval JSONs and train summaries (and the stage records) go to
    results/replicates/<name>/, the calibrations and baselines stay out; a later bundle with the same SAEs (same
    metrics, another eval id) adds its new evals and keeps the committed ones; other metrics refuse it whole."""
    col = _collect()
    results = tmp_path / "results"
    monkeypatch.setattr(col, "RESULTS", results)  # the command line's default: never the repository's here
    sid = "blocks.9.hook_resid_post__w16_k4_s0_step_final"
    first = _bundle(
        tmp_path / "T.tar.xz",
        {
            "stage_T-m-9-topk.json": json.dumps({"stage": "T-m-9-topk", "calls": [{"gpu_s": 400.0}]}).encode(),
            "core/a.json": _eval("table2-m-L9-topk", sid, {"l0": 4.0}),
            "core/b.json": _eval("table2-m-L9-batchtopk", sid, {"l0": 4.0}),
            "train_summaries/t.json": json.dumps(
                {"architecture": "topk", "train_seconds": 1.0, "heldout_fvu": 0.1}
            ).encode(),
            "train_summaries/u.json": json.dumps({"architecture": "batchtopk"}).encode(),
            "calibration_C-m-9-standard.json": b'{"levels": {}}',
            "probe_baselines/x.json": b"{}",
        },
    )
    rep = results / "replicates" / "m-L9-topk-r3"
    done = col.collect(first, results=results, replicate="m-L9-topk-r3")
    got = sorted(str(p.relative_to(rep)) for p in rep.rglob("*") if p.is_file())
    assert got == ["core/" + SAE_FILE, "stage_T-m-9-topk.json", "train_summaries/t.json"], got
    assert not (results / "calibration_C-m-9-standard.json").exists() and len(done["new"]) == 2
    # a later session: the same SAEs (same metrics, new eval id and timings) and their absorption JSONs
    later = {
        "stage_E-m-9.json": _stage({"gpu_s": 300.0}),
        "core/a.json": _eval("table2-m-L9-topk", sid, {"l0": 4.0}, eval_id="y"),
        "absorption_first_letter/a.json": _eval("table2-m-L9-topk", sid, {"mean": 0.1}),
        "train_summaries/t.json": json.dumps(
            {"architecture": "topk", "train_seconds": 2.0, "heldout_fvu": 0.1}
        ).encode(),
    }
    before = (rep / "core" / SAE_FILE).read_bytes()
    done = col.collect(_bundle(tmp_path / "E.tar.xz", later), results=results, replicate="m-L9-topk-r3")
    assert (rep / "core" / SAE_FILE).read_bytes() == before and done["same SAE"] == [str(rep / "core" / SAE_FILE)]
    assert json.loads((rep / "train_summaries/t.json").read_text())["train_seconds"] == 1.0 and done["kept"]
    assert (rep / "absorption_first_letter" / SAE_FILE).is_file() and (rep / "stage_E-m-9.json").is_file()
    # other SAEs (different metrics): refused, nothing written
    other = {**later, "core/a.json": _eval("table2-m-L9-topk", sid, {"l0": 4.5}), "rdp_proxies/a.json": b""}
    other["rdp_proxies/a.json"] = _eval("table2-m-L9-topk", sid, {"p": 1.0})
    snapshot = {p: p.read_bytes() for p in rep.rglob("*") if p.is_file()}
    assert col.main([str(_bundle(tmp_path / "O.tar.xz", other)), "--replicate", "m-L9-topk-r3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics differ" in err[0], err
    assert {p: p.read_bytes() for p in rep.rglob("*") if p.is_file()} == snapshot
    # a retraining that did not reproduce the SAEs (a train summary's held-out FVU differs), before any eval JSON of
    # the replicate could tell: refused whole, nothing written
    retrained = {
        "absorption_first_letter/a.json": later["absorption_first_letter/a.json"],
        "train_summaries/t.json": json.dumps(
            {"architecture": "topk", "train_seconds": 1.0, "heldout_fvu": 0.2}
        ).encode(),
    }
    assert col.main([str(_bundle(tmp_path / "R.tar.xz", retrained)), "--replicate", "m-L9-topk-r3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "heldout_fvu differ" in err[0] and "new replicate" in err[0], err
    assert {p: p.read_bytes() for p in rep.rglob("*") if p.is_file()} == snapshot
    # a malformed name, another model-layer, no JSON of the release, --into with --replicate: one line, exit 2
    for args in (
        ["--replicate", "topk-r3"],
        ["--replicate", "m-L5-topk-r3"],
        ["--replicate", "m-L9-jumprelu-r1"],
        ["--replicate", "m-L9-topk-r3", "--into", str(tmp_path / "x")],
    ):
        assert col.main([str(first), *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (args, err)
    assert not (results / "replicates" / "m-L9-jumprelu-r1").exists() and not (tmp_path / "x").exists()


def test_replicate_takes_a_probe_only_bundle(tmp_path, monkeypatch):
    """The bundle of a `--absorption-probe-only` call (stage.sh trainprobe: the first-letter probe made beside the T
    stage) holds the carried probe and the E stage record, no eval JSON: --replicate takes it, the probe to the
    model-layer folder, the record to the replicate; a probe whose file does not match its manifest is refused."""
    import hashlib

    col = _collect()
    results = tmp_path / "results"
    monkeypatch.setattr(col, "RESULTS", results)
    probe = b"weights"
    manifest = json.dumps({"files": {"probe.pth": hashlib.sha256(probe).hexdigest()}}).encode()
    files = {
        "stage_E-m-9.json": _stage({"gpu_s": 240.0, "absorption": {"probe_only": True, "probe_source": "trained"}}),
        "absorption_probe/m/layer_9/probe.pth": probe,
        "absorption_probe/m/layer_9/manifest.json": manifest,
    }
    col.collect(_bundle(tmp_path / "P.tar.xz", files), results=results, replicate="m-L9-topk-r3")
    assert (results / "m-L9" / "absorption_probe" / "m" / "layer_9" / "probe.pth").read_bytes() == probe
    rec = json.loads((results / "replicates" / "m-L9-topk-r3" / "stage_E-m-9.json").read_text())
    assert rec["calls"][0]["absorption"]["probe_only"]
    assert not (results / "replicates" / "m-L9-topk-r3" / "absorption_probe").exists()
    bad = {**files, "absorption_probe/m/layer_9/probe.pth": b"other"}
    with pytest.raises(ValueError, match="sha256 differs"):
        col.collect(_bundle(tmp_path / "B.tar.xz", bad), results=tmp_path / "r2", replicate="m-L9-topk-r3")
    with pytest.raises(ValueError, match="no eval JSON of table2-m-L9-topk and no carried probe"):
        only_record = {"stage_E-m-9.json": files["stage_E-m-9.json"]}
        col.collect(_bundle(tmp_path / "R.tar.xz", only_record), results=tmp_path / "r3", replicate="m-L9-topk-r3")
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


def test_another_models_calibrations_and_baselines_are_not_written(tmp_path, capsys, monkeypatch):
    """stage.sh run copies every committed calibration and LLM baseline onto the machine, so a SmolLM2 bundle
    carries Gemma's: they stay out of smollm2-135m-L15/ and results/ (and a bundle naming its model-layer only
    through its stage record is not read as spanning two model-layers)."""
    col = _collect()
    results = tmp_path / "results"
    monkeypatch.setattr(col, "RESULTS", results)
    base = "probe_baselines/baseline_results_{}/normal_setting/ds_blocks.{}.hook_resid_post_logreg.json"
    files = {
        "stage_T-smollm2-135m-15-topk.json": b'{"stage": "T-smollm2-135m-15-topk", "calls": []}',
        "calibration_C-gemma3-270m-9-standard.json": b'{"stage": "C-gemma3-270m-9-standard"}',
        base.format("gemma3-270m", 9): b'{"test_auc": 0.8}',
        base.format("smollm2-135m", 15): b'{"test_auc": 0.9}',
    }
    b = _bundle(tmp_path / "T.tar.xz", files)
    assert col.main([str(b)]) == 0
    out = capsys.readouterr().out
    assert "other model, not written: 2 (" in out and "calibration_C-gemma3-270m-9-standard.json" in out
    here = results / "smollm2-135m-L15"
    assert (here / base.format("smollm2-135m", 15)).read_bytes() == b'{"test_auc": 0.9}'
    assert (here / "stage_T-smollm2-135m-15-topk.json").is_file()
    assert not (here / base.format("gemma3-270m", 9)).exists()
    assert not (here / "calibration_C-gemma3-270m-9-standard.json").exists()
    assert not (results / "calibration_C-gemma3-270m-9-standard.json").exists()
    assert sorted(p.relative_to(results).as_posix() for p in results.rglob("*") if p.is_file()) == sorted(
        [f"smollm2-135m-L15/{base.format('smollm2-135m', 15)}", "smollm2-135m-L15/stage_T-smollm2-135m-15-topk.json"]
    )
