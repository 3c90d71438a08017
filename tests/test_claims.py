"""Pre-registered claim verdicts (eval/claims.py) and experiments/aggregate.py's tables, on
hand-worked cases and synthetic kept-run folders."""

import importlib.util
import json
import os

import numpy as np
import pytest

from leafe_jax.eval.claims import compare, verdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("per_seed, ci, sign, expected", [
    ([1.0, 2.0, 0.5], (0.2, 3.0), 1, "holds"),
    ([-1.0, -2.0], (-3.0, -0.1), -1, "holds"),
    ([1.0, -2.0, 3.0], (0.2, 3.0), 1, "mixed"),       # CI on the claimed side, a seed against
    ([1.0, 0.0], (0.2, 3.0), 1, "mixed"),             # a zero difference is not the claimed sign
    ([1.0, 2.0], (-0.5, 3.0), 1, "null"),
    ([1.0, 2.0], (0.0, 3.0), 1, "null"),              # a CI touching 0 includes it
    ([-1.0, -2.0], (-3.0, -0.5), 1, "reversed"),
    ([1.0, 2.0], (0.5, 3.0), -1, "reversed"),
    ([1.0], (float("nan"), float("nan")), 1, "n/a"),
])
def test_verdict_follows_the_preregistered_rule(per_seed, ci, sign, expected):
    assert verdict(per_seed, ci, sign) == expected


def test_verdict_refuses_a_sign_that_is_not_one():
    with pytest.raises(ValueError, match="sign"):
        verdict([1.0], (0.1, 0.2), 0)


def test_compare_pools_per_level_values_and_keeps_seed_means():
    # a constant difference has a degenerate bootstrap: the CI is the value itself
    c = compare([np.full(4, 2.0), np.full(6, 2.0)], 1)
    assert c["per_seed"] == [2.0, 2.0] and c["pooled"] == 2.0 and c["ci"] == (2.0, 2.0)
    assert c["pooled_seeds"] == 2 and c["verdict"] == "holds"
    # a seed with only its mean counts for the sign condition, not for the pooled CI
    c = compare([-1.0, np.array([1.0, 3.0, 2.0])], 1)
    assert c["per_seed"] == [-1.0, 2.0] and c["pooled"] == 2.0 and c["pooled_seeds"] == 1
    assert c["verdict"] == "mixed"
    # symmetric differences around 0: the pooled CI includes 0
    assert compare([np.array([-1.0, 1.0] * 20)], 1)["verdict"] == "null"
    assert compare([0.5, 0.7], 1)["verdict"] == "n/a"              # nothing to pool
    with pytest.raises(ValueError, match="1-D"):
        compare([np.zeros((2, 2))], 1)


def _aggregate():
    spec = importlib.util.spec_from_file_location("aggregate", os.path.join(ROOT, "experiments", "aggregate.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if isinstance(obj, np.ndarray):
        np.save(path, obj)
    elif isinstance(obj, str):
        open(path, "w").write(obj)
    else:
        json.dump(obj, open(path, "w"))


def _run(tmp_path, seed, leafe_hits, grpo_hits, *, stage1_arrays):
    """A kept run with 4 held-out levels x 2 samples and 4 transfer levels x 32 samples."""
    d = str(tmp_path / f"s{seed}")
    _write(f"{d}/config.json", {"experiment": {"seed": seed}})
    _write(f"{d}/timings.json", {"base": 1.0})
    _write(f"{d}/eval/passk.json", {})
    for m, hits in (("base", grpo_hits), ("leafe", leafe_hits), ("grpo", grpo_hits), ("rehearsal", grpo_hits)):
        _write(f"{d}/eval/{m}/success.npy", np.array(hits, bool))
        _write(f"{d}/eval_transfer/{m}/success.npy", np.repeat(np.array(hits, bool)[:, :1], 32, 1))
    solved = np.array([True, True, False, True])
    rollback = {"task_solved": solved.tolist(), "task_env_steps": [50, 130, 200, 100]}
    independent = {"task_solved": solved.tolist(), "task_env_steps": [150, 100, 200, 120]}
    if stage1_arrays:
        for s, st in (("rollback", rollback), ("independent", independent)):
            _write(f"{d}/stage1/{s}/stats.json", {**st, "solved_within_k": [0.5, 0.75], "env_steps": 480,
                                                  "tokens": 1000, "successful_branches": 1})
    else:   # only the report's table (an older kept run)
        _write(f"{d}/report.md", "x\n\n| strategy | solved within E env steps per task: E = 60 / E = 120 | a |\n"
               "|---|---|---|\n| rollback | 25.0 / 50.0 | 1 |\n| independent | 0.0 / 25.0 | 1 |\n\nend\n")
    return d


def test_aggregate_reads_kept_runs_and_gives_the_claims(tmp_path):
    agg = _aggregate()
    # seed 0: LEAFE solves every sample of levels 0-1, GRPO of level 0 only -> Pass@2 per level
    # differences (0, 1, 0, 0): mean +25 points; seed 1 the same
    lhits = [[1, 1], [1, 1], [0, 0], [0, 0]]
    ghits = [[1, 1], [0, 0], [0, 0], [0, 0]]
    d0 = _run(tmp_path, 0, lhits, ghits, stage1_arrays=False)
    d1 = _run(tmp_path, 1, lhits, ghits, stage1_arrays=True)
    text = agg.main([d0, d1])
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    # Stage 1 at E = 120: seed 1 from its arrays: rollback solves tasks 0 and 3 within 120
    # (50, 100), independent tasks 1 and 3 (100, 120): per-task differences (+1, -1, 0, 0) -> 0;
    # seed 0 from its report's table: 50.0 - 25.0 = +25
    r = rows["Stage 1, solved within E = 120 env steps per task: rollback − independent > 0"]
    assert "+25.0 / +0.0" in r and "(1)" in r and "null" in r
    r = rows["Pass@2: LEAFE − GRPO (matched) > 0 (LEAFE widens)"]
    assert "+25.0 / +25.0" in r and "+25.0 [" in r and "(2)" in r
    r = rows["Transfer Pass@32: LEAFE − grpo > 0"]
    assert "+25.0 / +25.0" in r
    assert agg._report_per_cost(f"{d0}/report.md") == {"rollback": {60: 25.0, 120: 50.0},
                                                        "independent": {60: 0.0, 120: 25.0}}
