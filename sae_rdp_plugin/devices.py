"""The one check of a ``--device`` value, and of whether an allocation can fit, before anything is built or written."""

from __future__ import annotations

from typing import Any

from sae_rdp_plugin.errors import SaeRdpError

#: device types the training and evaluation code runs on
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
#: this machine's memory in GiB where the machine under-reports it: virtual machines whose RAM grows as it is used
#: show a MemTotal far below their memory at the start (the GPU machines' notes: 31 GiB of 256)
HOST_MEMORY_ENV = "SAE_RDP_HOST_MEMORY_GIB"


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
    """Total memory in bytes of ``device``: a CUDA device's own, else this machine's (``SAE_RDP_HOST_MEMORY_GIB``
    if set, else psutil, else sysconf); None where none tells. A set variable that is not a positive number of GiB
    raises SaeRdpError naming it."""
    import os

    import torch

    dev = torch.device(device)
    try:
        if dev.type == "cuda":
            return int(torch.cuda.get_device_properties(dev).total_memory)
    except (RuntimeError, AssertionError, ValueError):
        return None
    env = os.environ.get(HOST_MEMORY_ENV)
    if env:
        try:
            gib = float(env)
        except ValueError:
            gib = float("nan")
        if not (gib > 0 and gib < float("inf")):
            raise SaeRdpError(f"{HOST_MEMORY_ENV}={env!r} is not a positive number of GiB")
        return int(gib * 2**30)
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - psutil missing or unable to read
        try:
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


def profile_summary(prof: Any, wall_s: float, per: int = 1, top: int = 30, cuda: bool = False) -> dict[str, Any]:
    """What a stopped ``torch.profiler.profile`` saw in ``wall_s`` seconds of wall time, per unit of work (``per``
    steps or calls): ``wall_ms`` per unit; ``gpu_busy_fraction``, the union of the device kernels' time spans over
    the wall time (None without ``cuda``: a low value means the host, not the GPU, sets the pace);
    ``host_syncs`` per unit (``aten::_local_scalar_dense``: ``.item()``, ``.tolist()`` and the like); ``top``: the
    ``top`` ops by self time per unit (device time with ``cuda``, else CPU time)."""
    import torch

    rows = []
    for ev in prof.key_averages():
        self_dt = getattr(ev, "self_device_time_total", getattr(ev, "self_cuda_time_total", 0)) if cuda else 0
        if cuda and self_dt <= 0:
            continue
        dt = self_dt if cuda else ev.self_cpu_time_total
        rows.append({"name": ev.key[:110], "calls_per_step": ev.count / per, "ms_per_step": dt / 1e3 / per})
    rows.sort(key=lambda r: -r["ms_per_step"])
    events = prof.events()
    syncs = sum(1 for e in events if e.name == "aten::_local_scalar_dense")
    busy = None
    if cuda:
        spans = sorted(
            (e.time_range.start, e.time_range.end)
            for e in events
            if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start
        )
        busy_us, end = 0.0, float("-inf")
        for a, z in spans:  # the union of the intervals
            if z > end:
                busy_us += z - max(a, end)
                end = z
        busy = busy_us / 1e6 / wall_s
    return {
        "wall_ms_per_step": 1e3 * wall_s / per,
        "gpu_busy_fraction": busy,
        "host_syncs_per_step": syncs / per,
        "top": rows[:top],
    }


def synchronize(device: Any) -> None:
    """Wait for ``device``'s queued kernels (a CUDA device; nothing to wait for elsewhere), so that a wall-clock
    time taken after it includes them."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
