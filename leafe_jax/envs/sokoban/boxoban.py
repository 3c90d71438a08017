"""DeepMind Boxoban level files: read into a ``LevelBank``, write back.

Format: each level starts with a header line ``; <id>``, followed by its rows (10 rows
of 10 characters for Boxoban) in the characters of ``level.parse_level``; blank lines
separate levels. The project never reads a fixed path: callers pass file names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

from leafe_jax.envs.sokoban.level import (Level, LevelBank, LevelFormatError, level_to_ascii,
                                          make_bank, parse_level, stack_levels)


def parse_boxoban_text(text: str, source: str = "<string>") -> tuple[list[str], list[Level], int, int]:
    """Parse the contents of one Boxoban file: ``(ids, levels, H, W)``."""
    ids, levels, shape = [], [], None
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].rstrip("\r")
        if line.strip() == "":
            i += 1
            continue
        if not line.startswith(";"):
            raise LevelFormatError(f"{source}, line {i + 1}: expected a '; <id>' level header, "
                                   f"got {line[:20]!r}")
        level_id = line[1:].strip()
        j = i + 1
        while j < len(lines) and lines[j].rstrip("\r") != "" and not lines[j].startswith(";"):
            j += 1
        body = "\n".join(l.rstrip("\r") for l in lines[i + 1:j])
        level, H, W = parse_level(body, source=source, level_name=f"level '{level_id}'",
                                  first_line=i + 2)
        if shape is None:
            shape = (H, W)
        elif shape != (H, W):
            raise LevelFormatError(f"{source}, level '{level_id}' (line {i + 1}): {H}x{W} level in a "
                                   f"file of {shape[0]}x{shape[1]} levels")
        ids.append(level_id)
        levels.append(level)
        i = j
    if not levels:
        raise LevelFormatError(f"{source}: no levels found")
    return ids, levels, shape[0], shape[1]


def read_boxoban(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[list[str], Level, int, int]:
    """Read one or more Boxoban files (or directories of ``*.txt`` files, sorted).

    Returns ``(ids, levels, H, W)`` with ``levels`` a batched host ``Level``; ids are
    ``"<file stem>:<header id>"``.
    """
    files = _expand(paths)
    all_ids, all_levels, shape = [], [], None
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                text = fh.read()
        except UnicodeDecodeError as e:
            raise LevelFormatError(f"{f}: not a text level file (byte {e.start} is not UTF-8)") from None
        ids, levels, H, W = parse_boxoban_text(text, source=str(f))
        if shape is not None and shape != (H, W):
            raise LevelFormatError(f"{f}: {H}x{W} levels, but earlier files hold {shape[0]}x{shape[1]}")
        shape = (H, W)
        stem = os.path.splitext(os.path.basename(f))[0]
        all_ids += [f"{stem}:{i}" for i in ids]
        all_levels += levels
    return all_ids, stack_levels(all_levels), shape[0], shape[1]


def load_boxoban(paths, *, limit: int | None = None) -> LevelBank:
    """Boxoban files -> device ``LevelBank`` (push distances precomputed)."""
    _, levels, H, W = read_boxoban(paths)
    if limit is not None:
        levels = Level(grid=levels.grid[:limit], player=levels.player[:limit])
    return make_bank(levels, H, W)


def write_boxoban(path: str | os.PathLike, levels: Level | LevelBank, height: int | None = None,
                  width: int | None = None, ids: Iterable[str] | None = None) -> None:
    """Write levels (batched ``Level`` or ``LevelBank``) as a Boxoban file.

    Writes to a temporary file and renames it, so an existing file is never left half
    written.
    """
    if isinstance(levels, LevelBank):
        height, width = levels.height, levels.width
    if height is None or width is None:
        raise ValueError("height and width are needed to write a batched Level")
    grid = np.asarray(levels.grid)
    player = np.asarray(levels.player)
    ids = list(ids) if ids is not None else [str(i) for i in range(len(grid))]
    if len(ids) != len(grid):
        raise ValueError(f"{len(ids)} ids for {len(grid)} levels")
    chunks = [f"; {i}\n" + level_to_ascii(Level(grid=g, player=p), height, width) + "\n"
              for i, g, p in zip(ids, grid, player)]
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("\n".join(chunks))
    os.replace(tmp, path)


def _expand(paths) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".txt"))
            if not found:
                raise FileNotFoundError(f"{p}: directory holds no Boxoban *.txt files")
            files += found
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"Boxoban level file not found: {p}")
    if not files:
        raise FileNotFoundError("no Boxoban level files given")
    return files
