"""Reflectors: a trajectory and its environment feedback in -> rollback step tau, an
experience segment and (for the mask ablation) a forbidden action at tau - or no rollback.

All reflectors return a ``Reflection`` with up to M candidates per episode (distinct tau,
best first; ``tau = -1`` marks an empty slot), so a failed tree node can have M children.

* ``feedback_reflect`` (default; pure JAX, vmapped over episodes) reads only what the env
  reported. tau is the decision that caused the earliest irreversible or wasteful event:
  first a DEADLOCK (a push onto a dead square or into a frozen 2x2 block - irreversible),
  then, by time, the start of a LOOP (the state after action t repeats the state before an
  earlier action j: actions j..t were wasted; tau = j) or a BUMP (an action that moved
  nothing), then NO_PROGRESS (the first decision after the last push that brought a box
  closer to a target). Only the episode's own decisions (``t >= ep.start``) are candidates.
  With ``every = R`` it also reflects on the prefixes ending every R steps, adding the
  earliest event of each window. ``periodic_stop``: where a reflection every R steps stops
  a rollout that is already lost (the search's ``interrupt_every``).
* ``OracleReflector`` (ablation, upper bound; host-side, exact solver): tau = the first
  action after which the level is unsolvable (DEADLOCK), else the first action that made the
  optimal distance to the goal longer (NO_PROGRESS).
* ``ModelReflector``: the hook for policies that write reflections as text (prompt in,
  ``tau=.. reason=.. action=.. cell=r,c`` out); malformed outputs and tau outside the
  trajectory are counted and skipped.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.envs.sokoban.constants import ACTION_LETTERS
from leafe_jax.envs.sokoban.level import Level
from leafe_jax.envs.sokoban.solver import solve
from leafe_jax.interfaces.protocol import Reflection
from leafe_jax.interfaces.symbolic.episode import Episode

_BIG = 1 << 20
REASON_TOKENS = {"deadlock": E.R_DEADLOCK, "bump": E.R_BUMP, "no_progress": E.R_NO_PROGRESS,
                 "loop": E.R_LOOP}


def _state_hash(states):
    """Two independent 32-bit hashes of (grid, player) per step: [T+1, 2] uint32."""
    hw = states.grid.shape[-1]
    w = jax.random.bits(jax.random.key(1234), (2, hw), jnp.uint32) | jnp.uint32(1)
    g = states.grid.astype(jnp.uint32)
    h = jnp.einsum("th,kh->tk", g, w, preferred_element_type=jnp.uint32)
    return h ^ (states.player.astype(jnp.uint32)[:, None] * jnp.uint32(0x9E3779B9))


def _experience(ep: Episode, tau, reason, width: int):
    a = jnp.maximum(ep.actions[jnp.maximum(tau, 0)], 0)
    player = ep.states.player[jnp.maximum(tau, 0)]
    exp = E.experience_tokens(reason, a, player // width, player % width)
    return jnp.where(tau >= 0, exp, E.PAD), jax.nn.one_hot(a, 4, dtype=bool) & (tau >= 0)


def _reflect_one(ep: Episode, width: int, M: int, every: int):
    T = ep.actions.shape[-1]
    t = jnp.arange(T)
    own = ep.active & (t >= ep.start)
    dead = own & ep.info["deadlock"]
    bump = own & (ep.info["bumped"] | ep.info["invalid_action"])
    h = _state_hash(ep.states)                                   # [T+1, 2]
    same = jnp.all(h[1:, None, :] == h[None, :, :], -1)          # [T, T+1]: s_{t+1} == s_j
    j = jnp.arange(T + 1)
    cyc = same & (j[None, :] < t[:, None]) & (j[None, :] >= ep.start) & own[:, None]
    loop_at = cyc.any(1)
    loop_start = jnp.argmax(cyc, 1)                              # first j of the cycle
    # per candidate step: (priority key, tau, reason)
    keys = [jnp.where(dead, t, _BIG)]
    taus = [t]
    reasons = [jnp.full((T,), E.R_DEADLOCK)]
    keys.append(jnp.where(loop_at, T + t, _BIG))
    taus.append(loop_start)
    reasons.append(jnp.full((T,), E.R_LOOP))
    keys.append(jnp.where(bump, T + t, _BIG))
    taus.append(t)
    reasons.append(jnp.full((T,), E.R_BUMP))
    last_prog = jnp.max(jnp.where(own & ep.info["progress"], t, ep.start - 1))
    np_tau = last_prog + 1
    np_ok = (~ep.solved) & (np_tau < ep.num_steps)
    keys.append(jnp.where(np_ok, 3 * T, _BIG)[None])
    taus.append(np_tau[None])
    reasons.append(jnp.array([E.R_NO_PROGRESS]))
    if every > 0:          # periodic reflection: the earliest event of each window of R steps
        ev_key = jnp.minimum(jnp.where(dead, t, _BIG), jnp.where(bump | loop_at, t, _BIG))
        ev_tau = jnp.where(dead, t, jnp.where(loop_at & ~bump, loop_start, t))
        ev_reason = jnp.where(dead, E.R_DEADLOCK, jnp.where(loop_at & ~bump, E.R_LOOP, E.R_BUMP))
        for w0 in range(0, T, every):
            win = (t >= w0) & (t < w0 + every) & (ev_key < _BIG)
            first = jnp.argmax(win)
            keys.append(jnp.where(win.any(), 4 * T + w0 // every, _BIG)[None])
            taus.append(ev_tau[first][None])
            reasons.append(ev_reason[first][None])
    keys, taus, reasons = (jnp.concatenate(x) for x in (keys, taus, reasons))
    order = jnp.argsort(keys)
    keys, taus, reasons = keys[order], taus[order], reasons[order]
    # keep the first occurrence of each tau, then the best M
    dup = (taus[None, :] == taus[:, None]) & (jnp.arange(len(taus))[None, :] < jnp.arange(len(taus))[:, None])
    keys = jnp.where(dup.any(1) | (keys >= _BIG) | ep.solved, _BIG, keys)
    order = jnp.argsort(keys)[:M]
    ok = keys[order] < _BIG
    tau = jnp.where(ok, taus[order], -1).astype(jnp.int32)
    reason = jnp.where(ok, reasons[order], 0).astype(jnp.int32)
    exp, forb = jax.vmap(lambda tt, r: _experience(ep, tt, r, width))(tau, reason)
    return Reflection(tau=tau, experience=exp.astype(jnp.int32), forbidden=forb, reason=reason)


@partial(jax.jit, static_argnames=("every",))
def periodic_stop(ep: Episode, every: int) -> jax.Array:
    """int32 [R]: where a periodic reflection every ``every`` steps of a rollout's own steps
    stops it - the first check (``start + j * every``, j >= 1) that sees a DEADLOCK the
    rollout caused, if the rollout was still running there; else its ``num_steps``
    (no stop). Only the irreversible event stops a rollout: after it no continuation can
    succeed, so stopping loses nothing; bumps and loops are left to the failure reflection."""
    T = ep.actions.shape[-1]
    t = jnp.arange(T)
    own = ep.info["deadlock"] & ep.active & (t >= ep.start[..., None])
    first = jnp.min(jnp.where(own, t, T), -1)
    at = ep.start + ((first - ep.start) // every + 1) * every
    return jnp.where((first < T) & (at < ep.num_steps), at, ep.num_steps).astype(jnp.int32)


@partial(jax.jit, static_argnames=("width", "num_candidates", "every"))
def feedback_reflect(ep: Episode, *, width: int, num_candidates: int = 2, every: int = 0) -> Reflection:
    """Batched feedback reflector (leading batch axes of ``ep`` flattened by vmap)."""
    lead = ep.actions.shape[:-1]
    flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[len(lead):]), ep)
    out = jax.vmap(lambda e: _reflect_one(e, width, num_candidates, every))(flat)
    return jax.tree.map(lambda x: x.reshape(lead + x.shape[1:]), out)


# ---------------------------------------------------------------------------- oracle
class OracleReflector:
    """Upper-bound ablation with the exact solver (host-side; small levels only)."""

    def __init__(self, height: int, width: int, num_candidates: int = 2, max_nodes: int = 200_000):
        self.h, self.w, self.M, self.max_nodes = height, width, num_candidates, max_nodes
        self._cache: dict[bytes, int | None] = {}

    def distance(self, grid, player) -> int | None:
        """Optimal moves left from (grid, player): None if unsolvable, 10**6 past the node limit."""
        key = np.asarray(grid, np.uint8).tobytes() + int(player).to_bytes(4, "little")
        if key not in self._cache:
            r = solve(Level(grid=np.asarray(grid), player=np.int32(player)), self.h, self.w,
                      max_nodes=self.max_nodes)
            self._cache[key] = r.length if r.solved else (None if r.status == "unsolvable" else 10 ** 6)
        return self._cache[key]

    def __call__(self, ep: Episode) -> Reflection:
        ep = jax.tree.map(np.asarray, ep)
        lead = ep.actions.shape[:-1]
        flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[len(lead):]), ep)
        n = flat.actions.shape[0]
        tau = np.full((n, self.M), -1, np.int32)
        reason = np.zeros((n, self.M), np.int32)
        for i in range(n):                     # host-side ablation, not a hot path
            if flat.solved[i]:
                continue
            cands = []
            steps = range(int(flat.start[i]), int(flat.num_steps[i]))
            d = [self.distance(flat.states.grid[i, t], flat.states.player[i, t]) for t in
                 range(int(flat.start[i]), int(flat.num_steps[i]) + 1)]
            for k, t in enumerate(steps):
                if d[k] is not None and d[k + 1] is None:
                    cands.append((t, E.R_DEADLOCK))
                    break
            for k, t in enumerate(steps):
                if d[k] is not None and d[k + 1] is not None and d[k + 1] > d[k] and \
                        all(t != c for c, _ in cands):
                    cands.append((t, E.R_NO_PROGRESS))
                if len(cands) >= self.M:
                    break
            for m, (t, r) in enumerate(cands[: self.M]):
                tau[i, m], reason[i, m] = t, r
        exp, forb = _oracle_exp(flat, jnp.asarray(tau), jnp.asarray(reason), self.w)
        out = Reflection(tau=jnp.asarray(tau), experience=exp, forbidden=forb, reason=jnp.asarray(reason))
        return jax.tree.map(lambda x: x.reshape(lead + x.shape[1:]), out)


@partial(jax.jit, static_argnames=("width",))
def _oracle_exp(flat, tau, reason, width):
    def one(e, tt, rr):
        exp, forb = jax.vmap(lambda a, b: _experience(e, a, b, width))(tt, rr)
        return exp.astype(jnp.int32), forb
    return jax.vmap(one)(jax.tree.map(jnp.asarray, flat), tau, reason)


# ---------------------------------------------------------------------------- model hook
_LINE = re.compile(r"tau\s*=\s*(-?\d+)\s+reason\s*=\s*(\w+)\s+action\s*=\s*([UDLR])"
                   r"\s+cell\s*=\s*(\d+)\s*,\s*(\d+)", re.I)


class ModelReflector:
    """Reflections written by a text policy: ``generate(prompts) -> texts``.

    Each prompt shows the episode (``encoding.describe``) and asks for one line
    ``tau=<step> reason=<deadlock|bump|no_progress|loop> action=<U|D|L|R> cell=<row>,<col>``.
    Unparseable answers, unknown reasons and tau outside the episode's own steps are counted
    in ``self.malformed`` / ``self.out_of_range`` and give no rollback.
    """

    PROMPT = ("You played Sokoban and failed. Episode (cells, <feedback>, [action]):\n{episode}\n"
              "Name the decision to take back, as: tau=<step> reason=<deadlock|bump|no_progress|loop> "
              "action=<U|D|L|R> cell=<row>,<col>\n")

    def __init__(self, generate: Callable[[list[str]], list[str]], num_candidates: int = 1):
        self.generate, self.M = generate, num_candidates
        self.malformed = self.out_of_range = self.calls = 0

    def __call__(self, ep: Episode) -> Reflection:
        ep_np = jax.tree.map(np.asarray, ep)
        lead = ep_np.actions.shape[:-1]
        flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[len(lead):]), ep_np)
        n = flat.actions.shape[0]
        prompts = [self.PROMPT.format(episode=E.describe(flat.tokens[i, : flat.token_len[i]]))
                   for i in range(n)]
        texts = self.generate(prompts)
        self.calls += n
        tau = np.full((n, self.M), -1, np.int32)
        exp = np.zeros((n, self.M, E.EXP_LEN), np.int32)
        forb = np.zeros((n, self.M, 4), bool)
        reason = np.zeros((n, self.M), np.int32)
        for i, text in enumerate(texts):
            m = _LINE.search(text or "")
            if flat.solved[i]:
                continue
            if m is None or m.group(2).lower() not in REASON_TOKENS:
                self.malformed += 1
                continue
            t, r = int(m.group(1)), REASON_TOKENS[m.group(2).lower()]
            if not int(flat.start[i]) <= t < int(flat.num_steps[i]):
                self.out_of_range += 1
                continue
            a = ACTION_LETTERS.index(m.group(3).upper())
            tau[i, 0], reason[i, 0] = t, r
            exp[i, 0] = np.asarray(E.experience_tokens(r, a, int(m.group(4)), int(m.group(5))))
            forb[i, 0, a] = True
        out = Reflection(tau=jnp.asarray(tau), experience=jnp.asarray(exp), forbidden=jnp.asarray(forb),
                         reason=jnp.asarray(reason))
        return jax.tree.map(lambda x: x.reshape(lead + x.shape[1:]), out)
