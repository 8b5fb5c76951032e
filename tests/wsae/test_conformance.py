"""SAELens conformance of the four weighted architectures.

The contracts SAELens's own architecture tests check (tests/saes/test_*_sae.py, test_sae.py of SAELens):
registry lookups, config to_dict/from_dict round trips, forward/encode shapes, fold_W_dec_norm and
fold_activation_norm_scaling_factor, inference save/load, checkpoint save/load and attention ``hook_z``
reshaping, each parametrized over the weighted architectures at alpha 0 and alpha 1.

References are independent of the code under test: the stock SAELens class with the same parameters
(at alpha 0 every output and loss must be bit-identical to it; at any alpha everything but the
reconstruction losses must be), and float64 brute-force sums for the gamma-weighted losses.
"""

from __future__ import annotations

import copy

import pytest
import torch
from sae_lens import SAE
from sae_lens.registry import get_sae_class, get_sae_training_class
from sae_lens.saes.sae import SAEConfig, TrainingSAE, TrainingSAEConfig, TrainStepInput

import sae_rdp_plugin  # noqa: F401  (registers the architectures)
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.wsae.gamma import load_gamma_file

N_HEADS, D_HEAD = 4, 3
D_IN, D_SAE = N_HEADS * D_HEAD, 32
HOOK_Z = "blocks.0.attn.hook_z"
#: weighted name -> (stock name, stock config fields)
ARCHS = {
    "weighted_standard": ("standard", {"l1_coefficient": 0.3}),
    "weighted_topk": ("topk", {"k": 4}),
    "weighted_jumprelu": ("jumprelu", {"l0_coefficient": 0.5, "pre_act_loss_coefficient": 0.1}),
    "weighted_batchtopk": ("batchtopk", {"k": 4}),
}
ALPHAS = [0.0, 1.0]
RECON_LOSSES = {"mse_loss", "auxiliary_reconstruction_loss"}  # the only losses gamma weights

arch_alpha = pytest.mark.parametrize(("arch", "alpha"), [(a, al) for a in ARCHS for al in ALPHAS])


def activations(*lead: int, seed: int = 1) -> torch.Tensor:
    """Activations with per-dimension scales from 0.2 to 3 (so alpha = 1 gives a non-uniform gamma)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*lead, D_IN, generator=g) * torch.linspace(0.2, 3.0, D_IN) + 0.3


def config_dict(arch: str, alpha: float | None, hook_z: bool = False) -> dict:
    extra = next(fields for name, (stock, fields) in ARCHS.items() if arch in (name, stock))
    d = {"architecture": arch, "d_in": D_IN, "d_sae": D_SAE, **extra}
    if hook_z:
        d |= {"reshape_activations": "hook_z", "metadata": {"hook_name": HOOK_Z}}
    return d if alpha is None else d | {"alpha": alpha}


def pair(arch: str, alpha: float, hook_z: bool = False, seed: int = 0) -> tuple[TrainingSAE, TrainingSAE]:
    """(weighted SAE, stock SAE) with the same random parameters; the weighted one has gamma set from
    the variance of :func:`activations` (alpha = 0: gamma = 1)."""
    stock = TrainingSAE.from_dict(config_dict(ARCHS[arch][0], None, hook_z))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in stock.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
        if hasattr(stock, "threshold"):  # JumpReLU: thresholds must be positive
            stock.threshold.copy_(torch.rand_like(stock.threshold) * 0.1)
        if hasattr(stock, "topk_threshold"):
            stock.topk_threshold.fill_(0.2)
    weighted = TrainingSAE.from_dict(config_dict(arch, alpha, hook_z))
    weighted.load_state_dict(stock.state_dict())
    weighted.estimate_gamma([activations(4096, seed=7)], 1)
    return weighted, stock


def step(sae: TrainingSAE, x: torch.Tensor, dead: torch.Tensor | None = None):
    coeffs = {n: (c.value if hasattr(c, "value") else c) for n, c in sae.get_coefficients().items()}
    return sae.training_forward_pass(
        TrainStepInput(sae_in=x, coefficients=coeffs, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False)
    )


def weighted_sq_error64(gamma: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Brute force: per row sum_i gamma_i^2 (x_i - x_hat_i)^2, in float64, on rows flattened to d_in."""
    diff = (x.double() - x_hat.double()).reshape(-1, D_IN)
    return (diff.pow(2) * gamma.double().pow(2)).sum(-1)


