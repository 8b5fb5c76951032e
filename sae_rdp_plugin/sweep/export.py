"""Sweep members as stock SAELens SAEs: :func:`saelens_training_sae` (a SAELens training SAE with a
member's architecture and knobs) and :func:`export_member` (a finished member as a SAELens SAE folder,
``sae_lens.SAE.load_from_disk``)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from sae_rdp_plugin.errors import SaeRdpError, exc_line
from sae_rdp_plugin.io import folder_holds_only, read_json_object, replace_dir
from sae_rdp_plugin.sweep.config import SweepConfig
from sae_rdp_plugin.sweep.members import Member, group_members

#: written into every exported folder; only a folder holding it may be replaced by a later export
EXPORT_MARKER = ".sae_rdp_export.json"
#: every name an export writes (SAELens's ``save_inference_model`` and the marker)
EXPORT_NAMES = frozenset({"cfg.json", "sae_weights.safetensors", EXPORT_MARKER})


def saelens_training_sae(cfg: SweepConfig, mb: Member, d: int, device: str | torch.device = "cpu") -> Any:
    """A stock SAELens training SAE of the member's architecture and knobs."""
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )

    common = dict(
        d_in=d,
        d_sae=mb.width,
        apply_b_dec_to_input=cfg.apply_b_dec_to_input,
        decoder_init_norm=cfg.decoder_init_norm,
        device=str(device),
    )
    if mb.architecture == "topk":
        return TopKTrainingSAE(
            TopKTrainingSAEConfig(
                k=int(mb.k),
                rescale_acts_by_decoder_norm=cfg.rescale_acts_by_decoder_norm,
                aux_loss_coefficient=cfg.aux_loss_coefficient,
                **common,
            )
        )  # type: ignore[arg-type]
    if mb.architecture == "batchtopk":
        return BatchTopKTrainingSAE(
            BatchTopKTrainingSAEConfig(
                k=float(mb.k),
                rescale_acts_by_decoder_norm=cfg.rescale_acts_by_decoder_norm,
                aux_loss_coefficient=cfg.aux_loss_coefficient,
                topk_threshold_lr=cfg.topk_threshold_lr,
                **common,
            )
        )  # type: ignore[arg-type]
    if mb.architecture == "standard":
        return StandardTrainingSAE(
            StandardTrainingSAEConfig(
                l1_coefficient=float(mb.l1_coefficient), l1_warm_up_steps=cfg.l1_warm_up_steps, **common
            )
        )  # type: ignore[arg-type]
    return JumpReLUTrainingSAE(
        JumpReLUTrainingSAEConfig(
            l0_coefficient=float(mb.l0_coefficient),
            l0_warm_up_steps=cfg.l0_warm_up_steps,
            jumprelu_init_threshold=cfg.jumprelu_init_threshold,
            jumprelu_bandwidth=cfg.jumprelu_bandwidth,
            jumprelu_ste_to_input=cfg.jumprelu_ste_to_input,
            **common,
        )
    )  # type: ignore[arg-type]


