"""The symbolic Sokoban agent: the first implementation of ``interfaces.protocol``.

Grid cells, feedback, actions and experiences are tokens of a small vocabulary
(``encoding``), so a from-scratch policy and the whole rollout stay on device: roots and
branches are one batched jitted rollout per call (rows padded to a power-of-two bucket so
one compilation serves a whole search), rollback is a gather of the stored env state, and
the context up to tau is re-prefilled with the experience (``episode.branch_inputs``).
Tasks are a batched ``Level``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leafe_jax.data.loader import round_up
from leafe_jax.envs.sokoban.constants import ACTION_LETTERS
from leafe_jax.envs.sokoban.env import EnvState, Sokoban
from leafe_jax.envs.sokoban.level import Level, level_to_ascii
from leafe_jax.interfaces.chunks import resumable, run_tag
from leafe_jax.interfaces.protocol import FEEDBACK_REFLECTOR, Rollouts
from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.interfaces.symbolic.episode import (Episode, branch_inputs, from_trajectory,
                                                   stitch, strip_experience, truncate)
from leafe_jax.interfaces.symbolic.reflect import OracleReflector, feedback_reflect, periodic_stop
from leafe_jax.interfaces.symbolic.rollout import INFO_KEYS, cache_size_for, rollout
from leafe_jax.interfaces.symbolic.self_reflect import SelfReflector

ORACLE_REFLECTOR = "oracle"
SELF_REFLECTOR = "self"          # the policy itself (self_reflect.SelfReflector)


def _bucket(n: int) -> int:
    return max(8, 1 << math.ceil(math.log2(max(n, 1))))


def _pad_rows(x, rows):
    return jnp.concatenate([x, jnp.repeat(x[:1], rows - x.shape[0], 0)]) if rows > x.shape[0] else x


def _pad(x: np.ndarray, rows: int) -> np.ndarray:
    return np.concatenate([x, np.zeros((rows - len(x),) + x.shape[1:], x.dtype)])


def context_size(env: Sokoban, max_depth: int, num_steps: int) -> int:
    """Context slots the deepest rollback branch needs: BOS, one experience per depth, the
    revised action's experience and every turn."""
    return cache_size_for(env, 1 + (max_depth + 1) * E.EXP_LEN, num_steps)


