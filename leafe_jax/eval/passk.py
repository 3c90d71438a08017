"""The unbiased Pass@k estimator (Chen et al. 2021) with bootstrap confidence intervals.

pass@k = 1 - C(n - c, k) / C(n, k) for n samples of which c succeeded, computed in the
numerically stable product form 1 - prod_{i = n - c + 1}^{n} (1 - k / i): no huge binomials,
exact for n up to the thousands.
"""

from __future__ import annotations

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task with ``c`` successes among ``n`` samples."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got k={k}: draw at least k samples per task")
    if n - c < k:
        return 1.0
    i = np.arange(n - c + 1, n + 1, dtype=np.float64)
    return float(1.0 - np.prod(1.0 - k / i))


def pass_at_k_per_task(success_Bxn, k: int) -> np.ndarray:
    """Pass@k per task from a boolean ``success[tasks, samples]`` array."""
    s = np.asarray(success_Bxn, bool)
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError(f"success must be a non-empty [tasks, samples] array, got shape {s.shape}")
    n = s.shape[1]
    return np.array([pass_at_k(n, int(c), k) for c in s.sum(1)])


def bootstrap_ci(values, *, num: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over tasks (resampling tasks with replacement)."""
    v = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (num, len(v)))].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def pass_at_k_table(success_Bxn, ks=None, *, ci: bool = True, seed: int = 0) -> dict:
    """``{k: {"mean", "ci_low", "ci_high"}}`` for k = 1, 2, 4, ... up to n (or ``ks``)."""
    s = np.asarray(success_Bxn, bool)
    n = s.shape[-1]
    if ks is None:
        ks = [2 ** i for i in range(int(np.log2(n)) + 1)]
    out = {}
    for k in ks:
        per = pass_at_k_per_task(s, k)
        row = {"mean": float(per.mean())}
        if ci:
            row["ci_low"], row["ci_high"] = bootstrap_ci(per, seed=seed)
        out[int(k)] = row
    return out
