"""Hand-worked mechanics: every case written out, checked with and without jit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leafe_jax.envs.sokoban import Level, Sokoban, level_to_ascii
from sokoban_cases import level

U, D, L, R = 0, 1, 2, 3

CORRIDOR = """
|#######
|# @$ .#
|#  $ .#
|#######
"""


def run(env, lvl, actions, jit):
    """Step ``actions``; returns per-step (ascii, reward, terminated, info)."""
    params = env.default_params
    step = (jax.jit(env.step_env) if jit else env.step_env)
    _, s = env.reset_to_level(lvl, params)
    out = []
    for a in actions:
        if jit:
            _, s, r, term, info = step(None, s, jnp.int32(a), params)
        else:
            with jax.disable_jit():
                _, s, r, term, info = step(None, s, jnp.int32(a), params)
        out.append((level_to_ascii(Level(s.grid, s.player), env.height, env.width),
                    round(float(r), 4), bool(term), jax.tree.map(np.asarray, info), s))
    return out


@pytest.fixture(scope="module")
def corridor():
    lvl, H, W = level(CORRIDOR)
    return Sokoban(H, W, 2, max_steps=50), lvl


@pytest.mark.parametrize("jit", [False, True])
def test_push_then_push_into_wall(corridor, jit):
    env, lvl = corridor
    res = run(env, lvl, [R, R, R], jit)
    assert res[0][0] == "#######\n#  @$.#\n#  $ .#\n#######"
    assert res[0][1] == pytest.approx(-0.1) and res[0][3]["pushed"]
    # second push puts the box on the target: -0.1 + 1
    assert res[1][0] == "#######\n#   @*#\n#  $ .#\n#######"
    assert res[1][1] == pytest.approx(0.9) and res[1][3]["box_on_target"]
    # box against the wall: nothing moves, the step still costs -0.1
    assert res[2][0] == res[1][0]
    assert res[2][1] == pytest.approx(-0.1)
    assert res[2][3]["bumped"] and not res[2][3]["moved"] and not res[2][3]["pushed"]
    assert int(res[2][4].time) == 3


@pytest.mark.parametrize("jit", [False, True])
def test_cannot_push_two_boxes(jit):
    lvl, H, W = level("""
|########
|#@$$ ..#
|########
""")
    env = Sokoban(H, W, 2, max_steps=10)
    res = run(env, lvl, [R], jit)
    assert res[0][0] == "########\n#@$$ ..#\n########"
    assert res[0][1] == pytest.approx(-0.1) and res[0][3]["bumped"]


@pytest.mark.parametrize("jit", [False, True])
def test_box_off_target(jit):
    lvl, H, W = level("""
|#######
|#@*  .#
|#  $  #
|#######
""")
    env = Sokoban(H, W, 2, max_steps=20)
    # pushing the box off its target costs -1 and leaves the player on the target
    res = run(env, lvl, [R], jit)
    assert res[0][0] == "#######\n# +$ .#\n#  $  #\n#######"
    assert res[0][1] == pytest.approx(-1.1) and res[0][3]["box_off_target"]
    assert int(res[0][4].boxes_on_target) == 0


@pytest.mark.parametrize("jit", [False, True])
def test_solving_gives_plus_ten(jit):
    lvl, H, W = level("""
|######
|#@$ .#
|######
""")
    env = Sokoban(H, W, 1, max_steps=20)
    res = run(env, lvl, [R, R], jit)
    assert [r[1] for r in res] == [pytest.approx(-0.1), pytest.approx(-0.1 + 1 + 10)]
    assert [r[2] for r in res] == [False, True]
    assert res[1][3]["solved"]


@pytest.mark.parametrize("jit", [False, True])
def test_player_on_target(jit):
    lvl, H, W = level("""
