"""Pure-JAX Sokoban (gymnax API, gym-sokoban rules) with levels, feedback and a solver."""

from leafe_jax.envs.sokoban.constants import ACTION_LETTERS, ACTION_NAMES, NUM_ACTIONS
from leafe_jax.envs.sokoban.boxoban import load_boxoban, read_boxoban, write_boxoban
from leafe_jax.envs.sokoban.env import EnvParams, EnvState, Sokoban, cheap_index
from leafe_jax.envs.sokoban.level import (Level, LevelBank, LevelFormatError,
                                          level_to_ascii, make_bank, parse_level, push_distance,
                                          stack_levels)
from leafe_jax.envs.sokoban.generator import (GeneratedLevel, GeneratorConfig, generate_level,
                                              generate_levels)
from leafe_jax.envs.sokoban.presets import PRESETS, Preset, get_preset
from leafe_jax.envs.sokoban.render import render_rgb, render_text, save_gif
from leafe_jax.envs.sokoban.solver import SolveResult, solve

__all__ = [
    "ACTION_LETTERS", "ACTION_NAMES", "NUM_ACTIONS", "PRESETS", "EnvParams", "EnvState",
    "GeneratedLevel", "GeneratorConfig", "Level", "LevelBank", "LevelFormatError", "Preset",
    "SolveResult", "Sokoban", "cheap_index", "generate_level", "generate_levels", "get_preset",
    "level_to_ascii", "load_boxoban", "make_bank", "parse_level",
    "push_distance", "read_boxoban", "render_rgb", "render_text", "save_gif", "solve",
    "stack_levels", "write_boxoban",
]
