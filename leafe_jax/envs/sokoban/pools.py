"""Disjoint level pools: behaviour-cloning demos, training (Stage 1 / GRPO), evaluation, and
validation (model selection: GRPO to convergence; never the held-out levels).

Each pool draws from its own generator key (``fold_in(key(seed), pool id)``); pools that
must not overlap are filtered on the host by level content, since tiny rooms can repeat.
"""

from __future__ import annotations

import jax
import numpy as np

from leafe_jax.envs.sokoban.generator import GeneratedLevel, GeneratorConfig, generate_levels

POOL_IDS = {"demo": 1, "train": 2, "eval": 3, "val": 4}


def _fingerprints(gen: GeneratedLevel) -> list[bytes]:
    grid = np.asarray(gen.level.grid)
    player = np.asarray(gen.level.player)
    return [g.tobytes() + int(p).to_bytes(4, "little") for g, p in zip(grid, player)]


def level_pool(name: str, num: int, cfg: GeneratorConfig, seed: int = 0, *,
               exclude: tuple[GeneratedLevel, ...] = ()) -> GeneratedLevel:
    """``num`` levels of pool ``name``, none identical to a level in ``exclude``."""
    if name not in POOL_IDS:
        raise KeyError(f"unknown level pool {name!r}; known: {', '.join(POOL_IDS)}")
    taken = {f for g in exclude for f in _fingerprints(g)}
    key = jax.random.fold_in(jax.random.key(seed), POOL_IDS[name])
    extra = 0
    while True:
        gen = generate_levels(key, num + extra, cfg)
        keep = [i for i, f in enumerate(_fingerprints(gen)) if f not in taken]
        if len(keep) >= num:
            idx = np.array(keep[:num])
            return jax.tree.map(lambda x: x[idx], gen)
        extra += num - len(keep) + 8


def training_pools(cfg: GeneratorConfig, seed: int, *, demo_levels: int,
                   train_levels: int) -> tuple[GeneratedLevel, GeneratedLevel]:
    """The demonstration pool and the Stage-1 / GRPO training pool (disjoint from it)."""
    demo = level_pool("demo", demo_levels, cfg, seed)
    return demo, level_pool("train", train_levels, cfg, seed, exclude=(demo,))


def held_out_pool(num: int, cfg: GeneratorConfig, seed: int, *, demo_levels: int,
                  train_levels: int, pools: tuple[GeneratedLevel, ...] | None = None) -> GeneratedLevel:
    """The first ``num`` evaluation levels, none identical to a demonstration or training
    level of the same seed and pool sizes - the one definition the pipeline and
    ``leafe evaluate`` share. ``pools`` passes the two pools when already built."""
    pools = pools or training_pools(cfg, seed, demo_levels=demo_levels, train_levels=train_levels)
    return level_pool("eval", num, cfg, seed, exclude=tuple(pools))


def validation_pool(num: int, cfg: GeneratorConfig, seed: int, *, demo_levels: int,
                    train_levels: int, eval_levels: int) -> GeneratedLevel:
    """``num`` validation levels, none identical to a demonstration, training or held-out
    level of the same seed and pool sizes (adding it changes none of those pools)."""
    demo, train = training_pools(cfg, seed, demo_levels=demo_levels, train_levels=train_levels)
    held = held_out_pool(eval_levels, cfg, seed, demo_levels=demo_levels,
                         train_levels=train_levels, pools=(demo, train))
    return level_pool("val", num, cfg, seed, exclude=(demo, train, held))
