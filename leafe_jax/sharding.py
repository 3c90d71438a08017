"""The one place that decides the device layout: mesh axes and logical-axis rules.

Mesh axes are ``(data, fsdp, tp)``. Weights, activations, batches and the KV cache name
*logical* axes; ``RULES`` maps them onto mesh axes. Library code never names devices or
mesh shapes: it takes a mesh built here (``make_mesh``) and logical names.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tp")

# logical axis -> mesh axis (or axes, or None = replicated)
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tp"),
    ("embed", "fsdp"),
    ("heads", "tp"),         # query heads x head_dim, flattened
    ("kv_heads", "tp"),      # key/value heads x head_dim, flattened
    ("mlp", "tp"),
    ("norm", None),
    ("seq", None),
    ("cache_batch", ("data", "fsdp")),
    ("cache_seq", None),
    ("cache_kv", "tp"),      # the KV-head axis of the cache
    ("head_dim", None),
    # activations (constrained inside the model so XLA keeps the batch split and does not
    # replicate activations to match a weight's layout)
    ("act_batch", ("data", "fsdp")),
    ("act_seq", None),
    ("act_embed", None),
    ("act_heads", "tp"),
    ("act_mlp", "tp"),
    ("act_vocab", "tp"),
)


def make_mesh(shape: tuple[int, ...] = (1, 1, -1), devices=None) -> jax.sharding.Mesh:
    """Mesh over ``MESH_AXES``; one entry may be ``-1`` for "the remaining devices".

    Raises a clear ``ValueError`` before anything compiles if the shape does not divide
    the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}")
    shape = list(shape)
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)}: at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if any(s == 0 or s < -1 for s in shape) or len(devices) % known:
        raise ValueError(f"mesh shape {tuple(shape)} does not divide {len(devices)} devices")
    if -1 in shape:
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh shape {tuple(shape)} uses {math.prod(shape)} of {len(devices)} "
                         "devices; use -1 for the remaining devices")
    return jax.sharding.Mesh(np.array(devices).reshape(shape), MESH_AXES,
                             axis_types=(AxisType.Auto,) * len(MESH_AXES))


def single_device_mesh() -> jax.sharding.Mesh:
    return make_mesh((1, 1, 1), devices=jax.devices()[:1])


def logical_spec(axes: tuple[str | None, ...]) -> PartitionSpec:
    """Logical axis names -> ``PartitionSpec`` through ``RULES``."""
    table = dict(RULES)
    out = []
    for a in axes:
        if a is None:
            out.append(None)
        elif a not in table:
            raise KeyError(f"unknown logical axis {a!r}; known: {', '.join(table)}")
        else:
            out.append(table[a])
    return PartitionSpec(*out)


def logical_sharding(mesh, axes: tuple[str | None, ...]) -> NamedSharding:
    return NamedSharding(mesh, logical_spec(axes))


def shard_batch(mesh, batch):
    """Place every leaf of a batch with its leading axis over the batch mesh axes."""
    s = logical_sharding(mesh, ("batch",))
    return jax.tree.map(lambda x: jax.device_put(x, s), batch)


def place_batch(batch: dict, mesh=None) -> dict:
    """This process's share of a batch (host or device arrays) -> device arrays; under a mesh,
    global arrays over the batch axes assembled from every process's share."""
    import jax.numpy as jnp
    if mesh is None:
        return {k: jnp.asarray(v) for k, v in batch.items()}
    s = logical_sharding(mesh, ("batch",))
    return {k: jax.make_array_from_process_local_data(s, np.asarray(v)) for k, v in batch.items()}


def constrain(x, axes: tuple[str | None, ...]):
    """``with_sharding_constraint`` of an activation by logical axes, under the current mesh
    (a no-op without one). A dimension that its mesh axes do not divide is left free."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = []
    for dim, entry in zip(x.shape, logical_spec(axes)):
        names = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
        size = math.prod(mesh.shape[n] for n in names)
        spec.append(entry if size > 1 and dim % size == 0 else None)
    if all(e is None for e in spec):
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*spec))
