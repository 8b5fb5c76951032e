"""The training architectures sae-rdp knows: one table, from which every other list of names derives.

Each row is an :class:`Architecture`: a SAELens training architecture name and what the plugin needs to
know about it. The four stock SAELens architectures are trained as they are; each ``weighted_*`` one is
the stock architecture with the reconstruction error weighted per input dimension by gamma_i^2
(:mod:`sae_rdp_plugin.wsae.architectures`):

==================== ========= ====== ================= ========= ======================
name                 stock     uses k sparsity field    fast step saved for inference as
==================== ========= ====== ================= ========= ======================
weighted_standard    standard  no     l1_coefficient    no        standard
weighted_topk        topk      yes    --                yes       topk
weighted_jumprelu    jumprelu  no     l0_coefficient    no        jumprelu
weighted_batchtopk   batchtopk yes    --                yes       jumprelu
standard             standard  no     l1_coefficient    no        standard
topk                 topk      yes    --                yes       topk
jumprelu             jumprelu  no     l0_coefficient    no        jumprelu
batchtopk            batchtopk yes    --                yes       jumprelu
==================== ========= ====== ================= ========= ======================

``k`` is the number of active latents per row: an int for TopK, the mean per row (a float) for BatchTopK.
Pure Python (no torch, no SAELens), so ``import sae_rdp_plugin`` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass

from sae_rdp_plugin.errors import SaeRdpError

__all__ = [
    "Architecture",
    "ARCHITECTURES",
    "NAMES",
    "WEIGHTED_NAMES",
    "STOCK_NAMES",
    "FAST_NAMES",
    "check_architecture",
    "get_architecture",
    "is_weighted",
    "architecture_help",
]


@dataclass(frozen=True)
class Architecture:
    """One training architecture."""

    name: str
    """SAELens training architecture name (its registry key)."""
    stock: str
    """The stock SAELens architecture it is (or, for ``weighted_*``, extends)."""
    weighted: bool
    """Trains on the gamma-weighted loss E||Gamma (x - x_hat)||^2 (has ``alpha`` and gamma fields)."""
    uses_k: bool
    """Has SAELens's ``k`` field (active latents per row)."""
    k_is_integer: bool
    """``k`` is a whole number of latents per row (TopK) rather than a mean per row (BatchTopK)."""
    sparsity_field: str | None
    """SAELens config field the sparsity coefficient goes to (``l1_coefficient`` / ``l0_coefficient``), or None."""
    fast_step: bool
    """:mod:`sae_rdp_plugin.fast.step` implements its training step (kind: :attr:`stock`)."""
    saved_as: str
    """Architecture named in the inference ``cfg.json`` written by ``save_inference_model``."""


def _row(stock: str, weighted: bool) -> Architecture:
    """Every column but the name is a property of the stock architecture."""
    return Architecture(
        name=f"weighted_{stock}" if weighted else stock,
        stock=stock,
        weighted=weighted,
        uses_k=stock in ("topk", "batchtopk"),
        k_is_integer=stock == "topk",
        sparsity_field={"standard": "l1_coefficient", "jumprelu": "l0_coefficient"}.get(stock),
        fast_step=stock in ("topk", "batchtopk"),
        saved_as="jumprelu" if stock == "batchtopk" else stock,  # SAELens folds BatchTopK's threshold into JumpReLU
    )


_STOCK = ("standard", "topk", "jumprelu", "batchtopk")

#: name -> Architecture; weighted ones first (the plugin's own), then the stock ones, each in _STOCK order
ARCHITECTURES: dict[str, Architecture] = {
    a.name: a for a in [_row(s, weighted=True) for s in _STOCK] + [_row(s, weighted=False) for s in _STOCK]
}
NAMES: tuple[str, ...] = tuple(ARCHITECTURES)
WEIGHTED_NAMES: tuple[str, ...] = tuple(n for n, a in ARCHITECTURES.items() if a.weighted)
STOCK_NAMES: tuple[str, ...] = tuple(n for n, a in ARCHITECTURES.items() if not a.weighted)
FAST_NAMES: tuple[str, ...] = tuple(n for n, a in ARCHITECTURES.items() if a.fast_step)


def get_architecture(name: str) -> Architecture:
    """The table row of ``name``; SaeRdpError listing the valid names if there is none."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise SaeRdpError(f"unknown architecture {name!r}; valid: {', '.join(NAMES)}") from None


def check_architecture(name: str) -> str:
    """``name`` itself when it is in the table; SaeRdpError listing the valid names otherwise."""
    return get_architecture(name).name


def is_weighted(name: str) -> bool:
    """Whether ``name`` is a ``weighted_*`` architecture (SaeRdpError if it is not in the table)."""
    return get_architecture(name).weighted


def architecture_help() -> str:
    """The names for a command-line help text."""
    return f"{', '.join(WEIGHTED_NAMES)} (or the stock {', '.join(STOCK_NAMES)})"
