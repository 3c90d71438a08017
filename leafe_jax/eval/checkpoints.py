"""Pass@k of saved policies (``leafe evaluate``): on the held-out pool the pipeline uses for
the same seed and pool sizes (same levels, same sampling keys), or on a Boxoban-format file."""

from __future__ import annotations

import os

import numpy as np

from leafe_jax.envs.sokoban import get_preset
from leafe_jax.envs.sokoban.boxoban import read_boxoban
from leafe_jax.envs.sokoban.pools import held_out_pool
from leafe_jax.eval.sweep import EvalConfig, eval_key, write_sweep
from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.interfaces.symbolic.interface import SymbolicSokoban
from leafe_jax.train.checkpoint import load_policy


def evaluation_levels(preset, cfg: EvalConfig, seed: int, *, demo_levels: int, train_levels: int,
                      levels_file: str | None = None):
    """The held-out levels: the pipeline's pool for this seed and pool sizes, or the first
    ``cfg.levels`` levels of a Boxoban file (which must match the preset's room size)."""
    if levels_file is None:
        return held_out_pool(cfg.levels, preset.generator, seed, demo_levels=demo_levels,
                             train_levels=train_levels).level
    levels = level_file(levels_file, preset)
    return type(levels)(grid=levels.grid[: cfg.levels], player=levels.player[: cfg.levels])


def level_file(path: str, preset):
    """Every level of a Boxoban-format file, checked against the preset's room size."""
    _, levels, H, W = read_boxoban(path)
    env = preset.make_env()
    if (H, W) != (env.height, env.width):
        raise ValueError(f"{path}: {H}x{W} levels, but preset {preset.name!r} plays "
                         f"{env.height}x{env.width} rooms")
    return levels


def evaluate_checkpoints(specs: list[str], out: str, cfg: EvalConfig, *, seed: int = 0,
                         demo_levels: int, train_levels: int, preset: str | None = None,
                         levels_file: str | None = None, progress: bool = True) -> dict:
    """Evaluate ``name=workdir`` (or ``workdir``) policies; writes ``passk.json`` / ``.md`` /
    ``.png`` to ``out`` and returns the tables (with ``cfg.transfer_levels``, also every
    level of that file, to ``out/transfer``)."""
    results, transfer, levels, agent, preset_name = {}, {}, None, None, preset
    for spec in specs:
        name, _, wd = spec.rpartition("=")
        name = name or os.path.basename(os.path.normpath(wd))
        model, meta = load_policy(wd)
        preset_name = preset_name or meta.get("preset")
        if preset_name is None:
            raise ValueError(f"{wd}: the checkpoint names no preset; pass --preset")
        if meta.get("preset") and meta["preset"] != preset_name:
            raise ValueError(f"{wd} was trained on preset {meta['preset']!r}, evaluating on {preset_name!r}")
        if model.cfg.vocab_size < E.VOCAB_SIZE:
            raise ValueError(f"{wd}: model vocabulary {model.cfg.vocab_size} does not cover the "
                             f"interaction vocabulary ({E.VOCAB_SIZE})")
        if levels is None:                    # one preset for all policies (checked above)
            p = get_preset(preset_name)
            agent = SymbolicSokoban(p.make_env())
            levels = evaluation_levels(p, cfg, seed, demo_levels=demo_levels,
                                       train_levels=train_levels, levels_file=levels_file)
        results[name] = agent.success(model, levels, cfg.n, eval_key(seed),
                                      temperature=cfg.temperature, progress=progress)
        if cfg.transfer_levels:               # every level of the transfer file, to out/transfer
            transfer[name] = agent.success(model, level_file(cfg.transfer_levels, get_preset(preset_name)),
                                           cfg.n, eval_key(seed), temperature=cfg.temperature,
                                           progress=progress)
    where = levels_file or "held-out levels"
    num_levels = int(np.shape(levels.player)[0])
    if transfer:
        write_sweep(transfer, os.path.join(out, "transfer"), title=f"{preset_name}, "
                    f"{len(next(iter(transfer.values())))} transfer levels ({cfg.transfer_levels})")
    return write_sweep(results, out, title=f"{preset_name}, {num_levels} {where}, n = {cfg.n}, T = {cfg.temperature}")
