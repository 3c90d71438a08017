"""Host environments: env steps/s, what a reset + replay costs, and the sandbox's overhead.

    python benchmarks/host_envs.py --out benchmarks/results/host_envs.json

* ScienceWorld (``boil`` variation 0, its gold path) and TextWorld Commonsense (train seed 0,
  its gold path), each in an ``EnvPool`` of one worker: seconds per env step walking the path
  step by step (one request per step, the worker already there), and seconds per replayed
  step when a request makes the worker reset and replay the whole prefix (a rollback to the
  end of the path). The ratio replay / step says how much the pool's request overhead costs.
* The code sandbox: seconds per ``run_python`` of a trivial program (namespaces, uid drop,
  mounts, interpreter start) against a plain ``python -I -S -c`` subprocess of the same
  program (side by side, same run); ``judge`` of an MBPP-sized problem in the pool.

Median of ``--repeats`` runs each. Needs ``scienceworld``, ``textworld-express``, Java.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from leafe_jax.envs.host.pool import EnvPool, StepRequest
from leafe_jax.envs.host.protocol import EnvSpec


def walk(spec: EnvSpec, repeats: int) -> dict:
    gold = spec.make()
    actions = gold.demonstration(0)
    gold.close()
    step_s, replay_s = [], []
    with EnvPool(spec, 1, step_timeout_s=120) as pool:
        pool.step([StepRequest(0, tuple(actions), None)])   # warm-up (the JVM's first steps are slow)
        for _ in range(repeats):
            pool.step([StepRequest(0)])
            t0 = time.perf_counter()
            for i, a in enumerate(actions):
                pool.step([StepRequest(0, tuple(actions[:i]), a)])
            step_s.append((time.perf_counter() - t0) / len(actions))
            pool.workers[0].state = None                   # elsewhere: the next request replays
            t0 = time.perf_counter()
            r, = pool.step([StepRequest(0, tuple(actions), None)])
            replay_s.append((time.perf_counter() - t0) / len(actions))
            assert r.replay_steps == len(actions)
    s, r = statistics.median(step_s), statistics.median(replay_s)
    return {"factory": spec.factory, "steps": len(actions), "s_per_step": s, "steps_per_s": 1 / s,
            "s_per_replayed_step": r, "replay_over_step": r / s}


def sandbox(repeats: int) -> dict:
    from leafe_jax.envs.code.problems import CodeProblem, judge
    from leafe_jax.envs.code.sandbox import _python, run_python
    code = "print(sum(range(100)))"
    py = _python()
    ours, plain = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        assert run_python(code).ok
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        subprocess.run([py, "-I", "-S", "-c", code], check=True, capture_output=True)
        plain.append(time.perf_counter() - t0)
    p = CodeProblem(task_id="b/1", prompt="", entry_point="f",
                    tests=tuple(f"assert f({i}) == {i * i}" for i in range(3)))
    judged = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        assert judge(p, "def f(x):\n    return x * x\n").success
        judged.append(time.perf_counter() - t0)
    o, q = statistics.median(ours), statistics.median(plain)
    return {"run_python_s": o, "plain_subprocess_s": q, "overhead_ratio": o / q,
            "judge_3_tests_s": statistics.median(judged)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/host_envs.json")
    a = ap.parse_args()
    res = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "python": sys.version.split()[0]},
           "sandbox": sandbox(a.repeats),
           "twc": walk(EnvSpec("leafe_jax.envs.host.textgames:TextWorldCommonsense", {"num_tasks": 1}),
                       a.repeats),
           "scienceworld": walk(EnvSpec("leafe_jax.envs.host.textgames:ScienceWorld",
                                        {"task_names": ("boil",), "variations": 1}), a.repeats)}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(res, fh, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
