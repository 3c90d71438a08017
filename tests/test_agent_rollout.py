"""The on-device agent loop: encoding, restarts at tau, forbidden actions, batch = single."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.interfaces.symbolic.rollout import rollout
from leafe_jax.envs.sokoban import generate_levels, get_preset
from leafe_jax.policy.config import get_config
from leafe_jax.policy.model import create_model

T = 8


@pytest.fixture(scope="module")
def setup():
    p = get_preset("6x6_2box")
    env = p.make_env()
    params = env.default_params
    g = generate_levels(jax.random.key(0), 4, p.generator, chunk=256)
    _, starts = jax.vmap(env.reset_to_level, in_axes=(0, None))(g.level, params)
    model = create_model(get_config("test-tiny").replace(vocab_size=64, max_seq_len=1024), seed=0)
    keys = jax.random.split(jax.random.key(1), 4)
    traj = rollout(model, env, params, starts, keys, num_steps=T, temperature=1.5)
    return env, params, starts, model, keys, traj


def test_context_matches_host_encoding_of_the_replayed_episode(setup):
    env, params, starts, model, keys, traj = setup
    assert traj.actions.shape == (T, 4) and traj.states.grid.shape == (T + 1, 4, 36)
    for b in range(4):
        n = int(traj.num_steps[b])
        acts = np.asarray(traj.actions[:n, b])
        assert ((acts >= 0) & (acts < 4)).all() and (np.asarray(traj.actions[n:, b]) == -1).all()
        # replay the actions with the env itself: states and feedback must agree
        s = jax.tree.map(lambda x: x[b], starts)
        obs, fbs = [np.asarray(env.get_obs(s))], [E.FB_START]
        for t, a in enumerate(acts):
            assert np.array_equal(np.asarray(traj.states.grid[t, b]), np.asarray(s.grid))
            _, s, r, term, info = env.step_env(None, s, jnp.int32(a), params)
            assert float(traj.rewards[t, b]) == pytest.approx(float(r))
            obs.append(np.asarray(env.get_obs(s)))
            fbs.append(int(E.feedback_token(info)))
        tokens, mask = E.encode_episode(np.stack(obs), acts, np.array(fbs[:n]))
        L = int(traj.token_len[b])
        assert L == len(tokens)
        assert np.asarray(traj.tokens[b, :L]).tolist() == tokens.tolist(), E.describe(traj.tokens[b, :L])
        assert (np.asarray(traj.tokens[b, L:]) == E.PAD).all()
        assert np.flatnonzero(mask).tolist() == np.asarray(traj.action_pos[:n, b]).tolist()


def test_turn_layout_is_18_tokens_on_6x6(setup):
    env = setup[0]
    assert E.turn_length(env.height, env.width) == 18


def test_restart_at_tau_reproduces_the_continuation(setup):
    env, params, starts, model, keys, traj = setup
    tau = 3
    assert (np.asarray(traj.num_steps) > tau).all()
    start_tau = jax.tree.map(lambda x: x[tau], traj.states)
    # the prefix is everything before turn tau's cells: up to and including action tau-1
    plen = np.asarray(traj.action_pos[tau - 1]) + 1
    prefix = np.asarray(traj.tokens[:, : plen.max()])
    prefix = np.where(np.arange(prefix.shape[1])[None] < plen[:, None], prefix, E.PAD)
    branch = rollout(model, env, params, start_tau, keys, num_steps=T - tau, prefix=prefix,
                     prefix_len=plen, first_feedback=traj.feedback[tau - 1], temperature=1.5)
    assert np.array_equal(np.asarray(branch.actions), np.asarray(traj.actions[tau:]))
    assert np.array_equal(np.asarray(branch.states.grid), np.asarray(traj.states.grid[tau:]))
    assert np.array_equal(np.asarray(branch.tokens[:, : int(branch.token_len.max())]),
                          np.asarray(traj.tokens[:, : int(branch.token_len.max())]))
    np.testing.assert_allclose(np.asarray(branch.logprobs), np.asarray(traj.logprobs[tau:]), atol=1e-4)


def test_forbidden_first_actions_and_experience(setup):
    env, params, starts, model, keys, traj = setup
    forbidden = np.array([[True, True, True, False]] * 4)      # only "right" allowed
    exp = np.stack([np.asarray(E.experience_tokens(E.R_DEADLOCK, 0, 1, 2))] * 4)
    exp[1] = E.PAD                                              # row 1: no experience
    out = rollout(model, env, params, starts, keys, num_steps=2, forbidden=forbidden,
                  experience=exp, temperature=1.5)
    assert (np.asarray(out.actions[0]) == 3).all()
    C = (env.height - 2) * (env.width - 2)
    first_action_pos = np.asarray(out.action_pos[0])
    assert first_action_pos.tolist() == [1 + C + 1 + 6, 1 + C + 1, 1 + C + 1 + 6, 1 + C + 1 + 6]
    toks = np.asarray(out.tokens[0])
    assert toks[1 + C + 1: 1 + C + 1 + 6].tolist() == exp[0].tolist()
    assert "<exp deadlock [U] r1 c2 >" in E.describe(toks)


def test_batched_rows_equal_single_episode_runs(setup):
    env, params, starts, model, keys, traj = setup
    for b in (0, 2):
        one = rollout(model, env, params, jax.tree.map(lambda x: x[b:b + 1], starts), keys[b:b + 1],
                      num_steps=T, temperature=1.5)
        assert np.array_equal(np.asarray(one.actions[:, 0]), np.asarray(traj.actions[:, b]))
        assert np.array_equal(np.asarray(one.tokens[0]), np.asarray(traj.tokens[b]))
