"""One process of the two-process test (run by test_multihost.py, not collected by pytest).

    python tests/multihost_worker.py PROCESS_ID PORT WORKDIR
"""

import json
import sys

import jax

pid, port, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from leafe_jax.policy.config import get_config  # noqa: E402
from leafe_jax.policy.model import create_model  # noqa: E402
from leafe_jax.sharding import make_mesh  # noqa: E402
from leafe_jax.train.checkpoint import Checkpointer  # noqa: E402
from leafe_jax.train.optim import OptimConfig, create_optimizer  # noqa: E402
from leafe_jax.train.step import train_step  # noqa: E402

CFG = get_config("test-tiny").replace(vocab_size=32)
OPT = OptimConfig(learning_rate=1e-2, warmup_steps=1, total_steps=10)


def global_batch(step, mesh):
    rng = np.random.default_rng(step)
    full = {"tokens": rng.integers(1, 32, (8, 12)).astype(np.int32),
            "loss_mask": rng.random((8, 12)) < 0.4,
            "weight": rng.choice([0.5, 1.0], 8).astype(np.float32)}
    s = NamedSharding(mesh, P(("data", "fsdp")))
    # each process holds only its half of the batch (per-process data shards)
    return {k: jax.make_array_from_process_local_data(s, v[pid * 4:(pid + 1) * 4]) for k, v in full.items()}


mesh = make_mesh((4, 2, 1))
model = create_model(CFG, seed=0, mesh=mesh)
opt = create_optimizer(model, OPT, mesh)
losses = []
with jax.set_mesh(mesh):
    for step in range(3):
        losses.append(float(train_step(model, opt, global_batch(step, mesh))["loss"]))
ck = Checkpointer(workdir)
ck.save(3, model, opt, {"losses": losses}, force=True)
ck.wait()
fresh = create_model(CFG, seed=7, mesh=mesh)
meta = ck.restore(fresh)
same = all(np.allclose(np.asarray(jax.experimental.multihost_utils.process_allgather(a, tiled=True)),
                       np.asarray(jax.experimental.multihost_utils.process_allgather(b, tiled=True)))
           for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)),
                           jax.tree.leaves(nnx.state(fresh, nnx.Param))))
ck.close()

# the whole stack: grain shards of a TFDS dataset -> train_loop on the mesh -> checkpoint
from leafe_jax.data.loader import sft_batches  # noqa: E402
from leafe_jax.data.store import sft_source  # noqa: E402
from leafe_jax.train.loop import LoopConfig, train_loop  # noqa: E402

model = create_model(CFG, seed=0, mesh=mesh)
opt = create_optimizer(model, OPT, mesh)
data = sft_batches(sft_source(workdir + "/data"), batch_size=8, max_len=16, seed=0, buckets=(16,))
final = train_loop(model, opt, data, LoopConfig(num_steps=2, log_every=1, progress=False),
                   workdir + "/loop", mesh=mesh)
print("RESULT " + json.dumps({"pid": pid, "processes": jax.process_count(),
                              "devices": jax.device_count(), "losses": losses,
                              "restored_equal": bool(same), "meta_losses": meta["losses"],
                              "loop_loss": final["loss"]}), flush=True)
jax.distributed.shutdown()
