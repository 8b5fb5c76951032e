"""Library code of the paper experiments (their runners and results live in the repository's
``experiments/`` folder): ``rdp_sweeps`` (the empirical RDP sweeps), ``identifiability`` (the WSAE toy model).
"""
