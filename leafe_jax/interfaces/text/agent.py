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
import re

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.data.loader import round_up
from leafe_jax.envs.sokoban import constants as C
from leafe_jax.envs.sokoban.env import EnvState, Sokoban
from leafe_jax.envs.sokoban.level import Level, level_to_ascii
from leafe_jax.interfaces.chunks import resumable, run_tag
from leafe_jax.interfaces.text import format as F
from leafe_jax.interfaces.text.episode import (STEP_INFO, ChatFormat, TextEpisode, _obs, masked_logprobs_jit,
                                              truncate)
from leafe_jax.interfaces.text.session import ORACLE_REFLECTOR, SELF_REFLECTOR, TextSession

__all__ = ["TextSokoban", "TextSession", "TextEpisode", "ChatFormat", "truncate",
           "SELF_REFLECTOR", "ORACLE_REFLECTOR"]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


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
        # the longest canonical answer (+ end of turn) must fit the response budget, or every
        # demonstration and every well-formed answer would be cut before its </action>
        need = max(len(self.tokenizer.encode(F.ANSWER.format(action=a))) for a in F.ACTIONS) + 1
        if self.cfg.max_new_tokens < need:
            raise ValueError(f"text.format.max_new_tokens = {self.cfg.max_new_tokens} cannot hold "
                             f"an answer: '{F.ANSWER.format(action=F.ACTIONS[0])}' and the end of "
                             f"the turn take up to {need} tokens of this tokenizer")

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
        normalised over the four (P(action | a well-formed answer)). Teacher-forced forwards
        with logits at the answer tokens only and the shared instruction prefix computed once
        (``masked_logprobs(prefix=...)``), ``chunk`` sequences at a time. None for a
        policy without a ``model`` to score with (a scripted stand-in)."""
        if not hasattr(policy, "model"):
            return None
        ep = jax.tree.map(np.asarray, episodes)
        t = np.asarray(t)
        answers = [self.fmt.tok.encode(F.ANSWER.format(action=w)) + self.fmt.end_ids for w in F.ACTIONS]
        seqs, spans = [], []
        for r in range(len(t)):
            prompt = ep.prompt[r, t[r], : ep.prompt_len[r, t[r]]].tolist()
            for a in answers:
                seqs.append(prompt + a)
                spans.append((len(prompt), len(prompt) + len(a)))
        score = np.zeros(len(seqs), np.float64)
        width = max(len(a) for a in answers)
        prefix = jnp.asarray(self.fmt.prefix_ids, jnp.int32)
        for i in range(0, len(seqs), chunk):
            part = seqs[i: i + chunk]
            L = round_up(max(len(x) for x in part), 64)
            arr = np.zeros((chunk, L), np.int32)
            mask = np.zeros((chunk, L), bool)
            for j, x in enumerate(part):
                arr[j, : len(x)] = x
                mask[j, slice(*spans[i + j])] = True
            lp = np.asarray(masked_logprobs_jit(policy.model, jnp.asarray(arr), jnp.asarray(mask),
                                                jnp.float32(temperature), width, prefix))
            for j in range(len(part)):
                a, b = spans[i + j]
                score[i + j] = lp[j, : b - a].sum()
        score = score.reshape(len(t), len(answers))
        p = np.exp(score - score.max(1, keepdims=True))
        return (p / p.sum(1, keepdims=True)).astype(np.float32)

    # ------------------------------------------------------------------ Stage-2 data
    def sft_examples(self, episode, first: int, last: int, *, action_only: bool = False) -> list:
        """One (tokens, loss_mask) per turn first..last: the whole prompt of turn t rendered
        *without* experiences, then the response of turn t and the end-of-turn token (the
        loss covers exactly those). Turns whose answer was invalid (no admissible action
        parsed) are left out: a successful trajectory's no-op answers teach nothing but the
        wrong format. ``action_only``: the response replaced by its bare
        ``<action>word</action>`` (the thinking, which may quote the experience, dropped)."""
        one = jax.tree.map(lambda x: np.asarray(x)[None], episode)
        out = []
        for t in range(first, last + 1):
            if not episode.valid[t]:
                continue
            prompt = self.fmt.prefix_ids + self.fmt.ids(self.turn_text(one, 0, t, with_experience=False))
            if action_only:
                body = self.tokenizer.encode(F.ANSWER.format(action=F.ACTIONS[int(episode.actions[t])]))
            else:
                body = [int(i) for i in episode.response[t, : int(episode.response_len[t])]]
            resp = body + self.fmt.end_ids
            toks = np.asarray(prompt + resp, np.int32)
            mask = np.zeros(len(toks), bool)
            mask[len(prompt):] = True
            out.append((toks, mask))
        return out

    def quotes_experience(self, episode, t: int, min_words: int = 4) -> bool | None:
        """Whether turn t's reasoning (the response outside ``<action>...</action>``) repeats
        an experience shown at t: a run of ``min_words`` words in common (the whole
        experience if it is shorter). ``None`` when there is no reasoning to quote with
        (thinking off) or no experience shown."""
        text = self.tokenizer.decode(episode.response[t, : int(episode.response_len[t])],
                                     skip_special=True)
        text = re.sub(r"<action>.*?(</action>|$)", " ", text, flags=re.S | re.I)
        reasoning = _words(re.sub(r"</?think>", " ", text, flags=re.I))
        shown = [self.fmt.experience_text(episode.experience[k])
                 for k in range(episode.exp_from.shape[0]) if 0 <= episode.exp_from[k] <= t]
        if not reasoning or not shown:
            return None
        have = {tuple(reasoning[i: i + n]) for n in range(1, min_words + 1)
                for i in range(len(reasoning) - n + 1)}
        for e in map(_words, shown):
            n = min(min_words, len(e))
            if n and any(tuple(e[i: i + n]) in have for i in range(len(e) - n + 1)):
                return True
        return False

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
        out = resumable(total, batch, run_tag(tasks, n, key, temperature, batch) + ":text", checkpoint,
                        lambda idx: session.roots(level_idx[idx], keys[idx]).episodes.solved,
                        desc="pass@k rollouts (text)", progress=progress)
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
