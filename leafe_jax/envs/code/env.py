"""Writing code with execution feedback, as a host environment (``envs.host.protocol``).

A task is one programming problem; each action is the agent's whole answer, from which the
program is taken (the last fenced code block, else the whole text); the step runs it against
the problem's tests in the sandbox and answers with the verdict in words - the failing
assertion and what the function returned, the interpreter's error, or the limit the program
hit. The episode is won when every test passes; how many revisions it gets is the agent
loop's step limit. Deterministic (same program, same verdict), so reset + replay reproduces
an episode and rollback = restart from an earlier attempt's context.

``CodeEnv(source="mbpp", path=..., split="train")`` or ``CodeEnv(source="humaneval")``.
The MBPP prompt shows the problem and its tests (as in the MBPP paper); HumanEval's shows
the signature and docstring to complete.
"""

from __future__ import annotations

import re

from leafe_jax.envs.code.problems import CodeProblem, judge, load_humaneval, load_mbpp
from leafe_jax.envs.code.sandbox import SandboxLimits
from leafe_jax.envs.host.protocol import StepOut

_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.S | re.I)


def extract_code(answer: str) -> str:
    """The program in an answer: its last fenced code block (```python ... ```), else the
    whole answer."""
    blocks = _FENCE.findall(answer)
    return blocks[-1] if blocks else answer


def task_prompt(p: CodeProblem) -> str:
    if p.source == "humaneval":
        return ("Complete this Python function. Answer with the whole function in a ```python "
                f"code block.\n\n```python\n{p.prompt}```")
    tests = "\n".join(p.tests)
    return (f"{p.prompt}\nYour code should pass these tests:\n\n{tests}\n\nAnswer with the "
            "program in a ```python code block.")


class CodeEnv:
    instruction = (
        "You are an expert Python programmer. Write a program that solves the task. After "
        "each attempt you are told which tests failed and why; then answer with a revised "
        "program. Answer with the whole program in one ```python code block.\n\n")
    answer = "code"

    def __init__(self, source: str = "mbpp", path: str | None = None, split: str | None = None,
                 limit: int | None = None, wall_s: float = 10.0, cpu_s: int = 5, memory_mb: int = 512):
        if source == "mbpp":
            if path is None:
                raise ValueError("CodeEnv(source='mbpp') needs the path of mbpp.jsonl or "
                                 "sanitized-mbpp.json")
            self.problems = load_mbpp(path, split=split)
        elif source == "humaneval":
            self.problems = load_humaneval(path)
        else:
            raise ValueError(f"unknown code source {source!r}; known: mbpp, humaneval")
        if limit is not None:
            self.problems = self.problems[:limit]
        if not self.problems:
            raise ValueError(f"no {source} problems (split {split!r})")
        self.limits = SandboxLimits(wall_s=wall_s, cpu_s=cpu_s, memory_mb=memory_mb)
        self.num_tasks = len(self.problems)
        self.problem: CodeProblem | None = None

    def reset(self, task: int) -> StepOut:
        self.problem = self.problems[task]
        return StepOut(task_prompt(self.problem))

    def step(self, action: str) -> StepOut:
        if self.problem is None:
            raise RuntimeError("step before reset")
        v = judge(self.problem, extract_code(action), limits=self.limits)
        status = f"{v.passed} of {v.total} tests passed."
        return StepOut(observation=f"{status}\n{v.feedback}", feedback=v.feedback,
                       reward=v.passed / max(1, v.total), done=v.success, won=v.success)

    def demonstration(self, task: int) -> list[str]:
        """The dataset's own solution as the one answer (the BC warm-up's target)."""
        self.reset(task)
        return [self.problems[task].reference]

    def close(self) -> None:
        pass
