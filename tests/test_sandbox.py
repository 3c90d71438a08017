"""The code sandbox: each hostile program is stopped and reported as feedback, the host
unharmed, no process left behind (these run as root in CI, where root would ignore the
process limit and file permissions without the uid drop)."""

import os
import sys
import uuid

import pytest

from leafe_jax.envs.code.sandbox import (MAX_CODE_BYTES, SandboxLimits, SandboxUnavailable,
                                         check_sandbox, run_python)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux namespaces")
FAST = SandboxLimits(wall_s=4, cpu_s=1, processes=8)
# A CPU-time check needs a wall clock well above its CPU limit: under CI's load (two busy test
# workers on two cores) a 1 s CPU loop can take several wall seconds.
CPU_BOUND = SandboxLimits(wall_s=30, cpu_s=1, processes=8)
SLACK_S = 10      # teardown after a wall-clock kill, under load; far below the 60 s sleep cut


def _left_behind(uid: int, wait_s: float = 10.0) -> list[int]:
    """Processes of ``uid`` still there once the kernel has torn the namespace down (it
    does so asynchronously after its pid 1 dies: allow it ``wait_s`` under load)."""
    import time
    t0 = time.monotonic()
    while (left := _processes_of(uid)) and time.monotonic() - t0 < wait_s:
        time.sleep(0.1)
    return left


def _processes_of(uid: int) -> list[int]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                out.append(int(pid))
        except OSError:
            pass
    return out


@pytest.fixture(scope="module", autouse=True)
def sandbox():
    check_sandbox()                  # on Linux the sandbox must work (CI runs as root)


def test_a_program_runs_with_its_stdin_and_output():
    r = run_python("import sys\nname = sys.stdin.read()\nprint(f'hello {name}', sum(range(10)))",
                   stdin="box")
    assert (r.status, r.returncode, r.stdout, r.truncated) == ("ok", 0, "hello box 45\n", False)


def test_a_failing_assertion_is_feedback():
    r = run_python("def f(x):\n    return x + 1\nassert f(2) == 4, 'f(2) should be 4'")
    assert r.status == "error" and r.returncode == 1
    assert "AssertionError: f(2) should be 4" in r.feedback


def test_the_program_runs_as_an_unprivileged_uid_in_a_fresh_directory():
    r = run_python("import os\nprint(os.getuid(), os.getgid(), os.getcwd(), os.listdir('.'), os.getgroups())",
                   uid=424242)
    # as root: the uid given; otherwise the caller mapped to root of a user namespace
    expected = "424242 424242 /tmp [] []" if os.geteuid() == 0 else "0 0 /tmp [] [0]"
    assert r.stdout.strip() == expected


def test_an_infinite_loop_is_stopped_by_its_cpu_time():
    r = run_python("while True:\n    pass", limits=CPU_BOUND)
    assert r.status == "cpu_limit" and r.wall_s < CPU_BOUND.wall_s
    assert "CPU time" in r.feedback


def test_a_sleeping_program_is_stopped_by_the_wall_clock():
    r = run_python("import time\ntime.sleep(60)", limits=FAST)
    assert r.status == "timeout" and FAST.wall_s <= r.wall_s < FAST.wall_s + SLACK_S
    assert "time limit" in r.feedback


def test_a_memory_hog_runs_out_of_memory():
    r = run_python("x = bytearray(2 * 1024 ** 3)", limits=FAST)
    assert r.status == "memory_limit" and "MemoryError" in r.feedback


def test_a_fork_bomb_is_contained_and_leaves_nothing_behind():
    uid = 777001
    code = ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    r = run_python(code, limits=FAST, uid=uid)
    assert r.status in ("timeout", "cpu_limit", "killed") and r.wall_s < FAST.wall_s + SLACK_S
    assert _left_behind(uid) == []


def test_a_child_left_running_is_killed_with_the_sandbox():
    uid = 777002
    code = "import subprocess\nsubprocess.Popen(['sleep', '300'])\nprint('left it')"
    r = run_python(code, limits=FAST, uid=uid)
    assert r.status == "ok" and r.stdout == "left it\n"
    assert _left_behind(uid) == []


def test_a_hundred_megabyte_print_is_cut():
    r = run_python("print('x' * (100 * 1024 * 1024))", limits=FAST)
    assert r.status == "output_limit" and r.truncated
    assert len(r.stdout) == FAST.output_bytes and "too much output" in r.feedback


def test_writes_outside_its_directory_do_not_reach_the_host(tmp_path):
    mine = tmp_path / f"evil-{uuid.uuid4().hex}"
    host_tmp = f"/tmp/evil-{uuid.uuid4().hex}"
    code = (f"import os\nfor p in [{str(mine)!r}, {host_tmp!r}, '/etc/evil', os.path.expanduser('~/evil')]:\n"
            "    try:\n        open(p, 'w').write('x')\n        print('wrote', p)\n"
            "    except OSError as e:\n        print('refused', p, e.errno)")
    r = run_python(code)
    assert r.status == "ok"
    assert f"refused {mine}" in r.stdout and "refused /etc/evil" in r.stdout
    assert not mine.exists() and not os.path.exists(host_tmp) and not os.path.exists("/etc/evil")


def test_the_network_is_unreachable():
    code = ("import socket\ntry:\n    socket.create_connection(('1.1.1.1', 80), timeout=2)\n"
            "    print('connected')\nexcept OSError as e:\n    print('no network', e.errno)\n"
            "socket.create_connection(('127.0.0.1', 22), timeout=2)")
    r = run_python(code, limits=FAST)
    assert "no network" in r.stdout and "connected" not in r.stdout
    assert r.status == "error" and "OSError" in r.feedback


def test_oversized_or_malformed_programs_are_refused_unrun():
    r = run_python("x = 1\n" * (MAX_CODE_BYTES // 6 + 1))
    assert r.status == "error" and "not run" in r.stderr
    assert "NUL" in run_python("print(1)\0").stderr
    with pytest.raises(ValueError, match="wall_s"):
        SandboxLimits(wall_s=0)


def test_an_unusable_interpreter_is_named(monkeypatch, tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    fake = private / "python3"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("LEAFE_SANDBOX_PYTHON", str(fake))
    with pytest.raises(SandboxUnavailable, match="LEAFE_SANDBOX_PYTHON"):
        run_python("print(1)")