@dataclasses.dataclass
class SymbolicSession:
    """A policy bound to B levels for one search (see ``protocol.Session``)."""
    model: object
    env: Sokoban
    params: object
    levels: Level
    max_depth: int
    temperature: float
    experience_shape: tuple = (E.EXP_LEN,)
    num_actions: int = 4
    restores_by_snapshot: bool = True      # a branch gathers the stored env state

    def __post_init__(self):
        self.num_tasks = int(np.shape(self.levels.player)[0])
        self.T = int(self.params.max_steps_in_episode)
        self.cells = (self.env.height - 2) * (self.env.width - 2)
        self.S = context_size(self.env, self.max_depth, self.T)
        _, self.s0 = jax.vmap(lambda lv: self.env.reset_to_level(lv, self.params))(self.levels)

    def _out(self, eps, traj, R) -> Rollouts:
        eps = jax.tree.map(lambda x: x[:R], eps)
        return Rollouts(eps, np.asarray(traj.num_steps)[:R], np.asarray(traj.token_len)[:R])

    def roots(self, task, keys, start_experience=None) -> Rollouts:
        R = len(task)
        rows = _bucket(R)
        idx = np.concatenate([task, np.full(rows - R, task[0])])
        states = jax.tree.map(lambda x: x[idx], self.s0)
        if start_experience is None:
            prefix = np.full((rows, 1), E.BOS, np.int32)
            plen = np.ones(rows, np.int32)
        else:
            se = _pad(np.asarray(start_experience, np.int32), rows)
            prefix = np.concatenate([np.full((rows, 1), E.BOS, np.int32), se], 1)
            plen = np.where(se[:, 0] == E.EXP, 1 + E.EXP_LEN, 1).astype(np.int32)
        traj = rollout(self.model, self.env, self.params, states, _pad_rows(jnp.asarray(keys), rows),
                       num_steps=self.T, prefix=prefix, prefix_len=plen,
                       temperature=self.temperature, cache_size=self.S)
        return self._out(from_trajectory(traj, self.S), traj, R)

    def branches(self, parents, tau, experience, forbidden, keys, *, use_experience: bool,
                 use_mask: bool) -> Rollouts:
        R = len(tau)
        rows = _bucket(R)
        pe = jax.tree.map(lambda x: _pad_rows(x, rows), parents)
        tau_p = jnp.asarray(_pad(np.asarray(tau, np.int32), rows))
        states, prefix, plen, fb = branch_inputs(pe, tau_p, self.cells)
        longest = int(jnp.max(plen))
        P = min(round_up(longest, 64), self.S - E.turn_length(self.env.height, self.env.width) - E.EXP_LEN)
        assert longest <= P, (longest, P, self.S)
        traj = rollout(self.model, self.env, self.params, states, _pad_rows(jnp.asarray(keys), rows),
                       num_steps=self.T, prefix=prefix[:, :P], prefix_len=plen, first_feedback=fb,
                       experience=_pad(np.asarray(experience, np.int32), rows) if use_experience else None,
                       forbidden=_pad(np.asarray(forbidden, bool), rows) if use_mask else None,
                       temperature=self.temperature, cache_size=self.S)
        return self._out(stitch(pe, traj, tau_p), traj, R)

    def interrupt(self, out: Rollouts, every: int) -> Rollouts:
        """The rollouts as if a reflection every ``every`` steps had stopped each one that is
        already lost (``reflect.periodic_stop``): cut there, the steps and tokens after the
        stop not spent."""
        ep = out.episodes
        at = periodic_stop(ep, every)
        cut = truncate(ep, at)
        saved = np.asarray(ep.num_steps - cut.num_steps)
        return Rollouts(cut, np.asarray(out.env_steps) - saved,
                        np.asarray(out.tokens) - np.asarray(ep.token_len - cut.token_len))

    def reflector(self, name: str, *, num_candidates: int, every: int):
        if name == FEEDBACK_REFLECTOR:
            return lambda ep: feedback_reflect(ep, width=self.env.width, num_candidates=num_candidates,
                                               every=every)
        if name == ORACLE_REFLECTOR:
            return OracleReflector(self.env.height, self.env.width, num_candidates=num_candidates)
        if name == SELF_REFLECTOR:
            return SelfReflector(self.model, self.env.height, self.env.width,
                                 num_candidates=num_candidates, temperature=self.temperature)
        raise ValueError(f"unknown reflector {name!r}; the symbolic interface has "
                         f"{[FEEDBACK_REFLECTOR, ORACLE_REFLECTOR, SELF_REFLECTOR]}")


@functools.partial(nnx.jit, static_argnames=("temperature",))
def _action_probs(policy, tokens_BxL, pos_B, temperature: float):
    logits = policy(tokens_BxL)[0]
    at = jnp.take_along_axis(logits, (pos_B - 1)[:, None, None], 1)[:, 0]
    return jax.nn.softmax(at[:, jnp.asarray(E.ACTION_TOKENS)] / temperature, -1)


