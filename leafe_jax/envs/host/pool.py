"""Many host environments in worker processes, rolled back by reset + replay.

The caller is stateless about where an episode lives: every request names the episode's
task, the actions it has taken so far (``history``) and the action to take now. The pool
keeps, per worker, which (task, history) its env is at; a request whose episode is there is
one env step, any other (a rollback branch, an episode whose worker was given away, a worker
restarted after a crash) is reset + replay of the history first, charged as
``replay_steps``. A replay is checked against the observations the caller stored
(``expect``): a mismatch raises ``ReplayMismatch`` naming the task and step - never a silent
divergence.

A worker that crashes (its process dies) or hangs (no answer within ``step_timeout_s`` per
env step asked of it) is killed and restarted, and the request retried on the new env by
reset + replay, up to ``max_restarts`` times; then the request comes back with ``error``
set (counted in ``stats["failed"]``) - never lost silently.

Workers are fresh processes (``spawn``): they import the env by name (``EnvSpec``) and
inherit nothing from the parent (no JAX state, no open JVM).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import time
import traceback
from multiprocessing.connection import wait

from leafe_jax.envs.host.protocol import EnvSpec, StepOut, digest


class ReplayMismatch(RuntimeError):
    """Reset + replay did not reproduce a stored observation: the env is not deterministic."""


@dataclasses.dataclass(frozen=True)
class StepRequest:
    task: int
    history: tuple[str, ...] = ()         # actions the episode has already taken
    action: str | None = None             # the action to take now (None: the first observation)
    # stored observations after reset and each history action: the texts, or their
    # ``protocol.digest`` (what an episode record keeps)
    expect: tuple[str | int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class StepResult:
    out: StepOut | None                   # None when the env failed (``error``)
    replay_steps: int = 0                 # env steps spent re-reaching the history
    restarts: int = 0                     # worker restarts this request needed
    error: str | None = None


def _same(want, got: str) -> bool:
    return digest(got) == want if isinstance(want, int) else got == want


def _worker(conn, spec: EnvSpec) -> None:
    try:
        env = spec.make()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", env.num_tasks))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            break
        if msg[0] == "close":
            break
        _, task, history, action, reset, expect = msg
        try:
            replayed = 0
            if reset:
                out = env.reset(task)
                if expect is not None and expect and not _same(expect[0], out.observation):
                    conn.send(("mismatch", 0, expect[0], out.observation))
                    continue
                for i, a in enumerate(history):
                    out = env.step(a)
                    replayed += 1
                    if expect is not None and i + 1 < len(expect) and not _same(expect[i + 1], out.observation):
                        conn.send(("mismatch", i + 1, expect[i + 1], out.observation))
                        break
                else:
                    if action is not None:
                        out = env.step(action)
                    conn.send(("ok", out, replayed))
                continue
            conn.send(("ok", env.step(action), 0))
        except BaseException:
            conn.send(("error", traceback.format_exc()))
    try:
        env.close()
    except BaseException:
        pass


class _Worker:
    def __init__(self, ctx, spec: EnvSpec, start_timeout_s: float):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, spec), daemon=True)
        self.proc.start()
        child.close()
        self.state = None                 # (task, history) its env is at; None: unknown
        if not self.conn.poll(start_timeout_s):
            self.kill()
            raise RuntimeError(f"a worker for {spec.factory} did not start within {start_timeout_s} s")
        msg = self.conn.recv()
        if msg[0] != "ready":
            self.kill()
            raise RuntimeError(f"a worker could not build {spec.factory}:\n{msg[1]}")
        self.num_tasks = msg[1]

    def kill(self):
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class EnvPool:
    """``num_workers`` envs of ``spec`` in worker processes; ``step(requests)`` runs a batch."""

    def __init__(self, spec: EnvSpec, num_workers: int, *, step_timeout_s: float = 60.0,
                 start_timeout_s: float = 120.0, max_restarts: int = 2):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.spec, self.step_timeout_s, self.max_restarts = spec, step_timeout_s, max_restarts
        self.start_timeout_s = start_timeout_s
        self._ctx = mp.get_context("spawn")
        self.workers = [_Worker(self._ctx, spec, start_timeout_s) for _ in range(num_workers)]
        self.num_tasks = self.workers[0].num_tasks
        self.stats = {"steps": 0, "replay_steps": 0, "restarts": 0, "failed": 0}

    # ------------------------------------------------------------------ scheduling
    def _assign(self, reqs: list[StepRequest]) -> list[int | None]:
        """A worker per request (None: wait for the next wave); a worker already at the
        request's (task, history) is preferred - no replay."""
        free = set(range(len(self.workers)))
        out: list[int | None] = [None] * len(reqs)
        for i, r in enumerate(reqs):
            for w in sorted(free):
                if r.action is not None and self.workers[w].state == (r.task, r.history):
                    out[i] = w
                    free.discard(w)
                    break
        for i in range(len(reqs)):
            if out[i] is None and free:
                out[i] = min(free)
                free.discard(out[i])
        return out

    def step(self, requests: list[StepRequest]) -> list[StepResult]:
        for r in requests:
            if not 0 <= r.task < self.num_tasks:
                raise ValueError(f"task {r.task} is outside the env's {self.num_tasks} tasks")
        results: list[StepResult | None] = [None] * len(requests)
        todo = list(range(len(requests)))
        restarts = {i: 0 for i in todo}
        while todo:
            wave = self._assign([requests[i] for i in todo])
            running = {}
            for i, w in zip(todo, wave):
                if w is not None:
                    running[w] = i
                    self._send(w, requests[i])
            done = self._collect(running, requests)
            nxt = []
            for w, i in running.items():
                kind, payload = done[w]
                if kind == "ok":
                    out, replayed = payload
                    r = requests[i]
                    self.workers[w].state = (r.task, r.history + ((r.action,) if r.action is not None else ()))
                    self.stats["steps"] += int(r.action is not None)
                    self.stats["replay_steps"] += replayed
                    results[i] = StepResult(out, replayed, restarts[i])
                elif kind == "mismatch":
                    step, want, got = payload
                    self.workers[w].state = None
                    raise ReplayMismatch(
                        f"{self.spec.factory}: task {requests[i].task}, reset + replay of "
                        f"{len(requests[i].history)} actions gave another observation at step "
                        f"{step}:\n--- stored\n{str(want)[:500]}\n--- replayed\n{got[:500]}")
                else:                      # crashed, hung, or the env raised
                    self._restart(w)
                    restarts[i] += 1
                    if restarts[i] > self.max_restarts:
                        self.stats["failed"] += 1
                        results[i] = StepResult(None, 0, restarts[i] - 1,
                                                f"the env failed {restarts[i]} times: {payload[-2000:]}")
                    else:
                        nxt.append(i)
            nxt += [i for i, w in zip(todo, wave) if w is None]
            todo = sorted(nxt)
        return results

    def _send(self, w: int, r: StepRequest) -> None:
        wk = self.workers[w]
        reset = r.action is None or wk.state != (r.task, r.history)
        try:
            wk.conn.send(("go", r.task, r.history, r.action, reset, r.expect))
        except (BrokenPipeError, OSError):
            pass                           # a dead worker: _collect sees it
        wk.state = None                    # unknown until it answers

    def _collect(self, running: dict, requests) -> dict:
        """Each running worker's answer, or ("failed", why) when it died or ran past its
        deadline (step_timeout_s per env step asked, the replay included)."""
        t0 = time.monotonic()
        deadline = {w: t0 + self.step_timeout_s * (2 + len(requests[i].history)) for w, i in running.items()}
        out = {}
        while len(out) < len(running):
            waiting = {self.workers[w].conn: w for w in running if w not in out}
            left = min(deadline[w] for w in waiting.values()) - time.monotonic()
            for conn in wait(list(waiting), timeout=max(0.0, left)):
                w = waiting[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    out[w] = ("failed", f"worker {w} died (exit code {self.workers[w].proc.exitcode})")
                    continue
                out[w] = (msg[0], msg[1:] if msg[0] != "error" else msg[1])
            now = time.monotonic()
            for w in waiting.values():
                if w not in out and now >= deadline[w]:
                    out[w] = ("failed", f"worker {w} did not answer within "
                                        f"{deadline[w] - t0:.0f} s")
        return out

    def _restart(self, w: int) -> None:
        self.workers[w].kill()
        self.stats["restarts"] += 1
        self.workers[w] = _Worker(self._ctx, self.spec, self.start_timeout_s)

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        for wk in self.workers:
            try:
                wk.conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass
        for wk in self.workers:
            wk.proc.join(5)
            wk.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
