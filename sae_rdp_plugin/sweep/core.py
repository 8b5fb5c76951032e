"""Batched sweeps: train a whole grid of small SAEs at once on one device, and measure each member's
rate, distortion and polysemanticity against the known concepts of its DGP (THEORY.md sections 2-4).

Members that share an architecture, width and input dimension form a *group*; a group's weights are
stacked (``W_enc [G, d, n]``, ``W_dec [G, n, d]``, ``b_enc [G, n]``, ``b_dec [G, d]``) and trained with
batched matmuls (``torch.baddbmm``/``bmm``) and one Adam over the stacked tensors (Adam is
element-wise, so this equals G independent Adams). One data stream per DGP is shared by every member
trained on that DGP. Per member: its own seed (initialisation), sparsity knob (K for TopK / BatchTopK,
L1 coefficient for ReLU, L0 coefficient for JumpReLU) and DGP.

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

Checkpoints: ``out_dir/state.json`` (config, per-group status) and ``out_dir/groups/<gid>.safetensors``
(weights, Adam moments, dead-latent counters, RNG state), written atomically every
``checkpoint_every`` steps and when a group finishes; finished members' results are in
``out_dir/members/<member_id>.json``. ``train_sweep(..., resume=True)`` skips finished groups and
continues an interrupted one from its last checkpoint. :func:`export_member` writes any member as a
stock SAELens SAE folder (``SAE.load_from_disk``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.io import atomic_save, atomic_write_json

ARCHITECTURES = ("topk", "standard", "jumprelu", "batchtopk")
DGP_KINDS = ("pairs", "blocks", "bernoulli", "explicit", "saelens")

__all__ = [
    "ARCHITECTURES",
    "DGPSpec",
    "SweepConfig",
    "Member",
    "BuiltDGP",
    "build_dgp",
    "enumerate_members",
    "train_sweep",
    "load_results",
    "export_member",
    "load_config",
]


# ----------------------------------------------------------------------------- config


@dataclass
class DGPSpec:
    """One data-generating process of a sweep.

    kind:
      * "pairs": ``sae_rdp_plugin.rdp.dgp.cooccurring_pairs(m, rho, q)``: pairs {0,1}, {2,3}, .. fire
        together with mixture weight ``rho`` (the co-occurrence knob); otherwise independent Bernoulli(q)
        (``base="independent"``) or at most one concept (``base="exclusive"``).
      * "blocks": ``CooccurringBlocksPMF(m, blocks, q, rho, base=base)``.
      * "bernoulli": independent firing with probability q (no extra co-occurrence).
      * "explicit": an explicit table ``pmf`` in the PMF-file format ({"0,1": 0.4, ...}).
      * "saelens": a SAELens ``SyntheticModel`` built from ``saelens_config`` (a
        ``SyntheticModelConfig.to_dict()``-style dict: hierarchy, low-rank correlation, Zipfian firing,
        magnitudes ...); its feature vectors are the concepts.
    Concepts (non-saelens kinds): ``concepts="orthonormal"`` (d >= m) or ``"random"`` unit vectors,
    seeded by ``concept_seed``; observations x = sum_S c_l v_l + noise (``magnitude``, ``noise_std``).
    """

    name: str
    kind: str = "pairs"
    m: int = 8
    d: int = 16
    rho: float = 0.0
    q: float | list[float] = 0.1
    base: str = "independent"
    blocks: list[list[int]] | None = None
    pmf: dict[str, float] | None = None
    concepts: str = "orthonormal"
    concept_seed: int = 0
    magnitude: str = "binary"
    noise_std: float = 0.0
    saelens_config: dict[str, Any] | None = None


@dataclass
class SweepConfig:
    """A grid of SAEs trained together. The grid is the product
    dgps x architectures x widths x sparsity knob (``ks`` for topk/batchtopk, ``l1_coefficients`` for
    standard, ``l0_coefficients`` for jumprelu) x seeds x inits. Training hyper-parameters default to
    SAELens's (``train_toy_sae``: constant lr 3e-4, Adam(0.9, 0.999), grad-norm clip 1.0,
    dead_feature_window 1000)."""

    dgps: list[DGPSpec]
    architectures: list[str] = field(default_factory=lambda: ["topk"])
    widths: list[int] = field(default_factory=lambda: [8])
    ks: list[float] = field(default_factory=lambda: [1, 2])
    l1_coefficients: list[float] = field(default_factory=lambda: [1.0])
    l0_coefficients: list[float] = field(default_factory=lambda: [0.1])
    seeds: list[int] = field(default_factory=lambda: [0])
    inits: list[str] = field(default_factory=lambda: ["random"])
    steps: int = 2000
    batch_size: int = 1024
    lr: float = 3e-4
    lr_scheduler_name: str = "constant"
    lr_warm_up_steps: int = 0
    lr_decay_steps: int = 0
    lr_end: float | None = None
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    grad_clip_norm: float | None = 1.0
    decoder_init_norm: float | None = 0.1
    apply_b_dec_to_input: bool = True
    rescale_acts_by_decoder_norm: bool = True
    aux_loss_coefficient: float = 1.0
    dead_feature_window: int = 1000
    topk_threshold_lr: float = 0.01
    jumprelu_init_threshold: float = 0.01
    jumprelu_bandwidth: float = 0.05
    jumprelu_ste_to_input: bool = False
    l1_warm_up_steps: int = 0
    l0_warm_up_steps: int = 0
    monosemantic_init_noise: float = 0.0
    eval_samples: int = 20000
    eval_seed: int = 12345
    data_seed: int = 0
    checkpoint_every: int = 500
    max_group_size: int | None = None
    record_every: int = 0
    dtype: str = "float32"

    # -- (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepConfig:
        if not isinstance(d, dict):
            raise SaeRdpError("sweep config must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SaeRdpError(f"unknown sweep config key(s): {', '.join(unknown)}")
        if "dgps" not in d:
            raise SaeRdpError("sweep config needs 'dgps' (a list of DGP specs)")
        dnames = {f.name for f in dataclasses.fields(DGPSpec)}
        dgps = []
        for i, g in enumerate(d["dgps"] if isinstance(d["dgps"], list) else [None]):
            if not isinstance(g, dict):
                raise SaeRdpError(f"dgps[{i}] must be an object")
            bad = sorted(set(g) - dnames)
            if bad:
                raise SaeRdpError(f"dgps[{i}]: unknown key(s): {', '.join(bad)}")
            if "name" not in g:
                raise SaeRdpError(f"dgps[{i}] needs a 'name'")
            dgps.append(DGPSpec(**g))
        cfg = cls(**{**d, "dgps": dgps})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise SaeRdpError naming the first problem."""
        if not self.dgps:
            raise SaeRdpError("sweep config needs at least one DGP")
        seen = set()
        for g in self.dgps:
            if g.name in seen:
                raise SaeRdpError(f"duplicate DGP name {g.name!r}")
            seen.add(g.name)
            if g.kind not in DGP_KINDS:
                raise SaeRdpError(f"DGP {g.name!r}: unknown kind {g.kind!r} (one of {', '.join(DGP_KINDS)})")
            if g.kind != "saelens" and (int(g.m) < 1 or int(g.d) < 1):
                raise SaeRdpError(f"DGP {g.name!r}: m and d must be positive")
        for a in self.architectures:
            if a not in ARCHITECTURES:
                raise SaeRdpError(f"unknown architecture {a!r} (one of {', '.join(ARCHITECTURES)})")
        if not self.architectures:
            raise SaeRdpError("sweep config needs at least one architecture")
        for w in self.widths:
            if not isinstance(w, int) or w < 1:
                raise SaeRdpError(f"widths must be positive integers, got {w!r}")
        for k in self.ks:
            if not isinstance(k, (int, float)) or k <= 0:
                raise SaeRdpError(f"ks must be positive, got {k!r}")
        for c in list(self.l1_coefficients) + list(self.l0_coefficients):
            if not isinstance(c, (int, float)) or c < 0 or not math.isfinite(c):
                raise SaeRdpError(f"sparsity coefficients must be finite and >= 0, got {c!r}")
        for i in self.inits:
            if i not in ("random", "monosemantic"):
                raise SaeRdpError(f"unknown init {i!r} (random or monosemantic)")
        for name in ("steps", "batch_size", "eval_samples", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise SaeRdpError(f"{name} must be a positive integer, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SaeRdpError(f"lr must be positive, got {self.lr}")
        if self.dtype not in ("float32", "float64", "bfloat16"):
            raise SaeRdpError(f"dtype must be float32, float64 or bfloat16, got {self.dtype!r}")
        if not self.seeds:
            raise SaeRdpError("sweep config needs at least one seed")


def load_config(path: str | Path) -> SweepConfig:
    """Read a sweep config JSON file (raises SaeRdpError on a missing file or malformed JSON)."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise SaeRdpError(f"config file not found: {p}") from None
    except json.JSONDecodeError as exc:
        raise SaeRdpError(f"malformed JSON in {p}: {exc.msg} (line {exc.lineno})") from None
    try:
        return SweepConfig.from_dict(d)
    except TypeError as exc:
        raise SaeRdpError(f"bad sweep config {p}: {exc}") from None


# ----------------------------------------------------------------------------- DGPs


class BuiltDGP:
    """A DGP ready to sample on a device: ``concepts`` [m, d] and ``sample(n, generator)`` ->
    (x [n, d], concept activations [n, m] float). ``expected_size`` = E|S| (exact where known)."""

    def __init__(
        self,
        name: str,
        concepts: torch.Tensor,
        sampler: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]],
        expected_size: float,
        pmf: Any = None,
        spec: DGPSpec | None = None,
        source: Any = None,
    ):
        self.name = name
        self.concepts = concepts
        self._sampler = sampler
        self.expected_size = expected_size
        self.pmf = pmf
        self.spec = spec
        self.source = source  # the SAELens SyntheticModel for kind "saelens"

    @property
    def m(self) -> int:
        return int(self.concepts.shape[0])

    @property
    def d(self) -> int:
        return int(self.concepts.shape[1])

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self._sampler(n, generator)


def dgp_from_synthetic_model(
    model: Any,
    name: str = "saelens",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    spec: DGPSpec | None = None,
    seed: int = 0,
) -> BuiltDGP:
    """A :class:`BuiltDGP` over a SAELens ``SyntheticModel``: concepts = its FeatureDictionary vectors,
    samples = ``sample_with_features`` (seeded from our generator through a forked global RNG, since
    SAELens draws from torch's global RNG); E|S| estimated on 20,000 samples."""
    device = torch.device(device)
    concepts = model.feature_dict.feature_vectors.detach().to(device=device, dtype=dtype)

    def sample_saelens(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        s = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        devs = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devs):
            torch.manual_seed(s)
            x, f = model.sample_with_features(n)
        return x.to(device=device, dtype=dtype), f.to(device=device, dtype=dtype)

    g = torch.Generator(device=device).manual_seed(seed)
    es = float((sample_saelens(20000, g)[1] > 0).float().sum(1).mean())
    return BuiltDGP(name, concepts, sample_saelens, es, pmf=None, spec=spec, source=model)


def build_dgp(spec: DGPSpec, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> BuiltDGP:
    """Instantiate a :class:`DGPSpec` on ``device`` (uses ``sae_rdp_plugin.rdp.dgp`` / ``sae_lens.synthetic``)."""
    device = torch.device(device)
    if spec.kind == "saelens":
        from sae_lens.synthetic import SyntheticModel, SyntheticModelConfig

        if not spec.saelens_config:
            raise SaeRdpError(f"DGP {spec.name!r}: kind 'saelens' needs saelens_config")
        try:
            mcfg = SyntheticModelConfig.from_dict(dict(spec.saelens_config))
            model = SyntheticModel(mcfg, device=str(device))
        except (TypeError, KeyError, ValueError) as exc:
            raise SaeRdpError(f"DGP {spec.name!r}: bad saelens_config: {exc}") from None
        return dgp_from_synthetic_model(model, spec.name, device, dtype, spec=spec, seed=spec.concept_seed)

    from sae_rdp_plugin.rdp import dgp as D

    m, d = int(spec.m), int(spec.d)
    if spec.concepts == "orthonormal":
        concepts = D.orthonormal_concepts(m, d, seed=spec.concept_seed)
    elif spec.concepts == "random":
        concepts = D.random_unit_concepts(m, d, seed=spec.concept_seed)
    else:
        raise SaeRdpError(f"DGP {spec.name!r}: concepts must be 'orthonormal' or 'random', got {spec.concepts!r}")
    if spec.kind == "pairs":
        pmf = D.cooccurring_pairs(m, rho=spec.rho, q=spec.q, base=spec.base)
    elif spec.kind == "blocks":
        pmf = D.CooccurringBlocksPMF(m, spec.blocks or [], q=spec.q, rho=spec.rho, base=spec.base)
    elif spec.kind == "bernoulli":
        q = spec.q if isinstance(spec.q, list) else [float(spec.q)] * m
        pmf = D.BernoulliPMF(q)
    else:  # explicit
        if spec.pmf is None:
            raise SaeRdpError(f"DGP {spec.name!r}: kind 'explicit' needs pmf")
        pmf = D.ExplicitPMF(m, spec.pmf)
    dg = D.DGP(concepts.to(device=device, dtype=dtype), pmf, magnitude=spec.magnitude, noise_std=spec.noise_std)

    def sample_rdp(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, active = dg.sample(n, generator=generator, device=device, dtype=dtype)
        return x, active.to(dtype)

    return BuiltDGP(
        spec.name, concepts.to(device=device, dtype=dtype), sample_rdp, float(pmf.expected_size()), pmf=pmf, spec=spec
    )


# ----------------------------------------------------------------------------- members and groups


@dataclass
class Member:
    """One SAE of the grid."""

    member_id: str
    dgp: str
    architecture: str
    width: int
    k: float | None
    l1_coefficient: float | None
    l0_coefficient: float | None
    seed: int
    init: str

    @property
    def sparsity_knob(self) -> float:
        if self.architecture in ("topk", "batchtopk"):
            return float(self.k)  # type: ignore[arg-type]
        if self.architecture == "standard":
            return float(self.l1_coefficient)  # type: ignore[arg-type]
        return float(self.l0_coefficient)  # type: ignore[arg-type]


def enumerate_members(cfg: SweepConfig) -> list[Member]:
    """The grid in a fixed order; member ids are stable strings naming every knob."""
    out: list[Member] = []
    for g in cfg.dgps:
        for arch in cfg.architectures:
            if arch in ("topk", "batchtopk"):
                knobs = [("k", k) for k in cfg.ks]
            elif arch == "standard":
                knobs = [("l1", c) for c in cfg.l1_coefficients]
            else:
                knobs = [("l0", c) for c in cfg.l0_coefficients]
            for w in cfg.widths:
                for kname, kv in knobs:
                    if arch == "topk" and (int(kv) != kv or kv > w):
                        continue  # TopK needs an integer K <= width
                    for seed in cfg.seeds:
                        for init in cfg.inits:
                            mid = f"{g.name}__{arch}__w{w}__{kname}{kv:g}__s{seed}__{init}"
                            out.append(
                                Member(
                                    member_id=mid,
                                    dgp=g.name,
                                    architecture=arch,
                                    width=int(w),
                                    k=float(kv) if kname == "k" else None,
                                    l1_coefficient=float(kv) if kname == "l1" else None,
                                    l0_coefficient=float(kv) if kname == "l0" else None,
                                    seed=int(seed),
                                    init=init,
                                )
                            )
    if not out:
        raise SaeRdpError("the sweep grid is empty (TopK needs integer ks <= width)")
    return out


def _group_members(cfg: SweepConfig, members: list[Member], dims: dict[str, int]) -> list[tuple[str, list[Member]]]:
    groups: dict[tuple, list[Member]] = {}
    for mb in members:
        groups.setdefault((mb.architecture, mb.width, dims[mb.dgp]), []).append(mb)
    out = []
    for (arch, w, d), mbs in groups.items():
        size = cfg.max_group_size or len(mbs)
        for c, s in enumerate(range(0, len(mbs), size)):
            out.append((f"{arch}_w{w}_d{d}_c{c}", mbs[s : s + size]))
    return out


# ----------------------------------------------------------------------------- batched JumpReLU pieces


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


# ----------------------------------------------------------------------------- the stacked group


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


# ----------------------------------------------------------------------------- training


def _make_optimizer(cfg: SweepConfig, model: StackedSAEs, device: torch.device):
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


def _save_group_ckpt(
    path: Path, model: StackedSAEs, opt: torch.optim.Optimizer, step: int, gens: dict[str, torch.Generator]
) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {
        f"param.{k}": v.detach().cpu().contiguous() for k, v in model.named_parameters()
    }
    tensors.update({f"buf.{k}": v.detach().cpu().contiguous() for k, v in model.named_buffers()})
    names = {id(p): k for k, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for sk in ("exp_avg", "exp_avg_sq"):
                if sk in st:
                    tensors[f"adam.{names[id(p)]}.{sk}"] = st[sk].detach().cpu().contiguous()
            if "step" in st:
                tensors[f"adam.{names[id(p)]}.step"] = torch.as_tensor(st["step"]).detach().cpu().reshape(1).float()
    for dn, g in gens.items():
        tensors[f"rng.{dn}"] = g.get_state().cpu()
    meta = {"step": str(step)}
    atomic_save(path, lambda p: save_file(tensors, str(p), metadata=meta))


def _load_group_ckpt(
    path: Path, model: StackedSAEs, opt: torch.optim.Optimizer, gens: dict[str, torch.Generator]
) -> int:
    from safetensors import safe_open

    dev = model.W_enc.device
    with safe_open(str(path), framework="pt") as f:
        step = int(f.metadata()["step"])
        keys = set(f.keys())
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(f.get_tensor(f"param.{k}").to(dev))
            for k, b in model.named_buffers():
                b.copy_(f.get_tensor(f"buf.{k}").to(dev))
        names = {id(p): k for k, p in model.named_parameters()}
        for group in opt.param_groups:
            for p in group["params"]:
                k = names[id(p)]
                if f"adam.{k}.exp_avg" in keys:
                    st_step = f.get_tensor(f"adam.{k}.step").reshape(())
                    opt.state[p] = {
                        "step": st_step.to(dev) if group.get("fused") or group.get("capturable") else st_step,
                        "exp_avg": f.get_tensor(f"adam.{k}.exp_avg").to(dev),
                        "exp_avg_sq": f.get_tensor(f"adam.{k}.exp_avg_sq").to(dev),
                    }
        for dn, g in gens.items():
            if f"rng.{dn}" in keys:
                g.set_state(f.get_tensor(f"rng.{dn}"))
    return step


@torch.no_grad()
def evaluate_group(
    model: StackedSAEs,
    members: list[Member],
    dgps: dict[str, BuiltDGP],
    eval_data: dict[str, tuple[torch.Tensor, torch.Tensor]],
    batch_size: int = 4096,
) -> list[dict[str, Any]]:
    """Per-member results: rate, distortion, explained variance, dead latents (on a held-out sample of
    the member's DGP), P_dec / P_enc / P_ED, MCC, uniqueness, precision / recall / F1."""
    from sae_rdp_plugin.rdp.metrics import ground_truth_metrics, joint_polysemanticity, polysemanticity

    dgp_of = [mb.dgp for mb in members]
    n_eval = next(iter(eval_data.values()))[0].shape[0]
    l0 = torch.zeros(model.G, dtype=torch.float64)
    se = torch.zeros(model.G, dtype=torch.float64)
    fired = torch.zeros(model.G, model.n, dtype=torch.bool)
    lat_chunks: list[torch.Tensor] = []
    keep_lat = n_eval * model.n * model.G <= 2e8
    for s in range(0, n_eval, batch_size):
        x = torch.stack([eval_data[g][0][s : s + batch_size] for g in dgp_of])
        z = model.encode_eval(x)
        xh = model.decode(z)
        nz = z != 0
        l0 += nz.sum(dim=(1, 2)).double().cpu()
        se += (x.double() - xh.double()).pow(2).sum(dim=(1, 2)).cpu()
        fired |= nz.any(dim=1).cpu()
        if keep_lat:
            lat_chunks.append(z.float().cpu())
    lat = torch.cat(lat_chunks, dim=1) if keep_lat else None
    results = []
    for i, mb in enumerate(members):
        x_all, acts = eval_data[mb.dgp]
        xd = x_all.double()
        tv = float((xd - xd.mean(0)).pow(2).sum())
        concepts = dgps[mb.dgp].concepts
        dec = model.W_dec[i].detach().float()
        enc = model.W_enc[i].detach().float().T
        res: dict[str, Any] = dataclasses.asdict(mb)
        res.update(
            rate=float(l0[i] / n_eval),
            distortion=float(se[i] / n_eval),
            explained_variance=1.0 - float(se[i]) / tv if tv > 0 else float("nan"),
            dead_latents=int((~fired[i]).sum()),
            expected_size=dgps[mb.dgp].expected_size,
        )
        try:
            res.update(
                P_dec=polysemanticity(dec, concepts.to(dec.device)),
                P_enc=polysemanticity(enc, concepts.to(dec.device)),
                P_ED=joint_polysemanticity(enc, dec, concepts.to(dec.device)),
            )
        except SaeRdpError:
            res.update(P_dec=float("nan"), P_enc=float("nan"), P_ED=float("nan"))
        live = fired[i].to(dec.device)
        # P over latents active on the evaluation sample (dead latents keep their random init rows)
        res["P_dec_live"] = polysemanticity(dec[live], concepts.to(dec.device)) if bool(live.any()) else float("nan")
        res["P_ED_live"] = (
            joint_polysemanticity(enc[live], dec[live], concepts.to(dec.device)) if bool(live.any()) else float("nan")
        )
        gt = ground_truth_metrics(
            dec.cpu(),
            concepts.float().cpu(),
            latents=None if lat is None else lat[i],
            concept_acts=acts.cpu() if lat is not None else None,
        )
        res.update(mcc=gt.mcc, uniqueness=gt.uniqueness, precision=gt.precision, recall=gt.recall, f1=gt.f1)
        results.append(res)
    return results


class DataStream:
    """Batches of one DGP drawn ``chunk`` batches at a time (amortises the host-side work and
    host-device copies of the pmf samplers on GPU). ``next_batch(b)`` -> (x [b, d], acts [b, m])."""

    def __init__(self, built: BuiltDGP, generator: torch.Generator, chunk: int = 64):
        self.built, self.generator, self.chunk = built, generator, chunk
        self._x: torch.Tensor | None = None
        self._a: torch.Tensor | None = None
        self._pos = 0

    def next_batch(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._x is None or self._pos + b > self._x.shape[0]:
            self._x, self._a = self.built.sample(b * self.chunk, self.generator)
            self._pos = 0
        s = self._pos
        self._pos += b
        return self._x[s : s + b], self._a[s : s + b]  # type: ignore[index]


class _PMFActivations(torch.nn.Module):
    """ActivationGenerator stand-in for ``sae_lens.synthetic.train_toy_sae``: draws concept activations
    [n, m] from a binary, noise-free :class:`BuiltDGP` with a dedicated torch.Generator (prefetched in
    chunks, as the sweep trainer does)."""

    def __init__(self, built: BuiltDGP, seed: int = 0):
        super().__init__()
        self.built = built
        self.generator = torch.Generator(device=built.concepts.device).manual_seed(seed)
        self.stream = DataStream(built, self.generator)

    def sample(self, batch_size: int) -> torch.Tensor:
        return self.stream.next_batch(batch_size)[1]

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.sample(batch_size)


def saelens_toy_data(built: BuiltDGP, seed: int = 0) -> tuple[Any, Any]:
    """(FeatureDictionary, activation generator) reproducing ``built`` for SAELens's
    ``train_toy_sae`` / ``eval_sae_on_synthetic_data`` (kind "saelens": the SyntheticModel's own parts;
    other kinds: binary magnitudes and no noise only, x = acts @ concepts)."""
    from sae_lens.synthetic import FeatureDictionary

    spec = built.spec
    if spec is not None and spec.kind == "saelens":
        return built.source.feature_dict, built.source.activation_generator
    if spec is not None and (spec.magnitude != "binary" or spec.noise_std > 0):
        raise SaeRdpError("saelens_toy_data needs a binary, noise-free DGP")
    fd = FeatureDictionary(built.m, built.d, bias=False, initializer=None, device=built.concepts.device)
    with torch.no_grad():
        fd.feature_vectors.copy_(built.concepts.float())
    return fd, _PMFActivations(built, seed)


@torch.no_grad()
def _curve_point(
    model: StackedSAEs, mbs: list[Member], dgps: dict[str, BuiltDGP], step: int, terms: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """Training-curve record: batch MSE, batch L0 and P_dec of every member at ``step``."""
    from sae_rdp_plugin.rdp.metrics import polysemanticity

    pd = []
    for i, mb in enumerate(mbs):
        try:
            pd.append(polysemanticity(model.W_dec[i].detach().float(), dgps[mb.dgp].concepts.float()))
        except SaeRdpError:
            pd.append(None)
    return {"step": step, "mse": terms["mse"].tolist(), "l0": terms["l0_batch"].tolist(), "P_dec": pd}


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def train_sweep(
    cfg: SweepConfig,
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[str, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Train every member of the grid, group by group; return one result dict per member.

    ``out_dir`` receives ``state.json``, ``groups/<gid>.safetensors`` (checkpoints / final weights),
    ``members/<member_id>.json`` and ``results.json``. With ``resume=True`` a previous run in
    ``out_dir`` (same config) continues: finished groups are kept, an interrupted one restarts from
    its last checkpoint. Without it, a non-empty ``out_dir`` holding a sweep is an error.
    """
    cfg.validate()
    device = torch.device(device)
    out = Path(out_dir)
    state_path = out / "state.json"
    cfg_dict = _json_safe(cfg.to_dict())
    if state_path.exists():
        if not resume:
            raise SaeRdpError(f"{out} already holds a sweep: pass --resume (resume=True) or use a new folder")
        state = json.loads(state_path.read_text())
        if state.get("config") != cfg_dict:
            raise SaeRdpError(f"{out} holds a sweep with a different config; cannot resume")
    else:
        state = {"config": cfg_dict, "groups": {}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "groups").mkdir(exist_ok=True)
    (out / "members").mkdir(exist_ok=True)
    dtype = getattr(torch, cfg.dtype)
    dgps = {g.name: build_dgp(g, device, dtype=torch.float32 if dtype == torch.bfloat16 else dtype) for g in cfg.dgps}
    members = enumerate_members(cfg)
    groups = _group_members(cfg, members, {k: v.d for k, v in dgps.items()})
    state["members"] = {mb.member_id: gid for gid, mbs in groups for mb in mbs}
    atomic_write_json(state_path, state)

    # held-out evaluation data: one fixed sample per DGP
    eval_data: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for j, (name, bd) in enumerate(dgps.items()):
        g = torch.Generator(device=device).manual_seed(cfg.eval_seed + j)
        eval_data[name] = bd.sample(cfg.eval_samples, g)

    t_start = time.time()
    for gi, (gid, mbs) in enumerate(groups):
        if state["groups"].get(gid, {}).get("status") == "done":
            continue
        arch, width, d = mbs[0].architecture, mbs[0].width, dgps[mbs[0].dgp].d
        model = StackedSAEs(cfg, arch, width, d, mbs, {k: v.concepts for k, v in dgps.items()}, device)
        opt, sched = _make_optimizer(cfg, model, device)
        used = sorted({mb.dgp for mb in mbs}, key=list(dgps).index)
        gens = {
            name: torch.Generator(device=device).manual_seed(
                cfg.data_seed * 1_000_003 + 7919 * gi + list(dgps).index(name)
            )
            for name in used
        }
        ckpt = out / "groups" / f"{gid}.safetensors"
        step0 = 0
        if resume and ckpt.exists():
            step0 = _load_group_ckpt(ckpt, model, opt, gens)
            for _ in range(step0):
                sched.step()
        streams = {name: DataStream(dgps[name], gens[name]) for name in used}
        index = torch.tensor([used.index(mb.dgp) for mb in mbs], device=device)
        curve: list[dict[str, Any]] = []
        t0 = time.time()
        for step in range(step0, cfg.steps):
            xs = [streams[name].next_batch(cfg.batch_size)[0].to(dtype) for name in used]
            x = xs[0].unsqueeze(0).expand(len(mbs), -1, -1) if len(used) == 1 else torch.stack(xs)[index]
            loss, terms = model.loss(x, step)
            loss.sum().backward()
            if cfg.grad_clip_norm is not None:
                model.clip_grads_(cfg.grad_clip_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            if cfg.record_every and ((step + 1) % cfg.record_every == 0 or step == step0):
                curve.append(_curve_point(model, mbs, dgps, step + 1, terms))
            if on_step is not None:
                on_step(gid, step + 1)
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                _save_group_ckpt(ckpt, model, opt, step + 1, gens)
                state["groups"][gid] = {"status": "running", "step": step + 1}
                atomic_write_json(state_path, state)
            if progress and (step + 1) % max(cfg.steps // 4, 1) == 0:
                print(
                    f"[sweep] {gid} ({len(mbs)} SAEs) step {step + 1}/{cfg.steps} "
                    f"mse {terms['mse'].mean():.4f} ({time.time() - t0:.1f} s)",
                    flush=True,
                )
        results = evaluate_group(model, mbs, dgps, eval_data)
        for r in results:
            atomic_write_json(out / "members" / f"{r['member_id']}.json", _json_safe(r))
        if curve:
            atomic_write_json(
                out / "groups" / f"{gid}.curve.json", {"members": [m.member_id for m in mbs], "curve": curve}
            )
        _save_group_ckpt(ckpt, model, opt, cfg.steps, gens)
        state["groups"][gid] = {"status": "done", "step": cfg.steps, "seconds": time.time() - t0}
        atomic_write_json(state_path, state)
    results = load_results(out)
    atomic_write_json(out / "results.json", {"config": cfg_dict, "seconds": time.time() - t_start, "members": results})
    return results


def load_results(out_dir: str | Path) -> list[dict[str, Any]]:
    """Per-member results of a (possibly partial) sweep folder, in grid order."""
    out = Path(out_dir)
    state_path = out / "state.json"
    if not state_path.exists():
        raise SaeRdpError(f"{out} is not a sweep folder (no state.json)")
    state = json.loads(state_path.read_text())
    res = []
    for mid in state.get("members", {}):
        p = out / "members" / f"{mid}.json"
        if p.exists():
            res.append(json.loads(p.read_text()))
    return res


def _saelens_training_sae(cfg: SweepConfig, mb: Member, d: int, device: str | torch.device = "cpu") -> Any:
    """A stock SAELens training SAE of the member's architecture and knobs."""
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )

    common = dict(
        d_in=d,
        d_sae=mb.width,
        apply_b_dec_to_input=cfg.apply_b_dec_to_input,
        decoder_init_norm=cfg.decoder_init_norm,
        device=str(device),
    )
    if mb.architecture == "topk":
        return TopKTrainingSAE(
            TopKTrainingSAEConfig(
                k=int(mb.k),
                rescale_acts_by_decoder_norm=cfg.rescale_acts_by_decoder_norm,
                aux_loss_coefficient=cfg.aux_loss_coefficient,
                **common,
            )
        )  # type: ignore[arg-type]
    if mb.architecture == "batchtopk":
        return BatchTopKTrainingSAE(
            BatchTopKTrainingSAEConfig(
                k=float(mb.k),
                rescale_acts_by_decoder_norm=cfg.rescale_acts_by_decoder_norm,
                aux_loss_coefficient=cfg.aux_loss_coefficient,
                topk_threshold_lr=cfg.topk_threshold_lr,
                **common,
            )
        )  # type: ignore[arg-type]
    if mb.architecture == "standard":
        return StandardTrainingSAE(
            StandardTrainingSAEConfig(
                l1_coefficient=float(mb.l1_coefficient), l1_warm_up_steps=cfg.l1_warm_up_steps, **common
            )
        )  # type: ignore[arg-type]
    return JumpReLUTrainingSAE(
        JumpReLUTrainingSAEConfig(
            l0_coefficient=float(mb.l0_coefficient),
            l0_warm_up_steps=cfg.l0_warm_up_steps,
            jumprelu_init_threshold=cfg.jumprelu_init_threshold,
            jumprelu_bandwidth=cfg.jumprelu_bandwidth,
            jumprelu_ste_to_input=cfg.jumprelu_ste_to_input,
            **common,
        )
    )  # type: ignore[arg-type]


def export_member(out_dir: str | Path, member_id: str, dest: str | Path) -> Path:
    """Write member ``member_id`` of a finished group as a SAELens SAE folder (cfg.json +
    sae_weights.safetensors, stock architecture name: topk, standard, jumprelu; batchtopk is saved as
    jumprelu, as SAELens does), loadable with ``sae_lens.SAE.load_from_disk(dest)``. The weights go
    through SAELens's own ``save_inference_model`` (decoder-norm fold for TopK / BatchTopK)."""
    from safetensors import safe_open

    out = Path(out_dir)
    state = json.loads((out / "state.json").read_text()) if (out / "state.json").exists() else None
    if state is None:
        raise SaeRdpError(f"{out} is not a sweep folder (no state.json)")
    gid = state.get("members", {}).get(member_id)
    if gid is None:
        raise SaeRdpError(f"unknown member {member_id!r} in {out}")
    if state["groups"].get(gid, {}).get("status") != "done":
        raise SaeRdpError(f"member {member_id!r} has not finished training")
    cfg = SweepConfig.from_dict(state["config"])
    mbs = [m for g, ms in _group_members(cfg, enumerate_members(cfg), _dims(cfg)) if g == gid for m in ms]
    i = [m.member_id for m in mbs].index(member_id)
    mb = mbs[i]
    with safe_open(str(out / "groups" / f"{gid}.safetensors"), framework="pt") as f:
        W_enc = f.get_tensor("param.W_enc")[i]
        sd = {
            "W_enc": W_enc,
            "W_dec": f.get_tensor("param.W_dec")[i],
            "b_enc": f.get_tensor("param.b_enc")[i],
            "b_dec": f.get_tensor("param.b_dec")[i],
        }
        if mb.architecture == "jumprelu":
            sd["threshold"] = f.get_tensor("param.threshold")[i]
        if mb.architecture == "batchtopk":
            sd["topk_threshold"] = f.get_tensor("buf.topk_threshold")[i]
    sae = _saelens_training_sae(cfg, mb, int(W_enc.shape[0]))
    sae.load_state_dict({k: v.float().contiguous() if k != "topk_threshold" else v.double() for k, v in sd.items()})
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        sae.save_inference_model(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _dims(cfg: SweepConfig) -> dict[str, int]:
    out = {}
    for g in cfg.dgps:
        if g.kind == "saelens":
            out[g.name] = int((g.saelens_config or {}).get("hidden_dim", 0))
        else:
            out[g.name] = int(g.d)
    return out


def iter_configs(paths: Iterable[str | Path]) -> list[SweepConfig]:
    return [load_config(p) for p in paths]
