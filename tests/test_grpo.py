"""GRPO: advantages, clipped objective and k3 KL against hand-worked numbers, gradients only
through action tokens, and a run on a one-step level that raises success."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from leafe_jax.baselines.grpo import (GRPOConfig, group_advantages, grpo_objective, grpo_optim,
                                      kl_k3, token_logprobs, train_grpo)


def test_group_advantages_hand_worked():
    adv = np.asarray(group_advantages([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 3]], eps=0.0 + 1e-9))
    np.testing.assert_allclose(adv[0], [1, -1, -1, 1], atol=1e-6)     # mean .5, std .5
    np.testing.assert_array_equal(adv[1], [0, 0, 0, 0])                # all equal: no signal
    sd = np.std([0, 0, 0, 3])                                          # 1.299
    np.testing.assert_allclose(adv[2], (np.array([0, 0, 0, 3]) - 0.75) / sd, rtol=1e-5)


def test_kl_k3_values():
    lp = jnp.log(jnp.array([0.5, 0.25, 0.8]))
    ref = jnp.log(jnp.array([0.5, 0.5, 0.4]))
    np.testing.assert_allclose(np.asarray(kl_k3(lp, ref)),
                               [0.0, 2 - np.log(2) - 1, 0.5 - np.log(0.5) - 1], rtol=1e-6)
    assert (np.asarray(kl_k3(lp, ref)) >= 0).all()


def test_clipped_objective_hand_worked():
    old = jnp.zeros((2, 3))
    logp = jnp.log(jnp.array([[1.5, 0.5, 1.0], [1.1, 0.7, 2.0]]))     # ratios
    ref = logp                                                        # KL term 0
    adv = jnp.array([1.0, -2.0])
    mask = jnp.array([[True, True, False], [True, True, True]])
    loss, aux = grpo_objective(logp, old, ref, adv, mask, eps=0.2, eps_high=0.3, beta=0.04)
    # row 0, A=+1: min(1.5, 1.3) = 1.3 ; min(0.5, 0.8) = 0.5        (third token masked)
    # row 1, A=-2: min(-2.2, -2.2) = -2.2 ; min(-1.4, -1.6) = -1.6 ; min(-4, -2.6) = -4
    per = [-1.3, -0.5, 2.2, 1.6, 4.0]
    assert float(loss) == pytest.approx(np.mean(per), rel=1e-6)
    assert float(aux["clip_frac"]) == pytest.approx(4 / 5)         # 1.5, 0.5, 0.7, 2.0 outside
    assert float(aux["kl"]) == pytest.approx(0.0, abs=1e-7)
    # with a reference: the KL term adds beta * k3 on the masked tokens only
    ref2 = logp - jnp.log(2.0)
    loss2, aux2 = grpo_objective(logp, old, ref2, adv, mask, eps=0.2, eps_high=0.3, beta=0.04)
    k3 = 0.5 - np.log(0.5) - 1
    assert float(aux2["kl"]) == pytest.approx(k3, rel=1e-5)
    assert float(loss2) == pytest.approx(np.mean(per) + 0.04 * k3, rel=1e-5)


def test_equal_rewards_give_no_policy_gradient():
    adv = group_advantages(jnp.ones((1, 4)))
    logp = jnp.log(jnp.full((4, 3), 0.3))
    g = jax.grad(lambda lp: grpo_objective(lp, lp, lp, adv[0], jnp.ones((4, 3), bool),
                                           eps=0.2, eps_high=0.2, beta=0.0)[0])(logp)
    np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_gradients_flow_only_through_action_tokens():
    from leafe_jax.policy.config import get_config
    from leafe_jax.policy.model import create_model
    model = create_model(get_config("test-tiny"), seed=0)
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 60, (2, 10)), jnp.int32)
    mask = jnp.zeros((2, 10), bool).at[:, 6].set(True)

    def obj(logp):
        return grpo_objective(logp, jax.lax.stop_gradient(logp) - 0.1, logp * 0 - 1.0,
                              jnp.array([1.0, -0.5]), mask, eps=0.2, eps_high=0.2, beta=0.04)[0]
    logp, _ = token_logprobs(model, tokens)
    g = np.asarray(jax.grad(obj)(logp))
    assert (g[:, 6] != 0).all() and (np.delete(g, 6, axis=1) == 0).all()
    # through the model: no action token, no gradient on any weight
    def full(m, msk):
        lp, _ = token_logprobs(m, tokens)
        return grpo_objective(lp, jax.lax.stop_gradient(lp), jax.lax.stop_gradient(lp) - 0.2,
                              jnp.array([1.0, -0.5]), msk, eps=0.2, eps_high=0.2, beta=0.04)[0]
    none = nnx.grad(full)(model, jnp.zeros_like(mask))
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(nnx.state(none, nnx.Param)))
    some = nnx.grad(full)(model, mask)
    assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(nnx.state(some, nnx.Param)))


def test_grpo_schedule_spans_every_update():
    from leafe_jax.train.optim import make_schedule
    gc = GRPOConfig(epochs=2, minibatches=2, learning_rate=1e-3)
    oc = grpo_optim(gc, 10)
    assert (oc.total_steps, oc.warmup_steps) == (40, 4)
    lr = np.array([float(make_schedule(oc)(i)) for i in range(41)])
    assert lr[4] == pytest.approx(1e-3) and (np.diff(lr[4:]) < 0).all()   # decays to the end
    assert lr[20] > 2 * lr[40] and lr[40] == pytest.approx(1e-4)        # not at the floor halfway


def test_grpo_raises_success_on_a_one_step_level(tmp_path):
    from sokoban_cases import level
    from leafe_jax.envs.sokoban import Sokoban
    from leafe_jax.envs.sokoban.level import stack_levels
    from leafe_jax.eval.sweep import sample_success
    from leafe_jax.policy.config import get_config
    from leafe_jax.policy.model import create_model
    from leafe_jax.train.optim import create_optimizer

    lv, H, W = level("""
|#####
|#@$.#
|#####
""")                                        # RIGHT pushes the box onto the target: solved
    env = Sokoban(H, W, 1, max_steps=1)
    params = env.default_params
    levels = stack_levels([lv])
    cfg = get_config("sokoban-tiny")
    model, ref = create_model(cfg, seed=0), create_model(cfg, seed=0)
    ref_before = jax.tree.map(np.asarray, nnx.state(ref, nnx.Param))
    before = sample_success(model, env, params, levels, 64, jax.random.key(9), progress=False).mean()
    gc = GRPOConfig(tasks_per_step=4, group_size=8, minibatches=2, epochs=2, learning_rate=3e-2)
    opt = create_optimizer(model, grpo_optim(gc, 12))
    final = train_grpo(model, ref, env, params, levels, gc, opt, 12, tmp_path, progress=False)
    assert int(opt.step[...]) == 12 * 2 * 2 == grpo_optim(gc, 12).total_steps   # every update
    after = sample_success(model, env, params, levels, 64, jax.random.key(9), progress=False).mean()
    assert before < 0.5 and after > before + 0.3, (before, after)
    assert final["kl"] >= 0 and 0 <= final["clip_frac"] <= 1 and final["env_steps_this_run"] == 12 * 32
    for a, b in zip(jax.tree.leaves(ref_before), jax.tree.leaves(nnx.state(ref, nnx.Param))):
        np.testing.assert_array_equal(a, np.asarray(b))             # the reference stays fixed
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        GRPOConfig(group_size=1)
