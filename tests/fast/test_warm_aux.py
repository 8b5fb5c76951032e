"""FastTopKConfig.warm_aux: the aux path's kernels compiled at the first step by a scratch trainer. What the scratch
steps must not do is change training: the trained weights, Adam state and counters with and without the warm-up
are bit for bit equal (the same seed and batches), on the PyTorch kernels and on the Triton kernels (under the
interpreter here); the random generators are as they were; "auto" warms only on CUDA."""

from __future__ import annotations

import math

import pytest
import torch

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.fast.step import FastTopKConfig, FastTopKTrainer, aux_pad_buckets


def _trainer(d_in: int, d_sae: int, warm: str, kernels: str = "torch", weighted: bool = True, **cfg) -> FastTopKTrainer:
    g = torch.Generator().manual_seed(0)
    c = FastTopKConfig(d_in=d_in, d_sae=d_sae, k=2, kernels=kernels, warm_aux=warm, dead_feature_window=2, **cfg)
    return FastTopKTrainer(
        c,
        torch.randn(d_in, d_sae, generator=g) / math.sqrt(d_in),
        torch.randn(d_sae, generator=g) * 0.1,
        torch.randn(d_sae, d_in, generator=g) / math.sqrt(d_in),
        torch.randn(d_in, generator=g) * 0.1,
        gamma=torch.rand(d_in, generator=g) + 0.3 if weighted else None,
        device="cpu",
    )


