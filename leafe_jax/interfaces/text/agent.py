"""Text Sokoban: a language model acting and reflecting through text, behind the same
agent-interface seam as the symbolic agent (``interfaces.protocol``).

The loop (``TextSession._run``): many episodes at once; per turn every live row's prompt is
rendered and tokenized on the host (``format.turn_prompt``: the shared instruction, a
window of the last ``history_length`` observations / actions / feedback, the current grid,
the experiences that apply, the answer request), one batched generation samples the
responses (the instruction prefix's KV cache computed once, a turn prefilling only its own
tokens; ``policy.LMPolicy``), the answers are parsed as verl-agent does, and one vmapped
jitted env step moves every row. Rows may sit at different steps (branches restart at their
own tau); the loop runs until every row is solved or at the step limit.

Per turn the episode keeps what rollback and Stage 2 need: the env state before the action
(a rollback restores it exactly - the env snapshots, so ``restores_by_snapshot``), the
prompt's tokens after the shared prefix, the response's tokens (cut just past the first
``</action>``) and their log-probs, the parsed action (``format.INVALID`` for an
unparsable answer: a no-op step), the valid flag and the env's diagnostic flags (the
feedback words are rendered from them and from the states).

Experiences are text, stored as token ids + 1 in ``experience_tokens`` slots (0 = empty,
so an all-zero row is "no experience"); an episode holds up to D + 1 of them with the step
from which each is shown (``exp_from``: tau for a rollback branch, 0 for iterative
refinement's). A branch keeps its experience in every later prompt, right before the
answer request. Prompts rendered *without* experiences are the Stage-2 contexts
(``sft_examples``): rehearsal = (prompt at t -> response at t), e2p = (prompt at tau
without the experience -> the response produced with it); the loss covers the response
tokens and the end-of-turn token.

Reflectors: ``feedback`` (the environment's feedback reflector, ``reflect.feedback_reflect``,
its experience rendered in words), ``oracle`` (the exact solver's, an upper bound) and ``self`` (the policy answers ``format.
reflection_prompt``; malformed / out-of-range / "none" answers are counted in ``stats``,
never replaced). ``Rollouts.tokens`` counts generated tokens (the policy's sampling cost;
prompt tokens are in ``prompt_len``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from leafe_jax.data.loader import round_up
from leafe_jax.envs.sokoban import constants as C
from leafe_jax.envs.sokoban.env import EnvState, Sokoban
from leafe_jax.envs.sokoban.level import Level, level_to_ascii
from leafe_jax.interfaces.protocol import FEEDBACK_REFLECTOR, Reflection, Rollouts
from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.interfaces.symbolic.episode import Episode
from leafe_jax.interfaces.symbolic.reflect import OracleReflector, feedback_reflect, periodic_stop
from leafe_jax.interfaces.symbolic.rollout import INFO_KEYS
from leafe_jax.interfaces.text import format as F
from leafe_jax.interfaces.text.policy import Generation
from leafe_jax.policy.text import turn_end_tokens

SELF_REFLECTOR = "self"
ORACLE_REFLECTOR = "oracle"
STEP_INFO = INFO_KEYS + ("solved",)
REASON_OF_TOKEN = {E.R_DEADLOCK: "deadlock", E.R_BUMP: "bump", E.R_NO_PROGRESS: "no_progress",
                   E.R_LOOP: "loop"}


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

    def __init__(self, tok):
        mark = "\x00"
        text = tok.render([{"role": "user", "content": F.INSTRUCTION + mark}], add_generation_prompt=True)
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


@functools.lru_cache(maxsize=None)
def _stepper(env: Sokoban):
    return jax.jit(jax.vmap(lambda s, a, p: env.step_env(jax.random.key(0), s, a, p)[1:],
                            in_axes=(0, 0, None)))


def _rows(x, idx):
    return jax.tree.map(lambda a: a[idx], x)


def _set(dst, idx, src):
    """In-place ``dst[idx] = src`` over matching numpy pytrees."""
    for d, s in zip(jax.tree.leaves(dst), jax.tree.leaves(src)):
        d[idx] = s


class TextSession:
    """A text policy bound to B levels for one search (``protocol.Session``)."""

    num_actions = C.NUM_ACTIONS
    restores_by_snapshot = True

    def __init__(self, agent: "TextSokoban", policy, levels: Level, max_depth: int, temperature: float):
        self.agent, self.policy, self.temperature = agent, policy, temperature
        self.env, self.params, self.cfg = agent.env, agent.params, agent.cfg
        self.fmt = agent.fmt
        if policy is not None and policy.tokenizer.vocab_size != agent.tokenizer.vocab_size:
            raise ValueError(f"the policy's tokenizer ({policy.tokenizer.vocab_size} tokens) is not "
                             f"the interface's ({agent.tokenizer.vocab_size})")
        self.D1 = max_depth + 1
        self.experience_shape = (self.cfg.experience_tokens,)
        self.T = int(self.params.max_steps_in_episode)
        _, s0 = jax.vmap(lambda lv: self.env.reset_to_level(lv, self.params))(levels)
        self.s0 = jax.tree.map(np.asarray, s0)
        self.num_tasks = int(self.s0.player.shape[0])
        self.stats = {"turns": 0, "invalid": 0, "prompt_tokens": 0, "generated_tokens": 0,
                      "experiences_truncated": 0}
        self.timing = {"render": 0.0, "generate": 0.0, "parse": 0.0, "env": 0.0}   # seconds

    # ------------------------------------------------------------------ episodes
    def _empty(self, task) -> TextEpisode:
        R, T, cfg = len(task), self.T, self.cfg
        states = jax.tree.map(lambda x: np.repeat(x[task][:, None], T + 1, 1), self.s0)
        z = lambda shape, dt, v=0: np.full((R,) + shape, v, dt)
        return TextEpisode(states=states, actions=z((T,), np.int32, -1), valid=z((T,), bool),
                           info={k: z((T,), bool) for k in STEP_INFO}, active=z((T,), bool),
                           prompt=z((T, cfg.prompt_tokens), np.int32), prompt_len=z((T,), np.int32),
                           response=z((T, cfg.max_new_tokens), np.int32), response_len=z((T,), np.int32),
                           logprob=z((T, cfg.max_new_tokens), np.float32),
                           experience=z((self.D1, cfg.experience_tokens), np.int32),
                           exp_from=z((self.D1,), np.int32, -1), solved=z((), bool),
                           num_steps=z((), np.int32), start=z((), np.int32),
                           task=np.asarray(task, np.int32))

    def roots(self, task, keys, start_experience=None) -> Rollouts:
        task = np.asarray(task)
        ep = self._empty(task)
        if start_experience is not None:
            se = np.asarray(start_experience, np.int32)
            has = (se != 0).any(1)
            ep.experience[has, 0] = se[has]
            ep.exp_from[has, 0] = 0
        return self._run(ep, keys)

    def branches(self, parents, tau, experience, forbidden, keys, *, use_experience: bool,
                 use_mask: bool) -> Rollouts:
        if use_mask:
            raise ValueError("the text interface has no forbidden-action mask (the mask ablations "
                             "are symbolic only); use the experience")
        tau = np.asarray(tau, np.int32)
        ep = jax.tree.map(lambda x: np.array(x), parents)
        R, T = len(tau), self.T
        after = np.arange(T)[None] >= tau[:, None]
        ep.actions[after] = -1
        for k in ("valid", "active"):
            getattr(ep, k)[after] = False
        for v in ep.info.values():
            v[after] = False
        for k in ("prompt_len", "response_len"):
            getattr(ep, k)[after] = 0
        rows = np.arange(R)
        for leaf in jax.tree.leaves(ep.states):         # states after tau: recomputed
            leaf[:] = np.where(np.arange(T + 1).reshape((1, -1) + (1,) * (leaf.ndim - 2))
                               > tau.reshape((-1, 1) + (1,) * (leaf.ndim - 2)),
                               leaf[rows, tau][:, None], leaf)
        if use_experience:
            exp = np.asarray(experience, np.int32)
            free = (ep.exp_from < 0).argmax(1)
            if ((ep.exp_from >= 0).all(1)).any():
                raise ValueError(f"an episode already holds {self.D1} experiences (max_depth + 1)")
            ep.experience[rows, free] = exp
            ep.exp_from[rows, free] = tau
        ep = ep._replace(solved=np.zeros(R, bool), num_steps=tau.copy(), start=tau.copy())
        return self._run(ep, keys)

    # ------------------------------------------------------------------ the loop
    def turn_text(self, ep: TextEpisode, r: int, t: int, *, with_experience: bool = True) -> str:
        return self.agent.turn_text(ep, r, t, with_experience=with_experience)

    def feedback(self, ep: TextEpisode, r: int, j: int) -> str:
        return self.agent.feedback(ep, r, j)

    def play(self, task, actions) -> Rollouts:
        """Teacher forcing: row r answers ``<action>actions[r][t]</action>`` at its turn t
        (demonstrations rendered exactly as the policy's own turns); a row whose actions
        run out before it ends answers invalid."""
        task = np.asarray(task)
        words = lambda a: F.ANSWER.format(action=F.ACTIONS[a]) if a < C.NUM_ACTIONS else "(none)"

        def respond(rows, t):
            ids = [self.fmt.tok.encode(words(actions[r][tt] if tt < len(actions[r]) else C.NUM_ACTIONS))
                   + self.fmt.end_ids for r, tt in zip(rows, t)]
            return [np.asarray(i, np.int32) for i in ids], [np.zeros(len(i), np.float32) for i in ids]
        return self._run(self._empty(task), jax.random.split(jax.random.key(0), len(task)), respond)

    def _run(self, ep: TextEpisode, keys, respond=None) -> Rollouts:
        T, cfg = self.T, self.cfg
        keys = jnp.asarray(keys)
        start = ep.num_steps.copy()
        step = _stepper(self.env)
        pre = self.fmt.prefix_ids
        live = ~ep.solved & (ep.num_steps < T)
        while live.any():
            rows = np.flatnonzero(live)
            t = ep.num_steps[rows]
            c0 = time.perf_counter()
            own = [self.fmt.ids(self.turn_text(ep, r, int(tt))) for r, tt in zip(rows, t)]
            c1 = time.perf_counter()
            too_long = [len(o) for o in own if len(o) > cfg.prompt_tokens]
            if too_long:
                raise ValueError(f"a prompt of {max(too_long)} tokens exceeds text.prompt_tokens = "
                                 f"{cfg.prompt_tokens}; raise it or shorten history_length")
            if respond is None:
                turn_keys = jax.vmap(jax.random.fold_in)(keys[rows], jnp.asarray(t))
                gen = self.policy.generate([pre + o for o in own], turn_keys,
                                           max_new_tokens=cfg.max_new_tokens,
                                           temperature=self.temperature, prefix_len=len(pre))
            else:
                gen = Generation(*respond(rows, t))
            c2 = time.perf_counter()
            acts = np.zeros(len(rows), np.int32)
            for i, (r, tt) in enumerate(zip(rows, t)):
                toks = np.asarray(gen.tokens[i], np.int32)[: cfg.max_new_tokens]
                n = cut_response(self.fmt.tok, toks)
                text = self.fmt.tok.decode(toks[:n], skip_special=True)
                a, ok = F.parse_action(text, cfg.think)
                acts[i] = a
                ep.valid[r, tt] = ok
                ep.prompt[r, tt, : len(own[i])] = own[i]
                ep.prompt_len[r, tt] = len(own[i])
                ep.response[r, tt, :n] = toks[:n]
                ep.response[r, tt, n:] = 0
                ep.logprob[r, tt, :n] = np.asarray(gen.logprobs[i])[:n]
                ep.response_len[r, tt] = n
                self.stats["prompt_tokens"] += len(own[i])
                self.stats["generated_tokens"] += len(toks)
            self.stats["turns"] += len(rows)
            self.stats["invalid"] += int((~ep.valid[rows, t]).sum())
            c3 = time.perf_counter()
            before = jax.tree.map(lambda x: x[rows, t], ep.states)
            after, _, solved, info = jax.device_get(step(before, jnp.asarray(acts), self.params))
            c4 = time.perf_counter()
            for k, dt in zip(("render", "generate", "parse", "env"), (c1 - c0, c2 - c1, c3 - c2, c4 - c3)):
                self.timing[k] += dt
            ep.actions[rows, t] = acts
            ep.active[rows, t] = True
            for k in STEP_INFO:
                ep.info[k][rows, t] = info[k]
            for leaf, new in zip(jax.tree.leaves(ep.states), jax.tree.leaves(after)):
                # the new state from t+1 on (frozen after the end until a later step)
                mask = np.arange(T + 1)[None] > t[:, None]
                leaf[rows] = np.where(mask.reshape(mask.shape + (1,) * (leaf.ndim - 2)),
                                      new[:, None], leaf[rows])
            ep.num_steps[rows] += 1
            ep.solved[rows] = solved
            live = ~ep.solved & (ep.num_steps < T)
        own_steps = ep.num_steps - start
        gen_tokens = np.where(np.arange(T)[None] >= start[:, None], ep.response_len, 0).sum(1)
        return Rollouts(ep, own_steps.astype(np.int64), gen_tokens.astype(np.int64))

    # ------------------------------------------------------------------ reflection
    def symbolic_view(self, ep: TextEpisode) -> Episode:
        """The fields the symbolic reflectors read (they work on the env's record alone)."""
        R, T = ep.actions.shape
        z = np.zeros((R, T), np.int32)
        return Episode(states=ep.states, actions=ep.actions, feedback=z, info=ep.info,
                       active=ep.active, action_pos=z, tokens=np.zeros((R, 1), np.int32),
                       token_len=np.zeros(R, np.int32), solved=ep.solved,
                       num_steps=ep.num_steps, start=ep.start)

    def interrupt(self, out: Rollouts, every: int) -> Rollouts:
        """Each rollout cut where a reflection every ``every`` steps stops it (a deadlock it
        caused: ``reflect.periodic_stop``); the steps and tokens after the stop not spent."""
        ep = out.episodes
        at = np.asarray(periodic_stop(self.symbolic_view(ep), every))
        cut = truncate(ep, at)
        saved_tokens = np.where(np.arange(self.T)[None] >= at[:, None], ep.response_len, 0).sum(1)
        return Rollouts(cut, np.asarray(out.env_steps) - (ep.num_steps - at),
                        np.asarray(out.tokens) - saved_tokens)

    def reflector(self, name: str, *, num_candidates: int, every: int):
        if name == FEEDBACK_REFLECTOR:
            return functools.partial(self._feedback_reflect, M=num_candidates, every=every)
        if name == SELF_REFLECTOR:
            return SelfReflector(self, num_candidates)
        if name == ORACLE_REFLECTOR:
            oracle = OracleReflector(self.env.height, self.env.width, num_candidates=num_candidates)

            def reflect(ep):
                ep = jax.tree.map(np.asarray, ep)
                refl = jax.device_get(oracle(self.symbolic_view(ep)))
                return self._experiences(ep, refl.tau, refl.reason,
                                         lambda r, m, a, row, col: F.experience_text(
                                             REASON_OF_TOKEN[int(refl.reason[r, m])], a, row, col))
            return reflect
        raise ValueError(f"unknown reflector {name!r}; the text interface has "
                         f"{[FEEDBACK_REFLECTOR, SELF_REFLECTOR, ORACLE_REFLECTOR]}")

    def _feedback_reflect(self, ep: TextEpisode, *, M: int, every: int) -> Reflection:
        ep = jax.tree.map(np.asarray, ep)
        refl = jax.device_get(feedback_reflect(self.symbolic_view(ep), width=self.env.width,
                                               num_candidates=M, every=every))
        return self._experiences(ep, refl.tau, refl.reason,
                                 lambda r, m, a, row, col: F.experience_text(
                                     REASON_OF_TOKEN[int(refl.reason[r, m])], a, row, col))

    def _experiences(self, ep, tau, reason, text_of) -> Reflection:
        R, M = tau.shape
        exp = np.zeros((R, M, self.cfg.experience_tokens), np.int32)
        forb = np.zeros((R, M, C.NUM_ACTIONS), bool)
        for r, m in zip(*np.nonzero(tau >= 0)):
            t = int(tau[r, m])
            a, p = int(ep.actions[r, t]), int(ep.states.player[r, t])
            text = text_of(r, m, a, p // self.env.width, p % self.env.width)
            exp[r, m], trunc = self.fmt.experience_ids(text, self.cfg.experience_tokens)
            self.stats["experiences_truncated"] += int(trunc)
            if a < C.NUM_ACTIONS:
                forb[r, m, a] = True
        return Reflection(np.asarray(tau, np.int32), exp, forb, np.asarray(reason, np.int32))


@functools.partial(nnx.jit, static_argnames=("temperature",))
def _answer_logprobs(model, tokens_BxL, temperature: float):
    """log p(token t | tokens < t) at ``temperature``, aligned to t (column 0 = 0)."""
    logits, _ = model(tokens_BxL[:, :-1])
    lp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, -1)
    tgt = jnp.take_along_axis(lp, tokens_BxL[:, 1:, None], -1)[..., 0]
    return jnp.concatenate([jnp.zeros((tokens_BxL.shape[0], 1), jnp.float32), tgt], 1)


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


class SelfReflector:
    """The policy reflects on its own trajectory (``format.reflection_prompt``): up to M
    samples per failed episode, the distinct valid ones (by tau) kept in order. Answers that
    do not parse, name a step outside the rollout's own steps, or say no rollback is
    needed are counted in ``stats`` and give no candidate - never replaced by another
    reflector's answer."""

    def __init__(self, session: TextSession, num_candidates: int, seed: int = 0):
        self.s, self.M = session, num_candidates
        self.key = jax.random.key(seed)
        self.stats = {"episodes": 0, "asked": 0, "ok": 0, "none": 0, "malformed": 0,
                      "out_of_range": 0, "duplicate": 0, "prompt_tokens": 0, "generated_tokens": 0}
        self.calls = 0

    def prompt(self, ep: TextEpisode, r: int) -> str:
        s = self.s
        H, W = s.env.height, s.env.width
        n = int(ep.num_steps[r])
        obs = lambda j: _obs(ep.states.grid[r, j], ep.states.player[r, j], H, W)
        steps = [F.Turn(obs(j), int(ep.actions[r, j]), s.feedback(ep, r, j)) for j in range(n)]
        return F.reflection_prompt(obs(0), steps, obs(n), bool(ep.solved[r]))

    def __call__(self, ep: TextEpisode) -> Reflection:
        s, M = self.s, self.M
        ep = jax.tree.map(np.asarray, ep)
        R = len(ep.num_steps)
        tau = np.full((R, M), -1, np.int32)
        texts: dict = {}
        todo = [r for r in range(R) if not ep.solved[r] and ep.num_steps[r] > ep.start[r]]
        self.stats["episodes"] += len(todo)
        if todo:
            pre = s.fmt.prefix_ids
            rows = [r for r in todo for _ in range(M)]
            own = [s.fmt.ids(self.prompt(ep, r)) for r in todo]
            prompts = [pre + own[i // M] for i in range(len(rows))]
            key = jax.random.fold_in(self.key, self.calls)
            self.calls += 1
            keys = jax.random.split(key, len(rows))
            gen = s.policy.generate(prompts, keys, max_new_tokens=s.cfg.reflection_new_tokens,
                                    temperature=s.temperature, prefix_len=len(pre))
            self.stats["prompt_tokens"] += sum(len(o) for o in own) * M
            for i, r in enumerate(rows):
                self.stats["asked"] += 1
                self.stats["generated_tokens"] += len(gen.tokens[i])
                text = s.policy.tokenizer.decode(gen.tokens[i], skip_special=True)
                p = F.parse_reflection(text, start=int(ep.start[r]), num_steps=int(ep.num_steps[r]))
                self.stats[p.status] += 1
                m = int((tau[r] >= 0).sum())
                if p.status == "ok" and p.tau in tau[r]:
                    self.stats["duplicate"] += 1
                elif p.status == "ok" and m < M:
                    tau[r, m] = p.tau
                    texts[(r, m)] = p.experience
        reason = np.zeros_like(tau)
        return s._experiences(ep, tau, reason, lambda r, m, a, row, col: texts[(r, m)])


@dataclasses.dataclass(frozen=True)
class TextSokoban:
    """The text Sokoban agent interface for one env (preset), the tokenizer of the models it
    runs, the env params and ``TextConfig``. Policies are ``policy.LMPolicy`` (or stand-ins
    with ``tokenizer``, ``generate``)."""
    env: Sokoban
    tokenizer: object
    params: object = None
    cfg: F.TextConfig = F.TextConfig()

    def __post_init__(self):
        if self.params is None:
            object.__setattr__(self, "params", self.env.default_params)
        object.__setattr__(self, "fmt", ChatFormat(self.tokenizer))

    # ------------------------------------------------------------------ rendering
    def turn_text(self, ep: TextEpisode, r: int, t: int, *, with_experience: bool = True) -> str:
        """The user message (after the shared instruction) of row r's turn t: rendered from
        the episode's record alone, so a branch re-renders its parent's prompts exactly."""
        H, W = self.env.height, self.env.width
        st = ep.states
        obs = lambda j: _obs(st.grid[r, j], st.player[r, j], H, W)
        h = self.cfg.history_length
        past = [F.Turn(obs(j), int(ep.actions[r, j]), self.feedback(ep, r, j))
                for j in range(max(0, t - h), t)] if h else []
        exps = []
        if with_experience:
            slots = [k for k in range(ep.exp_from.shape[1]) if 0 <= ep.exp_from[r, k] <= t]
            exps = [self.fmt.experience_text(ep.experience[r, k]) for k in slots]
        return F.turn_prompt(t, obs(t), past, exps, self.cfg)

    def feedback(self, ep: TextEpisode, r: int, j: int) -> str:
        """Step j's feedback in words (a bump into a wall told apart from a stuck box)."""
        a = int(ep.actions[r, j])
        wall = False
        if a < C.NUM_ACTIONS:
            ahead = int(ep.states.player[r, j]) + int(self.env._deltas[a])
            wall = (int(ep.states.grid[r, j, ahead]) & int(C.BIT_WALL)) != 0
        return F.feedback_text({k: bool(v[r, j]) for k, v in ep.info.items()}, bumped_wall=wall,
                               steps_since_progress=int(ep.states.steps_since_progress[r, j + 1]),
                               no_progress_steps=self.cfg.no_progress_steps)

    def session(self, policy, tasks: Level, *, max_depth: int, temperature: float) -> TextSession:
        return TextSession(self, policy, tasks, max_depth, temperature)

    def action(self, episode, t: int) -> int:
        return int(episode.actions[t])

    @property
    def max_steps(self) -> int:
        return int(self.params.max_steps_in_episode)

    def distance_to_go(self, episodes, t) -> np.ndarray:
        from leafe_jax.interfaces.symbolic.interface import SymbolicSokoban
        return SymbolicSokoban(self.env, self.params).distance_to_go(episodes, t)

    def action_distribution(self, policy, episodes, t, temperature: float = 1.0,
                            chunk: int = 8) -> np.ndarray:
        """float [R, 4]: the policy's distribution over the four canonical answers
        ``<action>word</action>`` + end of turn at step ``t[r]`` of episode r, given the
        prompt that row saw there (its experiences included), at ``temperature``,
        normalised over the four (P(action | a well-formed answer)). Teacher-forced full
        forwards, ``chunk`` sequences at a time. None for a policy without a ``model`` to
        score with (a scripted stand-in)."""
        if not hasattr(policy, "model"):
            return None
        ep = jax.tree.map(np.asarray, episodes)
        t = np.asarray(t)
        answers = [self.fmt.tok.encode(F.ANSWER.format(action=w)) + self.fmt.end_ids for w in F.ACTIONS]
        seqs, spans = [], []
        for r in range(len(t)):
            prompt = self.fmt.prefix_ids + ep.prompt[r, t[r], : ep.prompt_len[r, t[r]]].tolist()
            for a in answers:
                seqs.append(prompt + a)
                spans.append((len(prompt), len(prompt) + len(a)))
        score = np.zeros(len(seqs), np.float64)
        for i in range(0, len(seqs), chunk):
            part = seqs[i: i + chunk]
            L = round_up(max(len(x) for x in part), 64)
            arr = np.zeros((chunk, L), np.int32)
            for j, x in enumerate(part):
                arr[j, : len(x)] = x
            lp = np.asarray(_answer_logprobs(policy.model, jnp.asarray(arr), temperature))
            for j in range(len(part)):
                a, b = spans[i + j]
                score[i + j] = lp[j, a:b].sum()
        score = score.reshape(len(t), len(answers))
        p = np.exp(score - score.max(1, keepdims=True))
        return (p / p.sum(1, keepdims=True)).astype(np.float32)

    # ------------------------------------------------------------------ Stage-2 data
    def sft_examples(self, episode, first: int, last: int) -> list:
        """One (tokens, loss_mask) per turn first..last: the whole prompt of turn t rendered
        *without* experiences, then the response of turn t and the end-of-turn token (the
        loss covers exactly those). Turns whose answer was invalid (no admissible action
        parsed) are left out: a successful trajectory's no-op answers teach nothing but the
        wrong format."""
        one = jax.tree.map(lambda x: np.asarray(x)[None], episode)
        out = []
        for t in range(first, last + 1):
            if not episode.valid[t]:
                continue
            prompt = self.fmt.prefix_ids + self.fmt.ids(self.turn_text(one, 0, t, with_experience=False))
            resp = [int(i) for i in episode.response[t, : int(episode.response_len[t])]] + self.fmt.end_ids
            toks = np.asarray(prompt + resp, np.int32)
            mask = np.zeros(len(toks), bool)
            mask[len(prompt):] = True
            out.append((toks, mask))
        return out

    def sft_example(self, episode, first: int, last: int):
        """The protocol's single sequence: one turn (``first == last``); a text episode's
        turns are separate prompts, so several turns are ``sft_examples``."""
        if first != last:
            raise ValueError("a text episode's turns are separate chats: use sft_examples")
        out = self.sft_examples(episode, first, last)
        if not out:
            raise ValueError(f"turn {first}'s answer was invalid: no example")
        return out[0]

    def episode_like(self) -> TextEpisode:
        z = 0
        return TextEpisode(states=EnvState(**{f.name: z for f in dataclasses.fields(EnvState)}),
                           info={k: z for k in STEP_INFO},
                           **{f: z for f in TextEpisode._fields if f not in ("states", "info")})

    # ------------------------------------------------------------------ evaluation
    def success(self, policy, tasks: Level, n: int, key, *, temperature: float = 1.0,
                progress: bool = True, batch_size: int = 64,
                checkpoint: str | None = None) -> np.ndarray:
        """``success[B, n]``: n sampled episodes per level from the start, in chunks of
        ``batch_size`` episodes; ``checkpoint`` keeps finished chunks (a killed evaluation
        resumes with the same result)."""
        from leafe_jax.interfaces.symbolic.interface import _run_tag
        B = int(np.shape(tasks.player)[0])
        if B == 0:
            raise ValueError("empty level set: nothing to evaluate")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        total = B * n
        batch = min(batch_size, total)
        session = self.session(policy, tasks, max_depth=0, temperature=temperature)
        level_idx = np.repeat(np.arange(B), n)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(total))
        out = np.zeros(total, bool)
        tag, first = _run_tag(tasks, n, key, temperature, batch) + ":text", 0
        if checkpoint is not None and os.path.exists(checkpoint):
            with np.load(checkpoint) as z:
                if str(z["tag"]) == tag:
                    out, first = z["out"].copy(), int(z["next"])
        for s in tqdm(range(first, total, batch), desc="pass@k rollouts (text)", disable=not progress,
                      unit="chunk", initial=first // batch, total=-(-total // batch)):
            idx = np.arange(s, min(s + batch, total))
            out[idx] = session.roots(level_idx[idx], keys[idx]).episodes.solved
            if checkpoint is not None:
                tmp = checkpoint + ".tmp.npz"
                np.savez(tmp, out=out, next=s + batch, tag=tag)
                os.replace(tmp, checkpoint)
        return out.reshape(B, n)

    # ------------------------------------------------------------------ reports
    def describe_task(self, episodes, task: int) -> str:
        grid = np.asarray(episodes.states.grid[task, 0, 0])
        player = int(episodes.states.player[task, 0, 0])
        return level_to_ascii(Level(grid=grid, player=np.int32(player)), self.env.height, self.env.width)

    def describe_rollout(self, episode) -> str:
        acts = np.asarray(episode.actions)
        start, steps = int(episode.start), int(episode.num_steps)
        return "".join("UDLR?"[a] for a in acts[start:steps] if a >= 0)

    def describe_experience(self, experience) -> str:
        return self.fmt.experience_text(experience)
