"""The host-env pool: rollback by reset + replay (checked against the stored observations),
crashed and hung workers restarted and their episodes recovered, failures reported."""

import os
import signal

import pytest

from leafe_jax.envs.host.pool import EnvPool, ReplayMismatch, StepRequest
from leafe_jax.envs.host.protocol import EnvSpec


def spec(tmp_path, **kw):
    return EnvSpec("host_toys:Counter", {"marks": str(tmp_path), **kw})


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    with EnvPool(spec(tmp_path_factory.mktemp("marks")), 2, step_timeout_s=5) as p:
        yield p


def test_episodes_step_where_they_are_and_replay_elsewhere(pool):
    a, b = pool.step([StepRequest(1), StepRequest(3)])
    assert (a.out.observation, b.out.observation) == ("count 1", "count 3")
    before = dict(pool.stats)
    a, b = pool.step([StepRequest(1, (), "inc"), StepRequest(3, (), "inc")])
    assert (a.out.observation, a.replay_steps, b.out.observation, b.out.won) == ("count 2", 0, "count 4", False)
    # task 3 goes on where its worker is; task 1 takes another path (a rollback branch that
    # its worker is not at): reset + replay of its 3 actions, checked, then the step
    c, d = pool.step([StepRequest(1, ("inc", "inc", "dec"), "inc",
                                  expect=("count 1", "count 2", "count 3", "count 2")),
                      StepRequest(3, ("inc",), "inc", expect=("count 3", "count 4"))])
    assert (c.out.observation, c.replay_steps) == ("count 3", 3)
    assert (d.out.observation, d.replay_steps, d.out.won, d.out.reward) == ("count 5", 0, True, 1.0)
    assert c.out.reward == 3 / 5 and not c.out.won
    assert pool.stats["steps"] - before["steps"] == 4
    assert pool.stats["replay_steps"] - before["replay_steps"] == 3


def test_more_episodes_than_workers(pool):
    outs = pool.step([StepRequest(t % 4, ("inc",) * (t % 3), "inc") for t in range(7)])
    assert [o.out.observation for o in outs] == [f"count {t % 4 + t % 3 + 1}" for t in range(7)]


def test_a_changed_action_sequence_is_detected(pool):
    stored = ("count 0", "count 1", "count 2")
    with pytest.raises(ReplayMismatch, match="task 0, reset \\+ replay of 2 actions .* step 2"):
        pool.step([StepRequest(0, ("inc", "dec"), "inc", expect=stored)])


def test_replay_checks_digests_too(pool):
    from leafe_jax.envs.host.protocol import digest
    ok, = pool.step([StepRequest(2, ("inc",), "dec", expect=(digest("count 2"), digest("count 3")))])
    assert ok.out.observation == "count 2"
    with pytest.raises(ReplayMismatch, match="step 1"):
        pool.step([StepRequest(2, ("dec",), "inc", expect=(digest("count 2"), digest("count 3")))])


def test_a_nondeterministic_env_is_caught(tmp_path):
    with EnvPool(spec(tmp_path, noisy=True), 1, step_timeout_s=5) as p:
        first = p.step([StepRequest(2)])[0].out.observation
        with pytest.raises(ReplayMismatch, match="step 0"):
            p.step([StepRequest(2, (), None, expect=(first,))])


def test_a_worker_killed_mid_episode_is_recovered(tmp_path):
    with EnvPool(spec(tmp_path), 1, step_timeout_s=5) as p:
        p.step([StepRequest(0)])
        p.step([StepRequest(0, (), "inc")])
        os.kill(p.workers[0].proc.pid, signal.SIGKILL)          # between two steps
        r, = p.step([StepRequest(0, ("inc",), "inc", expect=("count 0", "count 1"))])
        assert r.out.observation == "count 2" and r.restarts == 1 and r.replay_steps == 1
        r, = p.step([StepRequest(0, ("inc", "crash"), None)])   # dies in the replay, once
        assert r.out.observation == "count 1" and r.restarts == 1       # ("crash": a no-op after)
        assert p.stats["restarts"] == 2 and p.stats["failed"] == 0


def test_a_hung_worker_is_restarted(tmp_path):
    with EnvPool(spec(tmp_path), 1, step_timeout_s=0.5) as p:
        r, = p.step([StepRequest(1, (), "hang")])
        assert r.out.observation == "count 1" and r.restarts == 1


def test_an_env_that_keeps_failing_is_reported(tmp_path):
    with EnvPool(spec(tmp_path, always=True), 1, step_timeout_s=5, max_restarts=1) as p:
        ok, bad = p.step([StepRequest(0, (), "inc"), StepRequest(1, (), "raise")])
        assert ok.out.observation == "count 1"
        assert bad.out is None and "RuntimeError: the env broke" in bad.error and bad.restarts == 1
        assert p.stats["failed"] == 1
        with pytest.raises(ValueError, match="task 9 is outside"):
            p.step([StepRequest(9)])
