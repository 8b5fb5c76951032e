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
    (into / "core" / "a.json").write_text('{"x": 1}')
    new = {"wall_s": 282.0, "gpu_s": 282.0, "device": "H200"}
    b = _bundle(
        tmp_path / "E.tar.xz",
        {
            "stage_E-m-9.json": _stage(new),
            "core/a.json": b'{"x": 1}',
            "core/b.json": b'{"x": 2}',
            "calibration_C-m-9-standard.json": b'{"levels": {}}',
        },
    )
    done = col.collect(b, into, results)
    st = json.loads((into / "stage_E-m-9.json").read_text())
    assert st["calls"] == [old, new] and st["gpu_s_total"] == pytest.approx(532.3)
    assert (into / "core" / "b.json").read_bytes() == b'{"x": 2}'
    assert (results / "calibration_C-m-9-standard.json").is_file() and (
        into / "calibration_C-m-9-standard.json"
    ).is_file()
    assert len(done["same"]) == 1 and len(done["new"]) == 2
    col.collect(b, into, results)  # the same bundle twice: no duplicated call
    assert json.loads((into / "stage_E-m-9.json").read_text())["calls"] == [old, new]


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


def _core(release: str) -> bytes:
    return json.dumps({"sae_lens_release_id": release, "eval_result_metrics": {}}).encode()


def test_model_layer_folder_is_read_from_the_bundle(tmp_path, capsys):
    col = _collect()
    results = tmp_path / "results"
    smol = _bundle(tmp_path / "s.tar.xz", {"core/a.json": _core("table2-smollm2-135m-L15-topk")})
    done = col.collect(smol, None, results)
    assert (results / "smollm2-135m-L15" / "core" / "a.json").is_file() and len(done["new"]) == 1
    cal = _bundle(
        tmp_path / "c.tar.xz", {"calibration_C-gemma3-270m-9-jumprelu.json": b'{"stage": "C-gemma3-270m-9-jumprelu"}'}
    )
    col.collect(cal, None, results)
    assert (results / "gemma3-270m-L9" / "calibration_C-gemma3-270m-9-jumprelu.json").is_file()
    wsae = _bundle(tmp_path / "w.tar.xz", {"core/w.json": _core("table2-gemma3-270m-L9-weighted_topk")})
    col.collect(wsae, None, results)
    assert (results / "gemma3-270m-L9" / "core" / "w.json").is_file()
    # refused, nothing written: another folder than --into, two model-layers, none at all without --into
    mixed = _bundle(
        tmp_path / "m.tar.xz",
        {"core/a.json": _core("table2-smollm2-135m-L15-topk"), "core/b.json": _core("table2-gemma3-270m-L9-topk")},
    )
    anon = _bundle(tmp_path / "n.tar.xz", {"core/x.json": b"{}"})
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
