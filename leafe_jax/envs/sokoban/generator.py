"""Level generator in pure JAX (vmappable, seeded), after gym-sokoban's recipe.

1. *Room carving*: a random walk stamps one of five 3x3 floor masks per step
   (``int(1.7 * (H + W))`` steps, direction changes with p = 0.35) - as gym-sokoban.
2. *Placement*: targets and the player on distinct random floor cells; boxes start on
   the targets.
3. *Reverse play*: up to ``num_pulls`` times, pick a random feasible pull (a box, a
   direction, a reachable cell to pull from), walk the player there on a shortest path
   and pull. gym-sokoban searches all reverse games for the best score; we take one
   random game (optionally favouring repeated pulls of the same box, which moves boxes
   further), within a budget of ``max_solution_steps`` player steps.
4. *Solution*: reversing the reverse game (each step in the opposite direction) is a
   forward solution of the level: every reverse pull becomes a push. Its length is at
   most ``max_solution_steps``, so the level is solvable within the step limit.

A level is kept when, as in gym-sokoban, no box and not the player starts on a target
and at least one pull happened; otherwise it is regenerated (up to ``max_tries``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from leafe_jax.envs.compat import struct

from leafe_jax.envs.sokoban import constants as C
from leafe_jax.envs.sokoban.grid import (bfs_layers, flat_shift, layer_of, pack_rows, shift,
                                         unpack_rows)
from leafe_jax.envs.sokoban.level import Level

# Bumped whenever the levels a (key, config) pair yields change (what changed is in the
# commit history and docs/RESULTS.md); pipelines record it with their outputs, so work
# directories made with other levels are refused.
VERSION = 2

# gym-sokoban's five carving masks.
_MASKS = np.array([
    [[0, 0, 0], [1, 1, 1], [0, 0, 0]],
    [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
    [[0, 0, 0], [1, 1, 0], [0, 1, 0]],
    [[0, 0, 0], [1, 1, 0], [1, 1, 0]],
    [[0, 0, 0], [0, 1, 1], [0, 1, 0]],
], bool)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GeneratorConfig:
    """Static generator settings (hashable: a jit static argument)."""

    height: int
    width: int
    num_boxes: int
    max_solution_steps: int          # budget of the returned solution (<= the step limit)
    num_pulls: int = 8               # reverse pulls attempted
    num_carve_steps: int | None = None   # default int(1.7 * (H + W)), as gym-sokoban
    p_change_direction: float = 0.35
    repeat_bonus: float = 1.0        # logit bonus for pulling the same box the same way again
    on_target_bonus: float = 3.0     # logit bonus for pulling a box still on a target
    relocate_player: bool = True     # finish with a walk to a random reachable cell
    max_tries: int = 32
    max_walk: int | None = None      # longest player walk between pulls (default 2 * (H + W))

    def __post_init__(self):
        if self.height < 4 or self.width < 4:
            raise ValueError(f"generator needs at least 4x4 rooms, got {self.height}x{self.width}")
        if self.num_boxes < 1:
            raise ValueError(f"num_boxes must be >= 1, got {self.num_boxes}")
        if self.max_solution_steps < 1 or self.num_pulls < 1 or self.max_tries < 1:
            raise ValueError("max_solution_steps, num_pulls and max_tries must be >= 1")
        if (self.height - 2) * (self.width - 2) < self.num_boxes + 2:
            raise ValueError(f"a {self.height}x{self.width} room cannot hold "
                             f"{self.num_boxes} boxes and a player")

    @property
    def walk_cap(self) -> int:
        return self.max_walk if self.max_walk is not None else 2 * (self.height + self.width)

    @property
    def carve_steps(self) -> int:
        if self.num_carve_steps is not None:
            return self.num_carve_steps
        return int(1.7 * (self.height + self.width))


@struct.dataclass
class GeneratedLevel:
    level: Level              # grid uint8[H*W], player int32
    solution: jax.Array       # int32[max_solution_steps], actions 0..3, -1 after the end
    solution_len: jax.Array   # int32
    num_pulls: jax.Array      # int32  pulls in the reverse game (= pushes in the solution)
    valid: jax.Array          # bool   False only if every attempt failed


def carve_room(key: jax.Array, cfg: GeneratorConfig) -> jax.Array:
    """gym-sokoban's ``room_topology_generation``: bool floor mask [H, W]."""
    H, W = cfg.height, cfg.width
    k_dir, k_pos, k_steps = jax.random.split(key, 3)
    dirs = jnp.asarray(C.ACTION_DELTAS)
    direction = dirs[jax.random.randint(k_dir, (), 0, 4)]
    pos = jax.random.randint(k_pos, (2,), 1, jnp.array([H - 1, W - 1]) + 1)
    masks = jnp.asarray(_MASKS)

    def body(carry, k):
        level, direction, pos = carry
        k1, k2, k3 = jax.random.split(k, 3)
        change = jax.random.uniform(k1) < cfg.p_change_direction
        direction = jnp.where(change, dirs[jax.random.randint(k2, (), 0, 4)], direction)
        pos = jnp.clip(pos + direction, 1, jnp.array([H - 2, W - 2]))
        mask = masks[jax.random.randint(k3, (), 0, 5)]
        start = (pos[0] - 1, pos[1] - 1)
        patch = jax.lax.dynamic_slice(level, start, (3, 3)) | mask
        return (jax.lax.dynamic_update_slice(level, patch, start), direction, pos), None

    level0 = jnp.zeros((H, W), bool)
    (level, _, _), _ = jax.lax.scan(body, (level0, direction, pos),
                                    jax.random.split(k_steps, cfg.carve_steps))
    border = jnp.zeros((H, W), bool).at[1:-1, 1:-1].set(True)
    return level & border


