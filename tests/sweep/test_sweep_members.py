"""The grid's members and groups: fixed order, stable ids, chunking by max_group_size."""

import pytest

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.sweep.config import SweepConfig
from sae_rdp_plugin.sweep.members import enumerate_members, group_members


def test_members_skip_topk_ks_above_width(small_cfg):
    cfg = SweepConfig.from_dict(small_cfg(architectures=["topk"], widths=[2, 4], ks=[1, 3], seeds=[0, 1]))
    ids = [m.member_id for m in enumerate_members(cfg)]
    # per DGP: width 2 keeps k=1 only, width 4 keeps k=1 and k=3; x 2 seeds
    assert len(ids) == 2 * (1 + 2) * 2 == len(set(ids))
    assert ids[0] == "a__topk__w2__k1__s0__random"
    assert "a__topk__w2__k3__s0__random" not in ids
    with pytest.raises(SaeRdpError, match="k=3 fits no member"):
        SweepConfig.from_dict(small_cfg(architectures=["topk"], widths=[2], ks=[3]))
    with pytest.raises(SaeRdpError, match="grid is empty"):
        enumerate_members(SweepConfig.from_dict(small_cfg(architectures=["topk"], widths=[2], ks=[])))


def test_members_skip_batchtopk_ks_above_width(small_cfg):
    cfg = SweepConfig.from_dict(small_cfg(architectures=["batchtopk"], widths=[2, 4], ks=[1.5, 3]))
    ids = [m.member_id for m in enumerate_members(cfg)]
    assert "a__batchtopk__w2__k3__s0__random" not in ids  # k > width: no BatchTopK member
    assert "a__batchtopk__w4__k3__s0__random" in ids and "a__batchtopk__w2__k1.5__s0__random" in ids
    with pytest.raises(SaeRdpError, match="k=5 fits no member"):
        SweepConfig.from_dict(small_cfg(architectures=["batchtopk"], widths=[2, 4], ks=[5]))


def test_groups_by_architecture_width_and_dim(small_cfg):
    dgps = [{"name": "a", "m": 4, "d": 8}, {"name": "b", "m": 4, "d": 6}, {"name": "c", "m": 4, "d": 8}]
    cfg = SweepConfig.from_dict(small_cfg(dgps=dgps, widths=[4, 5]))
    groups = group_members(cfg)
    assert [g for g, _ in groups] == [
        "topk_w4_d8_c0",
        "topk_w5_d8_c0",
        "standard_w4_d8_c0",
        "standard_w5_d8_c0",
        "topk_w4_d6_c0",
        "topk_w5_d6_c0",
        "standard_w4_d6_c0",
        "standard_w5_d6_c0",
    ]
    # every member in exactly one group; DGPs a and c (both d=8) share a group
    assert sorted(m.member_id for _, ms in groups for m in ms) == sorted(m.member_id for m in enumerate_members(cfg))
    assert {m.dgp for m in dict(groups)["topk_w4_d8_c0"]} == {"a", "c"}


def test_max_group_size_chunks_in_grid_order(small_cfg):
    cfg = SweepConfig.from_dict(small_cfg(architectures=["topk"], seeds=[0, 1, 2], max_group_size=4))
    groups = group_members(cfg)
    assert [(g, len(ms)) for g, ms in groups] == [("topk_w4_d8_c0", 4), ("topk_w4_d8_c1", 4), ("topk_w4_d8_c2", 4)]
    assert [m for _, ms in groups for m in ms] == enumerate_members(cfg)


def test_saelens_dgp_groups_by_hidden_dim(small_cfg):
    spec = {"name": "s", "kind": "saelens", "saelens_config": {"num_features": 6, "hidden_dim": 5}}
    cfg = SweepConfig.from_dict(small_cfg(dgps=[spec], architectures=["standard"]))
    assert [g for g, _ in group_members(cfg)] == ["standard_w4_d5_c0"]
