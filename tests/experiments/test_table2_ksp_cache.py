"""experiments/table2/absorption_stage.py's cache of SAE activations for SAEBench's k-sparse probes
(``CachedSaeActs``, swapped in for ``sae_bench.evals.absorption.k_sparse_probing._get_sae_acts``): every call
returns, bit for bit, what SAEBench's own function returns on tiny TopK, standard (ReLU) and JumpReLU SAELens
SAEs, for several id sets, inputs whose length is not a multiple of the batch size, other inputs, calls without
ids and above the memory cap; a wrong column order or a neighbouring column would be caught by the same check.
The check against a whole absorption run (the same JSONs and k-sparse metrics with and without the cache) is in
test_table2_evals.py::test_absorption_in_workers_and_in_any_order_gives_the_same_jsons."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("sae_bench")

EXP = Path(__file__).resolve().parents[2] / "experiments" / "table2"


@pytest.fixture
def ab(monkeypatch):
    monkeypatch.syspath_prepend(str(EXP))
    return importlib.import_module("absorption_stage")


@pytest.fixture
def orig():
    from sae_bench.evals.absorption.k_sparse_probing import _get_sae_acts

    return _get_sae_acts


def _saes(d_in: int = 8, d_sae: int = 32) -> dict:
    """Tiny SAELens SAEs with random weights (JumpReLU: thresholds that gate some positive pre-activations)."""
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    torch.manual_seed(0)
    saes = {
        "topk": TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=4)),
        "standard": StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae)),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae)),
    }
    with torch.no_grad():
        for sae in saes.values():
            for name, p in sae.named_parameters():
                p.copy_(torch.rand_like(p) * 0.5 if name == "threshold" else torch.randn_like(p) * 0.3)
    return saes


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)  # bit patterns: -0.0 and 0.0 differ, NaN equals itself


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.device == b.device
        and a.shape == b.shape
        and a.is_contiguous() == b.is_contiguous()
        and torch.equal(_bits(a), _bits(b))
        and (torch.equal(a, b) or bool(a.isnan().any()))  # torch.equal: NaN != NaN
    )


def _id_sets(d_sae: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    sets = [torch.randperm(d_sae, generator=g)[:k] for k in (1, 2, 3, 5, 10)]  # as topk(k).indices: no order
    sets += [torch.tensor([0]), torch.tensor([d_sae - 1, 0]), torch.arange(d_sae).flip(0), torch.tensor([3, 3, 1])]
    return [*sets, torch.tensor([], dtype=torch.int64), torch.tensor([5, 2], dtype=torch.int32)]


def _mismatches(cached, orig, sae, x: torch.Tensor, batch_size: int, id_sets: list[torch.Tensor]) -> list[int]:
    """Indices of the id sets on which the cached function's result is not SAEBench's, bit for bit."""
    bad = []
    with torch.no_grad():
        for i, ids in enumerate(id_sets):
            if not _same(cached(sae, x, batch_size=batch_size, sparse_feat_ids=ids), orig(sae, x, batch_size, ids)):
                bad.append(i)
    return bad


@pytest.mark.parametrize("arch", ["topk", "standard", "jumprelu"])
def test_cached_acts_are_saebenchs_bit_for_bit(ab, orig, arch):
    sae = _saes()[arch]
    x = torch.randn(1000 + 37, 8)  # 8 batches of 128 and one of 13
    cached = ab.CachedSaeActs(orig)
    sets = _id_sets(32)
    with torch.no_grad():
        acts = orig(sae, x, 128)
    # the columns differ from one another and hold zeros and nonzeros (else a wrong column could pass)
    assert (acts != 0).any(0).all() and (acts == 0).any(0).all() and len({tuple(c) for c in acts.T.tolist()}) == 32
    assert _mismatches(cached, orig, sae, x, 128, sets) == []
    assert cached.stats == {"builds": 1, "hits": len(sets) - 1, "over_cap": 0, "plain": 0}

    with torch.no_grad():
        # another input (equal values, another tensor), then the first again: each rebuilds the cache
        y = x.clone()
        assert _mismatches(cached, orig, sae, y, 128, sets[:3]) == []
        assert _mismatches(cached, orig, sae, x, 128, sets[:3]) == []
        assert cached.stats["builds"] == 3
        # another batch size; the input changed in place; the SAE changed in place: rebuilt, SAEBench's result
        assert _mismatches(cached, orig, sae, x, 1000, sets[:3]) == []
        x[5:9] *= 2
        assert _mismatches(cached, orig, sae, x, 1000, sets[:3]) == []
        sae.b_enc.add_(0.05)
        assert _mismatches(cached, orig, sae, x, 1000, sets[:3]) == []
        assert cached.stats["builds"] == 6 and cached.stats["hits"] == len(sets) - 1 + 5 * 2
        # no ids (SAEBench's eval on the test split), ids out of range, a mask: SAEBench's function
        assert _same(cached(sae, x[:50]), orig(sae, x[:50]))
        assert _same(cached(sae, x, 1000, torch.tensor([-1, 2])), orig(sae, x, 1000, torch.tensor([-1, 2])))
        mask = torch.arange(32) % 3 == 0
        assert _same(cached(sae, x, 1000, mask), orig(sae, x, 1000, mask))
        with pytest.raises(IndexError):
            cached(sae, x, 1000, torch.tensor([32]))
        assert cached.stats["plain"] == 4 and cached.stats["builds"] == 6
    # an input made under inference mode (no version counter), called under inference mode: cached
    with torch.inference_mode():
        z = x * 1
        assert _mismatches(cached, orig, sae, z, 128, sets) == []
    assert cached.stats["builds"] == 7 and cached.stats["hits"] == 2 * (len(sets) - 1) + 5 * 2
    # grad enabled: SAEBench's function (its result carries the graph)
    got = cached(sae, x, 1000, sets[2])
    assert got.requires_grad and torch.equal(got, orig(sae, x, 1000, sets[2])) and cached.stats["plain"] == 5
    cached.clear()
    assert cached._key is None and cached._csc is None


def test_cached_acts_keep_the_bits(ab, orig):
    """Zeros are told apart by their bits: an encoder returning -0.0 and NaN is reproduced exactly."""

    class Neg(torch.nn.Module):
        device, dtype = torch.device("cpu"), torch.float32

        def __init__(self) -> None:
            super().__init__()
            self.W = torch.nn.Parameter(torch.randn(4, 16))

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            a = -torch.relu(x @ self.W)  # -0.0 where the pre-activation is <= 0
            a[::7, 3] = float("nan")
            return a

    sae, x = Neg(), torch.randn(300, 4)
    cached = ab.CachedSaeActs(orig)
    with torch.no_grad():
        ref = orig(sae, x, 64, torch.tensor([3, 0, 9]))
        assert torch.signbit(ref[ref == 0]).any()
        assert _mismatches(cached, orig, sae, x, 64, [torch.tensor([3, 0, 9])] * 2 + _id_sets(16)) == []
    assert cached.stats["hits"] == len(_id_sets(16)) + 1


def test_cached_acts_above_the_cap_fall_back(ab, orig):
    sae = _saes()["topk"]
    x = torch.randn(500, 8)
    encodes = []
    enc = sae.encode
    sae.encode = lambda b: (encodes.append(len(b)), enc(b))[1]
    cached = ab.CachedSaeActs(orig, max_nnz=4 * 500 - 1)  # TopK k=4: 2,000 nonzeros
    sets = _id_sets(32)
    assert _mismatches(cached, orig, sae, x, 128, sets) == []
    assert cached.stats == {"builds": 1, "hits": 0, "over_cap": 1, "plain": len(sets) - 1}
    assert cached._csc is None and len(encodes) == 2 * 4 * len(sets)  # every call encodes, as SAEBench's
    encodes.clear()
    at_cap = ab.CachedSaeActs(orig, max_nnz=4 * 500)
    assert _mismatches(at_cap, orig, sae, x, 128, sets) == []
    assert at_cap.stats["hits"] == len(sets) - 1 and len(encodes) == 4 + 4 * len(sets)


@pytest.mark.parametrize("wrong", ["column order", "neighbour column", "rows shifted"])
def test_a_wrong_slice_is_caught(ab, orig, wrong):
    """The check above fails for a cache that returns other columns, or its rows out of place."""

    class Wrong(ab.CachedSaeActs):
        def _slice(self, ids):
            if wrong == "column order":
                return super()._slice(ids.flip(0))
            if wrong == "neighbour column":
                return super()._slice((ids + 1) % 32)
            return super()._slice(ids).roll(1, 0)

    sae, x = _saes()["standard"], torch.randn(300, 8)
    sets = _id_sets(32)
    bad = _mismatches(Wrong(orig), orig, sae, x, 128, sets)
    assert bad, wrong
    # the first call is SAEBench's own loop; single columns and symmetric sets pass a flip
    assert 0 not in bad and len(bad) >= (3 if wrong == "column order" else len(sets) - 3)


def test_offline_absorption_swaps_the_function_and_restores_it(ab, tmp_path, monkeypatch):
    """Inside the context, SAEBench's k-sparse module calls the cache; the cache is emptied when each SAE's k-sparse
    probing ends and the function restored afterwards; ``ksp_cache_nnz=0`` leaves SAEBench's function."""
    import types

    import sae_bench.evals.absorption.k_sparse_probing as ksp
    import sae_bench.evals.absorption.main as am

    orig = ksp._get_sae_acts
    model = types.SimpleNamespace(tokenizer=types.SimpleNamespace(padding_side="right"))
    sae, x = _saes()["topk"], torch.randn(200, 8)
    seen = []

    def fake_ksp(**kw):  # what SAEBench's experiment does with it, then the cache as left behind
        with torch.no_grad():
            for k in (1, 2):
                ksp._get_sae_acts(sae, x, batch_size=64, sparse_feat_ids=torch.arange(k))
        seen.append((ksp._get_sae_acts._csc is not None, dict(ksp._get_sae_acts.stats)))
        return kw

    monkeypatch.setattr(am, "run_k_sparse_probing_experiment", fake_ksp)
    with ab.offline_absorption(model, "m", tmp_path / "w"):
        cache = ksp._get_sae_acts
        assert isinstance(cache, ab.CachedSaeActs) and cache.orig is orig and cache.max_nnz == ab.KSP_CACHE_NNZ
        assert am.run_k_sparse_probing_experiment(sae=None)["experiment_dir"] == tmp_path / "w/results/k_sparse_probing"
        assert seen[-1] == (True, {"builds": 1, "hits": 1, "over_cap": 0, "plain": 0}) and cache._csc is None
    assert ksp._get_sae_acts is orig and am.run_k_sparse_probing_experiment is fake_ksp
    with ab.offline_absorption(model, "m", tmp_path / "w", ksp_cache_nnz=0):
        assert ksp._get_sae_acts is orig
    assert ksp._get_sae_acts is orig


