"""Fixtures of the sweep tests: one torch thread, and a small two-DGP, two-architecture grid."""

from collections.abc import Callable
from typing import Any

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the dev machine is shared; tiny matmuls are faster on one thread
    yield
    torch.set_num_threads(n)


def _small_cfg(**kw: Any) -> dict[str, Any]:
    base = dict(
        dgps=[{"name": "a", "m": 4, "d": 8, "rho": 0.5, "q": 0.2}, {"name": "b", "m": 4, "d": 8, "rho": 0.0, "q": 0.2}],
        architectures=["topk", "standard"],
        widths=[4],
        ks=[1, 2],
        l1_coefficients=[0.1],
        seeds=[0],
        steps=300,
        batch_size=64,
        lr=3e-3,
        eval_samples=500,
        checkpoint_every=50,
    )
    base.update(kw)
    return base


@pytest.fixture
def small_cfg() -> Callable[..., dict[str, Any]]:
    """``small_cfg(**overrides)``: a SweepConfig dict (groups topk_w4_d8_c0 and standard_w4_d8_c0)."""
    return _small_cfg
