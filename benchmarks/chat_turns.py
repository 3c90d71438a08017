"""Multi-turn chats with the embedded SmolLM2-135M-Instruct: tokens prefilled and wall time
per turn with the KV cache reused (``text.ChatSession``) and with a fresh prefill of the
whole conversation each turn (``text.generate_text``); plus prefill tokens/s.

    python benchmarks/chat_turns.py --out benchmarks/results/chat_turns.json
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
from flax import nnx

from leafe_jax.policy.pretrained import load_pretrained
from leafe_jax.policy.sampler import extend, new_cache
from leafe_jax.policy.text import ChatSession, encode_prompts, generate_text

QUESTIONS = ["What is Sokoban?", "Name a fruit.", "Explain rain.", "Write a short poem.",
             "What is 7 times 8?", "Describe a cat.", "How do boxes move?", "Say hello."]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--out", default="benchmarks/results/chat_turns.json")
    args = ap.parse_args()
    model, tok = load_pretrained()
    res = {"batch": len(QUESTIONS), "new_tokens": args.new, "turns": []}
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    session = ChatSession(model, tok, capacity=1024)
    # warm-up (compiles the buckets the turns use): one throw-away session of the same turns
    warm = ChatSession(model, tok, capacity=1024)
    wchats = [list(c) for c in chats]
    for turn in range(args.turns):
        o = warm.reply(wchats, jax.random.key(turn), max_new_tokens=args.new)
        generate_text(model, tok, wchats, jax.random.key(turn), max_new_tokens=args.new)
        for c, text in zip(wchats, o.texts):
            c += [{"role": "assistant", "content": text}, {"role": "user", "content": "Tell me more."}]
    for turn in range(args.turns):
        before = session.prefilled
        t0 = time.perf_counter()
        out = session.reply(chats, jax.random.key(turn), max_new_tokens=args.new)
        t_reuse = time.perf_counter() - t0
        full = sum(len(i) for i in encode_prompts(tok, chats))
        t0 = time.perf_counter()
        generate_text(model, tok, chats, jax.random.key(turn), max_new_tokens=args.new)
        t_fresh = time.perf_counter() - t0
        row = {"turn": turn + 1, "prefilled_reuse": session.prefilled - before, "prefilled_fresh": full,
               "seconds_reuse": t_reuse, "seconds_fresh": t_fresh, "rows_reset": session.rows_reset}
        res["turns"].append(row)
        print(json.dumps(row), flush=True)
        for c, text in zip(chats, out.texts):
            c += [{"role": "assistant", "content": text}, {"role": "user", "content": "Tell me more."}]
    # prefill throughput: 8 rows x 256 tokens into an empty cache
    graphdef, state = nnx.split(model)
    toks = np.random.default_rng(0).integers(3, 49152, (8, 256)).astype(np.int32)
    lens = np.full(8, 256, np.int32)
    ts = []
    for _ in range(4):
        cache = new_cache(model, 8, 512)
        t0 = time.perf_counter()
        jax.block_until_ready(extend(graphdef, state, toks, lens, cache))
        ts.append(time.perf_counter() - t0)
    res["prefill_tokens_per_s"] = float(8 * 256 / np.median(ts[1:]))
    print(json.dumps({"prefill_tokens_per_s": res["prefill_tokens_per_s"]}))
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
