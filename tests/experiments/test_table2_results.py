"""The committed table2 results are consistent with their own ids: every eval JSON sits under the name its
release and SAE id give (run_stage.eval_json_name), its release names its model-layer folder and the
architecture its config was trained as, and no two files describe one SAE in one eval folder. A bundle
collected under another SAE's name (as a BatchTopK bundle once overwrote TopK JSONs) fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

from script_loader import load_script

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "table2" / "results"
RELEASE = re.compile(r"^table2-(?P<ml>.+-L\d+)-(?P<arch>[a-z_]+)$")


def test_committed_eval_jsons_are_named_by_their_ids():
    rs = load_script("t2_run_stage_results", "experiments/table2/run_stage.py")
    files = [f for d in rs.EVAL_DIRS for f in RESULTS.glob(f"**/{d}/*.json")]
    assert len(files) > 100  # the Gemma sweep is committed
    seen: set[tuple[Path, str, str]] = set()
    for f in files:
        d = json.loads(f.read_text())
        rel, sid = d["sae_lens_release_id"], d["sae_lens_id"]
        assert f.name == rs.eval_json_name(rel, sid), f
        m = RELEASE.match(rel)
        assert m, (f, rel)
        folder = f.parent.parent.name
        assert folder == m["ml"] or folder.startswith(m["ml"] + "-"), (f, rel)  # archive folders add a suffix
        cfg_arch = (d.get("sae_cfg_dict") or {}).get("training_architecture")
        assert cfg_arch in (None, m["arch"]), (f, cfg_arch)
        key = (f.parent, rel, sid)
        assert key not in seen, f
        seen.add(key)
