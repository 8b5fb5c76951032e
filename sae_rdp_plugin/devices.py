"""The one check of a ``--device`` value, and of whether an allocation can fit, before anything is built or written."""

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


def memory_bytes(device: Any = "cpu") -> int | None:
    """Total memory in bytes of ``device``: a CUDA device's own, else this machine's (psutil, else sysconf);
    None where neither tells."""
    import torch

    dev = torch.device(device)
    try:
        if dev.type == "cuda":
            return int(torch.cuda.get_device_properties(dev).total_memory)
    except (RuntimeError, AssertionError, ValueError):
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - psutil missing or unable to read
        try:
            import os

            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return None


def check_fits_memory(need_bytes: float, what: str, flags: str, device: Any = "cpu") -> None:
    """SaeRdpError (naming ``flags``, the flags to lower) when ``need_bytes`` is above twice ``device``'s memory
    (:func:`memory_bytes`): an allocation that cannot succeed is refused before anything runs. The bound is
    generous on purpose (a real run is never refused): swap and what is free are not considered."""
    total = memory_bytes(device)
    if total and need_bytes > 2 * total:
        raise SaeRdpError(
            f"{what} needs about {need_bytes / 2**30:,.1f} GiB, more than twice the {total / 2**30:,.1f} GiB of "
            f"{device}; lower {flags}"
        )
