"""Disjoint level pools: behaviour-cloning demos, training (Stage 1 / GRPO) and evaluation.

Each pool draws from its own generator key (``fold_in(key(seed), pool id)``); pools that
must not overlap are filtered on the host by level content, since tiny rooms can repeat.
"""

from __future__ import annotations

import jax
import numpy as np

from leafe_jax.envs.sokoban.generator import GeneratedLevel, GeneratorConfig, generate_levels

POOL_IDS = {"demo": 1, "train": 2, "eval": 3}


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


def held_out_pool(num: int, cfg: GeneratorConfig, seed: int, num_demo: int) -> GeneratedLevel:
    """The first ``num`` evaluation levels, none identical to the ``num_demo`` demo levels."""
    demo = level_pool("demo", num_demo, cfg, seed)
    return level_pool("eval", num, cfg, seed, exclude=(demo,))