def export_member(out_dir: str | Path, member_id: str, dest: str | Path) -> Path:
    """Write member ``member_id`` of a finished group as a SAELens SAE folder (cfg.json +
    sae_weights.safetensors, stock architecture name: topk, standard, jumprelu; batchtopk is saved as
    jumprelu, as SAELens does), loadable with ``sae_lens.SAE.load_from_disk(dest)``. The weights go
    through SAELens's own ``save_inference_model`` (decoder-norm fold for TopK / BatchTopK).

    ``dest`` must be new, an empty folder, or a previous export (it holds :data:`EXPORT_MARKER` and nothing
    but :data:`EXPORT_NAMES`), which is then replaced; any other existing path raises SaeRdpError and is left
    untouched. A malformed ``state.json`` is a SaeRdpError naming the file."""
    from safetensors import SafetensorError, safe_open

    out = Path(out_dir)
    if not (out / "state.json").is_file():
        raise SaeRdpError(f"{out} is not a sweep folder (no state.json)")
    state = read_json_object(out / "state.json", "sweep state")
    for key in ("config", "members", "groups"):
        if key not in state:
            raise SaeRdpError(f"sweep state {out / 'state.json'} has no {key!r}; it is not a sae-rdp sweep state")
        if not isinstance(state[key], dict):
            raise SaeRdpError(f"sweep state {out / 'state.json'}: {key!r} must be an object")
    gid = state["members"].get(member_id)
    if gid is None:
        raise SaeRdpError(f"unknown member {member_id!r} in {out}")
    ginfo = state["groups"].get(gid, {}) if isinstance(gid, str) else None
    if not isinstance(ginfo, dict):
        raise SaeRdpError(f"sweep state {out / 'state.json'}: the entry of member {member_id!r} is malformed")
    if ginfo.get("status") != "done":
        raise SaeRdpError(f"member {member_id!r} has not finished training")
    try:
        cfg = SweepConfig.from_dict(state["config"])
    except (SaeRdpError, TypeError) as exc:
        raise SaeRdpError(f"sweep state {out / 'state.json'}: bad config ({exc})") from None
    groups = dict(group_members(cfg))
    if gid not in groups or member_id not in [m.member_id for m in groups[gid]]:
        raise SaeRdpError(f"sweep state {out / 'state.json'}: member {member_id!r} is not in group {gid!r}")
    mbs = groups[gid]
    i = [m.member_id for m in mbs].index(member_id)
    mb = mbs[i]
    weights = out / "groups" / f"{gid}.safetensors"
    try:
        with safe_open(str(weights), framework="pt") as f:
            W_enc = f.get_tensor("param.W_enc")[i]
            sd = {
                "W_enc": W_enc,
                "W_dec": f.get_tensor("param.W_dec")[i],
                "b_enc": f.get_tensor("param.b_enc")[i],
                "b_dec": f.get_tensor("param.b_dec")[i],
            }
            if mb.architecture == "jumprelu":
                sd["threshold"] = f.get_tensor("param.threshold")[i]
            if mb.architecture == "batchtopk":
                sd["topk_threshold"] = f.get_tensor("buf.topk_threshold")[i]
    except (SafetensorError, OSError, IndexError) as exc:
        reason = exc_line(exc, 120)
        raise SaeRdpError(f"group weights {weights} are unreadable ({reason})") from None
    spec = {g.name: g for g in cfg.dgps}.get(mb.dgp)
    d = spec.input_dim if spec is not None and spec.input_dim else int(W_enc.shape[0])
    sae = saelens_training_sae(cfg, mb, d)
    # the weights must have the shapes the config gives (d_in = the DGP's d, d_sae = the member's width): a file
    # of another config, or with tensors swapped, is named here (load_state_dict would raise a multi-line error)
    want = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    for k, v in sd.items():
        if k in want and tuple(v.shape) != want[k]:
            raise SaeRdpError(
                f"group weights {weights}: {k} of member {member_id!r} has shape {tuple(v.shape)}, but the sweep "
                f"config gives {want[k]} (d_in={d}, width={mb.width}); the file does not match the config"
            )
    sae.load_state_dict({k: v.float().contiguous() if k != "topk_threshold" else v.double() for k, v in sd.items()})
    dest = Path(dest)
    _check_replaceable(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # written into a temporary sibling, then renamed: a failure leaves no half-written folder
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        sae.save_inference_model(tmp)
        marker = {"sweep": str(out), "member": member_id, "dgp": mb.dgp}  # sweep eval --sae-path reads its DGP
        (tmp / EXPORT_MARKER).write_text(json.dumps(marker) + "\n")
        _check_replaceable(dest)  # again: the folder may have changed while the weights were written
        return replace_dir(tmp, dest)  # a previous export of ours (it held EXPORT_MARKER) is replaced
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_replaceable(dest: Path) -> None:
    """Refuse to replace anything but nothing, an empty folder or a previous export (it holds EXPORT_MARKER
    and nothing but the names an export writes: a user's file put into it must not be deleted with it)."""
    if not dest.exists() and not dest.is_symlink():
        return
    if dest.is_symlink() or not dest.is_dir():
        raise SaeRdpError(f"--dest {dest} exists and is not a folder; give a new path")
    if any(dest.iterdir()) and not (dest / EXPORT_MARKER).is_file():
        raise SaeRdpError(
            f"--dest {dest} is a non-empty folder that is not a sae-rdp export; give a new or empty folder"
        )
    if not folder_holds_only(dest, EXPORT_NAMES.__contains__):
        extra = sorted(e.name for e in dest.iterdir() if e.name not in EXPORT_NAMES)
        raise SaeRdpError(
            f"--dest {dest} holds files a sae-rdp export does not write ({', '.join(extra[:3])}); "
            "give a new or empty folder"
        )
