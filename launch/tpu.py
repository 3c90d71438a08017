#!/usr/bin/env python3
"""Cloud TPU launcher: create a TPU VM (or a queued resource), install leafe_jax on every
worker, run a ``leafe`` command on all workers, stream its log, delete the slice.

    python launch/tpu.py create  --name leafe-v5e --zone us-west4-a --accelerator v5litepod-16 --spot
    python launch/tpu.py setup   --name leafe-v5e --zone us-west4-a
    python launch/tpu.py run     --name leafe-v5e --zone us-west4-a -- pretrain --preset 7x7_2box ...
    python launch/tpu.py logs    --name leafe-v5e --zone us-west4-a
    python launch/tpu.py delete  --name leafe-v5e --zone us-west4-a

``--dry-run`` prints every command (one per line, shell-quoted) instead of running it.
Only the standard library is used, so the launcher runs from any machine with ``gcloud``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

JAX_VERSION = "0.10.2"      # the project's pin; jax[tpu]==0.10.2 installs libtpu 0.0.42.*
PYTHON = "3.11"             # older TPU VM images ship 3.10: uv provides 3.11
REMOTE_DIR = "leafe_jax"
VENV = "~/leafe-venv"
LOG = "~/leafe-run.log"

# accelerator family -> TPU VM runtime (software) version
RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite",
            "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}


def runtime_for(accelerator: str) -> str:
    family = accelerator.rsplit("-", 1)[0]
    if family not in RUNTIMES:
        raise SystemExit(f"unknown accelerator family {family!r} in {accelerator!r}; "
                         f"known: {', '.join(RUNTIMES)} (or pass --version)")
    return RUNTIMES[family]


def _where(a) -> list[str]:
    out = [f"--zone={a.zone}"]
    if a.project:
        out.append(f"--project={a.project}")
    return out


def _ssh(a, command: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", a.name, *_where(a), f"--worker={worker}",
            f"--command={command}"]


def cmd_create(a) -> list[list[str]]:
    version = a.version or runtime_for(a.accelerator)
    tier = ["--spot"] if a.spot else ["--reserved"] if a.reserved else []
    if a.queued:
        return [["gcloud", "compute", "tpus", "queued-resources", "create", a.queued_name or a.name,
                 f"--node-id={a.name}", *_where(a), f"--accelerator-type={a.accelerator}",
                 f"--runtime-version={version}", *tier]]
    return [["gcloud", "compute", "tpus", "tpu-vm", "create", a.name, *_where(a),
             f"--accelerator-type={a.accelerator}", f"--version={version}", *tier]]


def cmd_setup(a) -> list[list[str]]:
    tarball = "/tmp/leafe_jax-src.tar.gz"
    install = " && ".join([
        "set -e",
        "command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh",
        'export PATH="$HOME/.local/bin:$PATH"',
        f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR}",
        f"tar -xzf ~/leafe_jax-src.tar.gz -C {REMOTE_DIR}",
        f"uv venv --python {PYTHON} --allow-existing {VENV}",
        f"uv pip install --python {VENV}/bin/python 'jax[tpu]=={JAX_VERSION}' -e ./{REMOTE_DIR}",
        f"{VENV}/bin/python -c 'import jax; print(jax.process_index(), jax.device_count(), "
        "jax.devices()[0].device_kind)'",
    ])
    return [["git", "archive", "--format=tar.gz", "-o", tarball, "HEAD"],
            ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, f"{a.name}:~/leafe_jax-src.tar.gz",
             *_where(a), "--worker=all"],
            _ssh(a, install)]


def cmd_run(a) -> list[list[str]]:
    if not a.leafe_args:
        raise SystemExit("run: give the leafe command after --, e.g. -- pretrain --workdir gs://b/run")
    leafe = " ".join(shlex.quote(x) for x in a.leafe_args)
    # every worker runs the same command; leafe initialises jax.distributed on multi-host slices
    return [_ssh(a, f"cd {REMOTE_DIR} && nohup {VENV}/bin/leafe {leafe} > {LOG} 2>&1 &")]


def cmd_logs(a) -> list[list[str]]:
    return [_ssh(a, f"tail -n +1 -f {LOG}", worker=a.worker)]


def cmd_status(a) -> list[list[str]]:
    if a.queued:
        return [["gcloud", "compute", "tpus", "queued-resources", "describe",
                 a.queued_name or a.name, *_where(a)]]
    return [["gcloud", "compute", "tpus", "tpu-vm", "describe", a.name, *_where(a)]]


def cmd_delete(a) -> list[list[str]]:
    if a.queued:
        return [["gcloud", "compute", "tpus", "queued-resources", "delete", a.queued_name or a.name,
                 *_where(a), "--force", "--quiet"]]
    return [["gcloud", "compute", "tpus", "tpu-vm", "delete", a.name, *_where(a), "--quiet"]]


COMMANDS = {"create": cmd_create, "setup": cmd_setup, "run": cmd_run, "logs": cmd_logs,
            "status": cmd_status, "delete": cmd_delete}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch/tpu.py", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=COMMANDS)
    p.add_argument("--name", required=True, help="TPU VM (node) name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", help="GCP project (default: gcloud's)")
    p.add_argument("--accelerator", default="v5litepod-16", help="e.g. v5litepod-16, v6e-8, v5p-32")
    p.add_argument("--version", help="TPU VM runtime (default: by accelerator family)")
    tier = p.add_mutually_exclusive_group()
    tier.add_argument("--spot", action="store_true", help="preemptible capacity")
    tier.add_argument("--reserved", action="store_true", help="reserved capacity (queued resource)")
    p.add_argument("--queued", action="store_true", help="create/delete through a queued resource")
    p.add_argument("--queued-name", help="queued-resource id (default: --name)")
    p.add_argument("--worker", default="0", help="logs: which worker's log")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    a = build_parser().parse_args(argv[:cut])
    a.leafe_args = argv[cut + 1:]
    if a.reserved and not a.queued:
        a.queued = True             # reserved capacity is requested through a queued resource
    cmds = COMMANDS[a.action](a)
    for c in cmds:
        if a.dry_run:
            print(shlex.join(c))
            continue
        print("+ " + shlex.join(c), file=sys.stderr, flush=True)
        rc = subprocess.call(c)
        if rc:
            print(f"launch: {c[0]} exited with {rc}", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
