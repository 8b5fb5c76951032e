"""FastTopKConfig.dead_count="lagged": the step picks its graph (with or without the dead-latent aux loss) and the aux
selection's padded width from an upper bound of the dead count recorded DEAD_COUNT_LAG steps earlier instead of
counting the dead latents each step (a host sync). Checked against the counting step ("sync") on the same data:
the bound never under-counts (every step's exact count, recomputed independently from the counters), and the
losses and parameters agree, including steps where the bound is positive but no latent is dead (the aux loss
then runs with coefficient 0, as SAELens's is 0). Small shapes, CPU (PyTorch kernels)."""

from __future__ import annotations

import math

import pytest
import torch

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.fast import step as step_mod
from sae_rdp_plugin.fast.step import FastTopKConfig, FastTopKTrainer

D_IN, D_SAE, K, B = 16, 96, 4, 48


def _data(n_steps: int, seed: int) -> list[torch.Tensor]:
    """Batches in a 3-dimensional subspace of R^16 plus small noise: most latents stop firing, so latents die
    and some revive (the aux loss runs at several widths and the dead count moves both ways)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(3, D_IN, generator=g, dtype=torch.float64)
    return [
        (torch.randn(B, 3, generator=g, dtype=torch.float64) @ basis + 0.05 * torch.randn(B, D_IN, generator=g))
        .float()
        .contiguous()
        for _ in range(n_steps)
    ]


def _trainer(dead_count: str, window: int, compact: str) -> FastTopKTrainer:
    g = torch.Generator().manual_seed(7)
    W_enc = torch.randn(D_IN, D_SAE, generator=g) / math.sqrt(D_IN)
    W_dec = torch.randn(D_SAE, D_IN, generator=g) / math.sqrt(D_IN)
    cfg = FastTopKConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        k=K,
        kernels="torch",
        dead_feature_window=window,
        aux_compact=compact,
        dead_count=dead_count,
        lr=1e-2,
    )
    return FastTopKTrainer(cfg, W_enc, torch.zeros(D_SAE), W_dec, torch.zeros(D_IN), dtype=torch.float32, device="cpu")


def _run(t: FastTopKTrainer, batches: list[torch.Tensor], log: list | None = None) -> list[dict]:
    out = []
    for x in batches:
        if log is not None:  # the exact count this step uses, from the counters, before the step
            n = t.n_training_steps
            exact = int((t.n_forward_passes_since_fired > t.cfg.dead_feature_window).sum())
            log.append((n, exact if n > t.cfg.dead_feature_window else 0))
        out.append({k: v.detach().clone() for k, v in t.step(x).items()})
    return out


@pytest.mark.parametrize("window", [3, 12])  # 3 < DEAD_COUNT_LAG: the bound is then every latent
@pytest.mark.parametrize("compact", ["off", "auto"])
def test_lagged_matches_sync(window: int, compact: str) -> None:
    batches = _data(60, seed=1)
    a, b = _trainer("sync", window, compact), _trainer("lagged", window, compact)
    bounds: list[tuple[int, int | None]] = []
    lag = b.lagged_dead_count
    real = lag.bound

    def spy(step: int) -> int | None:
        v = real(step)
        bounds.append((step, v))
        return v

    lag.bound = spy  # type: ignore[method-assign]
    exact: list[tuple[int, int]] = []
    la, lb = _run(a, batches, exact), _run(b, batches)
    # the bound holds every dead latent, was used, and was loose at some steps (the coefficient-0 aux steps)
    ex = dict(exact)
    used = [(n, v) for n, v in bounds if v is not None and n > window]
    assert used and all(v >= ex[n] for n, v in used)
    assert any(v > 0 and ex[n] == 0 for n, v in used) or any(v > ex[n] for n, v in used)
    assert max(ex.values()) > 0  # latents did die
    for x, y in zip(la, lb):
        for key in ("mse_loss", "auxiliary_reconstruction_loss", "loss", "l0", "fired"):
            torch.testing.assert_close(y[key], x[key], rtol=1e-5, atol=1e-6)
    for p, q in zip(a.params, b.params):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.n_forward_passes_since_fired, a.n_forward_passes_since_fired)
    # the aux loss ran at least wherever it ran when counting; the exact dead sum is the same
    sa, sb = a.aux_stats(), b.aux_stats()
    assert sum(n for w, n in sb["aux_steps_by_width"].items() if w != "0") >= sum(
        n for w, n in sa["aux_steps_by_width"].items() if w != "0"
    )
    dead_sum_a = (
        sa["mean_dead_fraction_aux_steps"] * D_SAE * sum(n for w, n in sa["aux_steps_by_width"].items() if w != "0")
    )
    dead_sum_b = (
        sb["mean_dead_fraction_aux_steps"] * D_SAE * sum(n for w, n in sb["aux_steps_by_width"].items() if w != "0")
    )
    assert round(dead_sum_a) == round(dead_sum_b)


def test_no_bound_before_the_window_and_fallback_after_a_jump() -> None:
    t = _trainer("lagged", 12, "auto")
    batches = _data(20, seed=2)
    _run(t, batches[:5])
    assert t.lagged_dead_count.bound(t.n_training_steps) is None  # nothing recorded while no latent can be dead
    _run(t, batches[5:])
    t.n_training_steps += 1000  # e.g. a resumed run's counter: the recorded bounds are for other steps
    assert t.lagged_dead_count.bound(t.n_training_steps) is None  # the step counts exactly instead


def test_train_saes_path_lagged_matches_sync(tmp_path, monkeypatch) -> None:
    """train_saes installs the fast step into SAELens's SAETrainer (install_fast_step), whose own counters give the
    dead mask: the lagged bounds come from those counters there, and the saved SAE equals the counting run's."""
    from safetensors.torch import load_file

    from sae_rdp_plugin.train.config import TrainConfig
    from sae_rdp_plugin.train.lm import SAESpec, train_saes

    g = torch.Generator().manual_seed(5)
    basis = torch.randn(3, D_IN, generator=g)
    batches = [
        {"h": torch.randn(B, 3, generator=g) @ basis + 0.05 * torch.randn(B, D_IN, generator=g)} for _ in range(40)
    ]
    used: list[int] = []
    real = step_mod.LaggedDeadCount.bound

    def spy(self, step: int) -> int | None:
        v = real(self, step)
        if v is not None:
            used.append(v)
        return v

    monkeypatch.setattr(step_mod.LaggedDeadCount, "bound", spy)
    weights = []
    for mode in ("sync", "lagged"):
        c = TrainConfig(
            "topk", d_in=D_IN, d_sae=D_SAE, k=K, batch_size=B, tokens=40 * B, lr=1e-2, seed=1, dead_feature_window=6
        )
        out = tmp_path / mode
        opts = {"dead_count": mode, "kernels": "torch"}
        train_saes(iter(batches), [SAESpec("h", c, out)], tokens=40 * B, progress=False, fast_options=opts)
        weights.append(load_file(str(next(out.rglob("sae_weights.safetensors")))))
    assert used and max(used) > 0  # bounds were read, and latents were (or could have been) dead
    for name, w in weights[0].items():
        torch.testing.assert_close(weights[1][name], w, rtol=1e-5, atol=1e-6)


