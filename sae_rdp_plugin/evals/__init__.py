"""SAEBench eval modules shipped by sae-rdp (one folder per eval, SAEBench layout)."""


def sae_lens_version() -> str | None:
    """The installed SAELens version for an eval output's ``sae_lens_version`` (None if unknown)."""
    try:
        from importlib.metadata import version

        return version("sae-lens")
    except Exception:  # noqa: BLE001
        return None