@pytest.mark.slow
def test_cached_acts_timing(ab, orig, capsys):
    """260 calls (26 letters x max_k_value 10) of SAEBench's function vs the cache, on the CPU at a modest size
    (printed for the report, not asserted): 8,300 rows of 64, a TopK SAE of 1,024 latents (k=32), batches of 4096.
    10-60 s on 2 busy cores (``-m slow``)."""
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=64, d_sae=1024, k=32))
    x = torch.randn(8300, 64)
    g = torch.Generator().manual_seed(0)
    sets = [torch.randperm(1024, generator=g)[: 1 + i % 10] for i in range(260)]
    cached = ab.CachedSaeActs(orig)
    with torch.no_grad():
        t = time.perf_counter()
        ref = [orig(sae, x, 4096, ids) for ids in sets]
        t_orig = time.perf_counter() - t
        t = time.perf_counter()
        got = [cached(sae, x, 4096, ids) for ids in sets]
        t_cached = time.perf_counter() - t
        t = time.perf_counter()
        [cached(sae, x, 4096, ids) for ids in sets]
        t_hits = time.perf_counter() - t
    assert all(_same(a, b) for a, b in zip(got, ref, strict=True))
    assert cached.stats["hits"] == 259 + 260
    with capsys.disabled():
        print(
            f"\n260 calls, {len(x)} x 64 -> 1024 (TopK 32), batch 4096, CPU ({torch.get_num_threads()} threads): "
            f"SAEBench {t_orig:.2f} s, cached {t_cached:.2f} s (first call builds), "
            f"260 sliced calls {t_hits:.3f} s ({1e3 * t_hits / 260:.2f} ms each)"
        )
