"""Run model-written Python in a sandbox: a separate process in its own pid, network and mount
namespaces, as an unprivileged uid, under CPU-time, memory, file-size, open-file and
process-count limits, in a fresh private temporary directory, with a wall-clock kill and
capped output.

How (Linux, util-linux's ``unshare`` and ``setpriv``)::

    host --rlimits--> unshare --mount --net --pid --fork --kill-child  (new namespaces)
           sh (pid 1 of the namespace, still root there): make the mounts private, remount
              / read-only, fresh size-capped tmpfs over /tmp, /var/tmp, /dev/shm; then
              setpriv --reuid=U --regid=U --clear-groups --no-new-privs python -I -S -c CODE

* Root ignores RLIMIT_NPROC and file permissions (the tests and CI run as root): the program
  runs as an unprivileged uid ``U`` of its own (drawn per run, so concurrent sandboxes do not
  share a process budget), which makes the process limit bite and every file of the host
  that is not world-writable unwritable; the world-writable places are private tmpfs.
* The network namespace has only a downed loopback: any connection fails.
* When the namespace's pid 1 exits or is killed (the wall-clock kill: ``--kill-child``),
  the kernel kills every process left in it - a fork bomb leaves nothing behind.
* stdout / stderr go to host files capped by RLIMIT_FSIZE (the program is killed by SIGXFSZ
  past ``file_mb``); the first ``output_bytes`` of each are returned.
* Not root: a user namespace maps the caller to root inside (``--map-root-user``); no uid
  drop is possible there, so the read-only root and the private tmpfs are what guard the
  caller's files, and RLIMIT_NPROC counts the caller's own processes too.

``run_python`` never raises for what the program does: every outcome (a traceback, a
timeout, a limit hit) is a ``SandboxResult`` whose ``feedback`` says it in words. It raises
``SandboxUnavailable`` when the machine cannot provide the sandbox - it never falls back to
running the code unconfined.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

MAX_CODE_BYTES = 100_000          # passed as one argument (the kernel's limit is 128 KiB)


class SandboxUnavailable(RuntimeError):
    """The machine cannot sandbox code (no namespaces, no util-linux, no usable Python)."""


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 10.0          # wall-clock kill
    cpu_s: int = 5                # RLIMIT_CPU (SIGXCPU)
    memory_mb: int = 512          # RLIMIT_AS
    file_mb: int = 4              # RLIMIT_FSIZE: any file written, stdout and stderr included
    output_bytes: int = 8192      # kept of stdout and of stderr
    processes: int = 16           # RLIMIT_NPROC of the sandbox's uid
    open_files: int = 64          # RLIMIT_NOFILE
    tmpfs_mb: int = 16            # size of the private /tmp (the working directory)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"SandboxLimits.{f.name} must be > 0, got {getattr(self, f.name)}")


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    status: str                   # ok | error | timeout | cpu_limit | memory_limit | output_limit | killed
    returncode: int               # the program's exit status (-signal when a signal ended it)
    stdout: str
    stderr: str
    wall_s: float
    truncated: bool               # stdout or stderr was longer than output_bytes

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def feedback(self) -> str:
        """What happened, in words (for the model's next turn)."""
        what = {"ok": "The program ran to completion.",
                "error": f"The program failed (exit status {self.returncode}).",
                "timeout": "The program was stopped: it ran past the time limit.",
                "cpu_limit": "The program was stopped: it used up its CPU time.",
                "memory_limit": "The program ran out of memory.",
                "output_limit": "The program was stopped: it wrote too much output.",
                "killed": f"The program was killed (signal {-self.returncode})."}[self.status]
        tail = self.stderr.strip().splitlines()[-12:]
        return what + ("\n" + "\n".join(tail) if tail and self.status != "ok" else "")


def _python() -> str:
    """An interpreter the sandbox's uid can execute: ``LEAFE_SANDBOX_PYTHON``, else the
    system's, else this one (if every directory on its path is world-searchable)."""
    env = os.environ.get("LEAFE_SANDBOX_PYTHON")
    cands = [env] if env else [shutil.which("python3", path="/usr/bin:/bin"), sys.executable]
    for c in cands:
        if c and _world_executable(c):
            return c
    raise SandboxUnavailable(f"no Python the sandbox's unprivileged uid can execute (tried {cands}: "
                             "a directory on the path is not world-searchable); set "
                             "LEAFE_SANDBOX_PYTHON to one, e.g. /usr/bin/python3")


def _world_executable(path: str) -> bool:
    path = os.path.realpath(path)
    if not os.path.isfile(path) or not os.stat(path).st_mode & 0o001:
        return False
    d = os.path.dirname(path)
    while True:
        if not os.stat(d).st_mode & 0o001:
            return False
        if d == "/":
            return True
        d = os.path.dirname(d)


# pid 1 of the namespace: private mounts, read-only root, private tmpfs, then the program as
# a child (not exec'd: a namespace's init ignores signals it has no handler for)
_INIT = r"""
fail() { echo "sandbox-setup: $1 failed" >&2; exit 125; }
mount --make-rprivate / || fail "private mounts"
mount -o remount,bind,ro / || fail "read-only root"
for d in /tmp /var/tmp /dev/shm; do
  if [ -d "$d" ]; then
    mount -t tmpfs -o "size=${SB_TMPFS}m,mode=1777,nosuid,nodev" tmpfs "$d" || fail "tmpfs on $d"
  fi
done
mount -t proc -o nosuid,nodev,noexec proc /proc 2>/dev/null
cd /tmp || fail "cd /tmp"
"$@"
exit $?
"""


@functools.lru_cache(maxsize=None)
def _launcher(root: bool) -> tuple[str, ...]:
    for tool in ("unshare", "setpriv", "sh"):
        if shutil.which(tool) is None:
            raise SandboxUnavailable(f"the code sandbox needs {tool!r} (util-linux) on PATH")
    ns = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child"]
    if not root:
        ns[1:1] = ["--user", "--map-root-user"]
    return tuple(ns)


def _own_processes() -> int:
    """Processes of this real uid (RLIMIT_NPROC counts them when no uid drop is possible)."""
    n, me = 0, os.getuid()
    for pid in os.listdir("/proc"):
        try:
            n += pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == me
        except OSError:
            pass
    return n


def _rlimits(limits: SandboxLimits, root: bool):
    mb = 1 << 20
    nproc = limits.processes if root else limits.processes + _own_processes()

    def apply():                      # in the child, before exec: inherited by everything
        os.setsid()
        # CPU: SIGXCPU at the soft limit, SIGKILL a second later if it is caught
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        for res, v in (
                       (resource.RLIMIT_AS, limits.memory_mb * mb),
                       (resource.RLIMIT_FSIZE, limits.file_mb * mb),
                       (resource.RLIMIT_NOFILE, limits.open_files),
                       (resource.RLIMIT_CORE, 0),
                       (resource.RLIMIT_NPROC, nproc)):
            resource.setrlimit(res, (v, v))
    return apply


def _status(rc: int, stderr: str, timed_out: bool) -> tuple[str, int]:
    """(status, the program's own exit status or -signal). Through sh, a signal that ended
    the program reads 128 + signal."""
    if timed_out:
        return "timeout", -signal.SIGKILL
    sig = -rc if rc < 0 else (rc - 128 if rc > 128 else 0)
    if sig == signal.SIGXCPU:
        return "cpu_limit", -sig
    if sig == signal.SIGXFSZ:
        return "output_limit", -sig
    if sig:
        return "killed", -sig
    if rc == 0:
        return "ok", 0
    if "MemoryError" in stderr:
        return "memory_limit", rc
    if "[Errno 27] File too large" in stderr:      # Python ignores SIGXFSZ: the write fails
        return "output_limit", rc
    return "error", rc


def run_python(code: str, *, limits: SandboxLimits = SandboxLimits(), stdin: str = "",
               uid: int | None = None) -> SandboxResult:
    """Run ``code`` (a Python program, standard library only: ``python -I -S``) in the
    sandbox; ``stdin`` is its standard input."""
    raw = code.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_CODE_BYTES:
        return SandboxResult("error", 1, "", f"the program is {len(raw)} bytes (limit "
                             f"{MAX_CODE_BYTES}): not run", 0.0, False)
    if "\0" in code:
        return SandboxResult("error", 1, "", "the program contains a NUL byte: not run", 0.0, False)
    root = os.geteuid() == 0
    py = _python()
    uid = uid if uid is not None else random.randrange(200_000, 1_200_000)
    prog = [py, "-I", "-S", "-c", code]
    if root:
        prog = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
                "--", *prog]
    cmd = [*_launcher(root), "sh", "-c", _INIT, "sandbox-init", *prog]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "SB_TMPFS": str(limits.tmpfs_mb),
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory(prefix="leafe-sandbox-") as host:
        out_p, err_p = os.path.join(host, "stdout"), os.path.join(host, "stderr")
        t0 = time.monotonic()
        with open(out_p, "wb") as out, open(err_p, "wb") as err:
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, env=env,
                                 cwd="/", preexec_fn=_rlimits(limits, root), close_fds=True)
            timed_out = False
            try:
                p.communicate(stdin.encode(), timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(p.pid, signal.SIGKILL)     # unshare dies -> its child (pid 1) is killed
                p.wait()
            except BrokenPipeError:                 # the program exited without reading stdin
                p.wait()
        wall = time.monotonic() - t0
        texts, cut = [], False
        for path in (out_p, err_p):
            with open(path, "rb") as fh:
                data = fh.read(limits.output_bytes + 1)
            cut |= len(data) > limits.output_bytes
            texts.append(data[: limits.output_bytes].decode("utf-8", "replace"))
    if not timed_out and ((p.returncode == 125 and "sandbox-setup:" in texts[1]) or
                          (p.returncode == 1 and texts[1].startswith(("unshare:", "setpriv:")))):
        raise SandboxUnavailable(f"the sandbox could not start: {texts[1].strip()[:400]}")
    status, rc = _status(p.returncode, texts[1], timed_out)
    return SandboxResult(status, rc, texts[0], texts[1], wall, cut)


def check_sandbox() -> None:
    """Raise ``SandboxUnavailable`` (naming what is missing) unless a trivial program runs."""
    r = run_python("print(6 * 7)", limits=SandboxLimits(wall_s=30))
    if r.status != "ok" or r.stdout.strip() != "42":
        raise SandboxUnavailable(f"the sandbox does not run a trivial program: {r}")
