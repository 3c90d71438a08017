"""ScienceWorld and TextWorld Commonsense as host envs in the pool: the gold path wins,
reset + replay reproduces the stored observations, and a changed action sequence is caught."""

import pytest

from leafe_jax.envs.host.pool import EnvPool, ReplayMismatch, StepRequest
from leafe_jax.envs.host.protocol import EnvSpec
from leafe_jax.envs.host.textgames import ScienceWorld, TextWorldCommonsense


def _walk(pool, task, actions):
    """Step one episode through ``actions``; its observations (reset first)."""
    obs = [pool.step([StepRequest(task)])[0].out]
    for i, a in enumerate(actions):
        obs.append(pool.step([StepRequest(task, tuple(actions[:i]), a)])[0].out)
    return obs


@pytest.mark.parametrize("factory, kwargs, prefix", [
    ("leafe_jax.envs.host.textgames:TextWorldCommonsense", {"num_tasks": 2}, None),
    ("leafe_jax.envs.host.textgames:ScienceWorld", {"task_names": ("boil",), "variations": 1}, 12),
])
def test_replay_reproduces_and_a_changed_sequence_is_caught(factory, kwargs, prefix):
    local = EnvSpec(factory, kwargs).make()
    gold = local.demonstration(0)
    local.close()
    actions = gold if prefix is None else gold[:prefix]
    with EnvPool(EnvSpec(factory, kwargs), 2, step_timeout_s=60) as pool:
        obs = _walk(pool, 0, actions)
        if prefix is None:
            assert obs[-1].won and obs[-1].done
        assert obs[0].valid_actions and all(isinstance(a, str) for a in obs[0].valid_actions)
        stored = tuple(o.observation for o in obs)
        # the other worker holds no episode: reset + replay of the whole prefix, checked
        busy = pool.workers[0].state
        pool.workers[0].state = pool.workers[1].state = None
        r, = pool.step([StepRequest(0, tuple(actions), None, expect=stored)])
        assert r.replay_steps == len(actions) and r.out.observation == stored[-1]
        assert busy is not None
        changed = list(actions)
        changed[1] = "inventory" if changed[1] != "inventory" else "look around"
        with pytest.raises(ReplayMismatch, match="task 0"):
            pool.step([StepRequest(0, tuple(changed), None, expect=stored)])


def test_bad_game_arguments_are_named():
    with pytest.raises(ValueError, match="unknown ScienceWorld tasks \\['boiling'\\]"):
        ScienceWorld(task_names=("boiling",))
    with pytest.raises(ValueError, match="unknown ScienceWorld split"):
        ScienceWorld(split="validation")
    with pytest.raises(ValueError, match="unknown twc fold"):
        TextWorldCommonsense(fold="valid")
