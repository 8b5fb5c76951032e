"""The one check of a ``--device`` value, before anything is built or written on it."""

from __future__ import annotations

from typing import Any

from sae_rdp_plugin.errors import SaeRdpError

#: device types the training and evaluation code runs on
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def check_device(device: Any, flag: str = "--device") -> Any:
    """``device`` as a ``torch.device`` if this machine has it; else SaeRdpError naming ``flag``
    (an unparsable name, an unsupported type, CUDA / MPS / XPU absent, a CUDA index past the last GPU)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SaeRdpError(f"{flag} {device!r} is not a device (cpu, cuda, cuda:1, mps, ...)") from None
    if dev.type not in DEVICE_TYPES:
        raise SaeRdpError(f"{flag} {device!r}: unsupported device type (one of {', '.join(DEVICE_TYPES)})")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SaeRdpError(f"{flag} {device!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SaeRdpError(f"{flag} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise SaeRdpError(f"{flag} {device!r}: MPS is not available on this machine")
    if dev.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise SaeRdpError(f"{flag} {device!r}: XPU is not available on this machine")
    return dev
