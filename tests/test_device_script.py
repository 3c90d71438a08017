"""benchmarks/run_device.sh runs here on CPU (small sizes) and writes its JSON and summary."""

import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(__file__))


@pytest.mark.slow
def test_run_device_script_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    r = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "run_device.sh")], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["small"] and set(summary["parts"]) == {"sokoban", "decode", "sft"}
    assert all(p["status"] == "ok" for p in summary["parts"].values())
    sok = json.loads((tmp_path / "sokoban.json").read_text())
    assert all(row["steps_per_s"] > 0 for row in sok["rows"]) and len(sok["rows"]) == 4
    sft = json.loads((tmp_path / "sft.json").read_text())
    assert 0 < sft["rows"][0]["mfu"] < 1
    dec = json.loads((tmp_path / "decode.json").read_text())
    assert all(0 < row["roofline_fraction"] < 1.5 for row in dec["rows"])
    assert "Device check: cpu" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow
def test_sokoban_part_runs_when_flax_cannot_import(tmp_path):
    """The GPU image may lack a flax that works with its JAX: Sokoban must still run."""
    code = ("import builtins, runpy, sys\n"
            "real = builtins.__import__\n"
            "def guarded(name, *a, **k):\n"
            "    if name.split('.')[0] in ('flax', 'gymnax', 'optax'):\n"
            "        raise ImportError('blocked: ' + name)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guarded\n"
            f"sys.argv = ['device_suite.py', '--out', {str(tmp_path)!r}]\n"
            f"runpy.run_path({os.path.join(ROOT, 'benchmarks', 'device_suite.py')!r}, run_name='__main__')\n")
    r = subprocess.run(["python", "-c", code], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PYTHONPATH": ROOT})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["parts"]["sokoban"]["status"] == "ok", r.stdout[-2000:]
    assert json.loads((tmp_path / "sokoban.json").read_text())["native_env"] is True
    assert summary["parts"]["decode"]["status"] == "skipped"
    assert summary["parts"]["sft"]["status"] == "skipped"
