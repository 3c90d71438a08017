"""Memory per chip of full SFT steps for real TPU slices, from ahead-of-time compilation on
this CPU machine (as MaxText's ``train_compile``): abstract params, optimiser state and batch
with their shardings, ``jax.jit(step).lower(...).compile().memory_analysis()``; nothing is
allocated.

    pip install -e ".[aot]"          # libtpu (the TPU compiler) beside jax 0.10.2
    python benchmarks/tpu_aot_sizing.py [--quick]

The step is the project's ``train_step`` (AdamW, clipping, masked loss), dtype policy
``bf16-mixed`` (float32 master weights and Adam moments, bfloat16 compute), per-block
rematerialisation on. Writes ``benchmarks/results/tpu_aot_sizing.json`` and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time

import jax

from leafe_jax.policy.config import get_config, with_dtype_policy
from leafe_jax.sharding import make_mesh
from leafe_jax.train.sizing import compile_train_step

GiB = 1024 ** 3
HBM_GIB = {"TPU v5 lite": 16, "TPU v5": 95, "TPU v6 lite": 32, "TPU v4": 32}

# (model, topology, mesh (data, fsdp, tp), global batch, seq len, remat[, scan_layers])
CASES = [
    ("qwen2.5-7b", "v5e:8x8", (1, 64, 1), 64, 2048, True),
    ("qwen2.5-7b", "v5e:8x8", (1, 64, 1), 64, 2048, False),
    ("qwen2.5-7b", "v5e:8x8", (4, 16, 1), 64, 2048, True),
    ("qwen2.5-7b", "v5p:4x4x4", (1, 64, 1), 64, 4096, True),
    ("qwen2.5-72b", "v5p:4x4x4", (1, 64, 1), 64, 2048, True),
    ("qwen2.5-72b", "v5p:4x4x4", (1, 16, 4), 64, 2048, True),
    ("qwen2.5-72b", "v5e:8x8", (1, 64, 1), 64, 2048, True),
    ("qwen2.5-72b", "v5e:16x16", (1, 256, 1), 256, 2048, True),
    # the layers under lax.scan (ModelConfig.scan_layers): one layer's gathered weights live
    ("qwen2.5-7b", "v5e:8x8", (1, 64, 1), 64, 2048, True, True),
    ("qwen2.5-72b", "v5p:4x4x4", (1, 64, 1), 64, 2048, True, True),
    ("qwen2.5-7b", "v5p:4x4x4", (1, 64, 1), 64, 4096, True, True),
]
QUICK = [("qwen2.5-0.5b", "v5e:4x4", (1, 16, 1), 16, 1024, True)]


def size_case(model, topology, mesh_shape, batch, seq, remat, scan=False):
    from jax.experimental import topologies

    topo = topologies.get_topology_desc(topology_name=topology, platform="tpu")
    mesh = make_mesh(mesh_shape, devices=topo.devices)
    cfg = with_dtype_policy(get_config(model), "bf16-mixed").replace(remat=remat, scan_layers=scan)
    kind = topo.devices[0].device_kind
    rec = {"model": model, "topology": topology, "chips": len(topo.devices), "device_kind": kind,
           "mesh": dict(zip(("data", "fsdp", "tp"), mesh_shape)), "global_batch": batch,
           "seq_len": seq, "remat": remat, "scan_layers": scan, "dtype_policy": "bf16-mixed",
           "hbm_gib": HBM_GIB.get(kind)}
    t0 = time.perf_counter()
    try:
        c = compile_train_step(cfg, mesh, batch, seq)
    except Exception as e:  # the TPU compiler refuses programs that cannot fit
        m = re.search(r"required for HLO temporaries \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)",
                      str(e))
        rec |= {"compile_s": time.perf_counter() - t0, "fits": False,
                "error": str(e).split("\n")[0][:300]}
        if m:
            rec["temp_gib_required"] = float(m.group(1))
        return rec
    ma = c.memory_analysis()
    args, out, temp = ma.argument_size_in_bytes, ma.output_size_in_bytes, ma.temp_size_in_bytes
    alias = getattr(ma, "alias_size_in_bytes", 0)
    total = args + out + temp - alias + ma.generated_code_size_in_bytes
    rec |= {"compile_s": time.perf_counter() - t0, "argument_gib": args / GiB, "output_gib": out / GiB,
            "alias_gib": alias / GiB, "temp_gib": temp / GiB, "total_gib": total / GiB,
            "fits": rec["hbm_gib"] is None or total / GiB <= rec["hbm_gib"]}
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one small case (a smoke run)")
    ap.add_argument("--out", default="benchmarks/results/tpu_aot_sizing.json")
    ap.add_argument("--cases", default=None, help="comma-separated indices into CASES")
    ap.add_argument("--append", action="store_true", help="add to the cases already in --out")
    a = ap.parse_args()
    import importlib.metadata as md
    results = {"jax": jax.__version__, "libtpu": md.version("libtpu"), "cases": []}
    if a.append and os.path.exists(a.out):
        results["cases"] = json.load(open(a.out))["cases"]
    cases = QUICK if a.quick else CASES
    if a.cases:
        cases = [CASES[int(i)] for i in a.cases.split(",")]
    for case in cases:
        rec = size_case(*case)
        results["cases"].append(rec)
        print(json.dumps(rec), flush=True)
        with open(a.out, "w") as fh:          # after every case: a long run keeps what it has
            json.dump(results, fh, indent=1)
    with open(a.out, "w") as fh:
        json.dump(results, fh, indent=1)
    print(f"\nlibtpu {results['libtpu']}, jax {results['jax']}\n")
    print("| model | slice | mesh (data,fsdp,tp) | batch x seq | remat | per chip (GiB): params+opt | temp | total | HBM | fits |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results["cases"]:
        mesh = ",".join(str(v) for v in r["mesh"].values())
        if "total_gib" in r:
            print(f"| {r['model']} | {r['topology']} ({r['chips']} chips) | {mesh} | {r['global_batch']}x{r['seq_len']} "
                  f"| {r['remat']}{' + scan' if r.get('scan_layers') else ''} | {r['argument_gib']:.2f} | {r['temp_gib']:.2f} | {r['total_gib']:.2f} "
                  f"| {r['hbm_gib']} | {'yes' if r['fits'] else 'no'} |")
        else:
            print(f"| {r['model']} | {r['topology']} ({r['chips']} chips) | {mesh} | {r['global_batch']}x{r['seq_len']} "
                  f"| {r['remat']}{' + scan' if r.get('scan_layers') else ''} | - | {r.get('temp_gib_required', '?')} (refused) | - | {r['hbm_gib']} | no |")


if __name__ == "__main__":
    main()
