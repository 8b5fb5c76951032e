"""SAEBench eval modules shipped by sae-rdp (one folder per eval, SAEBench layout)."""

from __future__ import annotations

from collections.abc import Iterable


def installed_versions(dists: Iterable[str]) -> dict[str, str | None]:
    """``{distribution: installed version}`` for a run's record of what produced it (None where not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in dists:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def sae_lens_version() -> str | None:
    """The installed SAELens version for an eval output's ``sae_lens_version`` (None if not installed)."""
    return installed_versions(["sae-lens"])["sae-lens"]
