"""A base policy that follows experience: on-policy (DAgger-style) behaviour-cloning data.

Plain BC examples name an alternative bad action but keep the demo action as the target, so
following an experience is never what is rewarded, and never in the states where LEAFE
needs it: those the policy itself reaches. Here, per round:

1. the policy rolls out once on demo-pool levels (never training or held-out levels);
2. the feedback reflector names the failed rollouts' bad step tau and writes the experience
   (which names the policy's own action a_tau);
3. each one is restarted at tau exactly as a Stage-1 branch is (the experience right before
   the revised action) and sampled once - which measures compliance: does a'_tau repeat
   a_tau, and P(a_tau) with the experience against P(a_tau) in the parent's own context;
4. the example: that branch context -> the exact solver's optimal action at tau (kept when
   the state is still solvable and the solver's action differs from a_tau), loss on that
   action only - the experience is *kept* in the context: this teaches reading it.

The base is then fine-tuned on the demonstrations plus these examples. ``following.json``
records each round's compliance (before its training) and the final one (after).
"""

from __future__ import annotations

import jax
import numpy as np

from leafe_jax.data.store import SftRecords
from leafe_jax.envs.sokoban.level import Level
from leafe_jax.envs.sokoban.solver import solve
from leafe_jax.interfaces.protocol import FEEDBACK_REFLECTOR
from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.interfaces.symbolic.interface import SymbolicSokoban


def following_examples(env, params, policy, levels: Level, key, *, temperature: float = 1.0):
    """``(SftRecords or None, stats)`` of one round on ``levels`` (see the module docstring)."""
    agent = SymbolicSokoban(env, params)
    sess = agent.session(policy, levels, max_depth=1, temperature=temperature)
    B = sess.num_tasks
    k_root, k_branch = jax.random.split(key)
    roots = sess.roots(np.arange(B), jax.random.split(k_root, B))
    eps = jax.tree.map(np.asarray, roots.episodes)
    refl = jax.device_get(sess.reflector(FEEDBACK_REFLECTOR, num_candidates=1, every=0)(roots.episodes))
    rows = np.flatnonzero((np.asarray(refl.tau[:, 0]) >= 0) & ~eps.solved)
    stats = {"rollouts": int(B), "solved": int(eps.solved.sum()), "branches": int(len(rows))}
    if not len(rows):
        return None, stats
    tau = np.asarray(refl.tau[rows, 0])
    parents = jax.tree.map(lambda x: x[rows], eps)
    br = sess.branches(parents, tau, np.asarray(refl.experience[rows, 0]),
                       np.asarray(refl.forbidden[rows, 0]), jax.random.split(k_branch, len(rows)),
                       use_experience=True, use_mask=False)
    bep = jax.tree.map(lambda x: np.asarray(x)[: len(rows)], br.episodes)
    r = np.arange(len(rows))
    a_old, a_new = parents.actions[r, tau], bep.actions[r, tau]
    with_exp = agent.action_distribution(policy, bep, tau, temperature)[r, a_old]
    without = agent.action_distribution(policy, parents, tau, temperature)[r, a_old]
    stats |= {"repeat_rate": float((a_new == a_old).mean()),
              "p_repeat_with_experience": float(with_exp.mean()),
              "p_repeat_without_experience": float(without.mean()),
              "compliance": float(without.mean() - with_exp.mean())}
    toks, masks, steps = [], [], []
    unsolvable = same = 0
    for i in r:
        t = int(tau[i])
        sol = solve(Level(grid=parents.states.grid[i, t], player=parents.states.player[i, t]),
                    env.height, env.width, max_nodes=200_000)
        if not sol.solved:
            unsolvable += 1
            continue
        if sol.actions[0] == a_old[i]:
            same += 1
            continue
        pos = int(bep.action_pos[i, t])
        seq = np.concatenate([bep.tokens[i, :pos], [E.ACT0 + sol.actions[0]]]).astype(np.int32)
        assert (seq[pos - E.EXP_LEN] == E.EXP) and not (seq == E.PAD).any()
        toks.append(seq)
        masks.append(np.arange(len(seq)) == pos)
        steps.append(t)
    stats |= {"examples": len(toks), "start_unsolvable": unsolvable, "solver_repeats_a_tau": same}
    if not toks:
        return None, stats
    return SftRecords.build(toks, masks, source="follow", step=np.asarray(steps)), stats
