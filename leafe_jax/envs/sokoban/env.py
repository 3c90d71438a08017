"""The Sokoban environment: gymnax API, gym-sokoban rules, diagnostic feedback.

Rules (identical to gym-sokoban, the engine RAGEN and verl-agent use): four actions
up/down/left/right push a box when one is ahead and the cell behind it is free, else
move; moving into a wall or an unpushable box changes nothing but costs a step. Reward
``step_penalty`` (-0.1) per step, +1 when a box goes onto a target, -1 when one comes off,
+10 when all boxes are on targets. ``terminated`` = solved, ``truncated`` = step limit.

Invalid action ids (outside 0..3) are a no-op that costs a step (like gym-sokoban's
action 0) and set ``info["invalid_action"]``; ``checked_step`` raises instead.

The state is flat (``grid[H*W]`` bit codes, player cell index) and holds everything
needed to restore a step exactly, so rollback is a gather of stored states.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from leafe_jax.envs.compat import struct
from leafe_jax.envs.compat import environment, spaces

from leafe_jax.envs.sokoban import constants as C
from leafe_jax.envs.sokoban.generator import generate_level
from leafe_jax.envs.sokoban.level import Level, LevelBank, push_distance

_OCC = C.BIT_WALL | C.BIT_BOX


@struct.dataclass
class EnvState(environment.EnvState):
    time: jax.Array                  # int32  steps taken in this episode
    grid: jax.Array                  # uint8[H*W]  bit codes (wall/target/box)
    box_dist: jax.Array              # uint8[H*W]  per-level push distances (DEAD = dead square)
    player: jax.Array                # int32  flat cell index
    boxes_on_target: jax.Array       # int32
    steps_since_progress: jax.Array  # int32  steps since a push brought a box closer to a target
    level_id: jax.Array              # int32  index in the level bank, -1 if not from a bank


@struct.dataclass
class EnvParams(environment.EnvParams):
    max_steps_in_episode: int = 120
    step_penalty: float = -0.1
    reward_box_on_target: float = 1.0
    penalty_box_off_target: float = -1.0
    reward_finished: float = 10.0
    bank: LevelBank | None = None    # levels for reset / auto-reset (else: the generator)


def _key_bits(key: jax.Array) -> jax.Array:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return key.reshape(-1).astype(jnp.uint32)


def cheap_index(key: jax.Array, n: int) -> jax.Array:
    """A uniform index in [0, n) from a key's bits with one integer hash (no threefry).

    Used by the auto-reset inside ``step``, which runs every step: threefry there costs
    more than the Sokoban step itself. Bias is below n / 2**32.
    """
    bits = _key_bits(key)
    x = bits[0] ^ (bits[-1] * jnp.uint32(0x9E3779B9))
    x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
    x = (x ^ (x >> 15)) * jnp.uint32(0x846CA68B)
    x = x ^ (x >> 16)
    return (x % jnp.uint32(n)).astype(jnp.int32)


class Sokoban(environment.Environment[EnvState, EnvParams]):
    """Pure-JAX Sokoban. Static config: grid size, number of boxes, observation mode."""

    def __init__(self, height: int = 10, width: int = 10, num_boxes: int = 4, *,
                 max_steps: int = 120, obs_mode: str = "grid", feedback: bool = True,
                 generator=None):
        if height < 3 or width < 3:
            raise ValueError(f"grid must be at least 3x3, got {height}x{width}")
        if num_boxes < 1:
            raise ValueError(f"num_boxes must be >= 1, got {num_boxes}")
        if obs_mode not in ("grid", "onehot"):
            raise ValueError(f"obs_mode must be 'grid' or 'onehot', got {obs_mode!r}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.height, self.width, self.num_boxes = height, width, num_boxes
        self.max_steps, self.obs_mode, self.feedback = max_steps, obs_mode, feedback
        self.generator = generator  # GeneratorConfig for resets without a level bank
        self._deltas = np.array([-width, width, -1, 1], np.int32)
        # Neighbour offsets of the pushed box's new cell, for the 2x2 frozen test:
        # four squares {x, x+a, x+b, x+a+b}, a in (-1, +1), b in (-W, +W).
        self._sq = np.array([[a, b, a + b] for a in (-1, 1) for b in (-width, width)], np.int32)

    # ------------------------------------------------------------------ params / spaces
    @property
    def default_params(self) -> EnvParams:
        return EnvParams(max_steps_in_episode=self.max_steps)

    @property
    def num_actions(self) -> int:
        return C.NUM_ACTIONS

    @property
    def name(self) -> str:
        return f"Sokoban-{self.height}x{self.width}-{self.num_boxes}box"

    def action_space(self, params: EnvParams | None = None) -> spaces.Discrete:
        return spaces.Discrete(C.NUM_ACTIONS)

    def observation_space(self, params: EnvParams | None = None) -> spaces.Box:
        if self.obs_mode == "onehot":
            return spaces.Box(0, 1, (self.height, self.width, C.NUM_CELL_CODES), jnp.uint8)
        return spaces.Box(0, C.NUM_CELL_CODES - 1, (self.height, self.width), jnp.uint8)

    def state_space(self, params: EnvParams | None = None) -> spaces.Dict:
        n = self.height * self.width
        return spaces.Dict({
            "time": spaces.Discrete(self.max_steps + 1),
            "grid": spaces.Box(0, 7, (n,), jnp.uint8),
            "player": spaces.Discrete(n),
        })

    # ------------------------------------------------------------------ observation
    def get_obs(self, state: EnvState, params=None, key=None) -> jax.Array:
        """H x W grid of observation codes (or one-hot channels, ``obs_mode='onehot'``)."""
        n = self.height * self.width
        obs = jnp.asarray(C.BITS_TO_OBS)[state.grid]
        on_target = (state.grid[state.player] & C.BIT_TARGET) != 0
        who = jnp.where(on_target, C.PLAYER_ON_TARGET, C.PLAYER).astype(jnp.uint8)
        obs = jnp.where(jnp.arange(n) == state.player, who, obs).reshape(self.height, self.width)
        if self.obs_mode == "onehot":
            return jax.nn.one_hot(obs, C.NUM_CELL_CODES, dtype=jnp.uint8)
        return obs

    def is_terminated(self, state: EnvState, params: EnvParams) -> jax.Array:
        return state.boxes_on_target >= self.num_boxes

    # ------------------------------------------------------------------ resets
    def _check_level(self, level: Level) -> None:
        n = self.height * self.width
        if tuple(jnp.shape(level.grid)) != (n,):
            raise ValueError(
                f"{self.name}: level grid must have shape ({n},) (flat {self.height}x{self.width});"
                f" got {tuple(jnp.shape(level.grid))}. For a batch of levels use jax.vmap.")
        if tuple(jnp.shape(level.player)) != ():
            raise ValueError(f"{self.name}: level player must be a scalar cell index, got "
                             f"shape {tuple(jnp.shape(level.player))}")

    def _state_from(self, grid, player, box_dist, level_id) -> EnvState:
        grid = jnp.asarray(grid, jnp.uint8)
        on = ((grid & (C.BIT_BOX | C.BIT_TARGET)) == (C.BIT_BOX | C.BIT_TARGET)).sum()
        return EnvState(time=jnp.int32(0), grid=grid, box_dist=jnp.asarray(box_dist, jnp.uint8),
                        player=jnp.asarray(player, jnp.int32), boxes_on_target=on.astype(jnp.int32),
                        steps_since_progress=jnp.int32(0), level_id=jnp.asarray(level_id, jnp.int32))

    def reset_to_level(self, level: Level, params: EnvParams | None = None):
        """Start an episode on a given level; returns ``(obs, state)``."""
        self._check_level(level)
        box_dist = push_distance(jnp.asarray(level.grid, jnp.uint8).reshape(self.height, self.width))
        state = self._state_from(level.grid, level.player, box_dist.reshape(-1), -1)
        return self.get_obs(state), state

    def reset_to_index(self, index, params: EnvParams):
        """Start an episode on level ``index`` of ``params.bank`` (a gather; no analysis)."""
        bank = self._bank(params)
        index = jnp.asarray(index, jnp.int32)
        state = self._state_from(bank.grid[index], bank.player[index], bank.box_dist[index], index)
        return self.get_obs(state), state

    def _bank(self, params: EnvParams) -> LevelBank:
        bank = params.bank
        if bank is None:
            raise ValueError(f"{self.name}: params.bank is None; build one with make_bank / "
                             "load_boxoban and pass params.replace(bank=...)")
        if bank.grid.shape[-1] != self.height * self.width:
            raise ValueError(f"{self.name}: level bank holds {bank.height}x{bank.width} levels")
        return bank

    def reset_env(self, key: jax.Array, params: EnvParams):
        if params.bank is not None:
            idx = jax.random.randint(key, (), 0, params.bank.grid.shape[0])
            return self.reset_to_index(idx, params)
        if self.generator is None:
            raise ValueError(f"{self.name}: reset needs params.bank or a generator config")
        return self.reset_to_level(generate_level(key, self.generator).level, params)

    # ------------------------------------------------------------------ step
    def step_env(self, key: jax.Array, state: EnvState, action, params: EnvParams):
        """One transition without auto-reset: ``(obs, state, reward, terminated, info)``."""
        action = self._check_action(action)
        n = self.height * self.width
        if state.grid.shape != (n,):
            raise ValueError(f"{self.name}: state.grid must have shape ({n},), got "
                             f"{state.grid.shape}; batch environments with jax.vmap(env.step)")
        valid = (action >= 0) & (action < C.NUM_ACTIONS)
        d = jnp.asarray(self._deltas)[jnp.clip(action, 0, C.NUM_ACTIONS - 1)]
        p = state.player
        n1 = p + d
        n2 = jnp.clip(p + 2 * d, 0, n - 1)
        g = state.grid
        if self.feedback:
            nbr = n2 + jnp.asarray(self._sq)                      # [4, 3]
            idx = jnp.concatenate([jnp.stack([n1, n2]), jnp.clip(nbr.reshape(-1), 0, n - 1)])
            cells = g[idx]
            c1, c2 = cells[0], cells[1]
        else:
            c1, c2 = g[n1], g[n2]
        box1 = (c1 & C.BIT_BOX) != 0
        push = valid & box1 & ((c2 & _OCC) == 0)
        move = valid & ((c1 & _OCC) == 0)
        moved = push | move
        new_p = jnp.where(moved, n1, p)
        box_bit = jnp.where(push, C.BIT_BOX, jnp.uint8(0))
        new_c1 = c1 & ~box_bit
        new_c2 = c2 | box_bit
        grid = g.at[jnp.stack([n1, n2])].set(jnp.stack([new_c1, new_c2]),
                                              mode="promise_in_bounds")
        t1 = (c1 & C.BIT_TARGET) != 0
        t2 = (c2 & C.BIT_TARGET) != 0
        delta_on = push.astype(jnp.int32) * (t2.astype(jnp.int32) - t1.astype(jnp.int32))
        bot = state.boxes_on_target + delta_on
        solved = bot >= self.num_boxes
        reward = (jnp.float32(params.step_penalty)
                  + jnp.where(delta_on > 0, params.reward_box_on_target, 0.0)
                  + jnp.where(delta_on < 0, params.penalty_box_off_target, 0.0)
                  + jnp.where(solved, params.reward_finished, 0.0)).astype(jnp.float32)
        info: dict[str, Any] = {}
        ssp = state.steps_since_progress
        if self.feedback:
            bd1, bd2 = state.box_dist[n1], state.box_dist[n2]
            progress = push & (bd2 < bd1)
            ssp = jnp.where(progress, 0, ssp + 1)
            # 2x2 frozen block around the pushed box (new grid: n1 now holds the player).
            nc = cells[2:].reshape(4, 3)
            nc = jnp.where(idx[2:].reshape(4, 3) == n1, new_c1, nc)
            occ = (nc & _OCC) != 0
            off = (nc & (C.BIT_BOX | C.BIT_TARGET)) == C.BIT_BOX
            box_off = ~t2
            frozen = push & jnp.any(occ.all(axis=1) & (off.any(axis=1) | box_off))
            dead = push & (bd2 == C.DEAD)
            info = {
                "moved": moved, "pushed": push, "bumped": valid & ~moved,
                "box_on_target": delta_on > 0, "box_off_target": delta_on < 0,
                "box_cell": jnp.where(push, n2, -1).astype(jnp.int32),
                "dead_square": dead, "frozen": frozen, "deadlock": dead | frozen,
                "progress": progress, "steps_since_progress": ssp, "solved": solved,
                "invalid_action": ~valid,
            }
        new_state = EnvState(time=state.time + 1, grid=grid, box_dist=state.box_dist, player=new_p,
                             boxes_on_target=bot, steps_since_progress=ssp,
                             level_id=state.level_id)
        return self.get_obs(new_state), new_state, reward, solved, info

    @partial(jax.jit, static_argnames=("self",))
    def step(self, key: jax.Array, state: EnvState, action, params: EnvParams | None = None):
        """gymnax six-value step with a cheap auto-reset.

        The base class splits a threefry key and runs a full reset every step; here a
        finished episode restarts on a bank level chosen by hashing the step key's bits
        (``cheap_index``), or from the generator when there is no bank. An env with
        neither returns the finished state as it is (rollouts use ``step_env`` anyway).
        """
        if params is None:
            params = self.default_params
        obs_st, state_st, reward, terminated, info = self.step_env(key, state, action, params)
        truncated = self.is_truncated(state_st, params)
        done = terminated | truncated
        if params.bank is not None:
            bank = self._bank(params)
            i = cheap_index(key, bank.grid.shape[0])
            state_re = self._state_from(bank.grid[i], bank.player[i], bank.box_dist[i], i)
        elif self.generator is not None:
            _, state_re = self.reset_env(key, params)
        else:  # nothing to reset to: the finished state is returned as it is
            state_re = state_st
        state = jax.tree.map(lambda r, s: jax.lax.select(done, r, s), state_re, state_st)
        info = {**info, "terminated": terminated, "truncated": truncated,
                "final_observation": obs_st}
        return self.get_obs(state), state, reward, terminated, truncated, info

    def checked_step(self, key, state: EnvState, action, params: EnvParams | None = None):
        """``step`` for debugging outside jit: raises on invalid actions or states."""
        a = np.asarray(action)
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"action must be an integer id 0..3, got dtype {a.dtype}")
        if np.any((a < 0) | (a >= C.NUM_ACTIONS)):
            raise ValueError(f"invalid action id {a.tolist()}: valid ids are 0..3 "
                             f"({', '.join(C.ACTION_NAMES)})")
        self.check_state(state)
        return self.step(key, state, action, params)

    def check_state(self, state: EnvState) -> None:
        """Host-side validation of a concrete state (one player, no box in a wall...)."""
        n = self.height * self.width
        grid = np.asarray(state.grid)
        if grid.shape[-1] != n:
            raise ValueError(f"{self.name}: state grid has {grid.shape[-1]} cells, expected {n}")
        if np.any(((grid & C.BIT_WALL) != 0) & ((grid >> 1) != 0)):
            raise ValueError(f"{self.name}: a wall cell also holds a target or a box")
        boxes = ((grid & C.BIT_BOX) != 0).sum(-1)
        if np.any(boxes != self.num_boxes):
            raise ValueError(f"{self.name}: state holds {boxes.tolist()} boxes, expected {self.num_boxes}")

    def _check_action(self, action) -> jax.Array:
        action = jnp.asarray(action)
        if action.shape != ():
            raise ValueError(f"{self.name}: action must be a scalar (got shape {action.shape}); "
                             "batch environments with jax.vmap(env.step)")
        if not jnp.issubdtype(action.dtype, jnp.integer):
            raise TypeError(f"{self.name}: action must be an integer id 0..3, got {action.dtype}")
        return action.astype(jnp.int32)
