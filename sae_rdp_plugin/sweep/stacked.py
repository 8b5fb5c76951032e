"""A group of SAEs trained as one: stacked weights and batched matmuls.

The G members of a group (one architecture, width and input dimension:
:func:`sae_rdp_plugin.sweep.members.group_members`) have their weights stacked (``W_enc [G, d, n]``,
``W_dec [G, n, d]``, ``b_enc [G, n]``, ``b_dec [G, d]``) and are trained with batched matmuls
(``torch.baddbmm``/``bmm``) and one Adam over the stacked tensors (Adam is element-wise, so this
equals G independent Adams). One data stream per DGP is shared by every member trained on that DGP.
Per member: its own seed (initialisation), sparsity knob (K for TopK / BatchTopK, L1 coefficient for
ReLU, L0 coefficient for JumpReLU) and DGP.

Each architecture follows SAELens 6.54's training definition (``sae_lens/saes/*_sae.py`` and
``training/sae_trainer.py``):

* ``topk``: z = ReLU(TopK_K(pre * |W_dec row|)) with pre = (x - b_dec) W_enc + b_enc
  (``rescale_acts_by_decoder_norm``), x_hat = (z / |W_dec row|) W_dec + b_dec; loss = sum-over-dims MSE +
  the AuxK dead-latent loss (k_aux = d/2 top dead latents reconstruct the residual, scaled by
  min(n_dead / k_aux, 1)).
* ``standard`` (ReLU + L1): z = ReLU(pre); loss = MSE + l1 * || z * |W_dec row| ||_1.
* ``jumprelu``: z = pre * 1[pre > theta] with SAELens's straight-through estimators (rectangle kernel,
  bandwidth), loss = MSE + l0 * sum_j Step(pre_j - theta_j) ("step" mode); theta projected to >= 0.
* ``batchtopk``: TopK over the whole batch (K * B largest ReLU'd, decoder-norm-rescaled
  pre-activations), AuxK loss, and a running threshold theta <- (1 - lr) theta + lr * min positive act,
  used at evaluation (and exported) as a JumpReLU threshold.

Common: SAELens's initialisation (kaiming-uniform decoder rows rescaled to ``decoder_init_norm``,
W_enc = W_dec^T, zero biases), b_dec subtracted from the input (``apply_b_dec_to_input``), per-SAE
gradient-norm clipping at 1.0, Adam(0.9, 0.999), SAELens's lr scheduler, a latent counts as dead after
``dead_feature_window`` steps without firing. Optional monosemantic initialisation ("atoms = concepts",
as ``sae_lens.synthetic.init_sae_to_match_feature_dict``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sae_rdp_plugin.sweep.config import SweepConfig
from sae_rdp_plugin.sweep.members import Member


def _rectangle(x: torch.Tensor) -> torch.Tensor:
    return ((x > -0.5) & (x < 0.5)).to(x)


class _JumpReLU(torch.autograd.Function):
    """SAELens's JumpReLU with a per-member threshold [G, 1, n]: gradients sum over the batch (dim 1)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, threshold: torch.Tensor, bandwidth: float, ste_to_input: bool
    ) -> torch.Tensor:
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth, ctx.ste_to_input = bandwidth, ste_to_input
        return x * (x > threshold)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, thr = ctx.saved_tensors
        bw = ctx.bandwidth
        ste = (thr / bw) * _rectangle((x - thr) / bw) * g
        x_grad = (x > thr) * g
        if ctx.ste_to_input:
            x_grad = x_grad + ste
        return x_grad, (-ste).sum(dim=1, keepdim=True), None, None


