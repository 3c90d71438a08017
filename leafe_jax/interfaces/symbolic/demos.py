"""Behaviour-cloning data: demonstrations, with experience-conditioned variants.

Demonstrations are the generator's solutions (the reversed pulls and walks) of a demo
level pool. At every demo state the other three actions are tried in the env and
classified from its own feedback:

* DEADLOCK - the push lands a box on a dead square or freezes it;
* BUMP - nothing moves;
* NO_PROGRESS - a push that does not bring its box closer to a target;
* LOOP - the move undoes the previous step (back to the state before it).

An experience-conditioned example names one such bad action at its state (``EXP reason
action ROW COL EXP_END`` with the player's cell) - right before the demo action
(rollback placement) or after BOS (iterative-refinement placement) - and keeps the demo
action as the target, so the policy learns to heed an experience the way an
instruction-tuned LLM follows a hint.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.envs.sokoban.env import Sokoban
from leafe_jax.envs.sokoban.generator import GeneratedLevel
from leafe_jax.envs.sokoban.replay import replay

REASONS = (E.R_DEADLOCK, E.R_BUMP, E.R_NO_PROGRESS, E.R_LOOP)


@dataclasses.dataclass
class Demos:
    obs: np.ndarray        # uint8 [B, T+1, H, W]
    actions: np.ndarray    # int32 [B, T]  (-1 after the end)
    feedback: np.ndarray   # int32 [B, T]  token shown before action t
    lengths: np.ndarray    # int32 [B]
    bad: np.ndarray        # int32 [B, T, 4]  reason token of each alternative, 0 = not bad
    player: np.ndarray     # int32 [B, T]  player cell before action t


def classify_alternatives(env: Sokoban, params, states, prev_states, actions_T):
    """Reason token (or 0) for each of the 4 actions at each state: int32 [T, 4]."""

    def one(s, prev, demo_a, t):
        def alt(a):
            _, s2, _, _, info = env.step_env(None, s, a, params)
            same_as_prev = (s2.player == prev.player) & jnp.all(s2.grid == prev.grid) & (t > 0)
            reason = jnp.where(info["deadlock"], E.R_DEADLOCK,
                     jnp.where(info["bumped"], E.R_BUMP,
                     jnp.where(info["pushed"] & ~info["progress"], E.R_NO_PROGRESS,
                     jnp.where(same_as_prev, E.R_LOOP, 0))))
            return jnp.where(a == demo_a, 0, reason)
        return jax.vmap(alt)(jnp.arange(4))

    T = actions_T.shape[0]
    return jax.vmap(one)(states, prev_states, actions_T, jnp.arange(T))


def build_demos(env: Sokoban, params, gen: GeneratedLevel) -> Demos:
    """Replay each generated level's solution and classify the alternatives at each step."""

    @jax.jit
    def per_level(level, sol):
        rep = replay(env, level, sol, params)
        states = jax.tree.map(lambda x: x[:-1], rep.states)
        prev = jax.tree.map(lambda x: jnp.concatenate([x[:1], x[:-2]]), rep.states)
        fb = jnp.concatenate([jnp.array([E.FB_START]), jax.vmap(E.feedback_token)(rep.info)[:-1]])
        bad = classify_alternatives(env, params, states, prev, jnp.maximum(sol, 0))
        return rep.obs, fb, bad, states.player

    obs, fb, bad, player = jax.vmap(per_level)(gen.level, gen.solution)
    return Demos(obs=np.asarray(obs), actions=np.asarray(gen.solution), feedback=np.asarray(fb),
                 lengths=np.asarray(gen.solution_len), bad=np.asarray(bad), player=np.asarray(player))


def bc_examples(demos: Demos, width: int, rng: np.random.Generator, *, exp_per_episode: int = 2,
                start_share: float = 0.5):
    """``[(tokens, loss_mask, source)]``: each demo once plain, plus up to
    ``exp_per_episode`` experience-conditioned copies (source "demo" / "demo+exp")."""
    out = []
    for i in range(len(demos.lengths)):
        n = int(demos.lengths[i])
        obs, acts, fb = demos.obs[i, : n + 1], demos.actions[i, :n], demos.feedback[i, :n]
        toks, mask = E.encode_episode(obs, acts, fb)
        out.append((toks, mask, "demo"))
        cand = np.argwhere(demos.bad[i, :n] > 0)                     # (t, action) pairs
        if len(cand) == 0:
            continue
        for t, a in cand[rng.choice(len(cand), min(exp_per_episode, len(cand)), replace=False)]:
            r, c = divmod(int(demos.player[i, t]), width)
            exp = np.asarray(E.experience_tokens(int(demos.bad[i, t, a]), int(a), r, c))
            if rng.random() < start_share:
                toks, mask = E.encode_episode(obs, acts, fb, start_experience=exp)
            else:
                toks, mask = E.encode_episode(obs, acts, fb, experience_at=int(t), experience=exp)
            out.append((toks, mask, "demo+exp"))
    return out
