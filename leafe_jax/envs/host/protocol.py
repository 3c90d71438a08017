"""Host-side environments: text in, text out, run in worker processes, rolled back by reset +
replay when they cannot snapshot (ScienceWorld, TextWorldExpress, a code interpreter).

``HostEnv`` is what an adapter implements; ``EnvPool`` (``pool.py``) runs many of them in
worker processes and is what the agent loop talks to.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Protocol


def digest(observation: str) -> int:
    """A 63-bit digest of an observation (what an episode record keeps to check a replay)."""
    return int.from_bytes(hashlib.sha1(observation.encode("utf-8", "surrogateescape")).digest()[:8],
                          "little") >> 1


@dataclasses.dataclass(frozen=True)
class StepOut:
    observation: str              # what the agent sees next
    feedback: str = ""            # the environment's response to the action, in words
    reward: float = 0.0
    done: bool = False
    won: bool = False             # the task is solved (implies done)
    valid_actions: tuple[str, ...] | None = None    # where the env lists them


class HostEnv(Protocol):
    """One environment instance, owned by one worker process.

    * ``reset(task) -> StepOut``: start task ``task`` (an index into the env's own task list)
      from scratch; deterministic: the same task and the same actions give the same
      observations (reset + replay relies on it, and the pool checks it).
    * ``step(action) -> StepOut``: one action in the env's own text form.
    * ``num_tasks``: how many tasks there are.
    * ``close()``: release what the env holds (a JVM, files).
    * optional ``demonstration(task) -> [action, ...]``: a gold action sequence (the BC
      warm-up); it resets the env.

    Class attributes the text agent reads without building the env: ``instruction`` (what
    the game is and what an action looks like: the shared prompt prefix) and ``answer``
    (``"action"``: the action is the text inside ``<action>...</action>``; ``"code"``: the
    whole answer is the action, e.g. a program in a code block).
    """
    num_tasks: int
    instruction: str
    answer: str

    def reset(self, task: int) -> StepOut: ...

    def step(self, action: str) -> StepOut: ...

    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """How a worker builds its env: ``factory(**kwargs)``, with ``factory`` importable by
    name (workers are fresh processes: nothing is inherited)."""
    factory: str                  # "package.module:callable"
    kwargs: dict = dataclasses.field(default_factory=dict)

    def resolve(self):
        """The factory itself (importing its module; nothing is built)."""
        import importlib
        mod, _, name = self.factory.partition(":")
        if not name:
            raise ValueError(f"EnvSpec.factory {self.factory!r} must be 'module:callable'")
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"EnvSpec.factory {self.factory!r}: {e}") from None

    def make(self) -> HostEnv:
        return self.resolve()(**self.kwargs)
