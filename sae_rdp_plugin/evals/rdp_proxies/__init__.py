"""``rdp_proxies``: a SAEBench eval measuring ground-truth-free polysemanticity proxies of an SAE on held-out
language-model activations (token entropy of top activations, decoder max |cos|; see main.py)."""
