"""Evaluation of a trained group, member by member, against the known concepts of its DGP.

Per member, on a held-out sample x_1..x_N of its DGP: rate R = (1/N) sum_i ||z_i||_0, distortion
D = (1/N) sum_i ||x_i - x_hat_i||^2, explained variance 1 - N D / sum_i ||x_i - mean(x)||^2, dead latents
(never non-zero on the sample); polysemanticity P_dec / P_enc / P_ED of the dictionary and of its live
latents (``sae_rdp_plugin.rdp.metrics``); ground-truth MCC, uniqueness, precision / recall / F1.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.rdp.metrics import ground_truth_metrics, joint_polysemanticity, polysemanticity
from sae_rdp_plugin.sweep.data import BuiltDGP
from sae_rdp_plugin.sweep.members import Member
from sae_rdp_plugin.sweep.stacked import StackedSAEs


@torch.no_grad()
def evaluate_group(
    model: StackedSAEs,
    members: list[Member],
    dgps: dict[str, BuiltDGP],
    eval_data: dict[str, tuple[torch.Tensor, torch.Tensor]],
    batch_size: int = 4096,
) -> list[dict[str, Any]]:
    """Per-member results: rate, distortion, explained variance, dead latents (on a held-out sample of
    the member's DGP), P_dec / P_enc / P_ED, MCC, uniqueness, precision / recall / F1."""
    dgp_of = [mb.dgp for mb in members]
    n_eval = next(iter(eval_data.values()))[0].shape[0]
    l0 = torch.zeros(model.G, dtype=torch.float64)
    se = torch.zeros(model.G, dtype=torch.float64)
    fired = torch.zeros(model.G, model.n, dtype=torch.bool)
    lat_chunks: list[torch.Tensor] = []
    keep_lat = n_eval * model.n * model.G <= 2e8
    # not rdp.metrics.rate_distortion: it takes one SAE, and one bmm pass here serves all G stacked members
    for s in range(0, n_eval, batch_size):
        x = torch.stack([eval_data[g][0][s : s + batch_size] for g in dgp_of])
        z = model.encode_eval(x)
        xh = model.decode(z)
        nz = z != 0
        l0 += nz.sum(dim=(1, 2)).double().cpu()
        se += (x.double() - xh.double()).pow(2).sum(dim=(1, 2)).cpu()
        fired |= nz.any(dim=1).cpu()
        if keep_lat:
            lat_chunks.append(z.float().cpu())
    lat = torch.cat(lat_chunks, dim=1) if keep_lat else None
    results = []
    for i, mb in enumerate(members):
        x_all, acts = eval_data[mb.dgp]
        xd = x_all.double()
        tv = float((xd - xd.mean(0)).pow(2).sum())
        concepts = dgps[mb.dgp].concepts
        dec = model.W_dec[i].detach().float()
        enc = model.W_enc[i].detach().float().T
        res: dict[str, Any] = dataclasses.asdict(mb)
        res.update(
            rate=float(l0[i] / n_eval),
            distortion=float(se[i] / n_eval),
            explained_variance=1.0 - float(se[i]) / tv if tv > 0 else float("nan"),
            dead_latents=int((~fired[i]).sum()),
            expected_size=dgps[mb.dgp].expected_size,
        )
        try:
            res.update(
                P_dec=polysemanticity(dec, concepts.to(dec.device)),
                P_enc=polysemanticity(enc, concepts.to(dec.device)),
                P_ED=joint_polysemanticity(enc, dec, concepts.to(dec.device)),
            )
        except SaeRdpError:
            res.update(P_dec=float("nan"), P_enc=float("nan"), P_ED=float("nan"))
        live = fired[i].to(dec.device)
        # P over latents active on the evaluation sample (dead latents keep their random init rows)
        res["P_dec_live"] = polysemanticity(dec[live], concepts.to(dec.device)) if bool(live.any()) else float("nan")
        res["P_ED_live"] = (
            joint_polysemanticity(enc[live], dec[live], concepts.to(dec.device)) if bool(live.any()) else float("nan")
        )
        gt = ground_truth_metrics(
            dec.cpu(),
            concepts.float().cpu(),
            latents=None if lat is None else lat[i],
            concept_acts=acts.cpu() if lat is not None else None,
        )
        res.update(mcc=gt.mcc, uniqueness=gt.uniqueness, precision=gt.precision, recall=gt.recall, f1=gt.f1)
        results.append(res)
    return results


@torch.no_grad()
def curve_point(
    model: StackedSAEs, mbs: list[Member], dgps: dict[str, BuiltDGP], step: int, terms: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """Training-curve record: batch MSE, batch L0 and P_dec of every member at ``step``."""
    pd = []
    for i, mb in enumerate(mbs):
        try:
            pd.append(polysemanticity(model.W_dec[i].detach().float(), dgps[mb.dgp].concepts.float()))
        except SaeRdpError:
            pd.append(None)
    return {"step": step, "mse": terms["mse"].tolist(), "l0": terms["l0_batch"].tolist(), "P_dec": pd}
