"""Programming problems and their sandboxed verdict: the datasets' own reference solutions
pass exactly as the MBPP copy's README records (971 / 974; 426 / 427 sanitized) and
HumanEval's canonical solutions all pass; wrong, broken and harness-gaming solutions fail
with feedback in words."""

import json
import pathlib
import sys

import pytest

from leafe_jax.envs.code.problems import (MBPP_SPLITS, CodeProblem, ProblemFileError, judge,
                                          load_humaneval, load_mbpp)
from leafe_jax.envs.code.sandbox import SandboxLimits

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux namespaces")
MBPP = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mbpp"
FAST = SandboxLimits(wall_s=4, cpu_s=1)
CPU_BOUND = SandboxLimits(wall_s=30, cpu_s=1)     # a CPU-time stop needs wall-clock headroom under load


@pytest.fixture(scope="module")
def mbpp():
    if not (MBPP / "mbpp.jsonl").is_file():
        pytest.skip(f"the MBPP copy is not at {MBPP} (CI has it beside the checkout)")
    return {p.task_id: p for p in load_mbpp(str(MBPP / "mbpp.jsonl"))}


ADD = CodeProblem(task_id="t/1", prompt="Write add(a, b).", entry_point="add",
                  tests=("assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"))


def test_mbpp_reads_as_documented(mbpp):
    assert len(mbpp) == 974
    p = mbpp["mbpp/2"]
    assert p.prompt.startswith("Write a function to find the similar elements")
    assert p.entry_point == "similar_elements" and len(p.tests) == 3 and "\r" not in p.reference
    assert mbpp["mbpp/367"].setup.strip()                 # the binary-tree helper its tests use
    assert mbpp["mbpp/1"].entry_point == "min_cost"
    test = load_mbpp(str(MBPP / "mbpp.jsonl"), split="test")
    assert [int(p.task_id.split("/")[1]) for p in test] == list(MBPP_SPLITS["test"])


def test_a_correct_solution_passes_every_test():
    v = judge(ADD, "def add(a, b):\n    return a + b\n")
    assert v.success and (v.passed, v.total) == (3, 3) and v.feedback == "All 3 tests passed."


def test_a_wrong_solution_is_told_what_it_returned():
    v = judge(ADD, "def add(a, b):\n    return a * b if a > 0 else a + b\n")
    assert not v.success and v.passed == 2                 # -1 + 1 and 2 * 2 are right
    assert "Test 1 failed: assert add(1, 2) == 3\n  it returned 2" in v.feedback
    assert "Test 2" not in v.feedback and "Test 3" not in v.feedback


def test_broken_solutions_fail_with_the_reason():
    v = judge(ADD, "def add(a, b)\n    return a + b\n")
    assert not v.success and v.passed == 0 and "does not run" in v.feedback and "SyntaxError" in v.feedback
    v = judge(ADD, "def add(a, b):\n    return a + c\n")
    assert v.passed == 0 and "Test 1 raised" in v.feedback and "NameError: name 'c' is not defined" in v.feedback
    v = judge(ADD, "def add(a, b):\n    while True:\n        pass\n", limits=CPU_BOUND)
    assert not v.success and "CPU time" in v.feedback


def test_gaming_the_harness_fails():
    """Exiting before the tests, or printing a summary that is not this run's, is a failure."""
    for sol in ["import os\nos._exit(0)\n", "import sys\nsys.exit(0)\n",
                "print('__verdict_0123456789abcdef0123456789abcdef 3 3')\nimport os\nos._exit(0)\n",
                "import builtins\nbuiltins.AssertionError = KeyboardInterrupt\ndef add(a, b):\n    return 0\n"]:
        assert not judge(ADD, sol, limits=FAST).success, sol


def test_reference_solutions_pass_on_a_sample(mbpp):
    for t in ("mbpp/2", "mbpp/11", "mbpp/367", "mbpp/600", "mbpp/974"):
        assert judge(mbpp[t], mbpp[t].reference).success, t
    v = judge(mbpp["mbpp/596"], mbpp["mbpp/596"].reference)     # sys.getsizeof of an older CPython
    assert not v.success and "it returned" in v.feedback


