"""launch/tpu.py: every gcloud command it prints is accepted by gcloud's own parser (offline,
no credentials: a valid command fails only for want of an account)."""

import os
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(__file__))
LAUNCH = os.path.join(ROOT, "launch", "tpu.py")
NO_ACCOUNT = "You do not currently have an active account selected"
BASE = ["--name", "leafe-test", "--zone", "us-west4-a", "--project", "my-proj", "--dry-run"]

CASES = {
    "create": ["create", "--accelerator", "v5litepod-16"],
    "create-spot": ["create", "--accelerator", "v6e-8", "--spot"],
    "create-queued-spot": ["create", "--accelerator", "v5litepod-16", "--queued", "--spot"],
    "create-reserved": ["create", "--accelerator", "v5p-32", "--reserved"],
    "setup": ["setup"],
    "run": ["run", "--", "pretrain", "--workdir", "gs://bucket/base", "--steps", "500"],
    "logs": ["logs", "--worker", "1"],
    "status": ["status"],
    "status-queued": ["status", "--queued"],
    "delete": ["delete"],
    "delete-queued": ["delete", "--queued"],
}

pytestmark = pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud CLI not installed")


def printed(args):
    cut = args.index("--") if "--" in args else len(args)
    out = subprocess.run([sys.executable, LAUNCH, *args[:cut], *BASE, *args[cut:]],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.strip().split("\n")]


def gcloud(cmd, tmp_path):
    env = {**os.environ, "CLOUDSDK_CONFIG": str(tmp_path), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    env.pop("CLOUDSDK_CORE_PROJECT", None)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gcloud-config")       # empty: no account, no project


def test_the_check_tells_valid_from_invalid(config_dir):
    rc, out = gcloud(["gcloud", "compute", "tpus", "tpu-vm", "delete", "x", "--zone=us-west4-a",
                      "--no-such-flag"], config_dir)
    assert rc != 0 and "unrecognized arguments" in out and NO_ACCOUNT not in out


@pytest.mark.parametrize("case", list(CASES))
def test_every_printed_gcloud_command_parses(case, config_dir):
    cmds = printed(CASES[case])
    gcloud_cmds = [c for c in cmds if c[0] == "gcloud"]
    assert gcloud_cmds
    for c in gcloud_cmds:
        rc, out = gcloud(c, config_dir)
        assert rc != 0 and NO_ACCOUNT in out, (shlex.join(c), out[-800:])


def test_commands_carry_what_they_promise():
    create = printed(CASES["create-queued-spot"])[0]
    assert create[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
    assert "--spot" in create and "--runtime-version=v2-alpha-tpuv5-lite" in create
    reserved = printed(CASES["create-reserved"])[0]
    assert "queued-resources" in reserved and "--reserved" in reserved
    setup = printed(CASES["setup"])
    remote = setup[-1][-1]
    assert "--worker=all" in setup[-1] and "jax[tpu]==0.10.2" in remote and "--python 3.11" in remote
    run = printed(CASES["run"])[0]
    assert "--worker=all" in run and "leafe pretrain --workdir gs://bucket/base --steps 500" in run[-1]


def test_bad_launcher_input_is_named():
    r = subprocess.run([sys.executable, LAUNCH, "create", "--accelerator", "v9x-8", *BASE],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "unknown accelerator family 'v9x'" in r.stderr
    r = subprocess.run([sys.executable, LAUNCH, "run", *BASE], capture_output=True, text=True)
    assert r.returncode != 0 and "give the leafe command after --" in r.stderr


def header_commands(config: str) -> list[list[str]]:
    """The ``python launch/tpu.py ...`` commands written in a config file's header."""
    with open(os.path.join(ROOT, config)) as fh:
        lines = [ln[1:].strip() for ln in fh if ln.startswith("#")]
    return [shlex.split(ln)[2:] for ln in lines if ln.startswith("python launch/tpu.py")]


def test_the_text_tpu_config_launches_as_its_header_says(config_dir):
    """experiments/text_tpu_qwen7b.toml: its header's create / setup / run / delete commands
    are what gcloud accepts, and the leafe command they run reads the config (with its
    --set overrides) into a text pipeline on a 4-chip mesh in bf16-mixed."""
    from leafe_jax.pipeline import config as C
    cmds = header_commands("experiments/text_tpu_qwen7b.toml")
    assert [c[0] for c in cmds] == ["create", "setup", "run", "delete"]
    for args in cmds:
        cut = args.index("--") if "--" in args else len(args)
        out = subprocess.run([sys.executable, LAUNCH, *args[:cut], "--project", "my-proj", "--dry-run",
                              *args[cut:]], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        for c in (shlex.split(line) for line in out.stdout.strip().split("\n")):
            if c[0] == "gcloud":
                rc, text = gcloud(c, config_dir)
                assert rc != 0 and NO_ACCOUNT in text, (shlex.join(c), text[-800:])
    leafe = cmds[2][cmds[2].index("--") + 1:]
    assert leafe[:2] == ["pipeline", "experiments/text_tpu_qwen7b.toml"]
    sets = [leafe[i + 1] for i, a in enumerate(leafe) if a == "--set"]
    cfg = C.load(os.path.join(ROOT, leafe[1]), sets)
    assert cfg.experiment.agent == "text" and cfg.text.model == "gs://YOUR_BUCKET/Qwen2.5-7B-Instruct"
    assert cfg.text.mesh == (1, 4, 1) and cfg.text.dtype == "bf16-mixed"
    assert cfg.stage2.sft.batch_size % 4 == 0
    assert "--accelerator" in cmds[0] and cmds[0][cmds[0].index("--accelerator") + 1] == "v5p-8"
