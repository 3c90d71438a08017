"""ASCII levels and DeepMind Boxoban files: parsing, errors, round trips."""

import numpy as np
import pytest

from leafe_jax.envs.sokoban import (LevelFormatError, level_to_ascii, load_boxoban, parse_level,
                                    read_boxoban, write_boxoban)
from leafe_jax.envs.sokoban.boxoban import parse_boxoban_text

FIRST_LEVEL = """##########
#@ #######
#.$#######
#   ######
#.$ ######
#  #######
# $ ######
#$ . #####
# .  #####
##########"""


def test_ascii_round_trip_and_codes():
    lvl, H, W = parse_level("#####\n#+$ #\n# *.#\n#  $#\n#####".replace("#  $#", "# $ #"))
    assert (H, W) == (5, 5)
    assert level_to_ascii(lvl, H, W) == "#####\n#+$ #\n# *.#\n# $ #\n#####"
    grid = np.asarray(lvl.grid).reshape(H, W)
    assert grid[1, 1] == 2 and int(lvl.player) == 6          # player on a target
    assert grid[2, 2] == 6 and grid[1, 2] == 4 and grid[0, 0] == 1


@pytest.mark.parametrize("text, message", [
    ("#####\n#@$.#\n####", "line 3: ragged row"),
    ("#####\n#@$x#\n#####", "line 2, column 4: unknown character 'x'"),
    ("#####\n#@$$#\n#...#\n#####", "2 boxes but 3 targets"),
    ("#####\n# $.#\n#####", "no player"),
    ("######\n#@$.@#\n######", "2 players"),
    ("#####\n #$.@\n#####", "wall border"),
])
def test_malformed_levels_name_the_problem(text, message):
    with pytest.raises(LevelFormatError, match=message):
        parse_level(text, source="my.txt", level_name="level 'x'")
    with pytest.raises(ValueError, match="my.txt, level 'x'"):
        parse_level(text, source="my.txt", level_name="level 'x'")


def test_malformed_file_names_file_level_and_line(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_text("; 0\n#####\n#@$.#\n#####\n\n; 7\n#####\n#@$.#\n#@  #\n#####\n")
    with pytest.raises(LevelFormatError, match=r"bad.txt, level '7': 2 players \(lines 8, 9\)"):
        read_boxoban(str(f))
    f.write_text("#####\n#@$.#\n#####\n")
    with pytest.raises(LevelFormatError, match="line 1: expected a '; <id>' level header"):
        read_boxoban(str(f))
    with pytest.raises(FileNotFoundError, match="not found"):
        read_boxoban(str(tmp_path / "missing.txt"))


def test_boxoban_sample_files(boxoban_path):
    for rel in ["unfiltered/train/000.txt", "unfiltered/train/001.txt", "medium/valid/000.txt",
                "hard/000.txt"]:
        ids, levels, H, W = read_boxoban(str(boxoban_path / rel))
        assert (H, W) == (10, 10) and len(ids) == 1000
        grid = np.asarray(levels.grid)
        assert ((grid & 4) != 0).sum(1).tolist() == [4] * 1000      # boxes
        assert ((grid & 2) != 0).sum(1).tolist() == [4] * 1000      # targets
    ids, levels, H, W = read_boxoban(str(boxoban_path / "unfiltered/train/000.txt"))
    assert ids[0] == "000:0"
    first = type(levels)(grid=levels.grid[0], player=levels.player[0])
    assert level_to_ascii(first, H, W) == FIRST_LEVEL


def test_boxoban_writer_round_trips(boxoban_path, tmp_path):
    src = boxoban_path / "medium/valid/000.txt"
    ids, levels, H, W = read_boxoban(str(src))
    out = tmp_path / "copy.txt"
    write_boxoban(out, levels, H, W, ids=[i.split(":")[1] for i in ids])
    ids2, levels2, _, _ = read_boxoban(str(out))
    assert np.array_equal(np.asarray(levels2.grid), np.asarray(levels.grid))
    assert np.array_equal(np.asarray(levels2.player), np.asarray(levels.player))
    # same text as DeepMind's file, level by level
    assert parse_boxoban_text(out.read_text())[0] == parse_boxoban_text(src.read_text())[0]
    assert out.read_text().split("\n\n")[:3] == src.read_text().split("\n\n")[:3]


def test_bank_from_directory_and_limit(boxoban_path):
    bank = load_boxoban(str(boxoban_path / "hard"), limit=50)
    assert len(bank) == 50 and bank.grid.shape == (50, 100) and bank.box_dist.shape == (50, 100)
    # every box of a Boxoban level sits on a live square
    boxes = (np.asarray(bank.grid) & 4) != 0
    assert (np.asarray(bank.box_dist)[boxes] < 255).all()
