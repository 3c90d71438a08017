"""Sokoban tools: demo, generate, solve, render levels and action sequences."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def register(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="generate levels, check their solutions, measure steps/s")
    d.add_argument("--preset", default="7x7_2box")
    d.add_argument("--num-levels", type=int, default=256)
    d.add_argument("--batch", type=int, default=4096)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_demo)

    g = sub.add_parser("generate", help="generate levels (+ solutions) into a Boxoban file")
    g.add_argument("--preset", default="7x7_2box")
    g.add_argument("--num", type=int, default=100)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True, help="Boxoban .txt file; solutions go to <out>.solutions.json")
    g.set_defaults(func=_generate)

    s = sub.add_parser("solve", help="optimal solution of a level from a Boxoban file")
    s.add_argument("levels", help="Boxoban .txt file or directory")
    s.add_argument("--index", type=int, default=0)
    s.add_argument("--max-nodes", type=int, default=1_000_000)
    s.set_defaults(func=_solve)

    r = sub.add_parser("render", help="print a level (and an action sequence), optionally as GIF/PNG")
    r.add_argument("levels", help="Boxoban .txt file or directory")
    r.add_argument("--index", type=int, default=0)
    r.add_argument("--actions", default="", help="letters U/D/L/R, or 'solve' for the optimal solution")
    r.add_argument("--gif", default=None, help="write an animated GIF here")
    r.add_argument("--png", default=None, help="write the first frame as PNG here")
    r.set_defaults(func=_render)


def _load_one(path: str, index: int):
    from leafe_jax.envs.sokoban import Level, read_boxoban

    ids, levels, H, W = read_boxoban(path)
    if not 0 <= index < len(ids):
        raise ValueError(f"--index {index} out of range: {path} holds {len(ids)} levels")
    level = Level(grid=levels.grid[index], player=levels.player[index])
    num_boxes = int(((np.asarray(level.grid) & 4) != 0).sum())
    return ids[index], level, H, W, num_boxes


def _parse_actions(text: str) -> list[int]:
    from leafe_jax.envs.sokoban import ACTION_LETTERS

    bad = [c for c in text.upper() if c not in ACTION_LETTERS]
    if bad:
        raise ValueError(f"unknown action letters {''.join(bad)!r}: use U, D, L, R")
    return [ACTION_LETTERS.index(c) for c in text.upper()]


def _solve(args) -> int:
    from leafe_jax.envs.sokoban import ACTION_LETTERS, solve

    lid, level, H, W, _ = _load_one(args.levels, args.index)
    t0 = time.perf_counter()
    res = solve(level, H, W, max_nodes=args.max_nodes)
    dt = time.perf_counter() - t0
    sol = "".join(ACTION_LETTERS[a] for a in res.actions) if res.solved else "-"
    print(json.dumps({"level": lid, "status": res.status, "length": res.length, "solution": sol,
                      "nodes": res.nodes, "seconds": round(dt, 3)}))
    return 0


def _render(args) -> int:
    from leafe_jax.envs.sokoban import ACTION_LETTERS, Sokoban, render_rgb, render_text, save_gif, solve
    from leafe_jax.envs.sokoban.replay import replay

    lid, level, H, W, nb = _load_one(args.levels, args.index)
    if args.actions == "solve":
        res = solve(level, H, W)
        if not res.solved:
            raise ValueError(f"level {lid}: no solution found ({res.status})")
        actions = list(res.actions)
    else:
        actions = _parse_actions(args.actions)
    env = Sokoban(H, W, nb, max_steps=max(len(actions), 1))
    rep = replay(env, level, np.array(actions or [-1], np.int32))
    frames = np.asarray(rep.obs)[: len(actions) + 1]
    print(f"level {lid}")
    print(render_text(frames[0]))
    for t, a in enumerate(actions):
        print(f"\nstep {t + 1}: {ACTION_LETTERS[a]}  reward {float(rep.rewards[t]):+.1f}"
              + ("  SOLVED" if bool(rep.solved[t]) else ""))
        print(render_text(frames[t + 1]))
    if args.gif:
        save_gif(frames, args.gif)
        print(f"wrote {args.gif}")
    if args.png:
        from PIL import Image
        Image.fromarray(render_rgb(frames[0], 24)).save(args.png)
        print(f"wrote {args.png}")
    return 0


def _generate(args) -> int:
    import jax

    from leafe_jax.envs.sokoban import ACTION_LETTERS, get_preset, generate_levels, write_boxoban

    preset = get_preset(args.preset)
    t0 = time.perf_counter()
    g = generate_levels(jax.random.key(args.seed), args.num, preset.generator)
    jax.block_until_ready(g)
    dt = time.perf_counter() - t0
    write_boxoban(args.out, g.level, preset.height, preset.width)
    sols = ["".join(ACTION_LETTERS[a] for a in row[: int(n)]) for row, n in
            zip(np.asarray(g.solution), np.asarray(g.solution_len))]
    with open(args.out + ".solutions.json", "w") as fh:
        json.dump({"preset": preset.name, "seed": args.seed, "solutions": sols}, fh)
    print(f"wrote {args.num} {preset.name} levels to {args.out} in {dt:.1f}s "
          f"(median solution {np.median(np.asarray(g.solution_len)):.0f} steps)")
    return 0


def _demo(args) -> int:
    import jax

    from leafe_jax.envs.sokoban import (get_preset, generate_levels, make_bank, render_text,
                                        solve)
    from leafe_jax.envs.sokoban.replay import replay
    from leafe_jax.envs.sokoban.throughput import make_rollout, sokoban_step_fn, time_rollout

    preset = get_preset(args.preset)
    env = preset.make_env()
    print(f"[1/4] generating {args.num_levels} {preset.name} levels on {jax.devices()[0].platform} ...")
    t0 = time.perf_counter()
    g = generate_levels(jax.random.key(args.seed), args.num_levels, preset.generator)
    jax.block_until_ready(g)
    print(f"      {args.num_levels / (time.perf_counter() - t0):.0f} levels/s (incl. compile), "
          f"median solution {np.median(np.asarray(g.solution_len)):.0f} steps")

    print("[2/4] replaying every returned solution ...")
    rep = jax.jit(jax.vmap(lambda l, a: replay(env, l, a).solved[-1]))(g.level, g.solution)
    print(f"      {int(rep.sum())}/{args.num_levels} solved by their solutions")

    print("[3/4] exact solver on the first 20 levels ...")
    opt = []
    for i in range(min(20, args.num_levels)):
        res = solve(jax.tree.map(lambda x: np.asarray(x[i]), g.level), preset.height, preset.width)
        opt.append(res.length if res.solved else -1)
    print(f"      optimal lengths {opt}")
    lvl0 = jax.tree.map(lambda x: x[0], g.level)
    print(render_text(np.asarray(env.reset_to_level(lvl0)[0])))

    print(f"[4/4] random-action throughput, batch {args.batch}, 100 steps, auto-reset, feedback on ...")
    bank = make_bank(g.level, preset.height, preset.width)
    params = env.default_params.replace(bank=bank)
    _, states = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.key(1), args.batch), params)
    actions = jax.random.randint(jax.random.key(2), (100, args.batch), 0, 4)
    run = make_rollout(sokoban_step_fn(env, params, auto_reset=True), args.batch, 100)
    res = time_rollout(run, states, actions, jax.random.key(3))
    print(f"      {res['steps_per_s'] / 1e6:.2f} M env steps/s (median of 5)")
    return 0 if int(rep.sum()) == args.num_levels else 1
