"""Self-reflection: the policy itself names the step to take back and writes the experience.

In the paper the agent reflects on its own trajectory. Here the same network that acts is
asked, after an episode's context, ``REFLECT EXP`` - and writes the rest of one experience
segment, ``reason action ROW_r COL_c`` (each position constrained to its token class), then
``EXP_END``. The step it names, tau, is the rollout's first own step where the player stood
at (r, c) and took *action*; an answer that matches no such step is *malformed* (counted,
no rollback - never silently replaced by another reflector's answer).

A random network answers at random: ``reflection_examples`` builds the warm-up data -
on-policy rollouts on **demonstration-pool levels only** (never training or held-out levels),
each failed one labelled with the **feedback reflector**'s first candidate, the loss on the
answer's tokens only. ``base.self_reflection`` puts them into the base policy's rounds
(``interfaces.symbolic.pretrain``), so every method starts from a policy that can write
reflections; ``reflection_quality`` measures the parse rate and the agreement with the
feedback reflector (before / after, in the base's ``following.json``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leafe_jax.data.store import SftRecords
from leafe_jax.interfaces.protocol import FEEDBACK_REFLECTOR, Reflection
from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.interfaces.symbolic.episode import Episode
from leafe_jax.policy.sampler import bucket, extend, new_cache, prefill

PROMPT_TAIL = (E.REFLECT, E.EXP)
ANSWER_LEN = 4                     # reason, action, row, col (then EXP_END)


def answer_masks(height: int, width: int, vocab: int) -> np.ndarray:
    """bool [4, V]: the tokens allowed at each answer position (interior rows / columns)."""
    m = np.zeros((ANSWER_LEN, vocab), bool)
    m[0, E.R_DEADLOCK: E.R_LOOP + 1] = True
    m[1, list(E.ACTION_TOKENS)] = True
    m[2, E.ROW0 + 1: E.ROW0 + height - 1] = True
    m[3, E.COL0 + 1: E.COL0 + width - 1] = True
    return m


def reflection_prompt(tokens, length: int) -> np.ndarray:
    """An episode's context (``tokens[:length]``) followed by ``REFLECT EXP``."""
    return np.concatenate([np.asarray(tokens)[:length], PROMPT_TAIL]).astype(np.int32)


def match_step(ep_row, action: int, row: int, col: int, width: int) -> int:
    """The first own step of one (host) episode where the player stood at (row, col) and took
    ``action``; -1 when none."""
    start, n = int(ep_row.start), int(ep_row.num_steps)
    player = np.asarray(ep_row.states.player)[start:n]
    acts = np.asarray(ep_row.actions)[start:n]
    hit = np.flatnonzero((acts == action) & (player == row * width + col))
    return int(start + hit[0]) if len(hit) else -1


@jax.jit
def _sample(logits_BxV, key, mask_V, temperature):
    lg = jnp.where(mask_V[None], logits_BxV / temperature, -1e30)
    return jax.random.categorical(key, lg).astype(jnp.int32)


class SelfReflector:
    """The policy as its own reflector (``session.reflector("self")``): up to M candidates per
    failed episode from M sampled answers (the first at temperature -> 0 is the greedy one),
    distinct tau, in sampling order. ``stats``: answers asked, malformed, duplicates."""

    def __init__(self, policy, height: int, width: int, num_candidates: int = 2,
                 temperature: float = 1.0, seed: int = 0):
        self.policy, self.h, self.w, self.M = policy, height, width, num_candidates
        self.temperature, self.key = temperature, jax.random.key(seed)
        self.stats = {"asked": 0, "malformed": 0, "duplicate": 0}
        self.calls = 0

    def answers(self, ep: Episode, rows: np.ndarray, samples: int, chunk: int = 8) -> np.ndarray:
        """int [len(rows), samples, 4]: sampled answers (reason, action, row, col tokens).
        The prompts' prefill is a full forward (attention scores rows x heads x L^2): the
        episodes go shortest first, ``chunk`` at a time, each chunk cut to its longest."""
        prompts = [reflection_prompt(ep.tokens[r], int(ep.token_len[r])) for r in rows]
        order = np.argsort([len(p) for p in prompts], kind="stable")
        out = np.zeros((len(rows), samples, ANSWER_LEN), np.int32)
        self.calls += 1
        key = jax.random.fold_in(self.key, self.calls)
        for c in range(0, len(rows), chunk):
            idx = order[c: c + chunk]
            out[idx] = self._answer_chunk([prompts[i] for i in idx], samples, chunk,
                                          jax.random.fold_in(key, c))
        return out

    def _answer_chunk(self, prompts, samples: int, chunk: int, key) -> np.ndarray:
        model = self.policy
        masks = jnp.asarray(answer_masks(self.h, self.w, model.cfg.vocab_size))
        B = bucket(chunk * samples, 8)
        L = bucket(max(len(p) for p in prompts), 64)
        toks = np.zeros((B, L), np.int32)
        lens = np.ones(B, np.int32)
        for i, p in enumerate(np.repeat(np.arange(len(prompts)), samples)):
            toks[i, : len(prompts[p])] = prompts[p]
            lens[i] = len(prompts[p])
        graphdef, state = nnx.split(model)
        cache = new_cache(model, B, L + 8)
        logits, cache = prefill(graphdef, state, jnp.asarray(toks), jnp.asarray(lens), cache)
        out = []
        # sample 0 of each episode is greedy (temperature ~0), the others at temperature
        temp = jnp.where(jnp.arange(B) % samples == 0, 1e-4, self.temperature)[:, None]
        for j in range(ANSWER_LEN):
            tok = _sample(logits, jax.random.fold_in(key, j), masks[j], temp)
            out.append(tok)
            logits, cache = extend(graphdef, state, tok[:, None], jnp.ones(B, jnp.int32), cache)
        R = len(prompts) * samples
        return np.stack([np.asarray(t) for t in out], 1)[:R].reshape(len(prompts), samples, ANSWER_LEN)

    def __call__(self, ep: Episode) -> Reflection:
        ep = jax.tree.map(np.asarray, ep)
        n = ep.actions.shape[0]
        M = self.M
        tau = np.full((n, M), -1, np.int32)
        exp = np.zeros((n, M, E.EXP_LEN), np.int32)
        forb = np.zeros((n, M, 4), bool)
        reason = np.zeros((n, M), np.int32)
        rows = np.flatnonzero(~ep.solved)
        if len(rows):
            ans = self.answers(ep, rows, M)
            for i, r in enumerate(rows):
                one = _row(ep, r)
                m = 0
                for a in ans[i]:
                    self.stats["asked"] += 1
                    rs, act, row, col = int(a[0]), int(a[1] - E.ACT0), int(a[2] - E.ROW0), int(a[3] - E.COL0)
                    t = match_step(one, act, row, col, self.w)
                    if t < 0:
                        self.stats["malformed"] += 1
                        continue
                    if (tau[r, :m] == t).any():
                        self.stats["duplicate"] += 1
                        continue
                    tau[r, m], reason[r, m] = t, rs
                    exp[r, m] = np.asarray(E.experience_tokens(rs, act, row, col))
                    forb[r, m, act] = True
                    m += 1
        return Reflection(tau=jnp.asarray(tau), experience=jnp.asarray(exp),
                          forbidden=jnp.asarray(forb), reason=jnp.asarray(reason))


