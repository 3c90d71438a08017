"""Bitboard BFS and the generator's sampler against independent references."""

import collections

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.envs.sokoban.generator import GeneratorConfig, _sample, carve_room
from leafe_jax.envs.sokoban.grid import bfs_layers, layer_of, pack_rows, unpack_rows


def python_bfs(free, start, W):
    dist = {start: 0}
    q = collections.deque([start])
    while q:
        c = q.popleft()
        for d in (-W, W, -1, 1):
            n = c + d
            if free[n] and n not in dist:
                dist[n] = dist[c] + 1
                q.append(n)
    return dist


def test_pack_unpack_round_trip():
    m = np.random.default_rng(0).random((7, 13)) < 0.5
    assert np.array_equal(np.asarray(unpack_rows(pack_rows(jnp.asarray(m)), 13)), m)


def test_bfs_layers_match_python_bfs_on_carved_rooms():
    cfg = GeneratorConfig(height=10, width=10, num_boxes=4, max_solution_steps=120)
    floors = np.asarray(jax.vmap(lambda k: carve_room(k, cfg))(jax.random.split(jax.random.key(0), 20)))
    run = jax.jit(lambda f, s, depth: bfs_layers(pack_rows(f), s, 10, depth, 41))
    dist_of = jax.jit(jax.vmap(lambda layers, c: layer_of(layers, c, 10), in_axes=(None, 0)))
    for floor in floors:
        free = floor.reshape(-1)
        start = int(np.flatnonzero(free)[0])
        ref = python_bfs(free, start, 10)
        for depth in (3, 40):
            layers, seen = run(jnp.asarray(floor), jnp.int32(start), jnp.int32(depth))
            reached = np.asarray(unpack_rows(seen, 10)).reshape(-1)
            assert set(np.flatnonzero(reached)) == {c for c, d in ref.items() if d <= depth}
            got = np.asarray(dist_of(layers, jnp.arange(100)))
            for c in range(100):
                expect = ref[c] if c in ref and ref[c] <= depth else 41
                assert got[c] == expect


def test_sample_follows_weights_and_never_picks_disallowed():
    ok = jnp.array([False, True, True, False, True, True, False] + [False] * 30)
    logits = jnp.zeros(37).at[1].set(np.log(3.0)).at[5].set(np.log(2.0))
    draw = jax.jit(jax.vmap(lambda k: _sample(k, ok, logits)))
    idx, any_ok = draw(jax.random.split(jax.random.key(0), 20000))
    counts = np.bincount(np.asarray(idx), minlength=37)
    assert np.asarray(any_ok).all()
    assert counts[~np.asarray(ok)].sum() == 0
    freq = counts[[1, 2, 4, 5]] / 20000
    np.testing.assert_allclose(freq, np.array([3, 1, 1, 2]) / 7, atol=0.015)
    idx, any_ok = _sample(jax.random.key(1), jnp.zeros(37, bool), jnp.zeros(37))
    assert not bool(any_ok)
