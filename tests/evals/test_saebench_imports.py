"""SAEBench's own evals import after our install (scripts/setup.sh, README: the [saebench] extra, then
sae-bench with --no-deps): the extra must carry what their modules import at load time."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("sae_bench") is None, reason="sae-bench not installed")

#: SAEBench eval entry points whose requirements the [saebench] extra covers (sparse_probing_sae_probes
#: also needs xgboost through sae-probes' baselines: not covered, see the README's install section)
SAEBENCH_EVALS = ["sparse_probing", "absorption", "scr_and_tpp", "core", "autointerp", "ravel", "unlearning"]


@pytest.mark.parametrize("name", SAEBENCH_EVALS)
def test_saebench_eval_main_imports(name):
    module = importlib.import_module(f"sae_bench.evals.{name}.main")
    assert hasattr(module, "run_eval") or hasattr(module, "run_evals") or hasattr(module, "main"), name


def test_our_evals_import_next_to_saebench():
    for name in ("rdp_audit", "rdp_synthetic"):
        module = importlib.import_module(f"sae_rdp_plugin.evals.{name}.main")
        assert callable(module.run_eval)
