"""Sweep configs: validation errors name the problem; JSON round trip; the CLI's exit code on a bad config."""

import json
import math

import pytest

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.sweep.config import DGPSpec, SweepConfig, json_safe, load_config


@pytest.mark.parametrize(
    "patch, msg",
    [
        ({"architectures": ["gated"]}, "unknown architecture"),
        ({"widths": [0]}, "widths"),
        ({"bogus": 1}, "unknown sweep config key"),
        ({"dgps": [{"name": "a", "kind": "zipf"}]}, "unknown kind"),
        ({"dgps": [{"m": 3}]}, "needs a 'name'"),
        ({"l1_coefficients": [-1.0], "architectures": ["standard"]}, ">= 0"),
        ({"steps": 0}, "steps"),
    ],
)
def test_bad_config(patch, msg, small_cfg):
    with pytest.raises(SaeRdpError, match=msg):
        SweepConfig.from_dict(small_cfg(**patch))


def test_load_config_round_trip_and_file_errors(tmp_path, small_cfg):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(small_cfg()))
    cfg = load_config(p)
    assert SweepConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(SaeRdpError, match="not found"):
        load_config(tmp_path / "missing.json")
    p.write_text("{not json")
    with pytest.raises(SaeRdpError, match="malformed JSON"):
        load_config(p)


def test_input_dim():
    assert DGPSpec(name="a", m=4, d=12).input_dim == 12
    spec = DGPSpec(name="s", kind="saelens", saelens_config={"num_features": 6, "hidden_dim": 5})
    assert spec.input_dim == 5  # not the unused default d


def test_json_safe():
    obj = {"a": [1.0, math.nan, {"b": math.inf}], "c": "x", "d": 2}
    assert json_safe(obj) == {"a": [1.0, None, {"b": None}], "c": "x", "d": 2}


def test_cli_bad_config(tmp_path, small_cfg):
    from sae_rdp_plugin.cli import main

    p = tmp_path / "c.json"
    p.write_text("{not json")
    assert main(["sweep", "run", "--config", str(p), "--out", str(tmp_path / "o")]) == 2
    p.write_text(json.dumps(small_cfg(architectures=["gated"])))
    assert main(["sweep", "run", "--config", str(p), "--out", str(tmp_path / "o")]) == 2
