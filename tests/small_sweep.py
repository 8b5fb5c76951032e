"""The small sweep the bad-input tests share (tests/test_bad_inputs.py, tests/commands/test_bad_inputs_sweep.py):
2 groups (topk, standard) x 2 seeds = 4 members; trained once per test session by the ``small_sweep`` fixture
(tests/conftest.py)."""

SWEEP = {
    "dgps": [{"name": "a", "m": 4, "d": 8, "rho": 0.5, "q": 0.2}],
    "architectures": ["topk", "standard"],
    "widths": [4],
    "ks": [1],
    "seeds": [0, 1],
    "steps": 5,
    "batch_size": 16,
    "eval_samples": 64,
    "checkpoint_every": 5,
}
