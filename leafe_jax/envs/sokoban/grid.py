"""Grid shifts and bitboard breadth-first search (pure JAX, unbatched; vmap at the edge).

Used for level analysis (push distances, dead squares) and by the level generator
(player reachability, shortest walks). Cells outside the grid read as ``fill``.
"""

import jax
import jax.numpy as jnp


def shift(x_HxW: jax.Array, dr: int, dc: int, fill) -> jax.Array:
    """``out[r, c] = x[r + dr, c + dc]`` (``fill`` outside the grid); ``dr, dc`` static."""
    H, W = x_HxW.shape
    pad = max(abs(dr), abs(dc))
    if pad == 0:
        return x_HxW
    xp = jnp.pad(x_HxW, pad, constant_values=fill)
    return jax.lax.slice(xp, (pad + dr, pad + dc), (pad + dr + H, pad + dc + W))


def flat_shift(x_HW: jax.Array, k: int, fill) -> jax.Array:
    """``out[i] = x[i + k]`` on a flat grid (``fill`` outside); ``k`` static.

    On a row-major grid enclosed by walls a flat shift by +-1 or +-W is the 2-D shift:
    the only cells it mixes across row ends are border walls, which callers mask out.
    """
    if k == 0:
        return x_HW
    n = x_HW.shape[-1]
    xp = jnp.pad(x_HW, (max(-k, 0), max(k, 0)), constant_values=fill)
    return jax.lax.slice(xp, (max(k, 0),), (max(k, 0) + n,))


# ------------------------------------------------------------------ bitboards
# A set of cells as one uint32 per row (bit c = column c; W <= 32). A BFS layer costs a few
# word operations per row instead of a pass over every cell: the generator runs one BFS
# per reverse pull, so this is its hot loop.

def pack_rows(mask_HxW: jax.Array) -> jax.Array:
    """bool [H, W] -> uint32 [H]."""
    W = mask_HxW.shape[-1]
    if W > 32:
        raise ValueError(f"bitboards hold at most 32 columns, got {W}")
    weights = (jnp.uint32(1) << jnp.arange(W, dtype=jnp.uint32))
    return jnp.sum(jnp.where(mask_HxW, weights, jnp.uint32(0)), axis=-1, dtype=jnp.uint32)


def unpack_rows(rows_H: jax.Array, width: int) -> jax.Array:
    """uint32 [H] -> bool [H, W]."""
    return ((rows_H[:, None] >> jnp.arange(width, dtype=jnp.uint32)) & 1) != 0


def _neighbours(rows):
    z = jnp.zeros((1,), rows.dtype)
    vert = jnp.concatenate([z, rows[:-1]]) | jnp.concatenate([rows[1:], z])
    return (rows << 1) | (rows >> 1) | vert


def bfs_layers(free_rows: jax.Array, start: jax.Array, width: int, max_depth,
               num_layers: int) -> tuple[jax.Array, jax.Array]:
    """Breadth-first layers from flat cell ``start`` through the ``free`` bitboard.

    Returns ``(layers, reached)``: ``layers[k]`` (uint32 [num_layers, H]) is the set of cells
    at walking distance exactly ``k`` for ``k <= max_depth`` (a traced int; deeper layers are
    empty), and ``reached`` (uint32 [H]) every cell within ``max_depth``. The loop has the
    static trip count ``num_layers - 1``: under ``vmap`` a data-dependent ``while_loop``
    would ``select`` its whole carry (all layers) every iteration, which costs far more than
    the no-op iterations of finished elements. Assumes a wall border (no free cell on the
    edge), so bit shifts never carry a free cell across rows.
    """
    H = free_rows.shape[0]
    r0, c0 = start // width, start % width
    first = jnp.where(jnp.arange(H) == r0, jnp.uint32(1) << c0.astype(jnp.uint32), jnp.uint32(0))
    first = first & free_rows
    layers0 = jnp.zeros((num_layers, H), jnp.uint32).at[0].set(first)

    def body(k, c):
        layers, frontier, seen = c
        new = _neighbours(frontier) & free_rows & ~seen
        new = jnp.where(k < max_depth, new, jnp.uint32(0))
        layers = jax.lax.dynamic_update_index_in_dim(layers, new, k + 1, 0)
        return layers, new, seen | new

    layers, _, seen = jax.lax.fori_loop(0, num_layers - 1, body, (layers0, first, first))
    return layers, seen


def layer_of(layers: jax.Array, cell: jax.Array, width: int) -> jax.Array:
    """Walking distance of ``cell`` in ``bfs_layers`` output (``num_layers`` if unreached)."""
    bits = (layers[:, cell // width] >> (cell % width).astype(jnp.uint32)) & 1
    return jnp.where(jnp.any(bits != 0), jnp.argmax(bits), layers.shape[0]).astype(jnp.int32)
