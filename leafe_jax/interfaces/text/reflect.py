"""The text policy as its own reflector (``format.reflection_prompt`` /
``parse_reflection``)."""

from __future__ import annotations

import jax
import numpy as np

from leafe_jax.interfaces.protocol import Reflection
from leafe_jax.interfaces.text import format as F
from leafe_jax.interfaces.text.episode import TextEpisode, _obs


class SelfReflector:
    """The policy reflects on its own trajectory (``format.reflection_prompt``): up to M
    samples per failed episode, the distinct valid ones (by tau) kept in order. Answers that
    do not parse, name a step outside the rollout's own steps, or say no rollback is
    needed are counted in ``stats`` and give no candidate - never replaced by another
    reflector's answer. ``task_tokens`` [tasks]: the reflection tokens each task's failures
    cost (the model writes them: they are part of LEAFE's budget)."""

    def __init__(self, session, num_candidates: int, seed: int = 0):
        self.s, self.M = session, num_candidates
        self.key = jax.random.key(seed)
        self.stats = {"episodes": 0, "asked": 0, "ok": 0, "none": 0, "malformed": 0,
                      "out_of_range": 0, "duplicate": 0, "prompt_tokens": 0, "generated_tokens": 0}
        self.calls = 0
        self.task_tokens = np.zeros(session.num_tasks, np.int64)

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
                self.task_tokens[int(ep.task[r])] += len(gen.tokens[i])
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
        return s._experiences(ep, tau, reason, self.text_of(texts))

    def text_of(self, texts: dict):
        """The experience of candidate (r, m) in the session's ``_experiences`` signature."""
        return lambda r, m, a, row, col: texts[(r, m)]


