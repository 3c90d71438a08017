"""Sokoban throughput: ours vs Jumanji vs gym-sokoban, side by side in one process.

    pip install -e ".[bench]"
    python benchmarks/sokoban_throughput.py --boxoban ../shared/data/boxoban/unfiltered/train

* Steps/s: a jitted ``lax.scan`` of 100 random steps over batches 1, 64, 1024, 8192 on
  10x10 / 4-box Boxoban levels, every per-step output consumed (reward, done and - for
  ours - the feedback dict), with and without auto-reset; median of ``--repeats`` runs.
  Jumanji serves the same levels through a local ``Generator`` (offline). Ours draws a
  fresh key per env and step with ``jax.random.split`` (as gymnax users do); Jumanji
  needs none.
* gym-sokoban steps/s: its Python env on the same levels, with the cheapest observation
  (``render`` replaced by returning ``room_state``, i.e. text mode).
* Levels/s: our vmapped generator (``boxoban10x10`` preset) vs gym-sokoban's
  ``generate_room`` for 10x10 / 4 boxes.

Writes JSON (``--out``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.envs.sokoban import (Sokoban, generate_levels, get_preset, make_bank,
                                    read_boxoban)
from leafe_jax.envs.sokoban.throughput import make_rollout, sokoban_step_fn, time_rollout

warnings.filterwarnings("ignore")
T = 100


def ours(bank, batch, repeats, *, feedback, auto_reset, with_obs=False):
    env = Sokoban(10, 10, 4, max_steps=120, feedback=feedback)
    params = env.default_params.replace(bank=bank)
    _, states = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.key(0), batch), params)
    actions = jax.random.randint(jax.random.key(1), (T, batch), 0, 4)
    step = sokoban_step_fn(env, params, auto_reset=auto_reset)
    if with_obs:
        inner = step
        step = lambda s, a, k: (lambda s2, out: (s2, (out, env.get_obs(s2))))(*inner(s, a, k))
    run = make_rollout(step, batch, T)
    return time_rollout(run, states, actions, jax.random.key(2), repeats)


def jumanji_env(bank, auto_reset):
    import jumanji.wrappers
    from jumanji.environments.routing.sokoban import Sokoban as JSokoban
    from jumanji.environments.routing.sokoban.generator import Generator
    from jumanji.environments.routing.sokoban.types import State

    grid = np.asarray(bank.grid).reshape(-1, 10, 10)
    player = np.asarray(bank.player)
    fixed = np.where(grid & 1, 1, np.where(grid & 2, 2, 0)).astype(np.uint8)
    variable = np.where(grid & 4, 4, 0).astype(np.uint8)
    variable[np.arange(len(grid)), player // 10, player % 10] = 3

    class LocalGenerator(Generator):
        """Serves locally loaded levels (Jumanji's own generators download them)."""

        def __init__(self):
            super().__init__()
            self._fixed_grids = jnp.asarray(fixed)
            self._variable_grids = jnp.asarray(variable)

        def __call__(self, rng_key):
            key, idx_key = jax.random.split(rng_key)
            idx = jax.random.randint(idx_key, (), 0, self._fixed_grids.shape[0])
            vg = self._variable_grids[idx]
            return State(key=key, fixed_grid=self._fixed_grids[idx], variable_grid=vg,
                         agent_location=self.get_agent_coordinates(vg),
                         step_count=jnp.array(0, jnp.int32))

    env = JSokoban(generator=LocalGenerator(), time_limit=120)
    return jumanji.wrappers.AutoResetWrapper(env) if auto_reset else env


def jumanji(bank, batch, repeats, *, auto_reset, with_obs=False):
    env = jumanji_env(bank, auto_reset)
    states, _ = jax.vmap(env.reset)(jax.random.split(jax.random.key(0), batch))
    actions = jax.random.randint(jax.random.key(1), (T, batch), 0, 4)

    def step(state, action, key):
        state, ts = env.step(state, action)
        out = (ts.reward, ts.last())
        return state, (out + (ts.observation.grid,) if with_obs else out)

    run = make_rollout(step, batch, T, split_keys=False)
    return time_rollout(run, states, actions, jax.random.key(2), repeats)


def gym_sokoban_steps(levels_grid, levels_player, steps=20000, text=False):
    """gym-sokoban steps/s: ``text=False`` returns ``room_state`` as the observation (no
    rendering at all - its fastest possible loop); ``text=True`` renders the RAGEN text
    observation each step, as RAGEN / verl-agent do."""
    from gym_sokoban.envs.sokoban_env import SokobanEnv

    symbols = np.array(list("#_O\u221aXP"))

    class TextSokoban(SokobanEnv):
        def render(self, mode="human", close=None, scale=1):
            if text:
                return "\n".join("".join(row) for row in symbols[self.room_state])
            return self.room_state

    env = TextSokoban(dim_room=(10, 10), max_steps=120, num_boxes=4, reset=False)
    codes = np.array([1, 0, 2, 0, 4, 0, 3, 0])   # our bit codes -> gym-sokoban codes

    def load(i):
        g = np.asarray(levels_grid[i]).reshape(10, 10)
        env.room_fixed = np.where(g & 1, 0, np.where(g & 2, 2, 1))
        env.room_state = codes[g]
        p = int(levels_player[i])
        env.room_state[p // 10, p % 10] = 5
        env.player_position = np.array([p // 10, p % 10])
        env.num_env_steps, env.boxes_on_target = 0, 0

    rng = np.random.default_rng(0)
    acts = rng.integers(1, 5, steps)
    load(0)
    t0 = time.perf_counter()
    for i, a in enumerate(acts):
        _, _, done, _ = env.step(int(a))
        if done:
            load(i % len(levels_grid))
    return steps / (time.perf_counter() - t0)


def generation(num, repeats, gym_levels):
    """Ours: median of `repeats` batched runs of `num` levels; gym-sokoban: median over
    `gym_levels` single levels."""
    cfg = get_preset("boxoban10x10").generator
    jax.block_until_ready(generate_levels(jax.random.key(0), num, cfg))   # compile
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(generate_levels(jax.random.key(r + 1), num, cfg))
        times.append(time.perf_counter() - t0)
    ours_lps = num / float(np.median(times))
    gym_times = []
    if gym_levels:
        import random

        from gym_sokoban.envs.room_utils import generate_room
        random.seed(0)
        np.random.seed(0)
        for _ in range(gym_levels):
            t0 = time.perf_counter()
            while True:
                try:
                    generate_room(dim=(10, 10), num_steps=int(1.7 * 20), num_boxes=4)
                    break
                except (RuntimeError, RuntimeWarning):
                    pass
            gym_times.append(time.perf_counter() - t0)
    gym_lps = 1.0 / float(np.median(gym_times)) if gym_times else None
    return {"ours_levels_per_s": ours_lps, "ours_times_s": times, "gym_levels_per_s": gym_lps,
            "gym_seconds_per_level": gym_times,
            "ratio": ours_lps / gym_lps if gym_lps else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--boxoban", default=None, help="Boxoban file/dir (default: generated 10x10 levels)")
    ap.add_argument("--batches", default="1,64,1024,8192")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gym-levels", type=int, default=12, help="gym-sokoban levels to time (0: skip)")
    ap.add_argument("--gen-num", type=int, default=4096)
    ap.add_argument("--no-jumanji", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/sokoban_throughput.json")
    args = ap.parse_args()

    if args.boxoban:
        _, levels, H, W = read_boxoban(args.boxoban)
        assert (H, W) == (10, 10), "the benchmark uses 10x10 Boxoban levels"
        source = args.boxoban
    else:
        levels = generate_levels(jax.random.key(0), 1000, get_preset("boxoban10x10").generator).level
        source = "generated boxoban10x10"
    bank = make_bank(levels, 10, 10)
    res = {"device": jax.devices()[0].device_kind, "platform": platform.platform(),
           "jax": jax.__version__, "levels": source, "steps_per_scan": T, "rows": []}
    for B in [int(b) for b in args.batches.split(",")]:
        row = {"batch": B}
        for reset in (False, True):
            tag = "reset" if reset else "noreset"
            row[f"ours_feedback_{tag}"] = ours(bank, B, args.repeats, feedback=True, auto_reset=reset)["steps_per_s"]
            row[f"ours_nofeedback_{tag}"] = ours(bank, B, args.repeats, feedback=False, auto_reset=reset)["steps_per_s"]
            if not args.no_jumanji:
                row[f"jumanji_{tag}"] = jumanji(bank, B, args.repeats, auto_reset=reset)["steps_per_s"]
                row[f"ratio_feedback_{tag}"] = row[f"ours_feedback_{tag}"] / row[f"jumanji_{tag}"]
                row[f"ratio_nofeedback_{tag}"] = row[f"ours_nofeedback_{tag}"] / row[f"jumanji_{tag}"]
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
    B = max(int(b) for b in args.batches.split(","))
    obs = {"batch": B, "ours_feedback_noreset": ours(bank, B, args.repeats, feedback=True,
                                                        auto_reset=False, with_obs=True)["steps_per_s"]}
    if not args.no_jumanji:
        obs["jumanji_noreset"] = jumanji(bank, B, args.repeats, auto_reset=False, with_obs=True)["steps_per_s"]
        obs["ratio"] = obs["ours_feedback_noreset"] / obs["jumanji_noreset"]
    res["with_observation_consumed"] = obs
    print(json.dumps(obs), flush=True)
    grids, players = np.asarray(bank.grid), np.asarray(bank.player)
    res["gym_sokoban_steps_per_s"] = gym_sokoban_steps(grids, players)
    res["gym_sokoban_text_steps_per_s"] = gym_sokoban_steps(grids, players, text=True)
    best = max(r["ours_feedback_noreset"] for r in res["rows"])
    res["ours_best_steps_per_s"] = best
    res["ratio_vs_gym_sokoban_steps"] = best / res["gym_sokoban_steps_per_s"]
    res["ratio_vs_gym_sokoban_text_steps"] = best / res["gym_sokoban_text_steps_per_s"]
    res["generation"] = generation(args.gen_num, 3, args.gym_levels)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)

    print(f"\nsteps/s (millions), {res['device']}; ratio = ours / Jumanji")
    print("| batch | ours fb no-reset | ours no-fb no-reset | Jumanji no-reset | ratio fb / no-fb "
          "| ours fb reset | Jumanji reset | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        j0, j1 = r.get("jumanji_noreset", float("nan")), r.get("jumanji_reset", float("nan"))
        print(f"| {r['batch']} | {r['ours_feedback_noreset']/1e6:.2f} | {r['ours_nofeedback_noreset']/1e6:.2f} "
              f"| {j0/1e6:.2f} | {r['ours_feedback_noreset']/j0:.1f}x / {r['ours_nofeedback_noreset']/j0:.1f}x "
              f"| {r['ours_feedback_reset']/1e6:.2f} | {j1/1e6:.2f} | {r['ours_feedback_reset']/j1:.1f}x |")
    o = res["with_observation_consumed"]
    print(f"observation consumed too, batch {o['batch']}: ours {o['ours_feedback_noreset']/1e6:.2f} M/s, "
          f"Jumanji {o.get('jumanji_noreset', float('nan'))/1e6:.2f} M/s")
    print(f"gym-sokoban: {res['gym_sokoban_steps_per_s']:.0f} steps/s bare, "
          f"{res['gym_sokoban_text_steps_per_s']:.0f} steps/s text mode; ours best / gym = "
          f"{res['ratio_vs_gym_sokoban_steps']:.0f}x bare, {res['ratio_vs_gym_sokoban_text_steps']:.0f}x text")
    g = res["generation"]
    print(f"generation 10x10/4: ours {g['ours_levels_per_s']:.0f} levels/s, gym-sokoban "
          f"{g['gym_levels_per_s'] or float('nan'):.2f} levels/s, ratio {g['ratio'] or float('nan'):.0f}x")


if __name__ == "__main__":
    main()
