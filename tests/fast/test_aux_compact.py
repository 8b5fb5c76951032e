"""The compacted dead-latent aux selection of the fast step (FastTopKConfig.aux_compact): the top k_aux of
the dead latents taken over a static padded width n_pad of dead columns (aux_pad_width) instead of all
d_sae columns. Checked against the uncompacted step (aux_compact="off"), against an independent float64
brute force of SAELens's calculate_topk_aux_loss, the bucket rule on its edge cases, and the CUDA-graph
bookkeeping (which graph a step replays or recaptures) with a stand-in for the CUDA graph. Small shapes, CPU."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.fast import step as step_mod
from sae_rdp_plugin.fast.step import FastTopKConfig, FastTopKTrainer, aux_pad_width

aux_pad_buckets = step_mod.aux_pad_buckets


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


def _params(d_in: int, d_sae: int, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    W_enc = torch.randn(d_in, d_sae, generator=g, dtype=torch.float64) / math.sqrt(d_in)
    W_dec = torch.randn(d_sae, d_in, generator=g, dtype=torch.float64) / math.sqrt(d_in)
    W_dec *= torch.rand(d_sae, 1, generator=g, dtype=torch.float64) * 2 + 0.5  # unequal decoder norms
    return {
        "W_enc": W_enc.to(dtype),
        "b_enc": (torch.randn(d_sae, generator=g, dtype=torch.float64) * 0.1).to(dtype),
        "W_dec": W_dec.to(dtype),
        "b_dec": (torch.randn(d_in, generator=g, dtype=torch.float64) * 0.1).to(dtype),
        "gamma": (torch.rand(d_in, generator=g, dtype=torch.float64) + 0.3).to(dtype),
    }


def _trainer(p, d_in, d_sae, k, dtype, weighted=True, compact="auto", **cfg) -> FastTopKTrainer:
    c = FastTopKConfig(d_in=d_in, d_sae=d_sae, k=k, kernels=cfg.pop("kernels", "torch"), aux_compact=compact, **cfg)
    return FastTopKTrainer(
        c,
        p["W_enc"],
        p["b_enc"],
        p["W_dec"],
        p["b_dec"],
        gamma=p["gamma"] if weighted else None,
        dtype=dtype,
        device=cfg.get("device", "cpu"),
    )


def _dead(d_sae: int, n_dead: int, seed: int) -> torch.Tensor:
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[torch.randperm(d_sae, generator=torch.Generator().manual_seed(seed))[:n_dead]] = True
    return dead


# ------------------------------------------------------------------------------------ the bucket rule
def test_buckets():
    assert aux_pad_buckets(16384, 320) == (2048, 4096, 8192, 12288)
    assert aux_pad_buckets(65536, 1152) == (8192, 16384, 32768, 49152)
    assert aux_pad_buckets(16384, 3000) == (4096, 8192, 12288)  # d_sae/8 < k_aux: dropped
    assert aux_pad_buckets(16384, 8192) == (8192, 12288)  # == k_aux is enough
    assert aux_pad_buckets(16384, 12289) == ()
    assert aux_pad_buckets(1000, 10) == (128, 256, 512, 768)  # granule 32 (<= 1000 / 16)
    assert aux_pad_buckets(200, 32) == (32, 56, 104, 152)  # granule 8: 25 -> 32, 50 -> 56, ...
    assert aux_pad_buckets(200, 33) == (56, 104, 152)
    assert aux_pad_buckets(256, 16) == (32, 64, 128, 192)
    assert aux_pad_buckets(10, 1) == (2, 3, 5, 8)  # granule 1
    assert aux_pad_buckets(4, 1) == (1, 2, 3)  # 4/8 and 4/4 both round up to 1: one bucket
    assert aux_pad_buckets(1, 1) == ()
    assert aux_pad_buckets(64, 32) == (32, 48)
    assert aux_pad_buckets(64, 64) == ()  # k_aux = d_sae: never compacted


def test_pad_width_edges():
    d, ka = 16384, 320
    assert aux_pad_width(0, d, ka) == 2048
    assert aux_pad_width(1, d, ka) == 2048
    assert aux_pad_width(ka - 1, d, ka) == 2048  # n_dead < k_aux: padded up to a bucket >= k_aux
    for lo, hi in ((2048, 4096), (4096, 8192), (8192, 12288), (12288, d)):
        assert aux_pad_width(lo, d, ka) == lo  # n_dead == bucket: fits
        assert aux_pad_width(lo + 1, d, ka) == hi
    assert aux_pad_width(d, d, ka) == d  # all dead: full
    assert aux_pad_width(100, d, ka, mode="off") == d
    assert aux_pad_width(100, d, 3000) == 4096  # smallest bucket below k_aux is skipped
    assert aux_pad_width(5, 64, 64) == 64  # no buckets
    assert aux_pad_width(1, 1, 1) == 1


def test_pad_width_hysteresis():
    d, ka = 16384, 320
    assert aux_pad_width(2000, d, ka, prev=4096) == 4096  # fits 2048, but not with the 10% margin
    assert aux_pad_width(1843, d, ka, prev=4096) == 2048  # <= 0.9 * 2048: shrink
    assert aux_pad_width(2049, d, ka, prev=2048) == 4096  # must grow
    assert aux_pad_width(100, d, ka, prev=d) == 2048  # far below: straight to the smallest roomy bucket
    assert aux_pad_width(7000, d, ka, prev=d) == 8192
    assert aux_pad_width(7500, d, ka, prev=d) == 12288  # 7500 > 0.9 * 8192
    assert aux_pad_width(7500, d, ka, prev=4096) == 8192  # prev too small
    assert aux_pad_width(100, d, ka, prev=5000) == 2048  # not a bucket: ignored
    assert aux_pad_width(100, d, ka, prev=2 * d) == 2048
    assert aux_pad_width(100, d, ka, mode="off", prev=2048) == d
    # any result holds every dead latent and k_aux columns, and is a bucket or full
    rng = np.random.default_rng(0)
    for _ in range(2000):
        dd = int(rng.integers(1, 5000))
        kk = int(rng.integers(1, dd + 1))
        bs = aux_pad_buckets(dd, kk)
        nd = int(rng.integers(0, dd + 1))
        prev = [None, dd, *bs][int(rng.integers(0, len(bs) + 2))]
        w = aux_pad_width(nd, dd, kk, prev=prev)
        assert w == dd or (w in bs and w >= max(nd, kk)), (nd, dd, kk, prev, w)
        assert w <= (prev if prev is not None and prev >= aux_pad_width(nd, dd, kk) else dd)


def test_config_rejects_unknown_mode():
    with pytest.raises(SaeRdpError, match="aux_compact"):
        FastTopKConfig(d_in=8, d_sae=16, k=2, aux_compact="on")


# ------------------------------------------------------------------------------------ compacted == off
# (B, d_in, d_sae, k): k_aux = d_in // 2; dead counts around each bucket of aux_pad_buckets(d_sae, k_aux),
# below k_aux, and all latents
CASES = [
    ((32, 32, 256, 8), [1, 5, 31, 32, 33, 63, 64, 65, 127, 128, 129, 191, 192, 193, 256]),  # buckets 32/64/128/192
    ((24, 64, 200, 6), [3, 31, 32, 33, 55, 56, 57, 103, 104, 105, 151, 152, 153, 200]),  # 32/56/104/152, k_aux 32
    ((16, 160, 256, 4), [5, 79, 80, 81, 127, 128, 129, 192, 193]),  # k_aux 80 > 32, 64: buckets 128/192
]


def _check_grads_equal(a, b, dtype, n_dead):
    la, ga, _, _ = a
    lb, gb, _, _ = b
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for key in ("mse_loss", "auxiliary_reconstruction_loss", "loss"):
        x, y = float(la[key]), float(lb[key])
        assert abs(x - y) <= tol * abs(y), (n_dead, key, x, y)
    for name, g, h in zip(["W_enc", "b_enc", "W_dec", "b_dec"], ga, gb):
        assert _rel(g, h) <= tol, (n_dead, name, _rel(g, h))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aux_impl", ["dense", "sparse"])
@pytest.mark.parametrize("shape,dead_counts", CASES)
def test_loss_and_grads_equal_uncompacted(shape, dead_counts, aux_impl, dtype):
    B, d_in, d_sae, k = shape
    k_aux = d_in // 2
    p = _params(d_in, d_sae, 1, dtype)
    x = (torch.randn(B, d_in, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 1.5).to(dtype)
    on = _trainer(p, d_in, d_sae, k, dtype, aux_impl=aux_impl)
    off = _trainer(p, d_in, d_sae, k, dtype, aux_impl=aux_impl, compact="off")
    n_compacted = 0
    for i, n_dead in enumerate(dead_counts):
        dead = _dead(d_sae, n_dead, 10 + i)
        n_pad = on._aux_n_pad_of(dead)
        assert n_pad == aux_pad_width(n_dead, d_sae, k_aux) and off._aux_n_pad_of(dead) == d_sae
        n_compacted += n_pad < d_sae
        ra = on.loss_and_grads(x, dead)  # n_pad derived from the mask
        rb = off.loss_and_grads(x, dead)
        assert float(rb[0]["auxiliary_reconstruction_loss"]) > 0
        _check_grads_equal(ra, rb, dtype, n_dead)
        # explicit widths: every bucket that holds the dead latents, and full, give the same
        for w in [b for b in aux_pad_buckets(d_sae, k_aux) if b >= n_dead] + [d_sae]:
            _check_grads_equal(on.loss_and_grads(x, dead, n_pad=w), rb, dtype, (n_dead, w))
    assert n_compacted >= len(dead_counts) - 3  # the compacted path ran in almost every case


@pytest.mark.parametrize("rescale,apply_b_dec", [(False, True), (True, False)])
def test_unweighted_and_other_flags(rescale, apply_b_dec):
    B, d_in, d_sae, k = 20, 32, 256, 8
    dtype = torch.float64
    p = _params(d_in, d_sae, 3, dtype)
    x = torch.randn(B, d_in, generator=torch.Generator().manual_seed(4), dtype=dtype)
    kw = dict(weighted=False, rescale_acts_by_decoder_norm=rescale, apply_b_dec_to_input=apply_b_dec)
    on = _trainer(p, d_in, d_sae, k, dtype, **kw)
    off = _trainer(p, d_in, d_sae, k, dtype, compact="off", **kw)
    for n_dead in (3, 40, 100):
        dead = _dead(d_sae, n_dead, n_dead)
        assert on._aux_n_pad_of(dead) < d_sae
        _check_grads_equal(on.loss_and_grads(x, dead), off.loss_and_grads(x, dead), dtype, n_dead)


def test_bf16_compacted_close():
    """bf16 (pre-activations in bf16: ties are possible, so only closeness is checked)."""
    B, d_in, d_sae, k = 32, 32, 256, 8
    p = _params(d_in, d_sae, 5, torch.float32)
    x = torch.randn(B, d_in, generator=torch.Generator().manual_seed(6))
    on = _trainer(p, d_in, d_sae, k, torch.float32, bf16=True, aux_impl="dense")
    off = _trainer(p, d_in, d_sae, k, torch.float32, bf16=True, aux_impl="dense", compact="off")
    dead = _dead(d_sae, 50, 0)
    la, ga, _, _ = on.loss_and_grads(x, dead)
    lb, gb, _, _ = off.loss_and_grads(x, dead)
    assert float(la["auxiliary_reconstruction_loss"]) == pytest.approx(
        float(lb["auxiliary_reconstruction_loss"]), rel=1e-2
    )
    for g, h in zip(ga, gb):
        assert _rel(g, h) < 5e-2


# ------------------------------------------------------------------------------------ independent reference
def _saelens_aux_reference(p, x, dead, k, coef, weighted, rescale=True, apply_b_dec=True) -> float:
    """SAELens's TopK forward and calculate_topk_aux_loss (with the plugin's gamma^2 weighting), brute
    force in float64 numpy."""
    W_enc, b_enc, W_dec, b_dec = (p[n].double().numpy() for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    x = x.double().numpy()
    dead = dead.numpy()
    w = p["gamma"].double().numpy() ** 2 if weighted else np.ones(x.shape[1])
    n = np.linalg.norm(W_dec, axis=1) if rescale else np.ones(W_dec.shape[0])
    sae_in = x - b_dec if apply_b_dec else x
    hidden_pre = (sae_in @ W_enc + b_enc) * n
    acts = np.zeros_like(hidden_pre)
    for b in range(x.shape[0]):
        top = np.argsort(-hidden_pre[b])[:k]
        acts[b, top] = np.maximum(hidden_pre[b, top], 0)
    x_hat = (acts / n) @ W_dec + b_dec
    residual = x - x_hat
    num_dead = int(dead.sum())
    k_aux = x.shape[1] // 2
    scale = min(num_dead / k_aux, 1.0)
    k_aux = min(k_aux, num_dead)
    dead_idx = np.flatnonzero(dead)
    aux_acts = np.zeros_like(hidden_pre)
    for b in range(x.shape[0]):
        sel = dead_idx[np.argsort(-hidden_pre[b, dead_idx])[:k_aux]]
        aux_acts[b, sel] = hidden_pre[b, sel]
    recons = (aux_acts / n) @ W_dec
    return coef * scale * float((((recons - residual) ** 2) * w).sum(1).mean())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("aux_impl", ["dense", "sparse"])
def test_aux_loss_matches_bruteforce_reference(aux_impl, weighted, dtype):
    B, d_in, d_sae, k, coef = 24, 64, 200, 6, 0.7
    p = _params(d_in, d_sae, 7, dtype)
    x = torch.randn(B, d_in, generator=torch.Generator().manual_seed(8), dtype=torch.float64).to(dtype)
    tr = _trainer(p, d_in, d_sae, k, dtype, weighted=weighted, aux_impl=aux_impl, aux_loss_coefficient=coef)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for n_dead in (1, 7, 31, 32, 33, 59, 61, 150, 157, 200):
        dead = _dead(d_sae, n_dead, 100 + n_dead)
        ref = _saelens_aux_reference(p, x, dead, k, coef, weighted)
        got = float(tr.loss_and_grads(x, dead)[0]["auxiliary_reconstruction_loss"])
        assert ref > 0 and abs(got - ref) <= tol * ref, (n_dead, got, ref)


def test_no_dead_latents_no_aux_loss():
    d_in, d_sae, k = 32, 256, 8
    p = _params(d_in, d_sae, 9, torch.float64)
    tr = _trainer(p, d_in, d_sae, k, torch.float64)
    out = tr.step(torch.randn(8, d_in, dtype=torch.float64), dead=torch.zeros(d_sae, dtype=torch.bool))
    assert float(out["auxiliary_reconstruction_loss"]) == 0.0 and tr._aux_n_pad is None
    # loss_and_grads with an all-false mask (no step-level skip): zero aux loss on either path
    x = torch.randn(8, d_in, dtype=torch.float64)
    assert float(tr.loss_and_grads(x, torch.zeros(d_sae, dtype=torch.bool))[0]["auxiliary_reconstruction_loss"]) == 0


def test_zero_aux_coefficient_skips_the_aux_path():
    """aux_loss_coefficient = 0 (sparsify's default objective, auxk_alpha 0): SAELens's loss c * aux is 0 with
    zero gradients, so a step given dead latents equals a step without any (float64, same start), and the aux
    path does not run (no aux width chosen, no aux step counted)."""
    d_in, d_sae, k = 32, 256, 8
    p = _params(d_in, d_sae, 13, torch.float64)
    x = torch.randn(16, d_in, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    dead = _dead(d_sae, 100, 15)
    zero = _trainer(p, d_in, d_sae, k, torch.float64, aux_loss_coefficient=0.0, lr=1e-2)
    none = _trainer(p, d_in, d_sae, k, torch.float64, lr=1e-2)
    out = zero.step(x, dead=dead)
    ref = none.step(x, dead=None)
    assert float(out["auxiliary_reconstruction_loss"]) == 0.0 and zero._aux_n_pad is None
    assert not any(w for w in zero.aux_width_steps)
    assert float(out["loss"]) == float(ref["loss"])
    for a, b in zip(zero.params, none.params):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------ whole steps
def _run_steps(tr, xs, deads):
    outs = []
    for x, dead in zip(xs, deads):
        outs.append({k: v.clone() for k, v in tr.step(x, dead=dead).items()})
    return outs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aux_impl", ["dense", "sparse"])
def test_steps_equal_uncompacted(aux_impl, dtype):
    """6 full steps (clipping, Adam, dead-latent counters) with dead masks of changing size (buckets
    change between steps, and the width is kept while it fits) == the same steps with aux_compact="off"."""
    B, d_in, d_sae, k = 32, 32, 256, 8
    p = _params(d_in, d_sae, 11, dtype)
    g = torch.Generator().manual_seed(12)
    xs = [(torch.randn(B, d_in, generator=g, dtype=torch.float64) * 1.5).to(dtype) for _ in range(6)]
    counts = [30, 31, 100, 60, 5, 256]
    deads = [_dead(d_sae, n, 20 + i) for i, n in enumerate(counts)]
    on = _trainer(p, d_in, d_sae, k, dtype, aux_impl=aux_impl, lr=1e-2)
    off = _trainer(p, d_in, d_sae, k, dtype, aux_impl=aux_impl, lr=1e-2, compact="off")
    widths = []
    oa, ob = [], []
    for x, dead in zip(xs, deads):
        oa.append(on.step(x, dead=dead))
        widths.append(on._aux_n_pad)
        ob.append(off.step(x, dead=dead))
        assert off._aux_n_pad == d_sae
    assert widths == [32, 32, 128, 128, 32, 256]  # 31 and 60 are above 0.9 x 32 / 64: width kept
    tol = 1e-11 if dtype == torch.float64 else 2e-6
    for la, lb in zip(oa, ob):
        for key in ("mse_loss", "auxiliary_reconstruction_loss", "loss"):
            assert float(la[key]) == pytest.approx(float(lb[key]), rel=tol, abs=0)
        assert torch.equal(la["fired"], lb["fired"])
    for a, b in zip(on.params + on.exp_avg + on.exp_avg_sq, off.params + off.exp_avg + off.exp_avg_sq):
        assert _rel(a, b) <= tol
    assert torch.equal(on.n_forward_passes_since_fired, off.n_forward_passes_since_fired)


def test_steps_with_automatic_dead_mask():
    """dead="auto" (the trainer's own counters, dead_feature_window=1): the dead set evolves over 8 steps
    and the compacted steps equal the uncompacted ones (float64)."""
    B, d_in, d_sae, k = 16, 32, 256, 4
    dtype = torch.float64
    p = _params(d_in, d_sae, 13, dtype)
    g = torch.Generator().manual_seed(14)
    xs = [torch.randn(B, d_in, generator=g, dtype=dtype) for _ in range(8)]
    on = _trainer(p, d_in, d_sae, k, dtype, lr=1e-2, dead_feature_window=1)
    off = _trainer(p, d_in, d_sae, k, dtype, lr=1e-2, dead_feature_window=1, compact="off")
    widths = set()
    for x in xs:
        la, lb = on.step(x), off.step(x)
        widths.add(on._aux_n_pad)
        assert float(la["loss"]) == pytest.approx(float(lb["loss"]), rel=1e-11)
    assert any(w is not None and w < d_sae for w in widths)  # the compacted path ran
    for a, b in zip(on.params, off.params):
        assert _rel(a, b) <= 1e-11


# ------------------------------------------------------------------------------------ Triton step
def test_triton_step_compacted_equals_uncompacted():
    """The Triton step (kernels="triton": Triton's CPU interpreter here) with the compacted selection ==
    without it: gradients as the fused step forms them, and 2 whole fused steps."""
    from sae_rdp_plugin.fast import kernels as fk

    if not fk.available("cpu"):
        pytest.skip("Triton kernels unavailable (no TRITON_INTERPRET)")
    B, d_in, d_sae, k = 16, 32, 128, 4
    p = _params(d_in, d_sae, 15, torch.float32)
    xs = [torch.randn(B, d_in, generator=torch.Generator().manual_seed(16 + i)) for i in range(2)]
    dead = _dead(d_sae, 20, 17)
    on = _trainer(p, d_in, d_sae, k, torch.float32, kernels="triton", lr=1e-2)
    off = _trainer(p, d_in, d_sae, k, torch.float32, kernels="triton", lr=1e-2, compact="off")
    assert on.use_triton and on._aux_n_pad_of(dead) == 32
    la, ga = on.triton_loss_and_grads(xs[0], dead)
    lb, gb = off.triton_loss_and_grads(xs[0], dead)
    assert float(la["auxiliary_reconstruction_loss"]) == pytest.approx(
        float(lb["auxiliary_reconstruction_loss"]), rel=1e-6
    )
    for gx, gy in zip(ga, gb):
        assert _rel(gx, gy) < 1e-6
    for x in xs:
        on.step(x, dead=dead)
        off.step(x, dead=dead)
    assert on._aux_n_pad == 32
    for a, b in zip(on.params, off.params):
        assert _rel(a, b) < 1e-6


# ------------------------------------------------------------------------------------ CUDA-graph bookkeeping
class _FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on CPU: 'capturing' runs the step eagerly (so it is a real step),
    replay does nothing. Only which graph is captured / replayed is checked, not the numbers."""

    def __init__(self):
        self.replays = 0

    def replay(self):
        self.replays += 1


def test_graph_keyed_by_aux_width(monkeypatch):
    """_graph_step's bookkeeping without a GPU: two eager steps, then one graph without and one with the
    aux loss; the aux graph is recaptured when (and only when) the padded width changes, after one eager
    step at a width never run before; the other graph is kept; no host sync (bool/int/float/item of a
    tensor) inside a capture."""
    B, d_in, d_sae, k = 8, 32, 256, 4
    p = _params(d_in, d_sae, 18, torch.float32)
    tr = _trainer(p, d_in, d_sae, k, torch.float32)
    tr._graph_applicable = lambda: True
    tr._lp_cache = {}
    tr._cache_key = lambda: (0,)
    state = {"capturing": False, "captures": []}

    def _no_sync(*a, **kw):
        raise RuntimeError("host sync inside a CUDA graph capture")

    @contextlib.contextmanager
    def fake_graph(g, stream=None):
        state["captures"].append(stream)
        state["capturing"] = True
        with monkeypatch.context() as m:
            for name in ("__bool__", "__int__", "__float__", "item", "tolist"):
                m.setattr(torch.Tensor, name, _no_sync)
            yield
        state["capturing"] = False

    calls = []
    real_device_step = tr._device_step

    def device_step(x, dead, n_pad=None):
        calls.append((state["capturing"], dead is not None, n_pad))
        return real_device_step(x, dead, n_pad)

    tr._device_step = device_step
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph, raising=False)
    monkeypatch.setattr(torch.cuda, "graph", fake_graph, raising=False)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: object(), raising=False)

    x = torch.randn(B, d_in)
    plan = [  # (n_dead, expected _device_step call or None for a replay, graph widths held afterwards)
        (0, (False, False, None), {}),  # eager 1
        (20, (False, True, 32), {}),  # eager 2
        (20, (True, True, 32), {True: 32}),  # capture the aux graph at width 32
        (25, None, {True: 32}),  # replay
        (0, (True, False, None), {True: 32, False: None}),  # capture the no-aux graph, aux one kept
        (100, (False, True, 128), {False: None}),  # a new width: dropped, one eager step first
        (100, (True, True, 128), {True: 128, False: None}),  # then captured
        (60, None, {True: 128, False: None}),  # fits 64 but not with the margin: kept, replay
        (40, (False, True, 64), {False: None}),  # shrink: new width, eager
        (0, None, {False: None}),  # replay the no-aux graph
        (41, (True, True, 64), {True: 64, False: None}),  # capture at 64
        (100, (True, True, 128), {True: 128, False: None}),  # 128 ran eagerly before: captured at once
        (256, (False, True, 256), {False: None}),  # all dead: the uncompacted width, new
        (256, (True, True, 256), {True: 256, False: None}),
    ]
    for i, (n_dead, call, held) in enumerate(plan):
        before = len(calls)
        tr.step(x, dead=_dead(d_sae, n_dead, i))
        assert tr._graph_failed is None, tr._graph_failed
        got = calls[before:]
        assert got == ([] if call is None else [call]), (i, got)
        assert {a: h.n_pad for a, h in tr._graphs.items()} == held, i
    assert tr._graphs[True].graph.replays == 1 and tr._graphs[False].graph.replays == 2
    assert tr._graph_aux_widths == {32, 64, 128, 256}
    # each graph is captured on a stream of its own, the aux graph on the same one at every recapture: the
    # cuBLAS workspace PyTorch keys by capture stream is never shared between the two (pytorch/pytorch#193402)
    aux_streams = {id(st) for st, (cap, aux, _) in zip(state["captures"], [c for c in calls if c[0]]) if aux}
    plain_streams = {id(st) for st, (cap, aux, _) in zip(state["captures"], [c for c in calls if c[0]]) if not aux}
    assert None not in state["captures"] and len(state["captures"]) == 6
    assert len(aux_streams) == 1 and len(plain_streams) == 1 and aux_streams != plain_streams


def test_a_failed_graph_capture_is_reported(monkeypatch):
    """A capture that raises: the step runs eagerly (a real step) and the train summary's aux stats say why
    (``cuda_graph_failed``), so a benchmark row whose steps fell back to eager shows it."""
    B, d_in, d_sae, k = 8, 32, 256, 4
    tr = _trainer(_params(d_in, d_sae, 19, torch.float32), d_in, d_sae, k, torch.float32)
    tr._graph_applicable = lambda: tr._graph_failed is None
    tr._lp_cache = {}
    tr._cache_key = lambda: (0,)

    @contextlib.contextmanager
    def failing_graph(g, stream=None):
        raise RuntimeError("operation not permitted when stream is capturing")
        yield

    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph, raising=False)
    monkeypatch.setattr(torch.cuda, "graph", failing_graph, raising=False)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: object(), raising=False)
    x = torch.randn(B, d_in)
    assert tr.aux_stats()["cuda_graph_failed"] is None
    with pytest.warns(UserWarning, match="capture failed"):
        for _ in range(4):
            out = tr.step(x, dead=None)
    assert torch.isfinite(out["loss"]) and tr.n_training_steps == 4
    assert "not permitted" in tr.aux_stats()["cuda_graph_failed"]


