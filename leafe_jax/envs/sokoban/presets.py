"""Named Sokoban presets: env shape, step limit and generator settings.

``verl6x6`` is verl-agent's setting (6x6, 1 box, 15 steps; that the paper used it is an
inference, DESIGN §2). The harder small presets leave room between Pass@1 and Pass@128;
``boxoban10x10`` matches DeepMind's Boxoban levels (use real level files for those).
"""

from __future__ import annotations

import dataclasses

from leafe_jax.envs.sokoban.env import Sokoban
from leafe_jax.envs.sokoban.generator import GeneratorConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    name: str
    height: int
    width: int
    num_boxes: int
    max_steps: int
    num_pulls: int

    @property
    def generator(self) -> GeneratorConfig:
        return GeneratorConfig(height=self.height, width=self.width, num_boxes=self.num_boxes,
                               max_solution_steps=self.max_steps, num_pulls=self.num_pulls)

    def make_env(self, **kwargs) -> Sokoban:
        return Sokoban(self.height, self.width, self.num_boxes, max_steps=self.max_steps,
                       generator=self.generator, **kwargs)


PRESETS = {p.name: p for p in [
    Preset(name="verl6x6", height=6, width=6, num_boxes=1, max_steps=15, num_pulls=4),
    Preset(name="6x6_2box", height=6, width=6, num_boxes=2, max_steps=30, num_pulls=8),
    Preset(name="7x7_2box", height=7, width=7, num_boxes=2, max_steps=40, num_pulls=10),
    Preset(name="8x8_3box", height=8, width=8, num_boxes=3, max_steps=60, num_pulls=14),
    Preset(name="boxoban10x10", height=10, width=10, num_boxes=4, max_steps=120, num_pulls=16),
]}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown Sokoban preset {name!r}; known: {', '.join(PRESETS)}") from None
