"""Where a decode step's time goes: per-op-class milliseconds per step of ``sampler.decode``.

    pip install xprof                 # reads the profiler's trace (not a project dependency)
    python benchmarks/profile_decode.py --batches 1,16,64

Profiles one ``generate`` (prefill + ``--new`` greedy decode steps, float32, after a warm-up
that compiles) of the embedded SmolLM2-135M-Instruct (or ``--model``, random weights of a
preset) with ``jax.profiler``, then sums the XLA kernels of the decode module by output
shape and source op and divides by the steps. Kernels of two threads can overlap, so the
classes add up to more than the wall time per step (printed too). Writes JSON.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leafe_jax.policy.config import get_config
from leafe_jax.policy.model import create_model
from leafe_jax.policy.pretrained import EMBEDDED, load_pretrained
from leafe_jax.policy.sampler import decode, new_cache, prefill
from leafe_jax.policy.sampling import Greedy


def kernel_classes(trace_dir: str, hlo_text: str, steps: int) -> dict:
    """``{"<shape> <op>": ms per step}`` of the decode module's kernels."""
    from xprof.convert import raw_to_tool_data
    files = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    data, _ = raw_to_tool_data.xspace_to_tool_data(files, "trace_viewer", {})
    per_op = collections.Counter()
    for e in json.loads(data)["traceEvents"]:
        args = e.get("args", {})
        if e.get("ph") == "X" and args.get("hlo_module") == "jit_decode" and "end:" not in e["name"]:
            per_op[args["hlo_op"]] += e["dur"]
    classes = collections.Counter()
    for op, us in per_op.items():
        line = re.search(r"\n\s*%" + re.escape(op) + r" = ([^\n]*)", hlo_text)
        line = line.group(1) if line else "? "
        src = re.search(r'op_name="([^"]+)"', line)
        shape, src = line.split(" ")[0], src.group(1).split("/")[-1] if src else op.split(".")[0]
        classes[f"{shape} {src}"] += us / 1e3 / steps
    return dict(classes.most_common())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", default="benchmarks/results/profile_decode.json")
    a = ap.parse_args()
    model = (load_pretrained(a.model)[0] if a.model in EMBEDDED
             else create_model(get_config(a.model), seed=0))
    graphdef, state = nnx.split(model)
    res = {"model": a.model, "prompt": a.prompt, "new_tokens": a.new, "rows": []}
    for B in [int(b) for b in a.batches.split(",")]:
        S = a.prompt + a.new + (-(a.prompt + a.new)) % 16

        def run():
            cache = new_cache(model, B, S)
            toks = jnp.ones((B, a.prompt), jnp.int32)
            last, cache = prefill(graphdef, state, toks, jnp.full((B,), a.prompt, jnp.int32), cache)
            jax.block_until_ready(last)
            t0 = time.perf_counter()
            out, _ = decode(graphdef, state, last, cache, jax.random.key(0), None,
                            max_new_tokens=a.new, strategy=Greedy())
            jax.block_until_ready(out.tokens)
            return time.perf_counter() - t0

        run()
        wall = float(np.median([run() for _ in range(3)])) / a.new
        hlo = decode.lower(graphdef, state, jnp.zeros((B, model.cfg.vocab_size)), new_cache(model, B, S),
                           jax.random.key(0), None, max_new_tokens=a.new,
                           strategy=Greedy()).compile().as_text()
        trace = tempfile.mkdtemp()
        jax.profiler.start_trace(trace)
        run()
        jax.profiler.stop_trace()
        classes = kernel_classes(trace, hlo, a.new)
        res["rows"].append({"batch": B, "wall_ms_per_step": wall * 1e3, "kernel_ms_per_step": classes})
        print(f"\nbatch {B}: {wall * 1e3:.1f} ms per decode step (wall, unprofiled); kernels "
              f"(ms/step, summed over threads; profiled: {sum(classes.values()):.1f})")
        for k, v in list(classes.items())[: a.top]:
            print(f"  {v:7.2f}  {k}")
    with open(a.out, "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
