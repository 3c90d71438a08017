"""Compile the SFT step for any mesh - real TPU topologies included - from abstract arrays
only, and read its memory per device (as MaxText's ``train_compile``). Nothing is allocated,
so a 72B model sizes on a laptop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from leafe_jax.policy.model import Transformer, abstract_model
from leafe_jax.sharding import logical_sharding
from leafe_jax.train.optim import OptimConfig, make_optimizer
from leafe_jax.train.step import train_step


def compile_train_step(cfg, mesh, global_batch: int, seq_len: int, optim: OptimConfig | None = None):
    """The compiled ``train_step`` (params, optimiser state and batch sharded per the rules)."""
    gdef, st = abstract_model(cfg, mesh)
    tx = make_optimizer(optim or OptimConfig())
    ogdef, ost = nnx.get_abstract_model(
        lambda: nnx.Optimizer(Transformer(cfg, rngs=nnx.Rngs(0)), tx, wrt=nnx.Param), mesh)
    bs = logical_sharding(mesh, ("batch",))
    b = {"tokens": jax.ShapeDtypeStruct((global_batch, seq_len + 1), jnp.int32, sharding=bs),
         "loss_mask": jax.ShapeDtypeStruct((global_batch, seq_len + 1), jnp.bool_, sharding=bs),
         "weight": jax.ShapeDtypeStruct((global_batch,), jnp.float32, sharding=bs)}

    def step(m_state, o_state, batch):
        m, o = nnx.merge(gdef, m_state), nnx.merge(ogdef, o_state)
        metrics = train_step(m, o, batch)
        return nnx.state(m), nnx.state(o), metrics

    with jax.set_mesh(mesh):
        return jax.jit(step, donate_argnums=(0, 1)).lower(st, ost, b).compile()