@pytest.mark.gpu
@pytest.mark.parametrize("aux_topk", ["torch", "radix", "mask"])
@pytest.mark.parametrize("bf16", [False, True])
def test_cuda_graph_with_compacted_aux_equals_eager_full_selection(bf16, aux_topk):
    """On CUDA: the Triton step replayed as CUDA graphs with the compacted aux selection (recaptured when the
    dead count changes bucket), its aux top-k by torch.topk or by topk_kernel.masked_topk, equals the eager step
    with the full selection by torch.topk, and captures without falling back to eager steps."""
    d_in, d_sae, k = 64, 1024, 8
    p = {n: t.cuda() for n, t in _params(d_in, d_sae, 21, torch.float32).items()}

    def make(graph: bool, compact: str, topk: str = "torch") -> FastTopKTrainer:
        c = FastTopKConfig(d_in=d_in, d_sae=d_sae, k=k, lr=1e-3, bf16=bf16, kernels="triton", cuda_graph=graph,
                           aux_compact=compact, aux_topk=topk)  # fmt: skip
        return FastTopKTrainer(
            c, *(p[n].clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")), gamma=p["gamma"].clone(),
            dtype=torch.float32, device="cuda",
        )  # fmt: skip

    a, b = make(True, "auto", aux_topk), make(False, "off")
    g = torch.Generator().manual_seed(22)
    widths = set()
    for s in range(14):
        n_dead = 100 if s < 7 else 600  # a bucket of d_sae/8, then of 3 d_sae/4
        dead = _dead(d_sae, n_dead, seed=s).cuda()
        x = torch.randn(256, d_in, generator=g).cuda()
        la, lb = a.step(x, dead=dead), b.step(x, dead=dead)
        widths.add(a._aux_n_pad)
        assert float(la["auxiliary_reconstruction_loss"]) == pytest.approx(
            float(lb["auxiliary_reconstruction_loss"]), rel=1e-4 if bf16 else 1e-5
        )
    assert a._graph_failed is None and True in a._graphs and a._graphs[True].n_pad < d_sae
    assert len(widths) == 2 and max(widths) < d_sae
    for q, r in zip(a.params, b.params):
        assert _rel(q, r) < (1e-3 if bf16 else 1e-5)


# (aux_topk, trainer flags, aux_compact, dead latents): both kernels on the four selection cases, the mask kernel
# also without the decoder-norm rescale and gamma, and with bf16 products (slow in the interpreter: two cases)
KERNEL_CASES = [(impl, {}, c, n) for impl in ("radix", "mask") for c in ("auto", "off") for n in (5, 40)] + [
    ("mask", {"rescale_acts_by_decoder_norm": False, "weighted": False}, "auto", 40),
    ("mask", {"bf16": True}, "auto", 40),
    ("mask", {"bf16": True}, "off", 5),
]


@pytest.mark.parametrize("impl,flags,compact,n_dead", KERNEL_CASES)
def test_triton_step_kernel_aux_topk_equals_torch(impl, flags, compact, n_dead, monkeypatch):
    """aux_topk="radix" (topk_kernel.masked_topk, the mask fused into the kernel) and "mask" (topk_kernel.topk_mask,
    the dense selection without indices) give the loss and gradients of the masked copy + torch.topk, with the
    compacted selection and without, with fewer dead latents than k_aux (5 < d_in/2 = 16: the selection dips
    into masked columns, which the aux loss must zero) and more, with and without the decoder-norm rescale, gamma
    and bf16 products; the kernel must have run (a spy counts its calls)."""
    from sae_rdp_plugin.fast import kernels as fk
    from sae_rdp_plugin.fast import topk_kernel

    if not fk.available("cpu"):
        pytest.skip("Triton kernels unavailable (no TRITON_INTERPRET)")
    monkeypatch.setattr(topk_kernel, "_BLOCK_32", 64)  # several blocks per row in the interpreter
    calls = []
    name = {"radix": "masked_topk", "mask": "topk_mask"}[impl]
    orig = getattr(topk_kernel, name)
    monkeypatch.setattr(topk_kernel, name, lambda x, k, keep, **kw: calls.append(k) or orig(x, k, keep, **kw))
    B, d_in, d_sae, k = 16, 32, 128, 4
    flags = dict(flags)
    weighted = flags.pop("weighted", True)
    p = _params(d_in, d_sae, 25, torch.float32)
    x = torch.randn(B, d_in, generator=torch.Generator().manual_seed(26))
    dead = _dead(d_sae, n_dead, 27)
    out = []
    for topk in ("torch", impl):
        tr = _trainer(p, d_in, d_sae, k, torch.float32, weighted=weighted, kernels="triton", compact=compact,
                      aux_topk=topk, aux_impl="dense", **flags)  # fmt: skip
        tr._row_topk_on_cpu = True
        out.append(tr.triton_loss_and_grads(x, dead))
    assert calls == [d_in // 2]  # the kernel run only, k_aux = d_in / 2
    (la, ga), (lb, gb) = out
    assert float(lb["auxiliary_reconstruction_loss"]) > 0
    # bf16: the same entries and bf16 products; the sums differ in order only (torch.topk's picks are unordered)
    tol = 1e-3 if flags.get("bf16") else 1e-6
    assert float(la["auxiliary_reconstruction_loss"]) == pytest.approx(
        float(lb["auxiliary_reconstruction_loss"]), rel=tol
    )
    for gx, gy in zip(ga, gb):
        assert _rel(gx, gy) < tol


def test_aux_topk_auto_runs_topk_mask_over_all_columns_only(monkeypatch):
    """aux_topk="auto": topk_kernel.topk_mask where the selection runs over all d_sae columns (more than 3/4 of the
    latents dead), torch.topk over compacted columns (no kernel call); the same loss and gradients as "torch"."""
    from sae_rdp_plugin.fast import kernels as fk
    from sae_rdp_plugin.fast import topk_kernel

    if not fk.available("cpu"):
        pytest.skip("Triton kernels unavailable (no TRITON_INTERPRET)")
    monkeypatch.setattr(topk_kernel, "_BLOCK_32", 64)
    calls = []
    orig = topk_kernel.topk_mask
    monkeypatch.setattr(topk_kernel, "topk_mask", lambda x, k, keep, **kw: calls.append(k) or orig(x, k, keep, **kw))
    B, d_in, d_sae, k = 16, 32, 128, 4
    p = _params(d_in, d_sae, 35, torch.float32)
    x = torch.randn(B, d_in, generator=torch.Generator().manual_seed(36))
    for n_dead, runs in ((110, 1), (40, 0)):  # all 128 columns / the compacted d_sae/2 bucket
        dead = _dead(d_sae, n_dead, 37)
        out = []
        for topk in ("torch", "auto"):
            tr = _trainer(p, d_in, d_sae, k, torch.float32, kernels="triton", aux_topk=topk, aux_impl="dense")
            tr._row_topk_on_cpu = True
            assert (tr._aux_n_pad_of(dead) == d_sae) == bool(runs)
            out.append(tr.triton_loss_and_grads(x, dead))
        assert len(calls) == runs
        calls.clear()
        (la, ga), (lb, gb) = out
        assert float(lb["auxiliary_reconstruction_loss"]) > 0
        assert float(la["loss"]) == pytest.approx(float(lb["loss"]), rel=1e-6)
        for gx, gy in zip(ga, gb):
            assert _rel(gx, gy) < 1e-6


def test_aux_topk_is_validated():
    with pytest.raises(SaeRdpError, match="aux_topk"):
        FastTopKConfig(d_in=8, d_sae=16, k=2, aux_topk="bitonic")


def test_triton_step_aux_gradients_as_rows_equal_the_dense_layout(monkeypatch):
    """The fused step's compacted aux weight gradients given as RowsAt (the default) and as dense zero-filled
    matrices (step.AUX_GRAD_ROWS = "dense", the benchmarks' comparison arm): same loss and gradients."""
    from sae_rdp_plugin.fast import kernels as fk

    if not fk.available("cpu"):
        pytest.skip("Triton kernels unavailable (no TRITON_INTERPRET)")
    B, d_in, d_sae, k = 16, 32, 128, 4
    p = _params(d_in, d_sae, 31, torch.float32)
    x = torch.randn(B, d_in, generator=torch.Generator().manual_seed(32))
    dead = _dead(d_sae, 40, 33)
    out = []
    for layout in ("rows", "dense"):
        monkeypatch.setattr(step_mod, "AUX_GRAD_ROWS", layout)
        tr = _trainer(p, d_in, d_sae, k, torch.float32, kernels="triton", aux_impl="dense")
        assert tr._aux_n_pad_of(dead) < d_sae  # compacted: the RowsAt path
        out.append(tr.triton_loss_and_grads(x, dead))
    (la, ga), (lb, gb) = out
    assert float(lb["auxiliary_reconstruction_loss"]) > 0
    assert float(la["loss"]) == pytest.approx(float(lb["loss"]), rel=1e-6)
    for gx, gy in zip(ga, gb):
        assert _rel(gx, gy) < 1e-6
