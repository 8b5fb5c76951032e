"""The architecture table (sae_rdp_plugin.architectures) against SAELens, the WSAE classes, the fast step
and the CLI: every other list of names derives from it, and each column says what SAELens does."""

from __future__ import annotations

import dataclasses

import pytest

import sae_rdp_plugin  # noqa: F401  (registers weighted_* with SAELens)
from sae_rdp_plugin.architectures import (
    ARCHITECTURES,
    FAST_NAMES,
    NAMES,
    STOCK_NAMES,
    WEIGHTED_NAMES,
    architecture_help,
    check_architecture,
    get_architecture,
    is_weighted,
)
from sae_rdp_plugin.errors import SaeRdpError


@pytest.mark.parametrize("name", NAMES)
def test_every_name_round_trips(name):
    a = get_architecture(name)
    assert check_architecture(name) == a.name == name
    assert is_weighted(name) == a.weighted == (name in WEIGHTED_NAMES) == (name not in STOCK_NAMES)
    assert a.stock in STOCK_NAMES and name == (f"weighted_{a.stock}" if a.weighted else a.stock)
    assert name in architecture_help()


def test_unknown_names_raise_one_line_error_listing_the_valid_ones():
    for bad in ("weighted_gated", "gated", "", None):
        with pytest.raises(SaeRdpError, match="valid: weighted_standard, weighted_topk") as e:
            check_architecture(bad)
        assert "\n" not in str(e.value)
        with pytest.raises(SaeRdpError):
            is_weighted(bad)


def test_name_lists_partition_the_table():
    assert sorted(WEIGHTED_NAMES + STOCK_NAMES) == sorted(NAMES) == sorted(ARCHITECTURES)
    assert len(set(NAMES)) == len(NAMES) == 8
    assert set(FAST_NAMES) == {"topk", "batchtopk", "weighted_topk", "weighted_batchtopk"}


def test_saelens_weighted_registry_is_the_table():
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    from sae_rdp_plugin.wsae.architectures import WEIGHTED_ARCHITECTURES
    from sae_rdp_plugin.wsae.registry import is_registered, register_now

    register_now()
    assert is_registered()
    registered = {n for n in SAE_TRAINING_CLASS_REGISTRY if n.startswith("weighted_")}
    assert registered == set(WEIGHTED_NAMES)
    assert tuple(WEIGHTED_ARCHITECTURES) == WEIGHTED_NAMES
    assert set(STOCK_NAMES) <= set(SAE_TRAINING_CLASS_REGISTRY)


@pytest.mark.parametrize("name", NAMES)
def test_columns_match_saelens_config_classes(name):
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    a = ARCHITECTURES[name]
    sae_cls, cfg_cls = SAE_TRAINING_CLASS_REGISTRY[name]
    stock_sae_cls, stock_cfg_cls = SAE_TRAINING_CLASS_REGISTRY[a.stock]
    assert issubclass(sae_cls, stock_sae_cls) and issubclass(cfg_cls, stock_cfg_cls)
    cfg_fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    assert ("k" in cfg_fields) == a.uses_k
    if a.uses_k:  # SAELens annotates k as int (TopK) or float (BatchTopK)
        assert cfg_fields["k"].type in ((int, "int") if a.k_is_integer else (float, "float"))
    if a.sparsity_field is not None:
        assert a.sparsity_field in cfg_fields
    assert {"l1_coefficient", "l0_coefficient"} & set(cfg_fields) <= {a.sparsity_field}
    assert ("alpha" in cfg_fields) == a.weighted
    cfg = cfg_cls(d_in=4, d_sae=8, **({"k": 2} if a.uses_k else {}))
    assert cfg.get_inference_config_class().architecture() == a.saved_as


@pytest.mark.parametrize("name", NAMES)
def test_fast_column_is_what_the_fast_step_supports(name):
    from sae_rdp_plugin.fast.step import FAST_ARCHITECTURES, FastTopKTrainer, fast_architecture_of
    from sae_rdp_plugin.train.config import TrainConfig
    from sae_rdp_plugin.train.saelens import build_training_sae

    a = ARCHITECTURES[name]
    assert fast_architecture_of(name) == (a.stock if a.fast_step else None)
    sae = build_training_sae(TrainConfig(name, 4, 8, k=2).sae_config_dict())
    if a.fast_step:
        assert FastTopKTrainer.from_training_sae(sae) is not None
        assert FAST_ARCHITECTURES[name] == a.stock
    else:
        with pytest.raises(SaeRdpError, match="fast step"):
            FastTopKTrainer.from_training_sae(sae)


def test_cli_help_lists_the_table():
    from sae_rdp_plugin.cli import build_parser

    parser = build_parser()
    for cmd in (["train"], ["distributed", "train"], ["distributed", "grid"]):
        sub = parser
        for word in cmd:
            sub = next(a for a in sub._actions if a.dest in ("command", "dist_command")).choices[word]
        arch = next(a for a in sub._actions if a.dest == "architecture")
        assert all(n in arch.help for n in NAMES), cmd
