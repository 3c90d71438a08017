"""History window (ModelConfig.window_segments): the segment rule against a hand-built
reference, cached decoding = full forward, and the gathered-window fast path = the masked one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from leafe_jax.policy.config import ModelConfig, get_config
from leafe_jax.policy.model import create_model, init_cache

MARK = 7          # the token that opens a segment in these tests


def _cfg(layers, W):
    return get_config("test-tiny").replace(vocab_size=16, num_layers=layers, window_segments=W,
                                           segment_tokens=(MARK,), max_seq_len=256)


def _jit(model):
    """The model's forward, jitted (``attend_window`` static)."""
    gdef, state = nnx.split(model)
    f = jax.jit(lambda st, *a, **k: nnx.merge(gdef, st)(*a, **k), static_argnames=("attend_window",))
    return lambda *a, **k: f(state, *a, **k)


def _seq(rng, n):
    s = rng.integers(1, 16, n)
    s[rng.random(n) < 0.25] = MARK
    return s.astype(np.int32)


def test_config_checks():
    with pytest.raises(ValueError, match="segment_tokens"):
        get_config("test-tiny").replace(window_segments=2)
    c = ModelConfig.from_dict(_cfg(1, 2).to_dict() | {"segment_tokens": [7, 9]})
    assert c.segment_tokens == (7, 9) and hash(c)


def test_one_layer_window_equals_the_visible_subsequence():
    """One layer: a token's output depends only on the keys it sees, so the windowed model at
    token q equals the unwindowed model (same weights) run on q's visible tokens alone, at
    their absolute positions. Visibility worked out by hand: segment 0 plus segments
    seg(q) - W .. seg(q)."""
    W = 1
    win = _jit(create_model(_cfg(1, W), seed=4))
    full = _jit(create_model(_cfg(1, 0).replace(segment_tokens=()), seed=4))
    rng = np.random.default_rng(0)
    seq = _seq(rng, 40)
    seg = np.cumsum(seq == MARK)
    lw = np.asarray(win(jnp.asarray(seq[None]))[0][0])
    for q in range(len(seq)):
        keep = [k for k in range(q + 1) if seg[k] == 0 or seg[k] >= seg[q] - W]
        sub = np.zeros((1, 64), np.int32)         # one padded length: one compilation
        sub[0, :len(keep)] = seq[keep]
        kpos = np.full((1, 64), 200, np.int32)
        kpos[0, :len(keep)] = keep
        lf = np.asarray(full(jnp.asarray(sub), jnp.asarray(kpos))[0][0, len(keep) - 1])
        np.testing.assert_allclose(lw[q], lf, atol=2e-5, err_msg=f"query {q}")
    # and the window does cut something: the unwindowed model differs somewhere
    assert not np.allclose(lw, np.asarray(full(jnp.asarray(seq[None]))[0][0]), atol=1e-3)


@pytest.mark.parametrize("fast", [False, True])
def test_cached_chunks_equal_full_forward(fast):
    """Three layers, rows at different depths, fed in chunks of ragged lengths: the cached
    logits equal the full forward's; with ``attend_window`` (sink, recent) sized to cover the
    rule, the gathered path gives the same numbers."""
    W = 2
    model = create_model(_cfg(3, W), seed=1)
    m = _jit(model)
    rng = np.random.default_rng(1)
    B, S = 3, 128
    seqs = [_seq(rng, 90) for _ in range(B)]
    seqs[0][:3] = [1, 2, 3]          # segment 0 of row 0 is 3 tokens long at least
    ref = [np.asarray(m(jnp.asarray(s[None]))[0][0]) for s in seqs]
    cache = init_cache(model.cfg, B, S)
    done = np.zeros(B, int)
    sink = 16
    while (done < 90).any():
        n = np.minimum(rng.integers(1, 6, B), 90 - done)
        L = 6
        chunk = np.zeros((B, L), np.int32)
        for b in range(B):
            chunk[b, :n[b]] = seqs[b][done[b]: done[b] + n[b]]
        pos = np.asarray(cache.lengths)[:, None] + np.arange(L)[None]
        pos = np.where(np.arange(L)[None] < n[:, None], pos, S)
        if fast:
            segs = [np.cumsum(s == MARK) for s in seqs]
            # keys a chunk may see past segment 0: from the first slot of segment
            # (first query's segment - W) to the chunk's end
            need = 0
            for b in range(B):
                if n[b]:
                    lo = int(np.argmax(segs[b] >= segs[b][done[b]] - W))
                    need = max(need, done[b] + n[b] - max(lo, sink))
            assert (np.concatenate([s[:sink] for s in segs]) >= 0).all()
            recent = 48
            assert need <= recent, "test sizing"
            assert all((segs[b][sink:] > 0).all() for b in range(B)), "segment 0 past the sink"
        lg, cache = m(jnp.asarray(chunk), jnp.asarray(pos), cache=cache,
                      new_lengths_B=cache.lengths + jnp.asarray(n),
                      attend_window=(sink, 48) if fast else None)
        lg = np.asarray(lg)
        for b in range(B):
            if n[b]:
                np.testing.assert_allclose(lg[b, :n[b]], ref[b][done[b]: done[b] + n[b]],
                                           atol=3e-5, err_msg=f"row {b} at {done[b]}")
        done += n
    assert np.asarray(cache.nseg).tolist() == [int((s == MARK).sum()) for s in seqs]


