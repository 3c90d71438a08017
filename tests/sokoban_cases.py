"""Hand-written levels shared by the Sokoban tests."""

from leafe_jax.envs.sokoban import parse_level


def level(text: str):
    """Parse a level written with '|' as the left margin (keeps leading spaces visible)."""
    rows = [line.split("|", 1)[1] for line in text.strip("\n").split("\n")]
    return parse_level("\n".join(rows))
