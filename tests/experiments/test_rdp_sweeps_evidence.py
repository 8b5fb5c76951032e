"""The computed evidence sentences of the rdp_sweeps co-occurrence report, on hand-made SAE records."""

from __future__ import annotations

from sae_rdp_plugin.experiments.rdp_sweeps import _evidence_lines, premium_evidence


def _rec(dgp, arch, seed, rate, distortion, es=1.0, width=16, k=None, l1=None):
    return {
        "member_id": f"{dgp}_{arch}_{seed}_{rate}",
        "dgp": dgp,
        "architecture": arch,
        "width": width,
        "k": k,
        "l1_coefficient": l1,
        "init": "random",
        "seed": seed,
        "rate": rate,
        "distortion": distortion,
        "expected_size": es,
    }


def test_premium_evidence_by_hand():
    rs = [
        _rec("a", "standard", 0, 0.5, 0.3, l1=0.1),  # premium 0.2 (the best)
        _rec("a", "standard", 1, 0.6, 0.3, l1=0.1),  # same configuration, other seed: 0.1
        _rec("a", "topk", 0, 1.0, 0.2, k=1),  # -0.2
        _rec("a", "topk", 1, 1.0, 0.1, k=1),  # -0.1
    ]
    ev = premium_evidence(rs)
    assert ev["n_saes"] == 4 and ev["best_architecture"] == "standard"
    assert abs(ev["premium_max"] - 0.2) < 1e-12 and abs(ev["best_config_seed_spread"] - 0.1) < 1e-12
    assert {k: round(v, 12) for k, v in ev["max_by_seed"].items()} == {"0": 0.2, "1": 0.1}
    assert {k: round(v, 12) for k, v in ev["max_by_architecture"].items()} == {"standard": 0.2, "topk": -0.1}
    # a second DGP whose seed-0 maximum is lower: the sentence says seed 0 is not increasing, seed 1 is
    rs2 = [_rec("b", "standard", 0, 0.9, 0.0), _rec("b", "standard", 1, 0.7, 0.0)]
    text = "\n".join(_evidence_lines([{"dgp": "a", "evidence": ev}, {"dgp": "b", "evidence": premium_evidence(rs2)}]))
    assert "largest of 4 / 2 SAEs (6 in all), from 2 seeds" in text
    assert "seed 0: 0.200, 0.100 (not increasing with rho)" in text
    assert "seed 1: 0.100, 0.300 (increasing with rho)" in text
    assert "decoder bias" in text
