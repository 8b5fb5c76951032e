"""The configuration of a batched sweep: its DGPs (:class:`DGPSpec`) and its grid and training
hyper-parameters (:class:`SweepConfig`), read from JSON with :func:`load_config`."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_rdp_plugin.architectures import STOCK_NAMES
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.train.config import MAX_SEED  # seeds: 0..2**63-1, as for training

#: the stacked trainer implements the four stock SAELens architectures (weighting needs SAELens's trainer)
ARCHITECTURES = STOCK_NAMES
DGP_KINDS = ("pairs", "blocks", "bernoulli", "explicit", "saelens")
#: SAELens's lr schedulers (``sae_lens.training.optim.get_lr_scheduler``, case-insensitive)
LR_SCHEDULERS = ("constant", "cosineannealing", "cosineannealingwarmrestarts")
#: a DGP name is part of every member id, hence of file names (members/<member_id>.json): letters, digits
#: and ``_ . + = , -``, not starting with a dot (no path separator, no ``..``, no hidden name)
_DGP_NAME_RE = re.compile(r"^[A-Za-z0-9_+=,-][A-Za-z0-9_.+=,-]{0,99}$")


@dataclass
class DGPSpec:
    """One data-generating process of a sweep.

    kind:
      * "pairs": ``sae_rdp_plugin.rdp.dgp.cooccurring_pairs(m, rho, q)``: pairs {0,1}, {2,3}, .. fire
        together with mixture weight ``rho`` (the co-occurrence knob); otherwise independent Bernoulli(q)
        (``base="independent"``) or at most one concept (``base="exclusive"``). m must be even (an odd m
        would leave its last concept in no pair).
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

    @property
    def input_dim(self) -> int:
        """Dimension d of the observations x (kind "saelens": the SyntheticModel's ``hidden_dim``)."""
        if self.kind == "saelens":
            return int((self.saelens_config or {}).get("hidden_dim", 0))
        return int(self.d)