@dataclasses.dataclass(frozen=True)
class SymbolicSokoban:
    """The symbolic Sokoban agent interface for one env (preset) and its params."""
    env: Sokoban
    params: object = None

    def __post_init__(self):
        if self.params is None:
            object.__setattr__(self, "params", self.env.default_params)

    def session(self, policy, tasks: Level, *, max_depth: int, temperature: float) -> SymbolicSession:
        return SymbolicSession(policy, self.env, self.params, tasks, max_depth, temperature)

    def action(self, episode, t: int) -> int:
        return int(episode.actions[t])

    @property
    def max_steps(self) -> int:
        return int(self.params.max_steps_in_episode)

    def distance_to_go(self, episodes, t) -> np.ndarray:
        """int [R]: optimal moves left from episode r's state before step ``t[r]`` (exact
        solver, cached per state; -1 unsolvable, 10**6 past the solver's node limit)."""
        oracle = OracleReflector(self.env.height, self.env.width)
        ep = jax.tree.map(np.asarray, episodes)
        rows, t = np.arange(len(t)), np.asarray(t)
        d = [oracle.distance(g, p) for g, p in zip(ep.states.grid[rows, t], ep.states.player[rows, t])]
        return np.array([-1 if x is None else x for x in d], np.int64)

    def action_distribution(self, policy, episodes, t, temperature: float = 1.0,
                            chunk: int = 8) -> np.ndarray:
        """float [R, A]: the policy's distribution over the actions at step ``t[r]`` of
        episode ``r``, given that episode's own context before the action (its experiences
        included), as the rollout samples it (action tokens only, at ``temperature``).
        A full forward per context (its attention scores are chunk x heads x L^2): rows are
        taken shortest first in small chunks, each cut to its longest context."""
        ep = jax.tree.map(np.asarray, episodes)
        t = np.asarray(t)
        pos = ep.action_pos[np.arange(len(t)), t]                    # the action token's slot
        order = np.argsort(pos, kind="stable")
        out = np.zeros((len(t), len(E.ACTION_TOKENS)), np.float32)
        for i in range(0, len(t), chunk):
            rows = order[i: i + chunk]
            L = round_up(int(pos[rows].max()), 64)
            toks = np.zeros((chunk, L), np.int32)
            src = ep.tokens[rows, :L]
            toks[: len(rows), : src.shape[1]] = src
            p = np.ones(chunk, np.int32)
            p[: len(rows)] = pos[rows]
            out[rows] = np.asarray(_action_probs(policy, jnp.asarray(toks), jnp.asarray(p),
                                                 temperature))[: len(rows)]
        return out

    def sft_example(self, episode, first: int, last: int):
        """Context without experience through action ``last``; loss on actions first..last."""
        L, n_act = int(episode.token_len), int(episode.num_steps)
        kept, idx = strip_experience(episode.tokens, L)
        pos = np.searchsorted(idx, episode.action_pos[:n_act])         # action t in ``kept``
        if not np.array_equal(idx[pos], episode.action_pos[:n_act]):
            raise AssertionError("an action token sits inside an experience segment")
        mask = np.zeros(pos[last] + 1, bool)
        mask[pos[first: last + 1]] = True
        tokens = kept[: pos[last] + 1]
        assert not (tokens == E.EXP).any()
        return tokens, mask

    def success(self, policy, tasks: Level, n: int, key, *, temperature: float = 1.0,
                progress: bool = True, batch_size: int = 128,
                checkpoint: str | None = None) -> np.ndarray:
        """``success[B, n]`` of ``n`` sampled episodes per level, in fixed-size chunks (the
        last one padded, so one compilation serves all). The default chunk of 128 episodes
        is the fastest per episode on a 2-core CPU: at 1024 the attention scores of a turn
        (~255 MB per layer) no longer fit in cache (measured 2.2x slower per token).
        ``checkpoint``: a file that keeps the finished chunks (written after each), so a
        killed evaluation resumes where it stopped with the same result; it is used only
        for the same levels, n, key, temperature and chunk size."""
        env, params = self.env, self.params
        B = int(np.shape(tasks.player)[0])
        if B == 0:
            raise ValueError("empty level set: nothing to evaluate")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        total = B * n
        batch = min(batch_size, total)
        level_idx = np.repeat(np.arange(B), n)
        episode_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(total))
        reset = jax.jit(jax.vmap(env.reset_to_level, in_axes=(0, None)))
        def chunk(idx):
            lv = jax.tree.map(lambda x: jnp.asarray(x)[level_idx[idx]], tasks)
            _, states = reset(lv, params)
            return rollout(policy, env, params, states, episode_keys[idx],
                           num_steps=int(params.max_steps_in_episode), temperature=temperature).solved
        out = resumable(total, batch, run_tag(tasks, n, key, temperature, batch), checkpoint, chunk,
                        desc="pass@k rollouts", progress=progress, pad=True)
        return out.reshape(B, n)

    def episode_like(self) -> Episode:
        z = 0
        return Episode(states=EnvState(**{f.name: z for f in dataclasses.fields(EnvState)}),
                       info={k: z for k in INFO_KEYS},
                       **{f: z for f in Episode._fields if f not in ("states", "info")})

    def describe_task(self, episodes, task: int) -> str:
        grid = np.asarray(episodes.states.grid[task, 0, 0])
        player = int(episodes.states.player[task, 0, 0])
        return level_to_ascii(Level(grid=grid, player=np.int32(player)), self.env.height, self.env.width)

    def describe_rollout(self, episode) -> str:
        acts = np.asarray(episode.actions)
        start, steps = int(episode.start), int(episode.num_steps)
        return "".join(ACTION_LETTERS[a] for a in acts[start:steps] if a >= 0)

    def describe_experience(self, experience) -> str:
        return E.describe(experience)
