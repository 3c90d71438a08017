"""The host text agent's episode record and session: the batched loop over an ``EnvPool``,
rollback branches by reset + replay (charged to the rollout's env steps), the feedback and
self reflectors."""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.envs.host.pool import StepRequest
from leafe_jax.envs.host.protocol import digest
from leafe_jax.interfaces.host import format as HF
from leafe_jax.interfaces.protocol import FEEDBACK_REFLECTOR, Reflection, Rollouts
from leafe_jax.interfaces.text.episode import cut_response
from leafe_jax.interfaces.text.policy import Generation
from leafe_jax.interfaces.text.reflect import SelfReflector

SELF_REFLECTOR = "self"


class HostEpisode(NamedTuple):
    obs: np.ndarray           # int32 [..., T+1, O]  what the agent sees before turn t (ids + 1)
    obs_digest: np.ndarray    # int64 [..., T+1]  ``protocol.digest`` of the full observation
    choices: np.ndarray       # int32 [..., T+1, C]  the valid actions listed then (ids + 1)
    action: np.ndarray        # int32 [..., T, N]  the env action of turn t (ids + 1)
    stepped: np.ndarray       # bool [..., T]  the answer parsed: the env took the action
    reward: np.ndarray        # float32 [..., T]  the env's reward / score after turn t
    active: np.ndarray        # bool [..., T]
    prompt: np.ndarray        # int32 [..., T, P]  the turn's prompt after the shared prefix
    prompt_len: np.ndarray    # int32 [..., T]
    response: np.ndarray      # int32 [..., T, N]
    response_len: np.ndarray  # int32 [..., T]
    logprob: np.ndarray       # float32 [..., T, N]
    experience: np.ndarray    # int32 [..., D+1, X]  ids + 1
    exp_from: np.ndarray      # int32 [..., D+1]  first step that shows it (-1: empty)
    solved: np.ndarray        # bool [...]
    done: np.ndarray          # bool [...]  the env ended the episode (won, failed or its limit)
    failed: np.ndarray        # bool [...]  the env could not be run (``EnvPool`` gave up)
    num_steps: np.ndarray     # int32 [...]
    start: np.ndarray         # int32 [...]
    task: np.ndarray          # int32 [...]
    replay: np.ndarray        # int32 [...]  env steps a reset + replay to its tau costs (branches)


def _ids(tok, text: str, slots: int) -> np.ndarray:
    out = np.zeros(slots, np.int32)
    ids = tok.encode(text)[:slots]
    out[: len(ids)] = np.asarray(ids, np.int32) + 1
    return out


def _text(tok, ids) -> str:
    return tok.decode([int(i) - 1 for i in np.asarray(ids) if i > 0])