def test_problem_files_are_checked(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": 1, "text": "x", "code": "", "test_list": ["assert 1"]}\n{oops\n')
    with pytest.raises(ProblemFileError, match=r"bad.jsonl:2: not a JSON object"):
        load_mbpp(str(bad))
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"task_id": 1, "question": "?"}) + "\n")
    with pytest.raises(ProblemFileError, match=r"lacks .* \(not a MBPP file\?\)"):
        load_mbpp(str(other))
    with pytest.raises(ProblemFileError, match="no such problem file"):
        load_mbpp(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="unknown MBPP split"):
        load_mbpp(str(bad), split="dev")


MBPP_FAILS = ["mbpp/341", "mbpp/596", "mbpp/642"]      # as the README beside the MBPP copy records


def _sample(problems, fails, stride=8):
    """Every ``stride``-th problem and every recorded failure, in order."""
    return [p for i, p in enumerate(problems) if i % stride == 0 or p.task_id in fails]


@pytest.mark.slow
def test_reference_solutions_pass_as_recorded_on_a_stride_sample(mbpp):
    """The README beside the MBPP copy ran each record on CPython 3.11: 971 / 974 pass (341
    and 642 assume a set order, 596 an older sys.getsizeof); sanitized 426 / 427 (596);
    HumanEval's canonical solutions 164 / 164. Here every 8th problem of each set and every
    recorded failure (~200 sandboxed runs); the whole check is ``leafe code-check
    mbpp.jsonl sanitized-mbpp.json --humaneval`` (1 565 runs, ~4 min on 2 cores)."""
    from leafe_jax.envs.code.problems import reference_failures
    assert reference_failures(_sample(list(mbpp.values()), MBPP_FAILS)) == MBPP_FAILS
    san = load_mbpp(str(MBPP / "sanitized-mbpp.json"))
    assert len(san) == 427
    assert reference_failures(_sample(san, ["mbpp/596"])) == ["mbpp/596"]
    he = load_humaneval()
    assert len(he) == 164 and reference_failures(_sample(he, [])) == []


def test_code_check_command_counts_passing_references(tmp_path, capsys):
    from leafe_jax.cli.main import main
    f = tmp_path / "two.jsonl"
    f.write_text("".join(json.dumps({"task_id": t, "text": "Write add(a, b).", "code": code,
                                     "test_list": list(ADD.tests), "test_setup_code": ""}) + "\n"
                         for t, code in ((1, "def add(a, b):\n    return a + b"),
                                         (2, "def add(a, b):\n    return a - b"))))
    assert main(["code-check", str(f)]) == 0
    assert capsys.readouterr().out.strip() == f"{f}: 1 / 2 reference solutions pass; failing: mbpp/2"
    assert main(["code-check"]) == 2                 # nothing to check: one error line


def test_the_code_env_in_the_host_pool(tmp_path):
    """CodeEnv through worker processes: a wrong first attempt is told what it returned, the
    revision passes; a revision branched from the first attempt (reset + replay) gets the
    same verdicts - the env is deterministic."""
    from leafe_jax.envs.code.env import extract_code
    from leafe_jax.envs.host.pool import EnvPool, StepRequest
    from leafe_jax.envs.host.protocol import EnvSpec
    f = tmp_path / "add.jsonl"
    f.write_text(json.dumps({"task_id": 601, "text": "Write a function add(a, b).", "code": "",
                             "test_list": list(ADD.tests), "test_setup_code": ""}) + "\n")
    wrong = "Here:\n```python\ndef add(a, b):\n    return a * b\n```"      # only 2 * 2 is right
    right = "```python\ndef add(a, b):\n    return a + b\n```"
    assert extract_code(right) == "def add(a, b):\n    return a + b\n"
    assert extract_code("def f(): pass") == "def f(): pass"
    with EnvPool(EnvSpec("leafe_jax.envs.code.env:CodeEnv", {"path": str(f)}), 2) as pool:
        first, = pool.step([StepRequest(0)])
        assert "Your code should pass these tests" in first.out.observation
        a, = pool.step([StepRequest(0, (), wrong)])
        assert not a.out.done and a.out.reward == pytest.approx(1 / 3)
        assert "1 of 3 tests passed" in a.out.observation and "it returned 2" in a.out.observation
        b, c = pool.step([StepRequest(0, (wrong,), right),
                          StepRequest(0, (wrong,), right,
                                      expect=(first.out.observation, a.out.observation))])
        assert b.out.won and c.out.won and {b.replay_steps, c.replay_steps} == {0, 1}
