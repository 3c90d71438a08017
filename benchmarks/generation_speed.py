"""Level generation speed, 10x10 / 4 boxes: ours (vmapped JAX) vs gym-sokoban.

    python benchmarks/generation_speed.py --gym-levels 30

gym-sokoban's time per level varies by an order of magnitude (its exhaustive reverse
search), so its median needs dozens of samples; ours is the median of 5 batched runs.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np

sys.path.insert(0, "benchmarks")
from sokoban_throughput import generation  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gym-levels", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/generation_speed.json")
    args = ap.parse_args()
    res = generation(args.num, args.repeats, args.gym_levels)
    res["device"] = jax.devices()[0].device_kind
    g = np.array(res["gym_seconds_per_level"])
    res["gym_seconds_quartiles"] = np.percentile(g, [25, 50, 75]).tolist() if len(g) else None
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)
    print(json.dumps({k: v for k, v in res.items() if k not in ("gym_seconds_per_level",)}, indent=1))


if __name__ == "__main__":
    main()
