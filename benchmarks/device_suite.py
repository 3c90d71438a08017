"""The accelerator check: Sokoban steps/s, policy decode tokens/s, SFT MFU - on whatever
device JAX sees, each part in its own try, all results into ``$OUT`` (or ``--out``).

    OUT=/tmp/dev bash benchmarks/run_device.sh          # the wrapper; see there

Sokoban needs only JAX and NumPy (the environment falls back to JAX-only ``struct`` and
``spaces`` when flax/gymnax do not import); decode and SFT need flax and optax and are
recorded as skipped, with the reason, when those do not import. ``--small`` (automatic on
CPU) shrinks every size so the script is testable on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def sokoban_part(small: bool) -> dict:
    from leafe_jax.envs import compat
    from leafe_jax.envs.sokoban import Sokoban, generate_levels, get_preset, make_bank
    from leafe_jax.envs.sokoban.throughput import make_rollout, sokoban_step_fn, time_rollout

    preset = get_preset("boxoban10x10")
    n_levels = 256 if small else 4096
    gen = generate_levels(jax.random.key(0), n_levels, preset.generator)
    env = Sokoban(10, 10, 4, max_steps=120)
    params = env.default_params.replace(bank=make_bank(gen.level, 10, 10))
    rows = []
    for B in ((64, 1024) if small else (1024, 8192, 65536)):
        idx = jnp.arange(B) % n_levels
        states = jax.vmap(lambda i: env.reset_to_index(i, params)[1])(idx)
        T = 100
        actions = jax.random.randint(jax.random.key(1), (T, B), 0, 4)
        for auto in (False, True):
            run = make_rollout(sokoban_step_fn(env, params, auto_reset=auto), B, T)
            r = time_rollout(run, states, actions, jax.random.key(2), repeats=3 if small else 5)
            rows.append({"batch": B, "auto_reset": auto, **r})
            print(json.dumps(rows[-1]), flush=True)
    return {"native_env": compat.NATIVE, "levels": "generated 10x10/4", "rows": rows}


def decode_part(small: bool) -> dict:
    from decode_throughput import call_roofline, machine_limits, median_time

    from leafe_jax.policy.config import get_config, with_dtype_policy
    from leafe_jax.policy.model import create_model
    from leafe_jax.policy.sampler import generate
    from leafe_jax.policy.sampling import Greedy

    peak, bw = machine_limits(repeats=3)
    prompt, new = 32, (16 if small else 64)
    out = {"matmul_peak_flops": peak, "memory_bw_bytes_per_s": bw, "prompt": prompt,
           "new_tokens": new, "rows": []}
    # smollm2-135m: the embedded LLM's shape with random weights (the GGUF is not carried to
    # the device machine; decode speed does not depend on the weights' values)
    cases = [("sokoban-small", (1, 64)), ("smollm2-135m", (1,))] if small else \
        [("sokoban-small", (1, 64, 1024)), ("sokoban-100m", (1, 64, 256)),
         ("smollm2-135m", (1, 16, 64, 256)), ("qwen2.5-0.5b", (1, 16, 64))]
    for name, batches in cases:
        cfg = with_dtype_policy(get_config(name), "float32")
        model = create_model(cfg, seed=0)
        for B in batches:
            prompts = np.random.default_rng(B).integers(1, cfg.vocab_size, (B, prompt)).astype(np.int32)
            lengths = np.full((B,), prompt, np.int32)

            def ours():
                generate(model, prompts, lengths, jax.random.key(0), max_new_tokens=new,
                         strategy=Greedy()).tokens.block_until_ready()

            t = median_time(ours, 3)
            roof, bound = call_roofline(cfg, B, prompt, new, peak, bw)
            out["rows"].append({"model": name, "batch": B, "tokens_per_s": B * new / t, "s": t,
                                "roofline_fraction": roof / t, "bound": bound})
            print(json.dumps(out["rows"][-1]), flush=True)
    return out


def sft_part(small: bool) -> dict:
    from sft_throughput import run
    if small:
        return {"rows": [run("test-tiny", 4, 64, repeats=2)]}
    return {"rows": [run("sokoban-100m", 16, 1024, repeats=5),
                     run("sokoban-100m", 16, 1024, repeats=5, policy="bf16-mixed")]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results/device"))
    ap.add_argument("--small", action="store_true", help="small sizes (default on CPU)")
    ap.add_argument("--parts", default="sokoban,decode,sft")
    a = ap.parse_args()
    small = a.small or jax.default_backend() == "cpu"
    os.makedirs(a.out, exist_ok=True)
    summary = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
               "jax": jax.__version__, "python": platform.python_version(), "small": small,
               "parts": {}}
    for part in a.parts.split(","):
        t0 = time.perf_counter()
        try:
            res = {"sokoban": sokoban_part, "decode": decode_part, "sft": sft_part}[part](small)
            status = "ok"
        except ImportError as e:
            res, status = {"skipped": f"{type(e).__name__}: {e}"}, "skipped"
        except Exception:  # record and go on: one broken part must not hide the others
            res, status = {"error": traceback.format_exc()[-3000:]}, "error"
        res |= {"device": summary["device"], "seconds": time.perf_counter() - t0}
        with open(os.path.join(a.out, f"{part}.json"), "w") as fh:
            json.dump(res, fh, indent=1)
        summary["parts"][part] = {"status": status, "seconds": res["seconds"]}
        print(f"[{part}] {status} in {res['seconds']:.0f} s", flush=True)
    with open(os.path.join(a.out, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    with open(os.path.join(a.out, "summary.md"), "w") as fh:
        fh.write(f"# Device check: {summary['device']} ({summary['backend']}), JAX {summary['jax']}, "
                 f"Python {summary['python']}{' (small sizes)' if small else ''}\n\n")
        for part, s in summary["parts"].items():
            fh.write(f"- {part}: {s['status']} ({s['seconds']:.0f} s)\n")
    return 0 if all(s["status"] != "error" for s in summary["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
