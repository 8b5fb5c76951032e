"""The data of a sweep: a :class:`DGPSpec` built on a device (:class:`BuiltDGP`: concepts and a
sampler of (x, concept activations)), the batch stream a group trains on (:class:`DataStream`), and
the same DGP in the form SAELens's ``train_toy_sae`` takes (:func:`saelens_toy_data`).

Observations x = sum_{l in S} c_l v_l + noise for concept vectors v_l [m, d], active set S drawn
from the DGP's PMF and magnitudes c_l (``sae_rdp_plugin.rdp.dgp``), or a SAELens ``SyntheticModel``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.rdp import dgp as D
from sae_rdp_plugin.sweep.config import DGPSpec


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


class DataStream:
    """Batches of one DGP drawn ``chunk`` batches at a time (amortises the host-side work and
    host-device copies of the pmf samplers on GPU). ``next_batch(b)`` -> (x [b, d], acts [b, m])."""

    def __init__(self, built: BuiltDGP, generator: torch.Generator, chunk: int = 64):
        self.built, self.generator, self.chunk = built, generator, chunk
        self._x: torch.Tensor | None = None
        self._a: torch.Tensor | None = None
        self._pos = 0
        self._chunk_state = generator.get_state()  # the generator's state before the current chunk
        self._pending: tuple[torch.Tensor, int] | None = None

    def position(self) -> tuple[torch.Tensor, int]:
        """(the generator state the current chunk was drawn from, rows of the chunk used so far): a stream
        given them by :meth:`restore` continues with exactly the batches this one would draw next."""
        return self._chunk_state.clone(), self._pos

    def restore(self, state: torch.Tensor, pos: int) -> None:
        """Continue from a :meth:`position` (the chunk is redrawn from ``state`` on the next batch)."""
        self._x = self._a = None
        self._pending = (state, int(pos))

    def next_batch(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pending is not None:
            state, pos = self._pending
            self._pending = None
            self.generator.set_state(state)
            self._chunk_state = self.generator.get_state()
            self._x, self._a = self.built.sample(b * self.chunk, self.generator)
            self._pos = pos
        if self._x is None or self._pos + b > self._x.shape[0]:
            self._chunk_state = self.generator.get_state()
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
