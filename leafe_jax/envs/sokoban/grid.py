"""Shifts and fixed-point fills on 2-D grids (pure JAX, unbatched; vmap at the edge).

Used for level analysis (push distances, dead squares) and by the level generator
(player reachability, shortest walks). Cells outside the grid read as ``fill``.
"""

import jax
import jax.numpy as jnp

from leafe_jax.envs.sokoban.constants import ACTION_DELTAS


def shift(x_HxW: jax.Array, dr: int, dc: int, fill) -> jax.Array:
    """``out[r, c] = x[r + dr, c + dc]`` (``fill`` outside the grid); ``dr, dc`` static."""
    H, W = x_HxW.shape
    pad = max(abs(dr), abs(dc))
    if pad == 0:
        return x_HxW
    xp = jnp.pad(x_HxW, pad, constant_values=fill)
    return jax.lax.slice(xp, (pad + dr, pad + dc), (pad + dr + H, pad + dc + W))


def flat_shift(x_N: jax.Array, k: int, fill) -> jax.Array:
    """``out[i] = x[i + k]`` on a flat grid (``fill`` outside); ``k`` static.

    On a row-major grid enclosed by walls a flat shift by +-1 or +-W is the 2-D shift:
    the only cells it mixes across row ends are border walls, which callers mask out.
    """
    if k == 0:
        return x_N
    n = x_N.shape[-1]
    xp = jnp.pad(x_N, (max(-k, 0), max(k, 0)), constant_values=fill)
    return jax.lax.slice(xp, (max(k, 0),), (max(k, 0) + n,))


def flat_bfs_distance(free_N: jax.Array, source_N: jax.Array, width: int,
                      inf: int = 10_000) -> jax.Array:
    """``bfs_distance`` on a flat row-major grid enclosed by walls (cheaper: no 2-D pads)."""
    deltas = (-width, width, -1, 1)
    dist0 = jnp.where(source_N & free_N, 0, inf).astype(jnp.int32)

    def body(carry):
        dist, _ = carry
        best = dist
        for d in deltas:
            best = jnp.minimum(best, flat_shift(dist, d, inf) + 1)
        best = jnp.where(free_N, jnp.minimum(best, inf), inf)
        return best, jnp.any(best != dist)

    dist, _ = jax.lax.while_loop(lambda c: c[1], body, (dist0, jnp.array(True)))
    return dist


def bfs_distance(free_HxW: jax.Array, source_HxW: jax.Array, inf: int = 10_000) -> jax.Array:
    """Shortest 4-connected walking distance from any ``source`` cell through ``free`` cells.

    Unreachable cells get ``inf``. Runs a relaxation ``while_loop`` until nothing changes
    (iterations = the largest finite distance + 1).
    """
    dist0 = jnp.where(source_HxW & free_HxW, 0, inf).astype(jnp.int32)

    def relax(dist):
        best = dist
        for dr, dc in ACTION_DELTAS.tolist():
            best = jnp.minimum(best, shift(dist, dr, dc, inf) + 1)
        return jnp.where(free_HxW, jnp.minimum(best, inf), inf)

    def cond(carry):
        return carry[1]

    def body(carry):
        dist, _ = carry
        new = relax(dist)
        return new, jnp.any(new != dist)

    dist, _ = jax.lax.while_loop(cond, body, (dist0, jnp.array(True)))
    return dist
