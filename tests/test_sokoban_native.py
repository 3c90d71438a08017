"""Without flax and gymnax (an image whose JAX they do not support) the Sokoban environment
runs on JAX-only equivalents and gives the same results."""

import json
import os
import subprocess
import sys

import jax
import numpy as np

SCRIPT = r"""
import builtins, json, sys
real = builtins.__import__
def guarded(name, *a, **k):
    if name.split('.')[0] in ('flax', 'gymnax', 'chex', 'optax', 'orbax'):
        raise ImportError('blocked: ' + name)
    return real(name, *a, **k)
builtins.__import__ = guarded
import jax, jax.numpy as jnp
from leafe_jax.envs import compat
from leafe_jax.envs.sokoban import Sokoban, make_bank, generate_levels, GeneratorConfig
assert compat.NATIVE
print("RESULT " + json.dumps(RUN()))
"""

RUN = '''
def RUN():
    import jax, jax.numpy as jnp, numpy as np
    from leafe_jax.envs.sokoban import Sokoban, make_bank, generate_levels, GeneratorConfig
    gen = generate_levels(jax.random.key(3), 8, GeneratorConfig(height=7, width=7, num_boxes=2, max_solution_steps=40))
    env = Sokoban(7, 7, 2, max_steps=30)
    params = env.default_params.replace(bank=make_bank(gen.level, 7, 7))
    keys = jax.random.split(jax.random.key(0), 8)
    obs, st = jax.vmap(env.reset, (0, None))(keys, params)
    acts = jax.random.randint(jax.random.key(1), (40, 8), 0, 4)
    def body(st, xs):
        k, a = xs
        obs, st, r, term, trunc, info = jax.vmap(env.step, (0, 0, 0, None))(
            jax.random.split(k, 8), st, a, params)
        return st, (obs.sum(), r.sum(), term.sum(), info["pushed"].sum())
    st, out = jax.lax.scan(body, st, (jax.random.split(jax.random.key(2), 40), acts))
    return {"levels": np.asarray(gen.level.grid).tolist(), "trace": [np.asarray(o).tolist() for o in out],
            "final_player": np.asarray(st.player).tolist()}
'''


def test_env_without_flax_and_gymnax_matches():
    ns = {}
    exec(RUN, ns)
    want = json.loads(json.dumps(ns["RUN"]()))
    code = RUN + SCRIPT
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads([l for l in r.stdout.splitlines() if l.startswith("RESULT ")][0][7:])
    assert got == want
    assert np.asarray(want["trace"][3]).sum() > 0          # boxes were pushed: a real run
    assert jax.__version__
