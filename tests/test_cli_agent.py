"""``leafe pretrain`` / ``leafe evaluate`` end to end on a tiny config, and their errors."""

import json

import pytest

from leafe_jax.cli import main
from leafe_jax.policy import config as policy_config


@pytest.mark.slow
def test_pretrain_then_evaluate_commands(tmp_path, capsys, monkeypatch):
    tiny = policy_config.get_config("test-tiny").replace(name="cli-tiny", vocab_size=64, max_seq_len=512)
    monkeypatch.setitem(policy_config.PRESETS, "cli-tiny", tiny)
    wd = tmp_path / "base"
    assert main(["pretrain", "--preset", "verl6x6", "--model", "cli-tiny", "--workdir", str(wd),
                 "--demo-levels", "4", "--steps", "2", "--batch-size", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data"]["demo"] == 4
    assert main(["evaluate", f"base={wd}", "--levels", "2", "--n", "4", "--demo-levels", "4",
                 "--out", str(tmp_path / "eval")]) == 0
    data = json.loads((tmp_path / "eval" / "passk.json").read_text())
    assert list(data["passk"]["base"]) == ["1", "2", "4"]
    assert (tmp_path / "eval" / "passk.png").exists()
    capsys.readouterr()
    assert main(["play", str(wd), "--demo-levels", "4", "--tokens", "--gif", str(tmp_path / "p.gif")]) == 0
    text = capsys.readouterr().out
    assert "step 1:" in text and "<bos>" in text and (tmp_path / "p.gif").exists()


def test_evaluate_errors(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "no checkpoints/ directory" in capsys.readouterr().err
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    assert main(["evaluate", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
