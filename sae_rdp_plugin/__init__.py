"""sae-rdp: the Rate-Distortion-Polysemanticity tradeoff and weighted SAEs, as a SAELens/SAEBench plugin.

Importing the package registers the ``weighted_*`` training architectures with SAELens (idempotent);
nothing else happens at import time.
"""

from sae_rdp_plugin.wsae.registry import register as _register_architectures

__version__ = "0.1.0"

_register_architectures()
