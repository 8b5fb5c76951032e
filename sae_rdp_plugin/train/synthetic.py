"""Synthetic training activations from SAELens's ``sae_lens.synthetic``: the one place sae-rdp builds them.

Two sources, each kept as it is so that runs stay reproducible:

* :func:`make_synthetic_source` (``sae-rdp train --synthetic``, :func:`~sae_rdp_plugin.train.saelens.train_synthetic`):
  a ``FeatureDictionary`` of ``n_features`` ground-truth directions in R^d_in and an ``ActivationGenerator``
  whose firing probabilities fall as rank^(-1/2) (mean ``firing_probability``), so input dimensions have
  unequal variance (what a WSAE's gamma reacts to). Batches come from
  ``SyntheticActivationIterator(fd, gen, batch_size)`` under the global torch seed.
* :func:`synthetic_model` + :class:`ShardedSyntheticStream` (``sae-rdp distributed train`` / ``grid``):
  a SynthSAEBench ``SyntheticModel`` (Zipfian firing probabilities) sampled in chunks under
  per-chunk seeds, so every rank draws only its own rows and the union over ranks is the same global
  batch for every world size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from sae_rdp_plugin.errors import SaeRdpError

if TYPE_CHECKING:
    from sae_rdp_plugin.train.distributed import DistContext

__all__ = ["make_synthetic_source", "synthetic_model", "ShardedSyntheticStream"]


#: the spread of a firing feature's magnitude around 1 (SAELens's ``std_firing_magnitudes``)
MAGNITUDE_STD = 0.2


def make_synthetic_source(
    d_in: int,
    n_features: int,
    *,
    firing_probability: float = 0.02,
    seed: int = 0,
    device: str = "cpu",
    magnitude_std: float = MAGNITUDE_STD,
) -> tuple[Any, Any]:
    """(FeatureDictionary, ActivationGenerator) from sae_lens.synthetic: feature ``i`` (rank ``i+1``)
    fires with probability ``p_i = min(0.9, c / sqrt(i+1))``, ``c`` chosen so that ``mean(p) =
    firing_probability`` before the cap, with magnitude ``1 +- magnitude_std``. Seeds torch with ``seed``."""
    from sae_lens.synthetic import ActivationGenerator, FeatureDictionary

    if n_features <= 0:
        raise SaeRdpError(f"n_features must be positive, got {n_features}")
    if not 0 < firing_probability < 1:
        raise SaeRdpError(f"firing_probability must be in (0, 1), got {firing_probability}")
    torch.manual_seed(seed)
    fd = FeatureDictionary(n_features, d_in, device=device, seed=seed, initializer=None)
    ranks = torch.arange(1, n_features + 1, dtype=torch.float32)
    p = 1.0 / ranks**0.5
    p = (p / p.mean() * firing_probability).clamp(max=0.9)
    gen = ActivationGenerator(
        n_features,
        firing_probabilities=p.to(device),
        std_firing_magnitudes=magnitude_std,
        mean_firing_magnitudes=1.0,
        device=device,
    )
    return fd, gen


def synthetic_model(d_in: int, n_features: int, seed: int, device: str = "cpu") -> Any:
    """A SynthSAEBench ``SyntheticModel``: Zipfian firing probabilities, magnitudes ``1 +- 0.25``
    (a non-zero spread, so rows with the same firing features are not exact duplicates)."""
    from sae_lens.synthetic import SyntheticModel, SyntheticModelConfig

    mcfg = SyntheticModelConfig(num_features=n_features, hidden_dim=d_in, seed=seed, std_firing_magnitudes=0.25)
    return SyntheticModel(mcfg, device=device)


class ShardedSyntheticStream:
    """Rank ``rank``'s shard of a deterministic stream of global batches of synthetic activations.

    Global batch ``t`` is the concatenation of ``n_chunks`` chunks of ``chunk_rows`` rows; chunk ``c``
    is drawn from the ``SyntheticModel`` under the seed ``(seed, t, c)``. A rank generates only its own
    contiguous run of ``n_chunks / world_size`` chunks, so the union over ranks is the same global batch
    for every world size that divides ``n_chunks`` (1, 2, 4, 8 for the default 8 chunks), and a
    one-process run sees exactly the same rows. ``ctx`` is the rank's
    :class:`~sae_rdp_plugin.train.distributed.DistContext` (rank, world size, device).
    """

    def __init__(
        self,
        model: Any,
        global_batch: int,
        ctx: DistContext,
        seed: int = 0,
        n_chunks: int = 8,
        start_batch: int = 0,
    ) -> None:
        if global_batch % n_chunks:
            raise SaeRdpError(f"global batch {global_batch} is not divisible by n_chunks={n_chunks}")
        if n_chunks % ctx.world_size:
            raise SaeRdpError(f"n_chunks={n_chunks} is not divisible by the world size {ctx.world_size}")
        self.model, self.ctx, self.seed = model, ctx, seed
        self.chunk_rows = global_batch // n_chunks
        per_rank = n_chunks // ctx.world_size
        self.chunks = range(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
        self.t = start_batch

    def batch(self, t: int) -> torch.Tensor:
        """This rank's rows of global batch ``t``."""
        parts = []
        dev = torch.device(self.ctx.device)
        devices = [dev] if dev.type == "cuda" else []
        for c in self.chunks:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed((self.seed * 1_000_003 + t) * 1009 + c)
                parts.append(self.model.sample(self.chunk_rows))
        return torch.cat(parts).to(dev)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        out = self.batch(self.t)
        self.t += 1
        return out