def dead_mask(n_dead: int) -> torch.Tensor:
    m = torch.zeros(D_SAE, dtype=torch.bool)
    m[torch.randperm(D_SAE, generator=torch.Generator().manual_seed(3))[:n_dead]] = True
    return m


# ------------------------------------------------------------------------------------ registry / configs


@pytest.mark.parametrize("arch", list(ARCHS))
def test_registry_lookups(arch):
    stock = ARCHS[arch][0]
    sae_cls, cfg_cls = get_sae_training_class(arch)
    stock_sae_cls, stock_cfg_cls = get_sae_training_class(stock)
    assert issubclass(sae_cls, stock_sae_cls) and issubclass(cfg_cls, stock_cfg_cls)
    assert cfg_cls.architecture() == arch
    assert type(TrainingSAE.from_dict(config_dict(arch, 1.0))) is sae_cls
    # the final SAE is saved as the stock inference architecture, and a checkpoint loads as one
    inference_cfg_cls = cfg_cls(d_in=D_IN, d_sae=D_SAE).get_inference_config_class()
    assert inference_cfg_cls is stock_cfg_cls(d_in=D_IN, d_sae=D_SAE).get_inference_config_class()
    ckpt_sae_cls, _ = get_sae_class(arch)
    assert issubclass(ckpt_sae_cls, get_sae_class(inference_cfg_cls.architecture())[0])


@arch_alpha
def test_config_to_dict_from_dict_round_trips(arch, alpha):
    cfg = TrainingSAEConfig.from_dict(config_dict(arch, alpha, hook_z=True))
    reloaded = TrainingSAEConfig.from_dict(cfg.to_dict())
    assert type(reloaded) is type(cfg) is get_sae_training_class(arch)[1]
    assert reloaded.to_dict() == cfg.to_dict()
    assert reloaded.alpha == alpha

    # inference dict: the stock architecture's, plus the training provenance in the metadata
    stock_cfg = TrainingSAEConfig.from_dict(config_dict(ARCHS[arch][0], None, hook_z=True))
    inf, stock_inf = cfg.get_inference_sae_cfg_dict(), stock_cfg.get_inference_sae_cfg_dict()
    assert {k: v for k, v in inf.items() if k != "metadata"} == {k: v for k, v in stock_inf.items() if k != "metadata"}
    assert inf["metadata"]["training_architecture"] == arch
    assert inf["metadata"]["training_architecture_details"]["alpha"] == alpha
    reloaded_inf = SAEConfig.from_dict(inf)
    assert type(reloaded_inf) is get_sae_class(stock_inf["architecture"])[1]
    assert reloaded_inf.to_dict() == inf


# ------------------------------------------------------------------------------------ forward / loss


@arch_alpha
def test_forward_encode_shapes_and_stock_outputs(arch, alpha):
    weighted, stock = pair(arch, alpha)
    for lead in [(20,), (3, 5)]:
        x = activations(*lead)
        with torch.no_grad():
            feats, out = weighted.encode(x), weighted(x)
            assert feats.shape == (*lead, D_SAE) and out.shape == x.shape
            assert weighted.decode(feats).shape == x.shape
            # inference outputs do not depend on gamma
            assert torch.equal(feats, stock.encode(x)) and torch.equal(out, stock(x))


@arch_alpha
def test_training_forward_pass_against_stock_and_brute_force(arch, alpha):
    weighted, stock = pair(arch, alpha)
    x, dead = activations(64), dead_mask(10)
    w, s = step(weighted, x, dead), step(stock, x, dead)
    assert torch.equal(w.sae_out, s.sae_out) and torch.equal(w.feature_acts, s.feature_acts)
    assert set(w.losses) == set(s.losses)
    for name in w.losses:
        if alpha == 0 or name not in RECON_LOSSES:
            assert torch.equal(w.losses[name], s.losses[name]), name
    assert w.loss.shape == s.loss.shape == ()
    expected = weighted_sq_error64(weighted.gamma_float64, x, w.sae_out.detach()).mean()
    torch.testing.assert_close(w.losses["mse_loss"].double(), expected, rtol=1e-5, atol=1e-6)
    gamma = weighted.gamma_float64
    assert (gamma.max() / gamma.min() > 10) if alpha == 1 else torch.equal(gamma, torch.ones(D_IN, dtype=gamma.dtype))


# ------------------------------------------------------------------------------------ folding


