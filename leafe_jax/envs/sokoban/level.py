"""Sokoban levels: the ``Level``/``LevelBank`` pytrees, ASCII parse/print, push distances.

A level is stored the way the environment consumes it: flat ``uint8`` bit codes
(wall / target / box, see ``constants``) and the player's flat cell index. A
``LevelBank`` is a batch of levels plus their precomputed push distances (dead squares
are the cells whose push distance is ``DEAD``); it lives on device and is sampled by
index inside jitted code.

ASCII uses the DeepMind Boxoban characters: ``#`` wall, space floor, ``.`` target,
``$`` box, ``*`` box on target, ``@`` player, ``+`` player on target.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from leafe_jax.envs.compat import struct

from leafe_jax.envs.sokoban import constants as C
from leafe_jax.envs.sokoban.grid import shift

_CHAR_BITS = {"#": C.BIT_WALL, " ": 0, ".": C.BIT_TARGET, "$": C.BIT_BOX,
              "*": C.BIT_BOX | C.BIT_TARGET, "@": 0, "+": C.BIT_TARGET}


@struct.dataclass
class Level:
    """One level (or a batch of them, with leading dims): bit codes and player cell."""

    grid: jax.Array    # uint8[..., H*W]  bit codes
    player: jax.Array  # int32[...]       flat cell index

    @property
    def num_cells(self) -> int:
        return self.grid.shape[-1]


@struct.dataclass
class LevelBank:
    """A device-resident batch of B levels of one shape, sampled by index."""

    grid: jax.Array      # uint8[B, H*W]
    player: jax.Array    # int32[B]
    box_dist: jax.Array  # uint8[B, H*W]  pushes to the nearest target; DEAD if none
    height: int = struct.field(pytree_node=False, default=0)
    width: int = struct.field(pytree_node=False, default=0)

    def __len__(self) -> int:
        return int(self.grid.shape[0])

    def level(self, index) -> Level:
        """The level at ``index`` (works on tracers: a gather)."""
        return Level(grid=self.grid[index], player=self.player[index])


class LevelFormatError(ValueError):
    """A level text or level file that does not describe a valid level."""


def parse_level(text: str, *, source: str = "<string>", level_name: str = "level",
                first_line: int = 1) -> tuple[Level, int, int]:
    """Parse one level written in Boxoban characters; returns ``(level, H, W)``.

    Raises ``LevelFormatError`` naming ``source``, the level and the line for ragged rows,
    unknown characters, boxes != targets, no player or more than one player, or a missing
    wall border.
    """
    lines = text.split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    where = f"{source}, {level_name}"
    if not lines:
        raise LevelFormatError(f"{where}: empty level")
    width = len(lines[0])
    players, boxes, targets = [], 0, 0
    bits = np.zeros((len(lines), width), np.uint8)
    for r, line in enumerate(lines):
        lineno = first_line + r
        if len(line) != width:
            raise LevelFormatError(
                f"{where}, line {lineno}: ragged row of {len(line)} characters "
                f"(the first row has {width})")
        for c, ch in enumerate(line):
            if ch not in _CHAR_BITS:
                raise LevelFormatError(
                    f"{where}, line {lineno}, column {c + 1}: unknown character {ch!r} "
                    f"(allowed: {''.join(sorted(_CHAR_BITS))!r})")
            bits[r, c] = _CHAR_BITS[ch]
            if ch in "@+":
                players.append((r, c, lineno))
            boxes += ch in "$*"
            targets += ch in ".*+"
    if not players:
        raise LevelFormatError(f"{where}: no player ('@' or '+')")
    if len(players) > 1:
        lns = ", ".join(str(p[2]) for p in players)
        raise LevelFormatError(f"{where}: {len(players)} players (lines {lns}); exactly one allowed")
    if boxes != targets:
        raise LevelFormatError(f"{where}: {boxes} boxes but {targets} targets")
    if boxes == 0:
        raise LevelFormatError(f"{where}: no boxes")
    _check_border(bits, where, first_line)
    H, W = bits.shape
    level = Level(grid=bits.reshape(-1), player=np.int32(players[0][0] * W + players[0][1]))
    return level, H, W


def _check_border(bits: np.ndarray, where: str, first_line: int) -> None:
    H, W = bits.shape
    ring = np.ones_like(bits, bool)
    ring[1:-1, 1:-1] = False
    bad = np.argwhere(ring & (bits != C.BIT_WALL))
    if len(bad):
        r, c = bad[0]
        raise LevelFormatError(
            f"{where}, line {first_line + r}, column {c + 1}: the level must be enclosed by "
            "a wall border ('#' on every edge cell)")


def level_to_ascii(level: Level, height: int, width: int) -> str:
    """Inverse of ``parse_level`` (one unbatched level)."""
    bits = np.asarray(level.grid).reshape(height, width)
    player = int(level.player)
    inv = {int(C.BIT_WALL): "#", 0: " ", int(C.BIT_TARGET): ".", int(C.BIT_BOX): "$",
           int(C.BIT_BOX | C.BIT_TARGET): "*"}
    rows = []
    for r in range(height):
        row = []
        for c in range(width):
            b = int(bits[r, c])
            if r * width + c == player:
                row.append("+" if b & C.BIT_TARGET else "@")
            else:
                row.append(inv[b])
        rows.append("".join(row))
    return "\n".join(rows)


@jax.jit          # also when called eagerly (the solver): one compile per shape, not per call
def push_distance(grid_HxW: jax.Array) -> jax.Array:
    """Fewest pushes that bring a box on each cell to some target, other boxes ignored.

    A push moves a box from ``x`` to ``x+d`` and needs the player on ``x-d``: both must be
    non-wall. Cells with no such route (and walls) get ``DEAD`` - the *dead squares*.
    Pure JAX, unbatched: ``vmap`` it for a bank.
    """
    inf = jnp.int32(C.DEAD)
    open_ = (grid_HxW & C.BIT_WALL) == 0
    dist0 = jnp.where(open_ & ((grid_HxW & C.BIT_TARGET) != 0), 0, inf).astype(jnp.int32)

    def body(carry):
        dist, _ = carry
        best = dist
        for dr, dc in C.ACTION_DELTAS.tolist():
            ok = shift(open_, -dr, -dc, False) & shift(open_, dr, dc, False)
            best = jnp.minimum(best, jnp.where(ok, shift(dist, dr, dc, inf) + 1, inf))
        best = jnp.where(open_, jnp.minimum(best, inf), inf)
        return best, jnp.any(best != dist)

    dist, _ = jax.lax.while_loop(lambda c: c[1], body, (dist0, jnp.array(True)))
    return dist.astype(jnp.uint8)


@jax.jit
def _bank_box_dist(grid_BxHxW):
    return jax.vmap(push_distance)(grid_BxHxW)


def make_bank(levels: Level, height: int, width: int) -> LevelBank:
    """Stack a batched ``Level`` ([B, H*W] grids) into a device ``LevelBank``."""
    grid = jnp.asarray(levels.grid, jnp.uint8)
    if grid.ndim != 2 or grid.shape[1] != height * width:
        raise ValueError(f"level grids must have shape [B, {height * width}] for "
                         f"{height}x{width} levels, got {tuple(grid.shape)}")
    if grid.shape[0] == 0:
        raise ValueError("cannot build a level bank from zero levels")
    player = jnp.asarray(levels.player, jnp.int32).reshape(grid.shape[0])
    box_dist = _bank_box_dist(grid.reshape(-1, height, width)).reshape(grid.shape)
    return LevelBank(grid=grid, player=player, box_dist=box_dist, height=height, width=width)


def stack_levels(levels: list[Level]) -> Level:
    """Stack unbatched levels into one batched ``Level`` (host numpy)."""
    if not levels:
        raise ValueError("no levels to stack")
    return Level(grid=np.stack([np.asarray(l.grid, np.uint8) for l in levels]),
                 player=np.array([int(l.player) for l in levels], np.int32))
