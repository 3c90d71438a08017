"""Pre-registered claims read against paired differences over seeds.

A claim says which of two methods is ahead on one metric (``sign`` = +1: ``a - b > 0``;
-1: ``a - b < 0``). Every seed gives its paired difference ``a - b`` - per level (or per
task) when the run kept those values, else only its mean. The verdict follows the rule
pre-registered in docs/RESULTS.md:

* **holds**: every seed's difference has the claimed sign and the 95 % bootstrap CI of the
  difference pooled over levels excludes 0 (on the claimed side);
* **null**: the pooled CI includes 0;
* **reversed**: the pooled CI excludes 0 on the other side;
* **mixed**: the pooled CI excludes 0 on the claimed side but some seed disagrees (a case the
  rule did not name: reported as it is, never counted as holding).

The pooled CI is over the seeds that kept per-level values (``pooled_seeds`` says how many);
seeds with only a mean still count for the sign condition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from leafe_jax.eval.passk import bootstrap_ci


def verdict(per_seed: Sequence[float], ci: tuple[float, float], sign: int) -> str:
    """The pre-registered verdict from the per-seed mean differences and the pooled CI."""
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign}")
    lo, hi = ci
    if not (np.isfinite(lo) and np.isfinite(hi)) or not per_seed:
        return "n/a"
    if lo <= 0 <= hi:
        return "null"
    if (1 if lo > 0 else -1) != sign:
        return "reversed"
    return "holds" if all(np.sign(d) == sign for d in per_seed) else "mixed"


def compare(per_seed_diffs: Sequence, sign: int, *, seed: int = 0) -> dict:
    """Paired differences of one claim over seeds.

    ``per_seed_diffs``: for each seed, its per-level differences ``a - b`` (1-D array) or
    only their mean (a float, where the run did not keep per-level values). Returns the
    per-seed means, the pooled mean and 95 % bootstrap CI over the pooled per-level values,
    how many seeds were pooled, and the verdict."""
    means, pooled = [], []
    for d in per_seed_diffs:
        if np.ndim(d) == 0:
            means.append(float(d))
        else:
            d = np.asarray(d, np.float64)
            if d.ndim != 1 or d.size == 0:
                raise ValueError(f"per-level differences must be a non-empty 1-D array, got shape {d.shape}")
            means.append(float(d.mean()))
            pooled.append(d)
    if pooled:
        values = np.concatenate(pooled)
        ci = bootstrap_ci(values, seed=seed)
        mean = float(values.mean())
    else:
        ci, mean = (float("nan"), float("nan")), float("nan")
    return {"per_seed": means, "pooled": mean, "ci": (float(ci[0]), float(ci[1])),
            "pooled_seeds": len(pooled), "verdict": verdict(means, ci, sign)}
