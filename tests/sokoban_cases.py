"""Hand-written levels shared by the Sokoban tests."""

from leafe_jax.envs.sokoban import parse_level


def level(text: str):
    """Parse a level written with '|' as the left margin (keeps leading spaces visible)."""
    rows = [line.split("|", 1)[1] for line in text.strip("\n").split("\n")]
    return parse_level("\n".join(rows))


# One box below the top wall, its target in the bottom-right corner, the player below the box:
# UP pushes the box against the top wall (a dead square); R U U L D D L D R solves it.
CORNER_TEXT = """
|######
|#    #
|#  $ #
|#  @ #
|#   .#
|######
"""
