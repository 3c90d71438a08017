"""A language model acting in a host-side environment through text (``protocol.AgentInterface``).

The environment runs in worker processes (``envs.host.pool.EnvPool``: ScienceWorld,
TextWorld Commonsense, the code interpreter, or any ``HostEnv``) and cannot be snapshotted:
a rollback branch keeps its parent's record up to tau and the pool re-reaches that point by
reset + replay of the parent's actions, checked against the stored observation digests and
charged to the branch's env steps (``restores_by_snapshot = False``). Everything the model
sees is rendered from the episode record (``format.turn_prompt``), so a branch re-renders
its parent's prompts exactly; the experience is shown from tau on, right before the answer
request. Stage 2 encodes each turn as (prompt without experiences -> response + end of
turn), the loss on the response; the reflectors are the reward-based ``feedback`` one and
the model itself (``self``).

Tasks are indices into the env's own task list (``num_tasks``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.envs.host.pool import EnvPool
from leafe_jax.envs.host.protocol import EnvSpec
from leafe_jax.interfaces.chunks import resumable, run_tag
from leafe_jax.interfaces.host import format as HF
from leafe_jax.interfaces.host.session import HostEpisode, HostSession, _text
from leafe_jax.interfaces.text.episode import ChatFormat


class HostTextAgent:
    def __init__(self, spec: EnvSpec, tokenizer, cfg: HF.HostTextConfig = HF.HostTextConfig(), *,
                 workers: int = 2, step_timeout_s: float = 60.0, pool: EnvPool | None = None):
        cls = spec.resolve()
        for attr in ("instruction", "answer"):
            if not hasattr(cls, attr):
                raise ValueError(f"{spec.factory} has no class attribute {attr!r} (see HostEnv)")
        if cls.answer not in ("action", "code"):
            raise ValueError(f"{spec.factory}.answer must be 'action' or 'code', got {cls.answer!r}")
        self.spec, self.tokenizer, self.cfg = spec, tokenizer, cfg
        self.instruction, self.answer = cls.instruction, cls.answer
        self.fmt = ChatFormat(tokenizer, self.instruction)
        self.pool = pool if pool is not None else EnvPool(spec, workers, step_timeout_s=step_timeout_s)
        self.num_tasks = self.pool.num_tasks

    def close(self) -> None:
        self.pool.close()

    def session(self, policy, tasks, *, max_depth: int, temperature: float) -> HostSession:
        tasks = np.asarray(tasks, np.int64)
        if tasks.ndim != 1 or (tasks < 0).any() or (tasks >= self.num_tasks).any():
            raise ValueError(f"tasks must be indices into the env's {self.num_tasks} tasks")
        if policy is not None and policy.tokenizer.vocab_size != self.tokenizer.vocab_size:
            raise ValueError("the policy's tokenizer is not the interface's")
        return HostSession(self, policy, tasks, max_depth, temperature)

    # ------------------------------------------------------------------ rendering
    def action_text(self, ep, r: int, t: int) -> str:
        return _text(self.tokenizer, ep.action[r, t]) if ep.stepped[r, t] else HF.NO_ACTION

    def result_text(self, ep, r: int, t: int) -> str:
        """What came of turn t: the env's next observation, or why nothing happened."""
        if ep.stepped[r, t]:
            return _text(self.tokenizer, ep.obs[r, t + 1])
        return HF.no_action_result(self.answer)

    def turn_text(self, ep, r: int, t: int, *, with_experience: bool = True) -> str:
        h = self.cfg.history_length
        past = [HF.Step(self.action_text(ep, r, j), self.result_text(ep, r, j))
                for j in range(max(0, t - h), t)] if h else []
        exps = []
        if with_experience:
            exps = [_text(self.tokenizer, ep.experience[r, k]) for k in range(ep.exp_from.shape[1])
                    if 0 <= ep.exp_from[r, k] <= t]
        choices = _text(self.tokenizer, ep.choices[r, t])
        valid = [c for c in choices.split(", ") if c] if choices else []
        return HF.turn_prompt(_text(self.tokenizer, ep.obs[r, 0]), past, t, exps, valid, self.answer,
                              self.cfg)

    # ------------------------------------------------------------------ Stage 2
    def sft_examples(self, episode, first: int, last: int, *, action_only: bool = False) -> list:
        """One (tokens, loss_mask) per turn first..last whose answer the env took: the prompt
        without experiences -> the response + end of turn (the loss on those).
        ``action_only``: the response replaced by the bare answer (the action tag, or the
        program in a code block)."""
        one = jax.tree.map(lambda x: np.asarray(x)[None], episode)
        out = []
        for t in range(first, last + 1):
            if not episode.stepped[t]:
                continue
            prompt = self.fmt.prefix_ids + self.fmt.ids(self.turn_text(one, 0, t, with_experience=False))
            if action_only:
                body = self.tokenizer.encode(HF.bare_answer(self.action_text(one, 0, t), self.answer))
            else:
                body = [int(i) for i in episode.response[t, : int(episode.response_len[t])]]
            toks = np.asarray(prompt + body + self.fmt.end_ids, np.int32)
            mask = np.zeros(len(toks), bool)
            mask[len(prompt):] = True
            out.append((toks, mask))
        return out

    def bc_records(self, tasks):
        """Behaviour-cloning examples of the env's gold demonstrations, played through the
        agent's own loop by teacher forcing (each example a prompt exactly as the policy
        will see it); demonstrations longer than the step limit, with an answer over the
        response budget, or that do not win here (e.g. a dataset solution failing its own
        tests on this interpreter) are left out and counted."""
        from leafe_jax.data.store import SftRecords
        from leafe_jax.interfaces.text.pretrain import BC_SOURCE
        tasks = np.asarray(tasks, np.int64)
        env = self.spec.make()
        try:
            if not hasattr(env, "demonstration"):
                raise ValueError(f"{self.spec.factory} has no demonstrations for a BC warm-up "
                                 "(set the base's demo_levels = 0)")
            demos = [env.demonstration(int(t)) for t in tasks]
        finally:
            env.close()
        short = np.array([all(len(self.tokenizer.encode(HF.bare_answer(a, self.answer))) < self.cfg.max_new_tokens
                              for a in d)
                          for d in demos])
        fits = np.array([0 < len(d) <= self.cfg.max_steps for d in demos]) & short
        session = self.session(None, tasks, max_depth=0, temperature=1.0)
        idx = np.flatnonzero(fits)
        ep = session.play(idx, [demos[i] for i in idx]).episodes if len(idx) else None
        ex, won = [], 0
        for k in range(len(idx)):
            if ep.solved[k]:
                won += 1
                one = jax.tree.map(lambda x: x[k], ep)
                ex += self.sft_examples(one, 0, int(one.num_steps) - 1)
        if not ex:
            raise ValueError(f"no demonstration of the {len(tasks)} demo tasks wins within "
                             f"{self.cfg.max_steps} steps with answers under max_new_tokens = "
                             f"{self.cfg.max_new_tokens} tokens: nothing to warm up on")
        recs = SftRecords.build([t for t, _ in ex], [m for _, m in ex], source=BC_SOURCE)
        return recs, {"levels": int(len(tasks)), "answers_too_long": int((~short).sum()),
                      "within_max_steps": int(fits.sum()),
                      "demonstrations_won": won, "examples": len(ex),
                      "mean_demonstration": float(np.mean([len(demos[i]) for i in idx])) if len(idx) else 0.0}

    def sft_example(self, episode, first: int, last: int):
        if first != last:
            raise ValueError("a host episode's turns are separate chats: use sft_examples")
        out = self.sft_examples(episode, first, last)
        if not out:
            raise ValueError(f"turn {first}'s answer held no action: no example")
        return out[0]

    def action(self, episode, t: int) -> str:
        return self.action_text(jax.tree.map(lambda x: np.asarray(x)[None], episode), 0, t)

    def episode_like(self) -> HostEpisode:
        return HostEpisode(**{f: 0 for f in HostEpisode._fields})

    # ------------------------------------------------------------------ evaluation
    def success(self, policy, tasks, n: int, key, *, temperature: float = 1.0,
                progress: bool = True, batch_size: int | None = None,
                checkpoint: str | None = None) -> np.ndarray:
        """``success[B, n]``: n sampled episodes per task from the start, in chunks of
        ``batch_size`` (default: the pool's workers - more episodes than workers make the
        pool replay episodes whose worker it gave away); ``checkpoint`` keeps finished chunks
        (a killed evaluation resumes
        with the same result). An episode whose env could not be run counts as a failure
        (and is counted in the session's ``env_failed``)."""
        tasks = np.asarray(tasks, np.int64)
        B = len(tasks)
        if B == 0:
            raise ValueError("no tasks: nothing to evaluate")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        total = B * n
        batch = min(batch_size or len(self.pool.workers), total)
        session = self.session(policy, tasks, max_depth=0, temperature=temperature)
        idx_of = np.repeat(np.arange(B), n)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(total))
        tag = run_tag(tasks, n, key, temperature, batch) + f":{self.spec.factory}:{self.spec.kwargs}"
        out = resumable(total, batch, tag, checkpoint,
                        lambda idx: session.roots(idx_of[idx], keys[idx]).episodes.solved,
                        desc="pass@k rollouts (host)", progress=progress)
        self.last_session_stats = dict(session.stats)
        return out.reshape(B, n)

    # ------------------------------------------------------------------ reports
    def describe_task(self, episodes, task: int) -> str:
        return HF.snippet(_text(self.tokenizer, np.asarray(episodes.obs[task, 0, 0])), 400)

    def describe_rollout(self, episode) -> str:
        one = jax.tree.map(lambda x: np.asarray(x)[None], episode)
        s, n = int(episode.start), int(episode.num_steps)
        return " | ".join(HF.snippet(self.action_text(one, 0, t), 40) for t in range(s, n))

    def describe_experience(self, experience) -> str:
        return _text(self.tokenizer, experience)
