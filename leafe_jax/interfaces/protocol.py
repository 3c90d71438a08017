"""The agent-interface seam: what LEAFE's search, distillation and evaluation need from an
agent (a policy acting in an environment), and nothing more.

The method (``leafe_jax.leafe``), the baselines' evaluation and the experiment runner talk
to agents only through these protocols, so a new kind of agent - the symbolic on-device
Sokoban agent (``interfaces.symbolic``, the first implementation), a language model acting
through text, a host-side environment rolled back by reset + replay - plugs in without
touching the search. ``tests/test_interface_seam.py`` runs a host-side text environment with
a scripted policy through the same stages.

What an implementer provides
----------------------------
``AgentInterface`` (stateless; one per kind of agent / environment):

* ``session(policy, tasks, *, max_depth, temperature) -> Session`` binds a policy to a batch
  of B tasks for one Stage-1 search (``max_depth`` bounds how many experiences a context
  must hold).
* ``sft_example(episode, first, last) -> (tokens int32 [L], loss_mask bool [L])``: one
  episode (host numpy, unbatched) encoded as a training sequence *with every experience
  removed*, ending with the action of step ``last``; the loss mask marks the action tokens
  of steps ``first..last``. Rehearsal and experience-to-policy data are both built with it.
  optional ``sft_examples(episode, first, last) -> [(tokens, loss_mask), ...]``: where an
  interface's turns are separate prompts (a text agent whose prompt carries its own history
  window), one example per turn; Stage 2 uses it instead of ``sft_example`` when present.
* ``action(episode, t)``: the action taken at step ``t`` (compared with ``==``: e2p only
  where a'_tau differs from the parent's a_tau; compliance).
* optional ``action_distribution(policy, episodes, t, temperature) -> float [R, A]``: the
  policy's distribution over actions at step ``t[r]`` given episode r's own context (exact
  compliance in ``leafe.diagnostics``; without it only the sampled repeat rate is reported).
* ``success(policy, tasks, n, key, *, temperature, progress, checkpoint=None) -> bool [B, n]``:
  ``n`` sampled episodes per task from the start (Pass@k evaluation); ``checkpoint`` (a
  file path) keeps finished work so a killed evaluation resumes with the same result (an
  implementation may ignore it).
* ``episode_like()``: a pytree with the structure of the session's episodes (to load trees).
* ``describe_task(episodes, task) -> str``, ``describe_rollout(episode) -> str`` and
  ``describe_experience(experience) -> str`` for the rendered trees in reports.

``Session`` (a bound policy + tasks):

* ``num_tasks``, ``experience_shape`` (one experience's array shape), ``num_actions`` (the
  width of a forbidden-action mask), ``restores_by_snapshot`` (True: a branch restores the
  env for free, so the search's ``replay_cost`` option charges its tau replay steps; False:
  the session replays and charges them itself).
* ``roots(task, keys, start_experience=None) -> Rollouts``: one rollout from the start for
  each row (``task`` int [R], possibly repeated; ``keys`` [R] PRNG keys); a
  ``start_experience`` [R, *experience_shape] (rows may be empty) is put in the context
  before the first turn (iterative refinement).
* ``branches(parents, tau, experience, forbidden, keys, *, use_experience, use_mask) ->
  Rollouts``: restart each parent episode at step ``tau`` - restore the env to its state
  before action ``tau`` (a snapshot gather, or reset + replay charged to ``env_steps``), keep
  the context up to tau, add the experience (if ``use_experience``), forbid the masked
  actions (if ``use_mask``), sample a'_tau and continue. The returned episodes are whole
  episodes from step 0 (the parent's steps before tau, then the branch's).
* ``reflector(name, *, num_candidates, every) -> Callable[[episodes], Reflection]``: the
  interface's reflectors (``"feedback"`` at least); an unknown name is a ``ValueError``.
* optional ``interrupt(rollouts, every) -> Rollouts``: the rollouts as if a reflection every
  ``every`` steps had stopped those already lost (cut there, charged only what came before);
  needed by the search's ``interrupt_every``.

Episodes are pytrees of arrays with a leading row axis (device or host arrays) holding at
least ``solved`` bool [R], ``num_steps`` int [R] (the episode's length in steps) and ``start``
int [R] (the first step the rollout sampled itself: tau for branches, 0 otherwise). The
search stores them in the tree and gathers rows of them back for branching and reflection.
Same key, same prefix = same continuation: an interface's randomness must come from the
keys it is given.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol

import numpy as np

FEEDBACK_REFLECTOR = "feedback"


class Reflection(NamedTuple):
    """Up to M rollback candidates per episode (best first; ``tau = -1`` = an empty slot)."""
    tau: Any                # int32 [R, M]  rollback step
    experience: Any         # int32 [R, M, *experience_shape]
    forbidden: Any          # bool [R, M, A]  actions masked at tau (mask ablation)
    reason: Any             # int32 [R, M]  reason code (0 when none)


class Rollouts(NamedTuple):
    episodes: Any           # pytree, leading axis R (see the module docstring)
    env_steps: np.ndarray   # int [R]  env steps this rollout spent (replay steps included)
    tokens: np.ndarray      # int [R]  tokens the policy processed (prefill + generated)


class Session(Protocol):
    num_tasks: int
    experience_shape: tuple
    num_actions: int
    restores_by_snapshot: bool

    def roots(self, task: np.ndarray, keys, start_experience: np.ndarray | None = None) -> Rollouts: ...

    def branches(self, parents, tau: np.ndarray, experience: np.ndarray, forbidden: np.ndarray,
                 keys, *, use_experience: bool, use_mask: bool) -> Rollouts: ...

    def reflector(self, name: str, *, num_candidates: int, every: int) -> Callable[[Any], Reflection]: ...


class AgentInterface(Protocol):
    def session(self, policy, tasks, *, max_depth: int, temperature: float) -> Session: ...

    def sft_example(self, episode, first: int, last: int) -> tuple[np.ndarray, np.ndarray]: ...

    def action(self, episode, t: int) -> Any: ...      # the action taken at step t (compared by ==)

    def success(self, policy, tasks, n: int, key, *, temperature: float,
                progress: bool = True, checkpoint: str | None = None) -> np.ndarray: ...

    def episode_like(self) -> Any: ...

    def describe_task(self, episodes, task: int) -> str: ...

    def describe_rollout(self, episode) -> str: ...

    def describe_experience(self, experience) -> str: ...