def _row(ep, r):
    return jax.tree.map(lambda x: x[r], ep)


def _labelled_failures(agent, policy, levels, key, temperature: float):
    """One on-policy rollout per level (keys ``split(key, B)``) and the feedback reflector's
    first candidate for each: ``(host episodes, reflection, rows of the failed episodes it
    names a step for)`` - the shared start of the warm-up data and of its quality check."""
    sess = agent.session(policy, levels, max_depth=1, temperature=temperature)
    B = sess.num_tasks
    roots = sess.roots(np.arange(B), jax.random.split(key, B))
    eps = jax.tree.map(np.asarray, roots.episodes)
    refl = jax.device_get(sess.reflector(FEEDBACK_REFLECTOR, num_candidates=1, every=0)(roots.episodes))
    rows = np.flatnonzero((np.asarray(refl.tau[:, 0]) >= 0) & ~eps.solved)
    return eps, refl, rows


def reflection_examples(agent, policy, levels, key, *, temperature: float = 1.0):
    """``(SftRecords or None, stats)``: one on-policy rollout per (demo-pool) level; each
    failed one the feedback reflector can name a step for becomes ``context REFLECT EXP
    reason action ROW COL EXP_END`` with the loss on the answer and EXP_END."""
    eps, refl, rows = _labelled_failures(agent, policy, levels, key, temperature)
    B = len(eps.solved)
    toks, masks = [], []
    for r in rows:
        p = reflection_prompt(eps.tokens[r], int(eps.token_len[r]))
        ans = np.asarray(refl.experience[r, 0])[1:]                 # reason action row col END
        seq = np.concatenate([p, ans]).astype(np.int32)
        toks.append(seq)
        masks.append(np.arange(len(seq)) >= len(p))
    stats = {"rollouts": int(B), "failed": int((~eps.solved).sum()), "examples": len(toks)}
    if not toks:
        return None, stats
    return SftRecords.build(toks, masks, source="reflect", step=np.asarray(refl.tau[rows, 0])), stats


def reflection_quality(agent, policy, levels, key, *, temperature: float = 1.0) -> dict:
    """On fresh on-policy failures of ``levels``: how often the policy's greedy reflection
    parses to a step of the episode, and how often it equals the feedback reflector's first
    candidate (same tau and experience)."""
    all_eps, fb, rows = _labelled_failures(agent, policy, levels, key, temperature)
    if not len(rows):
        return {"failures": 0}
    me = SelfReflector(policy, agent.env.height, agent.env.width, num_candidates=1)
    eps = jax.tree.map(lambda x: x[rows], all_eps)
    mine = jax.device_get(me(eps))
    ok = np.asarray(mine.tau[:, 0]) >= 0
    same = ok & (np.asarray(mine.tau[:, 0]) == fb.tau[rows, 0]) & \
        (np.asarray(mine.experience[:, 0]) == fb.experience[rows, 0]).all(-1)
    return {"failures": int(len(rows)), "parse_rate": float(ok.mean()),
            "agrees_with_feedback": float(same.mean())}