def _walk(buf, length, layers, goal, steps, width, deltas):
    """Write the shortest walk from the BFS start to ``goal`` (``steps`` long, its layer)
    into ``buf[length : length + steps]``, tracing predecessors back through the layers."""
    al = jnp.arange(buf.shape[0])

    def body(carry):
        buf, cell, j = carry
        prev = layers[j - 1]                               # cells one step closer
        pred = cell - deltas                               # predecessor per action
        on = (prev[pred // width] >> (pred % width).astype(jnp.uint32)) & 1
        a = jnp.argmax(on != 0)
        buf = jnp.where(al == length + j - 1, a.astype(jnp.int32), buf)
        return buf, pred[a], j - 1

    buf, _, _ = jax.lax.while_loop(lambda c: c[2] > 0, body, (buf, goal, steps))
    return buf


def _sample(key, ok, logits):
    """Index drawn with probability ~ ``ok * exp(logits)``, and whether any was allowed.

    Two-level inverse CDF from two uniforms: pick a block of ~sqrt(N) candidates by the
    block totals, then a candidate inside it. (A Gumbel per candidate costs hundreds of
    threefry draws per pull, and a flat ``cumsum`` over N is a quadratic reduce-window
    on XLA:CPU.)
    """
    N = ok.shape[0]
    b = max(1, int(np.ceil(np.sqrt(N))))
    a = -(-N // b)
    w = jnp.where(ok, jnp.exp(logits - jnp.max(jnp.where(ok, logits, -1e30))), 0.0)
    w = jnp.pad(w, (0, a * b - N)).reshape(a, b)
    u1, u2 = jax.random.uniform(key, (2,))
    rows = jnp.cumsum(w.sum(1))
    r = jnp.minimum(jnp.sum(rows <= u1 * rows[-1]), a - 1)
    row = w[r]
    cols = jnp.cumsum(row)
    c = jnp.minimum(jnp.sum(cols <= u2 * cols[-1]), b - 1)
    # Guard against float round-off landing on a zero-weight slot: fall back to the last
    # allowed candidate of the row.
    c = jnp.where(row[c] > 0, c, b - 1 - jnp.argmax(row[::-1] > 0))
    return jnp.minimum(r * b + c, N - 1), rows[-1] > 0


def _reverse_play(key, floor, targets, player, cfg: GeneratorConfig):
    """Random reverse game: candidate sets are dense flat shifts, walks come from a
    bitboard BFS (gathers and per-cell loops are slow on CPU)."""
    H, W = cfg.height, cfg.width
    n = H * W
    L = cfg.max_solution_steps
    deltas = (-W, W, -1, 1)
    deltas_arr = jnp.array(deltas, jnp.int32)
    ar = jnp.arange(n)
    al = jnp.arange(L)

    def bfs(free, player, depth):
        layers, seen = bfs_layers(pack_rows(free.reshape(H, W)), player, W, depth,
                                  cfg.walk_cap + 1)
        return layers, unpack_rows(seen, W).reshape(-1)

    def pull(carry, k):
        boxes, player, buf, length, last_box, last_dir, pulls = carry
        free = floor & ~boxes
        remaining = L - length
        # Pull u: the box at b moves to b+u; the player walks to q = b+u, steps to b+2u.
        layers, reach = bfs(free, player, remaining - 1)
        ok, logits = [], []
        for u, d in enumerate(deltas):
            ok.append(boxes & flat_shift(reach, d, False) & flat_shift(free, 2 * d, False))
            lg = jnp.where((ar == last_box) & (last_dir == u), cfg.repeat_bonus, 0.0)
            # Favour emptying targets, avoid filling them (the level needs all targets empty).
            lg += cfg.on_target_bonus * (targets.astype(jnp.float32)
                                         - flat_shift(targets, d, False).astype(jnp.float32))
            logits.append(lg)
        # A pull costs at least one step; with none left, the BFS still "reaches" the player's
        # own cell (depth 0), so a pull there would overrun the budget.
        ok = jnp.stack(ok).reshape(-1) & (remaining > 0)
        logits = jnp.stack(logits).reshape(-1)                                      # [4n]
        flat, do = _sample(k, ok, logits)
        u, b = flat // n, flat % n
        du = deltas_arr[u]
        goal = b + du
        steps = jnp.where(do, layer_of(layers, goal, W), 0)
        new_buf = _walk(buf, length, layers, goal, steps, W, deltas_arr)
        new_buf = jnp.where(do & (al == length + steps), u.astype(jnp.int32), new_buf)
        moved = (ar == b) | (ar == goal)
        new_boxes = jnp.where(do & moved, ar == goal, boxes)
        out = (new_boxes, jnp.where(do, goal + du, player), new_buf,
               jnp.where(do, length + steps + 1, length),
               jnp.where(do, goal, last_box), jnp.where(do, u, last_dir), pulls + do)
        return out, None

    k_pulls, k_reloc = jax.random.split(key)
    buf0 = jnp.full((L,), -1, jnp.int32)
    carry0 = (targets, player, buf0, jnp.int32(0), jnp.int32(-1), jnp.int32(-1), jnp.int32(0))
    (boxes, player, buf, length, _, _, pulls), _ = jax.lax.scan(
        pull, carry0, jax.random.split(k_pulls, cfg.num_pulls))
    if cfg.relocate_player:
        layers, reach = bfs(floor & ~boxes, player, L - length)
        goal, do = _sample(k_reloc, reach & ~targets, jnp.zeros(n))
        steps = jnp.where(do, layer_of(layers, goal, W), 0)
        buf = _walk(buf, length, layers, goal, steps, W, deltas_arr)
        length = length + steps
        player = jnp.where(do, goal, player)
    return boxes, player, buf, length, pulls


def _attempt(key, cfg: GeneratorConfig):
    H, W, nb = cfg.height, cfg.width, cfg.num_boxes
    n = H * W
    k_room, k_place, k_play = jax.random.split(key, 3)
    floor = carve_room(k_room, cfg).reshape(-1)
    enough = floor.sum() > nb + 1
    # A box on a target that cannot be pulled (no two floor cells in a row beside it)
    # never leaves it, and gym-sokoban would reject the room: place targets elsewhere.
    f2 = floor.reshape(H, W)
    pullable = jnp.zeros((H, W), bool)
    for dr, dc in C.ACTION_DELTAS.tolist():
        pullable |= shift(f2, dr, dc, False) & shift(f2, 2 * dr, 2 * dc, False)
    pullable = pullable.reshape(-1) & floor
    g = jax.random.gumbel(k_place, (2, n))
    player0 = jnp.argmax(jnp.where(floor, g[0], -jnp.inf))
    enough &= (pullable & (jnp.arange(n) != player0)).sum() >= nb
    target_cells = jax.lax.top_k(jnp.where(pullable & (jnp.arange(n) != player0), g[1], -jnp.inf), nb)[1]
    targets = jnp.zeros((n,), bool).at[target_cells].set(True)
    boxes, player, rev, length, pulls = _reverse_play(k_play, floor, targets, player0, cfg)
    valid = enough & (pulls > 0) & ~jnp.any(boxes & targets) & ~targets[player]
    grid = (jnp.where(floor, 0, C.BIT_WALL) | jnp.where(targets, C.BIT_TARGET, 0)
            | jnp.where(boxes, C.BIT_BOX, 0)).astype(jnp.uint8)
    # Forward solution: the reverse game backwards, each step in the opposite direction.
    i = jnp.arange(cfg.max_solution_steps)
    back = rev[jnp.clip(length - 1 - i, 0, cfg.max_solution_steps - 1)]
    solution = jnp.where(i < length, jnp.asarray(C.OPPOSITE_ACTION)[jnp.clip(back, 0, 3)], -1)
    return Level(grid=grid, player=player.astype(jnp.int32)), solution, length, pulls, valid


def _as_generated(out) -> GeneratedLevel:
    lvl, sol, length, pulls, valid = out
    return GeneratedLevel(level=lvl, solution=sol, solution_len=length, num_pulls=pulls,
                          valid=valid)


def generate_level(key: jax.Array, cfg: GeneratorConfig) -> GeneratedLevel:
    """One level with its solution; pure JAX, unbatched (retries up to ``max_tries``).

    Under ``vmap`` the retry loop runs as long as the slowest element: to make many
    levels use ``generate_levels``, which over-generates attempts instead.
    """

    def cond(c):
        return (~c[1][-1]) & (c[0] < cfg.max_tries)

    def body(c):
        tries, _ = c
        return tries + 1, _attempt(jax.random.fold_in(key, tries), cfg)

    _, out = jax.lax.while_loop(cond, body, (jnp.int32(1), _attempt(jax.random.fold_in(key, 0), cfg)))
    return _as_generated(out)


@functools.partial(jax.jit, static_argnames=("cfg", "chunk"))
def _attempt_chunk(key, cfg: GeneratorConfig, chunk: int) -> GeneratedLevel:
    return _as_generated(jax.vmap(_attempt, in_axes=(0, None))(jax.random.split(key, chunk), cfg))


def generate_levels(key: jax.Array, num: int, cfg: GeneratorConfig, *,
                    chunk: int = 2048, max_rounds: int = 1000) -> GeneratedLevel:
    """``num`` valid levels with solutions, batched on device.

    Runs chunks of ``chunk`` independent attempts (one jitted, vmapped call each; no
    retry loop, whose cost under vmap is the worst element's) and keeps the valid ones in
    order. For a fixed ``key`` and ``chunk`` the result is prefix-stable: the first ten of
    ``num=100`` are the levels of ``num=10``.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    parts, have = [], 0
    for r in range(max_rounds):
        out = jax.tree.map(np.asarray, _attempt_chunk(jax.random.fold_in(key, r), cfg, chunk))
        keep = np.flatnonzero(out.valid)[: num - have]     # compaction on the host: no
        if len(keep):                                      # per-shape device recompiles
            parts.append(jax.tree.map(lambda x: x[keep], out))
            have += len(keep)
        if have == num:
            return jax.tree.map(lambda *xs: jnp.asarray(np.concatenate(xs)), *parts)
    raise RuntimeError(f"{cfg}: only {have} of {num} valid levels after {max_rounds} rounds "
                       f"of {chunk} attempts; the room is too small for its boxes")
