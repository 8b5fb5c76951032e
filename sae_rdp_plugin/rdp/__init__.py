"""The RDP toy theory and its metrics.

``dgp`` (concepts and active-set pmfs), ``theory`` (exact rate, distortion and polysemanticity of every
code; frontiers, rate tax, Example 1), ``metrics`` (polysemanticity of trained dictionaries; rate and
distortion of an SAE on data), ``plots`` (the theory's figures).
"""
