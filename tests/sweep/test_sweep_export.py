"""Sweep members exported as stock SAELens SAEs: same rate and distortion as the sweep measured."""

import json

import pytest
import torch

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.sweep.config import SweepConfig
from sae_rdp_plugin.sweep.data import build_dgp
from sae_rdp_plugin.sweep.export import export_member
from sae_rdp_plugin.sweep.train import train_sweep


def test_export_loads_with_stock_saelens(tmp_path, small_cfg):
    from sae_lens import SAE

    cfg = SweepConfig.from_dict(
        small_cfg(
            architectures=["topk", "standard", "jumprelu", "batchtopk"],
            ks=[2],
            l0_coefficients=[0.01],
            steps=60,
            dgps=[{"name": "a", "m": 4, "d": 8, "rho": 0.5, "q": 0.2}],
        )
    )
    out = tmp_path / "sw"
    res = train_sweep(cfg, out, progress=False)
    x, _ = build_dgp(cfg.dgps[0]).sample(cfg.eval_samples, torch.Generator().manual_seed(cfg.eval_seed))
    expected_arch = {"topk": "topk", "standard": "standard", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}
    for r in res:
        dest = export_member(out, r["member_id"], tmp_path / "export" / r["member_id"])
        assert json.loads((dest / "cfg.json").read_text())["architecture"] == expected_arch[r["architecture"]]
        sae = SAE.load_from_disk(dest)
        with torch.no_grad():
            z = sae.encode(x)
            xh = sae.decode(z)
        assert float((z != 0).float().sum(1).mean()) == pytest.approx(r["rate"], abs=1e-3)
        assert float((x - xh).pow(2).sum(1).mean()) == pytest.approx(r["distortion"], rel=1e-3, abs=1e-5)
    with pytest.raises(SaeRdpError, match="unknown member"):
        export_member(out, "nope", tmp_path / "x")
    with pytest.raises(SaeRdpError, match="not a sweep folder"):
        export_member(tmp_path / "export", res[0]["member_id"], tmp_path / "x")


def test_export_of_an_untrained_group_is_refused(tmp_path, small_cfg):
    cfg = SweepConfig.from_dict(small_cfg(steps=20))
    out = tmp_path / "sw"
    train_sweep(cfg, out, progress=False, groups=["topk_w4_d8_c0"])
    state = json.loads((out / "state.json").read_text())
    untrained = next(m for m, g in state["members"].items() if g == "standard_w4_d8_c0")
    with pytest.raises(SaeRdpError, match="has not finished training"):
        export_member(out, untrained, tmp_path / "x")


def test_export_never_replaces_a_folder_it_did_not_write(tmp_path, small_cfg, monkeypatch):
    from sae_rdp_plugin.sweep.export import EXPORT_MARKER

    cfg = SweepConfig.from_dict(small_cfg(architectures=["topk"], ks=[2], steps=10))
    out = tmp_path / "sw"
    mid = train_sweep(cfg, out, progress=False)[0]["member_id"]
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("precious")
    with pytest.raises(SaeRdpError, match="not a sae-rdp export"):
        export_member(out, mid, user)
    assert [p.name for p in user.iterdir()] == ["thesis.tex"] and (user / "thesis.tex").read_text() == "precious"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SaeRdpError, match="not a folder"):
        export_member(out, mid, tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "x"
    (tmp_path / "empty").mkdir()
    dest = export_member(out, mid, tmp_path / "empty")
    assert (dest / EXPORT_MARKER).is_file() and (dest / "cfg.json").is_file()
    (dest / "stale.txt").write_text("a user's file put into the previous export")
    with pytest.raises(SaeRdpError, match=r"holds files a sae-rdp export does not write \(stale.txt\)"):
        export_member(out, mid, dest)  # replacing the folder would delete it
    assert (dest / "stale.txt").read_text() == "a user's file put into the previous export"
    (dest / "stale.txt").unlink()
    (dest / "cfg.json").write_text("{}")
    export_member(out, mid, dest)  # a previous export of ours (nothing but its names) is replaced
    assert json.loads((dest / "cfg.json").read_text()) != {}
    before = sorted(p.name for p in tmp_path.iterdir())

    def boom(self, path):
        raise OSError("disk full")

    from sae_lens import TopKTrainingSAE

    monkeypatch.setattr(TopKTrainingSAE, "save_inference_model", boom)
    with pytest.raises(OSError, match="disk full"):
        export_member(out, mid, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary folder left behind