class HostSession:
    """A text policy bound to host-env tasks for one search (``protocol.Session``)."""

    num_actions = 1                       # no forbidden-action mask (actions are free text)
    restores_by_snapshot = False          # branches replay their prefix; charged here

    def __init__(self, agent, policy, tasks, max_depth: int, temperature: float):
        self.agent, self.policy, self.temperature = agent, policy, temperature
        self.cfg, self.fmt, self.pool = agent.cfg, agent.fmt, agent.pool
        self.tok = agent.tokenizer
        self.tasks = np.asarray(tasks, np.int64)
        self.num_tasks = len(self.tasks)
        self.D1, self.T = max_depth + 1, agent.cfg.max_steps
        self.experience_shape = (self.cfg.experience_tokens,)
        # replay_steps: what the branches' rollbacks cost (charged to their env steps);
        # pool_replay_steps: what the pool replayed in fact, also when an episode's worker had
        # been given to another (a cost of running more episodes than workers, not the method's)
        self.stats = {"turns": 0, "invalid": 0, "prompt_tokens": 0, "generated_tokens": 0,
                      "replay_steps": 0, "pool_replay_steps": 0, "env_failed": 0,
                      "experiences_truncated": 0}
        self.timing = {"render": 0.0, "generate": 0.0, "parse": 0.0, "env": 0.0}

    # ------------------------------------------------------------------ episodes
    def _empty(self, task) -> HostEpisode:
        R, T, c = len(task), self.T, self.cfg
        z = lambda shape, dt, v=0: np.full((R,) + shape, v, dt)
        C = max(16, 12 * c.valid_actions_shown)
        return HostEpisode(obs=z((T + 1, c.obs_tokens), np.int32), obs_digest=z((T + 1,), np.int64),
                           choices=z((T + 1, C), np.int32), action=z((T, c.max_new_tokens), np.int32),
                           stepped=z((T,), bool), reward=z((T,), np.float32), active=z((T,), bool),
                           prompt=z((T, c.prompt_tokens), np.int32), prompt_len=z((T,), np.int32),
                           response=z((T, c.max_new_tokens), np.int32), response_len=z((T,), np.int32),
                           logprob=z((T, c.max_new_tokens), np.float32),
                           experience=z((self.D1, c.experience_tokens), np.int32),
                           exp_from=z((self.D1,), np.int32, -1), solved=z((), bool), done=z((), bool),
                           failed=z((), bool), num_steps=z((), np.int32), start=z((), np.int32),
                           task=np.asarray(task, np.int32), replay=z((), np.int32))

    def _observe(self, ep, r: int, t: int, out) -> None:
        ep.obs[r, t] = _ids(self.tok, out.observation, self.cfg.obs_tokens)
        ep.obs_digest[r, t] = digest(out.observation)
        task = out.observation if t == 0 else _text(self.tok, ep.obs[r, 0])
        shown = HF.rank_actions(out.valid_actions or (), task, self.cfg.valid_actions_shown)
        ep.choices[r, t] = _ids(self.tok, ", ".join(shown), ep.choices.shape[-1])

    def roots(self, task, keys, start_experience=None) -> Rollouts:
        task = np.asarray(task)
        ep = self._empty(task)
        if start_experience is not None:
            se = np.asarray(start_experience, np.int32)
            has = (se != 0).any(1)
            ep.experience[has, 0] = se[has]
            ep.exp_from[has, 0] = 0
        return self._run(self._reset(ep, task), keys)

    def _reset(self, ep: HostEpisode, task) -> HostEpisode:
        """Each row's first observation (its env reset); a row whose env cannot be run ends."""
        for r, s in enumerate(self.pool.step([StepRequest(int(self.tasks[k])) for k in task])):
            if s.out is None:
                ep.failed[r] = ep.done[r] = True
                self.stats["env_failed"] += 1
            else:
                self._observe(ep, r, 0, s.out)
        return ep

    def branches(self, parents, tau, experience, forbidden, keys, *, use_experience: bool,
                 use_mask: bool) -> Rollouts:
        if use_mask:
            raise ValueError("the host text interface has no forbidden-action mask; use the experience")
        tau = np.asarray(tau, np.int32)
        ep = jax.tree.map(lambda x: np.array(x), parents)
        R, T = len(tau), self.T
        after = np.arange(T)[None] >= tau[:, None]
        for k in ("stepped", "active"):
            getattr(ep, k)[after] = False
        for k in ("prompt_len", "response_len"):
            getattr(ep, k)[after] = 0
        ep.action[after] = 0
        ep.reward[after] = 0
        later = np.arange(T + 1)[None] > tau[:, None]
        ep.obs[later], ep.obs_digest[later], ep.choices[later] = 0, 0, 0
        rows = np.arange(R)
        if use_experience:
            if ((ep.exp_from >= 0).all(1)).any():
                raise ValueError(f"an episode already holds {self.D1} experiences (max_depth + 1)")
            free = (ep.exp_from < 0).argmax(1)
            ep.experience[rows, free] = np.asarray(experience, np.int32)
            ep.exp_from[rows, free] = tau
        ep = ep._replace(solved=np.zeros(R, bool), done=np.zeros(R, bool), failed=np.zeros(R, bool),
                         num_steps=tau.copy(), start=tau.copy(), replay=np.zeros(R, np.int32))
        return self._run(ep, keys)

    # ------------------------------------------------------------------ the loop
    def history(self, ep, r: int, t: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The env actions before turn t (the steps the env took) and the digests of the
        observations they led to, the first one included: what a replay must reproduce."""
        steps = [j for j in range(t) if ep.stepped[r, j]]
        return (tuple(_text(self.tok, ep.action[r, j]) for j in steps),
                (int(ep.obs_digest[r, 0]),) + tuple(int(ep.obs_digest[r, j + 1]) for j in steps))

    def play(self, task, actions) -> Rollouts:
        """Teacher forcing: row r answers its ``actions[r][t]`` at turn t, in the answer
        format (demonstrations rendered exactly as the policy's own turns)."""
        def respond(rows, t):
            ids = []
            for r, tt in zip(rows, t):
                a = actions[r][tt] if tt < len(actions[r]) else ""
                text = HF.bare_answer(a, self.agent.answer) if a else HF.NO_ACTION
                ids.append(self.tok.encode(text) + self.fmt.end_ids)
            return [np.asarray(i, np.int32) for i in ids], [np.zeros(len(i), np.float32) for i in ids]
        task = np.asarray(task)
        return self._run(self._reset(self._empty(task), task),
                         jax.random.split(jax.random.key(0), len(task)), respond)

    def _cut(self, toks: np.ndarray) -> int:
        return len(toks) if self.agent.answer == "code" else cut_response(self.tok, toks)

    def _run(self, ep: HostEpisode, keys, respond=None) -> Rollouts:
        T, cfg = self.T, self.cfg
        keys = jnp.asarray(keys)
        start = ep.num_steps.copy()
        pre = self.fmt.prefix_ids
        live = ~ep.solved & ~ep.done & (ep.num_steps < T)
        while live.any():
            rows = np.flatnonzero(live)
            t = ep.num_steps[rows]
            c0 = time.perf_counter()
            own = [self.fmt.ids(self.agent.turn_text(ep, r, int(tt))) for r, tt in zip(rows, t)]
            c1 = time.perf_counter()
            too_long = [len(o) for o in own if len(o) > cfg.prompt_tokens]
            if too_long:
                raise ValueError(f"a prompt of {max(too_long)} tokens exceeds host.format.prompt_tokens "
                                 f"= {cfg.prompt_tokens}; raise it or shorten history_length / obs_tokens")
            if respond is None:
                turn_keys = jax.vmap(jax.random.fold_in)(keys[rows], jnp.asarray(t))
                gen = self.policy.generate([pre + o for o in own], turn_keys,
                                           max_new_tokens=cfg.max_new_tokens,
                                           temperature=self.temperature, prefix_len=len(pre))
            else:
                gen = Generation(*respond(rows, t))
            c2 = time.perf_counter()
            reqs, req_rows = [], []
            for i, (r, tt) in enumerate(zip(rows, t)):
                toks = np.asarray(gen.tokens[i], np.int32)[: cfg.max_new_tokens]
                n = self._cut(toks)
                text = self.tok.decode(toks[:n], skip_special=True)
                act, ok = HF.parse_answer(text, self.agent.answer, cfg.think)
                ep.prompt[r, tt, : len(own[i])] = own[i]
                ep.prompt_len[r, tt] = len(own[i])
                ep.response[r, tt, :n], ep.response[r, tt, n:] = toks[:n], 0
                ep.logprob[r, tt, :n] = np.asarray(gen.logprobs[i])[:n]
                ep.response_len[r, tt] = n
                self.stats["prompt_tokens"] += len(own[i])
                self.stats["generated_tokens"] += len(toks)
                if ok:     # the env gets the action as stored (ids), so a replay sends the same
                    ep.action[r, tt] = _ids(self.tok, act, cfg.max_new_tokens)
                    hist, expect = self.history(ep, r, int(tt))
                    if tt == start[r] and tt > 0 and ep.replay[r] == 0:    # a branch's rollback
                        ep.replay[r] = len(hist)
                        self.stats["replay_steps"] += len(hist)
                    reqs.append(StepRequest(int(self.tasks[ep.task[r]]), hist, _text(self.tok, ep.action[r, tt]),
                                            expect))
                    req_rows.append((r, int(tt)))
                else:
                    self.stats["invalid"] += 1
                    ep.obs[r, tt + 1], ep.obs_digest[r, tt + 1] = ep.obs[r, tt], ep.obs_digest[r, tt]
                    ep.choices[r, tt + 1] = ep.choices[r, tt]
                    ep.reward[r, tt] = ep.reward[r, tt - 1] if tt else 0.0
            c3 = time.perf_counter()
            for (r, tt), s in zip(req_rows, self.pool.step(reqs) if reqs else []):
                self.stats["pool_replay_steps"] += s.replay_steps
                if s.out is None:
                    ep.failed[r] = ep.done[r] = True
                    self.stats["env_failed"] += 1
                    continue
                ep.stepped[r, tt] = True
                ep.reward[r, tt] = s.out.reward
                self._observe(ep, r, tt + 1, s.out)
                ep.solved[r], ep.done[r] = s.out.won, s.out.done or s.out.won
            c4 = time.perf_counter()
            for k, dt in zip(("render", "generate", "parse", "env"), (c1 - c0, c2 - c1, c3 - c2, c4 - c3)):
                self.timing[k] += dt
            self.stats["turns"] += len(rows)
            ep.active[rows, t] = True
            ep.num_steps[rows] += 1
            live = ~ep.solved & ~ep.done & (ep.num_steps < T)
        own = np.arange(T)[None] >= start[:, None]
        env_steps = (ep.stepped & own).sum(1) + ep.replay
        gen_tokens = np.where(own, ep.response_len, 0).sum(1)
        return Rollouts(ep, env_steps.astype(np.int64), gen_tokens.astype(np.int64))

    # ------------------------------------------------------------------ reflection
    def reflector(self, name: str, *, num_candidates: int, every: int):
        if name == FEEDBACK_REFLECTOR:
            return functools.partial(self._feedback_reflect, M=num_candidates)
        if name == SELF_REFLECTOR:
            return HostSelfReflector(self, num_candidates)
        raise ValueError(f"unknown reflector {name!r}; the host text interface has "
                         f"{[FEEDBACK_REFLECTOR, SELF_REFLECTOR]}")

    def _feedback_reflect(self, ep: HostEpisode, *, M: int) -> Reflection:
        """From the env's reward alone: the step after the last one that raised it (the
        first own step if none did) is where the attempt stopped progressing; then the
        steps before it, back to the rollout's start."""
        ep = jax.tree.map(np.asarray, ep)
        R = len(ep.num_steps)
        tau = np.full((R, M), -1, np.int32)
        for r in range(R):
            s, n = int(ep.start[r]), int(ep.num_steps[r])
            if ep.solved[r] or ep.failed[r] or n <= s:
                continue
            before = lambda j: float(ep.reward[r, j - 1]) if j else 0.0
            gains = [j for j in range(s, n) if ep.reward[r, j] > before(j)]
            first = min(gains[-1] + 1, n - 1) if gains else s
            cands = list(range(first, s - 1, -1))[:M]
            tau[r, : len(cands)] = cands
        return self._experiences(ep, tau, np.zeros_like(tau), self._feedback_text)

    def _feedback_text(self, ep, r, m, t):
        act = _text(self.tok, ep.action[r, t]) if ep.stepped[r, t] else HF.NO_ACTION
        res = self.agent.result_text(ep, r, t)
        return HF.experience_text(t, act, res, self.agent.answer)

    def _experiences(self, ep, tau, reason, text_of) -> Reflection:
        R, M = tau.shape
        exp = np.zeros((R, M, self.cfg.experience_tokens), np.int32)
        for r, m in zip(*np.nonzero(tau >= 0)):
            text = text_of(ep, r, m, int(tau[r, m]))
            exp[r, m] = _ids(self.tok, text, self.cfg.experience_tokens)
            self.stats["experiences_truncated"] += int(len(self.tok.encode(text)) > self.cfg.experience_tokens)
        return Reflection(np.asarray(tau, np.int32), exp, np.zeros((R, M, 1), bool),
                          np.asarray(reason, np.int32))


class HostSelfReflector(SelfReflector):
    """The policy reflects on its own host-env trajectory (``format.reflection_prompt``);
    counted as ``reflect.SelfReflector`` counts."""

    def prompt(self, ep: HostEpisode, r: int) -> str:
        a = self.s.agent
        n = int(ep.num_steps[r])
        steps = [HF.Step(a.action_text(ep, r, j), a.result_text(ep, r, j)) for j in range(n)]
        return HF.reflection_prompt(_text(a.tokenizer, ep.obs[r, 0]), steps, bool(ep.solved[r]))

    def text_of(self, texts: dict):
        return lambda ep, r, m, t: texts[(r, m)]
