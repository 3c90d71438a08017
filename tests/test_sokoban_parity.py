"""Parity with gym-sokoban (the engine RAGEN and verl-agent use), step by step.

gym-sokoban is constructed directly (``gym.make`` fails on NumPy 2) and its room arrays
are set by hand; its actions 1..4 (push-or-move) are our 0..3.
"""

import warnings

import jax
import numpy as np
import pytest

from leafe_jax.envs.sokoban import Level, Sokoban, generate_levels, get_preset, read_boxoban
from leafe_jax.envs.sokoban.replay import replay

warnings.filterwarnings("ignore", message=".*Gym has been unmaintained.*")
# A hard import: the reference is in the test extra, and a skipped parity test proves nothing.
import gym_sokoban.envs.sokoban_env as gym_sokoban  # noqa: E402


def gym_env_for(level: Level, H, W, num_boxes, max_steps):
    obs = np.asarray(Sokoban(H, W, num_boxes).reset_to_level(level)[0])
    env = gym_sokoban.SokobanEnv(dim_room=(H, W), max_steps=max_steps, num_boxes=num_boxes,
                                 reset=False)
    fixed = np.where(np.isin(obs, (2, 3, 6)), 2, np.where(obs == 0, 0, 1))
    state = obs.copy()
    state[state == 6] = 5                     # gym-sokoban writes 5 for a player on a target
    env.room_fixed, env.room_state = fixed, state
    env.player_position = np.argwhere(state == 5)[0]
    env.num_env_steps = 0
    env.boxes_on_target = int((obs == 3).sum())
    return env


def compare(level, H, W, nb, actions, ours_env):
    gym = gym_env_for(level, H, W, nb, max_steps=len(actions))
    rep = replay(ours_env, level, np.asarray(actions, np.int32))
    obs = np.asarray(rep.obs)
    for t, a in enumerate(actions):
        _, r, done, _ = gym.step(int(a) + 1, observation_mode="tiny_rgb_array")
        ours = obs[t + 1].copy()
        ours[ours == 6] = 5
        assert np.array_equal(ours, gym.room_state), f"grid differs at step {t}"
        assert float(rep.rewards[t]) == pytest.approx(r, abs=1e-5), f"reward differs at step {t}"
        truncated = t + 1 >= len(actions)
        assert bool(rep.solved[t]) or truncated == done, f"done differs at step {t}"
        assert done == (bool(rep.solved[t]) or truncated)
        if done:
            return t + 1
    return len(actions)


def biased_actions(rng, n):
    """Random actions with runs of the same direction, so pushes and solves happen."""
    out, a = [], 0
    for _ in range(n):
        if rng.random() < 0.4:
            a = int(rng.integers(4))
        out.append(a)
    return out


def test_parity_on_generated_levels():
    preset = get_preset("6x6_2box")
    g = generate_levels(jax.random.key(11), 24, preset.generator, chunk=256)
    env = Sokoban(6, 6, 2, max_steps=60)
    rng = np.random.default_rng(0)
    pushes = 0
    for i in range(24):
        lvl = jax.tree.map(lambda x: np.asarray(x[i]), g.level)
        compare(lvl, 6, 6, 2, biased_actions(rng, 60), env)
        # also the returned solution: gym-sokoban must agree that it solves the level
        sol = np.asarray(g.solution[i])[: int(g.solution_len[i])]
        gym = gym_env_for(lvl, 6, 6, 2, max_steps=100)
        for a in sol:
            _, r, done, info = gym.step(int(a) + 1, observation_mode="tiny_rgb_array")
            pushes += info["action.moved_box"]
        assert done and gym._check_if_all_boxes_on_target()
    assert pushes > 24


def test_parity_on_boxoban_levels(boxoban_path):
    _, levels, H, W = read_boxoban(str(boxoban_path / "unfiltered/train/001.txt"))
    env = Sokoban(H, W, 4, max_steps=80)
    rng = np.random.default_rng(1)
    for i in range(0, 1000, 50):
        lvl = Level(grid=levels.grid[i], player=levels.player[i])
        compare(lvl, H, W, 4, biased_actions(rng, 80), env)
