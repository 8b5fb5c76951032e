"""Stacked SAEs: step-by-step parity with SAELens's own SAETrainer, per architecture."""

import pytest
import torch

from sae_rdp_plugin.sweep.config import DGPSpec, SweepConfig
from sae_rdp_plugin.sweep.data import build_dgp
from sae_rdp_plugin.sweep.export import saelens_training_sae
from sae_rdp_plugin.sweep.members import enumerate_members
from sae_rdp_plugin.sweep.stacked import StackedSAEs


def _trainer_cfg(steps, batch, lr, dead_window):
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    return SAETrainerConfig(
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        total_training_samples=steps * batch,
        device="cpu",
        autocast=False,
        lr=lr,
        lr_end=lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        lr_decay_steps=0,
        n_restart_cycles=1,
        train_batch_size_samples=batch,
        dead_feature_window=dead_window,
        feature_sampling_window=2000,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
        n_batches_for_norm_estimate=10,
    )


@pytest.mark.parametrize(
    "arch, knob",
    [
        ("topk", {"ks": [2]}),
        ("batchtopk", {"ks": [1.5]}),
        ("standard", {"l1_coefficients": [0.3]}),
        ("jumprelu", {"l0_coefficients": [0.05]}),
    ],
)
def test_step_parity_with_saelens_trainer(arch, knob):
    """Same init, same batches: the stacked trainer and SAELens's SAETrainer give the same weights."""
    from sae_lens.training.sae_trainer import SAETrainer

    steps, batch, lr, window = 40, 64, 3e-3, 5  # window 5: the AuxK dead-latent loss is exercised
    spec = DGPSpec(name="p", m=6, d=10, rho=0.4, q=0.2)
    cfg = SweepConfig(
        dgps=[spec],
        architectures=[arch],
        widths=[8],
        seeds=[3, 4],
        steps=steps,
        batch_size=batch,
        lr=lr,
        dead_feature_window=window,
        **knob,
    )
    built = build_dgp(spec, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    batches = [built.sample(batch, g)[0].float() for _ in range(steps)]
    mbs = enumerate_members(cfg)
    model = StackedSAEs(cfg, arch, 8, 10, mbs, {"p": built.concepts}, torch.device("cpu"))
    ref = saelens_training_sae(cfg, mbs[0], 10)
    ref.load_state_dict(model.member_state(0))
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    for s, xb in enumerate(batches):
        loss, _ = model.loss(xb.unsqueeze(0).expand(len(mbs), -1, -1), s)
        loss.sum().backward()
        model.clip_grads_(1.0)
        opt.step()
        opt.zero_grad()
    trainer = SAETrainer(cfg=_trainer_cfg(steps, batch, lr, window), sae=ref, data_provider=iter(batches))
    trainer.fit()
    got = model.member_state(0)
    for k, v in ref.state_dict().items():
        assert torch.allclose(got[k].to(v.dtype), v, atol=2e-4, rtol=1e-3), (arch, k, (got[k] - v).abs().max())
    assert (model.since_fired[0] > window).sum() == trainer.dead_neurons.sum()
