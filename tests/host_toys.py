"""Toy host environments for the pool's tests (imported by name in worker processes)."""

import os
import random
import time

from leafe_jax.envs.host.protocol import StepOut


class Counter:
    """Task t starts at count t; "inc" / "dec" move it; won at 5. ``crash`` / ``hang``
    actions kill or stall the worker the first time only (a marker file under ``marks``
    remembers), or every time when ``always``; ``noisy`` makes reset nondeterministic."""

    num_tasks = 4
    instruction = "Reach a count of 5. Actions: inc, dec.\n\n"
    answer = "action"

    def __init__(self, marks: str = "", noisy: bool = False, always: bool = False):
        self.marks, self.noisy, self.always = marks, noisy, always

    def _obs(self):
        return f"count {self.n}" + (f" noise {random.random()}" if self.noisy else "")

    def reset(self, task):
        self.n = task
        return StepOut(self._obs())

    def _first(self, what: str) -> bool:
        mark = os.path.join(self.marks, what)
        if self.always or not os.path.exists(mark):
            open(mark, "w").close()
            return True
        return False

    def step(self, action):
        if action == "crash" and self._first("crash"):
            os._exit(3)
        if action == "hang" and self._first("hang"):
            time.sleep(1000)
        if action == "raise":
            raise RuntimeError("the env broke")
        self.n += {"inc": 1, "dec": -1}.get(action, 0)
        won = self.n >= 5
        return StepOut(self._obs(), feedback=f"{action} done", reward=max(0, self.n) / 5, done=won,
                       won=won, valid_actions=("inc", "dec"))

    def close(self):
        pass