def test_lag_is_positive_and_option_checked() -> None:
    assert step_mod.DEAD_COUNT_LAG >= 1
    with pytest.raises(SaeRdpError, match="dead_count must be sync or lagged"):
        FastTopKConfig(d_in=4, d_sae=8, k=2, dead_count="later")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lagged_matches_sync_on_cuda_with_graphs() -> None:
    """On CUDA the steps replay as CUDA graphs (Triton kernels) and the host runs up to DEAD_COUNT_LAG steps
    ahead: the same comparison at LM-like widths, bf16."""
    d_in, d_sae, k, b = 256, 4096, 32, 1024
    g = torch.Generator().manual_seed(3)
    basis = torch.randn(8, d_in, generator=g)
    batches = [(torch.randn(b, 8, generator=g) @ basis + 0.05 * torch.randn(b, d_in, generator=g)) for _ in range(80)]
    W_enc = torch.randn(d_in, d_sae, generator=g) / math.sqrt(d_in)
    W_dec = torch.randn(d_sae, d_in, generator=g) / math.sqrt(d_in)
    runs = []
    for mode in ("sync", "lagged"):
        cfg = FastTopKConfig(d_in=d_in, d_sae=d_sae, k=k, dead_feature_window=10, dead_count=mode, deterministic=True)
        t = FastTopKTrainer(
            cfg, W_enc, torch.zeros(d_sae), W_dec, torch.zeros(d_in), dtype=torch.bfloat16, device="cuda"
        )
        losses = [t.step(x.cuda())["loss"] for x in batches]
        torch.cuda.synchronize()
        runs.append((torch.stack(losses).float().cpu(), [p.float().cpu() for p in t.params], t.aux_stats()))
    (la, pa, sa), (lb, pb, sb) = runs
    assert sb["cuda_graph_failed"] is None and sum(n for w, n in sb["aux_steps_by_width"].items() if w != "0") > 0
    torch.testing.assert_close(lb, la, rtol=2e-2, atol=1e-3)
    for p, q in zip(pa, pb):
        assert float((q - p).norm() / p.norm()) < 2e-2
