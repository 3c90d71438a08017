"""Rendering: RAGEN/verl-agent text, RGB frames and GIFs (host side, numpy + Pillow)."""

from __future__ import annotations

import numpy as np

from leafe_jax.envs.sokoban import constants as C

# Colours per observation code (wall, floor, target, box on target, box, player, player on target).
_PALETTE = np.array([
    [60, 60, 70], [225, 215, 190], [225, 215, 190], [90, 170, 80], [190, 130, 50],
    [60, 110, 200], [60, 110, 200]], np.uint8)


def render_text(obs_HxW) -> str:
    """Observation grid -> text with the RAGEN symbols ``# _ O √ X P S``."""
    obs = np.asarray(obs_HxW)
    if obs.ndim != 2:
        raise ValueError(f"render_text expects one H x W observation grid, got shape {obs.shape}")
    return "\n".join("".join(C.RAGEN_SYMBOLS[int(v)] for v in row) for row in obs)


def render_rgb(obs_HxW, cell: int = 16) -> np.ndarray:
    """Observation grid -> uint8 RGB image [H*cell, W*cell, 3]."""
    obs = np.asarray(obs_HxW).astype(np.int64)
    if obs.ndim != 2:
        raise ValueError(f"render_rgb expects one H x W observation grid, got shape {obs.shape}")
    H, W = obs.shape
    img = np.repeat(np.repeat(_PALETTE[obs], cell, 0), cell, 1).copy()
    yy, xx = np.mgrid[0:cell, 0:cell]
    c = (cell - 1) / 2
    ring = np.abs(np.hypot(yy - c, xx - c) - cell * 0.3) < max(1.0, cell / 12)
    inner = (np.abs(yy - c) < cell * 0.32) & (np.abs(xx - c) < cell * 0.32)
    for r in range(H):
        for q in range(W):
            v = obs[r, q]
            tile = img[r * cell:(r + 1) * cell, q * cell:(q + 1) * cell]
            if v in (C.TARGET, C.PLAYER_ON_TARGET):
                tile[ring] = (200, 60, 60)
            if v in (C.BOX, C.BOX_ON_TARGET):
                tile[~inner] = _PALETTE[C.FLOOR]
            if v in (C.PLAYER, C.PLAYER_ON_TARGET):
                disk = np.hypot(yy - c, xx - c) < cell * 0.25
                tile[~disk & ~ring] = _PALETTE[C.FLOOR]
    return img


def save_gif(frames_TxHxW, path: str, cell: int = 16, ms_per_frame: int = 250) -> None:
    """Observation grids -> animated GIF."""
    from PIL import Image

    imgs = [Image.fromarray(render_rgb(f, cell)) for f in np.asarray(frames_TxHxW)]
    if not imgs:
        raise ValueError("no frames to write")
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=ms_per_frame, loop=0)
