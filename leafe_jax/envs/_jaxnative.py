"""JAX-only stand-ins for ``flax.struct`` and gymnax's ``environment`` / ``spaces``.

The environments use flax's and gymnax's when they import (the normal case: see
``leafe_jax.envs.compat``). These equivalents keep the pure-JAX environments usable where flax
does not import - e.g. an accelerator image whose newer JAX flax 0.12.8 does not support - so
the Sokoban benchmark still runs there. Same behaviour for what the environments use.
"""

from __future__ import annotations

import dataclasses
import types
from functools import partial
from typing import Any, Generic, TypeVar

import jax
import jax.numpy as jnp


def _dataclass(cls=None, **kw):
    if cls is None:
        return partial(_dataclass, **kw)
    cls = dataclasses.dataclass(frozen=True, **kw)(cls)
    fields = dataclasses.fields(cls)
    data = [f.name for f in fields if f.metadata.get("pytree_node", True)]
    meta = [f.name for f in fields if not f.metadata.get("pytree_node", True)]
    jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
    cls.replace = lambda self, **u: dataclasses.replace(self, **u)
    return cls


def _field(pytree_node: bool = True, **kw):
    return dataclasses.field(metadata={"pytree_node": pytree_node}, **kw)


struct = types.SimpleNamespace(dataclass=_dataclass, field=_field)

TEnvState = TypeVar("TEnvState")
TEnvParams = TypeVar("TEnvParams")


@_dataclass
class EnvState:
    time: int


@_dataclass
class EnvParams:
    max_steps_in_episode: int = 1


class Environment(Generic[TEnvState, TEnvParams]):
    """gymnax's ``Environment`` contract (reset / step / spaces), without flax."""

    @property
    def default_params(self):
        return EnvParams()

    @partial(jax.jit, static_argnames=("self",))
    def reset(self, key: jax.Array, params=None):
        return self.reset_env(key, self.default_params if params is None else params)

    def observe(self, key, state, action, params) -> Any:
        return self.get_obs(state, params=params, key=key)

    def is_truncated(self, state, params) -> jax.Array:
        return state.time >= params.max_steps_in_episode

    def is_terminal(self, state, params) -> jax.Array:
        return self.is_terminated(state, params)

    def discount(self, state, params) -> jax.Array:
        return jax.lax.select(self.is_terminated(state, params), 0.0, 1.0)

    @property
    def name(self) -> str:
        return type(self).__name__


environment = types.SimpleNamespace(EnvState=EnvState, EnvParams=EnvParams, Environment=Environment)


class Discrete:
    def __init__(self, num_categories: int):
        self.n, self.shape, self.dtype = num_categories, (), jnp.int32

    def sample(self, key):
        return jax.random.randint(key, (), 0, self.n).astype(self.dtype)

    def contains(self, x) -> jax.Array:
        return jnp.logical_and(x >= 0, x < self.n)


class Box:
    def __init__(self, low, high, shape, dtype=jnp.float32):
        self.low, self.high, self.shape, self.dtype = low, high, shape, dtype

    def contains(self, x) -> jax.Array:
        return jnp.logical_and(jnp.all(x >= self.low), jnp.all(x <= self.high))


class Dict:
    def __init__(self, spaces: dict):
        self.spaces = spaces


spaces = types.SimpleNamespace(Discrete=Discrete, Box=Box, Dict=Dict)
