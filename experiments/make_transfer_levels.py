"""The transfer level set: same-size levels from another generator - gym-sokoban's own
``generate_room`` (random-walk room topology, then reverse play from the solved state; the
generator verl-agent's Sokoban uses) - the analogue of the paper's MBPP transfer test.

    pip install --no-deps gym-sokoban==0.0.6        # only its room_utils.py is used (no gym)
    python experiments/make_transfer_levels.py --preset 6x6_2box --num 200 --seed 0
    python experiments/make_transfer_levels.py --preset verl6x6 --num 200 --seed 0

Writes ``experiments/levels/transfer_<preset>.txt`` (Boxoban format) and a ``.json`` beside
it (generator, seed, each level's optimal length from the project's exact solver, what was
rejected). Kept: levels the solver proves solvable within the preset's episode length, each
once. The pipeline evaluates every trained policy on such a file beside the held-out levels
(``eval.transfer_levels``); the project reads it by path, never the generator.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys

import numpy as np

from leafe_jax.envs.sokoban.boxoban import parse_boxoban_text, write_boxoban
from leafe_jax.envs.sokoban.level import stack_levels
from leafe_jax.envs.sokoban.presets import get_preset
from leafe_jax.envs.sokoban.solver import solve

# gym-sokoban's room-state codes -> Boxoban characters (player on a target: '+'). Its
# generate_room docstring swaps 3 and 4; the code (and its env) use 3 = box on a target,
# 4 = box off target (checked against the returned box mapping).
_CHARS = {0: "#", 1: " ", 2: ".", 3: "*", 4: "$", 5: "@"}


def room_utils():
    """gym-sokoban's ``room_utils`` module, loaded from its file: the package's own
    ``__init__`` imports gym, which the generator does not need."""
    spec = importlib.util.find_spec("gym_sokoban")
    if spec is None:
        sys.exit("gym-sokoban is not installed: pip install --no-deps gym-sokoban==0.0.6")
    path = os.path.join(spec.submodule_search_locations[0], "envs", "room_utils.py")
    mod_spec = importlib.util.spec_from_file_location("gym_sokoban_room_utils", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def to_text(structure, state) -> str:
    rows = []
    for s_row, st_row in zip(structure.astype(int), state.astype(int)):
        rows.append("".join("+" if st == 5 and s == 2 else _CHARS[st] for s, st in zip(s_row, st_row)))
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="6x6_2box")
    ap.add_argument("--num", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    preset = get_preset(a.preset)
    H, W = preset.height, preset.width
    out = a.out or os.path.join(os.path.dirname(__file__), "levels", f"transfer_{a.preset}.txt")
    ru = room_utils()
    random.seed(a.seed)
    np.random.seed(a.seed)
    steps = int(1.7 * (H + W))                 # gym-sokoban's default num_gen_steps
    kept, texts, lengths, rejected = [], set(), [], {"generator": 0, "duplicate": 0,
                                                     "unsolved": 0, "too_long": 0}
    while len(kept) < a.num:
        try:
            structure, state, _ = ru.generate_room(dim=(H, W), num_steps=steps,
                                                   num_boxes=preset.num_boxes)
        except (RuntimeError, RuntimeWarning):
            rejected["generator"] += 1
            continue
        text = to_text(structure, state)
        if text in texts:
            rejected["duplicate"] += 1
            continue
        _, (level,), _, _ = parse_boxoban_text(f"; x\n{text}\n", source="generate_room")
        r = solve(level, H, W, max_nodes=500_000)
        if not r.solved:
            rejected["unsolved"] += 1
            continue
        if r.length > preset.max_steps:
            rejected["too_long"] += 1
            continue
        texts.add(text)
        kept.append(level)
        lengths.append(r.length)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write_boxoban(out, stack_levels(kept), H, W, ids=[str(i) for i in range(len(kept))])
    meta = {"command": " ".join(["python", "experiments/make_transfer_levels.py"] + sys.argv[1:]),
            "generator": "gym-sokoban 0.0.6 room_utils.generate_room", "num_steps": steps,
            "preset": a.preset, "height": H, "width": W, "num_boxes": preset.num_boxes,
            "max_steps": preset.max_steps, "seed": a.seed, "levels": len(kept),
            "optimal_lengths": lengths, "rejected": rejected,
            "mean_optimal_length": float(np.mean(lengths))}
    with open(os.path.splitext(out)[0] + ".json", "w") as fh:
        json.dump(meta, fh, indent=1)
    print(f"{out}: {len(kept)} levels, optimal length {np.mean(lengths):.1f} "
          f"(rejected {rejected})")


if __name__ == "__main__":
    main()
