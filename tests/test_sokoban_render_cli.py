"""Rendering (RAGEN text, RGB, GIF), replay, and the ``leafe sokoban`` commands."""

import json

import jax
import numpy as np
import pytest

from leafe_jax.cli import main
from leafe_jax.envs.sokoban import Sokoban, render_rgb, render_text, save_gif, write_boxoban
from leafe_jax.envs.sokoban.replay import replay
from sokoban_cases import level



@pytest.fixture(scope="module")
def small():
    lvl, H, W = level("""
|######
|#@$ .#
|#*   #
|######
""")
    return lvl, H, W


def test_render_text_uses_ragen_symbols(small):
    lvl, H, W = small
    obs = Sokoban(H, W, 2).reset_to_level(lvl)[0]
    assert render_text(obs) == "######\n#PX_O#\n#\u221a___#\n######"
    obs2 = np.asarray(obs).copy()
    obs2[1, 4] = 6
    assert render_text(obs2).split("\n")[1] == "#PX_S#"


def test_render_rgb_and_gif(small, tmp_path):
    lvl, H, W = small
    env = Sokoban(H, W, 2)
    rep = replay(env, lvl, np.array([3, 3], np.int32))
    img = render_rgb(rep.obs[0], cell=8)
    assert img.shape == (H * 8, W * 8, 3) and img.dtype == np.uint8
    assert not np.array_equal(render_rgb(rep.obs[0]), render_rgb(rep.obs[1]))
    save_gif(rep.obs, str(tmp_path / "a.gif"))
    from PIL import Image
    with Image.open(tmp_path / "a.gif") as im:
        assert im.n_frames == 3
    with pytest.raises(ValueError, match="one H x W"):
        render_text(np.zeros((2, 3, 4)))


def test_replay_records_states_and_freezes_after_solve(small):
    lvl, H, W = small
    env = Sokoban(H, W, 2)
    rep = replay(env, lvl, np.array([3, 3, 2, -1], np.int32))
    assert rep.states.grid.shape == (5, H * W)         # T+1 states, states[t] before action t
    assert np.asarray(rep.solved).tolist() == [False, True, True, True]
    assert np.array_equal(rep.states.grid[2], rep.states.grid[4])   # frozen after solving
    assert float(rep.rewards[2]) == 0.0


def test_cli_solve_render_generate(tmp_path, capsys, small):
    lvl, H, W = small
    f = tmp_path / "lv.txt"
    write_boxoban(f, jax.tree.map(lambda x: np.asarray(x)[None], lvl), H, W)
    assert main(["sokoban", "solve", str(f)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "solved" and out["solution"] == "RR"
    assert main(["sokoban", "render", str(f), "--actions", "solve",
                 "--gif", str(tmp_path / "s.gif")]) == 0
    text = capsys.readouterr().out
    assert "SOLVED" in text and (tmp_path / "s.gif").exists()
    assert main(["sokoban", "render", str(f), "--index", "3"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["sokoban", "render", str(f), "--actions", "UXQ"]) == 2
    assert "unknown action letters 'XQ'" in capsys.readouterr().err
    out_file = tmp_path / "gen.txt"
    assert main(["sokoban", "generate", "--preset", "verl6x6", "--num", "5",
                 "--out", str(out_file)]) == 0
    sols = json.loads((tmp_path / "gen.txt.solutions.json").read_text())["solutions"]
    assert len(sols) == 5 and all(sols)
    assert main(["sokoban", "solve", str(tmp_path / "nope.txt")]) == 2
