"""sweep plot: one panel per DGP side by side; no panel's labels overlap the next panel (constrained
layout, one y label for the row)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sae_rdp_plugin.sweep import analysis  # noqa: E402


def _rows(dgp: str, es: float) -> list[dict]:
    rows = []
    for a in ("topk", "standard"):
        for r in (0.5, 1.0, 1.5):
            rows.append({"dgp": dgp, "expected_size": es, "architecture": a, "rate": r, "distortion": es - r + 0.1})
            rows[-1].update(member_id=f"{dgp}-{a}-{r}", P_dec=0.2, P_dec_live=0.2, P_ED=0.1)
    return rows


def test_panels_do_not_overlap(tmp_path, monkeypatch):
    figs = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    paths = analysis.plot_sweep(_rows("independent", 2.0) + _rows("cooccurring", 2.5) + _rows("nested", 3.0), tmp_path)
    assert paths and paths[0].is_file()
    fig = figs[0]
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    axes = sorted((a for a in fig.axes if a.get_title()), key=lambda a: a.get_position().x0)
    assert len(axes) == 3
    for left, right in zip(axes, axes[1:]):
        # everything drawn for the left panel ends before the right panel's tick labels begin
        assert left.get_tightbbox(r).x1 <= right.get_tightbbox(r).x0, (left.get_title(), right.get_title())
    assert [bool(a.get_ylabel()) for a in axes] == [True, False, False]
