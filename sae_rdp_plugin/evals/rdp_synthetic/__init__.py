"""``rdp_synthetic``: a SAEBench eval measuring an SAE's rate, distortion and polysemanticity against a
synthetic model with known concepts (see main.py)."""
