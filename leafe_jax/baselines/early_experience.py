"""Early Experience (Zhang et al. 2025, arXiv:2510.08558), implicit world modelling variant.

At the states of the demonstration trajectories the agent takes up to K alternative actions
(not the expert's), the environment executes them, and the policy is trained to predict the
*resulting next observation* - in this interface, the tokens that follow the action in the
context: the next turn's cells and feedback token. Then imitation on the demonstrations.
Both phases use the shared trainer. The world-model phase makes ``wm_epochs`` passes over
what was collected (the paper's method learns from all of it), then imitation gets the
update steps every other fine-tuning gets; ``wm_epochs = 0`` keeps the old split (the
same total steps as the others, ``wm_fraction`` of them on world modelling - with the
budget matched that used ~2 % of the collected examples). The env steps spent collecting
the branches are counted (the budget unit).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.configs import config, field
from leafe_jax.data.store import SftRecords
from leafe_jax.envs.sokoban.replay import replay
from leafe_jax.interfaces.symbolic import encoding as E


@config
class EarlyExperienceConfig:
    alternatives: int = field(3, lo=1, doc="alternative actions per demonstration state")
    wm_epochs: float = field(1.0, lo=0, doc="world-model passes over the collected examples, then "
                                            "stage2.sft.steps of imitation (0: the old split, "
                                            "wm_fraction of stage2.sft.steps on world modelling)")
    wm_fraction: float = field(0.5, lo=0, hi=1, doc="with wm_epochs = 0: share of the update steps "
                                                    "on world modelling")
    demo_levels: int = field(200, lo=1, doc="demonstration levels (when the budget is not matched)")
    learning_rate: float = field(3e-4, lo=0, lo_open=True)


def _alternatives(env, params, level, actions_T):
    """Next observation and feedback token of every action at every demo state:
    obs [T, 4, H, W], fb [T, 4]; plus the demo states' observations [T+1, H, W]."""
    rep = replay(env, level, actions_T, params)
    states = jax.tree.map(lambda x: x[:-1], rep.states)

    def at(s):
        def one(a):
            obs, _, _, _, info = env.step_env(None, s, a, params)
            return obs, E.feedback_token(info)
        return jax.vmap(one)(jnp.arange(4))

    nxt, fb = jax.vmap(at)(states)
    return rep.obs, nxt, fb, rep.info


def world_model_examples(env, params, levels, solutions, lengths, *, num_alternatives: int = 3,
                         rng: np.random.Generator | None = None, task_ids=None):
    """``(SftRecords, env_steps)``: one example per (demo state, alternative action).

    Context: the demonstration up to turn t (``BOS cells(o_0) fb_0 a_0 ... cells(o_t) fb_t``),
    then the alternative action token a', then the target: ``cells(o') fb'`` where o' is the
    observation after taking a' at o_t - the loss mask covers only those target tokens.
    """
    if not 1 <= num_alternatives <= 3:
        raise ValueError(f"num_alternatives must be in 1..3, got {num_alternatives}")
    lengths = np.asarray(lengths)
    width = np.shape(solutions)[1]
    bad = np.flatnonzero((lengths < 1) | (lengths > width))
    if len(bad):
        raise ValueError(f"solution lengths must be in 1..{width} (the stored actions per level); "
                         f"levels {bad[:5].tolist()} have {lengths[bad[:5]].tolist()}")
    rng = rng or np.random.default_rng(0)
    fn = jax.jit(jax.vmap(lambda lv, a: _alternatives(env, params, lv, a)))
    obs, nxt, fb, info = jax.device_get(fn(levels, jnp.asarray(solutions)))
    demo_fb_after = np.asarray(jax.vmap(jax.vmap(E.feedback_token))(info))          # [B, T]
    N = len(lengths)
    task_ids = np.arange(N) if task_ids is None else np.asarray(task_ids)
    toks, masks, steps, tids = [], [], [], []
    env_steps = 0
    C = (env.height - 2) * (env.width - 2)
    for i in range(N):
        n = int(lengths[i])
        acts = np.asarray(solutions[i][:n])
        fbs = np.concatenate([[E.FB_START], demo_fb_after[i, : n - 1]])
        full, _ = E.encode_episode(obs[i, : n + 1], acts, fbs)
        for t in range(n):
            alts = [a for a in range(4) if a != acts[t]]
            for a in rng.choice(alts, num_alternatives, replace=False):
                ctx = full[: 1 + t * (C + 2) + C + 1]                    # up to fb_t
                target = np.concatenate([nxt[i, t, a][1:-1, 1:-1].reshape(-1) + E.CELL0,
                                         [fb[i, t, a]]]).astype(np.int32)
                seq = np.concatenate([ctx, [E.ACT0 + a], target]).astype(np.int32)
                m = np.zeros(len(seq), bool)
                m[-len(target):] = True
                toks.append(seq), masks.append(m), steps.append(t), tids.append(task_ids[i])
                env_steps += 1
    rec = SftRecords.build(toks, masks, source="world_model", task_id=np.asarray(tids),
                           step=np.asarray(steps))
    return rec, env_steps
