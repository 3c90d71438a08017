"""Text-agent throughput: SmolLM2-135M-Instruct playing text Sokoban through the whole loop.

    python benchmarks/text_agent.py --out benchmarks/results/text_agent.json

Per batch size (1 / 16 / 64 episodes at once): wall time of ``TextSession.roots`` over a
fixed number of turns (the zero-shot model rarely answers validly, so every episode runs
to the step limit: turns = batch x steps), turns/s, generated tokens/s, prefilled tokens
per turn, and the share of the wall time in prefill (the turn's own tokens after the
cached instruction prefix), decode, host rendering + tokenizing, host parsing and
recording, and the vmapped env step. Median of ``--repeats`` runs after a warm-up run that
compiles the shapes. Format: verl6x6, ``history_length`` 1, responses <= ``--new`` tokens.

``--bucket-steps 1,4`` measures the prompt-width / cache-slot bucketing side by side in one
run: powers of two (1) against four sizes per octave (4, the default of
``interfaces.text.policy``); ``--experience`` also runs every batch with a feedback
reflector's experience in the prompt (a rollback branch's turn: ~30 tokens more, which
pushes the turn past 128 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from leafe_jax.envs.sokoban import get_preset
from leafe_jax.envs.sokoban.pools import level_pool
from leafe_jax.interfaces.text import format as F
from leafe_jax.interfaces.text.agent import TextSokoban
from leafe_jax.interfaces.text import policy as P
from leafe_jax.interfaces.text.policy import LMPolicy
from leafe_jax.policy.pretrained import load_pretrained


EXPERIENCE = "Moving right from row 4, column 5 moved nothing. Choose a different action there."


def run_once(agent, policy, levels, B: int, seed: int, experience=None) -> dict:
    s = agent.session(policy, jax.tree.map(lambda x: x[:B], levels), max_depth=1, temperature=1.0)
    policy.timing = {"prefill": 0.0, "decode": 0.0}
    p0, g0 = policy.prefilled, policy.generated
    start = None if experience is None else np.repeat(experience[None], B, 0)
    t0 = time.perf_counter()
    out = s.roots(np.arange(B), jax.random.split(jax.random.key(seed), B), start_experience=start)
    wall = time.perf_counter() - t0
    turns = int(out.episodes.num_steps.sum())
    shares = {"prefill": policy.timing["prefill"], "decode": policy.timing["decode"],
              "host_render": s.timing["render"], "host_parse": s.timing["parse"], "env": s.timing["env"]}
    shares["other"] = wall - sum(shares.values())
    return {"wall_s": wall, "turns": turns, "turns_per_s": turns / wall,
            "generated_tokens_per_s": (policy.generated - g0) / wall,
            "prefilled_tokens_per_turn": (policy.prefilled - p0) / turns,
            "share": {k: v / wall for k, v in shares.items()}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-steps", default="4", help="bucket sizes per octave to compare (e.g. 1,4)")
    ap.add_argument("--experience", action="store_true", help="also time turns with an experience")
    ap.add_argument("--out", default="benchmarks/results/text_agent.json")
    args = ap.parse_args()
    preset = get_preset("verl6x6")
    env = preset.make_env()
    model, tok = load_pretrained()
    policy = LMPolicy(model, tok, name="smollm2-135m-instruct")
    agent = TextSokoban(env, tok, env.default_params.replace(max_steps_in_episode=args.steps),
                        F.TextConfig(history_length=1, max_new_tokens=args.new))
    batches = [int(b) for b in args.batches.split(",")]
    levels = level_pool("train", max(batches), preset.generator, 0).level
    res = {"model": "smollm2-135m-instruct (GGUF Q4_1 dequantised, float32)", "preset": "verl6x6",
           "history_length": 1, "max_new_tokens": args.new, "steps": args.steps,
           "prefix_tokens": len(agent.fmt.prefix_ids), "cpu": platform.processor() or platform.machine(),
           "cores": os.cpu_count(), "jax": jax.__version__, "batches": {}}
    exp = agent.fmt.experience_ids(EXPERIENCE, agent.cfg.experience_tokens)[0]
    cases = [(B, steps, e) for B in batches for e in ([None, exp] if args.experience else [None])
             for steps in (int(x) for x in args.bucket_steps.split(","))]
    for B, steps, e in cases:
        P.LENGTH_STEPS = steps
        name = str(B) if steps == 4 and e is None else f"{B}/steps{steps}" + ("/experience" if e is not None else "")
        run_once(agent, policy, levels, B, seed=100, experience=e)     # compiles these shapes
        runs = [run_once(agent, policy, levels, B, seed=i, experience=e) for i in range(args.repeats)]
        med = lambda k: float(np.median([r[k] for r in runs]))
        res["batches"][name] = {
            "turns_per_s": med("turns_per_s"), "generated_tokens_per_s": med("generated_tokens_per_s"),
            "prefilled_tokens_per_turn": med("prefilled_tokens_per_turn"), "wall_s": med("wall_s"),
            "turns": runs[0]["turns"],
            "share": {k: float(np.median([r["share"][k] for r in runs])) for k in runs[0]["share"]},
            "runs": runs}
        print(name, json.dumps(res["batches"][name] | {"runs": None}), flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