@arch_alpha
@torch.no_grad()
def test_fold_W_dec_norm(arch, alpha):
    weighted, stock = pair(arch, alpha)
    weighted.W_dec.mul_(torch.linspace(0.5, 2.0, D_SAE).unsqueeze(1))  # norms far from 1
    stock.load_state_dict(weighted.state_dict())
    folded = copy.deepcopy(weighted)
    folded.fold_W_dec_norm()
    stock.fold_W_dec_norm()
    torch.testing.assert_close(folded.W_dec.norm(dim=-1), torch.ones(D_SAE))
    for name, tensor in stock.state_dict().items():
        assert torch.equal(folded.state_dict()[name], tensor), name
    x = activations(40)
    torch.testing.assert_close(folded(x), weighted(x), atol=1e-5, rtol=1e-4)
    assert torch.equal(folded.gamma_float64, weighted.gamma_float64)
    # the copy's loss uses the copy's gamma (the loss function is bound to the SAE, not shared)
    folded.set_gamma(torch.ones(D_IN))
    expected = weighted_sq_error64(torch.ones(D_IN), x, folded(x)).mean()
    torch.testing.assert_close(step(folded, x).losses["mse_loss"].double(), expected, rtol=1e-5, atol=1e-6)


@arch_alpha
@torch.no_grad()
def test_fold_activation_norm_scaling_factor(arch, alpha):
    weighted, stock = pair(arch, alpha)
    x = activations(50)
    original = weighted(x)
    weighted.fold_activation_norm_scaling_factor(2.0)
    stock.fold_activation_norm_scaling_factor(2.0)
    torch.testing.assert_close(2.0 * weighted(x / 2.0), original, atol=1e-5, rtol=1e-4)
    for name, tensor in stock.state_dict().items():
        assert torch.equal(weighted.state_dict()[name], tensor), name


# ------------------------------------------------------------------------------------ saving / loading


@arch_alpha
def test_inference_save_load_round_trip(arch, alpha, tmp_path):
    weighted, stock = pair(arch, alpha)
    weighted.save_inference_model(tmp_path / "w")
    stock.save_inference_model(tmp_path / "s")
    loaded, loaded_stock = SAE.load_from_disk(tmp_path / "w"), SAE.load_from_disk(tmp_path / "s")
    assert type(loaded) is type(loaded_stock)
    assert loaded.state_dict().keys() == loaded_stock.state_dict().keys()
    for name, tensor in loaded_stock.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x = activations(30)
    # BatchTopK trains with the batch's top k * batch size and is saved as a JumpReLU SAE with the learned
    # threshold (stock behaviour): its inference outputs are compared with the stock save only (above)
    if arch != "weighted_batchtopk":
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), weighted(x), atol=1e-5, rtol=1e-4)
    assert torch.equal(load_gamma_file(tmp_path / "w").gamma, weighted.gamma_float64)


