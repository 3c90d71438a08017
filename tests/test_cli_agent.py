"""``leafe pretrain`` / ``leafe evaluate`` end to end on a tiny config, and their errors."""

import json
import os

import pytest

from leafe_jax.cli import main
from leafe_jax.policy import config as policy_config


TRANSFER = os.path.join(os.path.dirname(__file__), "..", "experiments", "levels", "transfer_verl6x6.txt")


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
    # ... and on a transfer level file (all of its levels), beside the held-out ones
    from leafe_jax.envs.sokoban.boxoban import read_boxoban, write_boxoban
    _, lv, H, W = read_boxoban(TRANSFER)
    write_boxoban(tmp_path / "tr.txt", type(lv)(grid=lv.grid[:3], player=lv.player[:3]), H, W)
    assert main(["evaluate", f"base={wd}", "--levels", "2", "--n", "4", "--demo-levels", "4",
                 "--transfer-levels", str(tmp_path / "tr.txt"), "--out", str(tmp_path / "ev_t")]) == 0
    tr = json.loads((tmp_path / "ev_t" / "transfer" / "passk.json").read_text())
    assert "3 transfer levels" in tr["title"] and list(tr["passk"]["base"]) == ["1", "2", "4"]
    capsys.readouterr()
    assert main(["play", str(wd), "--demo-levels", "4", "--tokens", "--gif", str(tmp_path / "p.gif")]) == 0
    text = capsys.readouterr().out
    assert "step 1:" in text and "<bos>" in text and (tmp_path / "p.gif").exists()
    # export: params only, and Hugging Face safetensors that load back to the same logits
    import numpy as np
    from leafe_jax.train.checkpoint import load_policy
    from leafe_jax.policy.hf import load_hf
    assert main(["export", str(wd), "--out", str(tmp_path / "params")]) == 0
    assert main(["export", str(wd), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert main(["export", str(wd), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    model, _ = load_policy(str(wd))
    back = load_hf(str(tmp_path / "hf"))
    toks = np.arange(12)[None] % 60
    np.testing.assert_allclose(np.asarray(back(toks)[0]), np.asarray(model(toks)[0]), atol=1e-5)


def test_evaluate_errors(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "no checkpoints/ directory" in capsys.readouterr().err
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    assert main(["evaluate", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
