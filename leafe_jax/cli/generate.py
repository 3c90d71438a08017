"""Generate text with a pretrained model (the embedded SmolLM2 by default): prompts or chats."""

from __future__ import annotations

import argparse
import json


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", nargs="+", help="user messages (or raw prompts with --raw)")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="an embedded model's name, a .gguf file or a Hugging Face directory")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system", default=None, help="a system message for every chat")
    p.add_argument("--raw", action="store_true", help="prompts are raw text, not chat messages")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from leafe_jax.policy.text import chat_generate

    out = chat_generate(args.model, args.prompts, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                        system=args.system, raw=args.raw, stop=tuple(args.stop))
    for prompt, text in zip(args.prompts, out.texts):
        print(json.dumps({"prompt": prompt, "response": text}, ensure_ascii=False))
    return 0
