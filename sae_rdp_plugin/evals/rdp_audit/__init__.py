"""``rdp_audit``: a SAEBench eval that audits interpretability metrics against the RDP ordering
(THEORY.md section 6) over a sweep of SAEs whose SAEBench results already exist."""
