"""The text agent's episode record, its chat-format token ids, and cutting.

``TextEpisode`` (host numpy, leading row axis) is what ``agent.TextSession`` records per
turn; ``ChatFormat`` makes prompt ids (a shared prefix tokenized once + each turn's own
ids); ``truncate`` cuts episodes (periodic reflection); ``masked_logprobs`` scores
teacher-forced answers (exact compliance, GRPO's log-probs).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leafe_jax.envs.sokoban import constants as C
from leafe_jax.envs.sokoban.env import EnvState
from leafe_jax.interfaces.symbolic.rollout import INFO_KEYS
from leafe_jax.interfaces.text import format as F
from leafe_jax.policy.model import init_cache
from leafe_jax.policy.text import turn_end_tokens

STEP_INFO = INFO_KEYS + ("solved",)


class TextEpisode(NamedTuple):
    states: EnvState        # [..., T+1]  state before action t (frozen after the end)
    actions: np.ndarray     # int32 [..., T]  0..3, INVALID for an unparsable answer, -1 after the end
    valid: np.ndarray       # bool [..., T]  the answer parsed to an admissible action
    info: dict              # bool [..., T]  the env's diagnostic flags (``STEP_INFO``)
    active: np.ndarray      # bool [..., T]
    prompt: np.ndarray      # int32 [..., T, P]  the turn's prompt after the shared prefix
    prompt_len: np.ndarray  # int32 [..., T]
    response: np.ndarray    # int32 [..., T, N]  generated ids, cut past the first </action>
    response_len: np.ndarray  # int32 [..., T]
    logprob: np.ndarray     # float32 [..., T, N]
    experience: np.ndarray  # int32 [..., D+1, X]  token ids + 1 (0 = empty)
    exp_from: np.ndarray    # int32 [..., D+1]  first step that shows it (-1: empty slot)
    solved: np.ndarray      # bool [...]
    num_steps: np.ndarray   # int32 [...]
    start: np.ndarray       # int32 [...]  first step this rollout sampled itself
    task: np.ndarray        # int32 [...]  the task's index in the session


def _obs(grid, player, height: int, width: int) -> np.ndarray:
    """Observation codes (host) of a flat bit-code grid and the player's cell."""
    obs = C.BITS_TO_OBS[np.asarray(grid, np.int64)].copy()
    on = (int(grid[player]) & int(C.BIT_TARGET)) != 0
    obs[int(player)] = C.PLAYER_ON_TARGET if on else C.PLAYER
    return obs.reshape(height, width)


class ChatFormat:
    """Token ids of the prompts: the chat template around ``INSTRUCTION + turn text``,
    split into a shared prefix (template head + instruction, tokenized once) and each
    turn's own ids (its text + the template tail, tokenized per turn)."""

    def __init__(self, tok, instruction: str = F.INSTRUCTION):
        mark = "\x00"
        text = tok.render([{"role": "user", "content": instruction + mark}], add_generation_prompt=True)
        head, tail = text.split(mark)
        self.tok, self.tail = tok, tail
        self.prefix_ids = tok.encode(head)
        self.end_ids = list(turn_end_tokens(tok))

    def ids(self, turn_text: str) -> list[int]:
        return self.tok.encode(turn_text + self.tail)

    def experience_ids(self, text: str, slots: int) -> tuple[np.ndarray, bool]:
        """``(ids + 1 padded to slots, truncated?)``."""
        ids = self.tok.encode(text)
        out = np.zeros(slots, np.int32)
        out[: min(len(ids), slots)] = np.asarray(ids[:slots], np.int32) + 1
        return out, len(ids) > slots

    def experience_text(self, exp) -> str:
        ids = [int(i) - 1 for i in np.asarray(exp) if i > 0]
        return self.tok.decode(ids)


def cut_response(tok, ids: np.ndarray) -> int:
    """How many generated tokens to keep: up to the token that completes the first
    ``</action>`` (all of them when there is none)."""
    text = ""
    for i, t in enumerate(ids.tolist()):
        text += tok.decode([t])
        if "</action>" in text.lower():
            return i + 1
    return len(ids)


def masked_logprobs(model, tokens_BxL, mask_BxL, targets: int, temperature=1.0, prefix=None):
    """``(logp [B, K], valid [B, K], entropy [B, K])`` of the masked tokens of each row (at
    most ``targets`` = K of them, in order) at ``temperature``, teacher-forced, with logits
    computed only there (``Transformer(logits_at=...)``): a response's few tokens after a
    long prompt never hold the vocabulary for every prompt position.

    ``prefix`` (int32 [P], optional): tokens every row starts with, left out of
    ``tokens_BxL``. Their keys and values are computed once, for one row, and broadcast to
    the B rows, which then run only their own tokens: the log-probs (and their gradients)
    of the rows with the prefix prepended, for ~(P + L) / L times fewer FLOPs when the
    prefix is long (the text agent's 161-token instruction). ``mask_BxL[:, 0]`` is never a
    target (with or without a prefix)."""
    m = mask_BxL[:, 1:]
    pos = jax.vmap(lambda r: jnp.nonzero(r, size=targets, fill_value=0)[0])(m)
    valid = jnp.arange(targets)[None] < m.sum(1, keepdims=True)
    if prefix is None:
        logits, _ = model(tokens_BxL[:, :-1], logits_at=pos)
    else:
        prefix = jnp.asarray(prefix, jnp.int32)
        B, L = tokens_BxL.shape
        P = prefix.shape[0]
        cache = init_cache(model.cfg, 1, P + L - 1)
        _, cache = model(prefix[None], cache=cache, logits_at=jnp.zeros((1, 1), jnp.int32))
        cache = jax.tree.map(lambda x: jnp.broadcast_to(x, (B,) + x.shape[1:]), cache)
        logits, _ = model(tokens_BxL[:, :-1], cache=cache, logits_at=pos)
    lp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, -1)
    tgt = jnp.take_along_axis(tokens_BxL[:, 1:], pos, 1)
    ent = -(jnp.exp(lp) * lp).sum(-1)
    return jnp.take_along_axis(lp, tgt[..., None], -1)[..., 0], valid, ent


@functools.partial(nnx.jit, static_argnames=("targets",))
def masked_logprobs_jit(model, tokens, mask, temperature, targets: int, prefix=None):
    """``masked_logprobs``' log-probs, compiled (one program per shape and ``targets``)."""
    return masked_logprobs(model, tokens, mask, targets, temperature, prefix)[0]


def truncate(ep: TextEpisode, at) -> TextEpisode:
    """Episodes cut after ``at[r]`` steps (unchanged where ``at`` is their length)."""
    ep = jax.tree.map(lambda x: np.array(x), ep)
    at = np.asarray(at, np.int32)
    T = ep.actions.shape[1]
    cut = at < ep.num_steps
    after = (np.arange(T)[None] >= at[:, None]) & cut[:, None]
    ep.actions[after] = -1
    for arr in (ep.valid, ep.active, *ep.info.values()):
        arr[after] = False
    ep.prompt_len[after] = 0
    ep.response_len[after] = 0
    rows = np.arange(len(at))
    for leaf in jax.tree.leaves(ep.states):
        later = (np.arange(T + 1)[None] > at[:, None]) & cut[:, None]
        leaf[:] = np.where(later.reshape(later.shape + (1,) * (leaf.ndim - 2)),
                           leaf[rows, np.minimum(at, T)][:, None], leaf)
    return ep._replace(num_steps=np.where(cut, at, ep.num_steps).astype(np.int32),
                       solved=ep.solved & ~cut)


