"""Symbolic interaction encoding: vocabulary, turn layout, experience segments, loss masks.

Context of an episode (DESIGN §5)::

    BOS [EXP ...]?  | cells(o_0) fb_0 [EXP ...]? a_0 | cells(o_1) fb_1 a_1 | ...

* ``cells(o_t)``: the grid without its always-wall border, row-major, one token per cell
  (16 tokens on 6x6). The layout of a turn is fixed, so a cell's row and column follow
  from its relative position (RoPE) - no extra embedding is needed.
* ``fb_t``: one feedback token summarising what the last action did (``FB_START`` on the
  first turn).
* ``a_t``: one action token; the only tokens with loss (``loss_mask``).
* Experience segment, fixed size ``EXP_LEN``: ``EXP reason action ROW_r COL_c EXP_END`` -
  "taking *action* with the player at (r, c) led to *reason*". It sits either right before
  the action it concerns (rollback: the revised action at tau) or right after BOS (iterative
  refinement: a later state to avoid). Reasons cover everything the Sokoban reflector can
  say: DEADLOCK (dead square or frozen box), BUMP, NO_PROGRESS, LOOP.

Self-reflection (``interfaces.symbolic.self_reflect``): after an episode's context, ``REFLECT``
asks the policy for one experience segment about it - the step it names is the step where
the player stood at (r, c) and took *action*.

A turn is ``(H-2)(W-2) + 2`` tokens: 18 on 6x6, 27 on 7x7.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.envs.sokoban.constants import ACTION_LETTERS, RAGEN_SYMBOLS

PAD, BOS, EOS = 0, 1, 2
CELL0 = 3                                   # + observation code 0..6
FB0 = 10
FEEDBACK_NAMES = ("start", "moved", "pushed", "bump", "box_on_target", "box_off_target",
                  "deadlock", "invalid")
FB_START, FB_MOVED, FB_PUSHED, FB_BUMP, FB_BOX_ON, FB_BOX_OFF, FB_DEADLOCK, FB_INVALID = \
    range(FB0, FB0 + len(FEEDBACK_NAMES))
ACT0 = 18                                   # + action 0..3 (up, down, left, right)
ACTION_TOKENS = tuple(range(ACT0, ACT0 + 4))
EXP, EXP_END = 22, 23
REASON_NAMES = ("deadlock", "bump", "no_progress", "loop")
R_DEADLOCK, R_BUMP, R_NO_PROGRESS, R_LOOP = range(24, 28)
ROW0, COL0, MAX_SIDE = 28, 44, 16
REFLECT = 60                                # "now reflect on this episode" (self-reflection)
VOCAB_SIZE = 61
EXP_LEN = 6


def turn_length(height: int, width: int) -> int:
    return (height - 2) * (width - 2) + 2


def obs_tokens(obs_HxW: jax.Array) -> jax.Array:
    """Interior cells of an observation grid -> int32 tokens [(H-2)(W-2)]."""
    return (obs_HxW[1:-1, 1:-1].reshape(-1).astype(jnp.int32) + CELL0)


def feedback_token(info: dict) -> jax.Array:
    """The env's feedback dict -> one token (most informative event wins)."""
    tok = jnp.int32(FB_BUMP)
    for key, t in (("moved", FB_MOVED), ("pushed", FB_PUSHED), ("box_off_target", FB_BOX_OFF),
                   ("box_on_target", FB_BOX_ON), ("deadlock", FB_DEADLOCK),
                   ("invalid_action", FB_INVALID)):
        tok = jnp.where(info[key], t, tok)
    return tok


def action_token(action) -> jax.Array:
    return jnp.asarray(action, jnp.int32) + ACT0


def token_action(token) -> jax.Array:
    """Action token -> action id 0..3 (-1 for any other token)."""
    t = jnp.asarray(token, jnp.int32)
    return jnp.where((t >= ACT0) & (t < ACT0 + 4), t - ACT0, -1)


def experience_tokens(reason_token, action, row, col) -> jax.Array:
    """``EXP reason action ROW_r COL_c EXP_END`` (int32 [EXP_LEN])."""
    return jnp.stack([jnp.int32(EXP), jnp.asarray(reason_token, jnp.int32), action_token(action),
                      ROW0 + jnp.asarray(row, jnp.int32), COL0 + jnp.asarray(col, jnp.int32),
                      jnp.int32(EXP_END)])


def encode_episode(obs_T1xHxW, actions_T, feedback_T, *, start_experience=None,
                   experience_at: int | None = None, experience=None):
    """Host-side encoding of a finished episode -> ``(tokens, loss_mask)`` numpy int32/bool.

    ``obs[t]`` is the observation before action t (T+1 of them; the last is not encoded
    since no action follows it), ``feedback[t]`` the token *before* action t (FB_START at
    t = 0). An experience may go after BOS (``start_experience``) and/or right before
    action ``experience_at`` (``experience``). The loss mask marks action tokens only.
    """
    obs = np.asarray(obs_T1xHxW)
    actions = np.asarray(actions_T)
    fb = np.asarray(feedback_T)
    T = len(actions)
    if obs.shape[0] != T + 1 or fb.shape[0] != T:
        raise ValueError(f"need T+1 observations and T feedback tokens for T={T} actions; got "
                         f"{obs.shape[0]} and {fb.shape[0]}")
    toks, mask = [BOS], [False]
    if start_experience is not None:
        toks += list(np.asarray(start_experience))
        mask += [False] * EXP_LEN
    for t in range(T):
        cells = list(np.asarray(obs[t][1:-1, 1:-1]).reshape(-1) + CELL0)
        toks += cells + [int(fb[t])]
        mask += [False] * (len(cells) + 1)
        if experience_at == t and experience is not None:
            toks += list(np.asarray(experience))
            mask += [False] * EXP_LEN
        toks.append(int(actions[t]) + ACT0)
        mask.append(True)
    return np.array(toks, np.int32), np.array(mask, bool)


def describe(tokens) -> str:
    """Tokens -> readable text (for docs, tests and debugging)."""
    out = []
    for t in np.asarray(tokens).tolist():
        if t == PAD:
            out.append(".")
        elif t == BOS:
            out.append("<bos>")
        elif CELL0 <= t < FB0:
            out.append(RAGEN_SYMBOLS[t - CELL0])
        elif FB0 <= t < ACT0:
            out.append(f"<{FEEDBACK_NAMES[t - FB0]}>")
        elif ACT0 <= t < ACT0 + 4:
            out.append(f"[{ACTION_LETTERS[t - ACT0]}]")
        elif t == EXP:
            out.append("<exp")
        elif t == EXP_END:
            out.append(">")
        elif R_DEADLOCK <= t <= R_LOOP:
            out.append(REASON_NAMES[t - R_DEADLOCK])
        elif ROW0 <= t < COL0:
            out.append(f"r{t - ROW0}")
        elif COL0 <= t < COL0 + MAX_SIDE:
            out.append(f"c{t - COL0}")
        elif t == REFLECT:
            out.append("<reflect>")
        else:
            out.append(f"?{t}")
    return " ".join(out)
