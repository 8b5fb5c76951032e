"""The members of a sweep grid (:func:`enumerate_members`) and their groups (:func:`group_members`).

Members that share an architecture, width and input dimension form a *group*: the unit that is
trained together (stacked weights, :mod:`sae_rdp_plugin.sweep.stacked`), checkpointed and assigned to
a rank. ``max_group_size`` splits a group into consecutive chunks ``<arch>_w<width>_d<d>_c<chunk>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.sweep.config import SweepConfig


@dataclass
class Member:
    """One SAE of the grid."""

    member_id: str
    dgp: str
    architecture: str
    width: int
    k: float | None
    l1_coefficient: float | None
    l0_coefficient: float | None
    seed: int
    init: str

    @property
    def sparsity_knob(self) -> float:
        if self.architecture in ("topk", "batchtopk"):
            return float(self.k)  # type: ignore[arg-type]
        if self.architecture == "standard":
            return float(self.l1_coefficient)  # type: ignore[arg-type]
        return float(self.l0_coefficient)  # type: ignore[arg-type]


def enumerate_members(cfg: SweepConfig) -> list[Member]:
    """The grid in a fixed order; member ids are stable strings naming every knob."""
    out: list[Member] = []
    for g in cfg.dgps:
        for arch in cfg.architectures:
            if arch in ("topk", "batchtopk"):
                knobs = [("k", k) for k in cfg.ks]
            elif arch == "standard":
                knobs = [("l1", c) for c in cfg.l1_coefficients]
            else:
                knobs = [("l0", c) for c in cfg.l0_coefficients]
            for w in cfg.widths:
                for kname, kv in knobs:
                    if arch in ("topk", "batchtopk") and kv > w or arch == "topk" and int(kv) != kv:
                        continue  # K <= width (TopK: a whole number); SweepConfig refuses a k no member can use
                    for seed in cfg.seeds:
                        for init in cfg.inits:
                            mid = f"{g.name}__{arch}__w{w}__{kname}{kv:g}__s{seed}__{init}"
                            out.append(
                                Member(
                                    member_id=mid,
                                    dgp=g.name,
                                    architecture=arch,
                                    width=int(w),
                                    k=float(kv) if kname == "k" else None,
                                    l1_coefficient=float(kv) if kname == "l1" else None,
                                    l0_coefficient=float(kv) if kname == "l0" else None,
                                    seed=int(seed),
                                    init=init,
                                )
                            )
    if not out:
        raise SaeRdpError("the sweep grid is empty (no ks / sparsity coefficients)")
    return out


def group_members(cfg: SweepConfig) -> list[tuple[str, list[Member]]]:
    """The grid's groups in a fixed order, as (group id, members in grid order). A group holds the
    members of one (architecture, width, input dimension d), in chunks of at most ``cfg.max_group_size``;
    a group's index in this list seeds its data stream, so it never depends on which groups are trained."""
    dims = {g.name: g.input_dim for g in cfg.dgps}
    by_kind: dict[tuple[str, int, int], list[Member]] = {}
    for mb in enumerate_members(cfg):
        by_kind.setdefault((mb.architecture, mb.width, dims[mb.dgp]), []).append(mb)
    out = []
    for (arch, w, d), mbs in by_kind.items():
        size = cfg.max_group_size or len(mbs)
        for c, s in enumerate(range(0, len(mbs), size)):
            out.append((f"{arch}_w{w}_d{d}_c{c}", mbs[s : s + size]))
    return out