class _Step(torch.autograd.Function):
    """SAELens's Heaviside step with the rectangle straight-through estimator, per-member threshold."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, threshold: torch.Tensor, bandwidth: float, ste_to_input: bool
    ) -> torch.Tensor:
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth, ctx.ste_to_input = bandwidth, ste_to_input
        return (x > threshold).to(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, thr = ctx.saved_tensors
        ste = (1.0 / ctx.bandwidth) * _rectangle((x - thr) / ctx.bandwidth) * g
        return (ste if ctx.ste_to_input else None), (-ste).sum(dim=1, keepdim=True), None, None


class StackedSAEs(torch.nn.Module):
    """G SAEs of one architecture and width, stacked. Parameters follow SAELens's layout per member:
    ``W_enc[g]`` [d, n], ``W_dec[g]`` [n, d], ``b_enc[g]`` [n], ``b_dec[g]`` [d]
    (+ ``threshold[g]`` [n] for jumprelu; buffer ``topk_threshold[g]`` for batchtopk)."""

    def __init__(
        self,
        cfg: SweepConfig,
        arch: str,
        width: int,
        d: int,
        members: list[Member],
        concepts: dict[str, torch.Tensor],
        device: torch.device,
    ):
        super().__init__()
        G, n = len(members), width
        dtype = getattr(torch, cfg.dtype)
        self.cfg, self.arch, self.n, self.d, self.G = cfg, arch, n, d, G
        W_dec = torch.empty(G, n, d, dtype=dtype)
        W_enc = torch.empty(G, d, n, dtype=dtype)
        for i, mb in enumerate(members):
            gen = torch.Generator().manual_seed(mb.seed)
            bound = math.sqrt(2.0) * math.sqrt(3.0 / d)  # nn.init.kaiming_uniform_ on [n, d], a=0
            w = (torch.rand(n, d, generator=gen, dtype=torch.float32) * 2 - 1) * bound
            if cfg.decoder_init_norm is not None:
                w = w / w.norm(dim=-1, keepdim=True) * cfg.decoder_init_norm
            if mb.init == "monosemantic":  # as sae_lens.synthetic.init_sae_to_match_feature_dict
                v = concepts[mb.dgp].detach().float().cpu()
                k = min(n, v.shape[0])
                w[:k] = v[:k] + cfg.monosemantic_init_noise * torch.randn(k, d, generator=gen)
            W_dec[i] = w.to(dtype)
            W_enc[i] = w.T.to(dtype)
        self.W_enc = torch.nn.Parameter(W_enc.to(device))
        self.W_dec = torch.nn.Parameter(W_dec.to(device))
        self.b_enc = torch.nn.Parameter(torch.zeros(G, n, dtype=dtype, device=device))
        self.b_dec = torch.nn.Parameter(torch.zeros(G, d, dtype=dtype, device=device))
        if arch == "jumprelu":
            self.threshold = torch.nn.Parameter(
                torch.full((G, n), cfg.jumprelu_init_threshold, dtype=torch.float32, device=device)
            )
        self.register_buffer("topk_threshold", torch.zeros(G, dtype=torch.float64, device=device))
        self.register_buffer("since_fired", torch.zeros(G, n, device=device))
        ks = [mb.k if mb.k is not None else 0 for mb in members]
        self.register_buffer("k", torch.tensor(ks, dtype=torch.float64, device=device))
        self.k_list = [float(k) for k in ks]  # host copy: no device sync per step
        coef = [
            (mb.l1_coefficient if arch == "standard" else mb.l0_coefficient if arch == "jumprelu" else 0.0) or 0.0
            for mb in members
        ]
        self.register_buffer("coef", torch.tensor(coef, dtype=torch.float32, device=device))
        self.rescale = cfg.rescale_acts_by_decoder_norm and arch in ("topk", "batchtopk")

    # -- forward pieces

    def hidden_pre(self, x: torch.Tensor) -> torch.Tensor:
        sae_in = x - self.b_dec[:, None, :] if self.cfg.apply_b_dec_to_input else x
        pre = torch.baddbmm(self.b_enc[:, None, :], sae_in, self.W_enc)
        if self.rescale:
            pre = pre * self.W_dec.norm(dim=-1)[:, None, :]
        return pre

    def decode(self, acts: torch.Tensor, bias: bool = True) -> torch.Tensor:
        if self.rescale:
            acts = acts * (1.0 / self.W_dec.norm(dim=-1))[:, None, :]
        out = torch.bmm(acts, self.W_dec)
        return out + self.b_dec[:, None, :] if bias else out

    def _topk(self, pre: torch.Tensor) -> torch.Tensor:
        kmax = int(max(self.k_list))
        vals, idx = pre.topk(kmax, dim=-1)
        keep = torch.arange(kmax, device=pre.device)[None, None, :] < self.k.to(pre.dtype)[:, None, None]
        vals = vals.relu() * keep
        return torch.zeros_like(pre).scatter(-1, idx, vals)

    def _batchtopk(self, pre: torch.Tensor) -> torch.Tensor:
        G, B, n = pre.shape
        acts = pre.relu().reshape(G, B * n)
        kk = (self.k * B).floor().long()  # int(k * num_samples) as in SAELens
        kmax = min(int(max(self.k_list) * B), B * n)
        vals, idx = acts.topk(kmax, dim=-1)
        keep = torch.arange(kmax, device=pre.device)[None, :] < kk[:, None]
        return torch.zeros_like(acts).scatter(-1, idx, vals * keep).reshape(G, B, n)

    def encode_train(self, pre: torch.Tensor) -> torch.Tensor:
        if self.arch == "topk":
            return self._topk(pre)
        if self.arch == "batchtopk":
            return self._batchtopk(pre)
        if self.arch == "standard":
            return pre.relu()
        thr = self.threshold.to(pre.dtype)[:, None, :]
        return _JumpReLU.apply(pre, thr, self.cfg.jumprelu_bandwidth, self.cfg.jumprelu_ste_to_input)

    @torch.no_grad()
    def encode_eval(self, x: torch.Tensor) -> torch.Tensor:
        """Inference encoding (BatchTopK becomes a JumpReLU with its learned threshold, as SAELens saves it)."""
        pre = self.hidden_pre(x)
        if self.arch == "topk":
            return self._topk(pre)
        if self.arch == "standard":
            return pre.relu()
        if self.arch == "jumprelu":
            thr = self.threshold.to(pre.dtype)[:, None, :]
            return pre * (pre > thr)
        thr = self.topk_threshold.to(pre.dtype)[:, None, None]
        return pre.relu() * (pre > thr)

    def loss(self, x: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-member losses [G] (summed for backward) as SAELens computes them for one SAE."""
        cfg = self.cfg
        dead = self.since_fired > cfg.dead_feature_window  # before this step, as SAETrainer
        if self.arch == "jumprelu":
            with torch.no_grad():
                self.threshold.data.clamp_(min=0.0)
        pre = self.hidden_pre(x)
        acts = self.encode_train(pre)
        out = self.decode(acts)
        mse = (out - x).pow(2).sum(-1).mean(-1)
        terms = {"mse": mse}
        if self.arch == "standard":
            w = min(step / cfg.l1_warm_up_steps, 1.0) if cfg.l1_warm_up_steps > 0 else 1.0
            dn = self.W_dec.norm(dim=-1)[:, None, :]
            terms["l1"] = self.coef * w * (acts * dn).abs().sum(-1).mean(-1)
        elif self.arch == "jumprelu":
            w = min(step / cfg.l0_warm_up_steps, 1.0) if cfg.l0_warm_up_steps > 0 else 1.0
            thr = self.threshold.to(pre.dtype)[:, None, :]
            l0 = _Step.apply(pre, thr, cfg.jumprelu_bandwidth, cfg.jumprelu_ste_to_input).sum(-1)
            terms["l0"] = self.coef * w * l0.mean(-1)
        else:
            terms["aux"] = self._aux_loss(x, out, pre, dead)
        with torch.no_grad():
            fired = (acts != 0).any(dim=1)
            self.since_fired += 1
            self.since_fired[fired] = 0
            if self.arch == "batchtopk":
                pos = acts > 0
                mn = torch.where(pos, acts, torch.full_like(acts, float("inf"))).amin(dim=(1, 2)).double()
                lr = cfg.topk_threshold_lr
                upd = (1 - lr) * self.topk_threshold + lr * mn
                self.topk_threshold.copy_(torch.where(pos.any(dim=(1, 2)), upd, self.topk_threshold))
        total = sum(terms.values())
        return total, {**terms, "l0_batch": (acts != 0).float().sum(-1).mean(-1).detach()}

    def _aux_loss(self, x: torch.Tensor, out: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        # Sync-free: always computed, masked to zero for members without dead latents.
        n_dead = dead.sum(-1)  # [G]
        k_aux = self.d // 2
        scale = (n_dead.to(x.dtype) / k_aux).clamp(max=1.0)
        kg = n_dead.clamp(max=k_aux)
        kmax = min(k_aux, self.n)
        residual = (x - out).detach()
        lat = torch.where(dead[:, None, :], pre, torch.full_like(pre, -torch.inf))
        vals, idx = lat.topk(kmax, dim=-1)
        keep = torch.arange(kmax, device=x.device)[None, None, :] < kg[:, None, None]
        vals = torch.where(keep, vals, torch.zeros_like(vals))
        aux_acts = torch.zeros_like(pre).scatter(-1, idx, vals)
        recons = self.decode(aux_acts, bias=False)
        loss = (recons - residual).pow(2).sum(-1).mean(-1)
        return torch.where(n_dead > 0, self.cfg.aux_loss_coefficient * scale * loss, torch.zeros_like(loss))

    @torch.no_grad()
    def clip_grads_(self, max_norm: float) -> None:
        """torch.nn.utils.clip_grad_norm_(sae.parameters(), max_norm) applied to each member separately."""
        params = [p for p in self.parameters() if p.grad is not None]
        sq = sum(p.grad.reshape(self.G, -1).float().pow(2).sum(1) for p in params)
        coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for p in params:
            p.grad.mul_(coef.view(self.G, *([1] * (p.grad.ndim - 1))).to(p.grad.dtype))

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        """SAELens training-SAE state dict of member i (before the inference fold)."""
        sd = {
            "W_enc": self.W_enc[i].detach().float().cpu().contiguous(),
            "W_dec": self.W_dec[i].detach().float().cpu().contiguous(),
            "b_enc": self.b_enc[i].detach().float().cpu().contiguous(),
            "b_dec": self.b_dec[i].detach().float().cpu().contiguous(),
        }
        if self.arch == "jumprelu":
            sd["threshold"] = self.threshold[i].detach().float().cpu().contiguous()
        if self.arch == "batchtopk":
            sd["topk_threshold"] = self.topk_threshold[i].detach().cpu().clone()
        return sd


def make_optimizer(cfg: SweepConfig, model: torch.nn.Module, device: torch.device) -> tuple[torch.optim.Adam, Any]:
    """One Adam over the stacked tensors (element-wise, so G independent Adams) and SAELens's lr scheduler."""
    from sae_lens.training.optim import get_lr_scheduler

    kw: dict[str, Any] = {}
    if device.type == "cuda":
        kw["fused"] = True
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), **kw)
    sched = get_lr_scheduler(
        cfg.lr_scheduler_name,
        optimizer=opt,
        training_steps=cfg.steps,
        lr=cfg.lr,
        warm_up_steps=cfg.lr_warm_up_steps,
        decay_steps=cfg.lr_decay_steps,
        lr_end=cfg.lr if cfg.lr_end is None else cfg.lr_end,
        num_cycles=1,
    )
    return opt, sched
