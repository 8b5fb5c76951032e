"""Batched SAE sweeps on known-concept data: train a grid of SAEs at once, measure each member's rate,
distortion and polysemanticity, export members as stock SAELens SAEs.

Modules, lowest first: ``config`` (DGPSpec, SweepConfig, load_config), ``members`` (the grid and its
groups), ``data`` (DGPs built on a device, data streams), ``stacked`` (a group's stacked SAEs),
``evaluate`` (per-member R, D, P and ground-truth metrics), ``train`` (train_sweep, checkpoints,
load_results), ``export`` (members as SAELens SAEs), ``distributed`` (groups spread over ranks),
``analysis`` (Pareto sets, premium, figures). This face re-exports the public API; code inside the
package imports from the defining module.
"""

from sae_rdp_plugin.sweep.config import ARCHITECTURES, DGPSpec, SweepConfig, load_config
from sae_rdp_plugin.sweep.data import BuiltDGP, build_dgp
from sae_rdp_plugin.sweep.export import export_member
from sae_rdp_plugin.sweep.members import Member, enumerate_members, group_members
from sae_rdp_plugin.sweep.train import load_results, train_sweep

__all__ = [
    "ARCHITECTURES",
    "DGPSpec",
    "SweepConfig",
    "Member",
    "BuiltDGP",
    "build_dgp",
    "enumerate_members",
    "group_members",
    "train_sweep",
    "load_results",
    "export_member",
    "load_config",
]
