"""Cell codes, actions and text symbols of Sokoban.

Two encodings exist:

* **Observation / gym-sokoban codes** (what users and the parity tests see):
  0 wall, 1 floor, 2 target, 3 box on target, 4 box, 5 player, 6 player on target.
  gym-sokoban's ``room_state`` writes 5 for a player on a target too; we keep 6 so
  the observation alone says where every target is.
* **Internal bit codes** (what the state stores, one ``uint8`` per cell): bit 0 wall,
  bit 1 target, bit 2 box. A push is ``c & ~BOX`` / ``c | BOX`` - no lookups.
"""

import numpy as np

# --- observation codes (gym-sokoban) -------------------------------------------------
WALL, FLOOR, TARGET, BOX_ON_TARGET, BOX, PLAYER, PLAYER_ON_TARGET = range(7)
NUM_CELL_CODES = 7

# --- internal bit codes --------------------------------------------------------------
BIT_WALL = np.uint8(1)
BIT_TARGET = np.uint8(2)
BIT_BOX = np.uint8(4)

# bit code (0..7) -> observation code (without the player). Codes 3, 5, 7 cannot occur
# (a wall is never a target nor holds a box); they map to WALL.
BITS_TO_OBS = np.array([FLOOR, WALL, TARGET, WALL, BOX, WALL, BOX_ON_TARGET, WALL], np.uint8)

# --- actions -------------------------------------------------------------------------
# Ours are gym-sokoban's push-or-move actions 1..4 shifted to 0..3.
UP, DOWN, LEFT, RIGHT = range(4)
NUM_ACTIONS = 4
ACTION_NAMES = ("up", "down", "left", "right")
ACTION_LETTERS = "UDLR"
# (row, col) change per action.
ACTION_DELTAS = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], np.int32)
OPPOSITE_ACTION = np.array([DOWN, UP, RIGHT, LEFT], np.int32)

# --- text ----------------------------------------------------------------------------
# RAGEN / verl-agent symbols, indexed by observation code.
RAGEN_SYMBOLS = ("#", "_", "O", "\u221a", "X", "P", "S")

# Largest push distance we store; larger means "no target reachable" (dead square).
DEAD = 255
