"""Weighted SAEs (WSAE) as SAELens training architectures.

``gamma`` (per-dimension weights gamma_i = variance_i^alpha: streaming estimation, files),
``architectures`` (the four ``weighted_*`` training SAEs; importing it imports SAELens),
``registry`` (lazy registration with SAELens at ``import sae_rdp_plugin``).

This package's face imports nothing, so ``import sae_rdp_plugin`` stays free of SAELens.
"""