|######
|#@.$.#
|#  $ #
|######
""")
    env = Sokoban(H, W, 2, max_steps=20)
    _, s = env.reset_to_level(lvl)
    res = run(env, lvl, [R, R], jit)
    assert res[0][0] == "######\n# +$.#\n#  $ #\n######"
    obs = np.asarray(env.get_obs(res[0][4]))
    assert obs[1, 2] == 6 and obs[1, 1] == 1          # player-on-target code, floor behind
    assert res[0][1] == pytest.approx(-0.1)            # standing on a target earns nothing
    assert res[1][0] == "######\n# .@*#\n#  $ #\n######"
    assert np.asarray(env.get_obs(res[1][4]))[1, 2] == 2   # the target reappears


def test_invalid_action_is_a_costly_noop_and_checked_step_raises(corridor):
    env, lvl = corridor
    params = env.default_params
    _, s = env.reset_to_level(lvl)
    _, s2, r, term, info = jax.jit(env.step_env)(None, s, jnp.int32(7), params)
    assert bool(info["invalid_action"]) and not bool(info["bumped"])
    assert int(s2.time) == 1 and int(s2.player) == int(s.player)
    assert float(r) == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="invalid action id 7"):
        env.checked_step(jax.random.key(0), s, 7)
    with pytest.raises(TypeError, match="integer"):
        env.checked_step(jax.random.key(0), s, 1.0)


def test_api_edge_errors(corridor):
    env, lvl = corridor
    _, s = env.reset_to_level(lvl)
    with pytest.raises(ValueError, match="jax.vmap"):
        env.step_env(None, s, jnp.zeros(3, jnp.int32), env.default_params)
    with pytest.raises(TypeError, match="integer"):
        env.step_env(None, s, jnp.float32(1), env.default_params)
    bad = Level(grid=np.zeros(10, np.uint8), player=np.int32(0))
    with pytest.raises(ValueError, match=r"shape \(28,\)"):
        env.reset_to_level(bad)
    with pytest.raises(ValueError, match="obs_mode"):
        Sokoban(5, 5, 1, obs_mode="pixels")
    with pytest.raises(ValueError, match="bank is None"):
        env.reset_to_index(0, env.default_params)


def test_truncation_and_auto_reset_from_bank(corridor):
    from leafe_jax.envs.sokoban import make_bank, stack_levels

    env, lvl = corridor
    env2 = Sokoban(env.height, env.width, 2, max_steps=2)
    bank = make_bank(stack_levels([lvl, lvl]), env.height, env.width)
    params = env2.default_params.replace(bank=bank)
    _, s = env2.reset_to_index(1, params)
    _, s, r, term, trunc, _ = env2.step(jax.random.key(0), s, L, params)
    assert not bool(trunc) and int(s.time) == 1
    obs, s, r, term, trunc, info = env2.step(jax.random.key(1), s, L, params)
    assert bool(trunc) and not bool(term)
    assert int(s.time) == 0                    # reset happened
    assert int(s.level_id) in (0, 1)
    assert np.array_equal(np.asarray(s.grid), np.asarray(lvl.grid))
    assert np.asarray(info["final_observation"])[1, 1] == 5   # player had walked left


def test_no_retrace_when_only_values_change(corridor):
    env, lvl = corridor
    params = env.default_params
    _, s = env.reset_to_level(lvl)
    f = jax.jit(chex.assert_max_traces(lambda s, a: env.step_env(None, s, a, params), n=1))
    for a in [0, 1, 2, 3, 3, 7]:
        _, s, _, _, _ = f(s, jnp.int32(a))
    g = jax.jit(chex.assert_max_traces(lambda k, s, a: env.step(k, s, a, params), n=1))
    for i, a in enumerate([0, 1, 3]):
        _, s, *_ = g(jax.random.key(i), s, jnp.int32(a))
    chex.clear_trace_counter()


def test_onehot_observation(corridor):
    env, lvl = corridor
    env1 = Sokoban(env.height, env.width, 2, obs_mode="onehot")
    obs, s = env1.reset_to_level(lvl)
    chex.assert_shape(obs, (env.height, env.width, 7))
    grid = np.asarray(env.reset_to_level(lvl)[0])
    assert np.array_equal(np.asarray(obs).argmax(-1), grid)
    assert env1.observation_space().shape == (env.height, env.width, 7)


def test_vmapped_steps_equal_single_env_steps():
    from leafe_jax.envs.sokoban import generate_levels, get_preset

    p = get_preset("6x6_2box")
    env = p.make_env()
    params = env.default_params
    g = generate_levels(jax.random.key(4), 8, p.generator, chunk=256)
    actions = np.asarray(jax.random.randint(jax.random.key(5), (8, 20), 0, 4))
    _, s0 = jax.vmap(env.reset_to_level, in_axes=(0, None))(g.level, params)

    def scan(s, acts):
        def body(s, a):
            _, s, r, term, info = env.step_env(None, s, a, params)
            return s, (s, r, term, info)
        return jax.lax.scan(body, s, acts)[1]

    batched = jax.jit(jax.vmap(scan))(s0, jnp.asarray(actions))
    single_step = jax.jit(lambda s, a: env.step_env(None, s, a, params))
    for i in range(8):
        s = jax.tree.map(lambda x: x[i], s0)
        for t in range(20):
            _, s, r, term, info = single_step(s, jnp.int32(actions[i, t]))
            pick = lambda tree: jax.tree.map(lambda x: np.asarray(x)[i, t], tree)
            chex.assert_trees_all_equal(pick(batched[0]), jax.tree.map(np.asarray, s))
            assert float(pick(batched[1])) == float(r) and bool(pick(batched[2])) == bool(term)
            chex.assert_trees_all_equal(pick(batched[3]), jax.tree.map(np.asarray, info))


def test_batched_state_without_vmap_is_a_clear_error(corridor):
    env, lvl = corridor
    _, s = env.reset_to_level(lvl)
    sb = jax.tree.map(lambda x: jnp.stack([x, x]), s)
    with pytest.raises(ValueError, match=r"state.grid must have shape \(28,\).*jax.vmap"):
        env.step_env(None, sb, jnp.int32(0), env.default_params)
