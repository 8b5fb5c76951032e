"""sae_rdp_plugin.devices.profile_summary on a hand-made profile: the GPU busy share is the union of the kernels'
spans (overlaps counted once), the top list is ordered by self time per unit, host syncs are counted."""

from types import SimpleNamespace

import pytest
import torch

from sae_rdp_plugin.devices import profile_summary

CUDA = torch.autograd.DeviceType.CUDA
CPU = torch.autograd.DeviceType.CPU


def _event(name, start, end, device=CUDA):
    return SimpleNamespace(name=name, device_type=device, time_range=SimpleNamespace(start=start, end=end))


def _avg(key, count, device_us, cpu_us):
    return SimpleNamespace(key=key, count=count, self_device_time_total=device_us, self_cpu_time_total=cpu_us)


def _prof(events, averages):
    return SimpleNamespace(events=lambda: events, key_averages=lambda: averages)


def test_busy_share_is_the_union_of_kernel_spans():
    # kernels at [0, 10), [5, 15) (overlapping: 15 us together), [20, 30), and a zero-length one; CPU events and
    # syncs do not count as busy: 25 us over a 100 us wall
    events = [
        _event("k1", 0, 10),
        _event("k2", 5, 15),
        _event("k3", 20, 30),
        _event("k4", 40, 40),
        _event("aten::_local_scalar_dense", 0, 90, CPU),
        _event("aten::_local_scalar_dense", 90, 95, CPU),
    ]
    averages = [_avg("small", 4, 100.0, 5.0), _avg("big", 2, 3000.0, 1.0), _avg("cpu only", 1, 0.0, 999.0)]
    s = profile_summary(_prof(events, averages), 100e-6, per=2, top=5, cuda=True)
    assert s["gpu_busy_fraction"] == pytest.approx(0.25)
    assert s["host_syncs_per_step"] == 1.0 and s["wall_ms_per_step"] == pytest.approx(0.05)
    # device time per unit, largest first; an op without device time is not listed
    assert [r["name"] for r in s["top"]] == ["big", "small"]
    assert s["top"][0]["ms_per_step"] == pytest.approx(1.5) and s["top"][1]["calls_per_step"] == 2.0


def test_cpu_profile_ranks_by_cpu_time_and_has_no_busy_share():
    averages = [_avg("a", 1, 0.0, 10.0), _avg("b", 3, 0.0, 2000.0)]
    s = profile_summary(_prof([], averages), 1.0, cuda=False, top=1)
    assert s["gpu_busy_fraction"] is None and s["host_syncs_per_step"] == 0
    assert s["top"] == [{"name": "b", "calls_per_step": 3.0, "ms_per_step": 2.0}]


def test_synchronize_takes_names_and_devices_and_refuses_nonsense():
    from sae_rdp_plugin.devices import synchronize

    assert synchronize("cpu") is None and synchronize(torch.device("cpu")) is None  # nothing queued on a CPU
    with pytest.raises(RuntimeError):
        synchronize("not-a-device")
