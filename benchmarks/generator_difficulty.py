"""Difficulty of generated levels: the exact solver's optimal solution lengths per preset.

    python benchmarks/generator_difficulty.py --num 200

gym-sokoban's own generator, measured the same way over a few hundred levels (DESIGN §2):
6x6/1 box median 2 (p90 5); 6x6/2 median 7 (p90 14); 7x7/2 median 9 (p90 20);
8x8/3 median 18 (p90 32). Writes JSON and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from leafe_jax.envs.sokoban import PRESETS, generate_levels, solve

GYM_SOKOBAN = {"verl6x6": (2, 5), "6x6_2box": (7, 14), "7x7_2box": (9, 20), "8x8_3box": (18, 32)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=200)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--max-nodes", type=int, default=500_000)
    ap.add_argument("--out", default="benchmarks/results/generator_difficulty.json")
    args = ap.parse_args()
    rows = []
    for name, p in PRESETS.items():
        g = generate_levels(jax.random.key(args.seed), args.num, p.generator)
        lens, t0, unknown = [], time.perf_counter(), 0
        for i in range(args.num):
            res = solve(jax.tree.map(lambda x: np.asarray(x[i]), g.level), p.height, p.width,
                        max_nodes=args.max_nodes)
            if res.solved:
                assert res.length <= int(g.solution_len[i])
                lens.append(res.length)
            else:
                assert res.status == "node_limit", res
                unknown += 1
        lens = np.array(lens)
        sol = np.asarray(g.solution_len)
        row = {"preset": name, "levels": args.num, "solved_by_solver": len(lens),
               "node_limit": unknown, "optimal_median": float(np.median(lens)),
               "optimal_p90": float(np.percentile(lens, 90)), "optimal_max": int(lens.max()),
               "returned_solution_median": float(np.median(sol)), "step_limit": p.max_steps,
               "gym_sokoban_median_p90": GYM_SOKOBAN.get(name),
               "solver_seconds": time.perf_counter() - t0}
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(args.out, "w") as fh:
        json.dump(rows, fh, indent=1)
    print("\n| preset | optimal median (p90, max) | gym-sokoban median (p90) | returned solution median | step limit |")
    print("|---|---|---|---|---|")
    for r in rows:
        gs = r["gym_sokoban_median_p90"]
        print(f"| {r['preset']} | {r['optimal_median']:.0f} ({r['optimal_p90']:.0f}, {r['optimal_max']}) | "
              f"{f'{gs[0]} ({gs[1]})' if gs else '-'} | {r['returned_solution_median']:.0f} | {r['step_limit']} |")


if __name__ == "__main__":
    main()
