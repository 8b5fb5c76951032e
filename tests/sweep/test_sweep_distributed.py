"""train_sweep_distributed without a process group: two ranks run in turn (rank 1, then rank 0, which
merges), so the merge and the per-rank folders are checked here; tests/train/test_distributed_gloo.py runs
the same under torchrun."""

import json

import pytest

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.sweep.config import SweepConfig
from sae_rdp_plugin.sweep.distributed import assign_groups, train_sweep_distributed
from sae_rdp_plugin.sweep.members import group_members
from sae_rdp_plugin.sweep.train import train_sweep
from sae_rdp_plugin.train.distributed import DistContext


def test_two_ranks_in_turn_match_one_process(tmp_path, small_cfg):
    cfg = SweepConfig.from_dict(small_cfg(steps=30, checkpoint_every=10, seeds=[0, 1], max_group_size=3))
    one = train_sweep(cfg, tmp_path / "one", progress=False)
    out = tmp_path / "two"
    assert train_sweep_distributed(cfg, out, DistContext(rank=1, world_size=2), progress=False) is None
    assert not (out / "state.json").exists()  # rank 1 does not merge
    res = train_sweep_distributed(cfg, out, DistContext(rank=0, world_size=2), progress=False)
    assert res == one

    groups = group_members(cfg)
    owner = dict(zip([g for g, _ in groups], assign_groups([len(m) for _, m in groups], 2)))
    assert set(owner.values()) == {0, 1}
    for r in (0, 1):  # each rank folder knows only the groups it trained
        rank_state = json.loads((out / "ranks" / f"rank{r}" / "state.json").read_text())
        assert sorted(rank_state["groups"]) == sorted(g for g, o in owner.items() if o == r)
        assert not (out / "ranks" / f"rank{r}" / "results.json").exists()

    # the merged folder has the one-process layout, byte for byte where no clock is involved
    merged = json.loads((out / "state.json").read_text())
    single = json.loads((tmp_path / "one" / "state.json").read_text())
    assert merged["config"] == single["config"] and merged["members"] == single["members"]
    assert list(merged["groups"]) == list(single["groups"])
    assert all(merged["groups"][g]["status"] == "done" and merged["groups"][g]["rank"] == owner[g] for g in owner)
    for sub in ("members", "groups"):
        names = sorted(p.name for p in (tmp_path / "one" / sub).iterdir())
        assert names == sorted(p.name for p in (out / sub).iterdir())
        for n in names:
            assert (out / sub / n).read_bytes() == (tmp_path / "one" / sub / n).read_bytes(), n
    results = json.loads((out / "results.json").read_text())
    assert results["members"] == one and results["group_rank"] == owner and results["world_size"] == 2

    with pytest.raises(SaeRdpError, match="already holds"):
        train_sweep_distributed(cfg, out, DistContext(rank=0, world_size=2), progress=False)
    # resuming a finished distributed sweep trains nothing and merges the same results
    assert train_sweep_distributed(cfg, out, DistContext(rank=0, world_size=2), resume=True, progress=False) == one
