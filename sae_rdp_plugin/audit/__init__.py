"""Auditing interpretability proxies against the RDP tradeoff.

``stats`` (violation rate V, rank correlation rho, bootstrap intervals, permutation tests),
``readers`` (SAEBench result files of any format, and the bundled published tables, as one table).
"""