@arch_alpha
def test_checkpoint_round_trip(arch, alpha, tmp_path):
    weighted, _ = pair(arch, alpha)
    weighted.save_model(tmp_path)
    resumed = TrainingSAE.from_dict(config_dict(arch, alpha))
    resumed.load_weights_from_checkpoint(tmp_path)
    reloaded = TrainingSAE.load_from_disk(tmp_path)
    for other in (resumed, reloaded):
        assert type(other) is type(weighted) and other.gamma_is_set
        assert other.state_dict().keys() == weighted.state_dict().keys()
        for name, tensor in weighted.state_dict().items():
            # SAELens's loaders cast every tensor to cfg.dtype (BatchTopK's float64 topk_threshold included)
            assert torch.equal(other.state_dict()[name], tensor.to(other.state_dict()[name].dtype)), name
        assert torch.equal(other.gamma_float64, weighted.gamma_float64)
        assert torch.equal(other.gamma, weighted.gamma)
    x = activations(30)
    if arch != "weighted_batchtopk":  # see test_inference_save_load_round_trip
        with torch.no_grad():
            torch.testing.assert_close(SAE.load_from_disk(tmp_path)(x), weighted(x), atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------ hook_z


def heads(x: torch.Tensor) -> torch.Tensor:
    """(..., d_in) -> hook_z's (..., n_heads, d_head), the inverse of SAELens's (n_heads d_head) flattening."""
    return x.reshape(*x.shape[:-1], N_HEADS, D_HEAD)


@arch_alpha
def test_hook_z_reshaping(arch, alpha):
    weighted, stock = pair(arch, alpha, hook_z=True)
    assert not weighted.hook_z_reshaping_mode  # training SAEs get flat activations, as stock ones
    weighted.turn_on_forward_pass_hook_z_reshaping()
    stock.turn_on_forward_pass_hook_z_reshaping()
    x_flat = activations(6, 5)
    x = heads(x_flat)

    with torch.no_grad():
        out, cache = weighted.run_with_cache(x)
        assert out.shape == x.shape and torch.equal(out, stock(x))
        assert cache["hook_sae_input"].shape == (6, 5, D_IN) and cache["hook_sae_acts_pre"].shape == (6, 5, D_SAE)

    n_dead = D_HEAD // 2  # few enough dead latents that the aux loss uses all of them whether or not flattened
    dead = dead_mask(n_dead)
    w, s = step(weighted, x, dead), step(stock, x, dead)
    assert w.sae_out.shape == x.shape and torch.equal(w.sae_out, s.sae_out)
    for name in w.losses:
        if alpha == 0 or name not in RECON_LOSSES:
            assert torch.equal(w.losses[name], s.losses[name]), name
    # SAELens's hook_z loss sums over d_head and averages over rows and heads: weighted flat loss / n_heads,
    # with gamma_i in flattening order i = h * d_head + j
    expected = weighted_sq_error64(weighted.gamma_float64, x, w.sae_out.detach()).mean() / N_HEADS
    torch.testing.assert_close(w.losses["mse_loss"].double(), expected, rtol=1e-5, atol=1e-6)
    weighted.turn_off_forward_pass_hook_z_reshaping()
    flat = step(weighted, x_flat, dead)
    torch.testing.assert_close(w.losses["mse_loss"] * N_HEADS, flat.losses["mse_loss"], rtol=1e-5, atol=1e-6)
    if "auxiliary_reconstruction_loss" in w.losses:  # TopK's aux scale min(n_dead / (last dim // 2), 1) differs too
        ratio = N_HEADS * min(n_dead / (D_IN // 2), 1) / min(n_dead / (D_HEAD // 2), 1)
        aux, aux_flat = w.losses["auxiliary_reconstruction_loss"], flat.losses["auxiliary_reconstruction_loss"]
        assert aux_flat > 0
        torch.testing.assert_close(aux * ratio, aux_flat, rtol=1e-5, atol=1e-6)


@arch_alpha
def test_hook_z_gamma_estimation_and_saved_sae(arch, alpha, tmp_path):
    x_flat = activations(500, seed=5)
    from_flat = TrainingSAE.from_dict(config_dict(arch, alpha, hook_z=True))
    from_heads = TrainingSAE.from_dict(config_dict(arch, alpha, hook_z=True))
    stats_flat = from_flat.estimate_gamma([x_flat[:200], x_flat[200:]], 2)
    stats_heads = from_heads.estimate_gamma([heads(x_flat[:200]), heads(x_flat[200:]).reshape(30, 10, 4, 3)], 2)
    assert stats_heads.n_samples == stats_flat.n_samples == 500
    assert torch.equal(stats_heads.variance, stats_flat.variance)
    assert torch.equal(from_heads.gamma_float64, from_flat.gamma_float64)
    with pytest.raises(SaeRdpError, match="n_heads, d_head"):
        from_heads.estimate_gamma([torch.randn(10, 5, 3)], 1)

    # no gamma given: the first training batch (hook_z shaped) is used, with a warning
    first = TrainingSAE.from_dict(config_dict(arch, alpha, hook_z=True))
    first.turn_on_forward_pass_hook_z_reshaping()
    if alpha == 0:
        step(first, heads(x_flat))
        assert torch.equal(first.gamma_float64, torch.ones(D_IN, dtype=torch.float64))
    else:
        with pytest.warns(UserWarning, match="first training batch only \\(500 samples\\)"):
            step(first, heads(x_flat))
        torch.testing.assert_close(first.gamma_float64, from_flat.gamma_float64, rtol=1e-12, atol=0)

    # the saved SAE reshapes hook_z activations at inference, as a stock hook_z SAE does
    from_flat.save_inference_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    assert loaded.hook_z_reshaping_mode
    with torch.no_grad():
        out = loaded(heads(x_flat))
        loaded.turn_off_forward_pass_hook_z_reshaping()
        assert torch.equal(out, heads(loaded(x_flat)))