def _train(t: FastTopKTrainer, steps: int, B: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        t.step(torch.randn(B, t.cfg.d_in, generator=g))
    state = [*t.params, *t.exp_avg, *t.exp_avg_sq, *t.state_steps, t.n_forward_passes_since_fired, t.act_freq_scores]
    return [s.clone() for s in state]


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_warm_up_leaves_training_bit_for_bit_unchanged(kernels):
    d_in, d_sae, B = 16, 256, 8
    if kernels == "triton":
        pytest.importorskip("triton")
        from sae_rdp_plugin.fast import kernels as fk

        if not fk.available("cpu"):
            pytest.skip("Triton's interpreter is not enabled")
    warm, cold = _trainer(d_in, d_sae, "on", kernels), _trainer(d_in, d_sae, "off", kernels)
    rng = torch.get_rng_state()
    a = _train(warm, 6, B)
    assert torch.equal(torch.get_rng_state(), rng)  # (the steps themselves draw nothing either)
    b = _train(cold, 6, B)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert sum(n for w, n in warm.aux_width_steps.items() if w) >= 3  # the aux loss ran in the real steps
    info = warm.aux_stats()["aux_warm"]
    k_aux = min(d_in // 2, d_sae)
    assert info["widths"] == [d_sae, aux_pad_buckets(d_sae, k_aux)[0]] and info["s"] > 0
    assert cold.aux_stats()["aux_warm"] is None


def test_in_place_trainer_warms_without_touching_the_saes_tensors():
    """in_place=True trains the given tensors (SAELens's layout): the scratch copy reads them, writes nothing."""
    d_in, d_sae = 8, 64
    g = torch.Generator().manual_seed(3)
    ts = [
        torch.randn(d_in, d_sae, generator=g),
        torch.zeros(d_sae),
        torch.randn(d_sae, d_in, generator=g),
        torch.zeros(d_in),
    ]
    before = [t.clone() for t in ts]
    c = FastTopKConfig(d_in=d_in, d_sae=d_sae, k=2, kernels="torch", warm_aux="on")
    t = FastTopKTrainer(c, *ts, in_place=True, device="cpu")
    t.warm_aux_path(torch.randn(4, d_in, generator=g))
    assert all(torch.equal(x, y) for x, y in zip(ts, before, strict=True)) and t.n_training_steps == 0
    assert t.aux_warm["widths"][0] == d_sae


def test_auto_warms_only_on_cuda_and_a_bad_value_is_refused():
    t = _trainer(8, 64, "auto")
    _train(t, 4, 4)
    assert t.aux_warm is None  # CPU: nothing to compile
    off = _trainer(8, 64, "on", aux_loss_coefficient=0.0)  # no aux loss: nothing to warm
    _train(off, 1, 4)
    assert off.aux_warm is None
    with pytest.raises(SaeRdpError, match="warm_aux must be auto, on or off, got 'yes'"):
        FastTopKConfig(d_in=8, d_sae=64, k=2, warm_aux="yes")


@pytest.mark.parametrize("in_place,bf16", [(True, True), (True, False), (False, True)])
def test_warm_up_launches_the_kernel_variants_the_aux_steps_use(in_place, bf16, monkeypatch):
    """The scratch steps launch the fused Adam / gradient kernels with the same layouts, dtypes and flags as this
    trainer's aux steps (Triton compiles one variant per such key): a scratch trainer in another layout than an
    in-place one (SAELens's W_enc [d_in, d_sae]) compiled other variants, and the real first aux step still
    compiled its own (seen on an H100)."""
    pytest.importorskip("triton")
    from sae_rdp_plugin.fast import kernels as fk
    from sae_rdp_plugin.fast.rows import RowsAt

    if not fk.available("cpu"):
        pytest.skip("Triton's interpreter is not enabled")
    seen: list[tuple[str, tuple]] = []
    phase = ["real"]
    launch = fk._launch

    def spy(crow, tok, coef, S, P, X, mode, **kw):
        x = X.rows if isinstance(X, RowsAt) else X
        key = (
            mode,
            isinstance(X, RowsAt),
            None if x is None else (x.dtype, tuple(x.stride())),
            P.dtype,
            tuple(P.stride()),
            S.dtype,
            tuple(sorted(k for k, v in kw.items() if v is not None)),
        )
        seen.append((phase[0], key))
        return launch(crow, tok, coef, S, P, X, mode, **kw)

    monkeypatch.setattr(fk, "_launch", spy)
    warm_path = FastTopKTrainer.warm_aux_path

    def tagged(self, x):
        phase[0] = "warm"
        try:
            return warm_path(self, x)
        finally:
            phase[0] = "real"

    monkeypatch.setattr(FastTopKTrainer, "warm_aux_path", tagged)
    d_in, d_sae = 16, 256
    g = torch.Generator().manual_seed(5)
    ts = [torch.randn(d_in, d_sae, generator=g) / 4, torch.zeros(d_sae), torch.randn(d_sae, d_in, generator=g) / 4]
    ts.append(torch.zeros(d_in))
    c = FastTopKConfig(d_in=d_in, d_sae=d_sae, k=2, kernels="triton", bf16=bf16, warm_aux="on", dead_feature_window=2)
    t = FastTopKTrainer(c, *ts, in_place=in_place, device="cpu")
    for _ in range(6):
        t.step(torch.randn(8, d_in, generator=g))
    assert sum(n for w, n in t.aux_width_steps.items() if w) >= 3
    warm = {k for p, k in seen if p == "warm"}
    aux = {k for p, k in seen if p == "real" and k[1]}  # the aux steps' launches (their gradients as RowsAt)
    assert aux and aux <= warm, aux - warm


@pytest.mark.gpu
def test_warm_up_is_skipped_when_the_gpu_lacks_the_memory(monkeypatch):
    """On CUDA the scratch trainer needs about 3x the parameters: with less than twice that free it is skipped (the
    aux kernels then compile at the first aux step, as without warm_aux) and the run goes on."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 20, 80 << 30))
    d_in, d_sae = 64, 4096
    g = torch.Generator().manual_seed(0)
    c = FastTopKConfig(d_in=d_in, d_sae=d_sae, k=4, warm_aux="on", dead_feature_window=2)
    t = FastTopKTrainer(
        c,
        torch.randn(d_in, d_sae, generator=g),
        torch.zeros(d_sae),
        torch.randn(d_sae, d_in, generator=g),
        torch.zeros(d_in),
        device="cuda",
    )
    t.step(torch.randn(32, d_in, generator=g).cuda())
    assert t.aux_warm["widths"] == [] and "GiB free" in t.aux_warm["skipped"] and t.n_training_steps == 1
