"""Registration of the weighted SAE (WSAE) architectures with SAELens (placeholder until the WSAE
work lands)."""


def register() -> None:
    """Register ``weighted_*`` architectures with SAELens's registries (idempotent)."""
    return None
