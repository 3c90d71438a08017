"""One episode of a policy on one level, as text (and frames for a GIF)."""

from __future__ import annotations

import jax
import numpy as np

from leafe_jax.envs.sokoban import render_text
from leafe_jax.envs.sokoban.constants import ACTION_LETTERS
from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.interfaces.symbolic.rollout import rollout


def play_episode(model, env, level, key, *, temperature: float = 1.0, tokens: bool = False):
    """``(text, frames [n+1, H, W])`` of one sampled episode from ``level`` (unbatched)."""
    params = env.default_params
    lvl = jax.tree.map(lambda x: np.asarray(x)[None], level)
    _, start = jax.vmap(env.reset_to_level, in_axes=(0, None))(lvl, params)
    traj = rollout(model, env, params, start, key[None], num_steps=int(params.max_steps_in_episode),
                   temperature=temperature)
    n = int(traj.num_steps[0])
    frames = np.asarray(jax.vmap(env.get_obs)(jax.tree.map(lambda x: x[: n + 1, 0], traj.states)))
    lines = [render_text(frames[0])]
    for t in range(n):
        a = int(traj.actions[t, 0])
        lines += [f"\nstep {t + 1}: {ACTION_LETTERS[a]}  "
                  f"{E.FEEDBACK_NAMES[int(traj.feedback[t, 0]) - E.FB0]}  "
                  f"p={float(np.exp(traj.logprobs[t, 0])):.2f}", render_text(frames[t + 1])]
    lines.append(f"\n{'SOLVED' if bool(traj.solved[0]) else 'not solved'} in {n} steps")
    if tokens:
        lines.append(E.describe(traj.tokens[0, : int(traj.token_len[0])]))
    return "\n".join(lines), frames
