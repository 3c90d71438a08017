"""Hostile inputs outside the pipeline: malformed HF checkpoints, binary level files, a
pipeline directory given to ``leafe evaluate``, a corrupt checkpoint's metadata."""

import json
import os

import numpy as np
import pytest

from leafe_jax.cli import main
from leafe_jax.envs.sokoban import LevelFormatError, read_boxoban
from leafe_jax.policy.config import get_config
from leafe_jax.policy.hf import CheckpointError, load_hf, save_hf
from leafe_jax.policy.model import create_model
from leafe_jax.policy.safetensors_io import SafetensorsError


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "m"
    save_hf(create_model(get_config("test-tiny"), seed=0), str(d), model_type="llama")
    return d


def _copy(src, dst):
    dst.mkdir()
    for f in os.listdir(src):
        (dst / f).write_bytes((src / f).read_bytes())
    return dst


def test_malformed_hf_checkpoints_name_the_file(hf_dir, tmp_path):
    cfg = json.loads((hf_dir / "config.json").read_text())
    d = _copy(hf_dir, tmp_path / "missing")
    (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "hidden_size"}))
    with pytest.raises(CheckpointError, match=r"missing/config.json: missing key\(s\) \['hidden_size'\]"):
        load_hf(str(d))
    d = _copy(hf_dir, tmp_path / "strings")
    (d / "config.json").write_text(json.dumps(cfg | {"num_hidden_layers": "2"}))
    with pytest.raises(CheckpointError, match=r"strings/config.json: num_hidden_layers must be an integer, got '2'"):
        load_hf(str(d))
    d = _copy(hf_dir, tmp_path / "json")
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"json/config.json: not valid JSON"):
        load_hf(str(d))
    d = _copy(hf_dir, tmp_path / "trunc")
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(SafetensorsError, match=r"trunc/model.safetensors: truncated - tensor .* the file has"):
        load_hf(str(d))


def test_binary_level_file_is_named(tmp_path):
    f = tmp_path / "levels.txt"
    f.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(LevelFormatError, match=r"levels.txt: not a text level file \(byte 128"):
        read_boxoban(str(f))


def test_evaluate_on_a_pipeline_directory_points_at_its_policies(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "base" / "checkpoints").mkdir(parents=True)
    (run / "sft" / "leafe").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    assert main(["evaluate", str(run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "is a pipeline work directory; its policies are" in err
    assert f"{run}/base" in err and f"{run}/sft/leafe" in err and "leafe pretrain" not in err


def test_evaluate_takes_a_levels_file(tmp_path, capsys):
    """A user's own levels (Boxoban format): the preset's room size is checked first."""
    from leafe_jax.envs.sokoban import get_preset, write_boxoban
    from leafe_jax.envs.sokoban.pools import level_pool
    from leafe_jax.eval.checkpoints import evaluation_levels
    from leafe_jax.eval.sweep import EvalConfig

    p = get_preset("verl6x6")
    gen = level_pool("eval", 5, p.generator, 0)
    write_boxoban(tmp_path / "mine.txt", gen.level, 6, 6)
    got = evaluation_levels(p, EvalConfig(levels=3), 0, demo_levels=1, train_levels=1,
                            levels_file=str(tmp_path / "mine.txt"))
    np.testing.assert_array_equal(np.asarray(got.grid), np.asarray(gen.level.grid)[:3])
    with pytest.raises(ValueError, match=r"mine.txt: 6x6 levels, but preset '7x7_2box' plays 7x7 rooms"):
        evaluation_levels(get_preset("7x7_2box"), EvalConfig(levels=3), 0, demo_levels=1,
                          train_levels=1, levels_file=str(tmp_path / "mine.txt"))
