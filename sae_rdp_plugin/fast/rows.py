"""A matrix given at some of its rows: the dead-latent aux loss's weight gradients over its compacted columns,
which the fused kernels (:mod:`sae_rdp_plugin.fast.kernels`) add to the gradient rows without a dense
zero-filled [d_sae, d_in] matrix. Plain torch: importing it does not import Triton."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["RowsAt", "rows_at"]


class RowsAt(NamedTuple):
    """An [n_rows, d] matrix that is zero except at some rows: row ``j`` is ``rows[slot[j]]`` where
    ``slot[j] >= 0``. The fused kernels' extra gradient ``X`` may be given so (the dead-latent aux loss's
    gradient rows over its compacted columns), instead of a dense zero-filled matrix; :func:`rows_at` builds it."""

    index: torch.Tensor  # [m] int64: the rows given (distinct)
    rows: torch.Tensor  # [m, d] (any float dtype; added in float32)
    slot: torch.Tensor  # [n_rows] int32: position in ``rows``, or -1

    def add_to(self, G: torch.Tensor) -> torch.Tensor:
        """G[index] += rows (in G's dtype), in place; returns G."""
        return G.index_add_(0, self.index, self.rows.to(G.dtype))


def rows_at(index: torch.Tensor, rows: torch.Tensor, n_rows: int) -> RowsAt:
    """:class:`RowsAt` for the distinct rows ``index`` of an [n_rows, d] matrix (no host sync)."""
    slot = torch.full((n_rows,), -1, device=index.device, dtype=torch.int32)
    slot[index] = torch.arange(index.numel(), device=index.device, dtype=torch.int32)
    return RowsAt(index, rows, slot)
