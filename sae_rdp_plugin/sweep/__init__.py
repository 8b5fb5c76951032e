"""Batched SAE sweeps on known-concept data: train a grid of SAEs at once, measure each member's rate,
distortion and polysemanticity, export members as stock SAELens SAEs.
"""

from sae_rdp_plugin.sweep.core import *  # noqa: F401,F403
from sae_rdp_plugin.sweep.core import __all__  # noqa: F401
