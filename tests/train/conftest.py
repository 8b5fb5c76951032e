"""Fixtures of the training tests."""

import json

import numpy as np
import pytest


@pytest.fixture
def tiny_corpus(tmp_path):
    """A corpus folder (tokens.npz train/heldout + manifest.json) of 40 random rows of 33 ids for the tiny
    Gemma-3 test model (vocab 512, BOS 2 first in each row)."""
    rng = np.random.default_rng(0)
    rows = rng.integers(3, 512, size=(40, 33)).astype(np.int32)
    rows[:, 0] = 2
    folder = tmp_path / "corpus"
    folder.mkdir()
    np.savez_compressed(folder / "tokens.npz", train=rows[:36], heldout=rows[36:])
    manifest = {"format": "sae-rdp corpus v2", "bos_token_id": 2, "context_size": 33}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder
