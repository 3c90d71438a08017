"""Stage 1: reflective rollback trees, and the two alternatives at equal budget.

``explore(interface, policy, tasks, key, cfg, strategy)`` searches B tasks at once through
an agent interface (``interfaces.protocol``); every strategy is an entry of ``STRATEGIES``:

* ``rollback`` (LEAFE): a root rollout per task; each round, the failed nodes of the last
  round (depth < D) are reflected on (batched), each yields up to M children (distinct tau
  candidates, none repeating the (tau, experience) of a node on its path); a child restarts from the parent's step tau with the experience in its
  context, samples a'_tau and continues. Children are taken breadth-first until each task
  has spent K rollouts (root included). All tasks' children of a round are one batched call.
* ``independent``: K fresh rollouts per task.
* ``refine``: K attempts from the start; attempt k+1 carries the reflection on attempt k's
  failure as an experience before the first turn ("a later state to avoid").
* ablations of rollback: ``rollback_oracle`` (the interface's exact ``oracle`` reflector, an
  upper bound), ``rollback_self`` (the policy as its own reflector, as in the paper), ``rollback_mask`` (experience + forbidden-action mask at tau),
  ``rollback_mask_only`` (the mask without the experience).

The result is a ``tree.Tree`` of ``[B, N = K]`` arrays. ``order`` is the rollout's index in
its task's budget, so "solved within k" reads off the tree for every strategy.

Periodic reflection (``interrupt_every = R``, rollback and refine): every R steps of a
rollout the interface checks the trajectory so far (``Session.interrupt``) and stops a
rollout that is already lost there - it is recorded as a failure of that length, pays only
the steps before the stop, and is reflected on like any failure (the paper reflects
periodically as well as on failure). Independent sampling does not reflect, so it is not cut.

Budgets: with ``stop_at_first_success`` (default) a task that is solved gets no further
rollout under any strategy (independent and refine stop; rollback expands no node of a
solved task - children sampled in the same batched round as the first success still run
and are charged). ``replay_cost`` charges a branch its tau replay steps where the session
restores by snapshot (``Session.restores_by_snapshot``), as the paper's reset + replay pays.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from leafe_jax.configs import config, field
from leafe_jax.interfaces.protocol import FEEDBACK_REFLECTOR, Rollouts
from leafe_jax.leafe.tree import NO_PARENT, NO_ROLLBACK, Tree


@config
class ExploreConfig:
    budget: int = field(8, lo=1, doc="K: rollouts per task, root included")
    max_depth: int = field(3, lo=1, doc="D: nested rollbacks")
    children: int = field(2, lo=1, doc="M: children per failed node")
    use_experience: bool = True    # ablation: experience in context at tau
    use_mask: bool = False         # ablation: forbid the original action at tau
    reflect_every: int = field(0, lo=0, doc="R: also reflect every R steps (0: on failure only)")
    interrupt_every: int = field(0, lo=0, doc="reflect every R steps during a rollout and stop it "
                                              "where the interface says it is already lost "
                                              "(rollback, refine; 0: never)")
    temperature: float = field(1.0, lo=0, lo_open=True)
    stop_at_first_success: bool = field(True, doc="a solved task gets no further rollout")
    dedupe_path: bool = field(True, doc="a child never repeats the (tau, experience) of a node "
                                        "on its path")
    replay_cost: bool = field(False, doc="charge each branch tau env steps, as reset + replay "
                                         "would (sessions restoring by snapshot restore for free)")


def _rank_within(task: np.ndarray) -> np.ndarray:
    """Position of each entry among the entries of its task (``task`` sorted)."""
    return np.arange(len(task)) - np.searchsorted(task, task)


def _rows(n: int, like):
    return jax.tree.map(lambda x: (jnp if isinstance(x, jax.Array) else np).zeros(
        (n,) + x.shape[1:], x.dtype), like)


@jax.jit
def _scatter_device(store, flat_idx, new):
    return jax.tree.map(lambda x, y: x.at[flat_idx].set(y.astype(x.dtype)), store, new)


def _scatter(store, flat_idx, new):
    if all(isinstance(x, jax.Array) for x in jax.tree.leaves(store)):
        return _scatter_device(store, jnp.asarray(flat_idx), new)

    def put(x, y):
        x = np.array(x)
        x[flat_idx] = np.asarray(y)
        return x
    return jax.tree.map(put, store, new)


class _Search:
    """The tree under construction: B tasks x K slots, filled breadth-first."""

    def __init__(self, session, key, cfg: ExploreConfig, progress: bool, desc: str):
        B, K = session.num_tasks, cfg.budget
        self.session, self.cfg, self.B, self.K = session, cfg, B, K
        self.task_keys = jax.random.split(key, B)
        self.t = {k: np.zeros((B, K), np.int32) for k in ("parent", "depth", "order", "tau",
                                                           "reason", "env_steps", "tokens")}
        self.t["parent"][:] = NO_PARENT
        self.t["tau"][:] = NO_ROLLBACK
        self.valid = np.zeros((B, K), bool)
        self.solved = np.zeros((B, K), bool)
        self.experience = np.zeros((B, K) + tuple(session.experience_shape), np.int32)
        self.forbidden = np.zeros((B, K, session.num_actions), bool)
        self.used = np.zeros(B, np.int32)
        self.store = None
        self.bar = tqdm(total=B * K, desc=desc, disable=not progress)

    def keys(self, task):
        """The key of each new rollout: its task's key folded with the slot it will take."""
        order = self.used[task] + _rank_within(task)
        return jax.vmap(jax.random.fold_in)(self.task_keys[task], jnp.asarray(order))

    def record(self, task, out: Rollouts, **fields) -> np.ndarray:
        """Store rollouts of ``task`` (sorted; a task may repeat) in its next free slots;
        returns their flat slot indices."""
        slot = self.used[task] + _rank_within(task)
        flat = task * self.K + slot
        if self.store is None:
            self.store = _rows(self.B * self.K, out.episodes)
        self.store = _scatter(self.store, flat, out.episodes)
        self.valid[task, slot] = True
        self.solved[task, slot] = np.asarray(out.episodes.solved)
        self.t["order"][task, slot] = slot
        self.t["env_steps"][task, slot] = out.env_steps
        self.t["tokens"][task, slot] = out.tokens
        for k, v in fields.items():
            arr = self.t[k] if k in self.t else {"experience": self.experience,
                                                 "forbidden": self.forbidden}[k]
            arr[task, slot] = v
        np.add.at(self.used, task, 1)
        self.bar.update(len(task))
        return flat

    def gather(self, flat):
        conv = jnp.asarray if isinstance(jax.tree.leaves(self.store)[0], jax.Array) else np.asarray
        return jax.tree.map(lambda x: x[conv(flat)], self.store)

    def tree(self) -> Tree:
        self.bar.close()
        B, K = self.B, self.K
        return Tree(valid=self.valid, parent=self.t["parent"], depth=self.t["depth"],
                    order=self.t["order"], tau=self.t["tau"], reason=self.t["reason"],
                    experience=self.experience, forbidden=self.forbidden, solved=self.solved,
                    env_steps=self.t["env_steps"], tokens=self.t["tokens"],
                    episodes=jax.tree.map(lambda x: x.reshape((B, K) + x.shape[1:]), self.store))


def _interrupted(s: _Search, out: Rollouts) -> Rollouts:
    """Periodic reflection during the rollouts (``interrupt_every``): each is cut where the
    session's check stops it, and pays only the steps and tokens before the stop."""
    if not s.cfg.interrupt_every:
        return out
    if not hasattr(s.session, "interrupt"):
        raise ValueError("interrupt_every needs a session that can stop a rollout (interrupt)")
    return s.session.interrupt(out, s.cfg.interrupt_every)


def _open(s: _Search, task: np.ndarray) -> np.ndarray:
    """bool per entry: the task may still spend rollouts (not solved, or stopping is off)."""
    return ~s.solved[task].any(1) if s.cfg.stop_at_first_success else np.ones(len(task), bool)


def _independent(s: _Search, reflect) -> None:
    every = np.arange(s.B)
    for _ in range(s.K):
        todo = every[_open(s, every)]
        if not len(todo):
            break
        s.record(todo, s.session.roots(todo, s.keys(todo)))


def _refine(s: _Search, reflect) -> None:
    every = np.arange(s.B)
    start_exp = np.zeros((s.B,) + s.experience.shape[2:], np.int32)
    for k in range(s.K):
        todo = every[_open(s, every)]
        if not len(todo):
            break
        out = _interrupted(s, s.session.roots(todo, s.keys(todo), start_experience=start_exp[todo]))
        s.record(todo, out, experience=start_exp[todo], depth=np.full(len(todo), k),
                 parent=np.full(len(todo), k - 1))
        refl = reflect(out.episodes)
        new = np.asarray(refl.experience[:, 0])
        # a success needs no reflection; a failure with nothing to say keeps the last one
        has = (np.asarray(refl.tau[:, 0]) >= 0).reshape((-1,) + (1,) * (new.ndim - 1))
        start_exp[todo] = np.where(has, new, start_exp[todo])


def _new_on_path(s: _Search, task, slot, tau, exp) -> np.ndarray:
    """bool per candidate: no node on the path from ``slot`` to its root was made by the same
    (tau, experience) - a child never repeats an ancestor's correction."""
    keep = np.ones(len(task), bool)
    node = slot.copy()
    flat = lambda x: x.reshape(len(x), int(np.prod(x.shape[1:])))    # (no candidates: 0 rows)
    for _ in range(s.cfg.max_depth + 1):
        live = node >= 0
        at = np.maximum(node, 0)
        same = ((s.t["tau"][task, at] == tau)
                & (flat(s.experience[task, at]) == flat(exp)).all(1) & live)
        keep &= ~same
        node = np.where(live, s.t["parent"][task, at], -1)
    return keep


def _rollback(s: _Search, reflect) -> None:
    every = np.arange(s.B)
    frontier = s.record(every, _interrupted(s, s.session.roots(every, s.keys(every))))
    A, exp_shape = s.forbidden.shape[-1], s.experience.shape[2:]
    for d in range(1, s.cfg.max_depth + 1):
        refl = jax.device_get(reflect(s.gather(frontier)))                # [F, M]
        f_task, f_slot = frontier // s.K, frontier % s.K
        M = refl.tau.shape[1]
        ok = ((refl.tau >= 0) & ~s.solved[f_task, f_slot][:, None]
              & _open(s, f_task)[:, None]).reshape(-1)
        # breadth-first within each task: frontier order, then candidate rank
        c = {"task": np.repeat(f_task, M)[ok], "par": np.repeat(frontier, M)[ok],
             "tau": refl.tau.reshape(-1)[ok], "exp": refl.experience.reshape((-1,) + exp_shape)[ok],
             "forb": refl.forbidden.reshape(-1, A)[ok], "reason": refl.reason.reshape(-1)[ok]}
        if s.cfg.dedupe_path:
            fresh = _new_on_path(s, c["task"], c["par"] % s.K, c["tau"], c["exp"])
            c = {k: v[fresh] for k, v in c.items()}
        srt = np.argsort(c["task"], kind="stable")
        c = {k: v[srt] for k, v in c.items()}
        keep = _rank_within(c["task"]) < (s.K - s.used[c["task"]])
        if not keep.any():
            break
        c = {k: v[keep] for k, v in c.items()}
        out = s.session.branches(s.gather(c["par"]), c["tau"], c["exp"], c["forb"], s.keys(c["task"]),
                                 use_experience=s.cfg.use_experience, use_mask=s.cfg.use_mask)
        out = _interrupted(s, out)
        if s.cfg.replay_cost and getattr(s.session, "restores_by_snapshot", False):
            out = out._replace(env_steps=np.asarray(out.env_steps) + c["tau"])
        frontier = s.record(c["task"], out, parent=c["par"] % s.K, depth=np.full(len(c["task"]), d),
                            tau=c["tau"], reason=c["reason"], experience=c["exp"], forbidden=c["forb"])


