"""The audit figure explains its colours: a legend entry per metric role shown, in the role's marker colour."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from sae_rdp_plugin.evals.rdp_audit.eval_output import RdpAuditResultDetail
from sae_rdp_plugin.evals.rdp_audit.main import audit_figure


def detail(proxy: str, role: str) -> RdpAuditResultDetail:
    return RdpAuditResultDetail(
        proxy=proxy, orientation=-1, role=role, n_saes=6, n_missing=0, n_dominated_pairs=3, verdict="faithful"
    )


@pytest.mark.parametrize(
    "roles", [("proxy", "control", "proxy"), ("proxy",), ("control", "control")], ids=["both", "proxy", "control"]
)
def test_legend_names_each_role_in_its_marker_colour(roles):
    b = np.arange(6.0)
    details = [detail(f"m{i}", r) for i, r in enumerate(roles)]
    pis = {d.proxy: np.linspace(0, 1, 6) * (i + 1) for i, d in enumerate(details)}
    fig = audit_figure("toy", b, pis, details)
    # the colour each role's points were drawn in, read back from the axes
    drawn = {}
    for ax, d in zip(fig.axes, details):
        (points,) = ax.collections
        drawn.setdefault(d.role, set()).add(tuple(points.get_facecolor()[0]))
    assert all(len(c) == 1 for c in drawn.values())
    (legend,) = fig.legends
    entries = {t.get_text(): to_rgba(h.get_color()) for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert len(entries) == len(drawn)  # one entry per role shown, none for absent roles
    for role, (colour,) in drawn.items():
        (label,) = [text for text in entries if text.startswith(role)]
        assert entries[label] == colour
    if len(drawn) == 2:
        assert drawn["proxy"] != drawn["control"]


def test_plot_file_written_without_pyplot_state(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    from sae_rdp_plugin.evals.rdp_audit.main import _plot

    backend, figures = matplotlib.get_backend(), plt.get_fignums()
    _plot(tmp_path / "a.png", "toy", np.arange(4.0), {"m": np.arange(4.0)}, [detail("m", "proxy")])
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == backend and plt.get_fignums() == figures