@pytest.fixture(scope="module")
def sokoban_windowed():
    from leafe_jax.envs.sokoban import generate_levels, get_preset
    from leafe_jax.interfaces.symbolic.rollout import windowed
    p = get_preset("6x6_2box")
    env = p.make_env()
    params = env.default_params
    g = generate_levels(jax.random.key(0), 4, p.generator, chunk=256)
    _, starts = jax.vmap(env.reset_to_level, in_axes=(0, None))(g.level, params)
    cfg = windowed(get_config("test-tiny").replace(vocab_size=64, max_seq_len=1024), 1)
    return env, params, starts, create_model(cfg, seed=0)


def test_windowed_rollout_logprobs_equal_the_full_forward(sokoban_windowed, monkeypatch):
    """The agent loop's cached, window-gathered decoding of a windowed policy samples from
    the same distribution the full forward over the finished context gives (what Stage 2 and
    GRPO train on) - for a root with an experience before its first action and for a branch
    restarted at tau from its parent's prefix, that prefix fed in one piece or in chunks."""
    from leafe_jax.interfaces.symbolic import rollout as R
    from leafe_jax.interfaces.symbolic import encoding as E
    from leafe_jax.interfaces.symbolic.rollout import history_window, rollout
    env, params, starts, model = sokoban_windowed
    T = 14
    assert model.cfg.window_segments == 2 and history_window(model.cfg, 16) == (24, 3 * 24 + 8)
    keys = jax.random.split(jax.random.key(1), 4)
    exp = np.stack([np.asarray(E.experience_tokens(E.R_BUMP, 2, 1, 1))] * 4)
    exp[1] = E.PAD
    tr = rollout(model, env, params, starts, keys, num_steps=T, temperature=1.0, experience=exp)
    tau = 5
    plen = np.asarray(tr.action_pos[tau - 1]) + 1
    prefix = np.where(np.arange(int(plen.max()))[None] < plen[:, None],
                      np.asarray(tr.tokens[:, : plen.max()]), E.PAD)
    br = rollout(model, env, params, jax.tree.map(lambda x: x[tau], tr.states), keys,
                 num_steps=T - tau, prefix=prefix, prefix_len=plen,
                 first_feedback=tr.feedback[tau - 1], temperature=1.0, cache_size=tr.tokens.shape[1])
    assert np.array_equal(np.asarray(br.actions), np.asarray(tr.actions[tau:]))
    assert plen.max() > 3 * 16
    monkeypatch.setattr(R, "PREFIX_CHUNK", 16)          # the prefix in 4+ pieces, ragged rows
    chunked = rollout(model, env, params, jax.tree.map(lambda x: x[tau], tr.states), keys,
                      num_steps=T - tau, prefix=prefix, prefix_len=plen,
                      first_feedback=tr.feedback[tau - 1], temperature=1.0, cache_size=tr.tokens.shape[1])
    np.testing.assert_array_equal(np.asarray(chunked.actions), np.asarray(br.actions))
    np.testing.assert_array_equal(np.asarray(chunked.tokens), np.asarray(br.tokens))
    np.testing.assert_allclose(np.asarray(chunked.logprobs), np.asarray(br.logprobs), atol=2e-5)
    logits = np.asarray(_jit(model)(jnp.asarray(tr.tokens))[0])
    lp = jax.nn.log_softmax(logits[..., np.asarray(E.ACTION_TOKENS)], -1)
    for b in range(4):
        n = int(tr.num_steps[b])
        assert n > tau
        pos = np.asarray(tr.action_pos[:n, b])
        want = np.asarray(lp)[b, pos - 1, np.asarray(tr.actions[:n, b])]
        np.testing.assert_allclose(np.asarray(tr.logprobs[:n, b]), want, atol=2e-4)
        np.testing.assert_allclose(np.asarray(br.logprobs[: n - tau, b]), want[tau:], atol=2e-4)
    # the window is not a no-op: the same weights without it give other log-probs
    full = create_model(model.cfg.replace(window_segments=0, segment_tokens=()), seed=0)
    lf = jax.nn.log_softmax(np.asarray(_jit(full)(jnp.asarray(tr.tokens))[0])[..., np.asarray(E.ACTION_TOKENS)], -1)
    pos = np.asarray(tr.action_pos[T - 2, 0])
    assert not np.allclose(np.asarray(lf)[0, pos - 1], np.asarray(lp)[0, pos - 1], atol=1e-3)