@dataclasses.dataclass(frozen=True, kw_only=True)
class Strategy:
    """A Stage-1 entry: how the budget is spent, which reflector, which ablation switches."""
    expand: Callable[[_Search, Callable], None]
    reflector: str = FEEDBACK_REFLECTOR
    overrides: tuple = ()             # (ExploreConfig field, value) pairs
    doc: str = ""


STRATEGIES: dict[str, Strategy] = {
    "rollback": Strategy(expand=_rollback, doc="LEAFE: reflect, roll back to tau, branch"),
    "independent": Strategy(expand=_independent, doc="K fresh rollouts"),
    "refine": Strategy(expand=_refine, doc="K attempts from the start, each with the last reflection"),
    "rollback_oracle": Strategy(expand=_rollback, reflector="oracle",
                                doc="exact-solver reflector: an upper bound"),
    "rollback_self": Strategy(expand=_rollback, reflector="self",
                              doc="the policy reflects on its own trajectories"),
    "rollback_mask": Strategy(expand=_rollback, overrides=(("use_mask", True),),
                              doc="experience + forbidden-action mask"),
    "rollback_mask_only": Strategy(expand=_rollback,
                                   overrides=(("use_mask", True), ("use_experience", False)),
                                   doc="the mask without the experience"),
}


def resolve(strategy: str, cfg: ExploreConfig) -> tuple[Strategy, ExploreConfig]:
    """The registry entry and the config with its ablation switches applied."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown Stage-1 strategy {strategy!r}; known: {sorted(STRATEGIES)}")
    st = STRATEGIES[strategy]
    cfg = dataclasses.replace(cfg, **dict(st.overrides))
    if st.expand is _rollback and not (cfg.use_experience or cfg.use_mask):
        raise ValueError("rollback needs the experience, the mask, or both")
    return st, cfg


def explore(interface, policy, tasks, key, cfg: ExploreConfig, strategy: str = "rollback", *,
            progress: bool = True, stats: dict | None = None) -> Tree:
    """Stage-1 exploration of the B tasks ``tasks`` under ``strategy`` (see ``STRATEGIES``).
    ``stats`` (a dict) receives the reflector's own counters where it keeps any, and the
    session's (``session``: turns, invalid answers, tokens, seconds per part of the loop)."""
    st, cfg = resolve(strategy, cfg)
    session = interface.session(policy, tasks, max_depth=cfg.max_depth, temperature=cfg.temperature)
    if session.num_tasks == 0:
        raise ValueError("no tasks to explore")
    reflect = session.reflector(st.reflector, num_candidates=cfg.children, every=cfg.reflect_every)
    search = _Search(session, key, cfg, progress, f"stage 1 ({strategy})")
    st.expand(search, reflect)
    if stats is not None and hasattr(reflect, "stats"):
        stats["reflector"] = dict(reflect.stats)
    if stats is not None and hasattr(reflect, "task_tokens"):  # a model reflecting: its tokens
        stats["task_reflection_tokens"] = np.asarray(reflect.task_tokens).tolist()
    if stats is not None and hasattr(session, "stats"):      # e.g. the text agent's turns
        stats["session"] = dict(session.stats) | {k: round(v, 3) for k, v in
                                                   getattr(session, "timing", {}).items()}
    return search.tree()
