import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(min(2, os.cpu_count() or 1))

if not torch.cuda.is_available():  # Triton kernels (sae_rdp_plugin.fast.kernels) run in its CPU interpreter
    import triton_interp

    triton_interp.enable()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def small_sweep(tmp_path_factory):
    """tests/small_sweep.py's sweep, trained once per session: a finished sweep folder that tests copy before
    changing anything in it."""
    from small_sweep import SWEEP

    from sae_rdp_plugin.sweep.config import SweepConfig
    from sae_rdp_plugin.sweep.train import train_sweep

    out = tmp_path_factory.mktemp("small_sweep") / "full"
    train_sweep(SweepConfig.from_dict(SWEEP), out, progress=False)
    return out
