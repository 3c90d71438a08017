"""The text agent's session: the batched loop, branches, reflectors (see ``agent``)."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.envs.sokoban import constants as C
from leafe_jax.envs.sokoban.env import Sokoban
from leafe_jax.envs.sokoban.level import Level
from leafe_jax.interfaces.protocol import FEEDBACK_REFLECTOR, Reflection, Rollouts
from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.interfaces.symbolic.episode import Episode
from leafe_jax.interfaces.symbolic.reflect import OracleReflector, feedback_reflect, periodic_stop
from leafe_jax.interfaces.text import format as F
from leafe_jax.interfaces.text.episode import STEP_INFO, TextEpisode, cut_response, truncate
from leafe_jax.interfaces.text.policy import Generation
from leafe_jax.interfaces.text.reflect import SelfReflector

SELF_REFLECTOR = "self"
ORACLE_REFLECTOR = "oracle"
REASON_OF_TOKEN = {E.R_DEADLOCK: "deadlock", E.R_BUMP: "bump", E.R_NO_PROGRESS: "no_progress",
                   E.R_LOOP: "loop"}


@functools.lru_cache(maxsize=None)
def _stepper(env: Sokoban):
    return jax.jit(jax.vmap(lambda s, a, p: env.step_env(jax.random.key(0), s, a, p)[1:],
                            in_axes=(0, 0, None)))


class TextSession:
    """A text policy bound to B levels for one search (``protocol.Session``)."""

    num_actions = C.NUM_ACTIONS
    restores_by_snapshot = True

    def __init__(self, agent, policy, levels: Level, max_depth: int, temperature: float):
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