@dataclass
class SweepConfig:
    """A grid of SAEs trained together. The grid is the product
        dgps x architectures x widths x sparsity knob (``ks`` for topk/batchtopk, ``l1_coefficients`` for
        standard, ``l0_coefficients`` for jumprelu) x seeds x inits, less the (k, width) pairs with k > width
    (and, for topk, a fractional k); a k that no member can use is an error, as is every other value
    out of range (:meth:`validate`). Training hyper-parameters default to
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
        for name in ("architectures", "widths", "ks", "l1_coefficients", "l0_coefficients", "seeds", "inits"):
            if not isinstance(getattr(self, name), list):
                raise SaeRdpError(f"{name} must be a list, got {getattr(self, name)!r}")
        if not self.widths:
            raise SaeRdpError("sweep config needs at least one width")
        seen = set()
        for g in self.dgps:
            if not isinstance(g.name, str) or not g.name:
                raise SaeRdpError(f"a DGP name must be a non-empty string, got {g.name!r}")
            if not _DGP_NAME_RE.match(g.name) or ".." in g.name:
                raise SaeRdpError(
                    f"DGP name {g.name!r} is not a safe file name part (member ids name files): use letters, "
                    "digits and _ . + = , - (at most 100, not starting with a dot, no '..')"
                )
            if g.name in seen:
                raise SaeRdpError(f"duplicate DGP name {g.name!r}")
            seen.add(g.name)
            if g.kind not in DGP_KINDS:
                raise SaeRdpError(f"DGP {g.name!r}: unknown kind {g.kind!r} (one of {', '.join(DGP_KINDS)})")
            _check_dgp(g)
        for a in self.architectures:
            if a not in ARCHITECTURES:
                raise SaeRdpError(f"unknown architecture {a!r} (one of {', '.join(ARCHITECTURES)})")
        if not self.architectures:
            raise SaeRdpError("sweep config needs at least one architecture")
        for w in self.widths:
            if isinstance(w, bool) or not isinstance(w, int) or w < 1:
                raise SaeRdpError(f"widths must be positive integers, got {w!r}")
        for k in self.ks:
            if isinstance(k, bool) or not isinstance(k, (int, float)) or not (0 < k < math.inf):
                raise SaeRdpError(f"ks must be positive numbers, got {k!r}")
        k_archs = [a for a in self.architectures if a in ("topk", "batchtopk")]
        for k in self.ks if k_archs else []:
            # a (k, width) pair with k > width is skipped (enumerate_members); a k no member can use is an error
            usable = [a for a in k_archs if k <= max(self.widths) and (a == "batchtopk" or int(k) == k)]
            if not usable:
                raise SaeRdpError(
                    f"k={k!r} fits no member: {'/'.join(k_archs)} needs k <= the largest width "
                    f"({max(self.widths)})" + (" and a whole number for topk" if k_archs == ["topk"] else "")
                )
        for c in list(self.l1_coefficients) + list(self.l0_coefficients):
            if isinstance(c, bool) or not isinstance(c, (int, float)) or c < 0 or not math.isfinite(c):
                raise SaeRdpError(f"sparsity coefficients must be finite and >= 0, got {c!r}")
        for i in self.inits:
            if i not in ("random", "monosemantic"):
                raise SaeRdpError(f"unknown init {i!r} (random or monosemantic)")
        for name in ("steps", "batch_size", "eval_samples", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SaeRdpError(f"{name} must be a positive integer, got {v!r}")
        for name in (
            "lr_warm_up_steps",
            "lr_decay_steps",
            "dead_feature_window",
            "record_every",
            "l1_warm_up_steps",
            "l0_warm_up_steps",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SaeRdpError(f"{name} must be an integer >= 0, got {v!r}")
        for name, vals in (("seeds", self.seeds), ("eval_seed", [self.eval_seed]), ("data_seed", [self.data_seed])):
            for s in vals:
                if isinstance(s, bool) or not isinstance(s, int):
                    raise SaeRdpError(f"{name} must be integers, got {s!r}")
                if not 0 <= s <= MAX_SEED:
                    raise SaeRdpError(f"{name} must be in 0..2**63-1, got {s!r}")
        _positive("lr", self.lr)
        if str(self.lr_scheduler_name).lower() not in LR_SCHEDULERS:
            raise SaeRdpError(
                f"unknown lr_scheduler_name {self.lr_scheduler_name!r} (one of {', '.join(LR_SCHEDULERS)})"
            )
        if self.lr_end is not None:
            _number("lr_end", self.lr_end, low=0.0)
        for name in ("aux_loss_coefficient", "jumprelu_init_threshold", "monosemantic_init_noise"):
            _number(name, getattr(self, name), low=0.0)
        _number("topk_threshold_lr", self.topk_threshold_lr, low=0.0, high=1.0)
        _positive("jumprelu_bandwidth", self.jumprelu_bandwidth)
        for name in ("apply_b_dec_to_input", "rescale_acts_by_decoder_norm", "jumprelu_ste_to_input"):
            if not isinstance(getattr(self, name), bool):
                raise SaeRdpError(f"{name} must be true or false, got {getattr(self, name)!r}")
        # a clip norm <= 0 flips or zeroes the gradient (grad_clip_norm = -1 is gradient ascent); None = no clipping
        for name in ("grad_clip_norm", "decoder_init_norm"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        for name in ("adam_beta1", "adam_beta2"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise SaeRdpError(f"{name} must be in [0, 1), got {v!r}")
        if self.max_group_size is not None:
            v = self.max_group_size
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SaeRdpError(f"max_group_size must be a positive integer or null, got {v!r}")
        if self.dtype not in ("float32", "float64", "bfloat16"):
            raise SaeRdpError(f"dtype must be float32, float64 or bfloat16, got {self.dtype!r}")
        if not self.seeds:
            raise SaeRdpError("sweep config needs at least one seed")


def _number(name: str, v: Any, low: float = -math.inf, high: float = math.inf) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
        span = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise SaeRdpError(f"{name} must be a finite number {span}, got {v!r}")


def _int(name: str, v: Any, low: int | None = None) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or (low is not None and v < low):
        raise SaeRdpError(f"{name} must be an integer" + ("" if low is None else f" >= {low}") + f", got {v!r}")


def _check_dgp(g: DGPSpec) -> None:
    """The fields of one DGP spec (the rest, e.g. block indices, is checked when the DGP is built)."""
    where = f"DGP {g.name!r}"
    _int(f"{where}: concept_seed", g.concept_seed, low=0)
    if g.concept_seed > MAX_SEED:
        raise SaeRdpError(f"{where}: concept_seed must be in 0..2**63-1, got {g.concept_seed!r}")
    _number(f"{where}: noise_std", g.noise_std, low=0.0)
    if g.kind == "saelens":
        if not isinstance(g.saelens_config, dict):
            raise SaeRdpError(f"{where}: kind 'saelens' needs saelens_config (an object)")
        return
    _int(f"{where}: m", g.m, low=1)
    _int(f"{where}: d", g.d, low=1)
    _number(f"{where}: rho", g.rho, low=0.0, high=1.0)
    qs = g.q if isinstance(g.q, list) else [g.q]
    if isinstance(g.q, list) and len(g.q) != g.m:
        raise SaeRdpError(f"{where}: q has {len(g.q)} entries for m={g.m} concepts")
    for q in qs:
        _number(f"{where}: q", q, low=0.0, high=1.0)
    if g.kind == "pairs" and g.m % 2:
        # cooccurring_pairs pairs {0,1}, {2,3}, ...: with an odd m the last concept is in no pair (with rho = 1 it
        # never fires at all), which a config asking for pairs did not mean
        raise SaeRdpError(
            f"{where}: kind 'pairs' needs an even m (pairs {{0,1}}, {{2,3}}, ...); m={g.m} leaves concept {g.m - 1} "
            "in no pair: use an even m, or kind 'blocks' with the blocks you mean"
        )
    # fields of another kind would be ignored without a word
    if g.blocks is not None and g.kind != "blocks":
        raise SaeRdpError(f"{where}: blocks is read by kind 'blocks' only, not {g.kind!r}")
    if g.pmf is not None and g.kind != "explicit":
        raise SaeRdpError(f"{where}: pmf is read by kind 'explicit' only, not {g.kind!r}")
    if g.blocks is not None and not isinstance(g.blocks, list):
        raise SaeRdpError(f"{where}: blocks must be a list of lists of concept indices")
    if g.pmf is not None and not isinstance(g.pmf, dict):
        raise SaeRdpError(f'{where}: pmf must be an object {{"0,1": probability, ...}}')


def _positive(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < math.inf):
        raise SaeRdpError(f"{name} must be a finite number > 0, got {v!r}")


def load_config(path: str | Path) -> SweepConfig:
    """Read a sweep config JSON file (raises SaeRdpError on a missing file or malformed JSON)."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise SaeRdpError(f"config file not found: {p}") from None
    except IsADirectoryError:
        raise SaeRdpError(f"config {p} is a folder, not a JSON file") from None
    except UnicodeDecodeError:
        raise SaeRdpError(f"config {p} is not a UTF-8 JSON file") from None
    except json.JSONDecodeError as exc:
        raise SaeRdpError(f"malformed JSON in {p}: {exc.msg} (line {exc.lineno})") from None
    except RecursionError:
        raise SaeRdpError(f"config {p} is nested too deeply to be a sweep config") from None
    try:
        return SweepConfig.from_dict(d)
    except TypeError as exc:
        raise SaeRdpError(f"bad sweep config {p}: {exc}") from None


def iter_configs(paths: Iterable[str | Path]) -> list[SweepConfig]:
    """:func:`load_config` of each path."""
    return [load_config(p) for p in paths]


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN / Inf), through dicts and lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj
