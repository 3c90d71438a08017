"""Multi-host start-up: ``jax.distributed.initialize`` when running on several hosts.

Entry points call ``maybe_initialize`` before touching devices. It initialises when told to
(coordinator address, process count and id, from arguments or the ``LEAFE_COORDINATOR`` /
``LEAFE_NUM_PROCESSES`` / ``LEAFE_PROCESS_ID`` environment variables), or when it detects a
multi-worker Cloud TPU slice (``TPU_WORKER_HOSTNAMES`` names more than one host, or a
Megascale multi-slice job), where JAX finds the coordinator itself. On one host it does
nothing.
"""

from __future__ import annotations

import os

import jax

_done = False


def on_multihost_tpu() -> bool:
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    return len(hosts) > 1 or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ


def maybe_initialize(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
    """Initialise ``jax.distributed`` if this run spans several processes; returns whether it did."""
    global _done
    if _done:
        return True
    coordinator = coordinator or os.environ.get("LEAFE_COORDINATOR")
    if num_processes is None and "LEAFE_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["LEAFE_NUM_PROCESSES"])
    if process_id is None and "LEAFE_PROCESS_ID" in os.environ:
        process_id = int(os.environ["LEAFE_PROCESS_ID"])
    told = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(told) and not all(told):
        raise ValueError("multi-process runs need all of coordinator, num_processes and "
                         f"process_id (got coordinator={coordinator}, num_processes="
                         f"{num_processes}, process_id={process_id})")
    if all(told):
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id {process_id} not in [0, {num_processes})")
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    elif on_multihost_tpu():
        jax.distributed.initialize()
    else:
        return False
    _done = True
    return True
