"""Pass@k against direct combinatorics and hand-worked cases."""

import itertools
import math

import numpy as np
import pytest

from leafe_jax.eval.passk import bootstrap_ci, pass_at_k, pass_at_k_per_task, pass_at_k_table


@pytest.mark.parametrize("n, c, k", [(10, 3, 1), (10, 3, 4), (20, 1, 7), (128, 5, 64), (50, 49, 2)])
def test_matches_binomial_formula(n, c, k):
    direct = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(direct, rel=1e-12, abs=1e-15)


def test_matches_enumeration_of_subsets():
    success = [1, 0, 0, 1, 0, 0]
    k = 3
    subsets = list(itertools.combinations(range(6), k))
    expected = sum(any(success[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(6, 2, 3) == pytest.approx(expected)     # 1 - C(4,3)/C(6,3) = 0.8


def test_hand_worked_edges():
    assert pass_at_k(8, 0, 4) == 0.0          # c = 0
    assert pass_at_k(8, 8, 1) == 1.0          # c = n
    assert pass_at_k(8, 1, 8) == 1.0          # k = n with one success
    assert pass_at_k(4, 1, 1) == 0.25         # pass@1 = c / n
    assert pass_at_k(10_000, 1, 5000) == pytest.approx(0.5)   # stable for large n


def test_monotone_in_k_and_errors():
    vals = [pass_at_k(128, 3, k) for k in range(1, 129)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    with pytest.raises(ValueError, match="k must be in"):
        pass_at_k(8, 2, 16)
    with pytest.raises(ValueError, match="non-empty"):
        pass_at_k_per_task(np.zeros((0, 4), bool), 1)


def test_table_and_bootstrap():
    rng = np.random.default_rng(0)
    s = rng.random((60, 16)) < rng.random((60, 1)) * 0.3
    table = pass_at_k_table(s)
    assert list(table) == [1, 2, 4, 8, 16]
    means = [table[k]["mean"] for k in table]
    assert all(b >= a for a, b in zip(means, means[1:]))
    assert table[1]["mean"] == pytest.approx(s.mean())
    for row in table.values():
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    lo, hi = bootstrap_ci(np.ones(10))
    assert lo == hi == 1.0
